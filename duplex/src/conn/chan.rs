//! The driver of one channel: the protocol state of `proto::chan` under a
//! lock, the wakers of the application's handles, the nested channels, and
//! the send turns that carry the channel's queue to the SSH session.
//!
//! Every call locks, runs one step of the state machine, takes the wakers
//! its effects name, unlocks, and only then wakes them and starts a send
//! turn if one is needed. Nothing runs from a guard's `Drop`; no lock is
//! held across an `.await`.

mod answer;
mod nest;

use nest::{Ending, take_incoming};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use super::ConnShared;
use crate::error::ChannelError;
use crate::proto::Limits;
use crate::proto::budget::Reservation;
use crate::proto::chan::{
    self, Chan, Delivery, Effects, Kind, OpenPhase, Out, Told, Wake, WriteRefused,
};
use crate::proto::control::Control;
use crate::proto::headers::Headers;
use crate::ssh::{OpenReply, WriteHalf};

use crate::error::ChannelEnd;

use super::meta::ChannelMeta;

/// The locked part of a channel.
struct Inner {
    chan: Chan<ChannelError>,
    wakers: Wakers,
    /// Nested channels the remote opened, waiting for `Children::accept`.
    /// (The channels nested in this one are in the connection's
    /// `proto::mux` tree.)
    incoming: VecDeque<Arc<ChanShared>>,
}

/// The wakers of the application's reads, writes and flushes.
#[derive(Default)]
struct Wakers {
    read: Option<Waker>,
    err: Option<Waker>,
    trailers: Option<Waker>,
    write: Option<Waker>,
    flush: Option<Waker>,
}

impl Wakers {
    /// Takes the wakers `wake` names, to wake once the lock is released.
    fn take(&mut self, wake: Wake) -> Woken {
        let mut out = Woken::default();
        if wake.is_empty() {
            return out;
        }
        let slots = [
            (Wake::READ, &mut self.read),
            (Wake::ERR, &mut self.err),
            (Wake::TRAILERS, &mut self.trailers),
            (Wake::WRITE, &mut self.write),
            (Wake::FLUSH, &mut self.flush),
        ];
        for ((bit, slot), taken) in slots.into_iter().zip(out.0.iter_mut()) {
            if wake.contains(bit) {
                *taken = slot.take();
            }
        }
        out
    }
}

/// Wakers taken under the lock, woken after it.
#[derive(Default)]
struct Woken([Option<Waker>; 5]);

impl Woken {
    fn wake(self) {
        for w in self.0.into_iter().flatten() {
            w.wake();
        }
    }
}

/// Parks `cx`'s waker in `slot` (keeping the one there if it would wake
/// the same task).
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

pub(crate) struct ChanShared {
    /// This channel, for the send turns it starts.
    me: Weak<ChanShared>,
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) id: u32,
    pub(crate) kind: Kind,
    /// We opened it (rather than the remote).
    pub(crate) outgoing: bool,
    /// The remote's number for the channel, from its `ACCEPT` (channels we
    /// opened only): how the remote names it as a parent.
    pub(crate) remote_id: OnceLock<u32>,
    pub(crate) meta: OnceLock<Arc<ChannelMeta>>,
    /// The application's handles that keep the channel open (the halves
    /// of its `Channel` and their `ErrorWriter`s): the last one closes it.
    pub(crate) handles: AtomicUsize,
    /// The handles that keep its sending side open (its `ChannelWriter`
    /// and `ErrorWriter`s): the last one sends EOF.
    pub(crate) writers: AtomicUsize,
    pub(crate) writer: OnceLock<WriteHalf>,
    /// Its share of the connection's receive-buffer budget.
    reservation: Mutex<Option<Reservation>>,
    st: Mutex<Inner>,
    /// Signals the opener (open handshake); a single waiter.
    pub(crate) opened: Notify,
    /// Signals `accept_child` waiters: a nested channel arrived, or this
    /// channel closed.
    children_ready: Notify,
    /// An incoming channel got its answer (accepted, rejected, dropped, or
    /// timed out): whoever sets it first answers.
    answered: AtomicBool,
    /// A plain SSH client's open, answered when the application decides.
    plain_reply: Mutex<Option<OpenReply>>,
}

/// What the channel's state machine asks of the connection.
struct ConnEnv<'a>(&'a ChanShared);

impl chan::Env for ConnEnv<'_> {
    fn limits(&self) -> &Limits {
        &self.0.conn.config.limits
    }

    fn awaiting_hello(&self) -> bool {
        self.0.conn.awaiting_hello()
    }

    fn on_hello(&self, hello: &Headers) -> Result<(), String> {
        self.0.conn.on_listener_hello(hello)
    }

    fn reserve(&self, extra: u64) -> Option<Reservation> {
        self.0.conn.reserve_growth(extra)
    }

    fn can_grant_ssh(&self) -> bool {
        self.0.writer.get().is_some() && self.0.conn.handle.get().is_some()
    }

    fn grant_ssh(&self, n: u32) {
        if let (Some(w), Some(session)) = (self.0.writer.get(), self.0.conn.handle.get()) {
            session.grant(w, n);
        }
    }
}

impl From<WriteRefused<ChannelError>> for ChannelError {
    fn from(r: WriteRefused<ChannelError>) -> Self {
        match r {
            WriteRefused::Failed(e) => e,
            WriteRefused::WriteClosed => ChannelError::WriteClosed,
            WriteRefused::ClosedByRemote => ChannelError::ClosedByRemote,
            WriteRefused::TrailersUnsupported => ChannelError::TrailersUnsupported,
        }
    }
}

impl ChanShared {
    pub(crate) fn new(
        conn: Arc<ConnShared>,
        id: u32,
        kind: Kind,
        recv_credit: u64,
        outgoing: bool,
    ) -> Arc<Self> {
        let spec = chan::Spec {
            kind,
            v2: conn.version().eof_record(),
            abort_record: conn.version().abort_record(),
            outgoing,
            window: conn.config.channel_window,
            max_window: conn.config.get_max_channel_window(),
            plain_buffer: conn.config.plain_channel_buffer,
            max_frame: conn.config.max_frame_len,
        };
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            conn,
            id,
            kind,
            outgoing,
            remote_id: OnceLock::new(),
            meta: OnceLock::new(),
            handles: AtomicUsize::new(0),
            writers: AtomicUsize::new(0),
            writer: OnceLock::new(),
            reservation: Mutex::new(None),
            st: Mutex::new(Inner {
                chan: Chan::new(&spec, recv_credit),
                wakers: Wakers::default(),
                incoming: VecDeque::new(),
            }),
            opened: Notify::new(),
            children_ready: Notify::new(),
            answered: AtomicBool::new(false),
            plain_reply: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic while holding it; the state is plain
        // data that stays consistent between statements, so keep going.
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one step of the state machine under the lock, then (unlocked)
    /// wakes whom its effects name and starts the send turn it asked for.
    fn with<R>(&self, f: impl FnOnce(&mut Inner, &ConnEnv<'_>) -> R) -> R {
        let env = ConnEnv(self);
        let mut st = self.lock();
        let r = f(&mut st, &env);
        let fx = st.chan.take_effects();
        let woken = st.wakers.take(fx.wake);
        drop(st);
        self.act(fx, woken);
        r
    }

    /// What a step asked for, done with no lock held.
    fn act(&self, fx: Effects, woken: Woken) {
        woken.wake();
        if let Some(window) = fx.grown {
            tracing::trace!(channel = self.id, window, "receive window grown");
        }
        if fx.wake.contains(Wake::OPENED) {
            self.opened.notify_one();
        }
        if fx.wake.contains(Wake::ENDED) {
            self.children_ready.notify_waiters();
        }
        if fx.send {
            self.start_turn();
        }
    }

    /// Service, headers and peers (see [`ChannelMeta::unknown`] for a
    /// channel whose meta is not set yet).
    pub(crate) fn meta_or_unknown(&self) -> &ChannelMeta {
        match self.meta.get() {
            Some(m) => m,
            None => ChannelMeta::unknown(),
        }
    }

    /// Keeps `r` until the channel is dropped.
    pub(crate) fn hold(&self, r: Reservation) {
        *self.reservation.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    // ---- events from the SSH session ----

    /// Channel data arrived.
    pub(crate) fn on_data(&self, data: &[u8]) -> Delivery {
        match self.with(|st, env| st.chan.on_data(data, env)) {
            Ok(()) => Delivery::Ok,
            Err(why) => {
                self.fail_protocol(&why);
                Delivery::Violation
            }
        }
    }

    /// Extended data arrived: error frames or control records.
    pub(crate) fn on_ext(&self, code: u32, data: &[u8]) -> Delivery {
        let told = self.with(|st, env| {
            let told = st.chan.on_ext(code, data, env);
            if let Ok(Told {
                accepted: Some(id), ..
            }) = &told
            {
                // Before the opener is woken: it may nest a channel in
                // this one at once, naming it by the remote's number.
                let _ = self.remote_id.set(*id);
            }
            told
        });
        let told = match told {
            Ok(told) => told,
            Err(why) => {
                self.fail_protocol(&why);
                return Delivery::Violation;
            }
        };
        if let Some(n) = told.accepted {
            // The remote may name it as a parent by this number from now
            // on (still in the session loop: before its next open).
            self.conn.note_remote_id(self.id, n);
        }
        if let Some(reason) = told.reported {
            tracing::warn!(
                channel = self.id,
                "the remote closed the channel, reporting a protocol violation by this side: {reason}"
            );
            self.fail(ChannelError::ViolationReported(reason.into()));
            return Delivery::Ok; // its close follows
        }
        if let Some(reason) = told.aborted {
            tracing::debug!(channel = self.id, %reason, "the remote aborted the channel");
            let text = format!("{} aborted the channel: {reason}", self.conn.remote_name());
            self.fail(ChannelError::Aborted(text.into()));
            return Delivery::Ok; // its close follows
        }
        if let Some(reason) = told.parent_closed {
            if self.meta.get().is_none_or(|m| m.parent().is_none()) {
                self.fail_protocol("sent PARENT_CLOSED on a channel that has no parent");
                return Delivery::Violation;
            }
            // Its close follows; the remote ends the descendants likewise.
            self.end_by_parent(&Ending {
                local: ChannelError::ParentClosed(reason.into()),
                remote: None,
                close: false,
            });
        }
        Delivery::Ok
    }

    /// SSH EOF arrived.
    pub(crate) fn on_eof(&self) {
        self.with(|st, _| st.chan.on_eof());
    }

    /// The remote closed the channel (russh has already answered with its
    /// own close), or we learned it will never open. `children`: the ones
    /// it had when it was taken out of the table.
    pub(crate) fn on_close(&self, children: Vec<Arc<ChanShared>>) {
        let nested = self.with(|st, _| {
            if st.chan.on_close() {
                // Closed unfinished, with no reason (version 1 or 2, or
                // an implementation that sends no `ABORT`).
                st.chan.set_failed(ChannelError::Aborted(
                    format!(
                        "{} closed the channel without finishing it (no EOF)",
                        self.conn.remote_name()
                    )
                    .into(),
                ));
            }
            take_incoming(st)
        });
        let nested = (children, nested);
        // The remote ends its side of the children itself.
        self.end_children(nested, || Ending {
            local: ChannelError::ParentClosed(
                format!("{:?} was closed by {}", self.service(), self.remote_peer()).into(),
            ),
            remote: None,
            close: true,
        });
    }

    /// The connection died, or the remote broke the protocol. Descendants
    /// end too.
    pub(crate) fn fail(&self, err: ChannelError) {
        let children = self.end_in_tree();
        let nested = self.with(|st, _| {
            st.chan.fail(err.clone());
            take_incoming(st)
        });
        let nested = (children, nested);
        self.end_children(nested, || match err {
            // Nothing can be sent any more: every channel fails alike.
            ChannelError::ConnectionLost(_) => Ending {
                local: err,
                remote: None,
                close: false,
            },
            other => Ending {
                local: ChannelError::ParentClosed(
                    format!("{:?} failed: {other}", self.service()).into(),
                ),
                remote: Some(
                    format!(
                        "{:?} failed on {}: {other}",
                        self.service(),
                        self.local_peer()
                    )
                    .into(),
                ),
                close: true,
            },
        });
    }

    fn fail_protocol(&self, why: &str) {
        tracing::warn!(channel = self.id, "closing channel: remote {why}");
        // For the `PROTOCOL_ERROR` record: what the remote did, as this
        // side saw it.
        let seen = format!("{why} (seen by {})", self.local_peer());
        self.with(|st, _| st.chan.note_violation(seen));
        self.fail(ChannelError::Protocol(why.into()));
    }

    fn service(&self) -> &str {
        self.meta.get().map(|m| m.service()).unwrap_or("?")
    }

    fn remote_peer(&self) -> &str {
        self.meta
            .get()
            .map(|m| m.remote_peer())
            .unwrap_or("the remote")
    }

    fn local_peer(&self) -> &str {
        self.meta
            .get()
            .map(|m| m.local_peer())
            .unwrap_or("the peer")
    }

    /// The application dropped its reader: discard what is buffered and
    /// anything that arrives later.
    pub(crate) fn reader_dropped(&self) {
        self.with(|st, env| st.chan.reader_dropped(env));
    }

    /// Buffered, unread bytes (data and error frames): for tests and stats.
    pub(crate) fn buffered(&self) -> usize {
        self.lock().chan.buffered()
    }

    // ---- nesting ----

    /// Why no more channels can be nested in this one, if so.
    pub(crate) fn closed_reason(&self) -> Option<Arc<str>> {
        closed_reason(&self.lock().chan)
    }

    /// Whether the application holds this channel (accepted on both sides).
    pub(crate) fn is_established(&self) -> bool {
        self.lock().chan.is_established()
    }

    /// Resolves once the channel has ended in any way (closed either
    /// side, failed, ended with its parent); returns how. Cancel-safe.
    pub(crate) async fn closed(&self) -> ChannelEnd {
        loop {
            // `children_ready` fires (to all waiters) whenever the channel
            // ends, besides when a nested channel arrives.
            let notified = self.children_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(end) = ended(&self.lock().chan) {
                return end;
            }
            notified.await;
        }
    }

    // ---- the opener's view ----

    pub(crate) fn open_phase(&self) -> (OpenPhase, Option<ChannelError>, bool) {
        self.lock().chan.open_phase()
    }

    // ---- reading ----

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<Result<(), ChannelError>> {
        self.with(|st, env| {
            let max = buf.remaining();
            let r = st.chan.poll_read(max, |b| buf.put_slice(b), env);
            if r.is_pending() {
                park(&mut st.wakers.read, cx);
            }
            r
        })
    }

    /// Takes up to `max` buffered bytes as one chunk, without copying.
    pub(crate) fn poll_read_chunk(
        &self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ChannelError>> {
        self.with(|st, env| {
            let r = st.chan.poll_read_chunk(max, env);
            if r.is_pending() {
                park(&mut st.wakers.read, cx);
            }
            r
        })
    }

    pub(crate) fn poll_read_error(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, ChannelError>> {
        self.with(|st, env| {
            let r = st.chan.poll_read_error(env);
            if r.is_pending() {
                park(&mut st.wakers.err, cx);
            }
            r
        })
    }

    /// Ready once the remote finished writing (EOF or close): its trailers,
    /// or empty headers if it sent none.
    pub(crate) fn poll_trailers(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Headers, ChannelError>> {
        let mut st = self.lock();
        let r = st.chan.poll_trailers();
        if r.is_pending() {
            park(&mut st.wakers.trailers, cx);
        }
        r
    }

    // ---- writing ----

    /// Queues up to `want` bytes on `ext` (None = data) as credit and
    /// buffer space allow; `take(n)` supplies the first `n` bytes.
    pub(crate) fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        ext: Option<u32>,
        want: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<Result<usize, ChannelError>> {
        self.with(|st, _| {
            let r = st.chan.poll_write(ext, want, take);
            if r.is_pending() {
                park(&mut st.wakers.write, cx);
            }
            r.map_err(ChannelError::from)
        })
    }

    /// Ready once everything queued has been handed to the SSH session.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        let mut st = self.lock();
        let r = st.chan.poll_flush();
        if r.is_pending() {
            park(&mut st.wakers.flush, cx);
        }
        r
    }

    /// Queues trailers and EOF: the end of our writing.
    pub(crate) fn send_trailers(&self, trailers: &Headers) -> Result<(), ChannelError> {
        let encoded = trailers
            .encode(&self.conn.config.limits)
            .map_err(ChannelError::Trailers)?;
        self.with(|st, _| st.chan.send_trailers(encoded))
            .map_err(ChannelError::from)
    }

    /// Ends a turn that could not run (no writer yet); a later `kick`
    /// starts a new one.
    pub(crate) fn unschedule(&self) {
        self.lock().chan.unschedule();
    }

    /// Starts a send turn if anything is waiting (after the writer was
    /// installed).
    pub(crate) fn kick(&self) {
        self.with(|st, _| st.chan.kick());
    }

    /// Nothing is queued or being sent.
    pub(crate) fn is_flushed(&self) -> bool {
        self.lock().chan.is_flushed()
    }

    /// Queues EOF (once).
    pub(crate) fn send_eof(&self) {
        self.with(|st, _| st.chan.send_eof());
    }

    /// Queues EOF (if not sent) and close (once). Nested channels end at
    /// once (see [`Children`](super::Children)).
    pub(crate) fn send_close(&self) {
        let children = self.end_in_tree();
        let incoming = self.with(|st, _| st.chan.send_close().then(|| take_incoming(st)));
        let nested = (children, incoming.unwrap_or_default());
        self.end_children(nested, || self.closed_here());
    }

    /// Abandons the channel unfinished, telling the remote `reason` (see
    /// `Chan::abort`); this side's handles fail with `local`. Nested
    /// channels end at once.
    pub(crate) fn abort(&self, reason: String, local: ChannelError) {
        let children = self.end_in_tree();
        let incoming = self.with(|st, _| st.chan.abort(reason, local).then(|| take_incoming(st)));
        let nested = (children, incoming.unwrap_or_default());
        self.end_children(nested, || self.closed_here());
    }

    /// The last handle of the channel is gone: a channel whose writing was
    /// finished (EOF sent) is closed; one dropped unfinished is aborted, so
    /// the remote's reader sees an error, not a clean end of stream.
    pub(crate) fn close_on_drop(&self) {
        let children = self.end_in_tree();
        let incoming = self.with(|st, _| {
            let closing = if st.chan.eof_sent() {
                st.chan.send_close()
            } else {
                let why = format!(
                    "{} dropped the channel before finishing it (no close_write, shutdown or trailers)",
                    self.local_peer()
                );
                let local = ChannelError::AbortedHere(why.clone().into());
                st.chan.abort(why, local)
            };
            closing.then(|| take_incoming(st))
        });
        let nested = (children, incoming.unwrap_or_default());
        self.end_children(nested, || self.closed_here());
    }

    /// After a protocol violation: close the channel even though it failed.
    pub(crate) fn send_close_after_failure(&self) {
        self.with(|st, _| st.chan.send_close_after_failure());
    }

    /// Queues a control record (not subject to credit).
    pub(crate) fn send_control(&self, rec: &Control) {
        self.with(|st, _| st.chan.send_control(rec));
    }

    /// The opener's initial window, from its open: credit to send with.
    pub(crate) fn credit(&self, window: u32) {
        self.lock().chan.credit(window);
    }

    /// Gives the remote its initial credit as part of accepting.
    pub(crate) fn accept_duplex(&self) {
        self.with(|st, _| st.chan.accept_duplex(self.id));
    }

    /// Runs a send turn in the caller's task as far as it goes without
    /// waiting: a small write reaches the session with no task switch.
    /// If it must wait (for SSH window, or room in the session's queue),
    /// the connection's outbox task carries it on; either way one turn
    /// per channel sends the queue in order.
    fn start_turn(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let Some(mut turn) = crate::conn::turn(me) else {
            return; // all of it went at once
        };
        let mut cx = Context::from_waker(Waker::noop());
        if turn.as_mut().poll(&mut cx).is_pending() {
            self.conn.resume(turn);
        }
    }

    /// The send turn takes the next thing to send; `None` ends its turn.
    pub(crate) fn next_out(&self) -> Option<Out> {
        self.with(|st, _| st.chan.next_out())
    }
}

/// A channel's send turn (see `ChanShared::start_turn`).
pub(crate) type Turn = Pin<Box<dyn Future<Output = ()> + Send>>;

fn closed_reason(st: &Chan<ChannelError>) -> Option<Arc<str>> {
    st.closed_reason().map(Arc::from)
}

/// How the channel has ended, if it has (for `closed`).
fn ended(st: &Chan<ChannelError>) -> Option<ChannelEnd> {
    if let Some(e) = st.failed() {
        return Some(ChannelEnd::Failed(e.clone()));
    }
    if st.closed_in() {
        return Some(ChannelEnd::ClosedByRemote);
    }
    if st.closed_out() {
        return Some(ChannelEnd::ClosedHere);
    }
    None
}
