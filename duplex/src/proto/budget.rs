//! Memory budgets for what remotes may make us buffer.
//!
//! Every channel holds a reservation the size of the receive window it
//! granted (the most its remote may send before our application reads),
//! taken when the channel is created and given back when it ends. A
//! reservation is taken from three budgets at once: the connection's
//! (`Config::max_connection_buffer`), the remote peer's across all its
//! connections, keyed by its key (`Config::max_peer_buffer`), and the
//! whole local peer's (`Config::max_total_buffer`). So no connection, no
//! key and no number of keys can make us hold more than its budget, and a
//! burst that one remote causes leaves room for the others.
//!
//! No I/O, no clock: counters only, tested below.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which budget: the connection's, the remote key's or the whole peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Connection,
    Peer,
    Total,
}

/// Bytes reserved against a limit.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicU64,
    limit: u64,
    level: Level,
}

impl Budget {
    pub(crate) fn new(limit: u64, level: Level) -> Arc<Self> {
        Arc::new(Budget {
            used: AtomicU64::new(0),
            limit,
            level,
        })
    }

    /// Bytes reserved now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Adds `bytes` if the total stays within `cap`.
    fn take(&self, bytes: u64, cap: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= cap)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which budget refused a reservation, with what it held and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) level: Level,
    pub(crate) used: u64,
    pub(crate) limit: u64,
}

impl Refused {
    /// Which budget is spent and the `Config` knob that raises it, for the
    /// refusal of an open: `me` is our peer name; `remote` names the remote
    /// (asked for only when its own budget is the one spent).
    pub(crate) fn describe(&self, me: &str, remote: impl FnOnce() -> String) -> String {
        let (used, limit) = (self.used, self.limit);
        match self.level {
            Level::Connection => format!(
                "{me}'s receive buffer for this connection is fully reserved ({used} of {limit} bytes, by the windows of channels already open; Config::max_connection_buffer)"
            ),
            Level::Peer => format!(
                "{me}'s receive buffer for {} is fully reserved ({used} of {limit} bytes, by the windows of its channels over all its connections; Config::max_peer_buffer)",
                remote()
            ),
            Level::Total => format!(
                "{me}'s receive buffer is fully reserved ({used} of {limit} bytes, by the windows of channels over all its connections; Config::max_total_buffer)"
            ),
        }
    }
}

/// Reserves `bytes` from every budget in `levels`, each only while it stays
/// within `share` of its limit (1 for a new channel; 1/2 for a window's
/// growth, so half of each budget is kept for channels yet to open). All
/// or nothing.
/// A channel's budgets (no allocation: at most one of each level).
pub(crate) type Levels = [Option<Arc<Budget>>; 3];

pub(crate) fn reserve(levels: Levels, bytes: u64, share: Share) -> Result<Reservation, Refused> {
    let present = || levels.iter().flatten();
    for (i, b) in present().enumerate() {
        if !b.take(bytes, share.of(b.limit)) {
            for taken in present().take(i) {
                taken.give(bytes);
            }
            return Err(Refused {
                level: b.level,
                used: b.used(),
                limit: b.limit,
            });
        }
    }
    Ok(Reservation { levels, bytes })
}

/// How much of each budget a reservation may take it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    All,
    Half,
}

impl Share {
    fn of(self, limit: u64) -> u64 {
        match self {
            Share::All => limit,
            Share::Half => limit / 2,
        }
    }
}

/// Bytes held in some budgets, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    levels: Levels,
    bytes: u64,
}

impl Reservation {
    /// Takes over `other`'s bytes (released together). Both come from the
    /// same budgets (one channel's reservations always do); bytes from
    /// other budgets are given back at once instead.
    pub(crate) fn absorb(&mut self, mut other: Reservation) {
        let same = self
            .levels
            .iter()
            .zip(&other.levels)
            .all(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            });
        debug_assert!(same, "a reservation absorbed one from other budgets");
        if same {
            self.bytes += other.bytes;
            other.bytes = 0;
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for b in self.levels.iter().flatten() {
            b.give(self.bytes);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn all_or_nothing_and_released_on_drop() {
        let conn = Budget::new(100, Level::Connection);
        let peer = Budget::new(150, Level::Peer);
        let total = Budget::new(1000, Level::Total);
        let levels = || [Some(conn.clone()), Some(peer.clone()), Some(total.clone())];
        let a = reserve(levels(), 60, Share::All).unwrap();
        // The connection refuses: nothing is taken from the others.
        let e = reserve(levels(), 60, Share::All).unwrap_err();
        assert_eq!(
            e,
            Refused {
                level: Level::Connection,
                used: 60,
                limit: 100
            }
        );
        assert_eq!((conn.used(), peer.used(), total.used()), (60, 60, 60));
        // A second connection of the same remote: its peer budget refuses.
        let conn2 = Budget::new(100, Level::Connection);
        let levels2 = || [Some(conn2.clone()), Some(peer.clone()), Some(total.clone())];
        let b = reserve(levels2(), 50, Share::All).unwrap();
        let e = reserve(levels2(), 50, Share::All).unwrap_err();
        assert_eq!(e.level, Level::Peer);
        assert_eq!((conn2.used(), peer.used(), total.used()), (50, 110, 110));
        drop(a);
        drop(b);
        assert_eq!(
            (conn.used(), conn2.used(), peer.used(), total.used()),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn growth_keeps_half_for_new_channels() {
        let conn = Budget::new(100, Level::Connection);
        let levels = || [Some(conn.clone()), None, None];
        let mut a = reserve(levels(), 40, Share::All).unwrap();
        assert!(reserve(levels(), 20, Share::Half).is_err());
        let g = reserve(levels(), 10, Share::Half).unwrap();
        a.absorb(g);
        assert_eq!(a.bytes(), 50);
        assert_eq!(conn.used(), 50);
        // New channels may still take the rest.
        let c = reserve(levels(), 50, Share::All).unwrap();
        drop((a, c));
        assert_eq!(conn.used(), 0);
    }
}
