//! Memory figures: resident bytes per idle channel and per idle
//! connection, at the accepting end.
//!
//! The accepting end runs in a fresh child process (this binary with
//! `--mem-server`), so its resident size says what those channels or
//! connections cost and nothing else: no allocator memory left over from
//! other figures, no dialling end. The bench process dials, and asks the
//! child over its stdin for its resident size before and after.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use duplex::{AuthorizedKeys, Config, Identity, KnownHosts, Peer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;

use crate::{dx, raw};

/// The process's resident set size in bytes.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// Limits raised for 10,000 channels on one connection and 1,000
/// connections on one listener (the defaults protect a peer from such
/// numbers).
pub fn roomy_config() -> Result<Config> {
    Ok(dx::config()?
        .max_channels_per_connection(20_000)?
        .max_pending_channels(20_000)?
        .accept_backlog(20_000)?
        .max_connections(4_096)?
        .max_connection_buffer(1 << 40)?
        .max_peer_buffer(1 << 40)?
        .max_total_buffer(1 << 40)?)
}

// ---- the child ----

/// Runs the accepting end for `system` ("duplex" or "russh") with keys
/// from `dir`, answering the parent's commands on stdin:
/// `rss` (prints resident bytes), `channels N` and `conns N` (print
/// `ok` once that many are open).
pub async fn child(system: &str, dir: &Path) -> Result<()> {
    let client = Identity::load(dir.join("client"))?;
    let server_id = Identity::load(dir.join("server"))?;
    let mut out = tokio::io::stdout();
    type Count = Box<dyn Fn() -> usize>;
    let (_keep, count_chans, count_conns): (Box<dyn std::any::Any>, Count, Count) = match system {
        "duplex" => {
            let mut ak = AuthorizedKeys::new();
            ak.add(client.public_key());
            let peer = Peer::builder()
                .name(dx::SERVER)
                .identity(server_id)
                .authorized_keys(ak)
                .known_hosts(KnownHosts::new())
                .config(roomy_config()?)
                .build()?;
            let idle = Arc::new(AtomicUsize::new(0));
            let services = dx::serve_channels(&peer, idle.clone());
            let ep = peer.bind("tcp://127.0.0.1:0").await?;
            out.write_all(format!("ready {ep}\n").as_bytes()).await?;
            let p = peer.clone();
            (
                Box::new((peer, services)),
                Box::new(move || idle.load(Ordering::Relaxed)),
                Box::new(move || p.peers().len()),
            )
        }
        "russh" => {
            let key = russh::keys::PrivateKey::read_openssh_file(dir.join("client"))?;
            let srv = raw::start(key.public_key().clone()).await?;
            out.write_all(format!("ready tcp://{}\n", srv.addr).as_bytes())
                .await?;
            // Every session channel opened here is an idle one.
            let (o, c) = (srv.opened.clone(), srv.connections.clone());
            (
                Box::new(srv),
                Box::new(move || o.load(Ordering::Relaxed)),
                Box::new(move || c.load(Ordering::Relaxed)),
            )
        }
        other => bail!("no memory server for {other:?}"),
    };
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let mut words = line.split_whitespace();
        let reply = match (
            words.next(),
            words.next().and_then(|n| n.parse::<usize>().ok()),
        ) {
            (Some("rss"), _) => rss_bytes().to_string(),
            (Some("channels"), Some(n)) => {
                while count_chans() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                "ok".into()
            }
            (Some("conns"), Some(n)) => {
                while count_conns() < n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                "ok".into()
            }
            _ => format!("unknown command {line:?}"),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

// ---- the parent ----

struct MemServer {
    _child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    endpoint: String,
}

impl MemServer {
    async fn start(system: &str, dir: &Path) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--mem-server")
            .arg(system)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = stdout.next_line().await?.unwrap_or_default();
        let endpoint = first
            .strip_prefix("ready ")
            .with_context(|| format!("memory server said {first:?}"))?
            .to_owned();
        Ok(Self {
            _child: child,
            stdin,
            stdout,
            endpoint,
        })
    }

    async fn ask(&mut self, cmd: &str) -> Result<String> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        self.stdout
            .next_line()
            .await?
            .context("memory server ended")
    }

    async fn rss(&mut self) -> Result<u64> {
        Ok(self.ask("rss").await?.parse()?)
    }
}

fn keys(dir: &Path) -> Result<Identity> {
    let client = Identity::generate();
    client.save(dir.join("client"))?;
    Identity::generate().save(dir.join("server"))?;
    Ok(client)
}

fn server_trust(dir: &Path) -> Result<Identity> {
    Ok(Identity::load(dir.join("server"))?)
}

/// Resident bytes per idle channel at the accepting end, `n` channels on
/// one connection.
pub async fn per_channel(system: &str, n: usize, dir: &Path) -> Result<f64> {
    let dir = dir.join(format!("mem-ch-{system}"));
    std::fs::create_dir_all(&dir)?;
    let client_id = keys(&dir)?;
    let mut srv = MemServer::start(system, &dir).await?;
    match system {
        "duplex" => {
            let sid = server_trust(&dir)?;
            let client = dx::peer("bench-client", &client_id, &[&sid], roomy_config()?)?;
            client.connect(srv.endpoint.as_str()).await?;
            // One channel first, so lazily made per-connection state is in
            // the baseline.
            let warm = dx::open_idle(&client, 1).await?;
            srv.ask("channels 1").await?;
            let before = srv.rss().await?;
            let chans = dx::open_idle(&client, n).await?;
            srv.ask(&format!("channels {}", n + 1)).await?;
            let after = srv.rss().await?;
            drop((chans, warm));
            client.shutdown().await;
            Ok(after.saturating_sub(before) as f64 / n as f64)
        }
        _ => {
            let key = Arc::new(russh::keys::PrivateKey::read_openssh_file(
                dir.join("client"),
            )?);
            let addr = srv.endpoint.trim_start_matches("tcp://").parse()?;
            let h = Arc::new(raw::connect(addr, raw::client_config(), &key).await?);
            let warm = raw::open_idle(&h, 1).await?;
            srv.ask("channels 1").await?;
            let before = srv.rss().await?;
            let chans = raw::open_idle(&h, n).await?;
            srv.ask(&format!("channels {}", n + 1)).await?;
            let after = srv.rss().await?;
            drop((chans, warm));
            Ok(after.saturating_sub(before) as f64 / n as f64)
        }
    }
}

/// Resident bytes per idle connection at the accepting end, `n`
/// authenticated connections (each dialled by a peer of its own name).
pub async fn per_connection(system: &str, n: usize, dir: &Path) -> Result<f64> {
    let dir = dir.join(format!("mem-conn-{system}"));
    std::fs::create_dir_all(&dir)?;
    let client_id = keys(&dir)?;
    let mut srv = MemServer::start(system, &dir).await?;
    const DIALERS: usize = 16;
    match system {
        "duplex" => {
            let sid = server_trust(&dir)?;
            let ep = srv.endpoint.clone();
            let dial = |i: usize| {
                let (cid, sid, ep) = (client_id.clone(), sid.clone(), ep.clone());
                async move {
                    let c = dx::peer(&format!("c{i}"), &cid, &[&sid], dx::config()?)?;
                    c.connect(ep.as_str()).await?;
                    anyhow::Ok(c)
                }
            };
            let warm = dial(0).await?;
            srv.ask("conns 1").await?;
            let before = srv.rss().await?;
            let mut peers = Vec::with_capacity(n);
            let mut set = JoinSet::new();
            for i in 1..=n {
                if set.len() >= DIALERS
                    && let Some(r) = set.join_next().await
                {
                    peers.push(r??);
                }
                set.spawn(dial(i));
            }
            while let Some(r) = set.join_next().await {
                peers.push(r??);
            }
            srv.ask(&format!("conns {}", n + 1)).await?;
            let after = srv.rss().await?;
            for p in peers.iter().chain([&warm]) {
                p.shutdown().await;
            }
            Ok(after.saturating_sub(before) as f64 / n as f64)
        }
        _ => {
            let key = Arc::new(russh::keys::PrivateKey::read_openssh_file(
                dir.join("client"),
            )?);
            let addr: std::net::SocketAddr = srv.endpoint.trim_start_matches("tcp://").parse()?;
            let config = raw::client_config();
            let warm = raw::connect(addr, config.clone(), &key).await?;
            srv.ask("conns 1").await?;
            let before = srv.rss().await?;
            let mut handles = Vec::with_capacity(n);
            let mut set = JoinSet::new();
            for _ in 0..n {
                if set.len() >= DIALERS
                    && let Some(r) = set.join_next().await
                {
                    handles.push(r??);
                }
                let (config, key) = (config.clone(), key.clone());
                set.spawn(async move { raw::connect(addr, config, &key).await });
            }
            while let Some(r) = set.join_next().await {
                handles.push(r??);
            }
            srv.ask(&format!("conns {}", n + 1)).await?;
            let after = srv.rss().await?;
            drop((handles, warm));
            Ok(after.saturating_sub(before) as f64 / n as f64)
        }
    }
}
