#![allow(clippy::unwrap_used)]

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Small writes (straight to the stream while nothing is buffered) and
/// large ones (handed to the drain task) interleaved over a pipe that
/// fills at once: the bytes arrive complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_buffered_writes_keep_order() {
    let (a, mut b) = tokio::io::duplex(4096);
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut a = decouple(
        a,
        64 << 20,
        Backlog::new(64 << 20),
        &tracker,
        cancel.clone(),
        Arc::default(),
    );
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        got
    });
    let sizes = [1usize, 100, CORK_MAX + 1, 7, 3000, 200_000, 1, CORK_MAX, 5];
    let mut sent = Vec::new();
    let mut n = 0u8;
    for round in 0..50 {
        for (i, size) in sizes.iter().enumerate() {
            let chunk: Vec<u8> = (0..*size)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            a.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
            if (round + i) % 7 == 0 {
                a.flush().await.unwrap();
            }
        }
    }
    a.shutdown().await.unwrap();
    drop(a);
    let got = reader.await.unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes reordered or corrupted");
    tracker.close();
    tracker.wait().await;
}

/// Counts the writes that reach the stream (the system calls, on a
/// socket).
struct Counting<S> {
    inner: S,
    writes: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        res
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Small writes wait in the cork until the session finds nothing more
/// to read, then leave in one write; a write too big for the cork
/// sends what it holds first; the last of it is not lost when the
/// transport is dropped.
#[tokio::test]
async fn small_writes_leave_together_when_reads_run_dry() {
    let (a, mut b) = tokio::io::duplex(1 << 20);
    let writes = Arc::new(AtomicUsize::new(0));
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut a = decouple(
        Counting {
            inner: a,
            writes: writes.clone(),
        },
        1 << 20,
        Backlog::new(1 << 20),
        &tracker,
        cancel.clone(),
        Arc::default(),
    );
    for i in 0..10u8 {
        a.write_all(&[i; 100]).await.unwrap();
        a.flush().await.unwrap(); // russh flushes after each batch
    }
    assert_eq!(
        writes.load(Ordering::SeqCst),
        0,
        "small writes went out one by one"
    );
    // The session polls for input and finds none: the cork goes.
    let mut byte = [0u8; 1];
    let mut read = std::pin::pin!(a.read(&mut byte));
    assert!(futures_util::poll!(read.as_mut()).is_pending());
    assert_eq!(
        writes.load(Ordering::SeqCst),
        1,
        "the cork did not leave in one write"
    );
    let mut got = vec![0u8; 1000];
    b.read_exact(&mut got).await.unwrap();
    let want: Vec<u8> = (0..10u8).flat_map(|i| [i; 100]).collect();
    assert_eq!(got, want);
    // Input arrives: the read completes, and nothing is owed.
    b.write_all(b"x").await.unwrap();
    assert_eq!(read.await.unwrap(), 1);

    // Corked bytes, then a write too big for the cork: the cork first.
    a.write_all(b"head").await.unwrap();
    let big = vec![9u8; CORK_MAX + 1];
    a.write_all(&big).await.unwrap();
    let mut got = vec![0u8; 4 + big.len()];
    b.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..4], b"head");
    assert!(got[4..].iter().all(|&x| x == 9));

    // Dropped with bytes in the cork: they still arrive, then EOF.
    a.write_all(b"last words").await.unwrap();
    drop(a);
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"last words");
    tracker.close();
    tracker.wait().await;
}

/// Both ends write more than the pipe holds before reading: with plain
/// inline writes this deadlocks; decoupled, it completes.
#[tokio::test]
async fn both_sides_write_first() {
    let (a, b) = tokio::io::duplex(1024);
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut a = decouple(
        a,
        1 << 20,
        Backlog::new(1 << 20),
        &tracker,
        cancel.clone(),
        Arc::default(),
    );
    let mut b = decouple(
        b,
        1 << 20,
        Backlog::new(1 << 20),
        &tracker,
        cancel.clone(),
        Arc::default(),
    );
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

/// Decouples one end of a pipe with a 1 MiB limit; shuts it down once
/// `before` has run and the other end is gone, and asserts the
/// shutdown finished promptly. (A timeout would poll the shutdown once
/// more when it fires, and find it done: what counts is how long it
/// took.)
async fn shutdown_after_the_remote_went(pipe: usize, before: &[u8], gone_first: bool) {
    let (a, b) = tokio::io::duplex(pipe);
    let tracker = TaskTracker::new();
    let mut a = decouple(
        a,
        1 << 20,
        Backlog::new(1 << 20),
        &tracker,
        CancellationToken::new(),
        Arc::default(),
    );
    let mut b = Some(b);
    if gone_first {
        drop(b.take());
    }
    a.write_all(before).await.unwrap();
    drop(b);
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), a.shutdown()).await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(4),
        "shutdown hung for {took:?}"
    );
    drop(a);
    tracker.close();
    tracker.wait().await;
}

/// The remote is gone (a killed process) while small writes wait in
/// the cork: the session's shutdown, which sends them first, fails to
/// and must finish at once rather than wait for a drain task that has
/// nothing left to do (it did wait, for ever: a killed peer's
/// connection was noticed only when the application gave up on it).
#[tokio::test]
async fn shutdown_finishes_when_the_stream_failed_taking_the_cork() {
    shutdown_after_the_remote_went(1 << 16, b"corked", true).await;
}

/// The same when the drain task is the one that finds the stream gone
/// (a large write, buffered, filling the pipe) while the session waits
/// to shut down.
#[tokio::test]
async fn shutdown_finishes_when_the_drain_task_finds_the_stream_gone() {
    shutdown_after_the_remote_went(1024, &[1u8; 100_000], false).await;
}

/// Reads are noted only while the connection is watched (an unfinished
/// handshake); others read no clock.
#[test]
fn activity_is_noted_only_while_watched() {
    let a = Activity::default();
    a.last.store(u64::MAX, Ordering::Relaxed);
    a.touch();
    assert_eq!(a.last(), u64::MAX, "an unwatched read was stamped");
    a.watch();
    assert_ne!(a.last(), u64::MAX, "watch() counts as a read now");
    a.last.store(u64::MAX, Ordering::Relaxed);
    a.touch();
    assert_ne!(a.last(), u64::MAX, "a watched read was not stamped");
    a.unwatch();
    a.last.store(u64::MAX, Ordering::Relaxed);
    a.touch();
    assert_eq!(a.last(), u64::MAX, "a read after unwatch() was stamped");
}
