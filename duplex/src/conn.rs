//! One SSH connection to a remote peer, either role: its channel table, the
//! handling of channel opens, and the outbox task that sends what channels
//! queue.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::channel::state::{ChanShared, Turn};
use crate::channel::{Channel, ChannelMeta, IncomingChannel};
use crate::config::{CLOSE_GRACE, Config};
use crate::error::{ChannelError, OpenError};
use crate::events::{Direction, PeerInfo};
use crate::peer::PeerCore;
use crate::proto::budget::{self, Budget, Level, Reservation, Share};
use crate::proto::chan::{Delivery, Kind, OpenPhase, Out};
use crate::proto::control::Control;
use crate::proto::headers::{Headers, with_window};
use crate::proto::hello::{self, Version};
use crate::proto::nest::{ParentRef, TOP_LEVEL};
use crate::proto::open::{self as rules, OPEN_PROHIBITED, OPEN_RESOURCE_SHORTAGE, Verdict};
use crate::proto::service::ServiceName;
use crate::proto::{EXT_CONTROL, EXT_ERROR, HELLO_SERVICE};
use crate::ssh::keys::{Fingerprint, PublicKey};
use crate::ssh::{IncomingOpen, OpenFailed, SendFailed, SessionEvents, SessionHandle, WriteHalf};
use crate::transport::Backlog;

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
    pub(crate) core: Arc<PeerCore>,
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
    channels: Mutex<HashMap<u32, Arc<ChanShared>>>,
    /// Channels we opened that only one of {handler, opening task} has seen
    /// yet (see `meet`). Kept apart from `channels` because the whole
    /// exchange (confirm, reject, close) can complete before the task runs;
    /// russh never reuses an id soon (a 32-bit counter), so a stale entry
    /// cannot be confused with a new channel.
    unclaimed: Mutex<HashMap<u32, Arc<ChanShared>>>,
    pending: AtomicUsize,
    /// The pending ones from plain SSH clients: unlike Duplex channels
    /// they are not in the channel table until accepted.
    pending_plain: AtomicUsize,
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
            &self.core.tracker,
            self.transport_stop.clone(),
            self.activity.clone(),
        )
    }

    pub(crate) fn new(core: Arc<PeerCore>, endpoint: String, direction: Direction) -> Arc<Self> {
        let config_buffer = core.config.max_connection_buffer;
        let backlog = Backlog::new(core.config.max_send_buffer);
        Arc::new(Self {
            id: core.next_conn_id(),
            config: core.config.clone(),
            cancel: core.cancel.child_token(),
            core,
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
            channels: Mutex::new(HashMap::new()),
            unclaimed: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
            pending_plain: AtomicUsize::new(0),
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

    fn channels(&self) -> MutexGuard<'_, HashMap<u32, Arc<ChanShared>>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
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
                .get_or_init(|| self.core.budget_for(fp))
                .clone()
        });
        let levels = [
            Some(self.budget.clone()),
            peer,
            Some(self.core.total_budget.clone()),
        ];
        budget::reserve(levels, bytes, share)
    }

    /// Which budget is spent, and the knob that raises it.
    fn budget_refusal(&self, r: budget::Refused) -> String {
        let me = &self.core.name;
        let (used, limit) = (r.used, r.limit);
        match r.level {
            Level::Connection => format!(
                "{me}'s receive buffer for this connection is fully reserved ({used} of {limit} bytes, by the windows of channels already open; Config::max_connection_buffer)"
            ),
            Level::Peer => format!(
                "{me}'s receive buffer for {} is fully reserved ({used} of {limit} bytes, by the windows of its channels over all its connections; Config::max_peer_buffer)",
                self.remote_label()
            ),
            Level::Total => format!(
                "{me}'s receive buffer is fully reserved ({used} of {limit} bytes, by the windows of channels over all its connections; Config::max_total_buffer)"
            ),
        }
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
        self.channels().get(&id).cloned()
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
                self.channels().insert(id, chan.clone());
                unclaimed.insert(id, chan.clone());
                chan
            }
        }
    }

    /// The remote asked to open a channel.
    async fn open_from_remote(self: &Arc<Self>, open: IncomingOpen) {
        // Everything a listener opens to us is Duplex; a dialler is Duplex
        // once it said hello.
        let inbound = self.direction == Direction::Inbound;
        let duplex = !inbound || self.duplex.load(Ordering::Acquire);
        let at = rules::Conditions {
            me: &self.core.name,
            duplex,
            draining: self.core.draining.is_cancelled(),
            // Pending Duplex channels are in the table already.
            channels: self.channels().len() + self.pending_plain.load(Ordering::Acquire),
            pending: self.pending.load(Ordering::Acquire),
        };
        let fields = rules::OpenFields {
            service: &open.service,
            originator: &open.originator,
            port_to_connect: open.port_to_connect,
            originator_port: open.originator_port,
        };
        let verdict = rules::verdict(&fields, &at, &self.open_limits(), inbound);
        if !duplex && inbound && verdict.ends_hello() {
            self.opened_any.store(true, Ordering::Release);
        }
        let accepted = match verdict {
            Verdict::Hello => return self.on_hello(open).await,
            Verdict::Refuse(r) if r.cause == rules::Cause::Limit => {
                return self.refuse_limit(open, &r.reason).await;
            }
            Verdict::Refuse(r) => return open.reply.reject(r.code, &r.reason).await,
            Verdict::Reject(why) => return self.refuse(open, why).await,
            Verdict::Accept(a) => a,
        };
        let rules::Accepted {
            service,
            headers,
            window,
            parent,
            duplex,
        } = accepted;
        if let Some(parent) = parent {
            return self
                .on_nested_open(open, service, headers, window, parent)
                .await;
        }
        let Ok(permit) = self.core.incoming_tx.try_reserve() else {
            let why = format!(
                "{}'s accept queue (channels waiting for Peer::accept) is full (limit {}, Config::accept_backlog)",
                self.core.name, self.config.accept_backlog
            );
            return self.refuse_limit(open, &why).await;
        };
        let buffer = if duplex {
            u64::from(self.config.channel_window)
        } else {
            self.config.plain_channel_buffer as u64
        };
        let reservation = match self.reserve(buffer) {
            Ok(r) => r,
            Err(why) => return self.refuse_limit(open, &why).await,
        };
        let id = open.write.id();
        let kind = if duplex { Kind::Duplex } else { Kind::Plain };
        // A plain client's credit is the SSH window we offer it (granted
        // back as the application reads, see `Kind::Plain`).
        let mut open = open;
        let credit = if duplex {
            0
        } else {
            let window = u32::try_from(self.config.plain_channel_buffer).unwrap_or(u32::MAX);
            open.reply.manual_window(window);
            u64::from(window)
        };
        let chan = ChanShared::new(self.clone(), id, kind, credit, false);
        chan.hold(reservation);
        if let Some(w) = window {
            chan.credit(w);
        }
        let meta = Arc::new(self.meta(service, headers, None));
        let _ = chan.meta.set(meta);
        let _ = chan.writer.set(open.write);
        self.pending.fetch_add(1, Ordering::AcqRel);
        if !duplex {
            self.pending_plain.fetch_add(1, Ordering::AcqRel);
        }
        if duplex {
            self.channels().insert(id, chan.clone());
            open.reply.accept().await;
        } else {
            // A plain client learns the application's answer from the SSH
            // open reply itself, so it waits for `accept`/`reject`.
            chan.set_plain_reply(open.reply);
        }
        tracing::debug!(channel = id, peer = %self.remote_name(), "incoming channel");
        self.core
            .pending
            .watch(watched(&chan), &self.core.tracker, &self.core.cancel);
        permit.send(IncomingChannel::new(chan));
    }

    /// The remote opened a channel inside one of this connection's
    /// channels: check the parent and the depth, and hand the child to the
    /// parent's `accept`. Refusals go in a `REJECT` record, so the opener
    /// reads the reason (russh drops the text of SSH open failures).
    async fn on_nested_open(
        self: &Arc<Self>,
        open: IncomingOpen,
        service: ServiceName,
        headers: Headers,
        window: Option<u32>,
        parent: ParentRef,
    ) {
        let me = &self.core.name;
        let found = match parent {
            // A channel the remote opened: our own number for it.
            ParentRef::Yours(n) => self.get(n).filter(|c| !c.outgoing),
            // A channel we opened: the number the remote gave in ACCEPT.
            ParentRef::Mine(n) => self
                .channels()
                .values()
                .find(|c| c.outgoing && c.remote_id.get() == Some(&n))
                .cloned(),
        };
        let Some(parent) = found else {
            let ours = matches!(parent, ParentRef::Yours(n) if self.get(n).is_some());
            return self
                .refuse(open, rules::unknown_parent(parent, me, ours))
                .await;
        };
        let parent_meta = parent.meta.get().cloned();
        let closed = parent.closed_reason();
        let view = rules::ParentView {
            duplex: parent.kind == Kind::Duplex,
            established: parent.is_established(),
            closed: closed.as_deref(),
            depth: parent_meta.as_ref().map_or(0, |m| m.depth()),
        };
        if let Err(why) = rules::nested_verdict(&view, me, self.config.max_nesting_depth) {
            return self.refuse(open, why).await;
        }
        let reservation = match self.reserve(u64::from(self.config.channel_window)) {
            Ok(r) => r,
            Err(why) => return self.refuse(open, why).await,
        };
        let id = open.write.id();
        let chan = ChanShared::new(self.clone(), id, Kind::Duplex, 0, false);
        chan.hold(reservation);
        if let Some(w) = window {
            chan.credit(w);
        }
        let _ = chan
            .meta
            .set(Arc::new(self.meta(service, headers, parent_meta)));
        let _ = chan.writer.set(open.write);
        self.channels().insert(id, chan.clone());
        open.reply.accept().await;
        if let Err(why) = parent.adopt(&chan) {
            // The parent closed meanwhile.
            chan.send_control(&Control::Reject {
                reason: why.to_string(),
            });
            chan.send_close();
            return;
        }
        self.pending.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(channel = id, parent = parent.id, "incoming nested channel");
        self.core
            .pending
            .watch(watched(&chan), &self.core.tracker, &self.core.cancel);
        if let Some(child) = parent.offer_child(IncomingChannel::new(chan)) {
            child.reject("the parent channel closed").await;
        }
    }

    /// Accepts the SSH open only to refuse the Duplex channel with a reason.
    /// Refuses a top-level open on a limit (SSH open failure, code 4, with
    /// `why` as the description, which names the limit and its knob), and
    /// logs it, rate-limited, with who asked.
    async fn refuse_limit(&self, open: IncomingOpen, why: &str) {
        let service = &open.service;
        if let Some(n) = self.core.refusals.opens.allow() {
            tracing::warn!(
                remote = %self.remote_label(),
                %service,
                "refused a channel open: {why}{}",
                crate::lograte::left_out(n)
            );
        }
        open.reply.reject(OPEN_RESOURCE_SHORTAGE, why).await;
    }

    async fn refuse(self: &Arc<Self>, open: IncomingOpen, why: String) {
        let chan = ChanShared::new(self.clone(), open.write.id(), Kind::Duplex, 0, false);
        tracing::debug!(channel = chan.id, %why, "refusing a nested channel");
        let _ = chan.writer.set(open.write);
        self.channels().insert(chan.id, chan.clone());
        open.reply.accept().await;
        chan.send_control(&Control::Reject { reason: why });
        chan.send_close();
    }

    /// The limits incoming opens are checked against.
    fn open_limits(&self) -> rules::OpenLimits<'_> {
        rules::OpenLimits {
            max_channels: self.config.max_channels_per_connection,
            max_pending: self.config.max_pending_channels,
            max_nesting_depth: self.config.max_nesting_depth,
            accept_channels: self.config.accept_channels,
            headers: &self.config.limits,
        }
    }

    fn meta(
        &self,
        service: ServiceName,
        headers: Headers,
        parent: Option<Arc<ChannelMeta>>,
    ) -> ChannelMeta {
        let remote = self.remote.get();
        let names = match remote {
            // Known for good once the remote is registered: share them.
            Some(r) => self
                .meta_names
                .get_or_init(|| {
                    (
                        self.core.name.clone(),
                        r.name.clone(),
                        self.endpoint.as_str().into(),
                    )
                })
                .clone(),
            None => (
                self.core.name.clone(),
                self.remote_name().into(),
                self.endpoint.as_str().into(),
            ),
        };
        ChannelMeta::new(
            service,
            headers,
            names,
            remote
                .map(|r| r.fingerprint.clone())
                .or_else(|| self.remote_key.get().cloned()),
            parent,
        )
    }

    /// The listener's side of the hello: check the dialler's name and
    /// versions, answer with our name and the connection's version, and
    /// register the peer. A hello is taken only as the connection's first
    /// open and within the handshake time limit; otherwise the connection
    /// stays plain.
    async fn on_hello(self: &Arc<Self>, open: IncomingOpen) {
        // Whatever the answer, this was the connection's first open: a
        // refused hello leaves it plain for good.
        let at = rules::HelloConditions {
            opened_before: self.opened_any.swap(true, Ordering::AcqRel),
            elapsed: self.started.elapsed(),
            limit: self.config.handshake_timeout,
            user: self.remote_user.get().map(|u| &**u),
        };
        let version = match rules::hello_verdict(&open.originator, &at, &self.config.limits) {
            Ok(v) => v,
            Err(why) => return open.reply.reject(OPEN_PROHIBITED, &why).await,
        };
        let (Some(user), Some(fp)) = (self.remote_user.get(), self.remote_key.get()) else {
            return open
                .reply
                .reject(OPEN_PROHIBITED, "not authenticated")
                .await;
        };
        let remote = Remote {
            name: user.clone(),
            fingerprint: fp.clone(),
        };
        // Created before the version is set: the hello channel itself ends
        // the same way in every version (HELLO, then SSH EOF and close).
        let id = open.write.id();
        let chan = ChanShared::new(self.clone(), id, Kind::Duplex, 0, false);
        let _ = chan.writer.set(open.write);
        self.version.store(version.0, Ordering::Release);
        let _ = self.remote.set(remote);
        self.duplex.store(true, Ordering::Release);
        self.channels().insert(id, chan.clone());
        open.reply.accept().await;
        let ours = hello::listener_hello(&self.core.name, version);
        let encoded = ours.encode(&self.config.limits).unwrap_or_default();
        // Send the answer before the application can learn of the peer (and
        // open channels to it): our opens share the session queue with this
        // data, so they cannot overtake it. Not awaited here, in the session
        // loop, since that queue is drained by this very loop.
        let conn = self.clone();
        self.core.tracker.spawn(async move {
            if let Some(w) = chan.writer.get() {
                let hello = Out::Ext(EXT_CONTROL, Control::Hello { headers: encoded }.encode());
                if w.send(hello).await.is_ok() {
                    conn.core.register(conn.clone());
                }
            }
            chan.send_close();
        });
    }

    // ---- opening ----

    /// Opens a channel (nested in `parent` if given), in the caller's task.
    /// Dropping the returned future never strands a half-open channel: the
    /// SSH open is seen through by `PendingOpen`, and every later step holds
    /// a `Channel`, whose drop closes it.
    pub(crate) async fn open(
        self: &Arc<Self>,
        service: ServiceName,
        headers: Headers,
        parent: Option<Arc<ChanShared>>,
    ) -> Result<Channel, OpenError> {
        // Our initial receive window leads the block, so the remote may
        // answer with data at once (no `WINDOW` record to wait for).
        let encoded = with_window(
            self.config.channel_window,
            &headers.encode(&self.config.limits)?,
        );
        if self.core.draining.is_cancelled() {
            return Err(OpenError::Shutdown);
        }
        let wire = match &parent {
            None => ParentRef::encode(None),
            Some(p) => ParentRef::encode(Some(self.parent_ref(p, &service)?)),
        };
        let Some(wire) = wire else {
            return Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(parent.as_deref()),
                reason: "its channel number cannot be named in an open".into(),
            });
        };
        self.open_inner(service, headers, encoded, wire, parent)
            .await
    }

    /// How the remote names `parent`, after checking a child may be opened
    /// in it.
    fn parent_ref(
        &self,
        parent: &ChanShared,
        service: &ServiceName,
    ) -> Result<ParentRef, OpenError> {
        let parent_service = || parent_service(Some(parent));
        if parent.kind != Kind::Duplex {
            return Err(OpenError::NotNestable {
                service: service.to_string(),
                parent: parent_service(),
            });
        }
        let depth = parent.meta.get().map_or(0, |m| m.depth()) + 1;
        let limit = self.config.max_nesting_depth;
        if depth > limit {
            return Err(OpenError::DepthLimit {
                service: service.to_string(),
                depth,
                limit,
            });
        }
        if let Some(reason) = parent.closed_reason() {
            return Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(),
                reason,
            });
        }
        if !parent.outgoing {
            return Ok(ParentRef::Mine(parent.id));
        }
        match parent.remote_id.get() {
            Some(&n) => Ok(ParentRef::Yours(n)),
            None => Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(),
                reason: "the parent is not open yet".into(),
            }),
        }
    }

    async fn open_inner(
        self: &Arc<Self>,
        service: ServiceName,
        headers: Headers,
        encoded: String,
        wire: (u32, u32),
        parent: Option<Arc<ChanShared>>,
    ) -> Result<Channel, OpenError> {
        // The remote's name is only formatted for an error.
        let lost = |reason: String| OpenError::ConnectionLost {
            peer: self.remote_name(),
            service: service.to_string(),
            reason: reason.into(),
        };
        if self.ended.is_cancelled() || self.cancel.is_cancelled() {
            return Err(lost(self.end_reason()));
        }
        if self.handle.get().is_none() {
            return Err(lost("the session is not running".into()));
        }
        let reservation = self
            .reserve(u64::from(self.config.channel_window))
            .map_err(|why| OpenError::LocalLimit {
                service: service.to_string(),
                why,
            })?;
        let deadline = tokio::time::Instant::now() + self.config.open_timeout;
        let write = tokio::select! {
            r = PendingOpen::new(self.clone(), service.clone(), encoded, wire) => r,
            _ = self.ended.cancelled() => Err(OpenFailed::Gone),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(OpenError::Timeout {
                    peer: self.remote_name(),
                    service: service.to_string(),
                    after: self.config.open_timeout,
                });
            }
        };
        let write = match write {
            Ok(w) => w,
            Err(OpenFailed::Refused(code, said)) => {
                let meaning = match code {
                    OPEN_RESOURCE_SHORTAGE => "resource shortage",
                    OPEN_PROHIBITED => "prohibited",
                    _ => "refused",
                };
                let why = match said {
                    Some(text) => format!("{meaning}: {text}"),
                    None => match code {
                        OPEN_RESOURCE_SHORTAGE => {
                            "resource shortage (a channel or accept-queue limit was reached; the remote did not say which)".to_owned()
                        }
                        OPEN_PROHIBITED => "prohibited (a reserved or invalid service, or malformed headers; the remote did not say which)".to_owned(),
                        _ => meaning.to_owned(),
                    },
                };
                return Err(OpenError::Refused {
                    peer: self.remote_name(),
                    service: service.to_string(),
                    code,
                    why,
                });
            }
            Err(OpenFailed::Gone) => return Err(lost(self.end_reason())),
        };
        let id = write.id();
        let chan = self.claim(id);
        chan.hold(reservation);
        let _ = chan.writer.set(write);
        chan.kick();
        let parent_meta = parent.as_ref().and_then(|p| p.meta.get().cloned());
        let _ = chan
            .meta
            .set(Arc::new(self.meta(service.clone(), headers, parent_meta)));
        let channel = Channel::new(chan.clone());
        if let Some(p) = &parent
            && let Err(reason) = p.adopt(&chan)
        {
            return Err(OpenError::ParentClosed {
                service: service.to_string(),
                parent: parent_service(Some(&**p)),
                reason,
            });
        }

        loop {
            let notified = chan.opened.notified();
            let (phase, failed, closed) = chan.open_phase();
            match phase {
                OpenPhase::Accepted | OpenPhase::Hello(_) => return Ok(channel),
                OpenPhase::Rejected(reason) => {
                    return Err(OpenError::Rejected {
                        peer: self.remote_name(),
                        service: service.to_string(),
                        reason,
                    });
                }
                OpenPhase::Waiting => {}
            }
            if let Some(e) = failed {
                if let ChannelError::ParentClosed(reason) = e {
                    return Err(OpenError::ParentClosed {
                        service: service.to_string(),
                        parent: parent_service(parent.as_deref()),
                        reason,
                    });
                }
                return Err(lost(e.to_string()));
            }
            if closed {
                return Err(lost(
                    "the remote closed the channel without answering".into(),
                ));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(OpenError::Timeout {
                    peer: self.remote_name(),
                    service: service.to_string(),
                    after: self.config.open_timeout,
                });
            }
        }
    }

    /// Dialler side of the hello: open `@hello`, return the listener's name
    /// (and remember the connection's version).
    pub(crate) async fn hello(self: &Arc<Self>) -> Result<String, String> {
        let encoded = hello::dialler_hello(&self.core.name)
            .encode(&self.config.limits)
            .map_err(|e| e.to_string())?;
        let Some(handle) = self.handle.get() else {
            return Err("the session is not running".into());
        };
        let write = match handle.open(HELLO_SERVICE, encoded, TOP_LEVEL).await {
            Ok(w) => w,
            Err(OpenFailed::Refused(..)) => {
                return Err("the remote refused the Duplex hello (it is not a Duplex peer, or speaks another protocol version)".into());
            }
            Err(OpenFailed::Gone) => return Err(self.end_reason()),
        };
        let id = write.id();
        let chan = self.claim(id);
        let _ = chan.writer.set(write);
        chan.kick();
        let guard = Channel::new(chan.clone());
        loop {
            let notified = chan.opened.notified();
            let (phase, failed, closed) = chan.open_phase();
            match phase {
                OpenPhase::Hello(h) => {
                    drop(guard);
                    // The version was taken in the session loop (see
                    // `on_listener_hello`); this only reads the name.
                    return hello::dialler_check(&h).map(|(name, _)| name);
                }
                OpenPhase::Rejected(r) => return Err(r),
                OpenPhase::Accepted => return Err("unexpected answer to hello".into()),
                OpenPhase::Waiting => {}
            }
            if let Some(e) = failed {
                return Err(e.to_string());
            }
            if closed {
                return Err("the remote closed the hello channel without answering".into());
            }
            notified.await;
        }
    }

    /// An incoming channel left the pending state (accepted or rejected).
    pub(crate) fn pending_done(&self, kind: Kind) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        if kind == Kind::Plain {
            self.pending_plain.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Removes a channel whose close we sent (unless the number is in use by
    /// another channel already).
    pub(crate) fn forget(&self, chan: &Arc<ChanShared>) {
        let mut chans = self.channels();
        if chans.get(&chan.id).is_some_and(|c| Arc::ptr_eq(c, chan)) {
            chans.remove(&chan.id);
            drop(chans);
            self.core.channels_changed.notify_waiters();
        }
    }

    /// Registers an accepted plain channel so its data can be delivered.
    pub(crate) fn insert(&self, chan: Arc<ChanShared>) {
        self.channels().insert(chan.id, chan);
    }

    // ---- the outbox ----

    /// Hands a channel's send turn that must wait to the outbox task.
    pub(crate) fn resume(&self, turn: Turn) {
        if self.ended.is_cancelled() {
            return; // nothing will be sent any more
        }
        lock(&self.ready).push(turn);
        self.ready_notify.notify_one();
        if self.ended.is_cancelled() {
            // The outbox may have gone meanwhile; a turn holds its channel,
            // which holds this connection.
            self.drop_turns();
        }
    }

    fn drop_turns(&self) {
        let turns = std::mem::take(&mut *lock(&self.ready));
        drop(turns); // outside the lock: dropping a channel may take it
    }

    /// Carries on the send turns that had to wait, channels independently:
    /// a channel waiting for SSH window never holds up another. Ends when
    /// the session ends.
    pub(crate) async fn run_outbox(self: Arc<Self>) {
        let mut running = FuturesUnordered::new();
        loop {
            let ready = std::mem::take(&mut *lock(&self.ready));
            running.extend(ready);
            tokio::select! {
                // Not on `cancel`: a closing connection first sends what its
                // channels queued (see `flush_all`).
                _ = self.ended.cancelled() => break,
                _ = self.ready_notify.notified() => {}
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
        drop(running);
        self.drop_turns();
    }

    /// Waits (up to `grace`) until every channel's queued bytes were handed
    /// to the session, so closing does not cut off data already written.
    pub(crate) async fn flush_all(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            let chans: Vec<_> = self.channels().values().cloned().collect();
            if chans.iter().all(|c| c.is_flushed()) || self.ended.is_cancelled() {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }

    /// The session ended: fail every channel and leave the peer's tables.
    pub(crate) fn on_session_end(self: &Arc<Self>) {
        let reason = self.lost_reason();
        tracing::debug!(%reason, "connection ended");
        let reason: Arc<str> = reason.into();
        lock(&self.unclaimed).clear();
        self.drop_turns();
        let chans: Vec<_> = self.channels().drain().map(|(_, c)| c).collect();
        for c in chans {
            c.fail(ChannelError::ConnectionLost(reason.clone()));
        }
        self.cancel.cancel();
        self.transport_stop.cancel();
        self.core.unregister(self, self.end_reason().into());
        self.core.channels_changed.notify_waiters();
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
        self.channels().values().map(|c| c.buffered()).sum()
    }
}

/// The session's events, from russh's session task (either role).
impl SessionEvents for ConnShared {
    fn on_host_key(&self, fp: Fingerprint) {
        let _ = self.remote_key.set(fp);
    }

    fn authorizes(&self, key: &PublicKey) -> bool {
        self.core.authorized().authorizes(key)
    }

    fn check_name(&self, fp: &Fingerprint, claimed: &str) -> Result<(), crate::NameBindingError> {
        self.core.authorized().check_name(fp, claimed)
    }

    fn on_key_refused(&self, user: &str, fp: &Fingerprint, why: &str) {
        if let Some(n) = self.core.refusals.keys.allow() {
            tracing::info!(
                endpoint = %self.endpoint,
                user,
                fingerprint = %fp,
                "refused a key at authentication: {why}{}",
                crate::lograte::left_out(n)
            );
        }
    }

    fn on_authenticated(&self, user: &str, fp: Fingerprint) {
        let _ = self.remote_user.set(user.into());
        let _ = self.remote_key.set(fp);
        self.authenticated.notify_one();
    }

    fn on_open(this: &Arc<Self>, open: IncomingOpen) -> impl Future<Output = ()> + Send {
        this.open_from_remote(open)
    }

    /// An open we sent was confirmed: create the channel now, so events that
    /// follow the confirmation have somewhere to go before the opening task
    /// claims it.
    fn on_confirm(this: &Arc<Self>, id: u32) {
        this.meet(id);
    }

    fn on_data(&self, id: u32, data: &[u8]) {
        let Some(chan) = self.get(id) else { return };
        match chan.on_data(data) {
            Delivery::Ok => {}
            Delivery::Violation => chan.send_close_after_failure(),
        }
    }

    fn on_ext(&self, id: u32, code: u32, data: &[u8]) {
        if let Some(chan) = self.get(id)
            && let Delivery::Violation = chan.on_ext(code, data)
        {
            chan.send_close_after_failure();
        }
    }

    fn on_eof(&self, id: u32) {
        if let Some(chan) = self.get(id) {
            chan.on_eof();
        }
    }

    fn on_close(&self, id: u32) {
        let chan = self.channels().remove(&id);
        tracing::trace!(channel = id, known = chan.is_some(), "remote closed");
        if let Some(chan) = chan {
            chan.on_close();
            self.core.channels_changed.notify_waiters();
        }
    }

    fn on_disconnect(&self, why: String) {
        self.set_end_reason(why);
    }

    fn on_ended(&self) {
        self.ended.cancel();
    }
}

/// One send turn of a channel: sends what it queued until the queue is
/// empty (see `ChanShared::start_turn`).
pub(crate) async fn drain(chan: Arc<ChanShared>) {
    let Some(writer) = chan.writer.get() else {
        chan.unschedule(); // the opener reschedules once it sets the writer
        return;
    };
    let _idle = IdleOnDrop(&chan.conn);
    while let Some(item) = chan.next_out() {
        let closing = matches!(item, Out::Close);
        let sent = match item {
            // Channel data goes a packet at a time, each admitted by the
            // connection's backlog, so the session never has to stop
            // reading for it (see `transport`). Control records and closes
            // go at once.
            Out::Data(b) => send_admitted(&chan, writer, None, b).await,
            Out::Ext(EXT_ERROR, b) => send_admitted(&chan, writer, Some(EXT_ERROR), b).await,
            other => writer.send(other).await,
        };
        if closing && sent.is_ok() {
            // russh forgets a channel once it has sent our close, and never
            // reports the remote's answering close: forget it too.
            chan.conn.forget(&chan);
        }
        if let Err(e) = sent {
            // The session is gone, and its end is being recorded: channels
            // fail with the remote, the endpoint and the cause (what
            // `on_session_end` gives them) whichever path sees it first.
            let conn = &chan.conn;
            if tokio::time::timeout(CLOSE_GRACE, conn.finished.cancelled())
                .await
                .is_err()
            {
                let _ = conn
                    .end_reason
                    .set(format!("the session stopped taking data ({})", e.0));
            }
            chan.fail(ChannelError::ConnectionLost(conn.lost_reason().into()));
            while chan.next_out().is_some() {} // discards; clears `scheduled`
            return;
        }
    }
}

/// Sends `data` in packets the connection's backlog admits one by one.
async fn send_admitted(
    chan: &ChanShared,
    writer: &WriteHalf,
    ext: Option<u32>,
    mut data: bytes::Bytes,
) -> Result<(), SendFailed> {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(ADMIT_PACKET));
        chan.conn.backlog.admit(piece.len()).await;
        let item = match ext {
            None => Out::Data(piece),
            Some(code) => Out::Ext(code, piece),
        };
        writer.send(item).await?;
    }
    Ok(())
}

/// The size of the pieces channel data is admitted in: russh's packet.
const ADMIT_PACKET: usize = 32 << 10;

/// The SSH open of a channel we open. If it is dropped before the remote
/// answered (the caller gave up, or the open timed out), a task sees the
/// open through and closes the channel, so none is left half-open at the
/// remote. Every step after it holds a `Channel`, whose drop closes it:
/// so `open` needs no task of its own.
struct PendingOpen {
    conn: Arc<ConnShared>,
    fut: Option<SshOpen>,
}

type SshOpen = Pin<Box<dyn Future<Output = Result<WriteHalf, OpenFailed>> + Send>>;

impl PendingOpen {
    fn new(conn: Arc<ConnShared>, service: ServiceName, encoded: String, wire: (u32, u32)) -> Self {
        let c = conn.clone();
        let fut = Box::pin(async move {
            match c.handle.get() {
                Some(h) => h.open(service.as_str(), encoded, wire).await,
                None => Err(OpenFailed::Gone),
            }
        });
        PendingOpen {
            conn,
            fut: Some(fut),
        }
    }
}

impl Future for PendingOpen {
    type Output = Result<WriteHalf, OpenFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(OpenFailed::Gone));
        };
        let res = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(res)
    }
}

impl Drop for PendingOpen {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        // Outside a runtime (it is shutting down) there is no session to
        // answer either.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = self.conn.clone();
        self.conn.core.tracker.spawn_on(
            async move {
                if let Ok(write) = fut.await {
                    let chan = conn.claim(write.id());
                    let _ = chan.writer.set(write);
                    chan.kick();
                    drop(Channel::new(chan)); // closes it
                }
            },
            &rt,
        );
    }
}

/// Tells `flush_all` that a channel finished a turn.
struct IdleOnDrop<'a>(&'a ConnShared);

impl Drop for IdleOnDrop<'_> {
    fn drop(&mut self) {
        self.0.idle.notify_waiters();
    }
}

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
