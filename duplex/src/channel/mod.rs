//! Channels: the application's view of one multiplexed stream.

mod join;
pub(crate) mod state;

pub use join::{JoinError, JoinStats, SpliceError};

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{ChannelError, OpenError};
use crate::proto::EXT_ERROR;
use crate::proto::chan::Kind;
use crate::proto::control::Control;
use crate::proto::frame::{self, FrameError};
use crate::proto::headers::Headers;
use crate::proto::service::ServiceName;
use crate::ssh::keys::Fingerprint;
use state::ChanShared;

/// What is known about a channel: its service, headers, the two peers, and
/// its parent if it is nested. The same for channels we opened and channels
/// we accepted. Trailers come later, from [`Channel::trailers`].
///
/// Cheap to clone: clones share one copy.
#[derive(Debug, Clone)]
pub struct ChannelMeta {
    inner: Arc<MetaInner>,
}

#[derive(Debug)]
struct MetaInner {
    service: ServiceName,
    headers: Headers,
    local_peer: Arc<str>,
    remote_peer: Arc<str>,
    remote_fingerprint: Option<Fingerprint>,
    endpoint: Arc<str>,
    parent: Option<Arc<ChannelMeta>>,
}

impl ChannelMeta {
    pub(crate) fn new(
        service: ServiceName,
        headers: Headers,
        (local_peer, remote_peer, endpoint): (Arc<str>, Arc<str>, Arc<str>),
        remote_fingerprint: Option<Fingerprint>,
        parent: Option<Arc<ChannelMeta>>,
    ) -> Self {
        ChannelMeta {
            inner: Arc::new(MetaInner {
                service,
                headers,
                local_peer,
                remote_peer,
                remote_fingerprint,
                endpoint,
                parent,
            }),
        }
    }

    /// The service the channel was opened for.
    pub fn service(&self) -> &str {
        self.inner.service.as_str()
    }

    /// The headers sent with the open (empty for plain SSH clients).
    pub fn headers(&self) -> &Headers {
        &self.inner.headers
    }

    /// Our peer name.
    pub fn local_peer(&self) -> &str {
        &self.inner.local_peer
    }

    /// The remote peer's name.
    pub fn remote_peer(&self) -> &str {
        &self.inner.remote_peer
    }

    /// The remote peer's key fingerprint.
    pub fn remote_fingerprint(&self) -> Option<&Fingerprint> {
        self.inner.remote_fingerprint.as_ref()
    }

    /// The endpoint of the connection that carries the channel.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// For a nested channel, its parent's meta (whose own `parent` leads
    /// further up); `None` for a top-level channel.
    pub fn parent(&self) -> Option<&ChannelMeta> {
        self.inner.parent.as_deref()
    }

    /// How deep the channel is nested: 0 for a top-level channel, 1 for a
    /// channel opened inside one, and so on.
    pub fn depth(&self) -> u32 {
        let mut depth = 0;
        let mut up = self.parent();
        while let Some(p) = up {
            depth += 1;
            up = p.parent();
        }
        depth
    }
}

/// How a channel ended, as [`Channel::closed`] reports it.
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

impl fmt::Display for ChannelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelEnd::ClosedByRemote => f.write_str("the channel was closed by the remote peer"),
            ChannelEnd::ClosedHere => f.write_str("the channel was closed on this side"),
            ChannelEnd::Failed(e) => write!(f, "the channel failed: {e}"),
        }
    }
}

/// Sends EOF when the last of a channel's writing handles (its
/// [`ChannelWriter`] and any [`ErrorWriter`]s) is dropped.
struct EofOnDrop(Arc<ChanShared>);

impl Drop for EofOnDrop {
    fn drop(&mut self) {
        self.0.send_eof();
    }
}

/// Closes the SSH channel when the last half of a [`Channel`] is dropped.
struct Closer(Arc<ChanShared>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.send_close();
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
/// Dropping the channel sends EOF (if not sent yet) and closes it; bytes
/// already queued are sent first. Dropping only the [`ChannelWriter`] half
/// sends EOF (once no [`ErrorWriter`] of it is left); dropping only the [`ChannelReader`] half discards what arrives
/// from then on (still granting credit, so the remote is not stalled).
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
    pub(crate) fn new(shared: Arc<ChanShared>) -> Self {
        let closer = Arc::new(Closer(shared.clone()));
        Channel {
            reader: ChannelReader {
                shared: shared.clone(),
                frame: FrameReadState::default(),
                ended: (false, false),
                _closer: closer.clone(),
            },
            writer: ChannelWriter {
                shared: shared.clone(),
                eof: Arc::new(EofOnDrop(shared)),
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

#[derive(Default)]
struct FrameReadState {
    header: [u8; frame::HEADER_LEN],
    header_got: usize,
    body: Option<(usize, BytesMut)>,
}

/// The receiving half of a [`Channel`].
pub struct ChannelReader {
    shared: Arc<ChanShared>,
    frame: FrameReadState,
    /// Streams `read_event` has seen end: (data, error frames).
    ended: (bool, bool),
    _closer: Arc<Closer>,
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

fn meta_of(shared: &ChanShared) -> &ChannelMeta {
    // Every channel handed to the application has its meta set before; the
    // fallback only exists to avoid a panic path.
    static EMPTY: std::sync::OnceLock<ChannelMeta> = std::sync::OnceLock::new();
    shared.meta.get().map(|m| &**m).unwrap_or_else(|| {
        EMPTY.get_or_init(|| {
            ChannelMeta::new(
                ServiceName::new_any("@unknown").unwrap_or_else(|_| unreachable_name()),
                Headers::new(),
                (Arc::from(""), Arc::from(""), Arc::from("")),
                None,
                None,
            )
        })
    })
}

#[allow(clippy::panic)] // "@unknown" is a valid reserved name by construction
fn unreachable_name() -> ServiceName {
    panic!("invalid built-in service name")
}

impl ChannelReader {
    /// Service, headers and peers.
    pub fn meta(&self) -> &ChannelMeta {
        meta_of(&self.shared)
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

/// The sending half of a [`Channel`].
pub struct ChannelWriter {
    shared: Arc<ChanShared>,
    eof: Arc<EofOnDrop>,
    _closer: Arc<Closer>,
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
        meta_of(&self.shared)
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
/// gone: EOF is sent when the last of the writer and its `ErrorWriter`s is
/// dropped, and the channel closes when every handle is dropped. An
/// explicit `close_write` on any of them sends EOF at once.
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
    shared: Arc<ChanShared>,
    _eof: Arc<EofOnDrop>,
    _closer: Arc<Closer>,
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

/// Opens and accepts the channels nested in one channel (its children).
///
/// A nested channel goes to the same remote peer as its parent and is
/// delivered to the remote through its side of the parent, so a protocol
/// can open sub-streams (a callback, a side transfer) without any routing
/// of its own. Either side may open children, to any depth up to
/// [`Config::max_nesting_depth`](crate::Config::max_nesting_depth).
///
/// A child never outlives its parent: when the parent is closed (by either
/// side) or fails, every descendant fails with
/// [`ChannelError::ParentClosed`] saying which channel closed and how, and
/// is closed on both sides; when the connection dies they fail with
/// [`ChannelError::ConnectionLost`] like every channel. Close children
/// first when their last bytes matter.
///
/// The handle is cheap to clone and does not keep the parent open.
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
/// use duplex::Headers;
/// let session = peer.open("bob", "session", Headers::new()).await?;
/// // Opener: a side stream inside the session.
/// let mut log = session.open("log", Headers::new()).await?;
/// log.write_frame(b"started").await?;
/// # Ok(()) }
/// # async fn remote(peer: duplex::Peer) -> anyhow::Result<()> {
/// // The other side: children arrive through the parent.
/// let session = peer.accept().await.unwrap().accept().await;
/// while let Some(incoming) = session.accept().await {
///     let mut child = incoming.accept().await;
///     let first = child.read_frame().await?;
/// #   let _ = first;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Children {
    parent: Arc<ChanShared>,
}

impl fmt::Debug for Children {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Children")
            .field("parent", &self.parent.id)
            .finish()
    }
}

impl Children {
    /// The parent channel's meta.
    pub fn parent(&self) -> &ChannelMeta {
        meta_of(&self.parent)
    }

    /// Opens a channel for `service` nested in the parent, and waits until
    /// the remote application accepts it.
    ///
    /// Fails with [`OpenError::ParentClosed`] if the parent is closed (or
    /// closes meanwhile), [`OpenError::DepthLimit`] beyond our nesting
    /// limit (a remote with a lower limit rejects with a reason that says
    /// so), [`OpenError::NotNestable`] if the parent's remote is a plain SSH
    /// client, and otherwise like [`Peer::open`](crate::Peer::open).
    /// Cancel-safe: a channel whose open is abandoned is closed.
    pub async fn open(&self, service: &str, headers: Headers) -> Result<Channel, OpenError> {
        let service = ServiceName::new(service)?;
        let conn = self.parent.conn.clone();
        conn.open(service, headers, Some(self.parent.clone())).await
    }

    /// Waits for the next channel the remote opened inside the parent.
    ///
    /// Returns `None` once the parent is closed or failed (children not
    /// accepted by then are rejected). Cancel-safe: a cancelled call loses
    /// no channel. Unaccepted children count against
    /// [`Config::max_pending_channels`](crate::Config::max_pending_channels)
    /// like top-level ones.
    pub async fn accept(&self) -> Option<IncomingChannel> {
        self.parent.accept_child().await
    }
}

/// A channel the remote opened, waiting for the application to accept or
/// reject it. Dropping it rejects the channel. One left waiting longer than
/// [`Config::accept_timeout`](crate::Config::accept_timeout) is rejected
/// for the application (and never handed out by `accept`).
pub struct IncomingChannel {
    shared: Option<Arc<ChanShared>>,
}

impl fmt::Debug for IncomingChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingChannel")
            .field("service", &self.meta().service())
            .field("remote", &self.meta().remote_peer())
            .finish()
    }
}

impl IncomingChannel {
    /// `shared` is pending: a plain SSH client's open waits in it (see
    /// `ChanShared::set_plain_reply`) for our answer.
    pub(crate) fn new(shared: Arc<ChanShared>) -> Self {
        Self {
            shared: Some(shared),
        }
    }

    /// The accept timeout rejected it while it waited in a queue.
    pub(crate) fn is_expired(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.is_answered())
    }

    /// Service, headers and peers.
    pub fn meta(&self) -> &ChannelMeta {
        match &self.shared {
            Some(s) => meta_of(s),
            None => unreachable_meta(),
        }
    }

    /// Shortcut for `meta().service()`.
    pub fn service(&self) -> &str {
        self.meta().service()
    }

    /// Shortcut for `meta().headers()`.
    pub fn headers(&self) -> &Headers {
        self.meta().headers()
    }

    /// Accepts the channel: the opener's `open` returns and data flows.
    ///
    /// Cancel-safe in that a cancelled accept leaves the channel to be
    /// closed when it is dropped. If the accept timeout rejected the
    /// channel a moment before, the channel returned has failed: its reads
    /// and writes return [`ChannelError::NotAccepted`].
    pub async fn accept(mut self) -> Channel {
        let Some(shared) = self.shared.take() else {
            unreachable_incoming()
        };
        if !shared.take_answer() {
            return Channel::new(shared); // rejected by the accept timeout
        }
        shared.conn.pending_done(shared.kind);
        match shared.take_plain_reply() {
            Some(reply) => {
                shared.conn.insert(shared.clone());
                let channel = Channel::new(shared);
                reply.accept().await;
                channel
            }
            None => {
                shared.accept_duplex();
                Channel::new(shared)
            }
        }
    }

    /// Rejects the channel; the opener's `open` fails with
    /// [`OpenError::Rejected`] carrying `reason`
    /// (at most 1 KiB is sent).
    pub async fn reject(mut self, reason: &str) {
        if let Some(shared) = self.shared.take()
            && shared.take_answer()
        {
            shared.conn.pending_done(shared.kind);
            match shared.take_plain_reply() {
                Some(reply) => {
                    reply
                        .reject(crate::proto::open::OPEN_PROHIBITED, reason)
                        .await
                }
                None => {
                    shared.send_control(&Control::Reject {
                        reason: reason.to_owned(),
                    });
                    shared.send_close();
                }
            }
        }
    }
}

impl Drop for IncomingChannel {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take()
            && shared.take_answer()
        {
            shared.conn.pending_done(shared.kind);
            // A plain client's deferred open is refused by russh when the
            // reply handle drops.
            if shared.take_plain_reply().is_none() && shared.kind == Kind::Duplex {
                shared.send_control(&Control::Reject {
                    reason: "the application did not accept the channel".to_owned(),
                });
                shared.send_close();
            }
        }
    }
}

#[allow(clippy::panic)] // `shared` is only taken by methods that consume self
fn unreachable_incoming() -> ! {
    panic!("IncomingChannel used after accept/reject")
}

fn unreachable_meta() -> &'static ChannelMeta {
    unreachable_incoming()
}
