//! The only module that names `russh`: session setup in both roles
//! (`session`), the event handlers that feed a [`SessionEvents`]
//! (`handler`, one forwarding body per event for both roles), and
//! Duplex-typed adapters over russh's channel and session handles
//! (`channel`). Nothing outside this module names russh or its errors.
//!
//! Data is taken from russh's `Handler` callbacks, never from its per-channel
//! queues: we drop each channel's read half at once, so russh's bounded
//! queue for it is closed and can never fill up and stall the session loop
//! (BRIEF section 3). Our own buffers and credit take over from there.

mod channel;
mod config;
mod events;
pub(crate) mod handler;
pub(crate) mod keys;
mod session;
pub(crate) mod trust;

pub(crate) use channel::{IncomingOpen, NotNow, OpenFailed, OpenReply, SendFailed, WriteHalf};
pub(crate) use config::SshConfigs;
pub(crate) use events::SessionEvents;
pub(crate) use session::{HandshakeError, SessionHandle, client_handshake, server_start};
