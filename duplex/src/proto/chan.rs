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
//! whether a send turn is needed. The driver (`conn/chan.rs`) keeps the
//! wakers, takes its lock around each call, and acts on the effects once
//! it has let go of the lock.
//!
//! What the machine needs from the connection (the decoders' limits, the
//! hello, the memory budget, a plain client's SSH window) it asks through
//! [`Env`]. A failure is the driver's own error type `F`: the machine
//! stores it and hands clones back to readers and writers.

use std::borrow::Cow;
use std::collections::VecDeque;

use bytes::Bytes;

use super::budget::Reservation;
use super::control::{self, Control};
use super::flow::{self, RecvWindow, SendCredit};
use super::frame::Assembler;
use super::headers::Headers;
use super::{EXT_CONTROL, Limits};

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
    /// `ABORT`: the remote abandons the channel unfinished, for this
    /// reason; its close follows. The records after it were not acted on.
    pub(crate) aborted: Option<String>,
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
    /// Protocol version 3 (`proto::hello::Version::abort_record`): an
    /// aborted channel says why in an `ABORT` record.
    pub(crate) abort_record: bool,
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
    abort_record: bool,
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
    /// The remote finished its streams (an `EOF` record or SSH EOF), as
    /// opposed to closing or aborting the channel unfinished.
    finished_in: bool,
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
            abort_record: spec.abort_record && spec.kind == Kind::Duplex,
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
            finished_in: false,
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

    /// Why no more channels can be nested in this one, if so: its failure,
    /// or which side closed it.
    pub(crate) fn closed_reason(&self) -> Option<String>
    where
        F: std::fmt::Display,
    {
        if let Some(e) = &self.failed {
            return Some(e.to_string());
        }
        if self.close_in {
            return Some("the parent was closed by the remote peer".into());
        }
        if self.close_out {
            return Some("the parent was closed on this side".into());
        }
        None
    }

    /// The receive window now (it grows while the reader keeps up).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn window(&self) -> u64 {
        self.recv.window()
    }

    /// Nothing is queued or being sent.
    pub(crate) fn is_flushed(&self) -> bool {
        (self.out.is_empty() && !self.inflight && !self.scheduled)
            || self.failed.is_some()
            || self.close_in
    }

    /// with our close), or we learned it will never open. The driver ends
    /// the nested channels.
    ///
    /// True when the remote ended an established Duplex channel without
    /// finishing its streams (no `EOF` record or SSH EOF before its close):
    /// it aborted the channel (PROTOCOL.md section 6.5), and the driver
    /// fails the channel so that readers see an error rather than an end of
    /// stream. Not when this side closed first (the remote's close is the
    /// answer) or the channel already failed.
    pub(crate) fn on_close(&mut self) -> bool {
        let aborted = self.kind == Kind::Duplex
            && self.established
            && !self.finished_in
            && !self.close_out
            && self.failed.is_none();
        self.close_in = true;
        self.eof_in = true;
        self.close_out = true; // the SSH layer replied for us
        self.out.clear();
        self.out_bytes = 0;
        self.wake(Wake::ALL);
        aborted
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
}

mod recv;
mod send;

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod pair;
#[cfg(test)]
mod tests;
