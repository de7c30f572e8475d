//! Duplex: two peers in this process over loopback TCP, with the services
//! the figures use (`sink`, `echo`, `idle`) and an RPC server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use duplex::{AuthorizedKeys, Config, Endpoint, Headers, Identity, KnownHosts, Peer};
use duplex_rpc::{CallContext, Client, Router, Sender, Server, ServerHandle, Status};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::{MSG_SIZE, Params, WRITE_SIZE, stats};

pub const SERVER: &str = "bench-server";

/// The configuration of every Duplex peer in the bench: the defaults
/// (channel windows start at 128 KiB and grow to 4 MiB while the reader
/// keeps up, 4 MiB being the best of 256 KiB to 16 MiB for one channel on
/// this loopback; docs/BENCHMARKS.md).
pub fn config() -> Result<Config> {
    Ok(Config::default())
}

/// A peer that trusts `others` both ways.
pub fn peer(name: &str, me: &Identity, others: &[&Identity], config: Config) -> Result<Peer> {
    let mut ak = AuthorizedKeys::new();
    let mut kh = KnownHosts::new();
    for o in others {
        ak.add(o.public_key());
        kh.pin(o.public_key());
    }
    Ok(Peer::builder()
        .name(name)
        .identity(me.clone())
        .authorized_keys(ak)
        .known_hosts(kh)
        .config(config)
        .build()?)
}

/// Serves `sink` (reads to EOF, then closes), `echo` and `idle` (held
/// open until the remote closes) on `peer`; counts accepted `idle`
/// channels in `idle`. `echo` is accepted at once (`Peer::accept_at_once`,
/// the session answers the open), as the raw russh server accepts its
/// channels inside its handler.
pub fn serve_channels(peer: &Peer, idle: Arc<AtomicUsize>) -> crate::Owned {
    let p = peer.clone();
    crate::Owned(tokio::spawn(async move {
        let _echo_at_once = p.accept_at_once("echo");
        let mut tasks = JoinSet::new();
        while let Some(inc) = p.accept().await {
            let idle = idle.clone();
            tasks.spawn(async move {
                let service = inc.service().to_owned();
                let mut ch = inc.accept().await;
                match service.as_str() {
                    "sink" => {
                        let mut buf = vec![0u8; 256 << 10];
                        while let Ok(n) = ch.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                        let _ = ch.close().await;
                    }
                    "echo" => {
                        let (mut r, mut w) = ch.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                    _ => {
                        idle.fetch_add(1, Ordering::Relaxed);
                        let _ = ch.closed().await;
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
    }))
}

/// Two peers, the server bound on loopback TCP with the channel services;
/// and, on a connection of their own (an RPC server takes every channel
/// its peer accepts), two peers for RPC.
pub struct Pair {
    pub server: Peer,
    pub client: Peer,
    pub endpoint: Endpoint,
    pub server_id: Identity,
    pub client_id: Identity,
    pub rpc: Client,
    _rpc_peers: (Peer, Peer),
    _rpc_server: ServerHandle,
    _services: crate::Owned,
}

pub async fn start() -> Result<Pair> {
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let server = peer(SERVER, &sid, &[&cid], config()?)?;
    let client = peer("bench-client", &cid, &[&sid], config()?)?;
    let services = serve_channels(&server, Arc::new(AtomicUsize::new(0)));
    let endpoint = server.bind("tcp://127.0.0.1:0").await?;
    client.connect(&endpoint).await?;

    let rpc_server_peer = peer(SERVER, &sid, &[&cid], config()?)?;
    let rpc_client_peer = peer("bench-client", &cid, &[&sid], config()?)?;
    let rpc_server = Server::new(router()).serve(&rpc_server_peer)?;
    let rpc_endpoint = rpc_server_peer.bind("tcp://127.0.0.1:0").await?;
    rpc_client_peer.connect(&rpc_endpoint).await?;
    let rpc = Client::new(rpc_client_peer.clone()).to(SERVER);
    Ok(Pair {
        server,
        client,
        endpoint,
        server_id: sid,
        client_id: cid,
        rpc,
        _rpc_peers: (rpc_server_peer, rpc_client_peer),
        _rpc_server: rpc_server,
        _services: services,
    })
}

/// `Bench.Echo` (unary) and `Bench.Stream` (server streaming: `count`
/// messages of `size` bytes).
fn router() -> Router {
    Router::new()
        .unary("Bench.Echo", |_ctx: CallContext, m: ByteBuf| async move {
            Ok::<_, Status>(m)
        })
        .server_stream(
            "Bench.Stream",
            |_ctx: CallContext, (count, size): (u32, u32), tx: Sender<ByteBuf>| async move {
                let msg = ByteBuf::from(vec![0x5au8; size as usize]);
                let mut tx = tx;
                for _ in 0..count {
                    tx.send(&msg)
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                }
                Ok(())
            },
        )
}

/// `streams` channels each sent an equal share of `bulk_bytes` in 64 KiB
/// writes; MiB/s until the server has read everything.
pub async fn bulk(pair: &Pair, p: &Params, streams: usize) -> Result<f64> {
    let per = p.bulk_bytes / streams as u64;
    let mut chans = Vec::new();
    for _ in 0..streams {
        chans.push(pair.client.open(SERVER, "sink", Headers::new()).await?);
    }
    let start = Instant::now();
    let mut set = JoinSet::new();
    for mut ch in chans {
        set.spawn(async move {
            for chunk in crate::writes(per) {
                ch.write_all(chunk).await.context("write")?;
            }
            ch.close_write().await.context("close_write")?;
            // The server closes once it has read to EOF.
            let mut b = [0u8; 1];
            if ch.read(&mut b).await.context("read")? != 0 {
                bail!("sink wrote back");
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(stats::mib_per_sec(per * streams as u64, start.elapsed()))
}

/// 64-byte echo round trips on one open channel: (p50, p99) in µs.
pub async fn rtt(pair: &Pair, p: &Params) -> Result<(f64, f64)> {
    let mut ch = pair.client.open(SERVER, "echo", Headers::new()).await?;
    let msg = [7u8; MSG_SIZE];
    let mut back = [0u8; MSG_SIZE];
    let mut samples = Vec::with_capacity(p.round_trips);
    for i in 0..p.warmup + p.round_trips {
        let t = Instant::now();
        ch.write_all(&msg).await?;
        ch.read_exact(&mut back).await?;
        if i >= p.warmup {
            samples.push(t.elapsed());
        }
    }
    ch.close().await?;
    Ok(stats::p50_p99(samples))
}

/// Open + one 64-byte echo + close; channels per second.
pub async fn open_rate(pair: &Pair, opens: usize, tasks: usize) -> Result<f64> {
    let client = pair.client.clone();
    crate::spread(opens, tasks, move || {
        let client = client.clone();
        async move {
            let mut ch = client.open(SERVER, "echo", Headers::new()).await?;
            let msg = [7u8; MSG_SIZE];
            let mut back = [0u8; MSG_SIZE];
            ch.write_all(&msg).await?;
            ch.read_exact(&mut back).await?;
            ch.close().await?;
            Ok(())
        }
    })
    .await
}

/// TCP + key exchange + authentication + the Duplex hello, by a fresh
/// peer (with a key of its own) each time; median ms.
pub async fn setup(pair: &Pair, n: usize) -> Result<f64> {
    let ids: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
    let mut ak = AuthorizedKeys::new();
    ak.add(pair.client_id.public_key());
    for id in &ids {
        ak.add(id.public_key());
    }
    pair.server.set_authorized_keys(ak);
    let mut times = Vec::with_capacity(n);
    for id in &ids {
        let c = peer("bench-dialer", id, &[&pair.server_id], config()?)?;
        let t = Instant::now();
        c.connect(&pair.endpoint).await?;
        times.push(t.elapsed());
        c.shutdown().await;
    }
    Ok(crate::tcp::median_ms(times))
}

/// Unary echo of 64 bytes, one at a time: (p50, p99) in µs.
pub async fn rpc_latency(pair: &Pair, p: &Params) -> Result<(f64, f64)> {
    let msg = ByteBuf::from(vec![7u8; MSG_SIZE]);
    let mut samples = Vec::with_capacity(p.calls);
    for i in 0..p.warmup + p.calls {
        let t = Instant::now();
        let back: ByteBuf = pair.rpc.call("Bench.Echo", &msg).await?;
        if i >= p.warmup {
            samples.push(t.elapsed());
        }
        if back.len() != MSG_SIZE {
            bail!("short echo");
        }
    }
    Ok(stats::p50_p99(samples))
}

/// Unary calls per second with `inflight` callers.
pub async fn rpc_rate(pair: &Pair, calls: usize, inflight: usize) -> Result<f64> {
    let rpc = pair.rpc.clone();
    crate::spread(calls, inflight, move || {
        let rpc = rpc.clone();
        async move {
            let msg = ByteBuf::from(vec![7u8; MSG_SIZE]);
            let back: ByteBuf = rpc.call("Bench.Echo", &msg).await?;
            if back.len() != MSG_SIZE {
                bail!("short echo");
            }
            Ok(())
        }
    })
    .await
}

/// Server streaming of 64 KiB messages; MiB/s.
pub async fn rpc_stream(pair: &Pair, p: &Params) -> Result<f64> {
    let count = (p.stream_bytes / WRITE_SIZE as u64) as u32;
    let start = Instant::now();
    let mut rx = pair
        .rpc
        .server_stream::<_, ByteBuf>("Bench.Stream", &(count, WRITE_SIZE as u32))
        .await?;
    let mut got = 0u64;
    while let Some(m) = rx.recv().await? {
        got += m.len() as u64;
    }
    if got != count as u64 * WRITE_SIZE as u64 {
        bail!("stream delivered {got} bytes");
    }
    Ok(stats::mib_per_sec(got, start.elapsed()))
}

/// Idle channels for the memory figure: opens `n` and holds them until
/// the process ends.
pub async fn open_idle(client: &Peer, n: usize) -> Result<Vec<duplex::Channel>> {
    let mut set = JoinSet::new();
    let per = n.div_ceil(16);
    for t in 0..16 {
        let c = client.clone();
        let k = per.min(n.saturating_sub(t * per));
        set.spawn(async move {
            let mut v = Vec::with_capacity(k);
            for _ in 0..k {
                v.push(c.open(SERVER, "idle", Headers::new()).await?);
            }
            anyhow::Ok(v)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r?.context("opening idle channels")?);
    }
    Ok(all)
}
