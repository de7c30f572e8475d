//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! Message frames share the channel's data stream with plain bytes; error
//! frames and control records use the same framing on their own
//! extended-data streams.

use bytes::{Buf, Bytes, BytesMut};

/// Size of the length prefix.
pub(crate) const HEADER_LEN: usize = 4;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix claims more than the configured maximum. Nothing is
    /// allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The claimed length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received (prefix included).
        got: usize,
        /// Bytes needed (prefix included).
        want: usize,
    },
}

/// The length prefix for a payload of `len` bytes.
pub(crate) fn encode_header(len: usize, max: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    match u32::try_from(len) {
        Ok(n) if len <= max => Ok(n.to_be_bytes()),
        _ => Err(FrameError::TooLarge {
            len: len as u64,
            max,
        }),
    }
}

/// The payload length a prefix announces, if it is within `max`.
pub(crate) fn decode_header(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(n) if n <= max => Ok(n),
        _ => Err(FrameError::TooLarge {
            len: u64::from(len),
            max,
        }),
    }
}

/// Prefix and payload in one buffer.
pub(crate) fn encode(payload: &[u8], max: usize) -> Result<Bytes, FrameError> {
    let header = encode_header(payload.len(), max)?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    Ok(out.freeze())
}

/// Reassembles frames from chunks that may split or join them arbitrarily.
/// Holds at most one frame's worth of bytes (bounded by `max`).
#[derive(Debug)]
pub(crate) struct Assembler {
    buf: BytesMut,
    max: usize,
}

impl Assembler {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Adds `chunk` and returns every frame it completes. On error the
    /// assembler is left unusable (the stream is desynchronised).
    pub(crate) fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<Bytes>, FrameError> {
        let mut frames = Vec::new();
        while !chunk.is_empty() {
            let need = self.needed()?;
            let take = need.min(chunk.len());
            let (head, rest) = chunk.split_at(take);
            self.buf.extend_from_slice(head);
            chunk = rest;
            if self.buf.len() >= HEADER_LEN && self.needed()? == 0 {
                let mut frame = self.buf.split().freeze();
                frame.advance(HEADER_LEN);
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    /// Bytes still needed to finish the current prefix or frame.
    fn needed(&self) -> Result<usize, FrameError> {
        match self.buf.get(..HEADER_LEN) {
            None => Ok(HEADER_LEN - self.buf.len()),
            Some(h) => {
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(h);
                let len = decode_header(header, self.max)?;
                Ok(HEADER_LEN + len - self.buf.len())
            }
        }
    }

    /// Bytes held for the frame being assembled.
    pub(crate) fn partial_len(&self) -> usize {
        self.buf.len()
    }

    /// Called at end of stream: an error if a frame was left incomplete.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            let want = self.needed().map(|n| n + self.buf.len()).unwrap_or(0);
            Err(FrameError::Truncated {
                got: self.buf.len(),
                want,
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden() {
        assert_eq!(&encode(b"abc", 10).unwrap()[..], b"\0\0\0\x03abc");
        assert_eq!(&encode(b"", 10).unwrap()[..], b"\0\0\0\0");
        assert!(encode(b"abc", 2).is_err());
        assert_eq!(decode_header([0, 0, 1, 0], 256), Ok(256));
        assert_eq!(
            decode_header([0xff; 4], 8 << 20),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                max: 8 << 20
            })
        );
    }

    #[test]
    fn assembler_rejects_huge_claim_without_allocating() {
        let mut a = Assembler::new(1024);
        assert!(a.push(&[0xff, 0xff, 0xff, 0xff, 1, 2]).is_err());
        let mut a = Assembler::new(1024);
        assert_eq!(a.push(&[0, 0, 0]).unwrap().len(), 0);
        assert!(a.finish().is_err());
    }

    proptest! {
        #[test]
        fn assembler_reassembles(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..10),
                                 cuts in proptest::collection::vec(1usize..64, 1..50)) {
            let mut wire = Vec::new();
            for f in &frames { wire.extend_from_slice(&encode(f, 1000).unwrap()); }
            let mut a = Assembler::new(1000);
            let mut out = Vec::new();
            let mut rest = &wire[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                let (h, t) = rest.split_at(n);
                out.extend(a.push(h).unwrap());
                rest = t;
                i += 1;
            }
            a.finish().unwrap();
            prop_assert_eq!(out.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), frames);
        }

        #[test]
        fn assembler_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut a = Assembler::new(64);
            let _ = a.push(&data);
        }
    }
}
