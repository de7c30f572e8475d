//! The peer: an SSH server and client with one key pair, binding and
//! connecting to many endpoints, opening and accepting channels.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::channel::Channel;
use crate::config::Config;
use crate::conn::ConnShared;
use crate::conn::host::{Host, Registry};
use crate::endpoint::{Endpoint, EndpointError};
use crate::error::{BindError, ConnectError, OpenError};
pub use crate::events::{Direction, PeerInfo};
use crate::events::{EVENT_BUFFER, PeerEvent, PeerEvents};
use crate::proto::headers::Headers;
use crate::proto::service::ServiceName;
use crate::ssh::SshConfigs;
use crate::ssh::keys::{Fingerprint, Identity};
use crate::ssh::trust::{AuthorizedKeys, KnownHosts};

mod acceptor;
mod dial;
mod listen;
mod registry;

pub use acceptor::{AcceptAtOnce, Acceptor, Dispatch};
use dial::*;
use listen::*;
pub(crate) use registry::PeerCore;
use registry::*;

/// Anything that names an endpoint: `&str`, `String` or [`Endpoint`].
pub trait IntoEndpoint {
    /// Parses or passes through.
    fn into_endpoint(self) -> Result<Endpoint, EndpointError>;
}

impl IntoEndpoint for Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, EndpointError> {
        Ok(self)
    }
}

impl IntoEndpoint for &Endpoint {
    fn into_endpoint(self) -> Result<Endpoint, EndpointError> {
        Ok(self.clone())
    }
}

impl IntoEndpoint for &str {
    fn into_endpoint(self) -> Result<Endpoint, EndpointError> {
        self.parse()
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self) -> Result<Endpoint, EndpointError> {
        self.parse()
    }
}

impl IntoEndpoint for &String {
    fn into_endpoint(self) -> Result<Endpoint, EndpointError> {
        self.parse()
    }
}

/// A Duplex peer: an SSH server and client sharing one key pair.
///
/// Cheap to clone; all clones drive the same peer. When the last clone is
/// dropped the peer shuts down in the background (listeners close,
/// connections end); call [`shutdown`](Self::shutdown) to wait for that.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> anyhow::Result<()> {
/// use duplex::{AuthorizedKeys, Headers, Identity, KnownHosts, Peer};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let (alice_id, bob_id) = (Identity::generate(), Identity::generate());
/// let bob = Peer::builder()
///     .name("bob")
///     .identity(bob_id.clone())
///     .authorized_keys(AuthorizedKeys::new().with(alice_id.public_key()))
///     .build()?;
/// let addr = bob.bind("tcp://127.0.0.1:0").await?;
///
/// let alice = Peer::builder()
///     .name("alice")
///     .identity(alice_id)
///     .known_hosts(KnownHosts::new().with_pinned(bob_id.public_key()))
///     .build()?;
/// alice.connect(&addr).await?;
///
/// // Bob echoes one channel.
/// let server = tokio::spawn(async move {
///     let mut ch = bob.accept().await.unwrap().accept().await;
///     let mut buf = Vec::new();
///     ch.read_to_end(&mut buf).await.unwrap();
///     ch.write_all(&buf).await.unwrap();
///     ch.close_write().await.unwrap(); // done: the reader sees a clean end
/// });
///
/// let mut ch = alice.open("bob", "echo", Headers::new()).await?;
/// ch.write_all(b"hi").await?;
/// ch.close_write().await?;
/// let mut back = Vec::new();
/// ch.read_to_end(&mut back).await?;
/// assert_eq!(back, b"hi");
/// server.await?;
/// alice.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a peer shuts down once its last clone is dropped"]
pub struct Peer {
    core: Arc<PeerCore>,
    _guard: Arc<DropGuard>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.core.host.name)
            .field("fingerprint", &self.core.identity.fingerprint())
            .finish()
    }
}

/// Builds a [`Peer`].
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PeerBuilder {
    name: Option<String>,
    identity: Option<Identity>,
    authorized: AuthorizedKeys,
    known_hosts: KnownHosts,
    config: Config,
}

/// A peer name that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid peer name {0:?}: use 1 to 255 bytes with no control characters")]
pub struct NameError(String);

impl PeerBuilder {
    /// The peer's name, sent to peers we connect to (as the SSH user name)
    /// and to peers that connect to us. Default: a random name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The key pair. Default: a new random ed25519 key, which no remote
    /// trusts yet.
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Keys allowed to connect to us. Default: none.
    pub fn authorized_keys(mut self, keys: AuthorizedKeys) -> Self {
        self.authorized = keys;
        self
    }

    /// Host keys accepted when we connect. Default: none.
    pub fn known_hosts(mut self, hosts: KnownHosts) -> Self {
        self.known_hosts = hosts;
        self
    }

    /// Tuning and limits.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Creates the peer. It does nothing until bound or connected.
    pub fn build(self) -> Result<Peer, NameError> {
        let name = self.name.unwrap_or_else(random_name);
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(NameError(name));
        }
        let identity = self.identity.unwrap_or_else(Identity::generate);
        let (tx, rx) = mpsc::channel(self.config.accept_backlog);
        let cancel = CancellationToken::new();
        let pending = crate::pending::Pending::new(self.config.accept_timeout);
        let total_budget = crate::proto::budget::Budget::new(
            self.config.max_total_buffer,
            crate::proto::budget::Level::Total,
        );
        let config = Arc::new(self.config);
        let host = Arc::new(Host {
            name: name.into(),
            authorized: Mutex::new(Arc::new(self.authorized)),
            config: config.clone(),
            channels_changed: Notify::new(),
            room: tokio::sync::Mutex::new(()),
            // Also cancelled when the peer stops without `shutdown` (last
            // handle dropped), which stops re-dialling too.
            draining: cancel.child_token(),
            incoming_tx: tx,
            conn_ids: AtomicU64::new(1),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            pending,
            refusals: Default::default(),
            total_budget,
            peer_budgets: Mutex::new(HashMap::new()),
            routes: Default::default(),
        });
        let core = Arc::new(PeerCore {
            host,
            ssh: SshConfigs::new(&config, &identity),
            identity,
            known_hosts: Arc::new(self.known_hosts),
            peers: Mutex::new(Vec::new()),
            all: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            dialed: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            peers_changed: Notify::new(),
            incoming_rx: tokio::sync::Mutex::new(rx),
            rr: AtomicUsize::new(0),
            handshaking: Mutex::new(Vec::new()),
        });
        Ok(Peer {
            core,
            _guard: Arc::new(cancel.drop_guard()),
        })
    }
}

fn random_name() -> String {
    use rand::RngExt;
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

impl Peer {
    /// Starts building a peer.
    pub fn builder() -> PeerBuilder {
        PeerBuilder::default()
    }

    /// This peer's name.
    pub fn name(&self) -> &str {
        &self.core.host.name
    }

    /// This peer's key fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.core.identity.fingerprint()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.core.host.config
    }

    /// Listens on `endpoint` (`tcp://HOST:PORT`, port 0 for any free port,
    /// or `unix:///PATH`) and returns the bound endpoint.
    ///
    /// A stale Unix socket file (nobody listening) is replaced. Cancel-safe.
    pub async fn bind(&self, endpoint: impl IntoEndpoint) -> Result<Endpoint, BindError> {
        let endpoint = endpoint.into_endpoint()?;
        if self.core.host.cancel.is_cancelled() {
            return Err(BindError::Shutdown);
        }
        let io = |source| BindError::Io {
            endpoint: endpoint.to_string(),
            source,
        };
        let token = self.core.host.cancel.child_token();
        let closed = CancellationToken::new();
        let bound = match &endpoint {
            Endpoint::Tcp { host, port } => {
                let listener = tokio::net::TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                let addr = listener.local_addr().map_err(io)?;
                let bound = Endpoint::Tcp {
                    host: host.clone(),
                    port: addr.port(),
                };
                let core = self.core.clone();
                let stop = (token.clone(), closed.clone());
                self.core
                    .host
                    .tracker
                    .spawn(accept_tcp(core, listener, stop, bound.to_string()));
                bound
            }
            Endpoint::Unix(path) => {
                let listener = bind_unix(path).await.map_err(io)?;
                let core = self.core.clone();
                let stop = (token.clone(), closed.clone());
                let p = path.clone();
                self.core
                    .host
                    .tracker
                    .spawn(accept_unix(core, listener, stop, p));
                endpoint.clone()
            }
        };
        tracing::info!(endpoint = %bound, "listening");
        if let Some((old, _)) = lock(&self.core.listeners).insert(bound.clone(), (token, closed)) {
            old.cancel();
        }
        Ok(bound)
    }

    /// Stops listening on an endpoint `bind` returned, and returns once the
    /// socket is closed (a Unix socket's file removed). Connections already
    /// accepted stay up. Returns whether it was bound.
    ///
    /// Cancel-safe: the listener stops whether or not this is awaited.
    pub async fn unbind(&self, endpoint: impl IntoEndpoint) -> bool {
        let Ok(endpoint) = endpoint.into_endpoint() else {
            return false;
        };
        let entry = lock(&self.core.listeners).remove(&endpoint);
        match entry {
            Some((stop, closed)) => {
                stop.cancel();
                closed.cancelled().await;
                true
            }
            None => false,
        }
    }

    /// Connects to a listening peer and completes the handshake: key
    /// exchange with host-key check, authentication with our key, and the
    /// Duplex hello that tells us the remote's name.
    ///
    /// Each attempt is bounded by the handshake timeout. Transient failures
    /// (refused, unreachable, DNS, timeout, a handshake cut short) are
    /// retried with jittered exponential backoff within the limits of
    /// [`Config::connect_backoff`], then reported as
    /// [`ConnectError::GaveUp`] with the last cause; a rejected key, an
    /// untrusted host key or a protocol mismatch fails at once.
    ///
    /// Once connected, the endpoint is re-dialled in the background whenever
    /// the connection ends unexpectedly (see [`Config::reconnect`]) until
    /// [`disconnect`](Self::disconnect) or [`shutdown`](Self::shutdown).
    ///
    /// Cancel-safe: cancelling abandons the attempts (nothing is re-dialled).
    pub async fn connect(&self, endpoint: impl IntoEndpoint) -> Result<PeerInfo, ConnectError> {
        let endpoint = endpoint.into_endpoint()?;
        let core = &self.core;
        if core.host.draining.is_cancelled() {
            return Err(ConnectError::Shutdown);
        }
        let backoff = &core.host.config.connect_backoff;
        let label = endpoint.to_string();
        let start = tokio::time::Instant::now();
        let mut attempt = 1;
        let conn = loop {
            match dial(core, &endpoint).await {
                Ok(conn) => break conn,
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    let wait = backoff.delay(attempt, jitter());
                    if !backoff.allows(attempt + 1, start.elapsed(), wait) {
                        if attempt == 1 {
                            return Err(e); // no retry was allowed
                        }
                        return Err(ConnectError::GaveUp {
                            endpoint: label,
                            attempts: attempt,
                            elapsed: start.elapsed(),
                            last: Box::new(e),
                        });
                    }
                    attempt += 1;
                    tracing::debug!(endpoint = %label, attempt, ?wait, "connect failed, retrying: {}", crate::error::full_text(&e));
                    core.emit(PeerEvent::Reconnecting {
                        endpoint: label.clone(),
                        attempt,
                        delay: wait,
                        reason: crate::error::full_text(&e).into(),
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = core.host.draining.cancelled() => return Err(ConnectError::Shutdown),
                    }
                }
            }
        };
        let info = conn.info().ok_or_else(|| ConnectError::Protocol {
            endpoint: label,
            reason: "no remote identity".into(),
        })?;
        let dialer = Arc::new(Dialer::new(conn.clone(), core.host.draining.child_token()));
        // A second connect to the same endpoint: both connections stay up,
        // but only the newest is re-dialled and `disconnect` acts on it.
        if let Some(old) = lock(&core.dialed).insert(endpoint.clone(), dialer.clone()) {
            old.stop.cancel();
        }
        if core.host.config.reconnect {
            core.host
                .tracker
                .spawn(redial(core.clone(), endpoint, dialer, conn));
        }
        Ok(info)
    }

    /// Runs the dialling side of a connection over any byte stream (an
    /// in-memory pipe, a child's stdio, an already connected socket).
    ///
    /// `label` names the endpoint in `peers()` and errors, and is the host
    /// name looked up in the known hosts. Cancel-safe.
    pub async fn connect_stream<S>(&self, stream: S, label: &str) -> Result<PeerInfo, ConnectError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.core.host.config.handshake_timeout;
        if self.core.host.draining.is_cancelled() {
            return Err(ConnectError::Shutdown);
        }
        tokio::select! {
            r = tokio::time::timeout(timeout, handshake(&self.core, stream, label.to_owned(), label.to_owned())) => {
                r.map_err(|_| ConnectError::Timeout { endpoint: label.to_owned(), after: timeout })?
                    .map(|(_, info)| info)
            }
            _ = self.core.host.cancel.cancelled() => Err(ConnectError::Shutdown),
        }
    }

    /// Serves the listening side of a connection over any byte stream. The
    /// handshake runs in the background; the remote appears in
    /// [`peers`](Self::peers) once it completes.
    pub fn serve_stream<S>(&self, stream: S, label: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.core.host.draining.is_cancelled() {
            return; // dropping the stream closes it
        }
        self.core
            .host
            .tracker
            .spawn(serve(self.core.clone(), stream, label.to_owned()));
    }

    /// Closes the connection we made to `endpoint` and stops re-dialling
    /// it. Returns whether there was one. Returns once the connection is
    /// closed.
    pub async fn disconnect(&self, endpoint: impl IntoEndpoint) -> bool {
        let Ok(endpoint) = endpoint.into_endpoint() else {
            return false;
        };
        let dialer = lock(&self.core.dialed).remove(&endpoint);
        let Some(dialer) = dialer else {
            return false;
        };
        dialer.stop.cancel();
        let conn = lock(&dialer.conn).take();
        if let Some(c) = conn {
            c.close("disconnected by the application").await;
        }
        true
    }

    /// Replaces the keys allowed to connect to us. New authentications use
    /// them at once; connections already authenticated stay up (close them
    /// with [`drop_peer`](Self::drop_peer) if they must go).
    ///
    /// ```
    /// # let peer = duplex::Peer::builder().name("host").build().unwrap();
    /// let plugin = duplex::Identity::generate();
    /// peer.set_authorized_keys(duplex::AuthorizedKeys::new().with(plugin.public_key()));
    /// ```
    pub fn set_authorized_keys(&self, keys: AuthorizedKeys) {
        *lock(&self.core.host.authorized) = Arc::new(keys);
    }

    /// Subscribes to this peer's events: peers connecting and disconnecting
    /// (with the reason), and endpoints being re-dialled. See [`PeerEvent`].
    pub fn events(&self) -> PeerEvents {
        PeerEvents::new(self.core.events.subscribe(), self.core.host.cancel.clone())
    }

    /// The connected peers (remotes that completed the Duplex handshake),
    /// in both directions.
    pub fn peers(&self) -> Vec<PeerInfo> {
        lock(&self.core.peers)
            .iter()
            .filter(|c| !c.cancel.is_cancelled())
            .filter_map(|c| c.info())
            .collect()
    }

    /// Waits, without a time limit, until a peer called `name` is
    /// connected (in either direction), and returns it; at once if it is
    /// connected already. Returns `None` once this peer is shut down.
    ///
    /// For a server that waits for its agents however long they take
    /// (a connection from them arrives when it does). To wait a bounded
    /// time, wrap it in `tokio::time::timeout`; [`open`](Self::open) to a
    /// name waits up to [`Config::peer_wait_timeout`] by itself. An
    /// endpoint this peer re-dials to reach `name` dials at once when the
    /// wait starts, not after its backoff's current delay. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn demo(server: duplex::Peer) {
    /// let agent = server.wait_for_peer("agent-1").await.expect("shut down");
    /// println!("{} connected from {}", agent.name, agent.endpoint);
    /// # }
    /// ```
    pub async fn wait_for_peer(&self, name: &str) -> Option<PeerInfo> {
        self.wait_until(
            Some(name),
            |core| core.find(name).and_then(|c| c.info()),
            None,
        )
        .await
        .ok()
    }

    /// Resolves once this peer is shut down: [`shutdown`](Self::shutdown)
    /// was called (by any clone) and has closed its connections. For a
    /// daemon's `main`, which serves until something (a signal handler, an
    /// RPC method) shuts the peer down. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn demo(peer: duplex::Peer) {
    /// let stopper = peer.clone();
    /// tokio::spawn(async move {
    ///     // ... on a signal, or when an RPC method asks for it:
    ///     stopper.shutdown().await;
    /// });
    /// peer.closed().await;
    /// # }
    /// ```
    pub async fn closed(&self) {
        self.core.host.cancel.cancelled().await;
    }

    /// The next connected peer in round-robin order, if any.
    pub fn next_peer(&self) -> Option<PeerInfo> {
        let peers = self.peers();
        if peers.is_empty() {
            return None;
        }
        let i = self.core.rr.fetch_add(1, Ordering::Relaxed) % peers.len();
        peers.into_iter().nth(i)
    }

    /// Closes every connection to the peer called `name` (and stops
    /// re-dialling those we made). Returns whether there was one.
    ///
    /// That includes a connection whose hello has named the remote but
    /// which is not yet announced as [`PeerEvent::Connected`] here: the
    /// remote may already have seen its own `Connected` (the listener sends
    /// its half of the hello first), so a drop right after it still finds
    /// the connection.
    pub async fn drop_peer(&self, name: &str) -> bool {
        let conns: Vec<_> = lock(&self.core.all)
            .values()
            .filter(|c| c.remote.get().is_some_and(|r| &*r.name == name))
            .cloned()
            .collect();
        for c in &conns {
            c.close("dropped by the application").await;
        }
        !conns.is_empty()
    }

    /// Opens a channel for `service` to the connected peer called `peer`,
    /// and waits until the remote application accepts it.
    ///
    /// If no peer of that name is connected (it may be starting, or
    /// reconnecting), waits for one up to [`Config::peer_wait_timeout`],
    /// then fails with [`OpenError::NoSuchPeer`]; an endpoint re-dialling
    /// that peer dials at once rather than after its backoff's current
    /// delay. Where a limit is reached (this connection's receive buffer,
    /// or the remote's channel, pending-channel or accept-queue limits), the
    /// open waits for room, as quinn's `open_bi` waits for stream credit,
    /// rather than failing: up to [`Config::open_timeout`] in all. Fails
    /// with [`OpenError::Rejected`] if the remote rejects,
    /// [`OpenError::NoService`] if nothing there serves `service`, and
    /// [`OpenError::Timeout`] after the open timeout. Cancel-safe: a
    /// channel whose open is abandoned is closed.
    pub async fn open(
        &self,
        peer: &str,
        service: &str,
        headers: Headers,
    ) -> Result<Channel, OpenError> {
        let service = ServiceName::new(service)?;
        let conn = self
            .wait_for_conn(
                Some(peer),
                |core| core.find(peer),
                |waited| OpenError::NoSuchPeer {
                    name: peer.to_owned(),
                    waited,
                },
            )
            .await?;
        conn.open(service, headers, None)
            .await
            .map(Channel::from_owned)
    }

    /// Opens a channel for `service` to the next connected peer in
    /// round-robin order (the original Duplex's `NextPeer`), and waits
    /// until the remote application accepts it.
    ///
    /// If no peer is connected, waits for one up to
    /// [`Config::peer_wait_timeout`], then fails with
    /// [`OpenError::NoPeer`]. Otherwise fails like [`open`](Self::open).
    /// Cancel-safe: a channel whose open is abandoned is closed.
    ///
    /// ```no_run
    /// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
    /// let ch = peer.open_next("echo", duplex::Headers::new()).await?;
    /// println!("talking to {}", ch.meta().remote_peer());
    /// # Ok(()) }
    /// ```
    pub async fn open_next(&self, service: &str, headers: Headers) -> Result<Channel, OpenError> {
        let service = ServiceName::new(service)?;
        let conn = self
            .wait_for_conn(
                None,
                |core| {
                    let peers: Vec<_> = lock(&core.peers)
                        .iter()
                        .filter(|c| !c.cancel.is_cancelled() && c.remote.get().is_some())
                        .cloned()
                        .collect();
                    let n = peers.len();
                    if n == 0 {
                        return None;
                    }
                    let i = core.rr.fetch_add(1, Ordering::Relaxed) % n;
                    peers.into_iter().nth(i)
                },
                |waited| OpenError::NoPeer { waited },
            )
            .await?;
        conn.open(service, headers, None)
            .await
            .map(Channel::from_owned)
    }

    /// Waits for a connection `pick` finds, up to
    /// [`Config::peer_wait_timeout`]; `missing` makes the error for a wait
    /// that found none.
    async fn wait_for_conn(
        &self,
        name: Option<&str>,
        pick: impl Fn(&PeerCore) -> Option<Arc<ConnShared>>,
        missing: impl FnOnce(Duration) -> OpenError,
    ) -> Result<Arc<ConnShared>, OpenError> {
        let waited = self.core.host.config.peer_wait_timeout;
        match self.wait_until(name, pick, Some(waited)).await {
            Ok(conn) => Ok(conn),
            Err(WaitEnd::Shutdown) => Err(OpenError::Shutdown),
            Err(WaitEnd::TimedOut) => Err(missing(waited)),
        }
    }

    /// Waits until `pick` finds something, for at most `limit` (without a
    /// limit for `None`), and not past the start of a shutdown. While it
    /// waits for `name` (any peer, for `None`), endpoints re-dialling that
    /// peer dial now rather than after their backoff's current delay.
    /// Cancel-safe.
    async fn wait_until<T>(
        &self,
        name: Option<&str>,
        pick: impl Fn(&PeerCore) -> Option<T>,
        limit: Option<Duration>,
    ) -> Result<T, WaitEnd> {
        let core = &self.core;
        if let Some(found) = pick(core) {
            return Ok(found);
        }
        for d in lock(&core.dialed).values() {
            if d.waits_for(name) {
                d.kick.notify_one();
            }
        }
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let timed_out = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timed_out);
        loop {
            let changed = core.peers_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if core.host.draining.is_cancelled() {
                return Err(WaitEnd::Shutdown);
            }
            if let Some(found) = pick(core) {
                return Ok(found);
            }
            tokio::select! {
                _ = changed => {}
                _ = &mut timed_out => return Err(WaitEnd::TimedOut),
                _ = core.host.draining.cancelled() => return Err(WaitEnd::Shutdown),
            }
        }
    }

    /// Shuts the peer down gracefully and waits until every task it started
    /// has ended.
    ///
    /// First it stops listening and re-dialling, and refuses new
    /// connections and channels (in both directions and nested); channels
    /// already open may finish, for up to [`Config::drain_timeout`]. Then
    /// it closes every connection (queued channel data is flushed first)
    /// and the channels still open fail with a "connection lost" error.
    /// Idempotent. Cancel-safe: cancelled, the shutdown goes on in the
    /// background only as far as it got (call again to finish it).
    pub async fn shutdown(&self) {
        let core = &self.core;
        if !core.host.draining.is_cancelled() {
            core.host.draining.cancel();
            tracing::debug!(peer = %core.host.name, "shutting down: draining channels");
            let listeners: Vec<_> = lock(&core.listeners).drain().map(|(_, l)| l).collect();
            for (stop, _) in &listeners {
                stop.cancel();
            }
            let deadline = tokio::time::Instant::now() + core.host.config.drain_timeout;
            loop {
                let changed = core.host.channels_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if core.channel_total() == 0 || core.host.cancel.is_cancelled() {
                    break;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    tracing::debug!(peer = %core.host.name, "drain timeout: closing open channels");
                    break;
                }
            }
            for (_, closed) in &listeners {
                closed.cancelled().await;
            }
        }
        core.host.cancel.cancel();
        core.host.tracker.close();
        core.host.tracker.wait().await;
        // Reject channels nobody accepted (also breaks reference cycles);
        // acceptors reject theirs once they see the peer stopped.
        core.host.routes_mut().clear();
        let mut rx = core.incoming_rx.lock().await;
        rx.close();
        while let Ok(ch) = rx.try_recv() {
            drop(ch);
        }
    }

    /// Diagnostics: (channels, unread buffered bytes) per connection to
    /// `peer`, summed.
    pub fn channel_stats(&self, peer: &str) -> (usize, usize) {
        lock(&self.core.peers)
            .iter()
            .filter(|c| c.remote.get().is_some_and(|r| &*r.name == peer))
            .fold((0, 0), |(n, b), c| {
                (n + c.channel_count(), b + c.buffered())
            })
    }
}

/// Why [`Peer::wait_until`] found nothing.
enum WaitEnd {
    /// The peer began shutting down.
    Shutdown,
    /// The wait's limit passed.
    TimedOut,
}
