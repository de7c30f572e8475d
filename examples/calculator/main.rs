//! The Halibut scenario, both ways: a server calls `Calc.Add` on an agent,
//! whichever of the two dialled.
//!
//! ```text
//! calculator agent --listen ENDPOINT    listening mode: the agent binds, the server dials it
//! calculator agent --poll ENDPOINT      polling mode: the agent dials the server (and re-dials)
//! calculator server --agent ENDPOINT [A B]   dial the agent, call it, print, exit
//! calculator server --listen ENDPOINT [A B]  bind, wait for an agent to dial in, call it, print, exit
//! calculator demo                       both modes, each with the agent in a child process
//!
//! flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
//! ```
//!
//! The agent serves `Calc.Add` (unary) and `Calc.Sum` (client-streaming);
//! while serving `Calc.Add` it calls back into its caller (`Server.Log`).
//! The server's calling code (`call_agent`) and the agent's serving code
//! (`agent_router`) are the same in both modes: only who binds and who
//! connects changes. Key and trust flags as in the echo example; without
//! them both sides use the demo key under `./.duplex-demo/`. `--help`
//! prints the usage (exit 0); a usage error exits 2.

use std::process::{ExitCode, Stdio};
use std::time::Duration;

use duplex::Peer;
use duplex_rpc::{CallContext, Client, Receiver, Router, Server, Status};

#[path = "../common/child.rs"]
mod child;
#[path = "../common/flags.rs"]
mod flags;
#[path = "../common/usage.rs"]
mod usage;
use child::spawn_listening;
use flags::{Flags, build_peer};
use usage::{bad_command, help, is_help, no_args, usage_error};

const USAGE: &str = "usage:
  calculator agent --listen ENDPOINT | --poll ENDPOINT [flags]
  calculator server --agent ENDPOINT | --listen ENDPOINT [A B] [flags]
  calculator demo
flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
ENDPOINT: tcp://HOST:PORT or unix:///PATH";

/// What the agent serves, in either mode.
fn agent_router() -> Router {
    Router::new()
        .unary(
            "Calc.Add",
            |ctx: CallContext, (a, b): (i64, i64)| async move {
                let sum = a
                    .checked_add(b)
                    .ok_or_else(|| Status::invalid_argument(format!("{a} + {b} overflows")))?;
                // A callback into the caller while its call is open.
                let line = format!("agent computed {a} + {b} = {sum}");
                ctx.caller().call::<_, ()>("Server.Log", &line).await?;
                Ok(sum)
            },
        )
        .client_stream(
            "Calc.Sum",
            |_ctx: CallContext, mut xs: Receiver<i64>| async move {
                let mut total = 0i64;
                while let Some(x) = xs.recv().await? {
                    total = total
                        .checked_add(x)
                        .ok_or_else(|| Status::invalid_argument("sum overflows"))?;
                }
                Ok(total)
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

/// The server's calls, in either mode: `Calc.Add` and `Calc.Sum` on the
/// next connected agent.
async fn call_agent(client: &Client, a: i64, b: i64) -> anyhow::Result<()> {
    let client = client.with_timeout(Duration::from_secs(10));
    let sum: i64 = client.call("Calc.Add", &(a, b)).await?;
    println!("Calc.Add({a}, {b}) = {sum}");
    let mut call = client.client_stream::<i64, i64>("Calc.Sum").await?;
    for x in 1..=10 {
        call.send(&x).await?;
    }
    println!("Calc.Sum(1..=10) = {}", call.finish().await?);
    Ok(())
}

/// The mode flags (`--listen E`, `--poll E`, `--agent E`) are this
/// example's own: moved to the front of the positional arguments before
/// the shared flags are parsed.
fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Flags> {
    let mut modes = Vec::new();
    let mut rest = Vec::new();
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        if is_help(&a) {
            return Err(help());
        }
        if matches!(a.as_str(), "--listen" | "--poll" | "--agent") {
            let value = args
                .next()
                .ok_or_else(|| usage_error(format!("{a} needs an endpoint")))?;
            modes.extend([a, value]);
        } else {
            rest.push(a);
        }
    }
    let mut f = flags::parse_flags(rest.into_iter())?;
    if modes.len() != 2 {
        return Err(usage_error("give one of --listen, --poll, --agent"));
    }
    modes.append(&mut f.positional);
    f.positional = modes;
    Ok(f)
}

/// The mode flag, its endpoint, and the numbers to add.
fn mode(f: &Flags) -> anyhow::Result<(&str, &str, (i64, i64))> {
    let number = |s: &String| {
        s.parse::<i64>()
            .map_err(|e| usage_error(format!("{s:?} is not a number to add: {e}")))
    };
    match f.positional.as_slice() {
        [flag, endpoint] => Ok((flag, endpoint, (2, 3))),
        [flag, endpoint, a, b] => Ok((flag, endpoint, (number(a)?, number(b)?))),
        _ => Err(usage_error("give two numbers to add, A and B, or none")),
    }
}

async fn announce(peer: &Peer, endpoint: &str) -> anyhow::Result<()> {
    let bound = peer.bind(endpoint).await?;
    println!("listening on {bound}");
    Ok(())
}

async fn agent(f: Flags) -> anyhow::Result<()> {
    let (flag, endpoint, _) = mode(&f)?;
    if !matches!(flag, "--listen" | "--poll") || f.positional.len() != 2 {
        return Err(usage_error(
            "agent takes --listen ENDPOINT or --poll ENDPOINT",
        ));
    }
    let peer = build_peer(&f, "agent")?;
    let _server = Server::new(agent_router()).serve(&peer)?;
    if flag == "--listen" {
        announce(&peer, endpoint).await?;
    } else {
        let remote = peer.connect(endpoint).await?;
        println!("polling {} ({})", remote.name, remote.fingerprint);
    }
    tokio::signal::ctrl_c().await?;
    peer.shutdown().await;
    Ok(())
}

async fn server(f: Flags) -> anyhow::Result<()> {
    let (flag, endpoint, (a, b)) = mode(&f)?;
    if !matches!(flag, "--agent" | "--listen") {
        return Err(usage_error(
            "server takes --agent ENDPOINT or --listen ENDPOINT",
        ));
    }
    let peer = build_peer(&f, "calc-server")?;
    let _server = Server::new(server_router()).serve(&peer)?;
    if flag == "--agent" {
        let remote = peer.connect(endpoint).await?;
        println!("listening mode: dialled agent {}", remote.name);
    } else {
        announce(&peer, endpoint).await?;
        println!("polling mode: waiting for an agent to dial in");
    }
    // Waits (up to the peer-wait timeout) for an agent when none is
    // connected yet.
    call_agent(&Client::new(peer.clone()), a, b).await?;
    peer.shutdown().await;
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    println!("== listening mode: the agent binds, the server dials it");
    let (mut agent, endpoint) =
        spawn_listening(&["agent", "--listen", "tcp://127.0.0.1:0"]).await?;
    let f = parse_args(["--agent".into(), endpoint, "2".into(), "3".into()].into_iter())?;
    server(f).await?;
    agent.kill().await?;

    println!("== polling mode: the server binds, the agent dials it");
    let peer = build_peer(&Flags::default(), "calc-server")?;
    let _server = Server::new(server_router()).serve(&peer)?;
    let bound = peer.bind("tcp://127.0.0.1:0").await?;
    let mut agent = tokio::process::Command::new(std::env::current_exe()?)
        .args(["agent", "--poll", &bound.to_string()])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    call_agent(&Client::new(peer.clone()), 40, 2).await?;
    peer.shutdown().await;
    agent.kill().await?;
    println!("demo done");
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    match cmd.as_str() {
        "agent" => agent(parse_args(args)?).await,
        "server" => server(parse_args(args)?).await,
        "demo" => {
            no_args("demo", args)?;
            demo().await
        }
        other => Err(bad_command(other, "agent, server or demo")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::init_logging("warn");
    usage::exit(run().await, USAGE)
}
