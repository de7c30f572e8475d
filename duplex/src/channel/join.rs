//! Splicing a channel to another byte stream (proxies and gateways).

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::Channel;

/// Bytes moved by [`Channel::join`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Bytes read from the other stream and written to the channel.
    pub to_channel: u64,
    /// Bytes read from the channel and written to the other stream.
    pub from_channel: u64,
}

/// [`Channel::join`] stopped on an error.
#[derive(Debug, thiserror::Error)]
#[error("join failed after {} bytes to the channel and {} from it", .stats.to_channel, .stats.from_channel)]
pub struct JoinError {
    /// What was moved before the error.
    pub stats: JoinStats,
    /// The first error, from either direction.
    pub source: io::Error,
}

const BUF: usize = 64 << 10;

async fn pump<R, W>(from: R, to: &mut W, moved: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut from = BufReader::with_capacity(BUF, from);
    loop {
        let chunk = from.fill_buf().await?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        to.write_all(chunk).await?;
        from.consume(n);
        *moved += n as u64;
    }
    // Half-close travels on: EOF from one side becomes shutdown of the other.
    to.shutdown().await
}

impl Channel {
    /// Splices the channel with `io` in both directions until both are done:
    /// bytes read from `io` are written to the channel and the other way
    /// round, and EOF on either side is passed on as a half-close (channel
    /// EOF, or `shutdown` of `io`). Returns the bytes moved, or the first
    /// error with the bytes moved until then.
    ///
    /// Error frames are not forwarded (a byte stream has nowhere to put them).
    /// On an error either way the channel is aborted with it (see
    /// [`Channel::abort`]), so the remote never takes a broken transfer for
    /// a complete one; dropping the future stops both directions and
    /// aborts the channel likewise, unless its writing was finished.
    ///
    /// ```no_run
    /// # async fn gateway(ch: duplex::Channel) -> anyhow::Result<()> {
    /// let backend = tokio::net::TcpStream::connect("127.0.0.1:5432").await?;
    /// let stats = ch.join(backend).await?;
    /// println!("{} bytes up, {} down", stats.from_channel, stats.to_channel);
    /// # Ok(()) }
    /// ```
    pub async fn join<S>(self, io: S) -> Result<JoinStats, JoinError>
    where
        S: AsyncRead + AsyncWrite,
    {
        let (ch_read, mut ch_write) = self.split();
        let (io_read, mut io_write) = tokio::io::split(io);
        let mut stats = JoinStats::default();
        let result = tokio::try_join!(
            pump(io_read, &mut ch_write, &mut stats.to_channel),
            pump(ch_read, &mut io_write, &mut stats.from_channel),
        );
        match result {
            Ok(_) => Ok(stats),
            Err(source) => {
                // The remote must not take what it got for the whole
                // stream (a no-op if the channel failed already).
                ch_write.abort(&format!(
                    "the stream joined to the channel failed: {source}"
                ));
                Err(JoinError { stats, source })
            }
        }
    }
}

/// One direction of [`Channel::splice`]: data, error frames, then trailers
/// (or plain EOF).
async fn forward(
    mut from: super::ChannelReader,
    to: &mut super::ChannelWriter,
    moved: &mut u64,
) -> Result<(), crate::ChannelError> {
    let mut buf = vec![0u8; BUF];
    while let Some(event) = from.read_event(&mut buf).await? {
        match event {
            super::ReadEvent::Data(n) => {
                to.write_all(buf.get(..n).unwrap_or_default())
                    .await
                    .map_err(io_to_channel)?;
                *moved += n as u64;
            }
            super::ReadEvent::Error(frame) => to.write_error(&frame).await?,
        }
    }
    let trailers = from.trailers().await?;
    if trailers.is_empty() {
        to.close_write().await
    } else {
        to.write_trailers(&trailers).await
    }
}

fn io_to_channel(e: io::Error) -> crate::ChannelError {
    match e
        .into_inner()
        .map(|inner| inner.downcast::<crate::ChannelError>())
    {
        Some(Ok(ce)) => *ce,
        Some(Err(other)) => crate::ChannelError::ConnectionLost(other.to_string().into()),
        None => crate::ChannelError::ConnectionLost("I/O error".into()),
    }
}

/// [`Channel::splice`] stopped on an error.
#[derive(Debug, thiserror::Error)]
#[error("splice failed after {} bytes one way and {} the other", .stats.to_channel, .stats.from_channel)]
pub struct SpliceError {
    /// What was moved before the error (`from_channel`: from `self`).
    pub stats: JoinStats,
    /// The first error, from either direction.
    pub source: crate::ChannelError,
}

impl Channel {
    /// Splices two channels (a gateway between two peers): data, error
    /// frames, half-close and trailers each way, until both directions are
    /// done. In the returned stats `from_channel` counts bytes read from
    /// `self`, `to_channel` bytes written to it.
    ///
    /// When one side fails (an abort included), the other is aborted with
    /// the reason. Dropping the future stops both directions and aborts
    /// both channels unless their writing was finished.
    pub async fn splice(self, other: Channel) -> Result<JoinStats, SpliceError> {
        let (a_read, mut a_write) = self.split();
        let (b_read, mut b_write) = other.split();
        let mut stats = JoinStats::default();
        let result = tokio::try_join!(
            forward(a_read, &mut b_write, &mut stats.from_channel),
            forward(b_read, &mut a_write, &mut stats.to_channel),
        );
        match result {
            Ok(_) => Ok(stats),
            Err(source) => {
                // An abort (or any failure) on one side aborts the other:
                // neither remote takes a cut stream for a complete one.
                let why = format!("the channel spliced to this one failed: {source}");
                a_write.abort(&why);
                b_write.abort(&why);
                Err(SpliceError { stats, source })
            }
        }
    }
}
