//! The calculator example as two processes, in both modes: the server
//! calls `Calc.Add` on the agent whether it dialled the agent (listening
//! mode) or the agent dialled it (polling mode), and the agent calls back
//! into the server during the call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;

use duplex_tests::{TempDir, within};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const CALC: &str = env!("CARGO_BIN_EXE_calculator");

fn start(dir: &TempDir, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(CALC)
        .args(args)
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn line_with(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    loop {
        let line = lines.next_line().await.unwrap().expect("process exited");
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

/// Reads the server's output to its end and checks the calls' results.
async fn check_server(mut child: Child, mut lines: Lines<BufReader<ChildStdout>>, a: i64, b: i64) {
    let mut out = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        out.push(line);
    }
    let status = child.wait().await.unwrap();
    let out = out.join("\n");
    assert!(status.success(), "server failed: {status}\n{out}");
    let sum = a + b;
    assert!(
        out.contains(&format!("Calc.Add({a}, {b}) = {sum}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("log from agent: agent computed {a} + {b} = {sum}")),
        "{out}"
    );
    assert!(out.contains("Calc.Sum(1..=10) = 55"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_mode_the_server_dials_the_agent() {
    let dir = TempDir::new("calc-listen");
    within(60, async {
        let (mut agent, mut agent_out) = start(&dir, &["agent", "--listen", "tcp://127.0.0.1:0"]);
        let endpoint = line_with(&mut agent_out, "listening on ").await;
        let (server, server_out) = start(&dir, &["server", "--agent", &endpoint, "19", "23"]);
        check_server(server, server_out, 19, 23).await;
        agent.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_the_agent_dials_the_server() {
    let dir = TempDir::new("calc-poll");
    within(60, async {
        // The server makes the demo key before it prints its endpoint, so
        // the agent started next finds it.
        let (server, mut server_out) = start(
            &dir,
            &["server", "--listen", "tcp://127.0.0.1:0", "-5", "8"],
        );
        let endpoint = line_with(&mut server_out, "listening on ").await;
        let (mut agent, mut agent_out) = start(&dir, &["agent", "--poll", &endpoint]);
        line_with(&mut agent_out, "polling ").await;
        check_server(server, server_out, -5, 8).await;
        agent.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_both_modes() {
    let dir = TempDir::new("calc-demo");
    within(60, async {
        let out = Command::new(CALC)
            .arg("demo")
            .current_dir(&dir.0)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("Calc.Add(2, 3) = 5"), "{text}");
        assert!(text.contains("Calc.Add(40, 2) = 42"), "{text}");
        assert!(text.contains("demo done"), "{text}");
    })
    .await;
}
