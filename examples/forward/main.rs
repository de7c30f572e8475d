//! TCP port forwarding over Duplex, like `ssh -L`: each local TCP
//! connection becomes a `tcp` channel, which the far side joins to a TCP
//! connection to the target.
//!
//! ```text
//! forward serve --listen ENDPOINT                        take `tcp` channels, connect each to its target
//! forward local --via ENDPOINT --listen HOST:PORT --target HOST:PORT
//!                                                        forward HOST:PORT here to the target, via the server
//!
//! flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
//! ```
//!
//! `local` prints `forwarding ADDRESS to TARGET via ENDPOINT` once its
//! listener is bound (port 0 picks a free port; the line shows it). Each
//! connection it accepts is a channel with the header `target=HOST:PORT`;
//! `serve` connects to the target and splices the two with
//! `Channel::join`, so bytes flow both ways and a half-close (one side
//! shutting down its writing) is passed on. If the target cannot be
//! reached, `serve` rejects the channel with the reason and `local` closes
//! the local connection. This server forwards to any target its clients
//! name: a real one would keep a list of allowed targets.
//!
//! Key and trust flags as in the echo example; without them both sides
//! use the demo key under `./.duplex-demo/`. `--help` prints the usage
//! (exit 0); a usage error exits 2.

use std::process::ExitCode;

use duplex::{Headers, IncomingChannel, Peer};
use tokio::net::{TcpListener, TcpStream};

#[path = "../common/flags.rs"]
mod flags;
#[path = "../common/usage.rs"]
mod usage;
use flags::{Flags, Own, build_peer, parse_flags_with};
use usage::{bad_command, usage_error};

const USAGE: &str = "usage:
  forward serve --listen ENDPOINT [flags]
  forward local --via ENDPOINT --listen HOST:PORT --target HOST:PORT [flags]
flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
ENDPOINT: tcp://HOST:PORT or unix:///PATH";

// ---- the far side ----

async fn serve(f: Flags, own: Own) -> anyhow::Result<()> {
    let listen = own.need("--listen", "ENDPOINT")?;
    if !f.positional.is_empty() {
        return Err(usage_error("serve takes no arguments besides its flags"));
    }
    let peer = build_peer(&f, "forward-server")?;
    let mut tcp = peer.acceptor(["tcp"])?;
    let bound = peer.bind(listen).await?;
    println!("listening on {bound}");
    loop {
        let incoming = tokio::select! {
            i = tcp.accept() => i,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(connect_target(incoming));
    }
    peer.shutdown().await;
    Ok(())
}

/// Connects a `tcp` channel to its target.
async fn connect_target(incoming: IncomingChannel) {
    let Some(target) = incoming.headers().get("target").map(str::to_owned) else {
        return incoming.reject("no target header").await;
    };
    let stream = match TcpStream::connect(&target).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot connect to {target}: {e}");
            eprintln!("{why}");
            return incoming.reject(&why).await;
        }
    };
    let from = incoming.meta().remote_peer().to_owned();
    let ch = incoming.accept().await;
    match ch.join(stream).await {
        Ok(n) => eprintln!(
            "{from} -> {target}: {} bytes there, {} back",
            n.from_channel, n.to_channel
        ),
        Err(e) => eprintln!("{from} -> {target}: {e}"),
    }
}

// ---- the near side ----

async fn local(f: Flags, own: Own) -> anyhow::Result<()> {
    let via = own.need("--via", "ENDPOINT")?;
    let listen = own.need("--listen", "HOST:PORT")?;
    let target = own.need("--target", "HOST:PORT")?.to_owned();
    if !f.positional.is_empty() {
        return Err(usage_error("local takes no arguments besides its flags"));
    }
    let peer = build_peer(&f, "forward-local")?;
    let server = peer.connect(via).await?.name;
    let listener = TcpListener::bind(listen).await?;
    println!(
        "forwarding {} to {target} via {via}",
        listener.local_addr()?
    );
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tokio::signal::ctrl_c() => break,
        };
        let (stream, _) = accepted?;
        tokio::spawn(forward(
            peer.clone(),
            server.clone(),
            stream,
            target.clone(),
        ));
    }
    peer.shutdown().await;
    Ok(())
}

/// Forwards one local connection through a `tcp` channel.
async fn forward(peer: Peer, server: String, stream: TcpStream, target: String) {
    let from = stream
        .peer_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let headers = Headers::new().with("target", &target);
    let ch = match peer.open(&server, "tcp", headers).await {
        Ok(ch) => ch,
        Err(e) => {
            // Dropping the stream closes the local connection.
            return eprintln!("{from}: {e}");
        }
    };
    match ch.join(stream).await {
        Ok(n) => eprintln!(
            "{from} -> {target}: {} bytes there, {} back",
            n.to_channel, n.from_channel
        ),
        Err(e) => eprintln!("{from} -> {target}: {e}"),
    }
}

async fn cli() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    match cmd.as_str() {
        "serve" => {
            let (f, own) = parse_flags_with(args, &["--listen"])?;
            serve(f, own).await
        }
        "local" => {
            let (f, own) = parse_flags_with(args, &["--via", "--listen", "--target"])?;
            local(f, own).await
        }
        other => Err(bad_command(other, "serve or local")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::init_logging("warn");
    usage::exit(cli().await, USAGE)
}
