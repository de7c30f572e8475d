//! `duplex serve --echo` attacked from outside, in its own process with its
//! own limits (a lowered descriptor limit, as services often run with):
//! connections that never finish their handshake, plain SSH clients that
//! send more than they read. The server is watched through `/proc`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use duplex::{Config, Headers, Identity};
use duplex_tests::{SSH_OPTS, TempDir, fds_of, peer_trusting, random_bytes, rss_kib_of, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

struct Server {
    child: Child,
    pid: String,
    endpoint: String,
    server_key: PathBuf,
    client: Identity,
    client_key: PathBuf,
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

    /// Stops the server; returns what it logged (when started logged).
    async fn stop(&mut self) -> String {
        self.child.start_kill().unwrap();
        let mut log = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut log).await.unwrap();
        }
        let _ = self.child.wait().await;
        log
    }
}

/// `duplex serve tcp://127.0.0.1:0 --echo ARGS` with at most `nofile`
/// descriptors (`ulimit -n`), trusting a fresh client key.
async fn serve(dir: &TempDir, nofile: u32, args: &[&str]) -> Server {
    start(dir, nofile, args, false).await
}

/// As `serve`, keeping what the server logs at `info` (see `Server::stop`).
async fn serve_logged(dir: &TempDir, nofile: u32, args: &[&str]) -> Server {
    start(dir, nofile, args, true).await
}

async fn start(dir: &TempDir, nofile: u32, args: &[&str], logged: bool) -> Server {
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
        .env(
            "RUST_LOG",
            if logged { "duplex=info" } else { "duplex=warn" },
        )
        .stderr(if logged {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
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
        client_key,
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
    duplex_tests::echo_with(peer, "srv", n).await;
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

/// `ssh -W echo:1` to `server` (OpenSSH, checking the host key), with
/// stdin and stdout piped.
fn ssh_w(dir: &TempDir, server: &Server) -> Child {
    let kh = dir.0.join("known_hosts");
    let sid = Identity::load(&server.server_key).unwrap();
    let port = server.port().to_string();
    std::fs::write(
        &kh,
        format!("[127.0.0.1]:{port} {}\n", sid.public_key().to_openssh()),
    )
    .unwrap();
    Command::new("ssh")
        .args(["-p", &port, "-i", server.client_key.to_str().unwrap()])
        .args(SSH_OPTS)
        .args(["-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .args(["-W", "echo:1", "tester@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the OpenSSH client (ssh) must be installed: apt-get install openssh-client")
}

/// The bound a plain client's channel keeps the server to: what it
/// buffers from the client (`Config::plain_channel_buffer`, 1 MiB), what
/// the echo queued back (the same bound), and a fixed allowance for the
/// connection (session, buffers, allocator slack).
const PLAIN_BOUND_KIB: u64 = 2 * 1024 + 6 * 1024;

/// A plain SSH client (`ssh -W`) that sends 64 MiB to the echo service
/// while reading what comes back at 1 KiB/s, and one that never reads: the
/// server holds at most its plain-channel bound (the client is held back
/// by its channel's SSH window), and keeps serving others meanwhile; a
/// client that reads echoes 16 MiB through the same service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_that_does_not_read_is_held_to_the_bound() {
    let dir = TempDir::new("attack-plain");
    let server = serve(&dir, 1024, &[]).await;
    let base = server.rss_kib();
    let idle_fds = server.fds();
    for reads_per_second in [1usize, 0] {
        let mut ssh = ssh_w(&dir, &server);
        let mut stdin = ssh.stdin.take().unwrap();
        let mut stdout = ssh.stdout.take().unwrap();
        let writer = tokio::spawn(async move {
            let chunk = vec![0x5au8; 64 << 10];
            for _ in 0..(64 << 20) / chunk.len() {
                if stdin.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                if reads_per_second == 0 {
                    std::future::pending::<()>().await;
                }
                if stdout.read_exact(&mut buf).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        // Sampled for 4 s, long enough for 64 MiB to cross loopback many
        // times over if nothing held it back.
        let mut peak = 0;
        for _ in 0..40 {
            peak = peak.max(server.rss_kib());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Served meanwhile.
        let carol = client_of(&server, "carol");
        within(10, echo(&carol, &server, 256 << 10)).await;
        carol.shutdown().await;
        eprintln!(
            "reading {reads_per_second} KiB/s: server RSS baseline {base} KiB, peak {peak} KiB (+{} KiB)",
            peak.saturating_sub(base)
        );
        assert!(
            peak <= base + PLAIN_BOUND_KIB,
            "server RSS reached {peak} KiB from {base} KiB behind a client reading {reads_per_second} KiB/s"
        );
        ssh.kill().await.unwrap();
        writer.abort();
        reader.abort();
        // The next round starts once the server has let this connection
        // go (its socket closed), so the rounds' buffers never add up.
        assert!(
            eventually(10, || server.fds() <= idle_fds).await,
            "the server still holds {} descriptors (idle: {idle_fds}) 10 s after the ssh client was killed",
            server.fds()
        );
    }
    // A client that reads gets its 16 MiB echoed.
    let mut ssh = ssh_w(&dir, &server);
    let mut stdin = ssh.stdin.take().unwrap();
    let data = random_bytes(16 << 20);
    let input = data.clone();
    tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
        drop(stdin);
    });
    let out = within(60, ssh.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data, "echo through ssh -W differs");
    drop(server.child);
}

/// Three connections with one trusted key, each opening channels that it
/// never reads and filling each one's window, until refused: the server
/// holds at most that key's budget (`Config::max_peer_buffer`, 128 MiB by
/// default) plus per-channel bookkeeping, refuses with an error naming the
/// budget (logged on the server with the remote's name, key and address),
/// and serves a client with another key meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_hold_more_than_its_budget() {
    const PEER_BUDGET_KIB: u64 = 128 * 1024; // Config::max_peer_buffer
    const WINDOW: usize = 128 << 10; // Config::channel_window
    let dir = TempDir::new("attack-budget");
    let other = Identity::generate();
    other.save(dir.0.join("other")).unwrap();
    let trust_other = format!("{}.pub", dir.0.join("other").display());
    let mut server = serve_logged(&dir, 4096, &["--trust-key", &trust_other]).await;
    let base = server.rss_kib();
    let sid = Identity::load(&server.server_key).unwrap();
    let mut attackers = Vec::new();
    for i in 0..3 {
        let config = Config::default().channel_window(32 << 10).unwrap();
        let p = peer_trusting(&format!("attacker-{i}"), &server.client, &[&sid], config);
        p.connect(server.endpoint.as_str()).await.unwrap();
        attackers.push(p);
    }
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for p in &attackers {
        let (p, opened) = (p.clone(), opened.clone());
        tasks.spawn(async move {
            let mut held = Vec::new();
            loop {
                match p.open("srv", "echo", Headers::new()).await {
                    Ok(mut ch) => {
                        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // Fills the window the server granted; never reads.
                        let fill = tokio::spawn(async move {
                            let _ = ch.write_all(&vec![1u8; WINDOW]).await;
                            ch
                        });
                        held.push(fill);
                    }
                    Err(e) => break (e.to_string(), held),
                }
            }
        });
    }
    let mut peak = base;
    let mut refusals = Vec::new();
    let mut held = Vec::new();
    let sampling = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::pin!(sampling);
    while !tasks.is_empty() {
        tokio::select! {
            r = tasks.join_next() => {
                let (e, h) = r.unwrap().unwrap();
                refusals.push(e);
                held.extend(h);
            }
            _ = &mut sampling => peak = peak.max(server.rss_kib()),
        }
    }
    // Let every window fill, then look again.
    let mut chans = Vec::new();
    for h in held {
        chans.push(within(60, h).await.unwrap());
    }
    for _ in 0..20 {
        peak = peak.max(server.rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another key is served meanwhile.
    let bob = peer_trusting("bob", &other, &[&sid], Config::default());
    within(20, echo(&bob, &server, 256 << 10)).await;
    let n = opened.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{n} channels held by one key over 3 connections; server RSS baseline {base} KiB, peak {peak} KiB (+{} KiB); refusals: {refusals:?}",
        peak - base
    );
    for e in &refusals {
        assert!(e.contains("Config::max_peer_buffer"), "{e}");
    }
    // The budget, plus bookkeeping per channel (its state, the echo task
    // and its copy buffer): 48 MiB for about 1,000 channels.
    assert!(
        peak <= base + PEER_BUDGET_KIB + 48 * 1024,
        "server RSS {peak} KiB from {base} KiB"
    );
    assert!(n >= 1000, "only {n} channels before the budget refused");
    drop(chans);
    for p in attackers {
        p.shutdown().await;
    }
    bob.shutdown().await;
    let log = server.stop().await;
    assert!(
        log.contains("refused a channel open")
            && log.contains("Config::max_peer_buffer")
            && log.contains("attacker-")
            && log.contains(&server.client.fingerprint().to_string()),
        "the server's log does not show the refusal:\n{log}"
    );
}

/// A key the server does not trust leaves a trace in its log: the claimed
/// name, the key's fingerprint and the address it came from (sshd logs
/// these; a scanner is no longer invisible).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_key_is_logged_with_name_fingerprint_and_address() {
    let dir = TempDir::new("attack-key");
    let mut server = serve_logged(&dir, 1024, &[]).await;
    let sid = Identity::load(&server.server_key).unwrap();
    let stranger = Identity::generate();
    let p = peer_trusting("mallory", &stranger, &[&sid], Config::default());
    let err = p.connect(server.endpoint.as_str()).await.unwrap_err();
    assert!(
        matches!(err, duplex::ConnectError::AuthRejected { .. }),
        "{err:?}"
    );
    p.shutdown().await;
    let log = server.stop().await;
    let line = log
        .lines()
        .find(|l| l.contains("refused a key at authentication"))
        .unwrap_or_else(|| panic!("no trace of the refused key in the log:\n{log}"));
    assert!(
        line.contains("mallory")
            && line.contains(&stranger.fingerprint().to_string())
            && line.contains("from 127.0.0.1:"),
        "{line}"
    );
}
