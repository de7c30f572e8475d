//! File transfer over Duplex: one channel per file, with its SHA-256 in
//! trailers and progress reports on a channel nested inside it.
//!
//! ```text
//! files receive --listen ENDPOINT --dir DIR                  store the files sent to us in DIR
//! files send --to ENDPOINT FILE... [--fail-after BYTES]      send the files, one channel each
//!
//! flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
//! ```
//!
//! A file travels on a `files.put` channel with the headers `name` and
//! `size`; its bytes follow, and the sender ends with the trailer
//! `sha256=HEX`. The receiver writes to `DIR/NAME.part` while hashing,
//! reports progress on a channel `progress` it opens inside the file's
//! channel, and once the bytes end compares the digest: when it matches
//! it renames the file into place, prints `received NAME N bytes sha256
//! HEX` and ends its side cleanly; otherwise (or when the sender aborted)
//! it deletes the part file, prints `failed NAME: REASON` and aborts the
//! channel with the reason, which the sender reports. A name with a `/`,
//! or `.`, `..` or empty, is rejected before any byte is sent.
//!
//! `--fail-after BYTES` simulates a source that fails: after sending BYTES
//! bytes the sender aborts the channel (`Channel::abort`) with the reason,
//! so the receiver knows the file is incomplete, and exits 1. Key and trust flags as in
//! the echo example; without them both sides use the demo key under
//! `./.duplex-demo/`. `--help` prints the usage (exit 0); a usage error
//! exits 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use duplex::{Channel, Children, Headers, IncomingChannel};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "../common/flags.rs"]
mod flags;
#[path = "../common/usage.rs"]
mod usage;
use flags::{Flags, Own, build_peer, parse_flags_with};
use usage::{bad_command, usage_error};

const USAGE: &str = "usage:
  files receive --listen ENDPOINT --dir DIR [flags]
  files send --to ENDPOINT FILE... [--fail-after BYTES] [flags]
flags: --key FILE  --authorized-keys FILE  --known-hosts FILE  --trust-key FILE.pub  --name NAME
ENDPOINT: tcp://HOST:PORT or unix:///PATH";

/// A progress report every this many bytes.
const PROGRESS_EVERY: u64 = 64 << 10;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---- receiving ----

async fn receive(f: Flags, own: Own) -> anyhow::Result<()> {
    let listen = own.need("--listen", "ENDPOINT")?;
    let dir = PathBuf::from(own.need("--dir", "DIR")?);
    if !f.positional.is_empty() {
        return Err(usage_error("receive takes no arguments besides its flags"));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let peer = build_peer(&f, "files-receiver")?;
    // This part of the program takes the `files.put` channels; a channel
    // for any other service is refused at once.
    let mut files = peer.acceptor(["files.put"])?;
    let bound = peer.bind(listen).await?;
    println!("listening on {bound}");
    loop {
        let incoming = tokio::select! {
            i = files.accept() => i,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(receive_file(incoming, dir.clone()));
    }
    peer.shutdown().await;
    Ok(())
}

async fn receive_file(incoming: IncomingChannel, dir: PathBuf) {
    let name = incoming
        .headers()
        .get("name")
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        println!("rejected {name:?}: not a plain file name");
        return incoming.reject("the name must be a plain file name").await;
    }
    let Some(size) = incoming.headers().get("size").and_then(|s| s.parse().ok()) else {
        println!("rejected {name:?}: no size");
        return incoming.reject("give the file's size (header size)").await;
    };
    let mut ch = incoming.accept().await;
    let part = dir.join(format!("{name}.part"));
    match store(&mut ch, &part, size).await {
        Ok((len, digest)) => {
            if let Err(e) = tokio::fs::rename(&part, dir.join(&name)).await {
                return fail(ch, &name, &part, &format!("cannot store it: {e}")).await;
            }
            println!("received {name} {len} bytes sha256 {digest}");
            // A clean end of stream tells the sender all is well.
            if let Err(e) = ch.close_write().await {
                eprintln!("{name}: the sender went away: {e}");
            }
        }
        Err(e) => fail(ch, &name, &part, &format!("{e:#}")).await,
    }
}

/// Writes the channel's bytes to `part`, reporting progress, and checks
/// them against the sender's size and digest; returns both.
async fn store(ch: &mut Channel, part: &Path, size: u64) -> anyhow::Result<(u64, String)> {
    // Progress goes back on a channel nested in this one. It is a side
    // stream: if it fails, the transfer goes on without it.
    let mut progress = ch.open("progress", Headers::new()).await.ok();
    let mut file = tokio::fs::File::create(part).await?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let (mut got, mut reported) = (0u64, 0u64);
    loop {
        // Fails if the sender aborted: never a short file taken for whole.
        let n = ch.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).await?;
        got += n as u64;
        if let Some(p) = progress.as_mut()
            && (got - reported >= PROGRESS_EVERY || got == size)
        {
            // Best effort: if the transfer failed, the next read says why.
            let _ = p.write_frame(got.to_string().as_bytes()).await;
            reported = got;
        }
    }
    file.sync_all().await?;
    if let Some(mut p) = progress {
        let _ = p.close_write().await;
    }
    // After the bytes, the sender's trailers.
    let trailers = ch.trailers().await?;
    let digest = hex(&hash.finalize());
    if got != size {
        bail!("{got} bytes arrived, the sender announced {size}");
    }
    match trailers.get("sha256") {
        Some(theirs) if theirs == digest => Ok((got, digest)),
        Some(theirs) => bail!("sha256 mismatch: sender {theirs}, received {digest}"),
        None => bail!("the sender sent no sha256 trailer"),
    }
}

/// Drops what was received and tells the sender why.
async fn fail(ch: Channel, name: &str, part: &Path, why: &str) {
    let _ = tokio::fs::remove_file(part).await;
    println!("failed {name}: {why}");
    ch.abort(why);
}

// ---- sending ----

async fn send(f: Flags, own: Own) -> anyhow::Result<()> {
    let to = own.need("--to", "ENDPOINT")?;
    let fail_after = own
        .get("--fail-after")
        .map(|n| {
            n.parse::<u64>()
                .map_err(|e| usage_error(format!("--fail-after {n:?}: not a number of bytes: {e}")))
        })
        .transpose()?;
    if f.positional.is_empty() {
        return Err(usage_error("give the FILEs to send"));
    }
    let peer = build_peer(&f, "files-sender")?;
    let remote = peer.connect(to).await?;
    let mut result = Ok(());
    for path in &f.positional {
        result = send_file(&peer, &remote.name, Path::new(path), fail_after).await;
        if result.is_err() {
            break;
        }
    }
    // Delivers what is still queued (an abort's reason, say) before exiting.
    peer.shutdown().await;
    result
}

async fn send_file(
    peer: &duplex::Peer,
    to: &str,
    path: &Path,
    fail_after: Option<u64>,
) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no file name", path.display()))?
        .to_owned();
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    let headers = Headers::new()
        .with("name", &name)
        .with("size", size.to_string());
    let mut ch = peer.open(to, "files.put", headers).await?;
    let progress = tokio::spawn(show_progress(ch.children(), name.clone(), size));

    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0u64;
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                ch.abort(&format!("reading {name} failed: {e}"));
                bail!("reading {} failed: {e}", path.display());
            }
        };
        if let Some(limit) = fail_after
            && sent + n as u64 > limit
        {
            // The simulated failure: the first `limit` bytes, then the abort.
            ch.write_all(&buf[..(limit - sent) as usize]).await?;
            ch.abort(&format!("reading {name} failed: simulated"));
            let path = path.display();
            bail!("reading {path} failed: simulated after {limit} bytes");
        }
        hash.update(&buf[..n]);
        ch.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    let digest = hex(&hash.finalize());
    let trailers = Headers::new().with("sha256", &digest);
    ch.write_trailers(&trailers).await?;
    // The receiver's verdict: a clean end of stream, or an abort saying why.
    let mut rest = Vec::new();
    ch.read_to_end(&mut rest)
        .await
        .with_context(|| format!("{name} was not stored"))?;
    let _ = progress.await;
    println!("sent {name} {sent} bytes sha256 {digest}");
    Ok(())
}

/// Prints the progress the receiver reports inside the file's channel.
async fn show_progress(children: Children, name: String, size: u64) {
    let Some(incoming) = children.accept().await else {
        return;
    };
    let mut progress = incoming.accept().await;
    // We only read this one: end our side at once (a channel dropped
    // without ending its side is aborted).
    let _ = progress.close_write().await;
    while let Ok(Some(frame)) = progress.read_frame().await {
        println!(
            "{name}: {} of {size} bytes",
            String::from_utf8_lossy(&frame)
        );
    }
}

async fn cli() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    match cmd.as_str() {
        "receive" => {
            let (f, own) = parse_flags_with(args, &["--listen", "--dir"])?;
            receive(f, own).await
        }
        "send" => {
            let (f, own) = parse_flags_with(args, &["--to", "--fail-after"])?;
            send(f, own).await
        }
        other => Err(bad_command(other, "receive or send")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::init_logging("warn");
    usage::exit(cli().await, USAGE)
}
