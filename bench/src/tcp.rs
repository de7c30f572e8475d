//! Raw TCP on loopback: the limit every figure is measured against.
//!
//! One listener serves two modes chosen by the first byte a client sends:
//! `E` echoes, `S` swallows everything and answers one byte at EOF.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::{Params, stats};

/// The listening side; its task ends when this is dropped.
pub struct Server {
    pub addr: SocketAddr,
    _task: crate::Owned,
}

pub async fn start() -> Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let _ = s.set_nodelay(true);
            conns.spawn(serve(s));
            while conns.try_join_next().is_some() {}
        }
    });
    Ok(Server {
        addr,
        _task: crate::Owned(task),
    })
}

async fn serve(mut s: TcpStream) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).await.is_err() {
        return;
    }
    let (mut r, mut w) = s.split();
    if mode[0] == b'E' {
        let _ = tokio::io::copy(&mut r, &mut w).await;
    } else {
        let mut buf = vec![0u8; 256 << 10];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = w.write_all(b"k").await;
    }
}

async fn dial(addr: SocketAddr, mode: u8) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&[mode]).await?;
    Ok(s)
}

/// Sends `total` bytes in 64 KiB writes over each of `streams`
/// connections; returns aggregate MiB/s.
pub async fn bulk(srv: &Server, p: &Params, streams: usize) -> Result<f64> {
    let per = p.bulk_bytes / streams as u64;
    let mut socks = Vec::new();
    for _ in 0..streams {
        socks.push(dial(srv.addr, b'S').await?);
    }
    let start = Instant::now();
    let mut set = JoinSet::new();
    for mut s in socks {
        set.spawn(async move {
            for chunk in crate::writes(per) {
                s.write_all(chunk).await?;
            }
            s.shutdown().await?;
            let mut done = [0u8; 1];
            s.read_exact(&mut done).await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(stats::mib_per_sec(per * streams as u64, start.elapsed()))
}

/// 64-byte echo round trips on one connection: (p50, p99) in µs.
pub async fn rtt(srv: &Server, p: &Params) -> Result<(f64, f64)> {
    let mut s = dial(srv.addr, b'E').await?;
    let msg = [7u8; crate::MSG_SIZE];
    let mut back = [0u8; crate::MSG_SIZE];
    let mut samples = Vec::with_capacity(p.round_trips);
    for i in 0..p.warmup + p.round_trips {
        let t = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        if i >= p.warmup {
            samples.push(t.elapsed());
        }
    }
    Ok(stats::p50_p99(samples))
}

/// Connect, one 64-byte echo, close: `opens` in all over `tasks` tasks.
pub async fn open_rate(srv: &Server, opens: usize, tasks: usize) -> Result<f64> {
    let addr = srv.addr;
    crate::spread(opens, tasks, move || async move {
        let mut s = dial(addr, b'E').await?;
        let msg = [7u8; crate::MSG_SIZE];
        let mut back = [0u8; crate::MSG_SIZE];
        s.write_all(&msg).await?;
        s.read_exact(&mut back).await?;
        drop(s);
        Ok(())
    })
    .await
}

/// TCP connect time, median over `n` in ms.
pub async fn setup(srv: &Server, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(srv.addr).await?;
        s.set_nodelay(true)?;
        times.push(t.elapsed());
        drop(s);
    }
    Ok(median_ms(times))
}

pub fn median_ms(times: Vec<Duration>) -> f64 {
    let ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    stats::median(&ms)
}
