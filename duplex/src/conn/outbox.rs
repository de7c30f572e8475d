//! The send turns: a channel's queue carried to the session packet by
//! packet under the connection's backlog, inline first and in the outbox
//! task when it must wait.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::config::CLOSE_GRACE;
use crate::conn::chan::{ChanShared, Turn};
use crate::error::ChannelError;
use crate::proto::EXT_ERROR;
use crate::proto::chan::Out;
use crate::ssh::{NotNow, SendFailed, WriteHalf};

use super::*;

impl ConnShared {
    // ---- the outbox ----

    /// Hands a channel's send turn that must wait to the outbox task.
    pub(crate) fn resume(&self, turn: Turn) {
        if self.ended.is_cancelled() {
            return; // nothing will be sent any more
        }
        lock(&self.ready).push(turn);
        self.ready_notify.notify_one();
        if self.ended.is_cancelled() {
            // The outbox may have gone meanwhile; a turn holds its channel,
            // which holds this connection.
            self.drop_turns();
        }
    }

    pub(super) fn drop_turns(&self) {
        let turns = std::mem::take(&mut *lock(&self.ready));
        drop(turns); // outside the lock: dropping a channel may take it
    }

    /// Carries on the send turns that had to wait, channels independently:
    /// a channel waiting for SSH window never holds up another. Ends when
    /// the session ends.
    pub(crate) async fn run_outbox(self: Arc<Self>) {
        let mut running = FuturesUnordered::new();
        loop {
            let ready = std::mem::take(&mut *lock(&self.ready));
            running.extend(ready);
            tokio::select! {
                // Not on `cancel`: a closing connection first sends what its
                // channels queued (see `flush_all`).
                _ = self.ended.cancelled() => break,
                _ = self.ready_notify.notified() => {}
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
        drop(running);
        self.drop_turns();
    }

    /// Waits (up to `grace`) until every channel's queued bytes were handed
    /// to the session, so closing does not cut off data already written.
    pub(crate) async fn flush_all(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.idle.notified();
            let chans: Vec<_> = self.channels().values().cloned().collect();
            if chans.iter().all(|c| c.is_flushed()) || self.ended.is_cancelled() {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// One send turn of a channel: sends what it queued until the queue is
/// empty (see `ChanShared::start_turn`). What can go without waiting (room
/// in the session's queue, the remote's window, the connection's backlog)
/// goes now, in the caller's task, with no future allocated; the rest of
/// the turn comes back as a future, for the caller to poll and then hand
/// to the outbox.
pub(crate) fn turn(chan: Arc<ChanShared>) -> Option<Turn> {
    let Some(writer) = chan.writer.get() else {
        chan.unschedule(); // the opener reschedules once it sets the writer
        return None;
    };
    let idle = IdleOnDrop(&chan.conn);
    let stopped = loop {
        let Some(item) = chan.next_out() else {
            break None;
        };
        let closing = matches!(item, Out::Close);
        let len = match &item {
            Out::Data(b) | Out::Ext(_, b) => b.len(),
            Out::Eof | Out::Close => 0,
        };
        // Channel data counts against the connection's backlog, as in
        // `send_admitted`; control records and closes go at once.
        let backlog = &chan.conn.backlog;
        match writer.try_send(item, || len == 0 || backlog.try_admit(len)) {
            Ok(()) if closing => chan.conn.forget(&chan),
            Ok(()) => {}
            Err(stop) => break Some(stop),
        }
    };
    drop(idle);
    match stopped? {
        NotNow::Wait(item) => Some(Box::pin(drain(chan, Some(item)))),
        NotNow::Gone(e) => Some(Box::pin(failed(chan, e))),
    }
}

/// The rest of a send turn, from `first` on, waiting where it must.
async fn drain(chan: Arc<ChanShared>, mut first: Option<Out>) {
    let Some(writer) = chan.writer.get() else {
        chan.unschedule();
        return;
    };
    let idle = IdleOnDrop(&chan.conn);
    let mut lost = None;
    while let Some(item) = first.take().or_else(|| chan.next_out()) {
        let closing = matches!(item, Out::Close);
        let sent = match item {
            // Channel data goes a packet at a time, each admitted by the
            // connection's backlog, so the session never has to stop
            // reading for it (see `transport`). Control records and closes
            // go at once.
            Out::Data(b) => send_admitted(&chan, writer, None, b).await,
            Out::Ext(EXT_ERROR, b) => send_admitted(&chan, writer, Some(EXT_ERROR), b).await,
            other => writer.send(other).await,
        };
        match sent {
            // russh forgets a channel once it has sent our close, and
            // never reports the remote's answering close: forget it too.
            Ok(()) if closing => chan.conn.forget(&chan),
            Ok(()) => {}
            Err(e) => {
                lost = Some(e);
                break;
            }
        }
    }
    drop(idle);
    if let Some(e) = lost {
        failed(chan, e).await;
    }
}

/// The session is gone, and its end is being recorded: the channel fails
/// with the remote, the endpoint and the cause (what `on_session_end`
/// gives it) whichever path sees it first, and its queue is discarded.
async fn failed(chan: Arc<ChanShared>, e: SendFailed) {
    let conn = &chan.conn;
    if tokio::time::timeout(CLOSE_GRACE, conn.finished.cancelled())
        .await
        .is_err()
    {
        let _ = conn
            .end_reason
            .set(format!("the session stopped taking data ({})", e.0));
    }
    chan.fail(ChannelError::ConnectionLost(conn.lost_reason().into()));
    while chan.next_out().is_some() {} // discards; clears `scheduled`
}

/// Sends `data` in packets the connection's backlog admits one by one.
pub(super) async fn send_admitted(
    chan: &ChanShared,
    writer: &WriteHalf,
    ext: Option<u32>,
    mut data: bytes::Bytes,
) -> Result<(), SendFailed> {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(ADMIT_PACKET));
        chan.conn.backlog.admit(piece.len()).await;
        let item = match ext {
            None => Out::Data(piece),
            Some(code) => Out::Ext(code, piece),
        };
        writer.send(item).await?;
    }
    Ok(())
}

/// The size of the pieces channel data is admitted in: russh's packet.
pub(super) const ADMIT_PACKET: usize = 32 << 10;

/// Tells `flush_all` that a channel finished a turn.
pub(super) struct IdleOnDrop<'a>(&'a ConnShared);

impl Drop for IdleOnDrop<'_> {
    fn drop(&mut self) {
        self.0.idle.notify_waiters();
    }
}
