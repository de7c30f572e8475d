//! The wire protocol, without I/O: everything here turns bytes into values and
//! back, so it can be unit-tested, property-tested and fuzzed on its own.
//! `docs/PROTOCOL.md` is the prose description of the same rules.

pub(crate) mod budget;
pub(crate) mod chan;
pub(crate) mod control;
pub(crate) mod flow;
pub(crate) mod frame;
pub(crate) mod headers;
pub(crate) mod hello;
pub(crate) mod mux;
pub(crate) mod nest;
pub(crate) mod open;
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod pair;
pub(crate) mod service;

/// Our SSH channel number for a channel: how the connection's table
/// ([`mux::Mux`]) and its nesting tree name it. The remote numbers the same
/// channel on its own (see `nest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChannelId(pub(crate) u32);

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Extended-data type code of error frames (SSH's "stderr").
pub(crate) const EXT_ERROR: u32 = 1;
/// Extended-data type code of Duplex control records.
pub(crate) const EXT_CONTROL: u32 = 0x6475_7801; // "dux\x01"

/// The service name of the hello channel a connecting peer opens first.
pub(crate) const HELLO_SERVICE: &str = "@hello";

/// Limits applied to remote input by the protocol decoders. Part of
/// [`Config`](crate::Config).
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_header_count: usize,
    pub(crate) max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_count: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}
