//! # duplex-rpc: typed calls over Duplex channels
//!
//! Remote procedure calls between [`duplex`] peers, in both directions over
//! one connection: whichever peer dialled, either side can serve methods
//! and either side can call them, and a handler can call back into its
//! caller while it serves it.
//!
//! - A method name (`Calc.Add`) is the service name of a channel; each call
//!   is one channel, so calls are independent, flow-controlled and
//!   cancellable on their own.
//! - Calls are unary ([`Client::call`]), server-streaming
//!   ([`Client::server_stream`]), client-streaming
//!   ([`Client::client_stream`]), bidirectional ([`Client::bidi`]), or raw
//!   (the handler takes the [`duplex::Channel`]).
//! - Values are encoded by a [`Codec`](codec::Codec): msgpack by default,
//!   JSON too; the caller names its codec in a header, so one server
//!   serves callers using different codecs at once.
//! - A failed call ends with a [`Status`] (code, message, details); the
//!   caller gets an [`RpcError`] that tells a remote status from an
//!   unknown method, a codec failure, a transport failure, a deadline and
//!   a cancellation.
//! - Deadlines travel with the call; the server cancels the handler when
//!   one passes, and when the caller drops the call.
//! - Limits: calls in flight per server (the excess is answered at once
//!   with `RESOURCE_EXHAUSTED`), message size (checked before anything is
//!   allocated), concurrent calls per client.
//!
//! ## Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use duplex::{AuthorizedKeys, Identity, KnownHosts, Peer};
//! use duplex_rpc::{Client, CallContext, Router, Server, Status};
//!
//! // Two peers that trust each other's keys.
//! let (ka, kb) = (Identity::generate(), Identity::generate());
//! let mk = |name: &str, me: &Identity, other: &Identity| {
//!     let mut trust = AuthorizedKeys::new();
//!     trust.add(other.public_key());
//!     let mut known = KnownHosts::new();
//!     known.pin(other.public_key());
//!     Peer::builder().name(name).identity(me.clone())
//!         .authorized_keys(trust).known_hosts(known).build()
//! };
//! let (server_peer, client_peer) = (mk("calc", &ka, &kb)?, mk("user", &kb, &ka)?);
//!
//! let router = Router::new().unary("Calc.Add", |_ctx: CallContext, (a, b): (i64, i64)| async move {
//!     a.checked_add(b).ok_or_else(|| Status::invalid_argument("overflow"))
//! });
//! let _server = Server::new(router).serve(&server_peer)?;
//! let endpoint = server_peer.bind("tcp://127.0.0.1:0").await?;
//! client_peer.connect(&endpoint).await?;
//!
//! let client = Client::new(client_peer.clone());
//! let sum: i64 = client.to("calc").call("Calc.Add", &(40, 2)).await?;
//! assert_eq!(sum, 42);
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`client`]: [`Client`] and [`ClientStreamCall`];
//! - [`server`]: [`Router`], the handler traits, [`Server`], [`CallContext`];
//! - [`stream`]: [`Sender`] and [`Receiver`], the typed message streams;
//! - [`codec`]: the [`Codec`](codec::Codec) trait, `MsgPack`, `Json`;
//! - [`status`]: [`Status`], [`Code`] and their wire form;
//! - [`wire`]: the call headers (codec, timeout, kind), without I/O;
//! - [`error`]: what calls fail with, [`RpcError`].
//!
//! The wire mapping is in `docs/PROTOCOL.md` ("RPC").
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod client;
pub mod codec;
pub mod error;
pub mod server;
pub mod status;
pub mod stream;
pub mod wire;

pub use client::{Client, ClientStreamCall, DEFAULT_MAX_CONCURRENT_CALLS, DEFAULT_MAX_MESSAGE_LEN};
pub use error::{RpcError, Side, TransportError};
#[allow(deprecated)]
pub use server::Context;
pub use server::{
    BidiHandler, CallContext, ClientStreamHandler, DEFAULT_MAX_IN_FLIGHT, RawHandler, Router,
    RouterError, Server, ServerHandle, ServerStreamHandler, UnaryHandler,
};
pub use status::{Code, OptionExt, Status, StatusDecodeError};
pub use stream::{Receiver, Sender};

/// The README's examples (of both crates), compiled as doctests so they
/// cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Handles that own work are `#[must_use]`: dropping one by mistake is a
/// compile warning (an error under `deny(unused_must_use)`), not a server
/// that silently stops. Each `compile_fail` example below has a twin that
/// compiles, the same code with the value kept, so the only thing that
/// fails is the dropped handle.
///
/// An `Acceptor` dropped at once (its services are refused again):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn claim(peer: &duplex::Peer) -> Result<(), Box<dyn std::error::Error>> {
///     peer.acceptor(["files.put"])?;
///     Ok(())
/// }
/// ```
///
/// ```
/// #![deny(unused_must_use)]
/// fn claim(peer: &duplex::Peer) -> Result<(), Box<dyn std::error::Error>> {
///     let _files = peer.acceptor(["files.put"])?;
///     Ok(())
/// }
/// ```
///
/// A `ServerHandle` dropped at once:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn serve(peer: &duplex::Peer) -> Result<(), Box<dyn std::error::Error>> {
///     duplex_rpc::Server::new(duplex_rpc::Router::new()).serve(peer)?;
///     Ok(())
/// }
/// ```
///
/// ```
/// #![deny(unused_must_use)]
/// fn serve(peer: &duplex::Peer) -> Result<(), Box<dyn std::error::Error>> {
///     let _server = duplex_rpc::Server::new(duplex_rpc::Router::new()).serve(peer)?;
///     Ok(())
/// }
/// ```
///
/// A channel opened and dropped (which closes it):
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// async fn open(peer: &duplex::Peer) -> Result<(), Box<dyn std::error::Error>> {
///     peer.open("bob", "echo", duplex::Headers::new()).await?;
///     Ok(())
/// }
/// ```
///
/// ```
/// #![deny(unused_must_use)]
/// async fn open(peer: &duplex::Peer) -> Result<(), Box<dyn std::error::Error>> {
///     let _channel = peer.open("bob", "echo", duplex::Headers::new()).await?;
///     Ok(())
/// }
/// ```
///
/// A builder whose result is thrown away:
///
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn configure(server: duplex_rpc::Server) {
///     server.max_in_flight(8);
/// }
/// ```
///
/// ```
/// #![deny(unused_must_use)]
/// fn configure(server: duplex_rpc::Server) -> duplex_rpc::Server {
///     server.max_in_flight(8)
/// }
/// ```
#[cfg(doctest)]
pub struct MustUseDoctests;
