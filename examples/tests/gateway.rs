//! The gateway example as real processes: two `echo serve` backends, the
//! gateway dialling both, and `echo send` routed by a `backend` header.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;

use duplex_tests::{TempDir, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const ECHO: &str = env!("CARGO_BIN_EXE_echo");
const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");

/// Starts `exe args`, returns it with the endpoint it printed, and forwards
/// its stderr lines to the returned receiver.
async fn start(
    dir: &TempDir,
    exe: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = errs.next_line().await {
            let _ = tx.send(l);
        }
    });
    let endpoint = duplex_tests::listening_endpoint(&mut child).await;
    (child, endpoint, rx)
}

async fn send(dir: &TempDir, endpoint: &str, extra: &[&str], input: &[u8]) -> std::process::Output {
    let mut p = tokio::process::Command::new(ECHO)
        .args(["send", endpoint, "echo"])
        .args(extra)
        .current_dir(&dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = p.stdin.take().unwrap();
    let data = input.to_vec();
    tokio::spawn(async move {
        stdin.write_all(&data).await.unwrap();
    });
    within(60, p.wait_with_output()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_between_processes() {
    // Demo mode: every process uses (and trusts) the key in `dir`.
    let dir = TempDir::new("gateway");
    let (_a, a_ep, _) = start(
        &dir,
        ECHO,
        &["serve", "tcp://127.0.0.1:0", "--name", "backend-a"],
    )
    .await;
    let (_b, b_ep, _) = start(
        &dir,
        ECHO,
        &["serve", "tcp://127.0.0.1:0", "--name", "backend-b"],
    )
    .await;
    let (_g, g_ep, mut g_log) = start(
        &dir,
        GATEWAY,
        &["tcp://127.0.0.1:0", "--backend", &a_ep, "--backend", &b_ep],
    )
    .await;

    for backend in ["backend-b", "backend-a"] {
        let header = format!("backend={backend}");
        let data = duplex_tests::random_bytes(1 << 20);
        let out = send(&dir, &g_ep, &[&header], &data).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == data, "echo through the gateway differs");
        let routed = within(10, async {
            loop {
                let line = g_log.recv().await.expect("gateway exited");
                if line.starts_with("routed") {
                    break line;
                }
            }
        })
        .await;
        assert!(routed.ends_with(&format!("to {backend}")), "{routed}");
    }

    // An unknown backend is refused with a reason the client prints.
    let out = send(&dir, &g_ep, &["backend=nope"], b"x").await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no backend named \"nope\""), "{err}");
}
