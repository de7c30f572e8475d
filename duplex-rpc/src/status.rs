//! Call outcomes: [`Status`] and [`Code`], and their wire form on a
//! channel's error stream.
//!
//! A failed call ends with one error frame holding the status:
//!
//! ```text
//! u8  version (1)
//! u8  origin   0 = the handler; other values name a condition found by the
//!              RPC layer (unknown method, undecodable request, overload...)
//! u16 code     big-endian, numbered as gRPC's status codes
//! u32 length   of the message, big-endian
//! ..  message  UTF-8
//! ..  details  the rest of the frame: opaque bytes for the application
//! ```
//!
//! Decoding does no I/O and is bounded by the frame it is given.

use std::fmt;

use bytes::Bytes;

/// A status code. The numbers are gRPC's, so they map one-to-one onto
/// gRPC and HTTP gateways; unknown numbers are kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $n:literal, $text:literal;)*) => {
        impl Code {
            $($(#[$doc])* pub const $name: Code = Code($n);)*

            /// The code's name in upper snake case (`NOT_FOUND`), or
            /// `CODE_<n>` for a number this version does not know.
            pub fn name(self) -> std::borrow::Cow<'static, str> {
                match self.0 {
                    $($n => $text.into(),)*
                    n => format!("CODE_{n}").into(),
                }
            }
        }
    };
}

codes! {
    /// The call was cancelled, usually by the caller.
    CANCELLED = 1, "CANCELLED";
    /// An error with no better code.
    UNKNOWN = 2, "UNKNOWN";
    /// The request is invalid, whatever the state of the system.
    INVALID_ARGUMENT = 3, "INVALID_ARGUMENT";
    /// The deadline passed before the call finished.
    DEADLINE_EXCEEDED = 4, "DEADLINE_EXCEEDED";
    /// Something asked for was not found.
    NOT_FOUND = 5, "NOT_FOUND";
    /// Something to be created exists already.
    ALREADY_EXISTS = 6, "ALREADY_EXISTS";
    /// The caller may not do this.
    PERMISSION_DENIED = 7, "PERMISSION_DENIED";
    /// A resource or limit ran out: the server is overloaded, or a message
    /// was too large. Retry later or send less.
    RESOURCE_EXHAUSTED = 8, "RESOURCE_EXHAUSTED";
    /// The system is not in a state that allows this.
    FAILED_PRECONDITION = 9, "FAILED_PRECONDITION";
    /// Aborted by a conflict; retry at a higher level.
    ABORTED = 10, "ABORTED";
    /// Past the valid range.
    OUT_OF_RANGE = 11, "OUT_OF_RANGE";
    /// Not implemented: the method is unknown, or called the wrong way.
    UNIMPLEMENTED = 12, "UNIMPLEMENTED";
    /// An invariant broke on the server (a handler panicked, say).
    INTERNAL = 13, "INTERNAL";
    /// The service cannot be reached now (shutting down); retry.
    UNAVAILABLE = 14, "UNAVAILABLE";
    /// Data was lost or corrupted.
    DATA_LOSS = 15, "DATA_LOSS";
    /// The caller is not authenticated for this.
    UNAUTHENTICATED = 16, "UNAUTHENTICATED";
}

impl Code {
    /// The code for a number.
    pub fn from_u16(n: u16) -> Self {
        Code(n)
    }

    /// The code's number.
    pub fn as_u16(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// How a call failed, as a handler reports it and the caller receives it:
/// a [`Code`], a message for people, and optional details for programs.
///
/// ```
/// use duplex_rpc::{Code, Status};
/// let st = Status::not_found("no account 42").with_details(&b"42"[..]);
/// assert_eq!(st.code(), Code::NOT_FOUND);
/// assert_eq!(st.to_string(), "NOT_FOUND: no account 42");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
    details: Bytes,
}

impl Status {
    /// A status with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
            details: Bytes::new(),
        }
    }

    /// Attaches details: bytes for programs (encode them with a codec of
    /// your choice).
    pub fn with_details(mut self, details: impl Into<Bytes>) -> Self {
        self.details = details.into();
        self
    }

    /// `INVALID_ARGUMENT` with a message.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::INVALID_ARGUMENT, message)
    }

    /// `NOT_FOUND` with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NOT_FOUND, message)
    }

    /// `INTERNAL` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::INTERNAL, message)
    }

    /// `FAILED_PRECONDITION` with a message.
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FAILED_PRECONDITION, message)
    }

    /// `UNAVAILABLE` with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::UNAVAILABLE, message)
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The details (empty if none).
    pub fn details(&self) -> &Bytes {
        &self.details
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Status");
        d.field("code", &self.code).field("message", &self.message);
        if !self.details.is_empty() {
            d.field("details", &self.details);
        }
        d.finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Status {}

/// Lets a handler use `?` on I/O: the error kind picks the code (as tonic
/// does): `NotFound` is `NOT_FOUND`, `PermissionDenied`
/// `PERMISSION_DENIED`, `AlreadyExists` `ALREADY_EXISTS`, `InvalidInput`
/// and `InvalidData` `INVALID_ARGUMENT`, `TimedOut` `DEADLINE_EXCEEDED`,
/// `Interrupted` `CANCELLED`, `Unsupported` `UNIMPLEMENTED`,
/// `OutOfMemory` and `StorageFull` `RESOURCE_EXHAUSTED`, a refused, reset,
/// aborted or broken connection `UNAVAILABLE`, anything else `UNKNOWN`.
/// The message is the error's text.
impl From<std::io::Error> for Status {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let code = match e.kind() {
            K::NotFound => Code::NOT_FOUND,
            K::PermissionDenied => Code::PERMISSION_DENIED,
            K::AlreadyExists => Code::ALREADY_EXISTS,
            K::InvalidInput | K::InvalidData => Code::INVALID_ARGUMENT,
            K::TimedOut => Code::DEADLINE_EXCEEDED,
            K::Interrupted => Code::CANCELLED,
            K::Unsupported => Code::UNIMPLEMENTED,
            K::OutOfMemory | K::StorageFull => Code::RESOURCE_EXHAUSTED,
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe => Code::UNAVAILABLE,
            _ => Code::UNKNOWN,
        };
        Status::new(code, e.to_string())
    }
}

/// Lets a handler use `?` on `anyhow` errors (and return
/// `anyhow::Result`): a [`Status`], an [`std::io::Error`] or an
/// [`RpcError`](crate::RpcError) inside keeps its code (the outermost one
/// found in the chain); anything else is `UNKNOWN`. The message is the
/// whole chain (`{:#}`).
#[cfg(feature = "anyhow")]
impl From<anyhow::Error> for Status {
    fn from(e: anyhow::Error) -> Self {
        let message = format!("{e:#}");
        let mut outer = Vec::new();
        for cause in e.chain() {
            if let Some(st) = cause.downcast_ref::<Status>() {
                // The contexts around it, then its own message (its code
                // is the status's code, not text).
                outer.push(st.message().to_owned());
                return Status::new(st.code(), outer.join(": ")).with_details(st.details().clone());
            }
            outer.push(cause.to_string());
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                return Status::new(
                    Status::from(std::io::Error::from(io.kind())).code(),
                    message,
                );
            }
            if let Some(rpc) = cause.downcast_ref::<crate::RpcError>() {
                return Status::new(rpc.code(), message);
            }
        }
        Status::new(Code::UNKNOWN, message)
    }
}

/// `?` on an `Option` in a handler: turns `None` into a status.
///
/// ```
/// use duplex_rpc::{OptionExt, Status};
/// fn find(users: &[&str], name: &str) -> Result<usize, Status> {
///     let i = users.iter().position(|u| *u == name).or_not_found(format!("no user {name:?}"))?;
///     Ok(i)
/// }
/// assert_eq!(find(&["ann"], "bob").unwrap_err().code(), duplex_rpc::Code::NOT_FOUND);
/// ```
pub trait OptionExt<T> {
    /// `None` becomes `NOT_FOUND` with `message`.
    fn or_not_found(self, message: impl Into<String>) -> Result<T, Status>;
    /// `None` becomes a status with `code` and `message`.
    fn or_status(self, code: Code, message: impl Into<String>) -> Result<T, Status>;
}

impl<T> OptionExt<T> for Option<T> {
    fn or_not_found(self, message: impl Into<String>) -> Result<T, Status> {
        self.ok_or_else(|| Status::not_found(message))
    }

    fn or_status(self, code: Code, message: impl Into<String>) -> Result<T, Status> {
        self.ok_or_else(|| Status::new(code, message))
    }
}

/// Who produced a status on the wire: the handler, or the RPC layer for a
/// condition of its own (so the caller can tell "unknown method" from a
/// handler that returned `UNIMPLEMENTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Handler,
    UnknownMethod,
    BadRequest,
    UnsupportedCodec,
    Overloaded,
    DeadlineExceeded,
    Panicked,
    TooLarge,
    ShuttingDown,
    WrongKind,
    /// A value from a newer version: treated like `Handler`.
    Other(u8),
}

impl Origin {
    fn to_u8(self) -> u8 {
        match self {
            Origin::Handler => 0,
            Origin::UnknownMethod => 1,
            Origin::BadRequest => 2,
            Origin::UnsupportedCodec => 3,
            Origin::Overloaded => 4,
            Origin::DeadlineExceeded => 5,
            Origin::Panicked => 6,
            Origin::TooLarge => 7,
            Origin::ShuttingDown => 8,
            Origin::WrongKind => 9,
            Origin::Other(n) => n,
        }
    }

    fn from_u8(n: u8) -> Self {
        match n {
            0 => Origin::Handler,
            1 => Origin::UnknownMethod,
            2 => Origin::BadRequest,
            3 => Origin::UnsupportedCodec,
            4 => Origin::Overloaded,
            5 => Origin::DeadlineExceeded,
            6 => Origin::Panicked,
            7 => Origin::TooLarge,
            8 => Origin::ShuttingDown,
            9 => Origin::WrongKind,
            n => Origin::Other(n),
        }
    }
}

const VERSION: u8 = 1;
const FIXED: usize = 8;
/// Longest message sent; longer ones are cut at a character boundary.
pub(crate) const MAX_MESSAGE: usize = 16 << 10;
/// Most detail bytes sent; larger details are dropped (the message says
/// so), keeping every status frame far below any frame limit.
pub(crate) const MAX_DETAILS: usize = 64 << 10;

/// Why a status frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusDecodeError {
    /// Shorter than its fixed part or its message length says.
    #[error("status frame truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes in the frame.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A format version this implementation does not read.
    #[error("status frame version {0} is not supported (this side reads version 1)")]
    Version(u8),
}

/// Encodes a status for the error stream: at most [`MAX_MESSAGE`] bytes of
/// message and [`MAX_DETAILS`] bytes of details.
pub(crate) fn encode(origin: Origin, status: &Status) -> Vec<u8> {
    let note;
    let (mut msg, details) = if status.details.len() > MAX_DETAILS {
        note = format!(
            "{} (details of {} bytes dropped: over the {MAX_DETAILS}-byte limit)",
            status.message,
            status.details.len()
        );
        (note.as_str(), &[][..])
    } else {
        (status.message.as_str(), &status.details[..])
    };
    if msg.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg = msg.get(..cut).unwrap_or_default();
    }
    let mut out = Vec::with_capacity(FIXED + msg.len() + details.len());
    out.push(VERSION);
    out.push(origin.to_u8());
    out.extend_from_slice(&status.code.0.to_be_bytes());
    // MAX_MESSAGE fits in u32.
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(details);
    out
}

/// Decodes the status in an error frame, whoever produced it. Invalid
/// UTF-8 in the message is replaced, not refused.
pub fn decode_status(frame: &Bytes) -> Result<Status, StatusDecodeError> {
    decode(frame).map(|(_, st)| st)
}

/// Decodes a status frame. Invalid UTF-8 in the message is replaced, not
/// refused: the status still reaches the caller.
pub(crate) fn decode(frame: &Bytes) -> Result<(Origin, Status), StatusDecodeError> {
    let truncated = |need| StatusDecodeError::Truncated {
        got: frame.len(),
        need,
    };
    let fixed = frame.get(..FIXED).ok_or_else(|| truncated(FIXED))?;
    let [version, origin, c0, c1, l0, l1, l2, l3] =
        <[u8; FIXED]>::try_from(fixed).map_err(|_| truncated(FIXED))?;
    if version != VERSION {
        return Err(StatusDecodeError::Version(version));
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    let end = FIXED.saturating_add(len);
    let msg = frame.get(FIXED..end).ok_or_else(|| truncated(end))?;
    Ok((
        Origin::from_u8(origin),
        Status {
            code: Code(u16::from_be_bytes([c0, c1])),
            message: String::from_utf8_lossy(msg).into_owned(),
            details: frame.slice(end..),
        },
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let st = Status::new(Code::NOT_FOUND, "no such key ü").with_details(&b"\x00\x01"[..]);
        let frame = Bytes::from(encode(Origin::Handler, &st));
        assert_eq!(decode(&frame).unwrap(), (Origin::Handler, st));
        let st = Status::new(Code::from_u16(999), "");
        let frame = Bytes::from(encode(Origin::Overloaded, &st));
        let (o, back) = decode(&frame).unwrap();
        assert_eq!(
            (o, back.code().name().as_ref()),
            (Origin::Overloaded, "CODE_999")
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let st = Status::internal("é".repeat(MAX_MESSAGE));
        let frame = Bytes::from(encode(Origin::Handler, &st));
        let (_, back) = decode(&frame).unwrap();
        assert!(back.message().len() <= MAX_MESSAGE);
        assert!(back.message().chars().all(|c| c == 'é'));
    }

    #[test]
    fn oversized_details_are_dropped_with_a_note() {
        let st = Status::internal("boom").with_details(vec![1u8; MAX_DETAILS + 1]);
        let frame = Bytes::from(encode(Origin::Handler, &st));
        let (_, back) = decode(&frame).unwrap();
        assert!(back.details().is_empty());
        assert!(
            back.message()
                .starts_with("boom (details of 65537 bytes dropped"),
            "{}",
            back.message()
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(
            decode(&Bytes::from_static(b"")),
            Err(StatusDecodeError::Truncated { .. })
        ));
        assert_eq!(
            decode(&Bytes::from_static(b"\x02\x00\x00\x01\x00\x00\x00\x00")),
            Err(StatusDecodeError::Version(2))
        );
        let claims_4g = Bytes::from_static(b"\x01\x00\x00\x01\xff\xff\xff\xffabc");
        assert!(matches!(
            decode(&claims_4g),
            Err(StatusDecodeError::Truncated { .. })
        ));
        let (origin, st) = decode(&Bytes::from_static(
            b"\x01\xee\x00\x05\x00\x00\x00\x02\xff\xfe",
        ))
        .unwrap();
        assert_eq!(origin, Origin::Other(0xee));
        assert_eq!(st.message(), "\u{fffd}\u{fffd}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Bytes::from(bytes));
        }

        #[test]
        fn encode_decode_round_trips(code in any::<u16>(), origin in 0u8..=255, msg in ".{0,40}", details in proptest::collection::vec(any::<u8>(), 0..32)) {
            let st = Status::new(Code::from_u16(code), msg).with_details(details);
            let o = Origin::from_u8(origin);
            let (o2, back) = decode(&Bytes::from(encode(o, &st))).unwrap();
            prop_assert_eq!(o2, o);
            prop_assert_eq!(back, st);
        }
    }
}
