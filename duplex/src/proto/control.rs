//! Control records: the messages Duplex exchanges on a channel's
//! [`EXT_CONTROL`](super::EXT_CONTROL) extended-data stream, each one a frame
//! (see [`frame`](super::frame)) whose payload is a type byte and a body.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame;

/// Largest control record accepted (type byte and body): room for a header
/// block of the largest size `Config::max_header_bytes` allows.
pub(crate) const MAX_RECORD: usize = 32 << 10;
/// Longest rejection reason sent; longer ones are cut at a char boundary.
pub(crate) const MAX_REASON: usize = 1024;

const ACCEPT: u8 = 1;
const WINDOW: u8 = 2;
const REJECT: u8 = 3;
const HELLO: u8 = 4;
const TRAILERS: u8 = 5;
const PARENT_CLOSED: u8 = 6;
const EOF: u8 = 7;
const PROTOCOL_ERROR: u8 = 8;
const ABORT: u8 = 9;

/// One control record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// The receiving application accepted the channel; the sender may send
    /// `window` bytes (data and error frames together). `id` is the
    /// acceptor's own number for the channel, which the opener uses to name
    /// it as the parent of nested opens (see [`nest`](super::nest)).
    Accept { window: u32, id: u32 },
    /// The receiver consumed bytes: the sender may send `increment` more.
    Window { increment: u32 },
    /// The receiving application refused the channel; it is closed next.
    Reject { reason: String },
    /// The listener's answer on the `@hello` channel: its name and protocol
    /// version as an encoded header block.
    Hello { headers: String },
    /// Trailers: a header block sent once, after the last data, before EOF.
    Trailers { headers: String },
    /// The sender is closing this nested channel because an ancestor closed
    /// or failed; the channel's close follows.
    ParentClosed { reason: String },
    /// Version 2: the sender finished writing the channel's byte stream
    /// and error stream (half-close; SSH EOF comes later, when the sender
    /// has nothing more at all to send).
    Eof,
    /// Version 2: the sender is closing the channel because the receiver
    /// broke the protocol; the close follows.
    ProtocolError { reason: String },
    /// Version 3: the sender abandons the channel before finishing its
    /// streams (its application aborted, or dropped the channel
    /// unfinished); the close follows, with no EOF.
    Abort { reason: String },
}

/// Why a control record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The framing around records is broken.
    #[error("malformed control stream")]
    Frame(#[from] frame::FrameError),
    /// A record of an unknown type.
    #[error("unknown control record type {0}")]
    UnknownType(u8),
    /// A record whose body does not match its type.
    #[error("malformed control record of type {0}")]
    Malformed(u8),
}

impl Control {
    /// The record framed for the wire.
    pub(crate) fn encode(&self) -> Bytes {
        let mut body = BytesMut::with_capacity(16);
        match self {
            Control::Accept { window, id } => {
                body.put_u8(ACCEPT);
                body.put_u32(*window);
                body.put_u32(*id);
            }
            Control::Window { increment } => {
                body.put_u8(WINDOW);
                body.put_u32(*increment);
            }
            Control::Reject { reason } => {
                body.put_u8(REJECT);
                body.put_slice(truncate(reason, MAX_REASON).as_bytes());
            }
            Control::ParentClosed { reason } => {
                body.put_u8(PARENT_CLOSED);
                body.put_slice(truncate(reason, MAX_REASON).as_bytes());
            }
            Control::Eof => body.put_u8(EOF),
            Control::ProtocolError { reason } => {
                body.put_u8(PROTOCOL_ERROR);
                body.put_slice(truncate(reason, MAX_REASON).as_bytes());
            }
            Control::Abort { reason } => {
                body.put_u8(ABORT);
                body.put_slice(truncate(reason, MAX_REASON).as_bytes());
            }
            Control::Hello { headers } => {
                body.put_u8(HELLO);
                body.put_slice(truncate(headers, MAX_RECORD - 1).as_bytes());
            }
            Control::Trailers { headers } => {
                body.put_u8(TRAILERS);
                body.put_slice(truncate(headers, MAX_RECORD - 1).as_bytes());
            }
        }
        let mut out = BytesMut::with_capacity(frame::HEADER_LEN + body.len());
        out.put_u32(body.len() as u32); // at most MAX_RECORD bytes
        out.put_slice(&body);
        out.freeze()
    }

    /// Parses one record payload (the frame's contents).
    pub(crate) fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        let (&ty, body) = payload.split_first().ok_or(ControlError::Malformed(0))?;
        let u32_body = || -> Result<u32, ControlError> {
            let b: [u8; 4] = body.try_into().map_err(|_| ControlError::Malformed(ty))?;
            Ok(u32::from_be_bytes(b))
        };
        match ty {
            ACCEPT => {
                let b: [u8; 8] = body.try_into().map_err(|_| ControlError::Malformed(ty))?;
                let (w, id) = b.split_at(4);
                let word = |x: &[u8]| x.try_into().map(u32::from_be_bytes);
                match (word(w), word(id)) {
                    (Ok(window), Ok(id)) => Ok(Control::Accept { window, id }),
                    _ => Err(ControlError::Malformed(ty)),
                }
            }
            WINDOW => Ok(Control::Window {
                increment: u32_body()?,
            }),
            EOF if body.is_empty() => Ok(Control::Eof),
            EOF => Err(ControlError::Malformed(ty)),
            REJECT | PARENT_CLOSED | PROTOCOL_ERROR | ABORT => {
                let reason = std::str::from_utf8(body).map_err(|_| ControlError::Malformed(ty))?;
                // Held to the same bound as the reasons we send, whatever
                // the remote sent (found by fuzzing: a longer reason did
                // not survive re-encoding).
                let reason = truncate(reason, MAX_REASON).to_owned();
                Ok(match ty {
                    REJECT => Control::Reject { reason },
                    PARENT_CLOSED => Control::ParentClosed { reason },
                    ABORT => Control::Abort { reason },
                    _ => Control::ProtocolError { reason },
                })
            }
            HELLO | TRAILERS => {
                let headers = std::str::from_utf8(body)
                    .map_err(|_| ControlError::Malformed(ty))?
                    .to_owned();
                Ok(if ty == HELLO {
                    Control::Hello { headers }
                } else {
                    Control::Trailers { headers }
                })
            }
            other => Err(ControlError::UnknownType(other)),
        }
    }
}

/// Incremental parser for a control stream.
#[derive(Debug)]
pub(crate) struct Parser {
    frames: frame::Assembler,
}

impl Parser {
    pub(crate) fn new() -> Self {
        Self {
            frames: frame::Assembler::new(MAX_RECORD),
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Control>, ControlError> {
        self.frames
            .push(chunk)?
            .iter()
            .map(|f| Control::decode(f))
            .collect()
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Regression (fuzz/control): a reason longer than `MAX_REASON` from
    /// the remote is cut to it on decoding, like the reasons we send.
    #[test]
    fn long_remote_reasons_are_cut_like_ours() {
        for ty in [REJECT, PARENT_CLOSED, PROTOCOL_ERROR, ABORT] {
            let mut body = vec![ty];
            body.extend("é".repeat(MAX_REASON).as_bytes());
            let rec = Control::decode(&body).unwrap();
            let (Control::Reject { reason }
            | Control::ParentClosed { reason }
            | Control::ProtocolError { reason }
            | Control::Abort { reason }) = &rec
            else {
                unreachable!()
            };
            assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
            let framed = rec.encode();
            assert_eq!(Control::decode(&framed[4..]).unwrap(), rec);
        }
    }
    use proptest::prelude::*;

    #[test]
    fn golden() {
        assert_eq!(
            &Control::Accept {
                window: 0x0010_0000,
                id: 3
            }
            .encode()[..],
            b"\0\0\0\x09\x01\x00\x10\x00\x00\0\0\0\x03"
        );
        assert_eq!(
            &Control::Window { increment: 7 }.encode()[..],
            b"\0\0\0\x05\x02\0\0\0\x07"
        );
        assert_eq!(
            &Control::Reject {
                reason: "no".into()
            }
            .encode()[..],
            b"\0\0\0\x03\x03no"
        );
        assert_eq!(&Control::Eof.encode()[..], b"\0\0\0\x01\x07");
        assert_eq!(
            &Control::ProtocolError { reason: "x".into() }.encode()[..],
            b"\0\0\0\x02\x08x"
        );
        assert_eq!(
            &Control::Abort {
                reason: "cut".into()
            }
            .encode()[..],
            b"\0\0\0\x04\x09cut"
        );
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Control::decode(&[10]), Err(ControlError::UnknownType(10)));
        assert_eq!(Control::decode(&[9, 0xff]), Err(ControlError::Malformed(9)));
        assert_eq!(Control::decode(&[6, 0xc3]), Err(ControlError::Malformed(6)));
        assert_eq!(Control::decode(&[2, 0]), Err(ControlError::Malformed(2)));
        assert_eq!(Control::decode(&[7, 0]), Err(ControlError::Malformed(7)));
        assert_eq!(
            Control::decode(&[1, 0, 0, 0, 1]),
            Err(ControlError::Malformed(1))
        );
        assert_eq!(Control::decode(&[]), Err(ControlError::Malformed(0)));
        assert_eq!(Control::decode(&[3, 0xff]), Err(ControlError::Malformed(3)));
        let mut p = Parser::new();
        assert!(p.push(&[0, 1, 0, 0]).is_err());
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let r = "é".repeat(MAX_REASON);
        let enc = Control::Reject { reason: r }.encode();
        let mut p = Parser::new();
        let got = p.push(&enc).unwrap();
        let Control::Reject { reason } = &got[0] else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_REASON);
    }

    proptest! {
        #[test]
        fn round_trip(w in any::<u32>(), reason in ".{0,100}") {
            let recs = vec![
                Control::Accept { window: w, id: w.rotate_left(7) },
                Control::Window { increment: w },
                Control::Reject { reason: reason.clone() },
                Control::Hello { headers: reason.clone() },
                Control::ParentClosed { reason: reason.clone() },
                Control::ProtocolError { reason: reason.clone() },
                Control::Abort { reason: reason.clone() },
                Control::Eof,
                Control::Trailers { headers: reason },
            ];
            let mut wire = Vec::new();
            for r in &recs { wire.extend_from_slice(&r.encode()); }
            let mut p = Parser::new();
            prop_assert_eq!(p.push(&wire).unwrap(), recs);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Parser::new().push(&data);
        }
    }
}
