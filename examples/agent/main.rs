//! A polling agent, Halibut style: the agent dials its server (and keeps
//! re-dialling), and the server calls the agent's methods over that
//! connection.
//!
//! ```text
//! agent run --poll ENDPOINT [--name NAME]          the agent: dial the server, serve it forever
//! agent server --listen ENDPOINT [--agent NAME] [SCRIPT]
//!                                                  bind, wait for the agent, check its health,
//!                                                  run SCRIPT on it, print the output, exit
//!
//! flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
//! ```
//!
//! The agent (named `agent-1` unless `--name` says otherwise) serves
//! `Agent.Health` (unary) and `Agent.RunScript` (server-streaming: runs
//! the script with `sh -c` and streams each line of its output; while it
//! runs, it calls back `Server.Log` on the server). A script that exits
//! with a non-zero status fails the call; the server prints the lines it
//! got, then the error, and exits 1.
//!
//! The agent may start first: its first connect retries forever
//! (`Backoff::forever`), and the server waits for it with no time limit
//! (`Peer::wait_for_peer`). The agent is a daemon: it serves until it is
//! stopped (Ctrl-C), re-dialling whenever the connection is lost. The
//! default SCRIPT is `echo one; echo two`. Key and trust flags as in the
//! echo example; without them both sides use the demo key under
//! `./.duplex-demo/`. `--help` prints the usage (exit 0); a usage error
//! exits 2.

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use duplex::{Backoff, Config, Peer};
use duplex_rpc::{CallContext, Client, Code, Router, Sender, Server, Status};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

#[path = "../common/flags.rs"]
mod flags;
#[path = "../common/usage.rs"]
mod usage;
use flags::{Flags, Own, build_peer, build_peer_with, parse_flags_with};
use usage::{bad_command, usage_error};

const USAGE: &str = "usage:
  agent run --poll ENDPOINT [--name NAME] [flags]
  agent server --listen ENDPOINT [--agent NAME] [SCRIPT] [flags]
flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
ENDPOINT: tcp://HOST:PORT or unix:///PATH";

const DEFAULT_SCRIPT: &str = "echo one; echo two";

/// What `Agent.Health` answers.
#[derive(Serialize, Deserialize)]
struct Health {
    name: String,
    pid: u32,
    uptime_secs: u64,
}

/// What the agent serves.
fn agent_router(name: &str) -> Router {
    let (name, started) = (name.to_owned(), Instant::now());
    Router::new()
        .unary("Agent.Health", move |_ctx: CallContext, (): ()| {
            let health = Health {
                name: name.clone(),
                pid: std::process::id(),
                uptime_secs: started.elapsed().as_secs(),
            };
            async move { Ok(health) }
        })
        .server_stream(
            "Agent.RunScript",
            |ctx: CallContext, script: String, mut out: Sender<String>| async move {
                // A callback into the server while its call is open.
                let line = format!("running: {script}");
                ctx.caller().call::<_, ()>("Server.Log", &line).await?;
                // Killed if the call ends first (the server went away).
                let mut child = tokio::process::Command::new("sh")
                    .args(["-c", &script])
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()?;
                let stdout = child.stdout.take().context("no stdout")?;
                let mut lines = BufReader::new(stdout).lines();
                while let Some(line) = lines.next_line().await? {
                    out.send(&line).await?;
                }
                let status = child.wait().await?;
                if !status.success() {
                    let why = format!("the script failed: {status}");
                    return Err(Status::new(Code::UNKNOWN, why));
                }
                Ok(())
            },
        )
}

/// What the server serves: the agent's callback.
fn server_router() -> Router {
    Router::new().unary("Server.Log", |ctx: CallContext, line: String| async move {
        println!("log from {}: {line}", ctx.remote_peer());
        Ok(())
    })
}

/// `agent run`: dial the server, retrying until it is up, and serve it.
async fn run(f: Flags, own: Own) -> anyhow::Result<()> {
    let server = own.need("--poll", "ENDPOINT")?;
    if !f.positional.is_empty() {
        return Err(usage_error("run takes no arguments besides its flags"));
    }
    // The first connect retries forever, so the agent may start before
    // its server; after that the connection is re-dialled whenever lost.
    let config = Config::default().connect_backoff(Backoff::forever())?;
    let peer = build_peer_with(&f, "agent-1", config)?;
    let serving = Server::new(agent_router(peer.name())).serve(&peer)?;
    println!("{} polling {server}", peer.name());
    let remote = peer.connect(server).await?;
    println!("connected to {} ({})", remote.name, remote.fingerprint);

    let stopper = peer.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopper.shutdown().await;
        }
    });
    serving.wait().await; // until the peer is shut down
    Ok(())
}

/// `agent server`: wait for the agent to dial in, then use it.
async fn server(f: Flags, own: Own) -> anyhow::Result<()> {
    let listen = own.need("--listen", "ENDPOINT")?;
    let agent = own.get("--agent").unwrap_or("agent-1");
    let script = match f.positional.as_slice() {
        [] => DEFAULT_SCRIPT,
        [script] => script.as_str(),
        _ => return Err(usage_error("give the SCRIPT as one argument (quote it)")),
    };
    let peer = build_peer(&f, "agent-server")?;
    let _serving = Server::new(server_router()).serve(&peer)?;
    let bound = peer.bind(listen).await?;
    println!("listening on {bound}");
    let result = use_agent(&peer, agent, script).await;
    peer.shutdown().await;
    result
}

async fn use_agent(peer: &Peer, agent: &str, script: &str) -> anyhow::Result<()> {
    println!("waiting for {agent}");
    let Some(info) = peer.wait_for_peer(agent).await else {
        return Ok(()); // shut down meanwhile
    };
    println!("{} connected ({})", info.name, info.endpoint);

    let client = Client::new(peer.clone()).to(agent);
    let health: Health = client
        .with_timeout(Duration::from_secs(10))
        .call("Agent.Health", &())
        .await?;
    println!(
        "health: {} pid {} up {}s",
        health.name, health.pid, health.uptime_secs
    );

    // No timeout: a script may take as long as it takes.
    let mut lines = client
        .server_stream::<_, String>("Agent.RunScript", script)
        .await?;
    while let Some(line) = lines.recv().await? {
        println!("{agent}> {line}");
    }
    println!("script done");
    Ok(())
}

async fn cli() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    match cmd.as_str() {
        "run" => {
            let (f, own) = parse_flags_with(args, &["--poll"])?;
            run(f, own).await
        }
        "server" => {
            let (f, own) = parse_flags_with(args, &["--listen", "--agent"])?;
            server(f, own).await
        }
        other => Err(bad_command(other, "run or server")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::init_logging("warn");
    usage::exit(cli().await, USAGE)
}
