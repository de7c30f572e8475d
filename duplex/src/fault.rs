//! A TCP proxy for fault-injection tests (feature `fault-injection`).
//!
//! Put a [`FaultProxy`] between two peers (or any client and server) and
//! break the connection on purpose: delay it, stall it (TCP stays open but
//! nothing gets through, like a dead network), cut it (FIN), reset it (RST),
//! or truncate it after a number of bytes. Use it to test that your service
//! notices, reports and recovers.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use duplex::fault::FaultProxy;
//! let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = FaultProxy::start(upstream.local_addr()?).await?;
//! // Connect to `proxy.endpoint()` instead of the server, then:
//! proxy.stall(); // the connection goes silent
//! proxy.resume();
//! proxy.cut(); // FIN both ways on every connection through it
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// What the proxy currently does to traffic. Generations count the
/// one-shot faults, so each connection acts on those made after it started.
#[derive(Debug, Clone, Default)]
struct Faults {
    stalled: bool,
    refuse: bool,
    delay: Duration,
    cut: u64,
    reset: u64,
    truncate: (u64, u64),
}

/// A TCP proxy that forwards to one upstream address and breaks
/// connections on command. Dropping it stops it and closes every
/// connection through it.
#[derive(Debug)]
#[must_use = "dropping a FaultProxy stops it and closes every connection through it"]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    _stop: DropGuard,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards each connection to
    /// `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(watch::channel(Faults::default()).0);
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, faults.clone(), stop.clone()));
        Ok(FaultProxy {
            addr,
            faults,
            _stop: stop.drop_guard(),
        })
    }

    /// The proxy's address as a Duplex endpoint (`tcp://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The proxy's socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds every byte from now on (both ways, every connection) until
    /// [`resume`](Self::resume): the TCP connections stay open but nothing
    /// arrives, as when a network drops packets.
    pub fn stall(&self) {
        self.faults.send_modify(|f| f.stalled = true);
    }

    /// Ends a stall; held bytes are delivered.
    pub fn resume(&self) {
        self.faults.send_modify(|f| f.stalled = false);
    }

    /// Delays every chunk forwarded from now on by `delay` (zero to stop).
    pub fn delay(&self, delay: Duration) {
        self.faults.send_modify(|f| f.delay = delay);
    }

    /// Closes every current connection cleanly (FIN) on both sides.
    pub fn cut(&self) {
        self.faults.send_modify(|f| f.cut += 1);
    }

    /// Resets every current connection (RST) on both sides.
    pub fn reset(&self) {
        self.faults.send_modify(|f| f.reset += 1);
    }

    /// Lets `bytes` more bytes through in each direction of every current
    /// connection, then cuts it: a connection that breaks mid-message.
    pub fn truncate_after(&self, bytes: u64) {
        self.faults
            .send_modify(|f| f.truncate = (f.truncate.0 + 1, bytes));
    }

    /// Refuses (accepts and closes at once) new connections while `on`.
    pub fn refuse(&self, on: bool) {
        self.faults.send_modify(|f| f.refuse = on);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    stop: CancellationToken,
) {
    loop {
        let (down, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        if faults.borrow().refuse {
            continue; // dropped: closed at once
        }
        let rx = faults.subscribe();
        let stop = stop.clone();
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            let done = stop.child_token();
            let a = pump(dr, uw, rx.clone(), done.clone());
            let b = pump(ur, dw, rx, done.clone());
            tokio::join!(a, b);
        });
    }
}

/// How a pump ended.
enum End {
    Eof,
    Cut,
    Reset,
    /// The other direction ended the connection.
    Gone,
}

/// Forwards one direction until EOF or a fault; a fault ends the other
/// direction too (through `done`).
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    mut faults: watch::Receiver<Faults>,
    done: CancellationToken,
) {
    let start = faults.borrow_and_update().clone();
    let (cut, reset, mut trunc) = (start.cut, start.reset, start.truncate.0);
    let mut budget: Option<u64> = None;
    let mut buf = vec![0u8; 64 << 10];
    let end = 'run: loop {
        let n = tokio::select! {
            _ = done.cancelled() => break 'run End::Gone,
            _ = faults.changed() => {
                let f = faults.borrow_and_update().clone();
                if f.reset != reset { break 'run End::Reset; }
                if f.cut != cut { break 'run End::Cut; }
                if f.truncate.0 != trunc { trunc = f.truncate.0; budget = Some(f.truncate.1); }
                continue;
            }
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => break 'run End::Eof,
                Ok(n) => n,
            },
        };
        // Hold the chunk while stalled; act on faults meanwhile.
        loop {
            let f = faults.borrow_and_update().clone();
            if f.reset != reset {
                break 'run End::Reset;
            }
            if f.cut != cut {
                break 'run End::Cut;
            }
            if f.truncate.0 != trunc {
                trunc = f.truncate.0;
                budget = Some(f.truncate.1);
            }
            if !f.stalled {
                if !f.delay.is_zero() {
                    tokio::time::sleep(f.delay).await;
                }
                break;
            }
            tokio::select! {
                _ = done.cancelled() => break 'run End::Gone,
                r = faults.changed() => if r.is_err() { break 'run End::Cut },
            }
        }
        let mut chunk = buf.get(..n).unwrap_or_default();
        if let Some(left) = budget {
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            chunk = chunk.get(..take).unwrap_or_default();
            budget = Some(left - take as u64);
        }
        if w.write_all(chunk).await.is_err() {
            break End::Eof;
        }
        if budget == Some(0) {
            break End::Cut;
        }
    };
    match end {
        End::Eof => {
            let _ = w.shutdown().await;
        }
        End::Cut => {
            let _ = w.shutdown().await;
            done.cancel();
        }
        End::Reset => {
            // SO_LINGER 0: closing sends RST (it does not block here).
            #[allow(deprecated)]
            {
                let _ = r.as_ref().set_linger(Some(Duration::ZERO));
                let _ = w.as_ref().set_linger(Some(Duration::ZERO));
            }
            done.cancel();
            w.forget(); // no FIN: the close is the RST
        }
        End::Gone => {
            if faults.borrow().reset != reset {
                w.forget(); // a reset: no FIN first
            }
        }
    }
}
