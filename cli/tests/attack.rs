//! `duplex serve --echo` attacked from outside, in its own process with its
//! own limits (a lowered descriptor limit, as services often run with):
//! connections that never finish their handshake, plain SSH clients that
//! send more than they read. The server is watched through `/proc`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use duplex::{Config, Headers, Identity};
use duplex_tests::{TempDir, fds_of, peer_trusting, rss_kib_of, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

struct Server {
    child: Child,
    pid: String,
    endpoint: String,
    server_key: PathBuf,
    client: Identity,
}

impl Server {
    /// Descriptors the server process holds.
    fn fds(&self) -> usize {
        fds_of(&self.pid)
    }

    fn rss_kib(&self) -> u64 {
        rss_kib_of(&self.pid)
    }

    fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }
}

/// `duplex serve tcp://127.0.0.1:0 --echo ARGS` with at most `nofile`
/// descriptors (`ulimit -n`), trusting a fresh client key.
async fn serve(dir: &TempDir, nofile: u32, args: &[&str]) -> Server {
    let server_key = dir.0.join("server");
    let client_key = dir.0.join("client");
    Identity::generate().save(&server_key).unwrap();
    let client = Identity::generate();
    client.save(&client_key).unwrap();
    let trust = format!("{}.pub", client_key.display());
    let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(DUPLEX)
        .args(["serve", "tcp://127.0.0.1:0", "--echo", "--name", "srv"])
        .args(["--key", server_key.to_str().unwrap(), "--trust-key", &trust])
        .args(args)
        .env("DUPLEX_HOME", dir.0.join("home"))
        .env("RUST_LOG", "duplex=warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap().to_string();
    let endpoint = duplex_tests::listening_endpoint(&mut child).await;
    Server {
        child,
        pid,
        endpoint,
        server_key,
        client,
    }
}

/// A client peer of `server`, trusting its key.
fn client_of(server: &Server, name: &str) -> duplex::Peer {
    let sid = Identity::load(&server.server_key).unwrap();
    peer_trusting(name, &server.client, &[&sid], Config::default())
}

/// One echo round trip of `n` bytes through `server`'s echo service.
async fn echo(peer: &duplex::Peer, server: &Server, n: usize) {
    peer.connect(server.endpoint.as_str()).await.unwrap();
    let mut ch = peer.open("srv", "echo", Headers::new()).await.unwrap();
    let data = duplex_tests::random_bytes(n);
    let (mut r, mut w) = tokio::io::split(&mut ch);
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let ((), got) = tokio::join!(send, r.read_to_end(&mut back));
    got.unwrap();
    assert!(back == data);
}

/// Polls `f` until it holds or `secs` pass; returns whether it held.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// 1,500 connections that send an SSH banner and then nothing, held open
/// by the attacker, against a server allowed 256 descriptors: each
/// handshake the server ends (the oldest of more than 128 unfinished ones,
/// or at the 10 s handshake timeout) gives its socket back at once, so the
/// server stays near its baseline, and a real client is served while the
/// attack runs and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_then_silence_does_not_exhaust_descriptors() {
    const ATTACKERS: usize = 1500;
    const UNFINISHED: usize = 128; // Config::max_unauthenticated
    let dir = TempDir::new("attack-banner");
    let server = serve(&dir, 256, &[]).await;
    let port = server.port();
    let base_fds = server.fds();
    let base_rss = server.rss_kib();

    let attack = tokio::spawn(async move {
        let mut held = Vec::with_capacity(ATTACKERS);
        for _ in 0..ATTACKERS {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            // A write to a server that closed already may fail: fine.
            let _ = s.write_all(b"SSH-2.0-attacker_1.0\r\n").await;
            held.push(s);
        }
        held
    });
    // A real client is served while the attack runs.
    let alice = client_of(&server, "alice");
    let started = Instant::now();
    within(20, echo(&alice, &server, 64 << 10)).await;
    let served_in = started.elapsed();
    let held = within(60, attack).await.unwrap();
    let flood_peak = server.fds();
    // Each handshake ended to make room gave its socket back within a
    // second: only the unfinished ones hold one now.
    let ended_released = eventually(1, || server.fds() <= base_fds + UNFINISHED + 8).await;
    let after_flood = server.fds();
    // Once their 10 s are up, none does.
    let settled = eventually(15, || server.fds() <= base_fds + 4).await;
    let fds = server.fds();
    let rss = server.rss_kib();
    eprintln!(
        "served in {served_in:?}; descriptors: baseline {base_fds}, {flood_peak} as the flood ended, {after_flood} a second later, {fds} after the handshake timeout; RSS: baseline {base_rss} KiB, now {rss} KiB"
    );
    assert!(
        ended_released,
        "{after_flood} descriptors held a second after the flood (baseline {base_fds}, {UNFINISHED} unfinished handshakes allowed)"
    );
    assert!(settled, "{fds} descriptors held (baseline {base_fds})");
    assert!(
        rss <= base_rss + 32 * 1024,
        "RSS {rss} KiB after the attack (baseline {base_rss} KiB)"
    );
    // Served after it too, with the attacker's sockets still open.
    let bob = client_of(&server, "bob");
    within(10, echo(&bob, &server, 1 << 10)).await;
    drop(held);
    alice.shutdown().await;
    bob.shutdown().await;
    drop(server.child);
}
