//! Error types, one enum per operation.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::EndpointError;
use crate::proto::frame::FrameError;
use crate::proto::headers::HeaderError;
use crate::proto::service::ServiceNameError;
use crate::ssh::keys::Fingerprint;
use crate::ssh::trust::{HostKeyError, NameBindingError};

/// An error and its causes on one line, `outer: cause: root`: for
/// messages that go where `source()` cannot follow (logs, events, the
/// wire). Every error type here follows one rule: a wrapper's `Display`
/// says what failed, and never repeats its source, which `source()`
/// returns; so this text (or `anyhow`'s `{:#}`) says everything once.
///
/// ```
/// use std::io;
/// let e = duplex::BindError::Io {
///     endpoint: "tcp://0.0.0.0:7000".into(),
///     source: io::Error::new(io::ErrorKind::AddrInUse, "address in use"),
/// };
/// assert_eq!(e.to_string(), "cannot bind tcp://0.0.0.0:7000");
/// assert_eq!(duplex::error::full_text(&e), "cannot bind tcp://0.0.0.0:7000: address in use");
/// ```
pub fn full_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// [`Peer::connect`](crate::Peer::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint string did not parse.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The transport could not be opened (DNS, refused, unreachable).
    #[error("cannot reach {endpoint}")]
    Io {
        /// Where we tried to connect.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// The remote's host key is not one we trust. Never retried.
    #[error("the host key of {endpoint} is not trusted")]
    HostKey {
        /// Where we tried to connect.
        endpoint: String,
        /// Expected and actual fingerprints.
        source: HostKeyError,
    },
    /// The remote does not accept our key (or not under our name). Never
    /// retried.
    #[error(
        "{endpoint} rejected our key {fingerprint} for the peer name {name:?}: either the remote does not trust the key (add it to its authorized keys), or it binds names to keys and the name is the problem ({name:?} is bound to another key there, or the key's line allows other names only: add duplex-name=\"{name}\" to it)"
    )]
    AuthRejected {
        /// Where we tried to connect.
        endpoint: String,
        /// Our key's fingerprint.
        fingerprint: Fingerprint,
        /// The peer name we connected under.
        name: String,
    },
    /// The remote announced a peer name its host key may not use (names
    /// bound with `KnownHosts::pin_named`). Never retried.
    #[error("{endpoint} announced a peer name its host key may not use")]
    NameRefused {
        /// Where we connected.
        endpoint: String,
        /// The name and the binding it broke.
        source: NameBindingError,
    },
    /// The SSH handshake failed (not SSH, no common algorithm, connection
    /// dropped mid-handshake).
    #[error("SSH handshake with {endpoint} failed: {reason}")]
    Handshake {
        /// Where we tried to connect.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The remote speaks SSH but not (this version of) Duplex.
    #[error("{endpoint} is not a compatible Duplex peer: {reason}")]
    Protocol {
        /// Where we tried to connect.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Connecting, key exchange, authentication and hello took longer than
    /// the configured handshake timeout.
    #[error("connecting to {endpoint} timed out after {after:?}")]
    Timeout {
        /// Where we tried to connect.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// Every attempt failed with a transient error (see
    /// [`Config::connect_backoff`](crate::Config::connect_backoff)); `last`
    /// is the error of the last one.
    #[error("gave up connecting to {endpoint} after {attempts} attempts in {elapsed:.1?}")]
    GaveUp {
        /// Where we tried to connect.
        endpoint: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// Why the last attempt failed (also its `source()`).
        #[source]
        last: Box<ConnectError>,
    },
    /// The peer is shutting down.
    #[error("the peer is shut down")]
    Shutdown,
}

impl ConnectError {
    /// Whether another attempt could succeed: the endpoint could not be
    /// reached, or the connection broke or stalled during the handshake.
    /// Key, trust and protocol failures are final.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::Io { .. } | ConnectError::Handshake { .. } | ConnectError::Timeout { .. }
        )
    }
}

/// [`Peer::bind`](crate::Peer::bind) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The endpoint string did not parse.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The socket could not be bound.
    #[error("cannot bind {endpoint}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// The peer is shutting down.
    #[error("the peer is shut down")]
    Shutdown,
}

/// [`Peer::acceptor`](crate::Peer::acceptor) could not claim the services.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// A service name is not valid.
    #[error(transparent)]
    Service(#[from] ServiceNameError),
    /// Another acceptor on the peer holds the service; a service has one
    /// acceptor at a time. Nothing was claimed.
    #[error(
        "service {service:?} on {peer} is claimed by another acceptor already (an RPC server serving it, say); drop that acceptor first"
    )]
    Taken {
        /// The service.
        service: String,
        /// This peer's name.
        peer: String,
    },
    /// The peer is shutting down.
    #[error("the peer is shut down")]
    Shutdown,
}

/// [`Peer::open`](crate::Peer::open) (or a channel's `open`) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The service name is not valid.
    #[error(transparent)]
    Service(#[from] ServiceNameError),
    /// The headers cannot be sent.
    #[error("cannot send the open's headers")]
    Headers(#[from] HeaderError),
    /// No peer of that name connected within the wait (see
    /// [`Config::peer_wait_timeout`](crate::Config::peer_wait_timeout)).
    #[error("no peer named {name:?} is connected (waited {waited:?})")]
    NoSuchPeer {
        /// The name asked for.
        name: String,
        /// How long `open` waited for it.
        waited: Duration,
    },
    /// No peer at all connected within the wait (for
    /// [`Peer::open_next`](crate::Peer::open_next)).
    #[error("no peer is connected (waited {waited:?}); connect or bind first")]
    NoPeer {
        /// How long `open_next` waited.
        waited: Duration,
    },
    /// The remote application rejected the channel.
    #[error("{peer} rejected channel {service:?}: {reason}")]
    Rejected {
        /// The remote peer.
        peer: String,
        /// The service asked for.
        service: String,
        /// The reason the remote gave.
        reason: String,
    },
    /// Nothing on the remote peer takes channels for the service: no
    /// acceptor (or RPC server) there claims it, and its application does
    /// not call `Peer::accept` (see [`Peer::acceptor`](crate::Peer::acceptor)).
    /// The remote says so at once, rather than letting the open time out.
    #[error(
        "no service {service:?} on {peer}: nothing there serves it (no acceptor or RPC server claims it, and its application takes no other channels)"
    )]
    NoService {
        /// The remote peer.
        peer: String,
        /// The service asked for.
        service: String,
    },
    /// The remote peer refused the open before its application saw it (a
    /// limit, or a malformed open).
    #[error("{peer} refused channel {service:?}: {why} (SSH open failure code {code})")]
    Refused {
        /// The remote peer.
        peer: String,
        /// The service asked for.
        service: String,
        /// The SSH reason code.
        code: u32,
        /// The remote's description (which limit, and what to raise), or
        /// what the code means when it gave none.
        why: String,
    },
    /// The remote application neither accepted nor rejected in time.
    #[error("{peer} did not accept channel {service:?} within {after:?}")]
    Timeout {
        /// The remote peer.
        peer: String,
        /// The service asked for.
        service: String,
        /// The configured open timeout.
        after: Duration,
    },
    /// The connection ended before the channel was accepted.
    #[error("connection to {peer} lost while opening {service:?}: {reason}")]
    ConnectionLost {
        /// The remote peer.
        peer: String,
        /// The service asked for.
        service: String,
        /// Why the connection ended.
        reason: Arc<str>,
    },
    /// The peer is shutting down.
    #[error("the peer is shut down")]
    Shutdown,
    /// A nested open on a parent channel that is closed (or closing, or
    /// failed).
    #[error("cannot open {service:?} inside channel {parent:?}: {reason}")]
    ParentClosed {
        /// The service asked for.
        service: String,
        /// The parent channel's service.
        parent: String,
        /// Why the parent is no longer open.
        reason: Arc<str>,
    },
    /// A limit of this peer stopped the open before anything was sent
    /// (for example `Config::max_connection_buffer`).
    #[error("cannot open {service:?}: {why}")]
    LocalLimit {
        /// The service asked for.
        service: String,
        /// Which limit, and its value.
        why: String,
    },
    /// A nested open deeper than this peer's `Config::max_nesting_depth`.
    #[error(
        "cannot open {service:?} at nesting depth {depth}: channels nest at most {limit} levels deep (Config::max_nesting_depth)"
    )]
    DepthLimit {
        /// The service asked for.
        service: String,
        /// The depth the channel would have had (top-level channels are 0).
        depth: u32,
        /// The configured limit.
        limit: u32,
    },
    /// A nested open inside a channel from a plain SSH client, which cannot
    /// receive nested channels.
    #[error(
        "cannot open {service:?} inside channel {parent:?}: its remote is a plain SSH client, which cannot receive nested channels"
    )]
    NotNestable {
        /// The service asked for.
        service: String,
        /// The parent channel's service.
        parent: String,
    },
}

/// An operation on an open channel failed. Converts into [`io::Error`] for
/// the `AsyncRead`/`AsyncWrite` methods.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The connection carrying the channel ended.
    #[error("connection lost: {0}")]
    ConnectionLost(Arc<str>),
    /// The remote closed the channel; nothing more can be written.
    #[error("channel closed by the remote peer")]
    ClosedByRemote,
    /// We already closed our sending side.
    #[error("channel already closed for writing")]
    WriteClosed,
    /// The remote broke the protocol on this channel (for example by
    /// sending more than its flow-control window); the channel was closed.
    #[error("protocol violation by the remote peer: {0}")]
    Protocol(Arc<str>),
    /// A frame was too large or truncated.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Trailers that cannot be sent (over a header limit).
    #[error("cannot send trailers: {0}")]
    Trailers(HeaderError),
    /// The remote is a plain SSH client, which has no way to receive
    /// trailers.
    #[error("trailers cannot be sent to a plain SSH client")]
    TrailersUnsupported,
    /// The channel was nested inside another, and that parent closed or
    /// failed: a nested channel never outlives its parent.
    #[error("parent channel closed: {0}")]
    ParentClosed(Arc<str>),
    /// The remote closed the channel because it saw this side break the
    /// protocol (a `PROTOCOL_ERROR` record, protocol version 2): a bug on
    /// this side, or a remote with other limits.
    #[error("the remote peer closed the channel, reporting a protocol violation by this side: {0}")]
    ViolationReported(Arc<str>),
    /// The channel waited longer than
    /// [`Config::accept_timeout`](crate::Config::accept_timeout) for this
    /// side's application and was rejected.
    #[error("the channel was rejected before it was accepted: {0}")]
    NotAccepted(Arc<str>),
    /// The remote abandoned the channel before finishing its writing (it
    /// called [`Channel::abort`](crate::Channel::abort), dropped the
    /// channel unfinished, or closed it with no EOF): what was read before
    /// is not the whole stream. The text says who and why.
    #[error("{0}")]
    Aborted(Arc<str>),
    /// This side aborted the channel (with
    /// [`Channel::abort`](crate::Channel::abort), or by dropping it
    /// unfinished).
    #[error("the channel was aborted on this side: {0}")]
    AbortedHere(Arc<str>),
}

impl From<ChannelError> for io::Error {
    fn from(e: ChannelError) -> Self {
        let kind = match &e {
            ChannelError::ConnectionLost(_)
            | ChannelError::ParentClosed(_)
            | ChannelError::NotAccepted(_)
            | ChannelError::AbortedHere(_) => io::ErrorKind::ConnectionAborted,
            ChannelError::Aborted(_) => io::ErrorKind::ConnectionReset,
            ChannelError::ClosedByRemote | ChannelError::WriteClosed => io::ErrorKind::BrokenPipe,
            ChannelError::Trailers(_) | ChannelError::TrailersUnsupported => {
                io::ErrorKind::InvalidInput
            }
            ChannelError::Protocol(_)
            | ChannelError::ViolationReported(_)
            | ChannelError::Frame(_) => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// How a channel ended, as [`Channel::closed`](crate::Channel::closed) reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChannelEnd {
    /// The remote peer closed it.
    ClosedByRemote,
    /// It was closed on this side (every handle dropped, or `close`).
    ClosedHere,
    /// It failed: the connection was lost, the remote broke the protocol,
    /// or its parent channel ended.
    Failed(ChannelError),
}

impl std::fmt::Display for ChannelEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelEnd::ClosedByRemote => f.write_str("the channel was closed by the remote peer"),
            ChannelEnd::ClosedHere => f.write_str("the channel was closed on this side"),
            ChannelEnd::Failed(e) => write!(f, "the channel failed: {e}"),
        }
    }
}
