//! How a channel open names its parent (nested channels).
//!
//! Each side numbers channels on its own (its SSH channel numbers), and
//! neither side learns the other's numbers from russh. So an open names its
//! parent by a number in whichever of the two numberings the opener knows:
//!
//! - the opener opened the parent itself: it learned the acceptor's number
//!   from the parent's `ACCEPT` record, and names the parent by that number
//!   ([`ParentRef::Yours`], the receiver's own numbering);
//! - the opener accepted the parent: it names the parent by its own number
//!   ([`ParentRef::Mine`]), which the receiver learned from the `ACCEPT`
//!   record it received.
//!
//! On the wire (a `direct-tcpip` open), the originator port carries the
//! number plus one (0 means a top-level channel) and the port to connect
//! says whose number it is: 1 for the receiver's, 2 for the sender's.

/// Port-to-connect value: the parent number is the receiver's own (also the
/// value every top-level open sends).
pub(crate) const REF_YOURS: u32 = 1;
/// Port-to-connect value: the parent number is the sender's own.
pub(crate) const REF_MINE: u32 = 2;

/// The `(port to connect, originator port)` pair of a top-level open.
pub(crate) const TOP_LEVEL: (u32, u32) = (REF_YOURS, 0);

/// The parent of a nested channel, as named in its open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParentRef {
    /// The receiver's own number for the parent channel.
    Yours(u32),
    /// The sender's own number for the parent channel.
    Mine(u32),
}

/// A parent reference that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown parent reference kind {0} (expected 1 or 2)")]
pub(crate) struct ParentRefError(pub(crate) u32);

impl ParentRef {
    /// The `(port to connect, originator port)` pair of an open; `None` when
    /// the number cannot be carried (it is `u32::MAX`).
    pub(crate) fn encode(parent: Option<ParentRef>) -> Option<(u32, u32)> {
        match parent {
            None => Some(TOP_LEVEL),
            Some(ParentRef::Yours(n)) => Some((REF_YOURS, n.checked_add(1)?)),
            Some(ParentRef::Mine(n)) => Some((REF_MINE, n.checked_add(1)?)),
        }
    }

    /// Reads the parent of an open from a Duplex peer.
    pub(crate) fn decode(
        port_to_connect: u32,
        originator_port: u32,
    ) -> Result<Option<ParentRef>, ParentRefError> {
        let Some(n) = originator_port.checked_sub(1) else {
            return Ok(None); // top level; the port is ignored (ssh -W sends 1)
        };
        match port_to_connect {
            REF_YOURS => Ok(Some(ParentRef::Yours(n))),
            REF_MINE => Ok(Some(ParentRef::Mine(n))),
            other => Err(ParentRefError(other)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn top_level_ignores_the_port() {
        assert_eq!(ParentRef::decode(1, 0), Ok(None));
        assert_eq!(ParentRef::decode(22, 0), Ok(None));
        assert_eq!(ParentRef::encode(None), Some((1, 0)));
    }

    #[test]
    fn golden() {
        assert_eq!(ParentRef::encode(Some(ParentRef::Yours(0))), Some((1, 1)));
        assert_eq!(ParentRef::encode(Some(ParentRef::Mine(6))), Some((2, 7)));
        assert_eq!(ParentRef::encode(Some(ParentRef::Mine(u32::MAX))), None);
        assert_eq!(ParentRef::decode(3, 5), Err(ParentRefError(3)));
    }

    proptest! {
        #[test]
        fn round_trip(n in 0..u32::MAX, mine in any::<bool>()) {
            let r = if mine { ParentRef::Mine(n) } else { ParentRef::Yours(n) };
            let (port, orig) = ParentRef::encode(Some(r)).unwrap();
            prop_assert_eq!(ParentRef::decode(port, orig), Ok(Some(r)));
        }

        #[test]
        fn decode_never_panics(port in any::<u32>(), orig in any::<u32>()) {
            let _ = ParentRef::decode(port, orig);
        }
    }
}
