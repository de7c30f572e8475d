"""A paramiko client for Duplex's tests: connects with several keys (the
first ones untrusted, as Fabric or an agent holding many keys does), checks
the host key against a known_hosts file, echoes a message through a
`direct-tcpip` channel to the service, and prints what came back with the
time authentication took.

usage: paramiko_client.py PORT KNOWN_HOSTS USER SERVICE KEY...
"""

import sys
import time

import paramiko


def main() -> int:
    port, known_hosts, user, service, *keys = sys.argv[1:]
    client = paramiko.SSHClient()
    client.load_host_keys(known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    started = time.monotonic()
    client.connect(
        "127.0.0.1",
        port=int(port),
        username=user,
        key_filename=keys,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
        banner_timeout=10,
        auth_timeout=10,
    )
    took = time.monotonic() - started
    chan = client.get_transport().open_channel(
        "direct-tcpip", (service, 1), ("127.0.0.1", 5555), timeout=10
    )
    message = b"hello from paramiko"
    chan.sendall(message)
    chan.shutdown_write()
    back = b""
    while True:
        piece = chan.recv(65536)
        if not piece:
            break
        back += piece
    chan.close()
    client.close()
    print(f"authenticated in {took:.3f}s; echoed {back.decode()!r}")
    return 0 if back == message else 1


if __name__ == "__main__":
    sys.exit(main())
