//! Echo over Duplex, in two processes.
//!
//! ```text
//! echo serve ENDPOINT                       accept channels, echo bytes, frames and error frames
//! echo send ENDPOINT [SERVICE] [KEY=VALUE]...  copy stdin to a channel, the echo to stdout
//! echo demo                                 start `serve` as a child process, send to it, stop it
//!
//! flags: --key FILE              private key (default: the demo key, created if missing)
//!        --authorized-keys FILE  keys allowed to connect (serve)
//!        --known-hosts FILE      host keys accepted (send)
//!        --trust-key FILE.pub    trust this public key both ways (repeatable)
//!        --name NAME             peer name (default: echo-server / echo-client)
//! ```
//!
//! With no key or trust flags both sides use a demo key pair kept in
//! `.duplex-demo/` under the current directory, and trust only that key, so
//! `serve` and `send` started from the same directory trust each other.
//! `serve` prints `listening on ENDPOINT` once bound (handy with port 0).
//! `--help` prints the usage (exit 0); a usage error exits 2.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use duplex::{Headers, ReadEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage:
  echo serve ENDPOINT [flags]
  echo send ENDPOINT [SERVICE] [KEY=VALUE]... [flags]
  echo demo
flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
ENDPOINT: tcp://HOST:PORT or unix:///PATH";

#[path = "../common/child.rs"]
mod child;
#[path = "../common/flags.rs"]
#[allow(dead_code)] // shared by the examples; echo builds its peers with a Config
mod flags;
#[path = "../common/usage.rs"]
mod usage;
use child::spawn_listening;
use flags::{Flags, build_peer_with, parse_flags};
use usage::{bad_command, no_args, usage_error};

async fn serve(f: Flags) -> anyhow::Result<()> {
    let [endpoint] = f.positional.as_slice() else {
        return Err(usage_error("serve takes one ENDPOINT"));
    };
    let endpoint = endpoint.clone();
    // Echo takes no nested channels: refuse them at once, with a reason,
    // rather than let them wait for the accept timeout.
    let config = duplex::Config::default().max_nesting_depth(0)?;
    let peer = build_peer_with(&f, "echo-server", config)?;
    let bound = peer.bind(endpoint.as_str()).await?;
    // Whoever started us may stop reading stdout once it has the endpoint:
    // a failed write must not take the server down.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {bound}");
    let _ = writeln!(
        out,
        "name {} fingerprint {}",
        peer.name(),
        peer.fingerprint()
    );
    let _ = out.flush();
    loop {
        let incoming = tokio::select! {
            i = peer.accept() => i,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        eprintln!(
            "channel {:?} from {} headers {:?}",
            incoming.service(),
            incoming.meta().remote_peer(),
            incoming.headers()
        );
        let ch = incoming.accept().await;
        tokio::spawn(async move {
            if let Err(e) = echo(ch).await {
                eprintln!("echo ended with an error: {e}");
            }
        });
    }
    peer.shutdown().await;
    Ok(())
}

/// Echoes the byte stream (and so any frames on it) and the error frames.
async fn echo(ch: duplex::Channel) -> anyhow::Result<()> {
    let (mut r, mut w) = ch.split();
    let mut buf = vec![0u8; 64 << 10];
    while let Some(event) = r.read_event(&mut buf).await? {
        match event {
            ReadEvent::Data(n) => w.write_all(&buf[..n]).await?,
            ReadEvent::Error(frame) => w.write_error(&frame).await?,
        }
    }
    w.close_write().await?;
    Ok(())
}

async fn send(f: Flags) -> anyhow::Result<()> {
    let mut pos = f.positional.iter();
    let endpoint = pos
        .next()
        .ok_or_else(|| usage_error("send needs an ENDPOINT"))?
        .clone();
    let mut service = "echo".to_owned();
    let mut headers = Headers::new();
    for a in pos {
        match a.split_once('=') {
            Some((k, v)) => {
                headers.push(k, v);
            }
            None => service = a.clone(),
        }
    }
    // A client only: channels the server opens to us are refused at once.
    let config = duplex::Config::default().accept_channels(false);
    let peer = build_peer_with(&f, "echo-client", config)?;
    let remote = peer.connect(endpoint.as_str()).await?;
    eprintln!("connected to {} ({})", remote.name, remote.fingerprint);
    let ch = peer.open(&remote.name, &service, headers).await?;
    let (mut r, mut w) = ch.split();
    let upload = async move {
        let mut stdin = tokio::io::stdin();
        tokio::io::copy(&mut stdin, &mut w).await?;
        w.close_write().await?;
        anyhow::Ok(())
    };
    let download = async move {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut r, &mut stdout).await?;
        stdout.flush().await?;
        anyhow::Ok(())
    };
    let (up, down) = tokio::join!(upload, download);
    up?;
    down?;
    peer.shutdown().await;
    Ok(())
}

/// Two processes: this one sends, a child serves.
async fn demo() -> anyhow::Result<()> {
    let (mut child, endpoint) = spawn_listening(&["serve", "tcp://127.0.0.1:0"]).await?;
    println!(
        "server process {} listening on {endpoint}",
        child.id().unwrap_or(0)
    );

    let config = duplex::Config::default().accept_channels(false);
    let peer = build_peer_with(&Flags::default(), "echo-client", config)?;
    let remote = peer.connect(endpoint.as_str()).await?;
    println!("connected to {} ({})", remote.name, remote.fingerprint);
    let headers = Headers::new().with("greeting", "hello");
    let mut ch = peer.open(&remote.name, "echo", headers).await?;
    let message = b"Hello over Duplex!\n";
    ch.write_all(message).await?;
    ch.write_frame(b"a frame").await?;
    ch.write_error(b"an error frame").await?;
    ch.close_write().await?;
    let mut back = vec![0u8; message.len()];
    ch.read_exact(&mut back).await?;
    print!("echoed bytes: {}", String::from_utf8_lossy(&back));
    let frame = ch.read_frame().await?.context("no frame echoed")?;
    println!("echoed frame: {}", String::from_utf8_lossy(&frame));
    let err = ch.read_error().await?.context("no error frame echoed")?;
    println!("echoed error frame: {}", String::from_utf8_lossy(&err));
    drop(ch);
    peer.shutdown().await;
    child.kill().await?;
    println!("server stopped; demo done");
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    match cmd.as_str() {
        "serve" => serve(parse_flags(args)?).await,
        "send" => send(parse_flags(args)?).await,
        "demo" => {
            no_args("demo", args)?;
            demo().await
        }
        other => Err(bad_command(other, "serve, send or demo")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::init_logging("warn");
    usage::exit(run().await, USAGE)
}
