//! One SSH connection to a remote peer, either role: its state, its
//! channel table and the budgets its channels draw on. Opens from the
//! remote are in `accept`, opens from this side in `open`, the send turns
//! and the outbox task in `outbox`, and the session's events in
//! `session`.

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{CLOSE_GRACE, Config};
use crate::conn::chan::{ChanShared, Turn};
use crate::error::ChannelError;
use crate::events::{Direction, PeerInfo};
use crate::proto::ChannelId;
use crate::proto::budget::{self, Budget, Level, Reservation, Share};
use crate::proto::chan::Kind;
use crate::proto::headers::Headers;
use crate::proto::hello::{self, Version};
use crate::proto::mux::Mux;
use crate::ssh::SessionHandle;
use crate::ssh::keys::Fingerprint;
use crate::transport::Backlog;
use host::{Host, Registry};

mod accept;
pub(crate) mod chan;
pub(crate) mod host;
pub(crate) mod meta;
mod open;
mod outbox;
pub(crate) mod owned;
pub(crate) mod routes;
mod session;

pub(crate) use outbox::turn;

/// A running session whose events go to a connection.
pub(crate) type Session = SessionHandle<ConnShared>;

/// Who the remote is, once known.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) name: Arc<str>,
    pub(crate) fingerprint: Fingerprint,
}

pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) config: Arc<Config>,
    /// What the peer shares with all its connections.
    pub(crate) host: Arc<Host>,
    /// The peer's tables, told when the remote becomes a peer and when the
    /// connection ends.
    registry: Arc<dyn Registry>,
    pub(crate) endpoint: String,
    pub(crate) direction: Direction,
    remote_key: OnceLock<Fingerprint>,
    remote_user: OnceLock<Arc<str>>,
    pub(crate) remote: OnceLock<Remote>,
    /// Our name, the remote's and the endpoint, shared by the metadata of
    /// every channel (set at the first channel, when the remote is known).
    meta_names: OnceLock<(Arc<str>, Arc<str>, Arc<str>)>,
    /// The remote completed the Duplex hello (always true once a dialled
    /// connection is registered).
    duplex: AtomicBool,
    /// The protocol version agreed in the hello (1 until then).
    version: AtomicU32,
    /// A channel other than `@hello` was opened by the remote: a later
    /// hello is refused (the first open decides, PROTOCOL.md section 2).
    opened_any: AtomicBool,
    /// When the connection started: a hello is taken only within the
    /// handshake time limit of it.
    started: tokio::time::Instant,
    pub(crate) handle: OnceLock<Session>,
    /// The channel table, the remote's numbers for the channels we opened,
    /// the nesting tree and the pending counts (see `proto::mux`): pending
    /// plain SSH clients' channels are counted there but not in the table
    /// until accepted.
    ///
    /// Lock order: this lock and a channel's own lock (`ChanShared`'s
    /// state) are never held at the same time, in either order: take what
    /// is needed from one (clone the `Arc`s, copy the ids), let go, then
    /// take the other. `unclaimed` may be held while taking this one
    /// (`meet`), never the reverse. Nothing is woken, sent or dropped with
    /// side effects under it.
    channels: Mutex<Mux<Arc<ChanShared>>>,
    /// Channels we opened that only one of {handler, opening task} has seen
    /// yet (see `meet`). Kept apart from `channels` because the whole
    /// exchange (confirm, reject, close) can complete before the task runs;
    /// russh never reuses an id soon (a 32-bit counter), so a stale entry
    /// cannot be confused with a new channel.
    unclaimed: Mutex<HashMap<u32, Arc<ChanShared>>>,
    /// Receive buffer reserved by this connection's channels (see
    /// `budget` and `Config::max_connection_buffer`).
    budget: Arc<Budget>,
    /// The remote's budget across its connections (`Config::
    /// max_peer_buffer`), once its key is known.
    peer_budget: OnceLock<Arc<Budget>>,
    /// Send turns that had to wait, for the outbox task to carry on.
    ready: Mutex<Vec<Turn>>,
    ready_notify: Notify,
    /// Fired when a channel's outbox queue has been sent.
    idle: Notify,
    /// How full the transport's send buffer is: channel data waits for it.
    backlog: Arc<Backlog>,
    /// Fired when the session has finished a handshake (authenticated).
    pub(crate) authenticated: Notify,
    /// Cancelled to stop this connection's tasks.
    pub(crate) cancel: CancellationToken,
    /// Cancelled when russh's session task has ended.
    pub(crate) ended: CancellationToken,
    /// Fired when the connection is fully cleaned up.
    pub(crate) finished: CancellationToken,
    /// Stops the transport's writer task (after its grace period); fired
    /// once the connection is over.
    pub(crate) transport_stop: CancellationToken,
    /// When the transport last read anything.
    pub(crate) activity: Arc<crate::transport::Activity>,
    end_reason: OnceLock<String>,
    /// Closed by our application (disconnect, drop_peer, shutdown): not to
    /// be re-dialled.
    on_purpose: AtomicBool,
}

impl ConnShared {
    /// Wraps the connection's byte stream (see `transport`).
    pub(crate) fn transport<S>(&self, stream: S) -> crate::transport::Decoupled<S>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        crate::transport::decouple(
            stream,
            self.config.max_send_buffer,
            self.backlog.clone(),
            &self.host.tracker,
            self.transport_stop.clone(),
            self.activity.clone(),
        )
    }

    pub(crate) fn new(
        host: Arc<Host>,
        registry: Arc<dyn Registry>,
        endpoint: String,
        direction: Direction,
    ) -> Arc<Self> {
        let config_buffer = host.config.max_connection_buffer;
        let backlog = Backlog::new(host.config.max_send_buffer);
        Arc::new(Self {
            id: host.next_conn_id(),
            config: host.config.clone(),
            cancel: host.cancel.child_token(),
            host,
            registry,
            endpoint,
            direction,
            remote_key: OnceLock::new(),
            remote_user: OnceLock::new(),
            remote: OnceLock::new(),
            meta_names: OnceLock::new(),
            duplex: AtomicBool::new(false),
            version: AtomicU32::new(hello::MIN_VERSION),
            opened_any: AtomicBool::new(false),
            started: tokio::time::Instant::now(),
            handle: OnceLock::new(),
            channels: Mutex::new(Mux::new()),
            unclaimed: Mutex::new(HashMap::default()),
            budget: Budget::new(config_buffer, Level::Connection),
            peer_budget: OnceLock::new(),
            ready: Mutex::new(Vec::new()),
            ready_notify: Notify::new(),
            idle: Notify::new(),
            backlog,
            authenticated: Notify::new(),
            ended: CancellationToken::new(),
            transport_stop: CancellationToken::new(),
            activity: Arc::default(),
            finished: CancellationToken::new(),
            end_reason: OnceLock::new(),
            on_purpose: AtomicBool::new(false),
        })
    }

    fn channels(&self) -> MutexGuard<'_, Mux<Arc<ChanShared>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `chan` to the table. (A channel under the same number, which
    /// russh never reuses soon, would be dropped after the lock.)
    fn register(&self, chan: &Arc<ChanShared>) {
        let old = self
            .channels()
            .insert(ChannelId(chan.id), chan.clone(), chan.outgoing);
        drop(old);
    }

    pub(crate) fn remote_name(&self) -> String {
        match self.remote.get() {
            Some(r) => r.name.to_string(),
            None => self
                .remote_user
                .get()
                .map(|u| u.to_string())
                .unwrap_or_else(|| self.endpoint.clone()),
        }
    }

    /// The remote for messages: its name, key fingerprint and address.
    pub(crate) fn remote_label(&self) -> String {
        match self.remote_key.get() {
            Some(fp) => format!("{} (key {fp}, {})", self.remote_name(), self.endpoint),
            None => format!("{} ({})", self.remote_name(), self.endpoint),
        }
    }

    pub(crate) fn info(&self) -> Option<PeerInfo> {
        self.remote.get().map(|r| PeerInfo {
            name: r.name.to_string(),
            fingerprint: r.fingerprint.clone(),
            endpoint: self.endpoint.clone(),
            direction: self.direction,
        })
    }

    /// The protocol version of this connection (1 until the hello agreed
    /// on another).
    pub(crate) fn version(&self) -> Version {
        Version(self.version.load(Ordering::Acquire))
    }

    // ---- handshake bookkeeping (called by the handlers) ----

    /// Reserves `bytes` of receive buffer for a channel, from this
    /// connection's budget, its remote's and the whole peer's (see
    /// `budget`), or says which is spent and what to raise.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<Reservation, String> {
        self.reserve_share(bytes, Share::All)
            .map_err(|r| self.budget_refusal(r))
    }

    /// Reserves `bytes` for a channel's window to grow, only while every
    /// budget stays under half full: the other half is kept for channels
    /// yet to open.
    pub(crate) fn reserve_growth(&self, bytes: u64) -> Option<Reservation> {
        self.reserve_share(bytes, Share::Half).ok()
    }

    fn reserve_share(&self, bytes: u64, share: Share) -> Result<Reservation, budget::Refused> {
        let peer = self.remote_key.get().map(|fp| {
            self.peer_budget
                .get_or_init(|| self.host.budget_for(fp))
                .clone()
        });
        let levels = [
            Some(self.budget.clone()),
            peer,
            Some(self.host.total_budget.clone()),
        ];
        budget::reserve(levels, bytes, share)
    }

    /// Which budget is spent, and the knob that raises it.
    fn budget_refusal(&self, r: budget::Refused) -> String {
        r.describe(&self.host.name, || self.remote_label())
    }

    /// The remote's key fingerprint (after key exchange / authentication).
    pub(crate) fn remote_fingerprint(&self) -> Option<Fingerprint> {
        self.remote_key.get().cloned()
    }

    pub(crate) fn set_end_reason(&self, why: String) {
        let _ = self.end_reason.set(why);
    }

    pub(crate) fn end_reason(&self) -> String {
        self.end_reason
            .get()
            .cloned()
            .unwrap_or_else(|| "the connection closed".to_owned())
    }

    /// The dialler learned the listener's name from its hello.
    pub(crate) fn set_remote(&self, name: String) -> Option<Remote> {
        let fingerprint = self.remote_key.get()?.clone();
        let r = Remote {
            name: name.into(),
            fingerprint,
        };
        let _ = self.remote.set(r.clone());
        self.duplex.store(true, Ordering::Release);
        Some(r)
    }

    /// Whether this is a dialled connection still waiting for the
    /// listener's `HELLO` (the only time one may arrive).
    pub(crate) fn awaiting_hello(&self) -> bool {
        self.direction == Direction::Outbound && self.remote.get().is_none()
    }

    /// The listener's `HELLO` arrived (in the session loop, so channels it
    /// opens right after it already see the version and the name).
    pub(crate) fn on_listener_hello(&self, answer: &Headers) -> Result<(), String> {
        let (name, version) = hello::dialler_check(answer)?;
        self.version.store(version.0, Ordering::Release);
        self.set_remote(name);
        Ok(())
    }

    // ---- channel events (called by the handlers) ----

    fn get(&self, id: u32) -> Option<Arc<ChanShared>> {
        self.channels().get(ChannelId(id)).cloned()
    }

    /// The opening task takes the channel for `id`.
    fn claim(self: &Arc<Self>, id: u32) -> Arc<ChanShared> {
        self.meet(id)
    }

    /// The handler (confirmation) and the opening task (open returned) both
    /// come here for each channel we open, in either order: the first
    /// creates and registers the channel, the second takes it.
    fn meet(self: &Arc<Self>, id: u32) -> Arc<ChanShared> {
        let mut unclaimed = lock(&self.unclaimed);
        match unclaimed.remove(&id) {
            Some(chan) => chan,
            None => {
                let window = u64::from(self.config.channel_window);
                let chan = ChanShared::new(self.clone(), id, Kind::Duplex, window, true);
                self.register(&chan);
                unclaimed.insert(id, chan.clone());
                chan
            }
        }
    }

    /// An incoming channel left the pending state (accepted or rejected).
    pub(crate) fn pending_done(&self, kind: Kind) {
        self.channels().pending_done(kind == Kind::Plain);
    }

    /// Removes a channel whose close we sent (unless the number is in use by
    /// another channel already).
    pub(crate) fn forget(&self, chan: &Arc<ChanShared>) {
        let orphans = {
            let mut chans = self.channels();
            chans
                .remove_if(ChannelId(chan.id), |c| Arc::ptr_eq(c, chan))
                .map(|r| resolve_all(&chans, r.children))
        };
        let Some(orphans) = orphans else { return };
        // Its children ended when it closed; any left end now.
        chan.end_orphans(orphans);
        self.host.channels_changed.notify_waiters();
    }

    /// Registers an accepted plain channel so its data can be delivered.
    pub(crate) fn insert(&self, chan: Arc<ChanShared>) {
        self.register(&chan);
    }

    /// Marks a channel ended in the nesting tree: it takes no more
    /// children, and the ones it had come back, for the caller to end.
    /// Nothing once it is out of the table (its number may name another
    /// channel by then).
    pub(crate) fn end_nested(&self, chan: &ChanShared) -> Vec<Arc<ChanShared>> {
        let mut chans = self.channels();
        let id = ChannelId(chan.id);
        if !chans
            .get(id)
            .is_some_and(|c| std::ptr::eq(Arc::as_ptr(c), chan))
        {
            return Vec::new();
        }
        let children = chans.end(id);
        resolve_all(&chans, children)
    }

    /// The remote accepted channel `id`, which we opened, and numbers it
    /// `n`: its nested opens may name it so (`ParentRef::Mine`).
    pub(crate) fn note_remote_id(&self, id: u32, n: u32) {
        self.channels().set_remote(ChannelId(id), n);
    }

    /// The session ended: fail every channel and leave the peer's tables.
    pub(crate) fn on_session_end(self: &Arc<Self>) {
        let reason = self.lost_reason();
        tracing::debug!(%reason, "connection ended");
        let reason: Arc<str> = reason.into();
        lock(&self.unclaimed).clear();
        self.drop_turns();
        let chans = self.channels().drain();
        for (_, c) in chans {
            c.fail(ChannelError::ConnectionLost(reason.clone()));
        }
        self.cancel.cancel();
        self.transport_stop.cancel();
        self.registry.unregister(self, self.end_reason().into());
        self.host.channels_changed.notify_waiters();
        self.finished.cancel();
    }

    /// What channels of this connection fail with once it is gone: the
    /// remote, the endpoint and the cause.
    pub(crate) fn lost_reason(&self) -> String {
        format!(
            "connection to {} ({}) lost: {}",
            self.remote_name(),
            self.endpoint,
            self.end_reason()
        )
    }

    /// Closes the connection gracefully (disconnect, drop_peer, shutdown):
    /// queued channel data is sent first (up to a grace period), then the
    /// session is disconnected. Returns once the connection is gone.
    pub(crate) async fn close(&self, why: &str) {
        self.on_purpose.store(true, Ordering::Release);
        let _ = self.end_reason.set(why.to_owned());
        self.cancel.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE * 3, self.finished.cancelled()).await;
    }

    /// Whether our application closed the connection.
    pub(crate) fn closed_on_purpose(&self) -> bool {
        self.on_purpose.load(Ordering::Acquire)
    }

    /// Disconnects at once, without waiting for anything.
    pub(crate) async fn disconnect_now(&self, why: &str) {
        let _ = self.end_reason.set(why.to_owned());
        if let Some(h) = self.handle.get() {
            // Bounded: a session stuck writing to a remote that stopped
            // reading never takes the message.
            let _ = tokio::time::timeout(CLOSE_GRACE, h.disconnect(&self.end_reason())).await;
        }
        self.cancel.cancel();
    }

    /// Number of channels in the table (for tests and stats).
    pub(crate) fn channel_count(&self) -> usize {
        self.channels().len()
    }

    /// Bytes buffered unread across this connection's channels.
    pub(crate) fn buffered(&self) -> usize {
        // Not under the table lock: each channel takes its own.
        let chans: Vec<_> = self.channels().values().cloned().collect();
        chans.iter().map(|c| c.buffered()).sum()
    }
}

/// The channels of `ids` (the table holds every child the tree names).
fn resolve_all(chans: &Mux<Arc<ChanShared>>, ids: Vec<ChannelId>) -> Vec<Arc<ChanShared>> {
    ids.into_iter()
        .filter_map(|id| chans.get(id).cloned())
        .collect()
}

/// The session's events, from russh's session task (either role).
fn parent_service(parent: Option<&ChanShared>) -> String {
    parent
        .and_then(|p| p.meta.get())
        .map(|m| m.service().to_owned())
        .unwrap_or_default()
}

/// The accept timeout's handle on a pending channel.
fn watched(chan: &Arc<ChanShared>) -> std::sync::Weak<dyn crate::pending::Waiting> {
    let weak: std::sync::Weak<ChanShared> = Arc::downgrade(chan);
    weak
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
