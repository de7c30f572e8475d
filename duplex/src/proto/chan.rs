//! One channel's protocol state machine, without I/O and without a clock.
//!
//! [`Chan`] holds what a channel received and has not been read yet (data,
//! error frames, trailers), what it queued to send ([`Out`]), its flow
//! control (see [`super::flow`]), its half-closes, its open phase and the
//! protocol violation it saw. Bytes and events from the session go in
//! (`on_data`, `on_ext`, `on_eof`, `on_close`); the application's reads
//! and writes go in (`poll_read`, `poll_write`, `send_*`); records to send
//! come out of [`Chan::next_out`], and after every call
//! [`Chan::take_effects`] says which of the handle's waiters to wake and
//! whether a send turn is needed. The driver (`channel/state.rs`) keeps the
//! wakers, takes its lock around each call, and acts on the effects once
//! it has let go of the lock.
//!
//! What the machine needs from the connection (the decoders' limits, the
//! hello, the memory budget, a plain client's SSH window) it asks through
//! [`Env`]. A failure is the driver's own error type `F`: the machine
//! stores it and hands clones back to readers and writers.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::task::Poll;

use bytes::{Buf, Bytes};

use super::budget::Reservation;
use super::control::{self, Control};
use super::flow::{self, RecvWindow, SendCredit};
use super::frame::{Assembler, FrameError, HEADER_LEN};
use super::headers::Headers;
use super::{EXT_CONTROL, EXT_ERROR, Limits};

/// Whether the remote speaks Duplex's flow control on this channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Credit-based: the remote sends only what we granted.
    Duplex,
    /// A plain SSH client (`ssh -W`): its SSH window is the credit. We
    /// offer `Config::plain_channel_buffer` and grant back what the
    /// application reads, so the client is held back by its own channel
    /// and the session keeps reading for the others.
    Plain,
}

/// Something queued for the outbox task to send, in order.
#[derive(Debug)]
pub(crate) enum Out {
    Data(Bytes),
    Ext(u32, Bytes),
    Eof,
    Close,
}

/// How the open handshake ended, seen from the opener.
#[derive(Debug, Clone)]
pub(crate) enum OpenPhase {
    Waiting,
    Accepted,
    Rejected(String),
    Hello(Headers),
}

/// What the session handler must do after delivering data.
pub(crate) enum Delivery {
    Ok,
    /// Protocol violation: the channel was failed; close it.
    Violation,
}

/// What the remote did wrong, in words for the log and the
/// `PROTOCOL_ERROR` record.
pub(crate) type Violation = Cow<'static, str>;

/// Which of a channel's waiters a change concerns. A set of bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wake(u8);

impl Wake {
    /// The reader of data (data arrived, or the stream ended).
    pub(crate) const READ: Wake = Wake(1);
    /// The reader of error frames.
    pub(crate) const ERR: Wake = Wake(1 << 1);
    /// Whoever waits for the trailers.
    pub(crate) const TRAILERS: Wake = Wake(1 << 2);
    /// A writer waiting for credit or queue room.
    pub(crate) const WRITE: Wake = Wake(1 << 3);
    /// A flush waiting for the queue to empty.
    pub(crate) const FLUSH: Wake = Wake(1 << 4);
    /// The opener (the open was answered, or the channel ended).
    pub(crate) const OPENED: Wake = Wake(1 << 5);
    /// Whoever waits for the end or for a nested channel.
    pub(crate) const ENDED: Wake = Wake(1 << 6);
    /// Every reader.
    pub(crate) const READERS: Wake = Wake(Self::READ.0 | Self::ERR.0 | Self::TRAILERS.0);
    /// Everyone: the channel ended.
    pub(crate) const ALL: Wake = Wake(0x7f);

    pub(crate) fn contains(self, other: Wake) -> bool {
        self.0 & other.0 == other.0
    }

    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Wake {
    type Output = Wake;
    fn bitor(self, rhs: Wake) -> Wake {
        Wake(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Wake {
    fn bitor_assign(&mut self, rhs: Wake) {
        self.0 |= rhs.0;
    }
}

/// What the driver must do after a call, once it has released its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub(crate) struct Effects {
    /// The waiters to wake.
    pub(crate) wake: Wake,
    /// Start a send turn: something was queued and no turn is running.
    pub(crate) send: bool,
    /// The receive window grew to this many bytes (for the log).
    pub(crate) grown: Option<u64>,
}

/// What a batch of control records told the driver beyond the state it
/// changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Told {
    /// The remote accepted our open and named the channel so.
    pub(crate) accepted: Option<u32>,
    /// `PARENT_CLOSED`: the remote ended this nested channel because its
    /// parent ended (the driver checks that it has one).
    pub(crate) parent_closed: Option<String>,
    /// `PROTOCOL_ERROR`: the remote closes the channel over a violation it
    /// says this side made. The records after it were not acted on.
    pub(crate) reported: Option<String>,
}

/// Why a write or trailers cannot be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteRefused<F> {
    /// The channel failed.
    Failed(F),
    /// This side finished writing or closed.
    WriteClosed,
    /// The remote closed the channel.
    ClosedByRemote,
    /// A plain SSH client's channel carries no trailers.
    TrailersUnsupported,
}

/// What the channel asks of its connection.
pub(crate) trait Env {
    /// The decoders' limits (for trailers and the hello).
    fn limits(&self) -> &Limits;
    /// Whether this connection waits for the listener's `HELLO`.
    fn awaiting_hello(&self) -> bool;
    /// The listener's hello arrived: learn its version and name; an error
    /// refuses the connection, with the reason.
    fn on_hello(&self, hello: &Headers) -> Result<(), String>;
    /// Reserves `extra` bytes of the memory budgets to grow the window.
    fn reserve(&self, extra: u64) -> Option<Reservation>;
    /// Whether a plain client's SSH window can be granted now.
    fn can_grant_ssh(&self) -> bool;
    /// Grants a plain client `n` more bytes of SSH window.
    fn grant_ssh(&self, n: u32);
}

/// How a channel is set up: fixed for its life.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) kind: Kind,
    /// Protocol version 2 (see `proto::hello::Version::eof_record`): the
    /// half-close is an `EOF` record, and SSH EOF comes only when nothing
    /// but the close follows.
    pub(crate) v2: bool,
    /// We opened it (rather than the remote).
    pub(crate) outgoing: bool,
    /// `Config::channel_window`: the window a channel starts with.
    pub(crate) window: u32,
    /// `Config::max_channel_window`.
    pub(crate) max_window: u32,
    /// `Config::plain_channel_buffer`.
    pub(crate) plain_buffer: usize,
    /// `Config::max_frame_len`, for error frames.
    pub(crate) max_frame: usize,
}

/// Most bytes taken from one `poll_write` call: bounds a single queued item.
pub(crate) const MAX_CHUNK: usize = 256 << 10;

/// One channel's protocol state.
pub(crate) struct Chan<F> {
    kind: Kind,
    v2: bool,
    outgoing: bool,
    initial_window: u32,
    /// The most bytes of data and error frames queued unsent.
    queue_cap: u64,
    fx: Effects,
    // Receiving.
    data: VecDeque<Bytes>,
    data_len: usize,
    /// Complete error frames, each with the credit still owed for it (the
    /// part not granted back while it was partial).
    errs: VecDeque<(Bytes, u64)>,
    err_asm: Assembler,
    ctrl: control::Parser,
    /// What the remote may send, what we owe it, and the window.
    recv: RecvWindow,
    /// The connection budget reserved for the window's growth.
    grown: Option<Reservation>,
    eof_in: bool,
    close_in: bool,
    failed: Option<F>,
    reader_gone: bool,
    trailers: Option<Headers>,
    // Sending.
    send_credit: SendCredit,
    out: VecDeque<Out>,
    out_bytes: usize,
    inflight: bool,
    /// A send turn is running (inline or in the outbox): only one at a time.
    scheduled: bool,
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
    // Opening.
    open: OpenPhase,
    /// Accepted on both sides: the application holds a `Channel` for it.
    established: bool,
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

impl<F: Clone> Chan<F> {
    /// A channel set up by `spec`, whose remote holds `recv_credit` already
    /// (see [`RecvWindow::new`]).
    pub(crate) fn new(spec: &Spec, recv_credit: u64) -> Self {
        let (recv, queue_cap) = match spec.kind {
            Kind::Duplex => (
                RecvWindow::new(
                    recv_credit,
                    u64::from(spec.window),
                    u64::from(spec.max_window),
                ),
                // Credit, but never more queued than twice our own window:
                // a remote that grants credit and withholds SSH window
                // cannot make us queue without bound.
                2 * u64::from(spec.window),
            ),
            // A plain client's window is its SSH window, which never grows.
            Kind::Plain => {
                let w = spec.plain_buffer as u64;
                (RecvWindow::new(recv_credit, w, w), w)
            }
        };
        Chan {
            kind: spec.kind,
            v2: spec.v2 && spec.kind == Kind::Duplex,
            outgoing: spec.outgoing,
            initial_window: spec.window,
            queue_cap,
            fx: Effects::default(),
            data: VecDeque::new(),
            data_len: 0,
            errs: VecDeque::new(),
            err_asm: Assembler::new(spec.max_frame),
            ctrl: control::Parser::new(),
            recv,
            grown: None,
            eof_in: false,
            close_in: false,
            failed: None,
            reader_gone: false,
            trailers: None,
            send_credit: match spec.kind {
                Kind::Duplex => SendCredit::default(),
                Kind::Plain => SendCredit::UNLIMITED,
            },
            out: VecDeque::new(),
            out_bytes: 0,
            inflight: false,
            scheduled: false,
            eof_out: false,
            ssh_eof_out: false,
            violation: None,
            close_out: false,
            open: OpenPhase::Waiting,
            established: false,
        }
    }

    /// What the driver must do now that the last call returned.
    pub(crate) fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }

    fn wake(&mut self, w: Wake) {
        self.fx.wake |= w;
    }

    /// Asks for a send turn, unless one is running.
    fn schedule(&mut self) {
        if !self.scheduled {
            self.scheduled = true;
            self.fx.send = true;
        }
    }

    // ---- what the driver reads ----

    pub(crate) fn failed(&self) -> Option<&F> {
        self.failed.as_ref()
    }

    /// The remote closed the channel.
    pub(crate) fn closed_in(&self) -> bool {
        self.close_in
    }

    /// This side closed the channel.
    pub(crate) fn closed_out(&self) -> bool {
        self.close_out
    }

    /// Accepted on both sides.
    pub(crate) fn is_established(&self) -> bool {
        self.established
    }

    /// How the open is going, the failure if any, and whether the remote
    /// closed.
    pub(crate) fn open_phase(&self) -> (OpenPhase, Option<F>, bool) {
        (self.open.clone(), self.failed.clone(), self.close_in)
    }

    /// Buffered, unread bytes (data and error frames).
    pub(crate) fn buffered(&self) -> usize {
        self.data_len + self.errs.iter().map(|(f, _)| f.len()).sum::<usize>()
    }

    /// Nothing is queued or being sent.
    pub(crate) fn is_flushed(&self) -> bool {
        (self.out.is_empty() && !self.inflight && !self.scheduled)
            || self.failed.is_some()
            || self.close_in
    }

    // ---- events from the session ----

    /// Channel data arrived. An error is a violation: the driver fails the
    /// channel with it.
    pub(crate) fn on_data(&mut self, data: &[u8], env: &impl Env) -> Result<(), Violation> {
        if self.close_in || self.failed.is_some() {
            return Ok(());
        }
        let n = data.len() as u64;
        self.admit(n, &DATA)?;
        if self.reader_gone {
            // Nobody will read: discard, and give the credit straight back.
            self.recv.released(n);
            self.maybe_grant(env);
            return Ok(());
        }
        if !data.is_empty() {
            self.data.push_back(Bytes::copy_from_slice(data));
            self.data_len += data.len();
        }
        self.wake(Wake::READ);
        Ok(())
    }

    /// A channel we opened that the remote has not answered yet: only
    /// ACCEPT, REJECT (HELLO on the hello channel), PARENT_CLOSED and
    /// PROTOCOL_ERROR may arrive on it.
    fn unanswered(&self) -> bool {
        self.outgoing && self.kind == Kind::Duplex && matches!(self.open, OpenPhase::Waiting)
    }

    /// The checks on `n` bytes of data or error stream that arrived: not
    /// after the remote's EOF (version 2), not before its ACCEPT, and
    /// within the credit we granted (which they use up).
    fn admit(&mut self, n: u64, texts: &Refusals) -> Result<(), Violation> {
        if self.v2 && self.eof_in {
            return Err(texts.after_eof.into());
        }
        if self.unanswered() {
            return Err(texts.before_accept.into());
        }
        // For a plain client the credit is the SSH window we offered.
        if self.recv.charge(n).is_err() {
            return Err(texts.over_credit.into());
        }
        Ok(())
    }

    /// Extended data arrived: error frames, control records, or a stream
    /// nobody knows (ignored, as RFC 4254 allows).
    pub(crate) fn on_ext(
        &mut self,
        code: u32,
        data: &[u8],
        env: &impl Env,
    ) -> Result<Told, Violation> {
        match code {
            // A plain client's stderr has no credit to bound it: dropped.
            EXT_ERROR if self.kind == Kind::Duplex => {
                self.on_error_bytes(data, env)?;
                Ok(Told::default())
            }
            EXT_CONTROL if self.kind == Kind::Duplex => self.on_control(data, env),
            _ => Ok(Told::default()),
        }
    }

    fn on_error_bytes(&mut self, data: &[u8], env: &impl Env) -> Result<(), Violation> {
        if self.close_in || self.failed.is_some() {
            return Ok(());
        }
        let n = data.len() as u64;
        self.admit(n, &ERROR_STREAM)?;
        let before = self.err_asm.partial_len() as u64;
        let frames = self
            .err_asm
            .push(data)
            .map_err(|e| Violation::from(format!("bad error frame: {e}")))?;
        if self.reader_gone || frames.is_empty() {
            // Bytes of an unfinished frame are granted back at once: the
            // assembler bounds them (max_frame_len), and a frame larger
            // than the window could never finish otherwise.
            self.recv.released(n);
        } else {
            // The first finished frame contains the `before` bytes granted
            // while it was partial; the new partial bytes are granted now;
            // the rest when the frames are read.
            let after = self.err_asm.partial_len() as u64;
            let mut pregranted = before;
            for f in frames {
                let total = (f.len() + HEADER_LEN) as u64;
                let owed = flow::error_frame_owed(total, pregranted);
                pregranted = 0;
                self.errs.push_back((f, owed));
            }
            self.recv.released(after);
            self.wake(Wake::ERR);
        }
        self.maybe_grant(env);
        Ok(())
    }

    fn on_control(&mut self, data: &[u8], env: &impl Env) -> Result<Told, Violation> {
        let mut told = Told::default();
        if self.close_in || self.failed.is_some() {
            return Ok(told); // ended: nothing more is acted on
        }
        let records = self
            .ctrl
            .push(data)
            .map_err(|e| Violation::from(e.to_string()))?;
        let mut opened = false;
        let mut eof = false;
        for rec in records {
            // Every record is checked against the channel's state: nothing
            // out of place is ignored (PROTOCOL.md section 5).
            let misplaced = match &rec {
                Control::Accept { .. } | Control::Reject { .. } if !self.outgoing => {
                    Some("sent ACCEPT or REJECT on a channel it opened itself")
                }
                Control::Accept { .. } | Control::Reject { .. }
                    if !matches!(self.open, OpenPhase::Waiting) =>
                {
                    Some("answered the open twice (a second ACCEPT or REJECT)")
                }
                Control::Eof | Control::ProtocolError { .. } if !self.v2 => Some(
                    "sent a version-2 record (EOF or PROTOCOL_ERROR) on a version-1 connection",
                ),
                Control::Eof if self.eof_in => Some("sent EOF twice"),
                Control::Window { .. } | Control::Trailers { .. } | Control::Eof
                    if self.unanswered() =>
                {
                    Some("sent WINDOW, TRAILERS or EOF before answering the open with ACCEPT")
                }
                _ => None,
            };
            if let Some(why) = misplaced {
                return Err(why.into());
            }
            match rec {
                Control::Accept { window, id } => {
                    self.send_credit.add(window);
                    told.accepted = Some(id);
                    self.open = OpenPhase::Accepted;
                    self.established = true;
                    opened = true;
                }
                Control::Window { increment } => self.send_credit.add(increment),
                Control::Reject { reason } => {
                    self.open = OpenPhase::Rejected(reason);
                    opened = true;
                }
                Control::ParentClosed { reason } => told.parent_closed = Some(reason),
                Control::Eof => {
                    self.eof_in = true;
                    eof = true;
                }
                Control::ProtocolError { reason } => {
                    told.reported = Some(reason);
                    return Ok(told); // the driver fails the channel; its close follows
                }
                Control::Trailers { headers } => match Headers::decode(&headers, env.limits()) {
                    Ok(h) if self.trailers.is_none() && !self.eof_in => self.trailers = Some(h),
                    Ok(_) => return Err("sent trailers twice or after EOF".into()),
                    Err(e) => return Err(format!("sent malformed trailers: {e}").into()),
                },
                Control::Hello { headers } => {
                    if !(self.outgoing && env.awaiting_hello()) {
                        return Err("sent HELLO on a channel other than the @hello channel".into());
                    }
                    self.open = match Headers::decode(&headers, env.limits()) {
                        // The connection learns the version and the
                        // listener's name now, in the session loop, so
                        // channels it opens right after its hello already
                        // carry them.
                        Ok(h) => match env.on_hello(&h) {
                            Ok(()) => OpenPhase::Hello(h),
                            Err(why) => OpenPhase::Rejected(why),
                        },
                        Err(e) => OpenPhase::Rejected(format!("bad hello: {e}")),
                    };
                    opened = true;
                }
            }
        }
        if self.send_credit.get() > 0 {
            self.wake(Wake::WRITE);
        }
        if eof {
            self.wake(Wake::READERS);
            self.eof_both_ways();
        }
        if opened {
            self.wake(Wake::OPENED);
        }
        Ok(told)
    }

    /// SSH EOF arrived. On a version-2 channel it also stands for the
    /// `EOF` record: the remote sends nothing more.
    pub(crate) fn on_eof(&mut self) {
        self.eof_in = true;
        self.wake(Wake::READERS);
        self.eof_both_ways();
    }

    /// Version 2: once both sides finished writing, nothing but the close
    /// is left to send (no credit is granted to a remote that finished),
    /// so SSH EOF goes now.
    fn eof_both_ways(&mut self) {
        if self.v2
            && self.eof_in
            && self.eof_out
            && !self.ssh_eof_out
            && !self.close_out
            && !self.close_in
        {
            self.ssh_eof_out = true;
            self.out.push_back(Out::Eof);
            self.schedule();
        }
    }

    /// Queues the end of our writing: SSH EOF (version 1), or the `EOF`
    /// record and, if the remote finished too, SSH EOF (version 2).
    fn push_eof(&mut self) {
        self.eof_out = true;
        if self.v2 {
            self.out
                .push_back(Out::Ext(EXT_CONTROL, Control::Eof.encode()));
            self.eof_both_ways();
        } else {
            self.ssh_eof_out = true;
            self.out.push_back(Out::Eof);
        }
        self.schedule();
    }

    /// Whether a control record may still be sent: not after our close,
    /// nor (version 2) after our SSH EOF.
    fn may_send_record(&self) -> bool {
        !(self.close_out || self.close_in || (self.v2 && self.ssh_eof_out))
    }

    /// The remote closed the channel (the SSH layer has already answered
    /// with our close), or we learned it will never open. The driver ends
    /// the nested channels.
    pub(crate) fn on_close(&mut self) {
        self.close_in = true;
        self.eof_in = true;
        self.close_out = true; // the SSH layer replied for us
        self.out.clear();
        self.out_bytes = 0;
        self.wake(Wake::ALL);
    }

    /// The connection died, or the remote broke the protocol. The driver
    /// ends the nested channels.
    pub(crate) fn fail(&mut self, err: F) {
        if self.failed.is_none() {
            self.failed = Some(err);
        }
        // Nothing more is sent but a close already asked for (the remote
        // must still learn the channel is gone).
        let closing = self.out.iter().any(|o| matches!(o, Out::Close));
        self.out.clear();
        if closing {
            self.out.push_back(Out::Close);
        }
        self.out_bytes = 0;
        self.wake(Wake::ALL);
    }

    /// Records a failure without waking anyone or dropping the queue (the
    /// accept timeout, before it rejects the channel): should the
    /// application take the channel after all, its reads and writes fail
    /// with it.
    pub(crate) fn set_failed(&mut self, err: F) {
        if self.failed.is_none() {
            self.failed = Some(err);
        }
    }

    /// Keeps what the remote did wrong, for the `PROTOCOL_ERROR` record.
    pub(crate) fn note_violation(&mut self, reason: String) {
        if self.violation.is_none() {
            self.violation = Some(reason);
        }
    }

    /// Ends this channel because an ancestor ended: fails it with `local`,
    /// tells the remote `remote` (a `PARENT_CLOSED` record) and closes it
    /// if `close`. False when it was closed already (its own descendants
    /// ended then; what it queued, its close included, still goes out):
    /// then nothing changed and there is nothing to cascade.
    pub(crate) fn end_by_parent(&mut self, local: F, remote: Option<&str>, close: bool) -> bool {
        if self.close_out || self.close_in {
            return false;
        }
        if self.failed.is_none() {
            self.failed = Some(local);
        }
        self.out.clear();
        self.out_bytes = 0;
        if close {
            if let Some(reason) = remote
                && self.may_send_record()
            {
                let rec = Control::ParentClosed {
                    reason: reason.to_string(),
                };
                self.out.push_back(Out::Ext(EXT_CONTROL, rec.encode()));
            }
            self.out.push_back(Out::Close);
            self.eof_out = true;
            self.ssh_eof_out = true;
            self.close_out = true;
            self.schedule();
        }
        self.wake(Wake::ALL);
        true
    }

    /// The application dropped its reader: discard what is buffered and
    /// anything that arrives later.
    pub(crate) fn reader_dropped(&mut self, env: &impl Env) {
        self.reader_gone = true;
        let n = self.data_len as u64 + self.errs.iter().map(|(_, owed)| owed).sum::<u64>();
        self.data.clear();
        self.errs.clear();
        self.data_len = 0;
        self.recv.released(n);
        self.maybe_grant(env);
    }

    // ---- reading ----

    /// Hands up to `max` buffered bytes to `put` (in pieces); `Ready(Ok)`
    /// with nothing put means the remote finished writing. `Pending`: the
    /// driver parks the reader's waker.
    pub(crate) fn poll_read(
        &mut self,
        max: usize,
        mut put: impl FnMut(&[u8]),
        env: &impl Env,
    ) -> Poll<Result<(), F>> {
        if self.data.is_empty() {
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if self.eof_in {
                return Poll::Ready(Ok(()));
            }
            self.recv.reader_waits();
            return Poll::Pending;
        }
        let mut copied = 0usize;
        while copied < max {
            let Some(front) = self.data.front_mut() else {
                break;
            };
            let n = front.len().min(max - copied);
            put(front.get(..n).unwrap_or_default());
            front.advance(n);
            copied += n;
            if front.is_empty() {
                self.data.pop_front();
            }
        }
        self.consumed(copied, env);
        Poll::Ready(Ok(()))
    }

    /// Takes up to `max` buffered bytes as one chunk, without copying;
    /// `None` once the remote finished writing.
    pub(crate) fn poll_read_chunk(
        &mut self,
        max: usize,
        env: &impl Env,
    ) -> Poll<Result<Option<Bytes>, F>> {
        let Some(front) = self.data.front_mut() else {
            if let Some(e) = &self.failed {
                return Poll::Ready(Err(e.clone()));
            }
            if self.eof_in {
                return Poll::Ready(Ok(None));
            }
            self.recv.reader_waits();
            return Poll::Pending;
        };
        let chunk = if front.len() <= max {
            let c = std::mem::take(front);
            self.data.pop_front();
            c
        } else {
            front.split_to(max)
        };
        self.consumed(chunk.len(), env);
        Poll::Ready(Ok(Some(chunk)))
    }

    /// The next complete error frame; `None` once the remote finished
    /// writing (an error if it left a frame unfinished).
    pub(crate) fn poll_read_error(&mut self, env: &impl Env) -> Poll<Result<Option<Bytes>, F>>
    where
        F: From<FrameError>,
    {
        if let Some((frame, owed)) = self.errs.pop_front() {
            if self.kind == Kind::Duplex {
                self.recv.released(owed);
                self.maybe_grant(env);
            }
            return Poll::Ready(Ok(Some(frame)));
        }
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if self.eof_in {
            if let Err(e) = self.err_asm.finish() {
                return Poll::Ready(Err(e.into()));
            }
            return Poll::Ready(Ok(None));
        }
        Poll::Pending
    }

    /// Ready once the remote finished writing (EOF or close): its trailers,
    /// or empty headers if it sent none.
    pub(crate) fn poll_trailers(&self) -> Poll<Result<Headers, F>> {
        if self.eof_in || self.close_in {
            return Poll::Ready(Ok(self.trailers.clone().unwrap_or_default()));
        }
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.clone()));
        }
        Poll::Pending
    }

    fn consumed(&mut self, n: usize, env: &impl Env) {
        self.data_len -= n;
        self.recv.consumed(n as u64);
        self.maybe_grant(env);
    }

    /// Grants consumed bytes back once they add up to a quarter window, so
    /// the sender never stalls while the reader keeps up.
    fn maybe_grant(&mut self, env: &impl Env) {
        if self.close_in
            || self.close_out
            || self.failed.is_some()
            // A remote that finished writing needs no credit.
            || self.eof_in
            || (self.v2 && self.ssh_eof_out)
        {
            return;
        }
        if self.kind == Kind::Plain {
            // SSH window, granted at once (see `Kind::Plain`).
            if env.can_grant_ssh() && self.recv.maybe_grant(|_| false) > 0 {
                while let Some(n) = self.recv.take_grant() {
                    env.grant_ssh(n);
                }
            }
            return;
        }
        let reader_gone = self.reader_gone;
        let before = self.recv.window();
        let grown = &mut self.grown;
        let granted = self.recv.maybe_grant(|extra| {
            // Half of every budget is kept for channels yet to open.
            if reader_gone {
                return false;
            }
            match env.reserve(extra) {
                Some(r) => {
                    match grown {
                        Some(held) => held.absorb(r),
                        None => *grown = Some(r),
                    }
                    true
                }
                None => false,
            }
        });
        if granted > 0 {
            if self.recv.window() > before {
                self.fx.grown = Some(self.recv.window());
            }
            self.schedule();
        }
    }

    // ---- writing ----

    /// Queues up to `want` bytes on `ext` (None = data) as credit and
    /// queue room allow; `take(n)` supplies the first `n` bytes.
    /// `Pending`: the driver parks the writer's waker.
    pub(crate) fn poll_write(
        &mut self,
        ext: Option<u32>,
        want: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<Result<usize, WriteRefused<F>>> {
        if want == 0 {
            return Poll::Ready(Ok(0));
        }
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(WriteRefused::Failed(e.clone())));
        }
        // Our own close_write first: that error is the caller's to fix.
        if self.eof_out || (self.close_out && !self.close_in) {
            return Poll::Ready(Err(WriteRefused::WriteClosed));
        }
        if self.close_in {
            return Poll::Ready(Err(WriteRefused::ClosedByRemote));
        }
        let room = self.send_credit.room(self.out_bytes as u64, self.queue_cap);
        if room == 0 {
            return Poll::Pending;
        }
        let n = want
            .min(usize::try_from(room).unwrap_or(usize::MAX))
            .min(MAX_CHUNK);
        let chunk = take(n);
        if self.kind == Kind::Duplex {
            self.send_credit.spend(n as u64);
        }
        self.out_bytes += n;
        self.out.push_back(match ext {
            None => Out::Data(chunk),
            Some(code) => Out::Ext(code, chunk),
        });
        self.schedule();
        Poll::Ready(Ok(n))
    }

    /// Ready once everything queued has been handed to the session.
    /// `Pending`: the driver parks the flusher's waker.
    pub(crate) fn poll_flush(&self) -> Poll<Result<(), F>> {
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if self.out.is_empty() && !self.inflight && !self.recv.has_grant() {
            return Poll::Ready(Ok(()));
        }
        if self.close_in {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// Queues trailers (already encoded) and EOF: the end of our writing.
    pub(crate) fn send_trailers(&mut self, encoded: String) -> Result<(), WriteRefused<F>> {
        if let Some(e) = &self.failed {
            return Err(WriteRefused::Failed(e.clone()));
        }
        if self.eof_out || self.close_out {
            return Err(WriteRefused::WriteClosed);
        }
        if self.close_in {
            return Err(WriteRefused::ClosedByRemote);
        }
        if self.kind == Kind::Plain {
            return Err(WriteRefused::TrailersUnsupported);
        }
        self.out.push_back(Out::Ext(
            EXT_CONTROL,
            Control::Trailers { headers: encoded }.encode(),
        ));
        self.push_eof();
        Ok(())
    }

    /// Ends a turn that could not run (no writer yet); a later `kick`
    /// starts a new one.
    pub(crate) fn unschedule(&mut self) {
        self.scheduled = false;
    }

    /// Asks for a send turn if anything is waiting (after the writer was
    /// installed).
    pub(crate) fn kick(&mut self) {
        if !self.out.is_empty() || self.recv.has_grant() {
            self.schedule();
        }
    }

    /// Queues EOF (once).
    pub(crate) fn send_eof(&mut self) {
        if self.eof_out || self.close_out || self.close_in || self.failed.is_some() {
            self.eof_out = true;
            return;
        }
        self.push_eof();
    }

    /// Queues EOF (if not sent) and close (once). True when it did: the
    /// driver ends the nested channels.
    pub(crate) fn send_close(&mut self) -> bool {
        if self.close_out || self.close_in || self.failed.is_some() {
            return false;
        }
        // SSH EOF before the close (version 2: it also stands for the
        // `EOF` record, so no record is needed).
        if !self.ssh_eof_out {
            self.eof_out = true;
            self.ssh_eof_out = true;
            self.out.push_back(Out::Eof);
        }
        self.close_out = true;
        self.out.push_back(Out::Close);
        self.schedule();
        self.wake(Wake::ENDED);
        true
    }

    /// After a protocol violation: close the channel even though it failed,
    /// telling a version-2 remote why first.
    pub(crate) fn send_close_after_failure(&mut self) {
        if self.close_out || self.close_in {
            return;
        }
        if self.v2
            && !self.ssh_eof_out
            && let Some(reason) = self.violation.take()
        {
            self.out.push_back(Out::Ext(
                EXT_CONTROL,
                Control::ProtocolError { reason }.encode(),
            ));
        }
        self.close_out = true;
        self.eof_out = true;
        self.ssh_eof_out = true;
        self.out.push_back(Out::Close);
        self.schedule();
    }

    /// Queues a control record (not subject to credit).
    pub(crate) fn send_control(&mut self, rec: &Control) {
        if !self.may_send_record() || self.failed.is_some() {
            return;
        }
        self.out.push_back(Out::Ext(EXT_CONTROL, rec.encode()));
        self.schedule();
    }

    /// Sends `REJECT` and the close on a channel failed on this side (the
    /// accept timeout): `send_control` and `send_close` skip failed ones.
    pub(crate) fn force_reject(&mut self, reason: String) {
        if !self.may_send_record() {
            return;
        }
        self.out
            .push_back(Out::Ext(EXT_CONTROL, Control::Reject { reason }.encode()));
        if !self.ssh_eof_out {
            self.eof_out = true;
            self.ssh_eof_out = true;
            self.out.push_back(Out::Eof);
        }
        self.close_out = true;
        self.out.push_back(Out::Close);
        self.schedule();
    }

    /// The opener's initial window, from its open: credit to send with.
    pub(crate) fn credit(&mut self, window: u32) {
        self.send_credit.add(window);
    }

    /// Accepts the remote's open, naming the channel `id`: gives the remote
    /// its initial credit in the `ACCEPT` record.
    pub(crate) fn accept_duplex(&mut self, id: u32) {
        if self.close_in || self.failed.is_some() {
            return;
        }
        self.recv.open();
        self.established = true;
        self.out.push_back(Out::Ext(
            EXT_CONTROL,
            Control::Accept {
                window: self.initial_window,
                id,
            }
            .encode(),
        ));
        self.schedule();
    }

    /// The send turn takes the next thing to send; `None` ends it (and a
    /// later queued item asks for a new one).
    pub(crate) fn next_out(&mut self) -> Option<Out> {
        self.inflight = false;
        if self.may_send_record()
            && !self.eof_in
            && let Some(increment) = self.recv.take_grant()
        {
            self.inflight = true;
            return Some(Out::Ext(
                EXT_CONTROL,
                Control::Window { increment }.encode(),
            ));
        }
        self.recv.drop_grant();
        match self.out.pop_front() {
            Some(item) => {
                if let Out::Data(b) | Out::Ext(EXT_ERROR, b) = &item {
                    self.out_bytes = self.out_bytes.saturating_sub(b.len());
                    // A writer may wait for queue room rather than credit
                    // (the remote granted more than our queue bound).
                    self.wake(Wake::WRITE);
                }
                self.inflight = true;
                Some(item)
            }
            None => {
                self.scheduled = false;
                self.wake(Wake::FLUSH);
                None
            }
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod pair;
#[cfg(test)]
mod tests;
