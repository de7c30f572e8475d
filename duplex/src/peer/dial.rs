//! The dialling side: one attempt at an endpoint, the handshake, and the
//! task that keeps a dialled endpoint connected.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::CLOSE_GRACE;
use crate::conn::ConnShared;
use crate::endpoint::Endpoint;
use crate::error::ConnectError;
use crate::events::PeerEvent;
use crate::ssh::handler::ClientHandler;
use crate::ssh::{self, HandshakeError};

use super::*;

/// An endpoint given to `connect`.
pub(super) struct Dialer {
    /// Its current connection, if any.
    pub(super) conn: Mutex<Option<Arc<ConnShared>>>,
    /// Stops re-dialling (disconnect, a newer connect, shutdown).
    pub(super) stop: CancellationToken,
    /// The name of the peer its last connection reached.
    pub(super) remote: Mutex<Option<Arc<str>>>,
    /// Cuts the backoff's current delay short: an `open` is waiting for
    /// the peer this endpoint reaches, so dial now.
    pub(super) kick: tokio::sync::Notify,
}

impl Dialer {
    pub(super) fn new(conn: Arc<ConnShared>, stop: CancellationToken) -> Self {
        let remote = conn.remote.get().map(|r| r.name.clone());
        Dialer {
            conn: Mutex::new(Some(conn)),
            stop,
            remote: Mutex::new(remote),
            kick: tokio::sync::Notify::new(),
        }
    }

    /// Re-dialling, and its peer is `name` (any, for `None`).
    pub(super) fn waits_for(&self, name: Option<&str>) -> bool {
        lock(&self.conn).is_none() && name.is_none_or(|n| lock(&self.remote).as_deref() == Some(n))
    }
}

pub(super) fn jitter() -> f64 {
    use rand::RngExt;
    rand::rng().random()
}

/// One attempt at connecting to `endpoint`, bounded by the handshake
/// timeout.
pub(super) async fn dial(
    core: &Arc<PeerCore>,
    endpoint: &Endpoint,
) -> Result<Arc<ConnShared>, ConnectError> {
    let label = endpoint.to_string();
    let timeout = core.host.config.handshake_timeout;
    let attempt = async {
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|source| ConnectError::Io {
                        endpoint: label.clone(),
                        source,
                    })?;
                let _ = stream.set_nodelay(true);
                let name = if *port == 22 {
                    host.to_ascii_lowercase()
                } else {
                    format!("[{}]:{port}", host.to_ascii_lowercase())
                };
                handshake(core, stream, label.clone(), name).await
            }
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| ConnectError::Io {
                        endpoint: label.clone(),
                        source,
                    })?;
                handshake(core, stream, label.clone(), path.display().to_string()).await
            }
        }
    };
    let (conn, _) = tokio::select! {
        r = tokio::time::timeout(timeout, attempt) => r.map_err(|_| ConnectError::Timeout {
            endpoint: label.clone(),
            after: timeout,
        })??,
        _ = core.host.draining.cancelled() => return Err(ConnectError::Shutdown),
    };
    Ok(conn)
}

pub(super) async fn handshake<S>(
    core: &Arc<PeerCore>,
    stream: S,
    endpoint: String,
    host_name: String,
) -> Result<(Arc<ConnShared>, PeerInfo), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ConnShared::new(
        core.host.clone(),
        core.clone(),
        endpoint.clone(),
        Direction::Outbound,
    );
    let handler = ClientHandler::new(conn.clone(), core.known_hosts.clone(), host_name);
    // Until the connection is handed to its supervisor, failing (or being
    // cancelled) must stop its tasks.
    let abort = conn.cancel.clone().drop_guard();
    let stop_transport = conn.transport_stop.clone().drop_guard();
    let stream = conn.transport(stream);
    let handle = ssh::client_handshake(&core.ssh, stream, handler, &core.host.name, &core.identity)
        .await
        .map_err(|e| match e {
            HandshakeError::HostKey(source) => ConnectError::HostKey {
                endpoint: endpoint.clone(),
                source,
            },
            HandshakeError::AuthRejected => ConnectError::AuthRejected {
                endpoint: endpoint.clone(),
                fingerprint: core.identity.fingerprint(),
                name: core.host.name.to_string(),
            },
            HandshakeError::Ssh(reason) => ConnectError::Handshake {
                endpoint: endpoint.clone(),
                reason,
            },
        })?;
    let _ = conn.handle.set(handle);
    lock(&core.all).insert(conn.id, conn.clone());
    core.host.tracker.spawn(conn.clone().run_outbox());
    core.host.tracker.spawn(supervise(conn.clone()));
    let name = match conn.hello().await {
        Ok(n) => n,
        Err(reason) => {
            conn.close("hello failed").await;
            return Err(ConnectError::Protocol { endpoint, reason });
        }
    };
    if let Some(fp) = conn.remote_fingerprint()
        && let Err(source) = core.known_hosts.check_peer_name(&fp, &name)
    {
        conn.close("the listener's name is bound to another key")
            .await;
        return Err(ConnectError::NameRefused { endpoint, source });
    }
    let Some(_) = conn.set_remote(name) else {
        return Err(ConnectError::Protocol {
            endpoint,
            reason: "no host key was recorded".into(),
        });
    };
    core.register(conn.clone());
    abort.disarm();
    stop_transport.disarm();
    let info = conn.info().ok_or_else(|| ConnectError::Protocol {
        endpoint: endpoint.clone(),
        reason: "no remote identity".into(),
    })?;
    Ok((conn, info))
}

/// Keeps a dialled endpoint connected: waits for its connection to end,
/// and unless that was on purpose, dials again with backoff (without the
/// attempt and time limits of `connect`) until it succeeds, `stop` fires,
/// or the remote refuses us for good.
pub(super) async fn redial(
    core: Arc<PeerCore>,
    endpoint: Endpoint,
    dialer: Arc<Dialer>,
    mut conn: Arc<ConnShared>,
) {
    let label = endpoint.to_string();
    let backoff = core.host.config.connect_backoff.clone();
    loop {
        tokio::select! {
            _ = conn.finished.cancelled() => {}
            _ = dialer.stop.cancelled() => return,
        }
        if conn.closed_on_purpose() || dialer.stop.is_cancelled() {
            let mut dialed = lock(&core.dialed);
            if dialed
                .get(&endpoint)
                .is_some_and(|d| Arc::ptr_eq(d, &dialer))
            {
                dialed.remove(&endpoint);
            }
            return;
        }
        *lock(&dialer.conn) = None;
        let mut reason: Arc<str> = conn.end_reason().into();
        let mut attempt = 1;
        conn = loop {
            let wait = backoff.delay(attempt, jitter());
            tracing::info!(endpoint = %label, attempt, ?wait, %reason, "re-dialling");
            core.emit(PeerEvent::Reconnecting {
                endpoint: label.clone(),
                attempt,
                delay: wait,
                reason: reason.clone(),
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = dialer.kick.notified() => {
                    tracing::debug!(endpoint = %label, "re-dialling now: an open is waiting for the peer");
                }
                _ = dialer.stop.cancelled() => return,
            }
            let res = tokio::select! {
                r = dial(&core, &endpoint) => r,
                _ = dialer.stop.cancelled() => return,
            };
            match res {
                Ok(c) => break c,
                Err(ConnectError::Shutdown) => return,
                Err(e) if !e.is_transient() => {
                    let text = crate::error::full_text(&e);
                    tracing::warn!(endpoint = %label, "stopped re-dialling: {text}");
                    core.emit(PeerEvent::GaveUp {
                        endpoint: label.clone(),
                        reason: text.into(),
                    });
                    lock(&core.dialed).retain(|_, d| !Arc::ptr_eq(d, &dialer));
                    return;
                }
                Err(e) => {
                    reason = crate::error::full_text(&e).into();
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        if let Some(r) = conn.remote.get() {
            *lock(&dialer.remote) = Some(r.name.clone());
        }
        *lock(&dialer.conn) = Some(conn.clone());
    }
}

/// Waits for a connection's end (or the peer's shutdown), then cleans up.
pub(super) async fn supervise(conn: Arc<ConnShared>) {
    tokio::select! {
        _ = conn.ended.cancelled() => {}
        _ = conn.cancel.cancelled() => {
            conn.flush_all(CLOSE_GRACE).await;
            conn.disconnect_now("the peer is shutting down").await;
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.ended.cancelled()).await;
        }
    }
    conn.on_session_end();
}
