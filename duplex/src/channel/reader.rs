//! The receiving half of a channel: bytes, frames, error frames, trailers.

use crate::error::ChannelError;
use crate::proto::frame::{self, FrameError};
use crate::proto::headers::Headers;
use bytes::{Bytes, BytesMut};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

#[derive(Default)]
pub(super) struct FrameReadState {
    pub(super) header: [u8; frame::HEADER_LEN],
    pub(super) header_got: usize,
    pub(super) body: Option<(usize, BytesMut)>,
}

/// The receiving half of a [`Channel`].
pub struct ChannelReader {
    pub(super) shared: Arc<ChanShared>,
    pub(super) frame: FrameReadState,
    /// Streams `read_event` has seen end: (data, error frames).
    pub(super) ended: (bool, bool),
    pub(super) _closer: Closer,
}

/// What [`ChannelReader::read_event`] found next.
#[derive(Debug)]
pub enum ReadEvent {
    /// This many bytes of data were read into the buffer.
    Data(usize),
    /// One error frame.
    Error(Bytes),
}

impl fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReader")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        self.shared.reader_dropped();
    }
}

impl ChannelReader {
    /// Service, headers and peers.
    pub fn meta(&self) -> &ChannelMeta {
        self.shared.meta_or_unknown()
    }

    /// A handle for channels nested in this one. See [`Children`].
    pub fn children(&self) -> Children {
        Children {
            parent: self.shared.clone(),
        }
    }

    /// Reads one message frame: a 4-byte big-endian length, then that many
    /// bytes. Returns `Ok(None)` at EOF on a frame boundary.
    ///
    /// A length above the configured `max_frame_len` is an error before
    /// anything is allocated for it; EOF inside a frame is
    /// [`FrameError::Truncated`]. After either, the byte stream is out of
    /// step and the channel should be closed.
    ///
    /// Cancel-safe: a partly read frame is kept and completed by the next
    /// call.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, ChannelError> {
        std::future::poll_fn(|cx| self.poll_read_frame_max(cx, usize::MAX)).await
    }

    /// Like [`read_frame`](Self::read_frame) with a tighter bound: a frame
    /// longer than `max` bytes (or than the configured `max_frame_len`,
    /// whichever is smaller) fails with [`FrameError::TooLarge`] as soon as
    /// its length prefix is read, before any of its body is read or
    /// allocated. For protocols with their own message-size limit.
    ///
    /// Cancel-safe, like `read_frame`.
    pub async fn read_frame_max(&mut self, max: usize) -> Result<Option<Bytes>, ChannelError> {
        std::future::poll_fn(|cx| self.poll_read_frame_max(cx, max)).await
    }

    /// Poll form of [`read_frame_max`](Self::read_frame_max), for
    /// implementing `Stream`s of frames.
    pub fn poll_read_frame_max(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ChannelError>> {
        let max = max.min(self.shared.conn.config.max_frame_len);
        loop {
            if let Some((len, body)) = &mut self.frame.body {
                if body.len() == *len {
                    let (_, body) = self.frame.body.take().unwrap_or_default();
                    self.frame.header_got = 0;
                    return Poll::Ready(Ok(Some(body.freeze())));
                }
                let want = *len - body.len();
                match ready!(self.shared.poll_read_chunk(cx, want)) {
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => {
                        let got = frame::HEADER_LEN + body.len();
                        let want = frame::HEADER_LEN + *len;
                        return Poll::Ready(Err(FrameError::Truncated { got, want }.into()));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            let need = frame::HEADER_LEN - self.frame.header_got;
            match ready!(self.shared.poll_read_chunk(cx, need)) {
                Ok(Some(chunk)) => {
                    let start = self.frame.header_got;
                    if let Some(dst) = self.frame.header.get_mut(start..start + chunk.len()) {
                        dst.copy_from_slice(&chunk);
                    }
                    self.frame.header_got += chunk.len();
                    if self.frame.header_got == frame::HEADER_LEN {
                        let len = frame::decode_header(self.frame.header, max)?;
                        // Grow as bytes arrive rather than trusting the claim.
                        let body = BytesMut::with_capacity(len.min(64 << 10));
                        self.frame.body = Some((len, body));
                    }
                }
                Ok(None) if self.frame.header_got == 0 => return Poll::Ready(Ok(None)),
                Ok(None) => {
                    let got = self.frame.header_got;
                    return Poll::Ready(Err(FrameError::Truncated {
                        got,
                        want: frame::HEADER_LEN,
                    }
                    .into()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads the next error frame sent with `write_error`; `Ok(None)` once
    /// the remote sent EOF and every error frame was read.
    ///
    /// Error frames travel apart from data (SSH extended data type 1), so
    /// they can be read at any time. Cancel-safe.
    pub async fn read_error(&mut self) -> Result<Option<Bytes>, ChannelError> {
        std::future::poll_fn(|cx| self.shared.poll_read_error(cx)).await
    }

    /// Waits until the remote finished writing (EOF or close) and returns
    /// the trailers it sent, or empty headers if it sent none.
    ///
    /// Trailers arrive after all of the remote's data; they are kept until
    /// asked for, and a reader that never asks is unaffected. This does not
    /// consume data: call it after reading to the end, or from another task.
    /// Cancel-safe.
    pub async fn trailers(&self) -> Result<Headers, ChannelError> {
        std::future::poll_fn(|cx| self.shared.poll_trailers(cx)).await
    }

    /// Waits for whichever comes first, data (read into `buf`) or an error
    /// frame, to follow both streams from one task; `Ok(None)` once both
    /// have ended. Cancel-safe.
    pub async fn read_event(&mut self, buf: &mut [u8]) -> Result<Option<ReadEvent>, ChannelError> {
        loop {
            let (data_done, errors_done) = self.ended;
            if data_done && errors_done {
                return Ok(None);
            }
            enum Got {
                Data(Result<usize, ChannelError>),
                Error(Result<Option<Bytes>, ChannelError>),
            }
            let got = std::future::poll_fn(|cx| {
                if !errors_done && let Poll::Ready(e) = self.shared.poll_read_error(cx) {
                    return Poll::Ready(Got::Error(e));
                }
                if !data_done {
                    let mut rb = ReadBuf::new(buf);
                    if let Poll::Ready(r) = self.shared.poll_read(cx, &mut rb) {
                        return Poll::Ready(Got::Data(r.map(|()| rb.filled().len())));
                    }
                }
                Poll::Pending
            })
            .await;
            match got {
                Got::Data(r) => match r? {
                    0 if !buf.is_empty() => self.ended.0 = true,
                    n => return Ok(Some(ReadEvent::Data(n))),
                },
                Got::Error(e) => match e? {
                    Some(frame) => return Ok(Some(ReadEvent::Error(frame))),
                    None => self.ended.1 = true,
                },
            }
        }
    }

    /// Poll form of [`read_error`](Self::read_error), for reading both
    /// streams from one task.
    pub fn poll_read_error(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, ChannelError>> {
        self.shared.poll_read_error(cx)
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.poll_read(cx, buf).map_err(io::Error::from)
    }
}
