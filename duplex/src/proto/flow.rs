//! Per-channel flow control, without I/O and without a clock.
//!
//! A channel's receiver grants its remote credit; the remote sends only
//! within it (PROTOCOL.md section 4). [`RecvWindow`] is the receiver's
//! ledger: what the remote may still send, what the application consumed
//! and was not granted back yet, and the window, which doubles while the
//! reader keeps up (up to `Config::max_channel_window`, and only as far as
//! the memory budgets allow: the caller reserves the growth, see
//! [`super::budget`]). [`SendCredit`] is the sender's.
//!
//! The invariant, checked by the property tests below: the remote's
//! credit, the bytes received and not consumed, and the bytes consumed and
//! not granted back always add up to the window. So a remote that keeps
//! within its credit never makes us hold more than the window.

/// The receiving side of one channel's flow control.
#[derive(Debug, Clone)]
pub(crate) struct RecvWindow {
    /// Bytes the remote may still send (granted, not yet received).
    credit: u64,
    /// Bytes the application consumed that we have not granted back yet.
    unreported: u64,
    /// The window now: the initial one, grown while the reader keeps up.
    window: u64,
    /// The most it may grow to.
    max_window: u64,
    /// Bytes the application read since the window last grew (or since the
    /// channel opened).
    moved: u64,
    /// The application read a window's worth and then waited for more:
    /// the window, not the reader, limits the channel.
    starved: bool,
    /// Granted and not yet sent to the remote (in `WINDOW` records, or as
    /// SSH window for a plain client).
    grant: u64,
}

/// The remote sent more than its credit: a protocol violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overrun;

impl RecvWindow {
    /// A window of `window` bytes (growing to `max_window`), of which the
    /// remote holds `credit` already (the whole window for a channel we
    /// opened, whose open announced it; nothing for one we accept, until
    /// [`open`](Self::open)).
    pub(crate) fn new(credit: u64, window: u64, max_window: u64) -> Self {
        Self {
            credit,
            unreported: 0,
            window,
            max_window: max_window.max(window),
            moved: 0,
            starved: false,
            grant: 0,
        }
    }

    /// Gives the remote the whole window (in the `ACCEPT` record, so not a
    /// grant to send).
    pub(crate) fn open(&mut self) {
        self.credit = self.credit.saturating_add(self.window);
    }

    /// Bytes the remote may still send.
    #[cfg(test)]
    pub(crate) fn credit(&self) -> u64 {
        self.credit
    }

    /// The window now.
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// Counts `n` received bytes against the remote's credit.
    pub(crate) fn charge(&mut self, n: u64) -> Result<(), Overrun> {
        self.credit = self.credit.checked_sub(n).ok_or(Overrun)?;
        Ok(())
    }

    /// The application read `n` bytes (they count towards growing the
    /// window).
    pub(crate) fn consumed(&mut self, n: u64) {
        self.unreported += n;
        self.moved = self.moved.saturating_add(n);
    }

    /// `n` received bytes are no longer held (discarded, or part of an
    /// error frame granted back early), without counting as reading.
    pub(crate) fn released(&mut self, n: u64) {
        self.unreported += n;
    }

    /// The reader found nothing to read and waits: if it read a whole
    /// window since the last growth, the window is what holds it back.
    pub(crate) fn reader_waits(&mut self) {
        if self.moved >= self.window {
            self.starved = true;
        }
    }

    /// Grants back what was consumed once it adds up to a quarter of the
    /// window, so a sender never stalls while its reader keeps up; then, if
    /// the reader was starved, doubles the window (up to `max_window`) as
    /// far as `reserve(extra)` says the memory budgets allow. Returns the
    /// bytes newly granted (0: nothing to send).
    pub(crate) fn maybe_grant(&mut self, reserve: impl FnOnce(u64) -> bool) -> u64 {
        if self.unreported < self.window / 4 {
            return 0;
        }
        let n = self.unreported.min(u64::from(u32::MAX));
        self.unreported -= n;
        self.credit += n;
        self.grant += n;
        let mut granted = n;
        if std::mem::take(&mut self.starved) {
            granted += self.grow(reserve);
        }
        granted
    }

    /// Doubles the window if `reserve` allows; returns the growth.
    fn grow(&mut self, reserve: impl FnOnce(u64) -> bool) -> u64 {
        self.moved = 0;
        let extra = self.window.min(self.max_window.saturating_sub(self.window));
        if extra == 0 || !reserve(extra) {
            return 0;
        }
        self.window += extra;
        self.credit += extra;
        self.grant += extra;
        extra
    }

    /// Whether a grant waits to be sent.
    pub(crate) fn has_grant(&self) -> bool {
        self.grant > 0
    }

    /// Takes the next grant to send (at most what one `WINDOW` record or
    /// SSH window adjustment carries).
    pub(crate) fn take_grant(&mut self) -> Option<u32> {
        if self.grant == 0 {
            return None;
        }
        let n = self.grant.min(u64::from(u32::MAX));
        self.grant -= n;
        Some(n as u32)
    }

    /// Forgets the grant still to send (the remote finished: it needs no
    /// more credit).
    pub(crate) fn drop_grant(&mut self) {
        self.grant = 0;
    }
}

/// The sending side of one channel's flow control: the credit the remote
/// granted us.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SendCredit(u64);

impl SendCredit {
    /// Unlimited (a plain SSH client's channel: SSH's own window holds the
    /// sender back).
    pub(crate) const UNLIMITED: SendCredit = SendCredit(u64::MAX);

    /// The remote granted `n` more bytes (its open, `ACCEPT` or `WINDOW`).
    pub(crate) fn add(&mut self, n: u32) {
        self.0 = self.0.saturating_add(u64::from(n));
    }

    /// Bytes we may send now.
    pub(crate) fn get(self) -> u64 {
        self.0
    }

    /// How much of a write may be queued: the credit, but never more queued
    /// in all than `cap` (with `queued` queued already), so a remote that
    /// grants credit and withholds SSH window cannot make us queue without
    /// bound.
    pub(crate) fn room(self, queued: u64, cap: u64) -> u64 {
        self.0.min(cap.saturating_sub(queued))
    }

    /// `n` bytes were queued to send (at most [`get`](Self::get)).
    pub(crate) fn spend(&mut self, n: u64) {
        self.0 = self.0.saturating_sub(n);
    }
}

/// The credit of error frames.
///
/// An error frame's bytes are granted back as they arrive while the frame
/// is unfinished (the assembler bounds them by `max_frame_len`, and a frame
/// larger than the window could never finish otherwise); the rest of a
/// frame is granted back when the application reads it. `owed` splits one
/// finished frame: given the bytes of it granted while it was partial, what
/// is still owed at its read.
pub(crate) fn error_frame_owed(total: u64, pregranted: u64) -> u64 {
    total - pregranted.min(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W: u64 = 128 << 10;
    const MAX: u64 = 4 << 20;

    #[test]
    fn grants_after_a_quarter_window() {
        let mut r = RecvWindow::new(W, W, W);
        r.charge(W / 4 - 1).unwrap();
        r.consumed(W / 4 - 1);
        assert_eq!(r.maybe_grant(|_| true), 0);
        r.charge(1).unwrap();
        r.consumed(1);
        assert_eq!(r.maybe_grant(|_| true), W / 4);
        assert_eq!(r.take_grant(), Some((W / 4) as u32));
        assert_eq!(r.take_grant(), None);
        assert_eq!(r.credit(), W);
    }

    #[test]
    fn an_overrun_is_refused_and_changes_nothing() {
        let mut r = RecvWindow::new(10, W, W);
        assert_eq!(r.charge(11), Err(Overrun));
        assert_eq!(r.credit(), 10);
        assert_eq!(r.charge(10), Ok(()));
        assert_eq!(r.charge(1), Err(Overrun));
    }

    #[test]
    fn a_starved_reader_doubles_the_window_once_reserved() {
        let mut r = RecvWindow::new(W, W, MAX);
        r.charge(W).unwrap();
        r.consumed(W);
        r.reader_waits();
        let mut asked = None;
        let granted = r.maybe_grant(|extra| {
            asked = Some(extra);
            true
        });
        assert_eq!(asked, Some(W));
        assert_eq!(granted, 2 * W);
        assert_eq!(r.window(), 2 * W);
        assert_eq!(r.credit(), 2 * W);
    }

    #[test]
    fn no_budget_no_growth() {
        let mut r = RecvWindow::new(W, W, MAX);
        r.charge(W).unwrap();
        r.consumed(W);
        r.reader_waits();
        assert_eq!(r.maybe_grant(|_| false), W);
        assert_eq!(r.window(), W);
    }

    #[test]
    fn growth_stops_at_the_maximum() {
        let mut r = RecvWindow::new(W, W, 3 * W);
        for _ in 0..4 {
            let w = r.window();
            r.charge(r.credit()).unwrap();
            r.consumed(w);
            r.reader_waits();
            r.maybe_grant(|_| true);
        }
        assert_eq!(r.window(), 3 * W);
    }

    #[test]
    fn a_reader_that_never_waited_does_not_grow_it() {
        let mut r = RecvWindow::new(W, W, MAX);
        for _ in 0..8 {
            r.charge(W / 2).unwrap();
            r.consumed(W / 2);
            r.maybe_grant(|_| true);
        }
        assert_eq!(r.window(), W);
    }

    #[test]
    fn send_credit_room_is_capped_by_the_queue() {
        let mut c = SendCredit::default();
        assert_eq!(c.room(0, 100), 0);
        c.add(1000);
        assert_eq!(c.room(0, 100), 100);
        assert_eq!(c.room(60, 100), 40);
        assert_eq!(c.room(200, 100), 0);
        c.spend(999);
        assert_eq!(c.room(0, 100), 1);
        c.add(u32::MAX);
        c.add(u32::MAX);
        assert_eq!(c.get(), 1 + 2 * u64::from(u32::MAX));
        assert_eq!(SendCredit::UNLIMITED.room(5, 10), 5);
    }

    /// What the application and the remote may do to a receive window.
    #[derive(Debug, Clone)]
    enum Op {
        /// The remote sends this share (per mille) of its credit.
        Send(u16),
        /// The application reads this share of what is buffered.
        Read(u16),
        /// The application discards this share of what is buffered.
        Discard(u16),
        /// The reader waits on an empty buffer.
        Wait,
        /// A grant is considered; the budget allows growth or not.
        Grant(bool),
        /// The grant is sent.
        Send2Remote,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u16..=1000).prop_map(Op::Send),
            (0u16..=1000).prop_map(Op::Read),
            (0u16..=1000).prop_map(Op::Discard),
            Just(Op::Wait),
            any::<bool>().prop_map(Op::Grant),
            Just(Op::Send2Remote),
        ]
    }

    fn share(of: u64, per_mille: u16) -> u64 {
        of * u64::from(per_mille) / 1000
    }

    proptest! {
        /// Grants never exceed the window: credit, buffered and unreported
        /// bytes add up to the window after every step; the window stays
        /// within its maximum and grows only by what the budget reserved;
        /// the remote's view of its credit (what was sent to it) is never
        /// more than ours.
        #[test]
        fn grants_never_exceed_the_window(
            window_kib in 1u64..512,
            growth in 1u64..8,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let window = window_kib << 10;
            let max = window << growth;
            let mut r = RecvWindow::new(window, window, max);
            let mut buffered = 0u64;
            let mut reserved = 0u64;
            let mut remote_credit = window;
            for op in ops {
                match op {
                    Op::Send(s) => {
                        let n = share(remote_credit, s);
                        prop_assert!(r.charge(n).is_ok());
                        remote_credit -= n;
                        buffered += n;
                    }
                    Op::Read(s) => {
                        let n = share(buffered, s);
                        buffered -= n;
                        r.consumed(n);
                    }
                    Op::Discard(s) => {
                        let n = share(buffered, s);
                        buffered -= n;
                        r.released(n);
                    }
                    Op::Wait => {
                        if buffered == 0 {
                            r.reader_waits();
                        }
                    }
                    Op::Grant(allow) => {
                        r.maybe_grant(|extra| {
                            if allow {
                                reserved += extra;
                            }
                            allow
                        });
                    }
                    Op::Send2Remote => {
                        while let Some(n) = r.take_grant() {
                            remote_credit += u64::from(n);
                        }
                    }
                }
                prop_assert_eq!(r.credit + buffered + r.unreported, r.window);
                prop_assert!(r.window <= max);
                prop_assert_eq!(r.window, window + reserved);
                prop_assert!(remote_credit <= r.credit);
                prop_assert!(r.charge(r.credit + 1).is_err());
            }
        }

        /// A reader that keeps reading is never left without credit: after
        /// it read everything and a grant was considered, less than a
        /// quarter window is held back.
        #[test]
        fn a_reader_that_keeps_up_is_never_stalled(
            window_kib in 1u64..512,
            sends in proptest::collection::vec(1u16..=1000, 1..100),
        ) {
            let window = window_kib << 10;
            let mut r = RecvWindow::new(window, window, window * 4);
            for s in sends {
                let n = share(r.credit(), s).max(1).min(r.credit());
                r.charge(n).unwrap();
                r.consumed(n);
                r.maybe_grant(|_| true);
                prop_assert!(r.unreported < r.window / 4);
                prop_assert!(r.credit() > r.window - r.window / 4 - 1);
                while r.take_grant().is_some() {}
            }
        }

        /// The credit of error frames, chunked any way on the wire: what is
        /// granted while a frame is partial and what it owes at its read
        /// sum to its size on the wire, for every frame.
        #[test]
        fn error_frame_pregrant_sums_to_the_frame(
            lens in proptest::collection::vec(0usize..3000, 1..20),
            cuts in proptest::collection::vec(1usize..5000, 1..60),
        ) {
            use crate::proto::frame::{self, Assembler, HEADER_LEN};
            let mut wire = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let body = vec![i as u8; *len];
                wire.extend_from_slice(&frame::encode(&body, 1 << 20).unwrap());
            }
            let mut asm = Assembler::new(1 << 20);
            let mut granted_early = 0u64;
            let mut owed = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < wire.len() {
                let n = (*cut.next().unwrap()).min(wire.len() - at);
                let chunk = &wire[at..at + n];
                at += n;
                let before = asm.partial_len() as u64;
                let frames = asm.push(chunk).unwrap();
                if frames.is_empty() {
                    granted_early += n as u64;
                    continue;
                }
                let mut pregranted = before;
                for f in frames {
                    let total = (f.len() + HEADER_LEN) as u64;
                    owed.push(error_frame_owed(total, pregranted));
                    pregranted = 0;
                }
                granted_early += asm.partial_len() as u64;
            }
            prop_assert_eq!(owed.len(), lens.len());
            prop_assert_eq!(granted_early + owed.iter().sum::<u64>(), wire.len() as u64);
            for (o, len) in owed.iter().zip(&lens) {
                prop_assert!(*o <= (len + HEADER_LEN) as u64);
            }
        }
    }
}
