//! The sending half of a channel's state machine: the application's writes
//! within the remote's credit and the queue bound, half-close and close,
//! control records, and the queue the send turn takes items from.

use std::task::Poll;

use bytes::Bytes;

use super::{Chan, Control, Kind, MAX_CHUNK, Out, Wake, WriteRefused};
use crate::proto::{EXT_CONTROL, EXT_ERROR};

impl<F: Clone> Chan<F> {
    /// Version 2: once both sides finished writing, nothing but the close
    /// is left to send (no credit is granted to a remote that finished),
    /// so SSH EOF goes now.
    pub(super) fn eof_both_ways(&mut self) {
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
    pub(super) fn may_send_record(&self) -> bool {
        !(self.close_out || self.close_in || (self.v2 && self.ssh_eof_out))
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

    /// This side finished its writing (EOF queued, or the channel closed
    /// or failed).
    pub(crate) fn eof_sent(&self) -> bool {
        self.eof_out || self.close_out || self.close_in || self.failed.is_some()
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

    /// Abandons the channel unfinished (the application aborted it, or
    /// dropped it before finishing its writing): what is queued still goes
    /// out, then, on version 3, an `ABORT` record with `reason`, then the
    /// close, with no EOF of either kind, so the remote reads an error, not
    /// an end of stream (PROTOCOL.md section 6.5). After our EOF there is
    /// nothing left to abort: the channel is only closed. This side's own
    /// handles fail with `local`. True when it closed the channel: the
    /// driver ends the nested channels.
    pub(crate) fn abort(&mut self, reason: String, local: F) -> bool {
        if self.close_out || self.close_in || self.failed.is_some() {
            return false;
        }
        if self.eof_out {
            return self.send_close();
        }
        // Before the answer to an open nothing but the answer may be sent
        // by the acceptor, and the opener's close says enough.
        if self.abort_record && self.established {
            self.out
                .push_back(Out::Ext(EXT_CONTROL, Control::Abort { reason }.encode()));
        }
        self.failed = Some(local);
        self.eof_out = true;
        self.ssh_eof_out = true;
        self.close_out = true;
        self.out.push_back(Out::Close);
        self.schedule();
        self.wake(Wake::ALL);
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
        // Accepted already (at once, by the session): no `REJECT` may
        // follow an `ACCEPT`, so the channel is only closed.
        if !self.established {
            self.out
                .push_back(Out::Ext(EXT_CONTROL, Control::Reject { reason }.encode()));
        }
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
        // Once: a channel the session accepted at once is accepted again
        // when the application takes it.
        if self.established || self.close_in || self.failed.is_some() {
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
