//! The sending half of a channel: bytes, frames, error frames, trailers,
//! half-close.

use crate::error::ChannelError;
use crate::proto::EXT_ERROR;
use crate::proto::frame::{self};
use crate::proto::headers::Headers;
use bytes::{Buf, Bytes};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

use super::*;

/// The sending half of a [`Channel`].
pub struct ChannelWriter {
    pub(super) shared: Arc<ChanShared>,
    pub(super) eof: EofOnDrop,
    pub(super) _closer: Closer,
}

impl fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelWriter")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl ChannelWriter {
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

    async fn write_owned(&mut self, ext: Option<u32>, data: Bytes) -> Result<(), ChannelError> {
        write_owned(&self.shared, ext, data).await
    }

    /// A handle that writes error frames from another task and keeps this
    /// channel's sending side open (no EOF) while it lives, even after this
    /// writer is dropped. See [`ErrorWriter`].
    pub fn error_writer(&self) -> ErrorWriter {
        ErrorWriter {
            shared: self.shared.clone(),
            _eof: self.eof.clone(),
            _closer: self._closer.clone(),
        }
    }

    /// Writes one message frame (length prefix and payload).
    ///
    /// Not cancel-safe: cancelled midway, part of the frame may have been
    /// queued, leaving the stream out of step; close the channel then.
    pub async fn write_frame(&mut self, payload: &[u8]) -> Result<(), ChannelError> {
        let max = self.shared.conn.config.max_frame_len;
        let framed = frame::encode(payload, max)?;
        self.write_owned(None, framed).await
    }

    /// Sends one error frame on the error stream (SSH extended data type 1,
    /// "stderr"), length-prefixed like message frames.
    ///
    /// Not cancel-safe, like `write_frame`.
    pub async fn write_error(&mut self, payload: &[u8]) -> Result<(), ChannelError> {
        write_error_frame(&self.shared, payload).await
    }

    /// Ends our writing: queues the trailers after everything written so
    /// far, then EOF, and waits until they are handed to the session.
    ///
    /// Fails with [`ChannelError::WriteClosed`] after `close_write` or a
    /// previous `write_trailers`, and with
    /// [`ChannelError::TrailersUnsupported`] towards a plain SSH client.
    /// Trailers are bounded like open headers (64 pairs, 16 KiB encoded by
    /// default). Cancel-safe: once it returned an error nothing was queued;
    /// once queued, cancelling only skips the wait.
    pub async fn write_trailers(&mut self, trailers: &Headers) -> Result<(), ChannelError> {
        self.shared.send_trailers(trailers)?;
        std::future::poll_fn(|cx| self.shared.poll_flush(cx)).await
    }

    /// Waits until the channel has ended: closed by the remote (or by us),
    /// failed, or ended with its parent or connection; returns how
    /// ([`ChannelEnd`]). EOF alone does not end it.
    ///
    /// A server uses it to notice that the caller went away while it is
    /// busy, without reading: a client that drops its channel closes it.
    /// Cancel-safe. The future does not borrow the writer and does not
    /// keep the channel open.
    pub fn closed(&self) -> impl Future<Output = ChannelEnd> + Send + 'static {
        let shared = self.shared.clone();
        async move { shared.closed().await }
    }

    /// Flushes, then sends EOF: the remote reads end of stream. Reading
    /// continues to work. Idempotent; cancel-safe.
    pub async fn close_write(&mut self) -> Result<(), ChannelError> {
        std::future::poll_fn(|cx| self.shared.poll_flush(cx)).await?;
        self.shared.send_eof();
        std::future::poll_fn(|cx| self.shared.poll_flush(cx)).await
    }

    /// Ends our writing without waiting: EOF is queued behind what was
    /// written, and the remote reads a clean end of stream once it all
    /// arrives. For code that cannot await (a `Drop`, a callback); prefer
    /// [`close_write`](Self::close_write), which reports a failure to
    /// deliver. Idempotent.
    pub fn finish(&mut self) {
        self.shared.send_eof();
    }

    /// Abandons the channel: the remote's reads fail with
    /// [`ChannelError::Aborted`] carrying `reason` (at most 1 KiB is sent)
    /// after the bytes written before, never a clean end of stream, and the
    /// channel closes in both directions (nested channels end too). After
    /// EOF it only closes the channel. See [`Channel::abort`].
    pub fn abort(self, reason: &str) {
        abort(&self.shared, reason);
    }
}

pub(super) fn abort(shared: &ChanShared, reason: &str) {
    shared.abort(reason.to_owned(), ChannelError::AbortedHere(reason.into()));
}

async fn write_owned(
    shared: &ChanShared,
    ext: Option<u32>,
    mut data: Bytes,
) -> Result<(), ChannelError> {
    while !data.is_empty() {
        let n = std::future::poll_fn(|cx| {
            let len = data.len();
            shared.poll_write_with(cx, ext, len, |n| data.slice(..n))
        })
        .await?;
        data.advance(n);
    }
    Ok(())
}

async fn write_error_frame(shared: &ChanShared, payload: &[u8]) -> Result<(), ChannelError> {
    let framed = frame::encode(payload, shared.conn.config.max_frame_len)?;
    write_owned(shared, Some(EXT_ERROR), framed).await
}

/// Writes error frames on a channel from a task other than the one holding
/// its [`ChannelWriter`], and holds the channel's EOF back while it lives.
///
/// A server that hands the channel's halves to a handler keeps one of
/// these to report how the handler ended (a status after a panic, a
/// deadline, a cancellation) even after the handler and its halves are
/// gone. An explicit `close_write` or `finish` on any of them sends EOF;
/// dropping the last of the writer and its `ErrorWriter`s sends EOF too
/// while a reader of the channel is left, and otherwise aborts the channel
/// (see [`Channel`](crate::Channel) on dropping).
///
/// Error frames from two handles at once may interleave; write them from
/// one at a time.
///
/// ```no_run
/// # async fn demo(channel: duplex::Channel) -> anyhow::Result<()> {
/// let mut errors = channel.error_writer();
/// let handler = tokio::spawn(async move { drop(channel) /* ... */ });
/// if handler.await.is_err() {
///     errors.write_error(b"the handler panicked").await?;
/// }
/// # Ok(()) }
/// ```
pub struct ErrorWriter {
    pub(super) shared: Arc<ChanShared>,
    pub(super) _eof: EofOnDrop,
    pub(super) _closer: Closer,
}

impl fmt::Debug for ErrorWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorWriter")
            .field("id", &self.shared.id)
            .finish()
    }
}

impl ErrorWriter {
    /// Sends one error frame, like [`ChannelWriter::write_error`]. Not
    /// cancel-safe, like it.
    pub async fn write_error(&mut self, payload: &[u8]) -> Result<(), ChannelError> {
        write_error_frame(&self.shared, payload).await
    }

    /// Flushes what is queued and sends EOF now. Idempotent; cancel-safe.
    pub async fn close_write(&mut self) -> Result<(), ChannelError> {
        std::future::poll_fn(|cx| self.shared.poll_flush(cx)).await?;
        self.shared.send_eof();
        std::future::poll_fn(|cx| self.shared.poll_flush(cx)).await
    }

    /// Queues EOF without waiting, like [`ChannelWriter::finish`]: the
    /// channel's writing is complete.
    pub fn finish(&mut self) {
        self.shared.send_eof();
    }
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared
            .poll_write_with(cx, None, buf.len(), |n| {
                Bytes::copy_from_slice(buf.get(..n).unwrap_or(buf))
            })
            .map_err(io::Error::from)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.poll_flush(cx).map_err(io::Error::from)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.shared.poll_flush(cx)).map_err(io::Error::from)?;
        self.shared.send_eof();
        self.shared.poll_flush(cx).map_err(io::Error::from)
    }
}
