//! Logging of events a remote can cause at will (refused connections,
//! channels and keys, ended handshakes): the first of a kind is logged at
//! once, then at most one per interval, with a count of those left out, so
//! a flood can neither fill the log nor hide from it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of event is logged at most.
const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of event.
#[derive(Debug, Default)]
pub(crate) struct Every {
    /// When one was last logged, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    /// Whether this event is to be logged: `Some(n)` with the number left
    /// out since the last one logged, or `None` to leave it out.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.0 {
            Some(at) if now.duration_since(at) < INTERVAL => {
                st.1 += 1;
                None
            }
            _ => {
                st.0 = Some(now);
                Some(std::mem::take(&mut st.1))
            }
        }
    }
}

/// The kinds of event a peer logs this way.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Unfinished handshakes ended to make room.
    pub(crate) evicted: Every,
    /// Connections refused by a full listener.
    pub(crate) connections: Every,
    /// Keys (or names) refused at authentication.
    pub(crate) keys: Every,
    /// Channel opens refused on a limit.
    pub(crate) opens: Every,
}

/// A suffix for a logged event: how many like it were left out before it.
pub(crate) fn left_out(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more like it since the last one logged)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn first_is_logged_then_counted() {
        let e = Every::default();
        assert_eq!(e.allow(), Some(0));
        assert_eq!(e.allow(), None);
        assert_eq!(e.allow(), None);
        // Pretend the interval passed.
        e.state.lock().unwrap().0 = Some(Instant::now() - INTERVAL);
        assert_eq!(e.allow(), Some(2));
        assert_eq!(left_out(2), " (2 more like it since the last one logged)");
        assert_eq!(left_out(0), "");
    }
}
