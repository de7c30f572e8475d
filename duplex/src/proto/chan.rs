//! One channel's protocol vocabulary, without I/O: the kinds of channel,
//! what a channel queues to send, how its open ended, and what delivering
//! the remote's bytes asks of the caller. (The channel's state machine is
//! still in `channel/state.rs`, beside its wakers.)

use bytes::Bytes;

use super::headers::Headers;

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
