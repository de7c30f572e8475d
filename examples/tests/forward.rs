//! The forward example as real processes: TCP clients reach a TCP echo
//! server (run by the test) through `forward local` and `forward serve`,
//! several at once, with their half-close passed on; a target that
//! refuses connections closes the local connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;

use duplex_tests::{TempDir, random_bytes, within};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

const FORWARD: &str = env!("CARGO_BIN_EXE_forward");

/// Starts `forward args`, waits for the line starting with `prefix` on
/// its stdout and returns the rest of it, with its stderr lines (read
/// as they come, so the process never writes to a closed pipe).
async fn start(
    dir: &TempDir,
    args: &[&str],
    prefix: &str,
) -> (Child, String, UnboundedReceiver<String>) {
    let mut child = Command::new(FORWARD)
        .args(args)
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let rest = loop {
        let line = out.next_line().await.unwrap().expect("forward exited");
        if let Some(rest) = line.strip_prefix(prefix) {
            break rest.to_owned();
        }
    };
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            eprintln!("forward: {line}");
            let _ = tx.send(line);
        }
    });
    (child, rest, rx)
}

/// A `forward serve` and a `forward local` through it to `target`.
struct Forwarding {
    server: Child,
    /// The server's endpoint.
    endpoint: String,
    local: Child,
    /// The rest of the local side's `forwarding ` line.
    forwarding: String,
    /// The local side's stderr lines.
    local_err: UnboundedReceiver<String>,
}

/// Starts a server on an ephemeral port, then a local side listening on
/// an ephemeral port and forwarding to `target` through it.
async fn forward(dir: &TempDir, target: &str) -> Forwarding {
    let (server, endpoint, _) = start(
        dir,
        &["serve", "--listen", "tcp://127.0.0.1:0"],
        "listening on ",
    )
    .await;
    let args = [
        "local",
        "--via",
        &endpoint,
        "--listen",
        "127.0.0.1:0",
        "--target",
        target,
    ];
    let (local, forwarding, local_err) = start(dir, &args, "forwarding ").await;
    Forwarding {
        server,
        endpoint,
        local,
        forwarding,
        local_err,
    }
}

/// The address in `ADDRESS to TARGET via ENDPOINT`.
fn local_address(forwarding: &str) -> String {
    forwarding.split(' ').next().unwrap().to_owned()
}

/// A TCP echo server: echoes each connection until its EOF, then
/// shuts down its own writing.
async fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                tokio::io::copy(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// Sends `data` through `addr`, half-closes, and returns what came back.
async fn round_trip(addr: &str, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap(); // half-close: we still read
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_are_forwarded_with_half_close() {
    let dir = TempDir::new("forward-echo");
    within(60, async {
        let echo = echo_server().await;
        let Forwarding {
            mut server,
            endpoint,
            mut local,
            forwarding,
            ..
        } = forward(&dir, &echo).await;
        assert!(
            forwarding.ends_with(&format!(" to {echo} via {endpoint}")),
            "{forwarding}"
        );
        let addr = local_address(&forwarding);

        let clients: Vec<_> = (0..8)
            .map(|i| {
                let addr = addr.clone();
                let data = random_bytes((256 << 10) + i * 1000);
                tokio::spawn(async move {
                    let back = round_trip(&addr, data.clone()).await;
                    assert_eq!(back.len(), data.len(), "client {i}");
                    assert!(back == data, "client {i}: the echo differs");
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        local.kill().await.unwrap();
        server.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_closes_the_local_connection() {
    let dir = TempDir::new("forward-refused");
    within(60, async {
        // A port nothing listens on.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let Forwarding {
            mut server,
            mut local,
            forwarding,
            mut local_err,
            ..
        } = forward(&dir, &refused).await;

        let mut stream = TcpStream::connect(local_address(&forwarding))
            .await
            .unwrap();
        // Closed, with nothing in it (an EOF or a reset, never a hang).
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got).await;
        assert!(got.is_empty());
        // The reason came back from the far side.
        let why = format!("cannot connect to {refused}");
        loop {
            let line = local_err.recv().await.expect("local exited");
            if line.contains(&why) {
                assert!(line.contains("rejected channel \"tcp\""), "{line}");
                break;
            }
        }
        local.kill().await.unwrap();
        server.kill().await.unwrap();
    })
    .await;
}
