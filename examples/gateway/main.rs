//! A Duplex gateway: accepts channels from clients and forwards each to a
//! backend peer, splicing the two channels (data, error frames, half-close
//! and trailers) and passing the headers through, without touching payloads.
//!
//! ```text
//! gateway ENDPOINT [--backend ENDPOINT]... [flags]
//! ```
//!
//! Backends are the peers the gateway dials (`--backend`) and the peers that
//! dial it and say they are backends with a name starting with `backend`. A
//! channel with a `backend=NAME` header goes to that peer; otherwise backends
//! take turns. Flags as in the echo example (`--key`, `--authorized-keys`,
//! `--known-hosts`, `--trust-key`, `--name`); with none, the demo key pair in
//! `./.duplex-demo/`. Prints `listening on ENDPOINT` once bound, and one line
//! per forwarded channel on stderr. `--help` prints the usage (exit 0); a
//! usage error exits 2.

#[path = "../common/flags.rs"]
mod flags;
#[path = "../common/usage.rs"]
mod usage;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use duplex::{IncomingChannel, Peer};

const USAGE: &str = "usage: gateway ENDPOINT [--backend ENDPOINT]... [--key FILE] [--authorized-keys FILE] [--known-hosts FILE] [--trust-key FILE.pub] [--name NAME]";

/// Picks the backend for a channel: the one its `backend` header names, or
/// the next in turn.
fn choose(peer: &Peer, incoming: &IncomingChannel, turn: &AtomicUsize) -> Result<String, String> {
    let backends: Vec<String> = peer
        .peers()
        .into_iter()
        .map(|p| p.name)
        .filter(|n| n.starts_with("backend"))
        .collect();
    match incoming.headers().get("backend") {
        Some(name) if backends.iter().any(|b| b == name) => Ok(name.to_owned()),
        Some(name) => Err(format!("no backend named {name:?} is connected")),
        None if backends.is_empty() => Err("no backend is connected".to_owned()),
        None => {
            let i = turn.fetch_add(1, Ordering::Relaxed) % backends.len();
            Ok(backends[i].clone())
        }
    }
}

async fn forward(peer: Peer, incoming: IncomingChannel, turn: Arc<AtomicUsize>) {
    let backend = match choose(&peer, &incoming, &turn) {
        Ok(b) => b,
        Err(why) => return incoming.reject(&why).await,
    };
    let service = incoming.service().to_owned();
    let from = incoming.meta().remote_peer().to_owned();
    let back = match peer
        .open(&backend, &service, incoming.headers().clone())
        .await
    {
        Ok(ch) => ch,
        // Pass the backend's answer on to the client.
        Err(e) => return incoming.reject(&e.to_string()).await,
    };
    let front = incoming.accept().await;
    eprintln!("routed {service:?} from {from} to {backend}");
    match front.splice(back).await {
        Ok(s) => eprintln!(
            "{from} -> {backend}: {} bytes up, {} down",
            s.from_channel, s.to_channel
        ),
        Err(e) => eprintln!("{from} -> {backend}: {e}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::exit(run().await, USAGE)
}

async fn run() -> anyhow::Result<()> {
    let f = flags::parse_flags(std::env::args().skip(1))?;
    let [endpoint] = f.positional.as_slice() else {
        return Err(usage::usage_error("give one ENDPOINT to listen on"));
    };
    let endpoint = endpoint.clone();
    let peer = flags::build_peer(&f, "gateway")?;
    for b in &f.backends {
        let info = peer.connect(b.as_str()).await?;
        anyhow::ensure!(
            info.name.starts_with("backend"),
            "{b} is peer {:?}: backend names start with \"backend\"",
            info.name
        );
        eprintln!("backend {} at {b}", info.name);
    }
    let bound = peer.bind(endpoint.as_str()).await?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {bound}");
    let _ = out.flush();
    let turn = Arc::new(AtomicUsize::new(0));
    loop {
        let incoming = tokio::select! {
            i = peer.accept() => i,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(forward(peer.clone(), incoming, turn.clone()));
    }
    peer.shutdown().await;
    Ok(())
}
