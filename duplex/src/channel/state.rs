//! Per-channel state shared by the application's handles, the SSH session's
//! event handler and the connection's outbox task.
//!
//! Everything here is synchronous: events go in under a `std::sync::Mutex`
//! (never held across an `.await`), wakers come out. The flow-control rules
//! (who may send how much) live here and in `proto::control`.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::conn::ConnShared;
use crate::error::ChannelError;
use crate::proto::chan::{Delivery, Kind, OpenPhase, Out};
use crate::proto::control::{self, Control};
use crate::proto::flow::{self, RecvWindow, SendCredit};
use crate::proto::frame::Assembler;
use crate::proto::headers::Headers;
use crate::proto::open::OPEN_PROHIBITED;
use crate::proto::{EXT_CONTROL, EXT_ERROR};
use crate::ssh::{OpenReply, WriteHalf};

use super::ChannelEnd;
use super::{ChannelMeta, IncomingChannel};

pub(crate) struct ChanState {
    // Receiving.
    data: VecDeque<Bytes>,
    data_len: usize,
    /// Complete error frames, each with the credit still owed for it (the
    /// part not granted back while it was partial).
    errs: VecDeque<(Bytes, u64)>,
    err_asm: Assembler,
    ctrl: control::Parser,
    /// What the remote may send, what we owe it, and the window (see
    /// `proto::flow`).
    recv: RecvWindow,
    /// The connection budget reserved for the window's growth.
    grown: Option<crate::proto::budget::Reservation>,
    eof_in: bool,
    close_in: bool,
    failed: Option<ChannelError>,
    reader_gone: bool,
    read_waker: Option<Waker>,
    err_waker: Option<Waker>,
    trailers: Option<Headers>,
    trailers_waker: Option<Waker>,
    // Sending.
    send_credit: SendCredit,
    out: VecDeque<Out>,
    out_bytes: usize,
    inflight: bool,
    /// A send turn is running (inline or in the outbox): only one at a time.
    scheduled: bool,
    /// `schedule` asked for a turn; the lock's guard starts it once unlocked.
    start_turn: bool,
    /// We finished writing (half-close): SSH EOF on a version-1 channel,
    /// the `EOF` record on a version-2 one.
    eof_out: bool,
    /// Version 2: SSH EOF is queued, so nothing but the close may follow
    /// (RFC 4254 section 5.3). Version 1 sets it with `eof_out`.
    ssh_eof_out: bool,
    /// The reason of the protocol violation this side saw, for the
    /// `PROTOCOL_ERROR` record that precedes the close (version 2).
    violation: Option<String>,
    close_out: bool,
    write_waker: Option<Waker>,
    flush_waker: Option<Waker>,
    // Opening.
    open: OpenPhase,
    /// Accepted on both sides: the application holds a `Channel` for it.
    established: bool,
    // Nesting.
    /// Channels nested in this one (both directions), until their closes
    /// were sent.
    children: Vec<Weak<ChanShared>>,
    /// Nested channels the remote opened, waiting for `Children::accept`.
    incoming: VecDeque<IncomingChannel>,
}

pub(crate) struct ChanShared {
    /// This channel, for the send turns it starts.
    me: Weak<ChanShared>,
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) id: u32,
    pub(crate) kind: Kind,
    /// Protocol version 2 (see `proto::hello::Version::eof_record`): the
    /// half-close is an `EOF` record, and SSH EOF comes only when nothing
    /// but the close follows.
    v2: bool,
    /// We opened it (rather than the remote).
    pub(crate) outgoing: bool,
    /// The remote's number for the channel, from its `ACCEPT` (channels we
    /// opened only): how the remote names it as a parent.
    pub(crate) remote_id: OnceLock<u32>,
    pub(crate) meta: OnceLock<Arc<ChannelMeta>>,
    pub(crate) writer: OnceLock<WriteHalf>,
    /// Its share of the connection's receive-buffer budget.
    reservation: Mutex<Option<crate::proto::budget::Reservation>>,
    st: Mutex<ChanState>,
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

impl ChanShared {
    pub(crate) fn new(
        conn: Arc<ConnShared>,
        id: u32,
        kind: Kind,
        recv_credit: u64,
        outgoing: bool,
    ) -> Arc<Self> {
        let max_frame = conn.config.max_frame_len;
        let recv = match kind {
            Kind::Duplex => RecvWindow::new(
                recv_credit,
                u64::from(conn.config.channel_window),
                u64::from(conn.config.get_max_channel_window()),
            ),
            // A plain client's window is its SSH window, which never grows.
            Kind::Plain => {
                let w = conn.config.plain_channel_buffer as u64;
                RecvWindow::new(recv_credit, w, w)
            }
        };
        let v2 = kind == Kind::Duplex && conn.version().eof_record();
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            conn,
            id,
            kind,
            v2,
            outgoing,
            remote_id: OnceLock::new(),
            meta: OnceLock::new(),
            writer: OnceLock::new(),
            reservation: Mutex::new(None),
            st: Mutex::new(ChanState {
                data: VecDeque::new(),
                data_len: 0,
                errs: VecDeque::new(),
                err_asm: Assembler::new(max_frame),
                ctrl: control::Parser::new(),
                recv,
                grown: None,
                eof_in: false,
                close_in: false,
                failed: None,
                reader_gone: false,
                read_waker: None,
                err_waker: None,
                trailers: None,
                trailers_waker: None,
                send_credit: match kind {
                    Kind::Duplex => SendCredit::default(),
                    Kind::Plain => SendCredit::UNLIMITED,
                },
                out: VecDeque::new(),
                out_bytes: 0,
                inflight: false,
                scheduled: false,
                start_turn: false,
                eof_out: false,
                ssh_eof_out: false,
                violation: None,
                close_out: false,
                write_waker: None,
                flush_waker: None,
                open: OpenPhase::Waiting,
                established: false,
                children: Vec::new(),
                incoming: VecDeque::new(),
            }),
            opened: Notify::new(),
            children_ready: Notify::new(),
            answered: AtomicBool::new(false),
            plain_reply: Mutex::new(None),
        })
    }

    /// Keeps a plain SSH client's open until the application answers.
    pub(crate) fn set_plain_reply(&self, reply: OpenReply) {
        *self.plain_reply.lock().unwrap_or_else(|p| p.into_inner()) = Some(reply);
    }

    /// Takes the plain SSH client's open, to answer it.
    pub(crate) fn take_plain_reply(&self) -> Option<OpenReply> {
        self.plain_reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Claims the right to answer an incoming channel: true exactly once
    /// (accept, reject, drop and the accept timeout race for it).
    pub(crate) fn take_answer(&self) -> bool {
        let won = !self.answered.swap(true, Ordering::AcqRel);
        if won {
            self.conn.core.pending.answered();
        }
        won
    }

    /// Whether an incoming channel was answered already (the accept
    /// timeout rejected it while it sat in a queue).
    pub(crate) fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// The accept timeout passed with the channel still pending: reject
    /// it, saying which service, which peer and which setting.
    fn expire_now(&self, after: std::time::Duration) {
        if !self.take_answer() {
            return;
        }
        self.conn.pending_done(self.kind);
        // Its share of the connection's buffer goes back now, not when the
        // entry is finally dropped from a queue nobody reads.
        drop(
            self.reservation
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let me = self.local_peer();
        let reason = match self.meta.get().and_then(|m| m.parent()) {
            Some(parent) => format!(
                "{:?} was not accepted within {after:?}: the application on {me} did not take the nested channels of {:?} (Config::accept_timeout)",
                self.service(),
                parent.service()
            ),
            None => format!(
                "{:?} was not accepted within {after:?}: the application on {me} did not take it (Config::accept_timeout)",
                self.service()
            ),
        };
        tracing::info!(channel = self.id, "{reason}");
        {
            // Should the application take it after all (it lost the race),
            // its reads and writes fail with the reason rather than wait.
            let mut st = self.lock();
            if st.failed.is_none() {
                st.failed = Some(ChannelError::NotAccepted(reason.clone().into()));
            }
        }
        match self.take_plain_reply() {
            Some(reply) => {
                // The reply goes through the session's queue: not awaited in
                // the timer's task.
                self.conn.core.tracker.spawn(async move {
                    reply.reject(OPEN_PROHIBITED, &reason).await;
                });
            }
            None => {
                self.force_reject(reason);
            }
        }
    }

    /// Keeps `r` until the channel is dropped.
    pub(crate) fn hold(&self, r: crate::proto::budget::Reservation) {
        *self.reservation.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }

    fn lock(&self) -> Locked<'_> {
        // A poisoned lock means a panic while holding it; the state is plain
        // data that stays consistent between statements, so keep going.
        Locked {
            chan: self,
            st: Some(self.st.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// `Config::channel_window`: the window a channel starts with (it may
    /// grow; the current one is `ChanState::window`).
    fn initial_window(&self) -> u64 {
        u64::from(self.conn.config.channel_window)
    }

    // ---- events from the SSH session ----

    /// Channel data arrived.
    pub(crate) fn on_data(&self, data: &[u8]) -> Delivery {
        let mut st = self.lock();
        if st.close_in || st.failed.is_some() {
            return Delivery::Ok;
        }
        let n = data.len() as u64;
        if let Err(why) = self.admit(&mut st, n, &DATA) {
            drop(st);
            self.fail_protocol(why);
            return Delivery::Violation;
        }
        if st.reader_gone {
            // Nobody will read: discard, and give the credit straight back.
            st.recv.released(n);
            self.maybe_grant(&mut st);
            return Delivery::Ok;
        }
        if !data.is_empty() {
            st.data.push_back(Bytes::copy_from_slice(data));
            st.data_len += data.len();
        }
        wake(&mut st.read_waker);
        Delivery::Ok
    }

    /// A channel we opened that the remote has not answered yet: only
    /// ACCEPT, REJECT (HELLO on the hello channel), PARENT_CLOSED and
    /// PROTOCOL_ERROR may arrive on it.
    fn unanswered(&self, st: &ChanState) -> bool {
        self.outgoing && self.kind == Kind::Duplex && matches!(st.open, OpenPhase::Waiting)
    }

    /// The checks on `n` bytes of data or error stream that arrived: not
    /// after the remote's EOF (version 2), not before its ACCEPT, and
    /// within the credit we granted (which they use up).
    fn admit(&self, st: &mut ChanState, n: u64, texts: &Refusals) -> Result<(), &'static str> {
        if self.v2 && st.eof_in {
            return Err(texts.after_eof);
        }
        if self.unanswered(st) {
            return Err(texts.before_accept);
        }
        if !self.charge(st, n) {
            return Err(texts.over_credit);
        }
        Ok(())
    }

    /// Counts `n` received bytes against the credit we granted (for a plain
    /// client, the SSH window we offered); false when the remote overran
    /// it (a protocol violation).
    fn charge(&self, st: &mut ChanState, n: u64) -> bool {
        st.recv.charge(n).is_ok()
    }

    /// Extended data arrived.
    pub(crate) fn on_ext(&self, code: u32, data: &[u8]) -> Delivery {
        match code {
            // A plain client's stderr has no credit to bound it: dropped.
            EXT_ERROR if self.kind == Kind::Duplex => self.on_error_bytes(data),
            EXT_CONTROL if self.kind == Kind::Duplex => self.on_control(data),
            _ => Delivery::Ok, // unknown streams are ignored, as RFC 4254 allows
        }
    }

    fn on_error_bytes(&self, data: &[u8]) -> Delivery {
        let mut st = self.lock();
        if st.close_in || st.failed.is_some() {
            return Delivery::Ok;
        }
        let n = data.len() as u64;
        if let Err(why) = self.admit(&mut st, n, &ERROR_STREAM) {
            drop(st);
            self.fail_protocol(why);
            return Delivery::Violation;
        }
        let before = st.err_asm.partial_len() as u64;
        match st.err_asm.push(data) {
            Ok(frames) => {
                if st.reader_gone {
                    st.recv.released(n);
                } else if frames.is_empty() {
                    // Bytes of an unfinished frame are granted back at once:
                    // the assembler bounds them (max_frame_len), and a frame
                    // larger than the window could never finish otherwise.
                    st.recv.released(n);
                } else {
                    // The first finished frame contains the `before` bytes
                    // granted while it was partial; the new partial bytes
                    // are granted now; the rest when the frames are read.
                    let after = st.err_asm.partial_len() as u64;
                    let mut pregranted = before;
                    for f in frames {
                        let total = (f.len() + crate::proto::frame::HEADER_LEN) as u64;
                        let owed = flow::error_frame_owed(total, pregranted);
                        pregranted = 0;
                        st.errs.push_back((f, owed));
                    }
                    st.recv.released(after);
                    wake(&mut st.err_waker);
                }
                self.maybe_grant(&mut st);
                Delivery::Ok
            }
            Err(e) => {
                drop(st);
                self.fail_protocol(&format!("bad error frame: {e}"));
                Delivery::Violation
            }
        }
    }

    fn on_control(&self, data: &[u8]) -> Delivery {
        let mut st = self.lock();
        if st.close_in || st.failed.is_some() {
            return Delivery::Ok; // ended: nothing more is acted on
        }
        let records = match st.ctrl.push(data) {
            Ok(r) => r,
            Err(e) => {
                drop(st);
                self.fail_protocol(&e.to_string());
                return Delivery::Violation;
            }
        };
        let mut opened = false;
        let mut parent_closed = None;
        let mut eof = false;
        for rec in records {
            // Every record is checked against the channel's state: nothing
            // out of place is ignored (PROTOCOL.md section 5).
            let misplaced = match &rec {
                Control::Accept { .. } | Control::Reject { .. } if !self.outgoing => {
                    Some("sent ACCEPT or REJECT on a channel it opened itself")
                }
                Control::Accept { .. } | Control::Reject { .. }
                    if !matches!(st.open, OpenPhase::Waiting) =>
                {
                    Some("answered the open twice (a second ACCEPT or REJECT)")
                }
                Control::Eof | Control::ProtocolError { .. } if !self.v2 => Some(
                    "sent a version-2 record (EOF or PROTOCOL_ERROR) on a version-1 connection",
                ),
                Control::Eof if st.eof_in => Some("sent EOF twice"),
                Control::Window { .. } | Control::Trailers { .. } | Control::Eof
                    if self.unanswered(&st) =>
                {
                    Some("sent WINDOW, TRAILERS or EOF before answering the open with ACCEPT")
                }
                _ => None,
            };
            if let Some(why) = misplaced {
                drop(st);
                self.fail_protocol(why);
                return Delivery::Violation;
            }
            match rec {
                Control::Accept { window, id } => {
                    st.send_credit.add(window);
                    let _ = self.remote_id.set(id);
                    st.open = OpenPhase::Accepted;
                    st.established = true;
                    opened = true;
                }
                Control::Window { increment } => st.send_credit.add(increment),
                Control::Reject { reason } => {
                    st.open = OpenPhase::Rejected(reason);
                    opened = true;
                }
                Control::ParentClosed { reason } => parent_closed = Some(reason),
                Control::Eof => {
                    st.eof_in = true;
                    eof = true;
                }
                Control::ProtocolError { reason } => {
                    drop(st);
                    tracing::warn!(
                        channel = self.id,
                        "the remote closed the channel, reporting a protocol violation by this side: {reason}"
                    );
                    self.fail(ChannelError::ViolationReported(reason.into()));
                    return Delivery::Ok; // its close follows
                }
                Control::Trailers { headers } => {
                    match Headers::decode(&headers, &self.conn.config.limits) {
                        Ok(h) if st.trailers.is_none() && !st.eof_in => st.trailers = Some(h),
                        Ok(_) => {
                            drop(st);
                            self.fail_protocol("sent trailers twice or after EOF");
                            return Delivery::Violation;
                        }
                        Err(e) => {
                            drop(st);
                            self.fail_protocol(&format!("sent malformed trailers: {e}"));
                            return Delivery::Violation;
                        }
                    }
                }
                Control::Hello { headers } => {
                    if !(self.outgoing && self.conn.awaiting_hello()) {
                        drop(st);
                        self.fail_protocol("sent HELLO on a channel other than the @hello channel");
                        return Delivery::Violation;
                    }
                    st.open = match Headers::decode(&headers, &self.conn.config.limits) {
                        // Learn the version and the listener's name now, in
                        // the session loop, so channels it opens right after
                        // its hello already carry them.
                        Ok(h) => match self.conn.on_listener_hello(&h) {
                            Ok(()) => OpenPhase::Hello(h),
                            Err(why) => OpenPhase::Rejected(why),
                        },
                        Err(e) => OpenPhase::Rejected(format!("bad hello: {e}")),
                    };
                    opened = true;
                }
            }
        }
        if st.send_credit.get() > 0 {
            wake(&mut st.write_waker);
        }
        if eof {
            self.wake_readers(&mut st);
            self.eof_both_ways(&mut st);
        }
        drop(st);
        if opened {
            self.opened.notify_one();
        }
        if let Some(reason) = parent_closed {
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

    /// SSH EOF arrived. On a version-2 channel it also stands for the
    /// `EOF` record: the remote sends nothing more.
    pub(crate) fn on_eof(&self) {
        let mut st = self.lock();
        st.eof_in = true;
        self.wake_readers(&mut st);
        self.eof_both_ways(&mut st);
    }

    /// Version 2: once both sides finished writing, nothing but the close
    /// is left to send (no credit is granted to a remote that finished),
    /// so SSH EOF goes now.
    fn eof_both_ways(&self, st: &mut ChanState) {
        if self.v2 && st.eof_in && st.eof_out && !st.ssh_eof_out && !st.close_out && !st.close_in {
            st.ssh_eof_out = true;
            st.out.push_back(Out::Eof);
            self.schedule(st);
        }
    }

    /// Queues the end of our writing: SSH EOF (version 1), or the `EOF`
    /// record and, if the remote finished too, SSH EOF (version 2).
    fn push_eof(&self, st: &mut ChanState) {
        st.eof_out = true;
        if self.v2 {
            st.out
                .push_back(Out::Ext(EXT_CONTROL, Control::Eof.encode()));
            self.eof_both_ways(st);
        } else {
            st.ssh_eof_out = true;
            st.out.push_back(Out::Eof);
        }
        self.schedule(st);
    }

    /// Whether a control record may still be sent: not after our close,
    /// nor (version 2) after our SSH EOF.
    fn may_send_record(&self, st: &ChanState) -> bool {
        !(st.close_out || st.close_in || (self.v2 && st.ssh_eof_out))
    }

    /// The remote closed the channel (russh has already answered with its
    /// own close), or we learned it will never open.
    pub(crate) fn on_close(&self) {
        let mut st = self.lock();
        st.close_in = true;
        st.eof_in = true;
        st.close_out = true; // russh replied for us
        st.out.clear();
        st.out_bytes = 0;
        let nested = self.wake_everyone(st);
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
        let mut st = self.lock();
        if st.failed.is_none() {
            st.failed = Some(err.clone());
        }
        // Nothing more is sent but a close already asked for (the remote
        // must still learn the channel is gone).
        let closing = st.out.iter().any(|o| matches!(o, Out::Close));
        st.out.clear();
        if closing {
            st.out.push_back(Out::Close);
        }
        st.out_bytes = 0;
        let nested = self.wake_everyone(st);
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

    /// Ends this channel because an ancestor ended: fails it with
    /// `ending.local`, tells the remote why (a `PARENT_CLOSED` record) and
    /// closes it, then does the same to its own children.
    fn end_by_parent(&self, ending: &Ending) {
        let mut st = self.lock();
        if st.close_out || st.close_in {
            // Closed already (its own descendants ended then); what it
            // queued, its close included, still goes out.
            return;
        }
        if st.failed.is_none() {
            st.failed = Some(ending.local.clone());
        }
        st.out.clear();
        st.out_bytes = 0;
        if ending.close && !st.close_out && !st.close_in {
            if let Some(reason) = &ending.remote
                && self.may_send_record(&st)
            {
                let rec = Control::ParentClosed {
                    reason: reason.to_string(),
                };
                st.out.push_back(Out::Ext(EXT_CONTROL, rec.encode()));
            }
            st.out.push_back(Out::Close);
            st.eof_out = true;
            st.ssh_eof_out = true;
            st.close_out = true;
            self.schedule(&mut st);
        }
        let nested = self.wake_everyone(st);
        self.end_children(nested, || ending.clone());
    }

    /// After the channel ended (in any way): wakes every waiter, and takes
    /// the nested channels out for `end_children`.
    fn wake_everyone(&self, mut st: Locked<'_>) -> Nested {
        self.wake_readers(&mut st);
        wake(&mut st.write_waker);
        wake(&mut st.flush_waker);
        let nested = take_children(&mut st);
        drop(st);
        self.opened.notify_one();
        self.children_ready.notify_waiters();
        nested
    }

    /// Ends the children taken from this channel, and rejects the nested
    /// channels nobody accepted yet.
    fn end_children(&self, nested: Nested, ending: impl FnOnce() -> Ending) {
        let (children, pending) = nested;
        if !children.is_empty() {
            let ending = ending();
            for c in &children {
                c.end_by_parent(&ending);
            }
        }
        drop(pending); // already ended: dropping them sends nothing more
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

    // ---- nesting ----

    /// Why no more channels can be nested in this one, if so.
    pub(crate) fn closed_reason(&self) -> Option<Arc<str>> {
        closed_reason(&self.lock())
    }

    /// Whether the application holds this channel (accepted on both sides).
    pub(crate) fn is_established(&self) -> bool {
        self.lock().established
    }

    /// Records `child` as nested in this channel, unless this one is
    /// closed (then the reason).
    pub(crate) fn adopt(&self, child: &Arc<ChanShared>) -> Result<(), Arc<str>> {
        let mut st = self.lock();
        if let Some(why) = closed_reason(&st) {
            return Err(why);
        }
        st.children.retain(|w| w.strong_count() > 0);
        st.children.push(Arc::downgrade(child));
        Ok(())
    }

    /// Queues a nested channel the remote opened for `accept_child`; gives
    /// it back if this channel closed meanwhile.
    pub(crate) fn offer_child(&self, child: IncomingChannel) -> Option<IncomingChannel> {
        let mut st = self.lock();
        if closed_reason(&st).is_some() {
            return Some(child);
        }
        // Children the accept timeout rejected while nobody accepted here
        // leave the queue now (dropped after the lock: they send nothing).
        let mut expired = Vec::new();
        if st.incoming.iter().any(IncomingChannel::is_expired) {
            for c in std::mem::take(&mut st.incoming) {
                if c.is_expired() {
                    expired.push(c);
                } else {
                    st.incoming.push_back(c);
                }
            }
        }
        st.incoming.push_back(child);
        drop(st);
        drop(expired);
        self.children_ready.notify_waiters();
        None
    }

    /// The next nested channel the remote opened; `None` once this channel
    /// is closed. Cancel-safe.
    pub(crate) async fn accept_child(&self) -> Option<IncomingChannel> {
        loop {
            let notified = self.children_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                while let Some(c) = st.incoming.pop_front() {
                    if !c.is_expired() {
                        return Some(c);
                    }
                }
                if closed_reason(&st).is_some() {
                    return None;
                }
            }
            notified.await;
        }
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
            if let Some(end) = ended(&self.lock()) {
                return end;
            }
            notified.await;
        }
    }

    fn fail_protocol(self: &ChanShared, why: &str) {
        tracing::warn!(channel = self.id, "closing channel: remote {why}");
        {
            let mut st = self.lock();
            if st.violation.is_none() {
                // For the `PROTOCOL_ERROR` record: what the remote did, as
                // this side saw it.
                st.violation = Some(format!("{why} (seen by {})", self.local_peer()));
            }
        }
        self.fail(ChannelError::Protocol(why.into()));
    }

    fn wake_readers(&self, st: &mut ChanState) {
        wake(&mut st.read_waker);
        wake(&mut st.err_waker);
        wake(&mut st.trailers_waker);
    }

    // ---- the opener's view ----

    pub(crate) fn open_phase(&self) -> (OpenPhase, Option<ChannelError>, bool) {
        let st = self.lock();
        (st.open.clone(), st.failed.clone(), st.close_in)
    }

    // ---- reading ----

    pub(crate) fn poll_read(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<Result<(), ChannelError>> {
        let mut st = self.lock();
        if st.data.is_empty() {
            if let Some(e) = &st.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if st.eof_in {
                return Poll::Ready(Ok(()));
            }
            st.recv.reader_waits();
            st.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut copied = 0usize;
        while buf.remaining() > 0 {
            let Some(front) = st.data.front_mut() else {
                break;
            };
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front.split_to(n));
            copied += n;
            if front.is_empty() {
                st.data.pop_front();
            }
        }
        self.consumed(&mut st, copied);
        Poll::Ready(Ok(()))
    }

    /// Ready once the remote finished writing (EOF or close): its trailers,
    /// or empty headers if it sent none.
    pub(crate) fn poll_trailers(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Headers, ChannelError>> {
        let mut st = self.lock();
        if st.eof_in || st.close_in {
            return Poll::Ready(Ok(st.trailers.clone().unwrap_or_default()));
        }
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        st.trailers_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues trailers and EOF: the end of our writing.
    pub(crate) fn send_trailers(&self, trailers: &Headers) -> Result<(), ChannelError> {
        let encoded = trailers
            .encode(&self.conn.config.limits)
            .map_err(ChannelError::Trailers)?;
        let mut st = self.lock();
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if st.eof_out || st.close_out {
            return Err(ChannelError::WriteClosed);
        }
        if st.close_in {
            return Err(ChannelError::ClosedByRemote);
        }
        if self.kind == Kind::Plain {
            return Err(ChannelError::TrailersUnsupported);
        }
        st.out.push_back(Out::Ext(
            EXT_CONTROL,
            Control::Trailers { headers: encoded }.encode(),
        ));
        self.push_eof(&mut st);
        Ok(())
    }

    /// Takes up to `max` buffered bytes as one chunk, without copying.
    pub(crate) fn poll_read_chunk(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ChannelError>> {
        let mut st = self.lock();
        let Some(front) = st.data.front_mut() else {
            if let Some(e) = &st.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if st.eof_in {
                return Poll::Ready(Ok(None));
            }
            st.recv.reader_waits();
            st.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let chunk = if front.len() <= max {
            let c = std::mem::take(front);
            st.data.pop_front();
            c
        } else {
            front.split_to(max)
        };
        self.consumed(&mut st, chunk.len());
        Poll::Ready(Ok(Some(chunk)))
    }

    pub(crate) fn poll_read_error(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, ChannelError>> {
        let mut st = self.lock();
        if let Some((frame, owed)) = st.errs.pop_front() {
            self.consumed_err(&mut st, owed);
            return Poll::Ready(Ok(Some(frame)));
        }
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if st.eof_in {
            if let Err(e) = st.err_asm.finish() {
                return Poll::Ready(Err(e.into()));
            }
            return Poll::Ready(Ok(None));
        }
        st.err_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn consumed(&self, st: &mut ChanState, n: usize) {
        st.data_len -= n;
        st.recv.consumed(n as u64);
        self.maybe_grant(st);
    }

    fn consumed_err(&self, st: &mut ChanState, owed: u64) {
        if self.kind == Kind::Duplex {
            st.recv.released(owed);
            self.maybe_grant(st);
        }
    }

    /// Grants consumed bytes back once they add up to a quarter window, so
    /// the sender never stalls while the reader keeps up.
    fn maybe_grant(&self, st: &mut ChanState) {
        if st.close_in
            || st.close_out
            || st.failed.is_some()
            // A remote that finished writing needs no credit.
            || st.eof_in
            || (self.v2 && st.ssh_eof_out)
        {
            return;
        }
        if self.kind == Kind::Plain {
            // SSH window, granted at once (see `Kind::Plain`).
            if let (Some(w), Some(session)) = (self.writer.get(), self.conn.handle.get())
                && st.recv.maybe_grant(|_| false) > 0
            {
                while let Some(n) = st.recv.take_grant() {
                    session.grant(w, n);
                }
            }
            return;
        }
        let reader_gone = st.reader_gone;
        let before = st.recv.window();
        let granted = st.recv.maybe_grant(|extra| {
            // Half of every budget is kept for channels yet to open.
            if reader_gone {
                return false;
            }
            match self.conn.reserve_growth(extra) {
                Some(r) => {
                    match &mut st.grown {
                        Some(held) => held.absorb(r),
                        None => st.grown = Some(r),
                    }
                    true
                }
                None => false,
            }
        });
        if granted > 0 {
            if st.recv.window() > before {
                tracing::trace!(
                    channel = self.id,
                    window = st.recv.window(),
                    "receive window grown"
                );
            }
            self.schedule(st);
        }
    }

    /// The application dropped its reader: discard what is buffered and
    /// anything that arrives later.
    pub(crate) fn reader_dropped(&self) {
        let mut st = self.lock();
        st.reader_gone = true;
        let n = st.data_len as u64 + st.errs.iter().map(|(_, owed)| owed).sum::<u64>();
        st.data.clear();
        st.errs.clear();
        st.data_len = 0;
        st.recv.released(n);
        self.maybe_grant(&mut st);
    }

    /// Buffered, unread bytes (data and error frames): for tests and stats.
    pub(crate) fn buffered(&self) -> usize {
        let st = self.lock();
        st.data_len + st.errs.iter().map(|(f, _)| f.len()).sum::<usize>()
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
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.lock();
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        // Our own close_write first: that error is the caller's to fix.
        if st.eof_out || (st.close_out && !st.close_in) {
            return Poll::Ready(Err(ChannelError::WriteClosed));
        }
        if st.close_in {
            return Poll::Ready(Err(ChannelError::ClosedByRemote));
        }
        let room = match self.kind {
            // Credit, but never more queued than twice our own window: a
            // remote that grants credit and withholds SSH window cannot make
            // us queue without bound.
            Kind::Duplex => st
                .send_credit
                .room(st.out_bytes as u64, 2 * self.initial_window()),
            Kind::Plain => self
                .conn
                .config
                .plain_channel_buffer
                .saturating_sub(st.out_bytes) as u64,
        };
        if room == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = want
            .min(usize::try_from(room).unwrap_or(usize::MAX))
            .min(MAX_CHUNK);
        let chunk = take(n);
        if self.kind == Kind::Duplex {
            st.send_credit.spend(n as u64);
        }
        st.out_bytes += n;
        st.out.push_back(match ext {
            None => Out::Data(chunk),
            Some(code) => Out::Ext(code, chunk),
        });
        self.schedule(&mut st);
        Poll::Ready(Ok(n))
    }

    /// Ready once everything queued has been handed to the SSH session.
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        let mut st = self.lock();
        if let Some(e) = &st.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if st.out.is_empty() && !st.inflight && !st.recv.has_grant() {
            return Poll::Ready(Ok(()));
        }
        if st.close_in {
            return Poll::Ready(Ok(()));
        }
        st.flush_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ends a turn that could not run (no writer yet); a later `schedule`
    /// starts a new one.
    pub(crate) fn unschedule(&self) {
        self.lock().scheduled = false;
    }

    /// Reschedules if anything is waiting (after the writer was installed).
    pub(crate) fn kick(&self) {
        let mut st = self.lock();
        if !st.out.is_empty() || st.recv.has_grant() {
            self.schedule(&mut st);
        }
    }

    /// Nothing is queued or being sent.
    pub(crate) fn is_flushed(&self) -> bool {
        let st = self.lock();
        (st.out.is_empty() && !st.inflight && !st.scheduled) || st.failed.is_some() || st.close_in
    }

    /// Queues EOF (once).
    pub(crate) fn send_eof(&self) {
        let mut st = self.lock();
        if st.eof_out || st.close_out || st.close_in || st.failed.is_some() {
            st.eof_out = true;
            return;
        }
        self.push_eof(&mut st);
    }

    /// Queues EOF (if not sent) and close (once). Nested channels end at
    /// once (see [`Children`](super::Children)).
    pub(crate) fn send_close(&self) {
        let mut st = self.lock();
        if st.close_out || st.close_in || st.failed.is_some() {
            return;
        }
        // SSH EOF before the close (version 2: it also stands for the
        // `EOF` record, so no record is needed).
        if !st.ssh_eof_out {
            st.eof_out = true;
            st.ssh_eof_out = true;
            st.out.push_back(Out::Eof);
        }
        st.close_out = true;
        st.out.push_back(Out::Close);
        self.schedule(&mut st);
        let nested = take_children(&mut st);
        drop(st);
        self.children_ready.notify_waiters();
        self.end_children(nested, || Ending {
            local: ChannelError::ParentClosed(
                format!("{:?} was closed on this side", self.service()).into(),
            ),
            remote: Some(
                format!("{:?} was closed by {}", self.service(), self.local_peer()).into(),
            ),
            close: true,
        });
    }

    /// After a protocol violation: close the channel even though it failed.
    pub(crate) fn send_close_after_failure(&self) {
        let mut st = self.lock();
        if st.close_out || st.close_in {
            return;
        }
        if self.v2
            && !st.ssh_eof_out
            && let Some(reason) = st.violation.take()
        {
            st.out.push_back(Out::Ext(
                EXT_CONTROL,
                Control::ProtocolError { reason }.encode(),
            ));
        }
        st.close_out = true;
        st.eof_out = true;
        st.ssh_eof_out = true;
        st.out.push_back(Out::Close);
        self.schedule(&mut st);
    }

    /// Queues a control record (not subject to credit).
    pub(crate) fn send_control(&self, rec: &Control) {
        let mut st = self.lock();
        if !self.may_send_record(&st) || st.failed.is_some() {
            return;
        }
        st.out.push_back(Out::Ext(EXT_CONTROL, rec.encode()));
        self.schedule(&mut st);
    }

    /// Sends `REJECT` and the close on a channel failed on this side (the
    /// accept timeout): `send_control` and `send_close` skip failed ones.
    fn force_reject(&self, reason: String) {
        let mut st = self.lock();
        if !self.may_send_record(&st) {
            return;
        }
        st.out
            .push_back(Out::Ext(EXT_CONTROL, Control::Reject { reason }.encode()));
        if !st.ssh_eof_out {
            st.eof_out = true;
            st.ssh_eof_out = true;
            st.out.push_back(Out::Eof);
        }
        st.close_out = true;
        st.out.push_back(Out::Close);
        self.schedule(&mut st);
    }

    /// The opener's initial window, from its open: credit to send with.
    pub(crate) fn credit(&self, window: u32) {
        let mut st = self.lock();
        st.send_credit.add(window);
    }

    /// Gives the remote its initial credit as part of accepting.
    pub(crate) fn accept_duplex(&self) {
        let mut st = self.lock();
        if st.close_in || st.failed.is_some() {
            return;
        }
        let w = self.initial_window();
        st.recv.open();
        st.established = true;
        st.out.push_back(Out::Ext(
            EXT_CONTROL,
            Control::Accept {
                window: u32::try_from(w).unwrap_or(u32::MAX),
                id: self.id,
            }
            .encode(),
        ));
        self.schedule(&mut st);
    }

    /// Asks for a send turn, unless one is running: it starts when the
    /// lock is released (see [`Locked`]).
    fn schedule(&self, st: &mut ChanState) {
        if !st.scheduled {
            st.scheduled = true;
            st.start_turn = true;
        }
    }

    /// Runs a send turn in the caller's task as far as it goes without
    /// waiting: a small write reaches the session with no task switch.
    /// If it must wait (for SSH window, or room in the session's queue),
    /// the connection's outbox task carries it on; either way one turn
    /// per channel sends the queue in order.
    fn start_turn(&self) {
        let Some(me) = self.me.upgrade() else { return };
        let mut turn: Turn = Box::pin(crate::conn::drain(me));
        let mut cx = Context::from_waker(Waker::noop());
        if turn.as_mut().poll(&mut cx).is_pending() {
            self.conn.resume(turn);
        }
    }

    /// The outbox task takes the next thing to send; `None` ends its turn.
    pub(crate) fn next_out(&self) -> Option<Out> {
        let mut st = self.lock();
        st.inflight = false;
        if self.may_send_record(&st)
            && !st.eof_in
            && let Some(increment) = st.recv.take_grant()
        {
            st.inflight = true;
            return Some(Out::Ext(
                EXT_CONTROL,
                Control::Window { increment }.encode(),
            ));
        }
        st.recv.drop_grant();
        match st.out.pop_front() {
            Some(item) => {
                if let Out::Data(b) | Out::Ext(EXT_ERROR, b) = &item {
                    st.out_bytes = st.out_bytes.saturating_sub(b.len());
                    // A writer may wait for queue room rather than credit
                    // (the remote granted more than our queue bound).
                    wake(&mut st.write_waker);
                }
                st.inflight = true;
                Some(item)
            }
            None => {
                st.scheduled = false;
                wake(&mut st.flush_waker);
                None
            }
        }
    }
}

impl crate::pending::Waiting for ChanShared {
    fn is_answered(&self) -> bool {
        ChanShared::is_answered(self)
    }

    fn expire(&self, after: std::time::Duration) {
        self.expire_now(after);
    }
}

/// What a remote is told it did wrong with one of its streams.
struct Refusals {
    after_eof: &'static str,
    before_accept: &'static str,
    over_credit: &'static str,
}

const DATA: Refusals = Refusals {
    after_eof: "sent data after its EOF",
    before_accept: "sent data before answering the open with ACCEPT",
    over_credit: "sent more data than its flow-control window allows",
};

const ERROR_STREAM: Refusals = Refusals {
    after_eof: "sent error-stream data after its EOF",
    before_accept: "sent error-stream data before answering the open with ACCEPT",
    over_credit: "sent more error data than its flow-control window allows",
};

/// A channel's send turn (see `ChanShared::start_turn`).
pub(crate) type Turn = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The locked state of a channel. Unlocking starts the send turn that
/// `schedule` asked for, once the lock is free (the turn takes it).
pub(crate) struct Locked<'a> {
    chan: &'a ChanShared,
    st: Option<MutexGuard<'a, ChanState>>,
}

impl Deref for Locked<'_> {
    type Target = ChanState;

    fn deref(&self) -> &ChanState {
        match &self.st {
            Some(g) => g,
            None => unreachable!("the guard is only taken by drop"),
        }
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut ChanState {
        match &mut self.st {
            Some(g) => g,
            None => unreachable!("the guard is only taken by drop"),
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut g) = self.st.take() else { return };
        let start = std::mem::take(&mut g.start_turn);
        drop(g);
        if start {
            self.chan.start_turn();
        }
    }
}

/// Most bytes taken from one `poll_write` call: bounds a single queued item.
const MAX_CHUNK: usize = 256 << 10;

fn closed_reason(st: &ChanState) -> Option<Arc<str>> {
    if let Some(e) = &st.failed {
        return Some(e.to_string().into());
    }
    if st.close_in {
        return Some("the parent was closed by the remote peer".into());
    }
    if st.close_out {
        return Some("the parent was closed on this side".into());
    }
    None
}

/// How the channel has ended, if it has (for `closed`).
fn ended(st: &ChanState) -> Option<ChannelEnd> {
    if let Some(e) = &st.failed {
        return Some(ChannelEnd::Failed(e.clone()));
    }
    if st.close_in {
        return Some(ChannelEnd::ClosedByRemote);
    }
    if st.close_out {
        return Some(ChannelEnd::ClosedHere);
    }
    None
}

/// A channel's children and its unaccepted nested channels.
type Nested = (Vec<Arc<ChanShared>>, VecDeque<IncomingChannel>);

/// Takes the live children and the unaccepted nested channels.
fn take_children(st: &mut ChanState) -> Nested {
    let children = std::mem::take(&mut st.children)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    (children, std::mem::take(&mut st.incoming))
}

/// How the descendants of an ended channel end.
#[derive(Clone)]
struct Ending {
    /// The error their local handles get.
    local: ChannelError,
    /// The reason sent to the remote in a `PARENT_CLOSED` record, if any.
    remote: Option<Arc<str>>,
    /// Whether we close them (not when the connection is gone).
    close: bool,
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}
