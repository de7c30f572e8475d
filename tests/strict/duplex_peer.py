#!/usr/bin/env python3
"""A minimal Duplex peer on an unmodified, strict SSH stack (asyncssh).

Written from docs/PROTOCOL.md and the version-2 rules (nothing after SSH
EOF), not from the Rust code, so that the Rust implementation is checked
against an SSH library that enforces RFC 4254 section 5.3: asyncssh drops
the connection when extended data arrives after the remote's SSH EOF
("Channel not open for sending"), and refuses to write anything after its
own SSH EOF (BrokenPipeError). Nothing in asyncssh is patched.

Modes (tests/tests/strict_ssh.rs drives both):

  dial   connect to a Duplex listener, send the @hello, open `echo` channels,
         send SIZE random bytes within credit, half-close, read the echo back
         granting credit, check it; exit 0, or 1 with a message on stderr.
  listen an asyncssh server on 127.0.0.1:0; prints `listening on
         tcp://127.0.0.1:PORT`; answers the dialler's @hello and echoes
         `echo` channels; exits 0 after --exit-after echo channels completed,
         1 (message on stderr) on any error.

`--version 1` makes the peer speak protocol version 1 only (half-close is
SSH EOF, and credit is still granted after it), which an RFC-strict stack
cannot do: that run is expected to fail, and proves the test can fail.

asyncssh configuration (the only non-public things touched, see
`duplex_channel` below): a `direct-tcpip` channel in asyncssh accepts and
sends no extended data at all; the set of extended-data types a channel
reads and writes is the class attribute `_read_datatypes` /
`_write_datatypes` (SSHClientChannel: {1} read, SSHServerChannel: {1}
write, SSHTCPChannel: none), checked in `_process_extended_data` ("Invalid
extended data type") and `write` ("Invalid extended data type"), with no
public setter. We shadow both on each channel instance, before the channel
is opened, with {1, 0x64757801}. asyncssh also names the type of every
extended-data message it logs from the module dict
`asyncssh.channel._data_type_names` (built from its EXTENDED_DATA_*
constants, so only 1 is in it), and indexes it even with logging off: any
other type raises KeyError in `_process_extended_data` and `write`. We add
one entry for 0x64757801. Nothing about EOF is changed: asyncssh's
checks on data after EOF and writes after EOF stay as they are. The
acceptor's own channel number (for the ACCEPT record) is read from
`_recv_chan`, which asyncssh does not expose either.
"""

import argparse
import asyncio
import os
import struct
import sys

import asyncssh

EXT_STDERR = 1
EXT_CONTROL = 0x64757801

ACCEPT = 1
WINDOW = 2
REJECT = 3
HELLO = 4
TRAILERS = 5
PARENT_CLOSED = 6
EOF = 7
PROTOCOL_ERROR = 8

RECORD_NAMES = {
    ACCEPT: "ACCEPT", WINDOW: "WINDOW", REJECT: "REJECT", HELLO: "HELLO",
    TRAILERS: "TRAILERS", PARENT_CLOSED: "PARENT_CLOSED", EOF: "EOF",
    PROTOCOL_ERROR: "PROTOCOL_ERROR",
}

MAX_RECORD = 32 * 1024
MAX_CHUNK = 32 * 1024
# SSH's own window on our channels (asyncssh's default is 2 MiB).
SSH_WINDOW = 2 * 1024 * 1024


class PeerError(Exception):
    """A protocol violation or an SSH failure; the message says which."""


# ---------------------------------------------------------------- headers --

_SAFE = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:,")


def _escape(s):
    out = []
    for b in s.encode("utf-8"):
        out.append(chr(b) if b in _SAFE else "%%%02X" % b)
    return "".join(out)


def _unescape(s):
    if not s.isascii():
        raise PeerError(f"header block has a non-ASCII byte: {s!r}")
    raw = s.encode("ascii")
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # '%'
            hx = raw[i + 1:i + 3]
            if len(hx) != 2 or not all(c in b"0123456789ABCDEFabcdef" for c in hx):
                raise PeerError(f"bad %-escape in header block: {s!r}")
            out.append(int(hx, 16))
            i += 3
        elif b in _SAFE:
            out.append(b)
            i += 1
        else:
            raise PeerError(f"unescaped byte {b:#04x} in header block: {s!r}")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise PeerError(f"header value is not UTF-8: {s!r}") from None


def encode_headers(pairs):
    return "&".join(f"{_escape(k)}={_escape(v)}" for k, v in pairs)


def decode_headers(text):
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if text == "":
        return []
    pairs = []
    for part in text.split("&"):
        if "=" not in part:
            raise PeerError(f"header pair without '=': {part!r}")
        k, v = part.split("=", 1)
        k, v = _unescape(k), _unescape(v)
        if not k:
            raise PeerError("empty header key")
        pairs.append((k, v))
    return pairs


def header(pairs, key):
    for k, v in pairs:
        if k == key:
            return v
    return None


def parse_window(orig_host):
    """Splits the `%40window=N` pair off an open's originator field."""
    first, sep, rest = orig_host.partition("&")
    if not first.startswith("%40window="):
        raise PeerError(f"open has no leading %40window pair: {orig_host!r}")
    digits = first[len("%40window="):]
    if not digits or len(digits) > 10 or not digits.isdigit() or int(digits) > 0xFFFFFFFF:
        raise PeerError(f"bad %40window value {digits!r}")
    return int(digits), decode_headers(rest) if sep else []


# ---------------------------------------------------------------- records --

def record(rtype, body=b""):
    payload = bytes([rtype]) + body
    return struct.pack(">I", len(payload)) + payload


class RecordParser:
    """Control records (frames on extended data 0x64757801), which may be
    split across SSH messages."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 4:
            (n,) = struct.unpack(">I", self.buf[:4])
            if n == 0 or n > MAX_RECORD:
                raise PeerError(f"control record of {n} bytes (limit {MAX_RECORD}, at least 1)")
            if len(self.buf) < 4 + n:
                break
            payload = bytes(self.buf[4:4 + n])
            del self.buf[:4 + n]
            out.append((payload[0], payload[1:]))
        return out


# See the module docstring: without a name for the type, asyncssh's
# debug-log arguments raise KeyError on every Duplex extended-data message.
asyncssh.channel._data_type_names.setdefault(EXT_CONTROL, "duplex-control")


def duplex_channel(conn):
    """An asyncssh `direct-tcpip` channel that may carry Duplex extended data.

    asyncssh's SSHTCPChannel has empty `_read_datatypes`/`_write_datatypes`
    (class attributes; there is no public way to change them), so extended
    data of any type would end the connection with "Invalid extended data
    type". We shadow them on this one instance before the open is sent (or
    confirmed), so a record arriving right after the confirmation is
    already allowed. (With `_data_type_names` above, the only asyncssh
    internals written to.)
    """
    chan = conn.create_tcp_channel(window=SSH_WINDOW)
    chan._read_datatypes = {EXT_STDERR, EXT_CONTROL}
    chan._write_datatypes = {EXT_STDERR, EXT_CONTROL}
    return chan


# ------------------------------------------------------- a Duplex channel --

class DuplexSession(asyncssh.SSHTCPSession):
    """One Duplex channel (sections 3, 5, 6 of PROTOCOL.md, version 1 or 2).

    `window` is our receive window (what the remote may send before we
    grant more); `grant` is "quarter" (grant once a quarter of the window
    was consumed, like the Rust implementation) or "chunk" (grant every
    chunk as it is consumed).
    """

    def __init__(self, version, window, opener, grant="quarter", label="channel"):
        self.version = version
        self.window = window
        self.opener = opener
        self.grant_mode = grant
        self.label = label
        self.chan = None
        self.parser = RecordParser()
        self.event = asyncio.Event()
        self.error = None
        self.accepted = not opener
        self.rejected = None
        self.send_credit = 0
        self.recv_buf = bytearray()
        self.recv_granted_total = window
        self.recv_total = 0
        self.consumed_ungranted = 0
        self.remote_eof = False      # the remote's half-close (EOF record, or SSH EOF)
        self.remote_eof_record = False
        self.remote_ssh_eof = False
        self.remote_trailers = None
        self.local_eof = False       # our half-close
        self.local_ssh_eof = False
        self.closed = False
        self.hello = None
        self.on_connected = None

    # --- asyncssh callbacks (all on the event loop) ---

    def connection_made(self, chan):
        self.chan = chan
        if self.on_connected is not None:
            self.on_connected(self)

    def data_received(self, data, datatype):
        try:
            if datatype is None or datatype == EXT_STDERR:
                if self.remote_eof:
                    raise PeerError(f"{self.label}: {len(data)} data bytes after the remote's EOF")
                if not self.accepted:
                    raise PeerError(f"{self.label}: data before ACCEPT")
                self.recv_total += len(data)
                if self.recv_total > self.recv_granted_total:
                    raise PeerError(
                        f"{self.label}: the remote overran its credit: "
                        f"{self.recv_total} bytes received, {self.recv_granted_total} granted")
                if datatype is None:
                    self.recv_buf += data
                else:
                    # Error-stream bytes count against credit; we grant them
                    # straight back and otherwise ignore them.
                    self._grant(len(data), force=True)
            elif datatype == EXT_CONTROL:
                for rtype, body in self.parser.feed(data):
                    self._on_record(rtype, body)
            else:
                raise PeerError(f"{self.label}: extended data of type {datatype:#x}")
        except (PeerError, OSError) as exc:
            self._fail(exc)
        self._wake()

    def _on_record(self, rtype, body):
        name = RECORD_NAMES.get(rtype, f"type {rtype}")
        if self.remote_ssh_eof:
            raise PeerError(f"{self.label}: {name} record after the remote's SSH EOF")
        if rtype in (EOF, PROTOCOL_ERROR) and self.version < 2:
            raise PeerError(f"{self.label}: {name} record on a version-1 connection")
        if rtype == ACCEPT:
            if not self.opener or self.accepted or self.rejected is not None or len(body) != 8:
                raise PeerError(f"{self.label}: unexpected ACCEPT ({len(body)}-byte body)")
            window, _number = struct.unpack(">II", body)
            self.send_credit += window
            self.accepted = True
        elif rtype == REJECT:
            if not self.opener or self.accepted or self.rejected is not None:
                raise PeerError(f"{self.label}: unexpected REJECT")
            self.rejected = body.decode("utf-8", "replace")
        elif rtype == WINDOW:
            if len(body) != 4:
                raise PeerError(f"{self.label}: WINDOW with a {len(body)}-byte body")
            if not self.accepted:
                raise PeerError(f"{self.label}: WINDOW before ACCEPT")
            self.send_credit += struct.unpack(">I", body)[0]
        elif rtype == HELLO:
            if self.label != "@hello" or self.hello is not None:
                raise PeerError(f"{self.label}: unexpected HELLO")
            self.hello = decode_headers(body)
        elif rtype == TRAILERS:
            if self.remote_trailers is not None or self.remote_eof:
                raise PeerError(f"{self.label}: TRAILERS twice or after EOF")
            self.remote_trailers = decode_headers(body)
        elif rtype == EOF:
            if body or self.remote_eof_record:
                raise PeerError(f"{self.label}: second or malformed EOF record")
            self.remote_eof_record = True
            self.remote_eof = True
            self._maybe_ssh_eof()
        elif rtype == PROTOCOL_ERROR:
            raise PeerError(f"{self.label}: the remote reports a protocol error: "
                            f"{body.decode('utf-8', 'replace')}")
        elif rtype == PARENT_CLOSED:
            raise PeerError(f"{self.label}: PARENT_CLOSED on a top-level channel")
        else:
            raise PeerError(f"{self.label}: unknown control record {name}")

    def eof_received(self):
        self.remote_ssh_eof = True
        # v1: SSH EOF is the half-close. v2: it means the remote sends
        # nothing more (it counts as its EOF record too).
        self.remote_eof = True
        try:
            self._maybe_ssh_eof()
        except (PeerError, OSError) as exc:
            self._fail(exc)
        self._wake()
        # True: do not let asyncssh half-close our side for us.
        return True

    def connection_lost(self, exc):
        self.closed = True
        if exc is not None:
            self._fail(PeerError(f"{self.label}: connection lost: {exc}"))
        self._wake()

    # --- helpers ---

    def _fail(self, exc):
        if self.error is None:
            self.error = exc
            print(f"duplex_peer: {exc}", file=sys.stderr, flush=True)

    def _wake(self):
        # Event.set wakes every waiter at once, so a waiter clearing it
        # afterwards cannot make another one miss the wake-up.
        self.event.set()

    async def _wait(self, pred, what):
        while True:
            if self.error is not None:
                raise self.error
            if pred():
                return
            if self.closed:
                raise PeerError(f"{self.label}: channel closed while waiting for {what}")
            self.event.clear()
            await self.event.wait()

    def _send(self, data, datatype=None):
        try:
            self.chan.write(data, datatype)
        except OSError as exc:
            what = "data" if datatype is None else RECORD_NAMES.get(data[4], "a record")
            state = " after our own SSH EOF" if self.local_ssh_eof else ""
            raise PeerError(f"{self.label}: asyncssh refused to send {what}{state}: {exc!r}") from None

    def send_record(self, rtype, body=b""):
        self._send(record(rtype, body), EXT_CONTROL)

    def _grant(self, n, force=False):
        if self.remote_eof:
            return  # no credit for a remote that finished writing
        self.consumed_ungranted += n
        if (force or self.grant_mode == "chunk"
                or self.consumed_ungranted >= max(1, self.window // 4)):
            inc, self.consumed_ungranted = self.consumed_ungranted, 0
            self.recv_granted_total += inc
            self.send_record(WINDOW, struct.pack(">I", inc))

    def _maybe_ssh_eof(self):
        # v2: SSH EOF only once both half-closes happened (nothing but the
        # close follows it).
        if (self.version >= 2 and self.local_eof and self.remote_eof
                and not self.local_ssh_eof and self.chan is not None):
            self.local_ssh_eof = True
            self.chan.write_eof()

    # --- the application's side ---

    async def wait_accept(self):
        await self._wait(lambda: self.accepted or self.rejected is not None, "ACCEPT")
        if self.rejected is not None:
            raise PeerError(f"{self.label}: rejected: {self.rejected}")

    async def write(self, data):
        view = memoryview(data)
        while view:
            await self._wait(lambda: self.send_credit > 0, "credit (WINDOW)")
            n = min(self.send_credit, len(view), MAX_CHUNK)
            self._send(bytes(view[:n]))
            self.send_credit -= n
            view = view[n:]

    async def read(self):
        """The next chunk of the byte stream, b'' at its end."""
        await self._wait(lambda: self.recv_buf or self.remote_eof, "data")
        if not self.recv_buf:
            return b""
        data = bytes(self.recv_buf)
        self.recv_buf.clear()
        self._grant(len(data))
        return data

    async def half_close(self, trailers=None):
        if trailers is not None:
            self.send_record(TRAILERS, encode_headers(trailers).encode("ascii"))
        self.local_eof = True
        if self.version >= 2:
            self.send_record(EOF)
            self._maybe_ssh_eof()
        else:
            self.local_ssh_eof = True
            self.chan.write_eof()

    async def finish(self):
        """After both half-closes: close, and wait for the remote's close."""
        await self._wait(lambda: self.remote_eof, "the remote's EOF")
        self._maybe_ssh_eof()
        self.chan.close()
        await asyncio.wait_for(self.chan.wait_closed(), 30)
        if self.error is not None:
            raise self.error


# ------------------------------------------------------------------ dial --

class DialClient(asyncssh.SSHClient):
    def __init__(self):
        self.lost = None

    def connection_lost(self, exc):
        if exc is not None:
            self.lost = exc
            print(f"duplex_peer: SSH connection lost: {exc}", file=sys.stderr, flush=True)


async def dial(args):
    key = asyncssh.read_private_key(args.key)
    if args.host_key:
        known_hosts = ([asyncssh.read_public_key(args.host_key)], [], [])
    else:
        known_hosts = None  # accept any host key
    conn, client = await asyncssh.create_connection(
        DialClient, args.host, args.port,
        username=args.name, client_keys=[key], known_hosts=known_hosts,
        agent_path=None, config=None, preferred_auth="publickey",
        connect_timeout=30)
    async with conn:
        # The hello: version 2 offers 1..2; `--version 1` offers only 1.
        offer = [("name", args.name), ("version", "1")]
        if args.version >= 2:
            offer.append(("max-version", str(args.version)))
        hello = DuplexSession(args.version, 0, opener=False, label="@hello")
        chan = duplex_channel(conn)
        await chan.connect(lambda: hello, "@hello", 1, encode_headers(offer), 0)
        await hello._wait(lambda: hello.hello is not None, "HELLO")
        version = header(hello.hello, "version")
        if header(hello.hello, "name") is None:
            raise PeerError("the listener's HELLO has no name")
        if version is None or not version.isdigit() or not 1 <= int(version) <= args.version:
            raise PeerError(f"the listener answered version {version!r}, we speak 1 to {args.version}")
        version = int(version)
        if version != args.version:
            raise PeerError(f"expected version {args.version}, the listener chose {version}")
        print(f"connected to {header(hello.hello, 'name')} with protocol version {version}",
              file=sys.stderr, flush=True)

        for rnd in range(args.rounds):
            for size in args.size:
                await echo_round(conn, args, version, size, f"echo#{rnd}/{size}")
        if client.lost is not None:
            raise PeerError(f"SSH connection lost: {client.lost}")


async def echo_round(conn, args, version, size, label):
    s = DuplexSession(version, args.window, opener=True, grant="chunk", label=label)
    chan = duplex_channel(conn)
    orig = f"%40window={args.window}"
    if args.headers:
        orig += "&" + encode_headers([("k", "v")])
    await chan.connect(lambda: s, args.service, 1, orig, 0)
    await s.wait_accept()
    data = os.urandom(size)
    trailers = [("from", "asyncssh"), ("bytes", str(size))] if args.trailers else None

    async def send():
        await s.write(data)
        await s.half_close(trailers)

    async def receive():
        got = bytearray()
        while True:
            chunk = await s.read()
            if not chunk:
                return bytes(got)
            got += chunk

    _, got = await asyncio.gather(send(), receive())
    if got != data:
        raise PeerError(f"{label}: echo mismatch: sent {len(data)} bytes, got {len(got)}"
                        + (" (same length, different bytes)" if len(got) == len(data) else ""))
    if args.trailers and s.remote_trailers != trailers:
        raise PeerError(f"{label}: trailers {s.remote_trailers!r}, expected {trailers!r}")
    await s.finish()
    print(f"{label}: {size} bytes echoed", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- listen --

class Listener:
    def __init__(self, args):
        self.args = args
        self.done = asyncio.get_running_loop().create_future()
        self.completed = 0

    def fail(self, exc):
        if not self.done.done():
            self.done.set_exception(exc if isinstance(exc, Exception) else PeerError(str(exc)))

    def channel_done(self):
        self.completed += 1
        if self.args.exit_after and self.completed >= self.args.exit_after and not self.done.done():
            self.done.set_result(None)


class ListenServer(asyncssh.SSHServer):
    def __init__(self, listener):
        self.listener = listener
        self.args = listener.args
        self.conn = None
        self.version = None

    def connection_made(self, conn):
        self.conn = conn

    def connection_lost(self, exc):
        if exc is not None:
            print(f"duplex_peer: SSH connection lost: {exc}", file=sys.stderr, flush=True)
            self.listener.fail(PeerError(f"SSH connection lost: {exc}"))

    def begin_auth(self, username):
        return True  # authentication required: publickey, authorized_client_keys

    def password_auth_supported(self):
        return False

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        try:
            if dest_host == "@hello":
                return self._hello(orig_host)
            if self.version is None:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "this test peer serves Duplex connections only")
            if dest_host != "echo":
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"no service {dest_host!r} here")
            if dest_port != 1 or orig_port != 0:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "nested channels are not served here")
            window, _headers = parse_window(orig_host)
        except PeerError as exc:
            self.listener.fail(exc)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, str(exc)) from None
        s = DuplexSession(self.version, self.args.window, opener=False, label="echo")
        s.send_credit = window
        s.on_connected = lambda s: self.conn.create_task(self._echo(s))
        return duplex_channel(self.conn), s

    def _hello(self, orig_host):
        if self.version is not None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "second hello")
        offer = decode_headers(orig_host)
        user = self.conn.get_extra_info("username")
        if header(offer, "name") != user:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"the hello names {header(offer, 'name')!r}, the SSH user is {user!r}")
        low = header(offer, "version") or ""
        high = header(offer, "max-version") or low
        if not low.isdigit() or not high.isdigit() or int(low) > self.args.version:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"Duplex protocol version mismatch: the dialler speaks {low} to {high}, "
                f"this peer speaks 1 to {self.args.version}")
        self.version = min(int(high), self.args.version)
        print(f"hello from {user}: protocol version {self.version}", file=sys.stderr, flush=True)
        name, version = self.args.name, self.version

        def answer(s):
            # HELLO, then SSH EOF and close (both versions).
            s.send_record(HELLO, encode_headers([("name", name), ("version", str(version))]).encode("ascii"))
            s.chan.write_eof()
            s.chan.close()

        s = DuplexSession(self.version, 0, opener=False, label="@hello")
        s.on_connected = answer
        return duplex_channel(self.conn), s

    async def _echo(self, s):
        try:
            # The acceptor's own channel number (asyncssh keeps it private).
            s.send_record(ACCEPT, struct.pack(">II", s.window, s.chan._recv_chan))
            if self.args.hold:
                # Store and forward: everything is echoed after the remote's
                # half-close, so a version-1 remote must grant credit after
                # its SSH EOF.
                got = bytearray()
                while True:
                    chunk = await s.read()
                    if not chunk:
                        break
                    got += chunk
                await s.write(bytes(got))
            else:
                while True:
                    chunk = await s.read()
                    if not chunk:
                        break
                    await s.write(chunk)
            trailers = None
            if s.remote_trailers is not None:
                trailers = s.remote_trailers + [("echoed-bytes", str(s.recv_total))]
            await s.half_close(trailers)
            await s.finish()
            print(f"echo: {s.recv_total} bytes echoed", file=sys.stderr, flush=True)
            self.listener.channel_done()
        except Exception as exc:  # noqa: BLE001 - every failure ends the run
            s._fail(exc)
            self.listener.fail(exc)


async def listen(args):
    listener = Listener(args)
    acceptor = await asyncssh.create_server(
        lambda: ListenServer(listener), "127.0.0.1", 0,
        server_host_keys=[args.key], authorized_client_keys=args.authorized_keys,
        config=None, login_timeout=30)
    print(f"listening on tcp://127.0.0.1:{acceptor.get_port()}", flush=True)
    try:
        await listener.done
    finally:
        acceptor.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", type=int, default=2, choices=[1, 2],
                   help="highest protocol version spoken (default 2)")
    p.add_argument("--window", type=int, default=256 * 1024, help="our receive window per channel")
    p.add_argument("--name", default="strict", help="our peer name")
    p.add_argument("--key", required=True, help="our private key (OpenSSH format)")
    p.add_argument("--timeout", type=float, default=120, help="give up after this many seconds")
    sub = p.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("dial")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--host-key", help="the listener's public key (.pub); absent: accept any")
    d.add_argument("--service", default="echo")
    d.add_argument("--size", type=int, action="append", help="bytes per echo (repeatable)")
    d.add_argument("--rounds", type=int, default=1)
    d.add_argument("--trailers", action="store_true", help="send trailers and expect them echoed")
    d.add_argument("--headers", action="store_true", help="send a header after the window pair")
    l = sub.add_parser("listen")
    l.add_argument("--authorized-keys", required=True)
    l.add_argument("--exit-after", type=int, default=0, help="exit after N echo channels (0: never)")
    l.add_argument("--hold", action="store_true", help="echo only after the remote's half-close")
    args = p.parse_args()
    if args.mode == "dial" and not args.size:
        args.size = [1 << 20]
    try:
        run = dial(args) if args.mode == "dial" else listen(args)
        asyncio.run(asyncio.wait_for(run, args.timeout))
    except Exception as exc:  # noqa: BLE001 - any failure is exit status 1
        print(f"duplex_peer: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
