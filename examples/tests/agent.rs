//! The agent example as real processes: the agent starts first and polls
//! an endpoint where nothing listens yet; the server, started after it,
//! waits for it, checks its health, runs a script on it and gets the
//! agent's `Server.Log` callback. A failing script fails the server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Output, Stdio};

use duplex_tests::{TempDir, within};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const AGENT: &str = env!("CARGO_BIN_EXE_agent");

/// A port nothing listens on (for now).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `agent run --poll endpoint` and waits until it says it is
/// polling (by then it has made the demo key the server will load).
async fn start_agent(dir: &TempDir, endpoint: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(AGENT)
        .args(["run", "--poll", endpoint])
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("agent exited");
    assert_eq!(line, format!("agent-1 polling {endpoint}"));
    (child, lines)
}

/// Runs `agent server --listen endpoint [script]` to its end.
async fn run_server(dir: &TempDir, endpoint: &str, script: Option<&str>) -> Output {
    Command::new(AGENT)
        .args(["server", "--listen", endpoint])
        .args(script)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_started_first_is_called_by_the_server_it_polls() {
    let dir = TempDir::new("agent-poll");
    within(60, async {
        let endpoint = format!("tcp://127.0.0.1:{}", free_port());
        // Nothing listens there yet: the agent keeps dialling.
        let (mut agent, mut agent_out) = start_agent(&dir, &endpoint).await;
        let out = run_server(&dir, &endpoint, None).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "server failed\n{stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!("listening on {endpoint}")),
            "{stdout}"
        );
        let pid = agent.id().unwrap();
        assert!(
            stdout.contains(&format!("health: agent-1 pid {pid} up ")),
            "{stdout}"
        );
        assert!(
            stdout.contains("log from agent-1: running: echo one; echo two"),
            "{stdout}"
        );
        let one = stdout.find("agent-1> one\n").expect(&stdout);
        let two = stdout.find("agent-1> two\n").expect(&stdout);
        assert!(one < two, "{stdout}");
        assert!(stdout.contains("script done"), "{stdout}");

        // The agent dialled in, and is still serving (a daemon).
        let line = agent_out.next_line().await.unwrap().unwrap();
        assert!(line.starts_with("connected to agent-server "), "{line}");
        assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
        agent.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_script_fails_the_server_after_its_output() {
    let dir = TempDir::new("agent-fail");
    within(60, async {
        let endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let (mut agent, _agent_out) = start_agent(&dir, &endpoint).await;
        let out = run_server(&dir, &endpoint, Some("echo partial; exit 3")).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        // Exit 1: an error, not a usage error (2).
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stdout.contains("agent-1> partial\n"), "{stdout}");
        assert!(!stdout.contains("script done"), "{stdout}");
        assert!(
            stderr.starts_with("Error: ") && stderr.contains("the script failed: exit status: 3"),
            "{stderr}"
        );
        agent.kill().await.unwrap();
    })
    .await;
}
