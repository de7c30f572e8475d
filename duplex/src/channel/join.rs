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
#[error("join failed after {} bytes to the channel and {} from it: {source}", .stats.to_channel, .stats.from_channel)]
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
    /// Dropping the future stops both directions and closes the channel.
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
            Err(source) => Err(JoinError { stats, source }),
        }
    }
}
