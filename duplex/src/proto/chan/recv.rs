//! The receiving half of a channel's state machine: what the remote sends
//! (data, error frames, control records, EOF) checked against the state and
//! the credit we granted, and the application's reads, which grant the
//! credit back.

use std::task::Poll;

use bytes::{Buf, Bytes};

use super::flow;
use super::{Chan, Control, Env, Headers, Kind, OpenPhase, Told, Violation, Wake};
use crate::proto::frame::{FrameError, HEADER_LEN};
use crate::proto::{EXT_CONTROL, EXT_ERROR};

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
            .map_err(|e| Violation::from(crate::error::full_text(&e)))?;
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
                Control::Abort { .. } if !self.abort_record => {
                    Some("sent an ABORT record on a connection of a version before 3")
                }
                Control::Eof if self.eof_in => Some("sent EOF twice"),
                Control::Abort { .. } if self.eof_in => Some("sent ABORT after its EOF"),
                Control::Window { .. }
                | Control::Trailers { .. }
                | Control::Eof
                | Control::Abort { .. }
                    if self.unanswered() =>
                {
                    Some(
                        "sent WINDOW, TRAILERS, EOF or ABORT before answering the open with ACCEPT",
                    )
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
                // After our close there is nothing left to end: the remote
                // had not seen it (say, our REJECT of its nested open, whose
                // parent it closed meanwhile). Not a PARENT_CLOSED to check.
                Control::ParentClosed { .. } if self.close_out => {}
                Control::ParentClosed { reason } => told.parent_closed = Some(reason),
                Control::Eof => {
                    self.eof_in = true;
                    self.finished_in = true;
                    eof = true;
                }
                Control::ProtocolError { reason } => {
                    told.reported = Some(reason);
                    return Ok(told); // the driver fails the channel; its close follows
                }
                Control::Abort { reason } => {
                    told.aborted = Some(reason);
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
        if !self.close_in && self.failed.is_none() {
            self.finished_in = true;
        }
        self.eof_in = true;
        self.wake(Wake::READERS);
        self.eof_both_ways();
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
    ///
    /// A remote that aborted the channel sent no trailers that count: the
    /// channel's failure is the answer.
    pub(crate) fn poll_trailers(&self) -> Poll<Result<Headers, F>> {
        if self.finished_in {
            return Poll::Ready(Ok(self.trailers.clone().unwrap_or_default()));
        }
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if self.eof_in || self.close_in {
            return Poll::Ready(Ok(self.trailers.clone().unwrap_or_default()));
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
    pub(super) fn maybe_grant(&mut self, env: &impl Env) {
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
}
