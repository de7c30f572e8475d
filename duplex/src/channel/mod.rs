//! Channels: the application's view of one multiplexed stream.

mod incoming;
mod join;
mod reader;
mod writer;

pub use incoming::{Children, IncomingChannel};
pub use join::{JoinError, JoinStats, SpliceError};
use reader::*;
pub use reader::{ChannelReader, ReadEvent};
pub use writer::{ChannelWriter, ErrorWriter};

pub use crate::conn::meta::ChannelMeta;
pub use crate::error::ChannelEnd;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::chan::ChanShared;
use crate::conn::owned::Owned;
use crate::error::{ChannelError, OpenError};
use crate::proto::headers::Headers;

/// Sends EOF when the last of a channel's writing handles (its
/// [`ChannelWriter`] and any [`ErrorWriter`]s) is dropped. A count in the
/// channel's driver, not an allocation of its own.
pub(super) struct EofOnDrop(Arc<ChanShared>);

impl EofOnDrop {
    fn new(shared: Arc<ChanShared>) -> Self {
        shared.writers.fetch_add(1, Ordering::Relaxed);
        EofOnDrop(shared)
    }
}

impl Clone for EofOnDrop {
    fn clone(&self) -> Self {
        EofOnDrop::new(self.0.clone())
    }
}

impl Drop for EofOnDrop {
    fn drop(&mut self) {
        // The last writer: a half-close if someone still reads the channel
        // (this writer's own `Closer` is the one other count). Otherwise
        // this is the channel's last handle: `Closer` closes it, or aborts
        // it if unfinished.
        if self.0.writers.fetch_sub(1, Ordering::AcqRel) == 1
            && self.0.handles.load(Ordering::Acquire) > 1
        {
            self.0.send_eof();
        }
    }
}

/// Closes the SSH channel when the last handle of a [`Channel`] (its
/// halves and their `ErrorWriter`s) is dropped. A count in the channel's
/// driver, not an allocation of its own.
pub(super) struct Closer(Arc<ChanShared>);

impl Closer {
    fn new(shared: Arc<ChanShared>) -> Self {
        shared.handles.fetch_add(1, Ordering::Relaxed);
        Closer(shared)
    }
}

impl Clone for Closer {
    fn clone(&self) -> Self {
        Closer::new(self.0.clone())
    }
}

impl Drop for Closer {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.close_on_drop();
        }
    }
}

/// A bidirectional, flow-controlled stream to a remote peer.
///
/// A channel carries a byte stream ([`AsyncRead`]/[`AsyncWrite`]) on which
/// length-prefixed message frames can also be written
/// ([`write_frame`](Self::write_frame), [`read_frame`](Self::read_frame)), and
/// a separate stream of error frames ([`write_error`](Self::write_error),
/// [`read_error`](Self::read_error)).
///
/// Writing queues bytes for the connection to send, within the credit the
/// remote granted: a remote that stops reading stops our writes, and only
/// ours. `poll_write` never takes bytes it cannot queue, so every write
/// method that works through it is cancel-safe; `flush` waits until queued
/// bytes reached the SSH session.
///
/// **Finishing and aborting.** End your writing with
/// [`close_write`](Self::close_write) (or `AsyncWriteExt::shutdown`, or
/// [`write_trailers`](Self::write_trailers)): the remote reads a clean end
/// of stream. [`abort`](Self::abort) abandons the channel instead: the
/// remote's reads fail with [`ChannelError::Aborted`] and your reason.
/// Dropping the channel after finishing closes it (bytes already queued
/// are sent first); dropping it *unfinished* aborts it, so a sender that
/// fails midway (an error returned with `?`, a panic) never looks like a
/// complete short stream. Dropping only the [`ChannelWriter`] half while
/// the [`ChannelReader`] is kept is a half-close, as with TCP: it sends EOF
/// (once no [`ErrorWriter`] of it is left).
/// Dropping only the reader half discards what arrives from then on
/// (still granting credit, so the remote is not stalled).
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let mut ch = peer.open("bob", "echo", duplex::Headers::new()).await?;
/// ch.write_all(b"hello").await?;
/// ch.close_write().await?;
/// let mut back = Vec::new();
/// ch.read_to_end(&mut back).await?;
/// # Ok(()) }
/// ```
#[must_use = "dropping a Channel closes it"]
pub struct Channel {
    reader: ChannelReader,
    writer: ChannelWriter,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.reader.shared.id)
            .field("service", &self.meta().service())
            .field("remote", &self.meta().remote_peer())
            .finish()
    }
}

impl Channel {
    /// The channel a driver-held open or accept became.
    pub(crate) fn from_owned(owned: Owned) -> Self {
        Channel::new(owned.into_shared())
    }

    pub(crate) fn new(shared: Arc<ChanShared>) -> Self {
        let closer = Closer::new(shared.clone());
        Channel {
            reader: ChannelReader {
                shared: shared.clone(),
                frame: FrameReadState::default(),
                ended: (false, false),
                _closer: closer.clone(),
            },
            writer: ChannelWriter {
                shared: shared.clone(),
                eof: EofOnDrop::new(shared),
                _closer: closer,
            },
        }
    }

    /// Service, headers and peers.
    pub fn meta(&self) -> &ChannelMeta {
        self.reader.meta()
    }

    /// Shortcut for `meta().service()`.
    pub fn service(&self) -> &str {
        self.meta().service()
    }

    /// Shortcut for `meta().headers()`.
    pub fn headers(&self) -> &Headers {
        self.meta().headers()
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (ChannelReader, ChannelWriter) {
        (self.reader, self.writer)
    }

    /// A handle for opening and accepting channels nested in this one. See
    /// [`Children`].
    pub fn children(&self) -> Children {
        Children {
            parent: self.reader.shared.clone(),
        }
    }

    /// Opens a channel nested in this one, to the same remote peer; the
    /// remote receives it from its side of this channel
    /// ([`accept`](Self::accept)), not from `Peer::accept`. See
    /// [`Children::open`].
    pub async fn open(&self, service: &str, headers: Headers) -> Result<Channel, OpenError> {
        self.children().open(service, headers).await
    }

    /// Waits for the next channel the remote opened inside this one;
    /// `None` once this channel is closed. See [`Children::accept`].
    pub async fn accept(&self) -> Option<IncomingChannel> {
        self.children().accept().await
    }

    /// Reads one message frame; `Ok(None)` at a clean end of stream (EOF on
    /// a frame boundary). See [`ChannelReader::read_frame`].
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>, ChannelError> {
        self.reader.read_frame().await
    }

    /// Reads one message frame of at most `max` bytes. See
    /// [`ChannelReader::read_frame_max`].
    pub async fn read_frame_max(&mut self, max: usize) -> Result<Option<Bytes>, ChannelError> {
        self.reader.read_frame_max(max).await
    }

    /// Waits until the channel has ended: closed by the remote (or by us),
    /// failed, or ended with its parent or connection; returns how. The
    /// future does not borrow the channel and does not keep it open. See
    /// [`ChannelWriter::closed`].
    pub fn closed(&self) -> impl Future<Output = ChannelEnd> + Send + 'static {
        let shared = self.reader.shared.clone();
        async move { shared.closed().await }
    }

    /// A handle for error frames from another task. See [`ErrorWriter`].
    pub fn error_writer(&self) -> ErrorWriter {
        self.writer.error_writer()
    }

    /// Writes one message frame. See [`ChannelWriter::write_frame`].
    pub async fn write_frame(&mut self, payload: &[u8]) -> Result<(), ChannelError> {
        self.writer.write_frame(payload).await
    }

    /// Sends one error frame. See [`ChannelWriter::write_error`].
    pub async fn write_error(&mut self, payload: &[u8]) -> Result<(), ChannelError> {
        self.writer.write_error(payload).await
    }

    /// Reads the next error frame. See [`ChannelReader::read_error`].
    pub async fn read_error(&mut self) -> Result<Option<Bytes>, ChannelError> {
        self.reader.read_error().await
    }

    /// Flushes and sends EOF: the remote reads end of stream; we can still
    /// read. See [`ChannelWriter::close_write`].
    pub async fn close_write(&mut self) -> Result<(), ChannelError> {
        self.writer.close_write().await
    }

    /// Ends our writing without waiting: EOF is queued behind what was
    /// written (see [`ChannelWriter::finish`]). A side that only reads
    /// (a progress channel, say) calls this, or `close_write`, before it
    /// drops the channel: dropping a channel unfinished aborts it.
    /// Idempotent.
    pub fn finish(&mut self) {
        self.writer.finish();
    }

    /// Ends our writing with trailers (key/value pairs the remote reads with
    /// [`trailers`](Self::trailers) after all the data), then EOF. Writing
    /// afterwards is an error. See [`ChannelWriter::write_trailers`].
    pub async fn write_trailers(&mut self, trailers: &Headers) -> Result<(), ChannelError> {
        self.writer.write_trailers(trailers).await
    }

    /// Waits until the remote finished writing and returns its trailers
    /// (empty if it sent none). See [`ChannelReader::trailers`].
    pub async fn trailers(&self) -> Result<Headers, ChannelError> {
        self.reader.trailers().await
    }

    /// Flushes what is queued, then closes the channel in both directions.
    ///
    /// Not needed for cleanup (dropping closes too), but it lets the caller
    /// see a failure to deliver queued bytes. Cancel-safe: if cancelled, the
    /// channel is closed when dropped.
    pub async fn close(self) -> Result<(), ChannelError> {
        let res = std::future::poll_fn(|cx| self.writer.shared.poll_flush(cx)).await;
        self.writer.shared.send_close();
        res
    }

    /// Abandons the channel: bytes written before still go out, then the
    /// remote's reads fail with [`ChannelError::Aborted`] carrying
    /// `reason` (at most 1 KiB is sent), never a clean end of stream, and
    /// the channel closes in both directions (its nested channels end
    /// too). This side's other handles fail with
    /// [`ChannelError::AbortedHere`]. After [`close_write`](Self::close_write)
    /// it only closes the channel. Not async: it queues and returns; a
    /// process about to exit should shut its peer down first
    /// ([`Peer::shutdown`](crate::Peer::shutdown) sends what is queued), or
    /// the remote may see the connection lost rather than the reason.
    ///
    /// On a connection of protocol version 3 the reason travels in an
    /// `ABORT` record; older peers see the channel closed with no EOF,
    /// which they report as an abort without the reason, and a plain SSH
    /// client sees the channel closed.
    ///
    /// ```no_run
    /// # async fn demo(peer: duplex::Peer, mut file: impl tokio::io::AsyncRead + Unpin) -> anyhow::Result<()> {
    /// let mut ch = peer.open("bob", "files.put", duplex::Headers::new()).await?;
    /// match tokio::io::copy(&mut file, &mut ch).await {
    ///     Ok(_) => ch.close_write().await?,
    ///     Err(e) => ch.abort(&format!("reading the file failed: {e}")),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn abort(self, reason: &str) {
        writer::abort(&self.writer.shared, reason);
    }

    /// Unread bytes buffered for this channel (data and error frames).
    pub fn buffered_len(&self) -> usize {
        self.reader.shared.buffered()
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
