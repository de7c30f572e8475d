//! What a call can fail with.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use duplex::{ChannelError, OpenError};

use crate::status::{Code, Origin, Status};

/// Which side's limit or codec a failure happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This process.
    Local,
    /// The remote peer.
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "local",
            Side::Remote => "remote",
        })
    }
}

/// A call failed. Each variant is a different kind of failure, so callers
/// can retry what is worth retrying; [`code`](Self::code) maps every one
/// onto a status [`Code`] for uniform handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The remote answered with a status: its handler returned an error,
    /// or its RPC layer refused the call (`RESOURCE_EXHAUSTED` when it is
    /// overloaded, `INTERNAL` when the handler panicked, `UNAVAILABLE`
    /// when it is shutting down).
    #[error("{method} on {peer} failed: {status}")]
    Status {
        /// The method called.
        method: String,
        /// The peer that answered.
        peer: String,
        /// The status it sent.
        status: Status,
    },
    /// The remote serves no such method (or serves it as a different kind
    /// of call: unary, streaming...).
    #[error("{method:?} on {peer}: {message}")]
    UnknownMethod {
        /// The method called.
        method: String,
        /// The peer that answered.
        peer: String,
        /// What the remote said.
        message: String,
    },
    /// A message could not be encoded or decoded, here (`Local`) or at the
    /// remote (`Remote`: it could not decode our request, or does not speak
    /// our codec).
    #[error("{method}: {side} codec error: {message}")]
    Codec {
        /// The method called.
        method: String,
        /// Where it failed.
        side: Side,
        /// What the codec said.
        message: String,
    },
    /// A message exceeded a maximum message size, ours (`Local`) or the
    /// remote's (`Remote`). Nothing was allocated for it.
    #[error("{method}: message of {len} bytes exceeds the {side} limit of {max} bytes")]
    TooLarge {
        /// The method called.
        method: String,
        /// Whose limit.
        side: Side,
        /// The message's size (claimed, for one received).
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The call could not be carried: no peer, the open failed, the
    /// connection or channel broke, or the remote broke the protocol.
    #[error("{method} could not be carried")]
    Transport {
        /// The method called.
        method: String,
        /// What failed.
        #[source]
        source: TransportError,
    },
    /// The call's deadline passed (here, or at the server, which then
    /// cancelled its handler).
    #[error("{method}: deadline exceeded after {timeout:?}")]
    DeadlineExceeded {
        /// The method called.
        method: String,
        /// The timeout the call was given.
        timeout: Duration,
    },
    /// A streaming call's next message did not come within the client's
    /// idle timeout ([`Client::with_idle_timeout`](crate::Client::with_idle_timeout));
    /// the call is cancelled when its receiver is dropped.
    #[error("{method}: no message for {idle:?} (the idle timeout)")]
    IdleTimeout {
        /// The method called.
        method: String,
        /// The idle timeout.
        idle: Duration,
    },
    /// The call was cancelled: this peer is shutting down, or (seen from a
    /// handler) the caller went away or abandoned its requests. (A server
    /// that shuts down answers its callers with an `UNAVAILABLE` status.)
    #[error("{method}: cancelled: {reason}")]
    Cancelled {
        /// The method called.
        method: String,
        /// Why.
        reason: String,
    },
}

/// Why a call could not be carried.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Opening the call's channel failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The channel broke during the call.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The remote broke the RPC protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl RpcError {
    /// The status code that best describes the failure.
    pub fn code(&self) -> Code {
        match self {
            RpcError::Status { status, .. } => status.code(),
            RpcError::UnknownMethod { .. } => Code::UNIMPLEMENTED,
            RpcError::Codec {
                side: Side::Remote, ..
            } => Code::INVALID_ARGUMENT,
            RpcError::Codec {
                side: Side::Local, ..
            } => Code::INTERNAL,
            RpcError::TooLarge { .. } => Code::RESOURCE_EXHAUSTED,
            RpcError::Transport { .. } => Code::UNAVAILABLE,
            RpcError::DeadlineExceeded { .. } | RpcError::IdleTimeout { .. } => {
                Code::DEADLINE_EXCEEDED
            }
            RpcError::Cancelled { .. } => Code::CANCELLED,
        }
    }

    /// The remote's status, for [`RpcError::Status`].
    pub fn status(&self) -> Option<&Status> {
        match self {
            RpcError::Status { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The method the failed call was for.
    pub fn method(&self) -> &str {
        match self {
            RpcError::Status { method, .. }
            | RpcError::UnknownMethod { method, .. }
            | RpcError::Codec { method, .. }
            | RpcError::TooLarge { method, .. }
            | RpcError::Transport { method, .. }
            | RpcError::DeadlineExceeded { method, .. }
            | RpcError::IdleTimeout { method, .. }
            | RpcError::Cancelled { method, .. } => method,
        }
    }

    /// The error a caller gets for a status frame read from a call's error
    /// stream (for code that drives a call's channel itself, such as a
    /// raw call): a remote status, or the RPC layer's own refusals
    /// (unknown method, codec, size, deadline) as their variants.
    pub fn from_status_frame(method: &str, peer: &str, frame: &bytes::Bytes) -> Self {
        from_wire(method, peer, frame, None)
    }

    /// A copy, for reporting a failure again: a stream that failed keeps
    /// failing the same way. Errors that cannot be copied (an open error)
    /// are kept as their text.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            RpcError::Status {
                method,
                peer,
                status,
            } => RpcError::Status {
                method: method.clone(),
                peer: peer.clone(),
                status: status.clone(),
            },
            RpcError::UnknownMethod {
                method,
                peer,
                message,
            } => RpcError::UnknownMethod {
                method: method.clone(),
                peer: peer.clone(),
                message: message.clone(),
            },
            RpcError::Codec {
                method,
                side,
                message,
            } => RpcError::Codec {
                method: method.clone(),
                side: *side,
                message: message.clone(),
            },
            RpcError::TooLarge {
                method,
                side,
                len,
                max,
            } => RpcError::TooLarge {
                method: method.clone(),
                side: *side,
                len: *len,
                max: *max,
            },
            RpcError::Transport { method, source } => RpcError::Transport {
                method: method.clone(),
                source: match source {
                    TransportError::Channel(e) => TransportError::Channel(e.clone()),
                    TransportError::Protocol(p) => TransportError::Protocol(p.clone()),
                    TransportError::Open(e) => {
                        TransportError::Protocol(duplex::error::full_text(e))
                    }
                },
            },
            RpcError::DeadlineExceeded { method, timeout } => RpcError::DeadlineExceeded {
                method: method.clone(),
                timeout: *timeout,
            },
            RpcError::IdleTimeout { method, idle } => RpcError::IdleTimeout {
                method: method.clone(),
                idle: *idle,
            },
            RpcError::Cancelled { method, reason } => RpcError::Cancelled {
                method: method.clone(),
                reason: reason.clone(),
            },
        }
    }

    /// Whether a failed write means the remote ended the call (so its
    /// outcome is to be read), rather than a local failure.
    pub(crate) fn remote_ended(&self) -> bool {
        matches!(
            self,
            RpcError::Transport {
                source: TransportError::Channel(
                    ChannelError::ClosedByRemote | ChannelError::ConnectionLost(_)
                ),
                ..
            }
        )
    }

    pub(crate) fn open_failed(method: &str, e: OpenError) -> Self {
        match e {
            OpenError::Shutdown => RpcError::Cancelled {
                method: method.to_owned(),
                reason: "this peer is shutting down".into(),
            },
            // Nothing on the remote takes the method's channel: no server
            // there serves it (PROTOCOL.md section 3.3).
            OpenError::NoService { peer, .. } => RpcError::UnknownMethod {
                method: method.to_owned(),
                peer,
                message: "no such method: nothing there serves it".into(),
            },
            e => RpcError::transport(method, e),
        }
    }

    pub(crate) fn transport(method: &str, source: impl Into<TransportError>) -> Self {
        RpcError::Transport {
            method: method.to_owned(),
            source: source.into(),
        }
    }

    pub(crate) fn protocol(method: &str, why: impl Into<String>) -> Self {
        RpcError::Transport {
            method: method.to_owned(),
            source: TransportError::Protocol(why.into()),
        }
    }
}

/// Lets a handler use `?` on calls it makes and on its streams: a remote
/// status passes through unchanged; any other failure becomes a status
/// with [`RpcError::code`] and the error's text.
impl From<RpcError> for Status {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Status { status, .. } => status,
            other => Status::new(other.code(), duplex::error::full_text(&other)),
        }
    }
}

/// Turns a status frame from a server into the caller's error.
pub(crate) fn from_wire(
    method: &str,
    peer: &str,
    frame: &Bytes,
    timeout: Option<Duration>,
) -> RpcError {
    let (origin, st) = match crate::status::decode(frame) {
        Ok(decoded) => decoded,
        Err(e) => {
            return RpcError::protocol(method, format!("{peer} sent an unreadable status: {e}"));
        }
    };
    let method = method.to_owned();
    match origin {
        Origin::UnknownMethod | Origin::WrongKind => RpcError::UnknownMethod {
            method,
            peer: peer.to_owned(),
            message: st.message().to_owned(),
        },
        Origin::BadRequest | Origin::UnsupportedCodec => RpcError::Codec {
            method,
            side: Side::Remote,
            message: st.message().to_owned(),
        },
        Origin::TooLarge => {
            let d = st.details();
            let word = |i: usize| {
                d.get(i..i + 8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
            };
            RpcError::TooLarge {
                method,
                side: Side::Remote,
                len: word(0),
                max: usize::try_from(word(8)).unwrap_or(usize::MAX),
            }
        }
        Origin::DeadlineExceeded => RpcError::DeadlineExceeded {
            method,
            timeout: timeout.unwrap_or_default(),
        },
        Origin::Handler
        | Origin::Overloaded
        | Origin::Panicked
        | Origin::ShuttingDown
        | Origin::Other(_) => RpcError::Status {
            method,
            peer: peer.to_owned(),
            status: st,
        },
    }
}
