//! A transport wrapper that keeps the SSH session reading while its writes
//! wait on the network.
//!
//! russh's session loop writes each batch of packets inline and reads
//! nothing until the write completes. When both ends send bulk data at once
//! and both directions' socket buffers fill (quickly on Unix sockets and
//! pipes), each loop waits for the other to read: a deadlock. Here a write
//! the stream cannot take at once lands in a buffer that a task of our own
//! drains to the stream, so the loop always comes back to reading.
//!
//! Small writes (up to 16 KiB in all) first wait in a cork, until the
//! session has read everything that arrived and is about to wait for more:
//! then they leave together, so the packets one wake-up of the session
//! produces (its replies to a burst of packets, a batch of channel
//! messages) cost one system call rather than one each, and a lone write
//! leaves as soon as the session has nothing else to do, with no timer
//! and no task switch. While the buffer is empty, the cork goes straight
//! to the stream (a non-blocking attempt): in the common case, a socket
//! with room, no task is woken. Only what the stream refuses is buffered,
//! and once anything is buffered every later write queues behind it, so
//! bytes keep their order.
//!
//! The buffer is bounded by [`Config::max_send_buffer`](crate::Config),
//! past which the session's writes wait (and the deadlock above would be
//! possible again). Channel data never takes it there: the credit the
//! remote grants can add up to far more than the limit (a window per busy
//! channel), so channels hand data to the session only while the buffer is
//! under half the limit ([`Backlog`]). The other half is room for what the
//! session writes to keep reading: window grants, control records, SSH
//! replies, and the few packets already queued inside russh.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The channel data a connection holds for the network: in its send
/// buffer, plus what channels handed to the session that has not reached
/// the transport yet. Channels are admitted a packet at a time while the
/// sum stays under half of `Config::max_send_buffer`, and while what is
/// inside the session stays under `INSIDE_MAX`.
pub(crate) struct Backlog {
    /// In the send buffer (being written included).
    buffered: AtomicUsize,
    /// Admitted, not yet written by the session (an estimate: the session's
    /// writes count against it, packet overhead and control included).
    inside: AtomicUsize,
    /// Tasks waiting in `admit`.
    waiting: AtomicUsize,
    threshold: usize,
    room: Notify,
}

/// The most channel data admitted to the session and not yet written by
/// it: ten packets. The session's queue holds many more messages (small
/// ones, an RPC call's, are worth batching), but channel data waiting
/// there is memory no window accounts for: a plain client that stops
/// reading held its server 1-2 MiB higher with 256 packets allowed in
/// (`attack::a_plain_client_that_does_not_read_is_held_to_the_bound`).
const INSIDE_MAX: usize = 10 * (32 << 10);

impl Backlog {
    /// Whether `n` more bytes fit, with `inside` admitted and not written.
    fn fits(&self, inside: usize, n: usize) -> bool {
        let held = self.buffered.load(Ordering::SeqCst) + inside;
        held == 0 || (held + n <= self.threshold && (inside == 0 || inside + n <= INSIDE_MAX))
    }

    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Backlog {
            buffered: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            threshold: limit / 2,
            room: Notify::new(),
        })
    }

    /// Waits until `n` more bytes of channel data fit under both bounds
    /// (or nothing is held: one packet always goes), then counts them.
    /// Cancel-safe, but bytes admitted and never sent stay counted, so
    /// admit only right before sending.
    pub(crate) async fn admit(&self, n: usize) {
        // Counted as waiting before looking, so a `wake` that frees room
        // meanwhile sees us (SeqCst on both sides: each sees the other's
        // store, or we see its room).
        let _waiting = Waiting::new(&self.waiting);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let admitted = self
                .inside
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |inside| {
                    self.fits(inside, n).then_some(inside + n)
                })
                .is_ok();
            if admitted {
                return;
            }
            notified.await;
        }
    }

    /// Counts `n` more bytes of channel data if they fit now (what `admit`
    /// would let through at once); never waits.
    pub(crate) fn try_admit(&self, n: usize) -> bool {
        self.inside
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |inside| {
                self.fits(inside, n).then_some(inside + n)
            })
            .is_ok()
    }

    /// The session wrote `n` bytes to the transport.
    fn written(&self, n: usize) {
        let _ = self
            .inside
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        self.wake();
    }

    fn set_buffered(&self, bytes: usize) {
        self.buffered.store(bytes, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0
            && self.buffered.load(Ordering::SeqCst) + self.inside.load(Ordering::SeqCst)
                <= self.threshold
        {
            self.room.notify_waiters();
        }
    }
}

/// One task in `Backlog::admit`, counted for as long as it is there
/// (cancelled included).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When a connection last read anything, for choosing which unfinished
/// handshake to end (`Config::max_unauthenticated`): a client working
/// through its handshake reads every few milliseconds, a connection that
/// stalls does not. Only a connection in the list of unfinished handshakes
/// is watched; others read no clock per read.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    last: AtomicU64,
    watched: AtomicBool,
}

/// A clock for `Activity`, shared by every connection of the process.
fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Activity {
    /// Something was read now (noted only while watched).
    pub(crate) fn touch(&self) {
        if self.watched.load(Ordering::Relaxed) {
            self.stamp();
        }
    }

    fn stamp(&self) {
        let ms = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// From now on reads are noted; counts as one now.
    pub(crate) fn watch(&self) {
        self.stamp();
        self.watched.store(true, Ordering::Relaxed);
    }

    /// Reads are no longer noted.
    pub(crate) fn unwatch(&self) {
        self.watched.store(false, Ordering::Relaxed);
    }

    /// When something was last read while watched (milliseconds on a
    /// process-wide clock).
    pub(crate) fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

struct State {
    /// Bytes the stream has not taken yet, in order.
    buf: BytesMut,
    /// The drain task is writing a batch it took from `buf`.
    in_flight: bool,
    /// The size of that batch.
    in_flight_len: usize,
    /// Written straight to the stream since it was last flushed.
    flush_owed: bool,
    error: Option<(io::ErrorKind, String)>,
    shutdown: bool,
    done: bool,
    /// The session, waiting for room (over the limit) or for the drain on
    /// shutdown.
    waiter: Option<Waker>,
}

impl State {
    fn fail(&mut self, e: &io::Error) {
        self.error = Some((e.kind(), e.to_string()));
        self.done = true;
        self.buf.clear();
    }

    fn error(&self) -> Option<io::Error> {
        self.error
            .as_ref()
            .map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    fn wake_waiter(&mut self) {
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }
}

struct Shared<S> {
    state: Mutex<State>,
    /// The stream's write half. Only ever locked inside one poll, never
    /// across an await: by the drain task while it writes a batch, and by
    /// the session for a direct write when nothing is buffered or in
    /// flight (so the two never write at once, and bytes keep their order).
    write: Mutex<WriteHalf<S>>,
    wake_writer: Notify,
    limit: usize,
    backlog: Arc<Backlog>,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, WriteHalf<S>> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The session's side: reads through a small buffer, writes to the
/// stream or, when it cannot take them at once, to the buffer.
pub(crate) struct Decoupled<S> {
    /// russh reads each packet in two calls (its length, then the rest):
    /// the buffer turns the packets that arrived together into one system
    /// call. Reads of at least its size bypass it (bulk data).
    read: BufReader<ReadHalf<S>>,
    shared: Arc<Shared<S>>,
    /// Fires when the connection is over for us (`ConnShared::
    /// transport_stop`): reads fail from then on, so the session russh
    /// runs ends and lets the socket go even if the remote never closes
    /// it (a handshake we ended, a session we gave up on).
    stopped: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    activity: Arc<Activity>,
    /// Small writes held back until the session runs out of input (see
    /// `uncork`), so the packets one wake-up of the session produces leave
    /// in one system call. At most `CORK_MAX` bytes.
    cork: Vec<u8>,
}

/// The most small writes are held back for: a few dozen small packets.
const CORK_MAX: usize = 16 << 10;

/// The read buffer's size: a few small packets (control records, short
/// messages), and small enough not to weigh on an idle connection.
const READ_BUFFER: usize = 4 << 10;

/// Splits `stream` and starts the task that drains writes into it. The task
/// ends once the session shut the stream down (or dropped it) and the buffer
/// is written, or when `cancel` fires. Once `cancel` fires, reads fail too.
pub(crate) fn decouple<S>(
    stream: S,
    limit: usize,
    backlog: Arc<Backlog>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    activity: Arc<Activity>,
) -> Decoupled<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            buf: BytesMut::new(),
            in_flight: false,
            in_flight_len: 0,
            flush_owed: false,
            error: None,
            shutdown: false,
            done: false,
            waiter: None,
        }),
        write: Mutex::new(write),
        wake_writer: Notify::new(),
        limit,
        backlog,
    });
    let stopped = Box::pin(cancel.clone().cancelled_owned());
    tracker.spawn(drain(shared.clone(), cancel));
    Decoupled {
        read: BufReader::with_capacity(READ_BUFFER, read),
        shared,
        stopped,
        activity,
        cork: Vec::new(),
    }
}

/// Writes all of `batch` to the stream, then flushes it.
async fn write_batch<S: AsyncWrite>(shared: &Shared<S>, batch: &[u8]) -> io::Result<()> {
    let mut pos = 0;
    std::future::poll_fn(|cx| {
        let mut w = shared.writer();
        while let Some(rest) = batch.get(pos..).filter(|r| !r.is_empty()) {
            match std::task::ready!(Pin::new(&mut *w).poll_write(cx, rest)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut *w).poll_flush(cx)
    })
    .await
}

async fn drain<S: AsyncWrite>(shared: Arc<Shared<S>>, cancel: CancellationToken) {
    enum Next {
        Write(BytesMut),
        Flush,
        Stop,
        Wait,
    }
    loop {
        let notified = shared.wake_writer.notified();
        let next = {
            let mut st = shared.lock();
            if st.done {
                // Failed (here or in a direct write): whoever waits on us
                // (the session's shutdown, a write over the limit) sees it.
                shared.backlog.set_buffered(0);
                st.wake_waiter();
                return;
            }
            if !st.buf.is_empty() {
                st.in_flight = true;
                st.in_flight_len = st.buf.len();
                st.flush_owed = false;
                Next::Write(st.buf.split())
            } else if st.flush_owed {
                st.in_flight = true;
                st.flush_owed = false;
                Next::Flush
            } else if st.shutdown || Arc::strong_count(&shared) == 1 {
                Next::Stop
            } else {
                Next::Wait
            }
        };
        let batch = match next {
            Next::Write(b) => b,
            Next::Flush => BytesMut::new(),
            Next::Stop => break,
            Next::Wait => {
                tokio::select! {
                    _ = notified => continue,
                    _ = cancel.cancelled() => break,
                }
            }
        };
        let res = tokio::select! {
            r = write_batch(&shared, &batch) => r,
            _ = cancel.cancelled() => break,
        };
        let mut st = shared.lock();
        st.in_flight = false;
        st.in_flight_len = 0;
        if let Err(e) = res {
            st.fail(&e);
        }
        shared.backlog.set_buffered(st.buf.len());
        st.wake_waiter();
    }
    // Last words (the session's disconnect message), within a grace period.
    let rest = {
        let mut st = shared.lock();
        st.in_flight = true;
        if st.done {
            BytesMut::new()
        } else {
            st.buf.split()
        }
    };
    let _ = tokio::time::timeout(crate::config::CLOSE_GRACE, async {
        write_batch(&shared, &rest).await?;
        std::future::poll_fn(|cx| Pin::new(&mut *shared.writer()).poll_shutdown(cx)).await
    })
    .await;
    let mut st = shared.lock();
    st.done = true;
    shared.backlog.set_buffered(0); // nothing more will be sent: nobody waits
    st.wake_waiter();
}

impl<S> Drop for Decoupled<S> {
    fn drop(&mut self) {
        // What the session wrote last (its disconnect message) joins the
        // buffer, and the writer finishes the buffer and closes the stream.
        if !self.cork.is_empty() {
            let mut st = self.shared.lock();
            if !st.done {
                st.buf.extend_from_slice(&self.cork);
            }
        }
        self.shared.wake_writer.notify_one();
    }
}

/// Sends what the cork holds: straight to the stream while nothing is
/// buffered or in flight, else into the buffer for the drain task. Never
/// waits, so the buffer may pass its limit by at most `CORK_MAX`.
fn uncork<S: AsyncWrite>(shared: &Shared<S>, cork: &mut Vec<u8>, st: &mut State) -> io::Result<()> {
    if cork.is_empty() {
        return Ok(());
    }
    let mut rest: &[u8] = cork;
    if st.buf.is_empty() && !st.in_flight {
        // The no-op waker is fine: if the stream is full, the drain task
        // takes over and waits with its own.
        let mut noop = Context::from_waker(Waker::noop());
        let res = match shared.write.try_lock() {
            Ok(mut w) => Pin::new(&mut *w).poll_write(&mut noop, rest),
            Err(_) => Poll::Pending,
        };
        match res {
            Poll::Ready(Ok(n)) if n > 0 => {
                st.flush_owed = true;
                rest = rest.get(n..).unwrap_or_default();
            }
            Poll::Ready(Err(e)) => {
                st.fail(&e);
                cork.clear();
                return Err(e);
            }
            Poll::Ready(Ok(_)) | Poll::Pending => {}
        }
    }
    if !rest.is_empty() {
        st.buf.extend_from_slice(rest);
        shared.backlog.set_buffered(st.buf.len() + st.in_flight_len);
    }
    cork.clear();
    shared.wake_writer.notify_one();
    Ok(())
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for Decoupled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection was ended on this side",
            )));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.read).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        if res.is_pending() && !self.cork.is_empty() {
            // The session has read everything that arrived and is about to
            // wait: what it wrote meanwhile goes now, in one system call.
            // A write error is recorded and returned by the next write.
            let this = &mut *self;
            let mut st = this.shared.lock();
            let _ = uncork(&this.shared, &mut this.cork, &mut st);
            drop(st);
            // An idle connection keeps no cork: its memory is for busy ones.
            this.cork = Vec::new();
        }
        res
    }
}

impl<S: AsyncWrite> AsyncWrite for Decoupled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let shared = &*this.shared;
        let mut st = shared.lock();
        if let Some(e) = st.error() {
            return Poll::Ready(Err(e));
        }
        if st.shutdown || st.done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.cork.len() + data.len() > CORK_MAX && !this.cork.is_empty() {
            // What the cork holds goes first, so bytes keep their order.
            if !st.buf.is_empty() && st.buf.len() + this.cork.len() > shared.limit {
                st.waiter = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Err(e) = uncork(shared, &mut this.cork, &mut st) {
                return Poll::Ready(Err(e));
            }
        }
        if this.cork.len() + data.len() <= CORK_MAX {
            this.cork.extend_from_slice(data);
            drop(st);
            shared.backlog.written(data.len());
            return Poll::Ready(Ok(data.len()));
        }
        // A large write (bulk data): to the drain task, whose system call
        // runs in parallel with the session encrypting the next batch,
        // which is worth more than the copy it costs (measured: bulk
        // throughput fell by a third with every write made inline).
        if !st.buf.is_empty() && st.buf.len() + data.len() > shared.limit {
            st.waiter = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.buf.extend_from_slice(data);
        let buffered = st.buf.len() + st.in_flight_len;
        drop(st);
        shared.backlog.set_buffered(buffered);
        shared.backlog.written(data.len());
        shared.wake_writer.notify_one();
        Poll::Ready(Ok(data.len()))
    }

    /// Never waits: a stream that has to flush after direct writes is
    /// flushed by the drain task. Waiting here would bring back the
    /// deadlock this type exists to avoid.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let st = self.shared.lock();
        if let Some(e) = st.error() {
            return Poll::Ready(Err(e));
        }
        if st.flush_owed {
            drop(st);
            self.shared.wake_writer.notify_one();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut st = this.shared.lock();
        if st.done {
            return Poll::Ready(Ok(()));
        }
        // The session's last words first. If the stream failed taking
        // them, it is finished: nothing is left to drain or close.
        if uncork(&this.shared, &mut this.cork, &mut st).is_err() || st.done {
            return Poll::Ready(Ok(()));
        }
        st.shutdown = true;
        st.waiter = Some(cx.waker().clone());
        drop(st);
        this.shared.wake_writer.notify_one();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests;
