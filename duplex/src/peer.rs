//! The peer: an SSH server and client with one key pair, binding and
//! connecting to many endpoints, opening and accepting channels.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::channel::{Channel, IncomingChannel};
use crate::config::{CLOSE_GRACE, Config};
use crate::conn::ConnShared;
use crate::endpoint::{Endpoint, EndpointError};
use crate::error::{BindError, ConnectError, OpenError};
pub use crate::events::{Direction, PeerInfo};
use crate::events::{EVENT_BUFFER, PeerEvent, PeerEvents};
use crate::proto::headers::Headers;
use crate::proto::service::ServiceName;
use crate::ssh::handler::{ClientHandler, ServerHandler};
use crate::ssh::keys::{Fingerprint, Identity};
use crate::ssh::trust::{AuthorizedKeys, KnownHosts};
use crate::ssh::{self, HandshakeError, SshConfigs};

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

pub(crate) struct PeerCore {
    pub(crate) name: Arc<str>,
    pub(crate) identity: Identity,
    /// Replaced whole by `set_authorized_keys`; read per authentication.
    authorized: Mutex<Arc<AuthorizedKeys>>,
    pub(crate) known_hosts: Arc<KnownHosts>,
    pub(crate) config: Arc<Config>,
    pub(crate) ssh: SshConfigs,
    /// Connections whose remote finished the Duplex hello: the peers.
    peers: Mutex<Vec<Arc<ConnShared>>>,
    /// Every live connection, for shutdown.
    all: Mutex<HashMap<u64, Arc<ConnShared>>>,
    /// Per bound endpoint: the token that stops its accept loop, and the
    /// token the loop fires once its socket is closed.
    listeners: Mutex<HashMap<Endpoint, (CancellationToken, CancellationToken)>>,
    /// Endpoints given to `connect`, kept connected by `redial`.
    dialed: Mutex<HashMap<Endpoint, Arc<Dialer>>>,
    events: broadcast::Sender<PeerEvent>,
    /// Fired when a peer registers (for `open` waiting on a name).
    peers_changed: Notify,
    /// Fired when a channel leaves a connection's table (for draining).
    pub(crate) channels_changed: Notify,
    /// Cancelled when `shutdown` starts: no new connections or channels.
    pub(crate) draining: CancellationToken,
    pub(crate) incoming_tx: mpsc::Sender<IncomingChannel>,
    // An async mutex only to let several tasks call `accept`; it guards the
    // receiver and nothing else.
    incoming_rx: tokio::sync::Mutex<mpsc::Receiver<IncomingChannel>>,
    rr: AtomicUsize,
    conn_ids: AtomicU64,
    /// Inbound connections still in their handshake, in arrival order,
    /// with the token that ends each and when it last read anything (see
    /// `Config::max_unauthenticated`).
    handshaking: Mutex<Vec<Unfinished>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Rejects incoming channels left waiting (`Config::accept_timeout`).
    pub(crate) pending: Arc<crate::pending::Pending>,
    /// Rate limits for logging what remotes can cause at will.
    pub(crate) refusals: crate::lograte::Refusals,
    /// Receive buffer reserved over all connections
    /// (`Config::max_total_buffer`).
    pub(crate) total_budget: Arc<crate::proto::budget::Budget>,
    /// Per remote key, over its connections (`Config::max_peer_buffer`).
    peer_budgets: Mutex<HashMap<crate::Fingerprint, std::sync::Weak<crate::proto::budget::Budget>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerCore {
    /// The receive-buffer budget of the remote with key `fp`, shared by its
    /// connections while any of them holds it.
    pub(crate) fn budget_for(&self, fp: &crate::Fingerprint) -> Arc<crate::proto::budget::Budget> {
        let mut map = lock(&self.peer_budgets);
        if let Some(b) = map.get(fp).and_then(std::sync::Weak::upgrade) {
            return b;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let b = crate::proto::budget::Budget::new(
            self.config.max_peer_buffer,
            crate::proto::budget::Level::Peer,
        );
        map.insert(fp.clone(), Arc::downgrade(&b));
        b
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(&self, conn: Arc<ConnShared>) {
        let info = conn.info();
        {
            let mut peers = lock(&self.peers);
            if peers.iter().any(|c| c.id == conn.id) {
                return;
            }
            tracing::info!(peer = %conn.remote_name(), endpoint = %conn.endpoint, "peer connected");
            peers.push(conn);
        }
        if let Some(info) = info {
            let _ = self.events.send(PeerEvent::Connected(info));
        }
        self.peers_changed.notify_waiters();
    }

    pub(crate) fn unregister(&self, conn: &ConnShared, reason: Arc<str>) {
        let was_peer = {
            let mut peers = lock(&self.peers);
            let before = peers.len();
            peers.retain(|c| c.id != conn.id);
            peers.len() != before
        };
        lock(&self.all).remove(&conn.id);
        if was_peer && let Some(peer) = conn.info() {
            tracing::info!(peer = %peer.name, endpoint = %peer.endpoint, %reason, "peer disconnected");
            let _ = self.events.send(PeerEvent::Disconnected { peer, reason });
        }
    }

    fn emit(&self, event: PeerEvent) {
        let _ = self.events.send(event);
    }

    /// Open channels over all connections.
    fn channel_total(&self) -> usize {
        let conns: Vec<_> = lock(&self.all).values().cloned().collect();
        conns.iter().map(|c| c.channel_count()).sum()
    }

    /// The keys allowed to connect now.
    pub(crate) fn authorized(&self) -> Arc<AuthorizedKeys> {
        lock(&self.authorized).clone()
    }

    fn find(&self, name: &str) -> Option<Arc<ConnShared>> {
        lock(&self.peers)
            .iter()
            .find(|c| c.remote.get().is_some_and(|r| &*r.name == name) && !c.cancel.is_cancelled())
            .cloned()
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
pub struct Peer {
    core: Arc<PeerCore>,
    _guard: Arc<DropGuard>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("name", &self.core.name)
            .field("fingerprint", &self.core.identity.fingerprint())
            .finish()
    }
}

/// Builds a [`Peer`].
#[derive(Debug, Default)]
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
        let core = Arc::new(PeerCore {
            name: name.into(),
            ssh: SshConfigs::new(&self.config, &identity),
            identity,
            authorized: Mutex::new(Arc::new(self.authorized)),
            known_hosts: Arc::new(self.known_hosts),
            config: Arc::new(self.config),
            peers: Mutex::new(Vec::new()),
            all: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
            dialed: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            peers_changed: Notify::new(),
            channels_changed: Notify::new(),
            // Also cancelled when the peer stops without `shutdown` (last
            // handle dropped), which stops re-dialling too.
            draining: cancel.child_token(),
            incoming_tx: tx,
            incoming_rx: tokio::sync::Mutex::new(rx),
            rr: AtomicUsize::new(0),
            handshaking: Mutex::new(Vec::new()),
            conn_ids: AtomicU64::new(1),
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            pending,
            refusals: Default::default(),
            total_budget,
            peer_budgets: Mutex::new(HashMap::new()),
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
        &self.core.name
    }

    /// This peer's key fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.core.identity.fingerprint()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Listens on `endpoint` (`tcp://HOST:PORT`, port 0 for any free port,
    /// or `unix:///PATH`) and returns the bound endpoint.
    ///
    /// A stale Unix socket file (nobody listening) is replaced. Cancel-safe.
    pub async fn bind(&self, endpoint: impl IntoEndpoint) -> Result<Endpoint, BindError> {
        let endpoint = endpoint.into_endpoint()?;
        if self.core.cancel.is_cancelled() {
            return Err(BindError::Shutdown);
        }
        let io = |source| BindError::Io {
            endpoint: endpoint.to_string(),
            source,
        };
        let token = self.core.cancel.child_token();
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
        if core.draining.is_cancelled() {
            return Err(ConnectError::Shutdown);
        }
        let backoff = &core.config.connect_backoff;
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
                    tracing::debug!(endpoint = %label, attempt, ?wait, "connect failed, retrying: {e}");
                    core.emit(PeerEvent::Reconnecting {
                        endpoint: label.clone(),
                        attempt,
                        delay: wait,
                        reason: e.to_string().into(),
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = core.draining.cancelled() => return Err(ConnectError::Shutdown),
                    }
                }
            }
        };
        let info = conn.info().ok_or_else(|| ConnectError::Protocol {
            endpoint: label,
            reason: "no remote identity".into(),
        })?;
        let dialer = Arc::new(Dialer {
            conn: Mutex::new(Some(conn.clone())),
            stop: core.draining.child_token(),
        });
        // A second connect to the same endpoint: both connections stay up,
        // but only the newest is re-dialled and `disconnect` acts on it.
        if let Some(old) = lock(&core.dialed).insert(endpoint.clone(), dialer.clone()) {
            old.stop.cancel();
        }
        if core.config.reconnect {
            core.tracker
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
        let timeout = self.core.config.handshake_timeout;
        if self.core.draining.is_cancelled() {
            return Err(ConnectError::Shutdown);
        }
        tokio::select! {
            r = tokio::time::timeout(timeout, handshake(&self.core, stream, label.to_owned(), label.to_owned())) => {
                r.map_err(|_| ConnectError::Timeout { endpoint: label.to_owned(), after: timeout })?
                    .map(|(_, info)| info)
            }
            _ = self.core.cancel.cancelled() => Err(ConnectError::Shutdown),
        }
    }

    /// Serves the listening side of a connection over any byte stream. The
    /// handshake runs in the background; the remote appears in
    /// [`peers`](Self::peers) once it completes.
    pub fn serve_stream<S>(&self, stream: S, label: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.core.draining.is_cancelled() {
            return; // dropping the stream closes it
        }
        self.core
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
        *lock(&self.core.authorized) = Arc::new(keys);
    }

    /// Subscribes to this peer's events: peers connecting and disconnecting
    /// (with the reason), and endpoints being re-dialled. See [`PeerEvent`].
    pub fn events(&self) -> PeerEvents {
        PeerEvents::new(self.core.events.subscribe(), self.core.cancel.clone())
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
    pub async fn drop_peer(&self, name: &str) -> bool {
        let conns: Vec<_> = lock(&self.core.peers)
            .iter()
            .filter(|c| c.remote.get().is_some_and(|r| &*r.name == name))
            .cloned()
            .collect();
        for c in &conns {
            c.close("dropped by the application").await;
        }
        !conns.is_empty()
    }

    /// Waits for the next channel a remote opened to us.
    ///
    /// Returns `None` once the peer is shut down. Cancel-safe: a cancelled
    /// call loses no channel.
    pub async fn accept(&self) -> Option<IncomingChannel> {
        let mut rx = self.core.incoming_rx.lock().await;
        loop {
            let ch = tokio::select! {
                ch = rx.recv() => ch?,
                _ = self.core.cancel.cancelled() => return None,
            };
            // One the accept timeout rejected while it waited is skipped.
            if !ch.is_expired() {
                return Some(ch);
            }
        }
    }

    /// Opens a channel for `service` to the connected peer called `peer`,
    /// and waits until the remote application accepts it.
    ///
    /// If no peer of that name is connected (it may be starting, or
    /// reconnecting), waits for one up to [`Config::peer_wait_timeout`],
    /// then fails with [`OpenError::NoSuchPeer`]. Fails with
    /// [`OpenError::Rejected`] if the remote rejects, and with
    /// [`OpenError::Timeout`] after the configured open timeout.
    /// Cancel-safe: a channel whose open is abandoned is closed.
    pub async fn open(
        &self,
        peer: &str,
        service: &str,
        headers: Headers,
    ) -> Result<Channel, OpenError> {
        let service = ServiceName::new(service)?;
        let conn = self
            .wait_for_conn(
                |core| core.find(peer),
                |waited| OpenError::NoSuchPeer {
                    name: peer.to_owned(),
                    waited,
                },
            )
            .await?;
        conn.open(service, headers, None).await
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
        conn.open(service, headers, None).await
    }

    /// Waits up to the peer-wait timeout for `pick` to find a connection.
    async fn wait_for_conn(
        &self,
        pick: impl Fn(&PeerCore) -> Option<Arc<ConnShared>>,
        missing: impl FnOnce(Duration) -> OpenError,
    ) -> Result<Arc<ConnShared>, OpenError> {
        let core = &self.core;
        let waited = core.config.peer_wait_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let changed = core.peers_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if core.draining.is_cancelled() {
                return Err(OpenError::Shutdown);
            }
            if let Some(conn) = pick(core) {
                return Ok(conn);
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return Err(missing(waited)),
                _ = core.draining.cancelled() => return Err(OpenError::Shutdown),
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
        if !core.draining.is_cancelled() {
            core.draining.cancel();
            tracing::debug!(peer = %core.name, "shutting down: draining channels");
            let listeners: Vec<_> = lock(&core.listeners).drain().map(|(_, l)| l).collect();
            for (stop, _) in &listeners {
                stop.cancel();
            }
            let deadline = tokio::time::Instant::now() + core.config.drain_timeout;
            loop {
                let changed = core.channels_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if core.channel_total() == 0 || core.cancel.is_cancelled() {
                    break;
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    tracing::debug!(peer = %core.name, "drain timeout: closing open channels");
                    break;
                }
            }
            for (_, closed) in &listeners {
                closed.cancelled().await;
            }
        }
        core.cancel.cancel();
        core.tracker.close();
        core.tracker.wait().await;
        // Reject channels nobody accepted (also breaks reference cycles).
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

/// An endpoint given to `connect`.
struct Dialer {
    /// Its current connection, if any.
    conn: Mutex<Option<Arc<ConnShared>>>,
    /// Stops re-dialling (disconnect, a newer connect, shutdown).
    stop: CancellationToken,
}

fn jitter() -> f64 {
    use rand::RngExt;
    rand::rng().random()
}

/// One attempt at connecting to `endpoint`, bounded by the handshake
/// timeout.
async fn dial(core: &Arc<PeerCore>, endpoint: &Endpoint) -> Result<Arc<ConnShared>, ConnectError> {
    let label = endpoint.to_string();
    let timeout = core.config.handshake_timeout;
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
        _ = core.draining.cancelled() => return Err(ConnectError::Shutdown),
    };
    Ok(conn)
}

async fn handshake<S>(
    core: &Arc<PeerCore>,
    stream: S,
    endpoint: String,
    host_name: String,
) -> Result<(Arc<ConnShared>, PeerInfo), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ConnShared::new(core.clone(), endpoint.clone(), Direction::Outbound);
    let handler = ClientHandler::new(conn.clone(), core.known_hosts.clone(), host_name);
    // Until the connection is handed to its supervisor, failing (or being
    // cancelled) must stop its tasks.
    let abort = conn.cancel.clone().drop_guard();
    let stop_transport = conn.transport_stop.clone().drop_guard();
    let stream = conn.transport(stream);
    let handle = ssh::client_handshake(&core.ssh, stream, handler, &core.name, &core.identity)
        .await
        .map_err(|e| match e {
            HandshakeError::HostKey(source) => ConnectError::HostKey {
                endpoint: endpoint.clone(),
                source,
            },
            HandshakeError::AuthRejected => ConnectError::AuthRejected {
                endpoint: endpoint.clone(),
                fingerprint: core.identity.fingerprint(),
                name: core.name.to_string(),
            },
            HandshakeError::Ssh(reason) => ConnectError::Handshake {
                endpoint: endpoint.clone(),
                reason,
            },
        })?;
    let _ = conn.handle.set(handle);
    lock(&core.all).insert(conn.id, conn.clone());
    core.tracker.spawn(conn.clone().run_outbox());
    core.tracker.spawn(supervise(conn.clone()));
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
async fn redial(
    core: Arc<PeerCore>,
    endpoint: Endpoint,
    dialer: Arc<Dialer>,
    mut conn: Arc<ConnShared>,
) {
    let label = endpoint.to_string();
    let backoff = core.config.connect_backoff.clone();
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
                    tracing::warn!(endpoint = %label, "stopped re-dialling: {e}");
                    core.emit(PeerEvent::GaveUp {
                        endpoint: label.clone(),
                        reason: e.to_string().into(),
                    });
                    lock(&core.dialed).retain(|_, d| !Arc::ptr_eq(d, &dialer));
                    return;
                }
                Err(e) => {
                    reason = e.to_string().into();
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        *lock(&dialer.conn) = Some(conn.clone());
    }
}

/// Waits for a connection's end (or the peer's shutdown), then cleans up.
async fn supervise(conn: Arc<ConnShared>) {
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

/// The listening side of one connection.
async fn serve<S>(core: Arc<PeerCore>, stream: S, endpoint: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = ConnShared::new(core.clone(), endpoint, Direction::Inbound);
    lock(&core.all).insert(conn.id, conn.clone());
    let handshaking = Handshaking::enter(&core, &conn);
    let handler = ServerHandler::new(conn.clone());
    let stream = conn.transport(stream);
    let timeout = core.config.handshake_timeout;
    let handshake = async {
        match ssh::server_start(&core.ssh, stream, handler).await {
            Ok(handle) => {
                let _ = conn.handle.set(handle);
                core.tracker.spawn(conn.clone().run_outbox());
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
struct Handshaking {
    core: Arc<PeerCore>,
    id: u64,
}

/// An unfinished handshake, as the list of them holds it.
struct Unfinished {
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
    fn enter(core: &Arc<PeerCore>, conn: &Arc<ConnShared>) -> Self {
        conn.activity.touch();
        let evicted = {
            let mut list = lock(&core.handshaking);
            list.push(Unfinished {
                id: conn.id,
                cancel: conn.cancel.clone(),
                activity: conn.activity.clone(),
            });
            if list.len() > core.config.max_unauthenticated {
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
            if let Some(n) = core.refusals.evicted.allow() {
                tracing::warn!(
                    limit = core.config.max_unauthenticated,
                    "more than {} unfinished handshakes: ending the one idle the longest (connection {}) to make room (Config::max_unauthenticated){}",
                    core.config.max_unauthenticated,
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
        lock(&self.core.handshaking).retain(|u| u.id != self.id);
    }
}

async fn accept_tcp(
    core: Arc<PeerCore>,
    listener: tokio::net::TcpListener,
    (stop, closed): (CancellationToken, CancellationToken),
    label: String,
) {
    let _closed = closed.drop_guard();
    let slots = Arc::new(tokio::sync::Semaphore::new(core.config.max_connections));
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
                    core.config.max_connections,
                    &core.refusals.connections,
                ) else {
                    continue;
                };
                let endpoint = format!("{label}{from}");
                let serving = serve(core.clone(), stream, endpoint);
                core.tracker.spawn(async move {
                    serving.await;
                    drop(slot);
                });
            }
            Err(e) => errors.failed(e, &stop).await,
        }
    }
    drop(listener); // before `_closed` fires
}

async fn accept_unix(
    core: Arc<PeerCore>,
    listener: tokio::net::UnixListener,
    (stop, closed): (CancellationToken, CancellationToken),
    path: std::path::PathBuf,
) {
    let _closed = closed.drop_guard();
    let label = format!("unix://{}", path.display());
    let slots = Arc::new(tokio::sync::Semaphore::new(core.config.max_connections));
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
                    core.config.max_connections,
                    &core.refusals.connections,
                ) else {
                    continue;
                };
                let serving = serve(core.clone(), stream, label.clone());
                core.tracker.spawn(async move {
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
fn take_slot<S: TryWriteLine>(
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
trait TryWriteLine {
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
struct AcceptErrors {
    label: String,
    failures: u64,
    since: Option<tokio::time::Instant>,
    logged: Option<tokio::time::Instant>,
    /// A failure was logged, its end not yet.
    owed_recovery: bool,
    delay: Duration,
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(60);

impl AcceptErrors {
    fn new(label: String) -> Self {
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
    fn ok(&mut self) {
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

    async fn failed(&mut self, e: std::io::Error, stop: &CancellationToken) {
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

async fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
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
