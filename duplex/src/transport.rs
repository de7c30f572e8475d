//! A transport wrapper that keeps the SSH session reading while its writes
//! wait on the network.
//!
//! russh's session loop writes each batch of packets inline and reads
//! nothing until the write completes. When both ends send bulk data at once
//! and both directions' socket buffers fill (quickly on Unix sockets and
//! pipes), each loop waits for the other to read: a deadlock. Here writes
//! land in a buffer that a task of our own drains to the socket, so the loop
//! always comes back to reading.
//!
//! The buffer is bounded in practice by flow control: what the session
//! writes is channel data within the credit the remote granted, plus small
//! control messages. As a last resort it is also bounded by
//! [`Config::max_send_buffer`](crate::Config), past which writes wait (and
//! the deadlock above becomes possible again, for that much data in flight).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct State {
    buf: BytesMut,
    error: Option<(io::ErrorKind, String)>,
    shutdown: bool,
    done: bool,
    /// The session, waiting for room (over the limit) or for the drain on
    /// shutdown.
    waiter: Option<Waker>,
}

struct Shared {
    state: Mutex<State>,
    wake_writer: Notify,
    limit: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The session's side: reads go straight to the stream, writes to the
/// buffer.
pub(crate) struct Decoupled<S> {
    read: ReadHalf<S>,
    shared: Arc<Shared>,
}

/// Splits `stream` and starts the task that drains writes into it. The task
/// ends once the session shut the stream down (or dropped it) and the buffer
/// is written, or when `cancel` fires.
pub(crate) fn decouple<S>(
    stream: S,
    limit: usize,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Decoupled<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: BytesMut::new(),
            error: None,
            shutdown: false,
            done: false,
            waiter: None,
        }),
        wake_writer: Notify::new(),
        limit,
    });
    tracker.spawn(drain(write, shared.clone(), cancel));
    Decoupled { read, shared }
}

async fn drain<S: AsyncWrite>(
    mut write: WriteHalf<S>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    loop {
        let notified = shared.wake_writer.notified();
        let (batch, shutdown) = {
            let mut st = shared.lock();
            (std::mem::take(&mut st.buf), st.shutdown)
        };
        if batch.is_empty() {
            if shutdown || Arc::strong_count(&shared) == 1 {
                break;
            }
            tokio::select! {
                _ = notified => continue,
                _ = cancel.cancelled() => break,
            }
        }
        let res = tokio::select! {
            r = async { write.write_all(&batch).await?; write.flush().await } => r,
            _ = cancel.cancelled() => break,
        };
        let mut st = shared.lock();
        if let Err(e) = res {
            st.error = Some((e.kind(), e.to_string()));
            st.done = true;
        }
        if let Some(w) = st.waiter.take() {
            w.wake();
        }
        if st.done {
            return;
        }
    }
    // Last words (the session's disconnect message), within a grace period.
    let rest = std::mem::take(&mut shared.lock().buf);
    let _ = tokio::time::timeout(crate::conn::CLOSE_GRACE, async {
        write.write_all(&rest).await?;
        write.shutdown().await
    })
    .await;
    let mut st = shared.lock();
    st.done = true;
    if let Some(w) = st.waiter.take() {
        w.wake();
    }
}

impl<S> Drop for Decoupled<S> {
    fn drop(&mut self) {
        // Lets the writer finish the buffer and close the stream.
        self.shared.wake_writer.notify_one();
    }
}

impl<S: AsyncRead> AsyncRead for Decoupled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for Decoupled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        if let Some((kind, msg)) = &st.error {
            return Poll::Ready(Err(io::Error::new(*kind, msg.clone())));
        }
        if st.shutdown || st.done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if !st.buf.is_empty() && st.buf.len() + data.len() > self.shared.limit {
            st.waiter = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.buf.extend_from_slice(data);
        drop(st);
        self.shared.wake_writer.notify_one();
        Poll::Ready(Ok(data.len()))
    }

    /// Returns at once: the writer task flushes. Waiting here would bring
    /// back the deadlock this type exists to avoid.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.shared.lock().error {
            Some((kind, msg)) => Poll::Ready(Err(io::Error::new(*kind, msg.clone()))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        if st.done {
            return Poll::Ready(Ok(()));
        }
        st.shutdown = true;
        st.waiter = Some(cx.waker().clone());
        drop(st);
        self.shared.wake_writer.notify_one();
        Poll::Pending
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Both ends write more than the pipe holds before reading: with plain
    /// inline writes this deadlocks; decoupled, it completes.
    #[tokio::test]
    async fn both_sides_write_first() {
        let (a, b) = tokio::io::duplex(1024);
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let mut a = decouple(a, 1 << 20, &tracker, cancel.clone());
        let mut b = decouple(b, 1 << 20, &tracker, cancel.clone());
        let data = vec![7u8; 100_000];
        a.write_all(&data).await.unwrap();
        b.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        a.read_exact(&mut got).await.unwrap();
        b.read_exact(&mut got).await.unwrap();
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop((a, b));
        tracker.close();
        tracker.wait().await;
    }
}
