//! # Duplex: peers and channels over SSH
//!
//! Duplex gives applications secure, multiplexed, bidirectional channels
//! between **peers**. A [`Peer`] is an SSH server and an SSH client with one
//! key pair: it can [`bind`](Peer::bind) and [`connect`](Peer::connect) to
//! many endpoints at once, and once two peers are connected *either side*
//! opens channels to the other and either side serves them, whoever dialled.
//!
//! A [`Channel`] carries a service name and [`Headers`], a byte stream
//! (`AsyncRead`/`AsyncWrite`), length-prefixed message frames on that stream,
//! a separate stream of error frames, half-close, trailers, and channels
//! nested inside it ([`Children`]) whose lifetime is bound to it. Flow
//! control is per channel and driven by the reader: a channel whose
//! application stops reading stops its sender and nothing else, and the
//! memory it holds is bounded by [`Config::channel_window`].
//!
//! Because Duplex is SSH, stock tools reach byte-stream services:
//! `ssh -W SERVICE:1 NAME@HOST` opens a channel to `SERVICE`. The wire
//! mapping is in `docs/PROTOCOL.md`.
//!
//! ## Layout
//! Imports run down this list (see `CONTRIBUTING.md`):
//! - [`peer`]: `Peer`, its builder and the connection lifecycle, split by
//!   role: `registry` (the peer's tables of connections, listeners and
//!   dialled endpoints, and the accept queue's receiver), `dial`
//!   (connecting and re-dialling), `listen` (accept loops, the handshake
//!   bound, serving) and `acceptor` (routing by service: `Acceptor`,
//!   `Dispatch`, `accept`);
//! - [`channel`]: `Channel`, its halves, `IncomingChannel`, `Children`
//!   (nested channels), `join`/`splice`: thin handles over the driver's
//!   channel;
//! - [`plugin`]: plugin processes over a child's stdin/stdout, host and
//!   plugin sides;
//! - `conn`: the driver. One connection, split by concern: its state and
//!   channel table (`mod`: a `proto::mux::Mux` under one lock, never held
//!   with a channel's), what the peer shares with it and the
//!   `Registry` it reports to (`host`), opens from the remote (`accept`),
//!   opens from this side (`open`), the send turns and outbox task
//!   (`outbox`), the `ssh::SessionEvents` both roles call (`session`);
//!   one channel's driver (`chan`: its `proto::chan` state under a lock,
//!   the wakers of its handles, its send turns; `chan/nest` its nested
//!   channels' accept queue and the cascade through the mux's tree,
//!   `chan/answer` the answer to an incoming
//!   open), what is known of a channel (`meta`, [`ChannelMeta`]), and the
//!   channels it holds before the application does (`owned`: one we
//!   opened, closed if dropped; one offered, rejected if dropped; the
//!   `Sink` an acceptor's channels go to), which acceptor takes a channel
//!   (`routes`, pure: the rule of PROTOCOL.md 3.3);
//!   `transport`: the decoupled byte stream (small writes corked until the
//!   session runs out of input, one system call per wake-up) and its send
//!   backlog;
//!   `pending`: the accept timeout, which rejects channels the application
//!   left waiting ([`Config::accept_timeout`]);
//! - `ssh`: the only module that talks to `russh` (a patched 0.65.1 in
//!   `vendor/russh`, its changes listed in `DUPLEX-PATCHES.md`): session setup
//!   (`session`), the handlers of both roles (`handler`), which forward
//!   every event to a `SessionEvents`, Duplex-typed channel adapters
//!   (`channel`), algorithms (`config`), keys and trust;
//! - `proto`: the protocol without I/O and without a clock: the wire
//!   formats (headers, frames, control records, the hello and its version
//!   negotiation, service names, parent references in `nest`), flow control
//!   (`flow`: receive windows, grants, growth; `budget`: the memory
//!   budgets), the verdict on incoming opens and hellos (`open`), one
//!   channel's state machine (`chan`: bytes and events in, records and
//!   `Effects` out, with a pair harness that drives two of them back to
//!   back), a connection's channels (`mux`: the table by `ChannelId`, the
//!   remote's numbers for parent references, the nesting tree and its
//!   cascades, the pending counts), and a connection-level pair harness
//!   (`pair`: two `Mux`es of channels back to back, opens judged by
//!   `open`'s rules; tests and the `mux_pair` fuzz target);
//! - `events` ([`PeerEvent`], [`PeerEvents`], [`PeerInfo`]): connections
//!   coming and going;
//! - [`config`] ([`Config`], [`Backoff`]), [`error`], [`endpoint`];
//! - `fault` (feature `fault-injection`): a TCP proxy that breaks
//!   connections on command, for tests.
//!
//! ## Example
//! See [`Peer`] for two peers talking over TCP, and `examples/echo` for two
//! processes.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod channel;
pub mod config;
mod conn;
pub mod endpoint;
pub mod error;
mod events;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[allow(clippy::panic, clippy::indexing_slicing)] // fuzz assertions
pub mod fuzzing;
mod lograte;
pub mod peer;
mod pending;
pub mod plugin;
mod proto;
mod ssh;
mod transport;

pub use channel::{
    Channel, ChannelEnd, ChannelMeta, ChannelReader, ChannelWriter, Children, ErrorWriter,
    IncomingChannel, JoinError, JoinStats, ReadEvent, SpliceError,
};
pub use config::{Backoff, Config, ConfigError};
pub use endpoint::{Endpoint, EndpointError};
pub use error::{BindError, ChannelError, ClaimError, ConnectError, OpenError};
pub use events::{PeerEvent, PeerEvents};
pub use peer::{
    AcceptAtOnce, Acceptor, Direction, Dispatch, IntoEndpoint, NameError, Peer, PeerBuilder,
    PeerInfo,
};
pub use proto::control::ControlError;
pub use proto::frame::FrameError;
pub use proto::headers::{HeaderError, Headers};
pub use proto::service::{ServiceName, ServiceNameError};
pub use ssh::keys::{Fingerprint, Identity, KeyError, PublicKey};
pub use ssh::trust::{
    AuthorizedKey, AuthorizedKeys, BoundNameError, HostKeyError, KnownHosts, NameBindingError,
};
