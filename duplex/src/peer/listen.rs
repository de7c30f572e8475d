//! The listening side: the accept loops for TCP and Unix sockets, the
//! bound on connections still in their handshake, and serving one
//! inbound connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::CLOSE_GRACE;
use crate::conn::ConnShared;
use crate::ssh;
use crate::ssh::handler::ServerHandler;

use super::*;

/// The listening side of one connection.
pub(super) async fn serve<S>(core: Arc<PeerCore>, stream: S, endpoint: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ConnShared::new(
        core.host.clone(),
        core.clone(),
        endpoint,
        Direction::Inbound,
    );
    lock(&core.all).insert(conn.id, conn.clone());
    let handshaking = Handshaking::enter(&core, &conn);
    let handler = ServerHandler::new(conn.clone());
    let stream = conn.transport(stream);
    let timeout = core.host.config.handshake_timeout;
    let handshake = async {
        match ssh::server_start(&core.ssh, stream, handler).await {
            Ok(handle) => {
                let _ = conn.handle.set(handle);
                core.host.tracker.spawn(conn.clone().run_outbox());
                tokio::select! {
                    _ = conn.authenticated.notified() => true,
                    _ = conn.ended.cancelled() => false,
                }
            }
            Err(e) => {
                tracing::debug!(endpoint = %conn.endpoint, "SSH handshake failed: {e}");
                conn.set_end_reason(e);
                false
            }
        }
    };
    let ok = tokio::select! {
        r = tokio::time::timeout(timeout, handshake) => match r {
            Ok(ok) => ok,
            Err(_) => {
                tracing::info!(endpoint = %conn.endpoint, "handshake timed out after {timeout:?}");
                conn.disconnect_now("handshake timed out").await;
                false
            }
        },
        _ = conn.cancel.cancelled() => false,
    };
    drop(handshaking);
    if !ok {
        conn.cancel.cancel();
        // Nothing more is owed to a remote that did not finish its
        // handshake: the socket goes now, not when the remote closes it
        // (the session's reads fail, so russh's task ends).
        conn.transport_stop.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE, conn.ended.cancelled()).await;
        conn.on_session_end();
        return;
    }
    supervise(conn).await;
}

/// An inbound connection's place among the unfinished handshakes, left
/// when dropped (see `Config::max_unauthenticated`).
pub(super) struct Handshaking {
    core: Arc<PeerCore>,
    id: u64,
}

/// An unfinished handshake, as the list of them holds it.
pub(super) struct Unfinished {
    id: u64,
    cancel: CancellationToken,
    activity: Arc<crate::transport::Activity>,
}

impl Handshaking {
    /// Registers `conn`; at the limit, ends the unfinished handshake that
    /// read nothing for the longest (the oldest of those, on a tie) to make
    /// room. A client working through its handshake reads every few
    /// milliseconds, so a flood of connections that stall ends each other,
    /// not the clients that make progress.
    pub(super) fn enter(core: &Arc<PeerCore>, conn: &Arc<ConnShared>) -> Self {
        conn.activity.watch();
        let evicted = {
            let mut list = lock(&core.handshaking);
            list.push(Unfinished {
                id: conn.id,
                cancel: conn.cancel.clone(),
                activity: conn.activity.clone(),
            });
            if list.len() > core.host.config.max_unauthenticated {
                // The first minimum: the list is in arrival order.
                let idlest = list
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, u)| (u.activity.last(), *i))
                    .map(|(i, _)| i);
                idlest.map(|i| list.remove(i))
            } else {
                None
            }
        };
        if let Some(u) = evicted {
            if let Some(n) = core.host.refusals.evicted.allow() {
                tracing::warn!(
                    limit = core.host.config.max_unauthenticated,
                    "more than {} unfinished handshakes: ending the one idle the longest (connection {}) to make room (Config::max_unauthenticated){}",
                    core.host.config.max_unauthenticated,
                    u.id,
                    crate::lograte::left_out(n)
                );
            }
            u.cancel.cancel();
        }
        Handshaking {
            core: core.clone(),
            id: conn.id,
        }
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        lock(&self.core.handshaking).retain(|u| {
            let done = u.id == self.id;
            if done {
                u.activity.unwatch();
            }
            !done
        });
    }
}

pub(super) async fn accept_tcp(
    core: Arc<PeerCore>,
    listener: tokio::net::TcpListener,
    (stop, closed): (CancellationToken, CancellationToken),
    label: String,
) {
    let _closed = closed.drop_guard();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        core.host.config.max_connections,
    ));
    let mut errors = AcceptErrors::new(label.clone());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, addr)) => {
                errors.ok();
                let _ = stream.set_nodelay(true);
                let from = format!(" from {addr}");
                let Some(slot) = take_slot(
                    &slots,
                    &stream,
                    (&label, &from),
                    core.host.config.max_connections,
                    &core.host.refusals.connections,
                ) else {
                    continue;
                };
                let endpoint = format!("{label}{from}");
                let serving = serve(core.clone(), stream, endpoint);
                core.host.tracker.spawn(async move {
                    serving.await;
                    drop(slot);
                });
            }
            Err(e) => errors.failed(e, &stop).await,
        }
    }
    drop(listener); // before `_closed` fires
}

pub(super) async fn accept_unix(
    core: Arc<PeerCore>,
    listener: tokio::net::UnixListener,
    (stop, closed): (CancellationToken, CancellationToken),
    path: std::path::PathBuf,
) {
    let _closed = closed.drop_guard();
    let label = format!("unix://{}", path.display());
    let slots = Arc::new(tokio::sync::Semaphore::new(
        core.host.config.max_connections,
    ));
    let mut errors = AcceptErrors::new(label.clone());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _)) => {
                errors.ok();
                let Some(slot) = take_slot(
                    &slots,
                    &stream,
                    (&label, ""),
                    core.host.config.max_connections,
                    &core.host.refusals.connections,
                ) else {
                    continue;
                };
                let serving = serve(core.clone(), stream, label.clone());
                core.host.tracker.spawn(async move {
                    serving.await;
                    drop(slot);
                });
            }
            Err(e) => errors.failed(e, &stop).await,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// A connection slot of a listener (`Config::max_connections`), or `None`
/// when all are taken: then the new connection is told so in a line before
/// the SSH version exchange (RFC 4253 4.2 allows such lines; SSH clients
/// show or log them) and closed.
pub(super) fn take_slot<S: TryWriteLine>(
    slots: &Arc<tokio::sync::Semaphore>,
    stream: &S,
    (label, from): (&str, &str),
    limit: usize,
    log: &crate::lograte::Every,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match slots.clone().try_acquire_owned() {
        Ok(slot) => Some(slot),
        Err(_) => {
            if let Some(n) = log.allow() {
                tracing::warn!(
                    endpoint = label,
                    limit,
                    "refusing a connection{from}: the listener has {limit} connections (Config::max_connections){}",
                    crate::lograte::left_out(n)
                );
            }
            let line = format!(
                "duplex: too many connections to {label} (limit {limit}, Config::max_connections); try again later\r\n"
            );
            // Best effort and non-blocking: the socket is closed right after.
            stream.try_write_line(line.as_bytes());
            None
        }
    }
}

/// A non-blocking write of a short line, for refusals.
pub(super) trait TryWriteLine {
    fn try_write_line(&self, line: &[u8]);
}

impl TryWriteLine for tokio::net::TcpStream {
    fn try_write_line(&self, line: &[u8]) {
        let _ = self.try_write(line);
    }
}

impl TryWriteLine for tokio::net::UnixStream {
    fn try_write_line(&self, line: &[u8]) {
        let _ = self.try_write(line);
    }
}

/// What an accept loop does about failed accepts: out of descriptors
/// (`EMFILE`, `ENFILE`) or kernel memory, the listener backs off (10 ms,
/// doubling to 1 s) so the connections that hold the descriptors can end,
/// and logs once per episode (with a reminder a minute), not per attempt.
/// Connections the remote gave up on before we took them are skipped.
pub(super) struct AcceptErrors {
    label: String,
    failures: u64,
    since: Option<tokio::time::Instant>,
    logged: Option<tokio::time::Instant>,
    /// A failure was logged, its end not yet.
    owed_recovery: bool,
    delay: Duration,
}

pub(super) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
pub(super) const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
pub(super) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(60);

impl AcceptErrors {
    pub(super) fn new(label: String) -> Self {
        AcceptErrors {
            label,
            failures: 0,
            since: None,
            logged: None,
            owed_recovery: false,
            delay: ACCEPT_BACKOFF_MIN,
        }
    }

    /// A connection was accepted: ends an episode of failures. The end is
    /// logged only after a logged failure (so a listener that keeps
    /// running out and recovering logs a pair a minute at most).
    pub(super) fn ok(&mut self) {
        if let Some(since) = self.since.take() {
            if self.owed_recovery {
                self.owed_recovery = false;
                tracing::warn!(
                    endpoint = %self.label,
                    failures = self.failures,
                    "accepting connections again, after {} failed accepts over {:.1?}",
                    self.failures,
                    since.elapsed()
                );
            }
            self.failures = 0;
            self.delay = ACCEPT_BACKOFF_MIN;
        }
    }

    pub(super) async fn failed(&mut self, e: std::io::Error, stop: &CancellationToken) {
        use std::io::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
        ) {
            tracing::debug!(endpoint = %self.label, "a connection went away before it was accepted: {e}");
            return;
        }
        let now = tokio::time::Instant::now();
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_LOG_EVERY)
        {
            self.logged = Some(now);
            self.owed_recovery = true;
            tracing::warn!(
                endpoint = %self.label,
                failures = self.failures,
                "accept failed: {e} ({} failures in {:.1?}); backing off up to {ACCEPT_BACKOFF_MAX:?} between attempts (raise the descriptor limit, `ulimit -n`, or lower Config::max_connections); logged again when accepting resumes, or in a minute",
                self.failures,
                now.duration_since(since)
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = stop.cancelled() => {}
        }
        self.delay = (self.delay * 2).min(ACCEPT_BACKOFF_MAX);
    }
}

pub(super) async fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match tokio::net::UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Replace a stale socket file, never a live listener.
            match tokio::net::UnixStream::connect(path).await {
                Err(c) if c.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                    tokio::net::UnixListener::bind(path)
                }
                _ => Err(e),
            }
        }
        other => other,
    }
}
