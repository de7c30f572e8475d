//! The bound on how long an incoming channel waits for its application
//! (`Config::accept_timeout`): one task per peer, woken at the oldest
//! deadline, rejects the channels nobody accepted or rejected in time.
//!
//! Every channel waits the same time, so deadlines arrive in the order
//! channels are queued and a FIFO is the timer wheel.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A channel that can wait for its application: what the timer needs of
/// it (implemented by the channel state; kept as a trait so this module
/// depends on nothing of the connection's).
pub(crate) trait Waiting: Send + Sync {
    /// Whether it got its answer already.
    fn is_answered(&self) -> bool;
    /// The accept timeout passed: reject it (if still unanswered).
    fn expire(&self, after: Duration);
}

/// The channels waiting for their application, oldest first.
pub(crate) struct Pending {
    timeout: Duration,
    /// An entry per pending channel, popped at its deadline. A channel
    /// answered early leaves a dead entry; when dead entries outnumber the
    /// live ones, `watch` sweeps them out, so the queue stays within about
    /// twice the channels really pending (each connection's are bounded by
    /// `max_pending_channels`), whatever the open rate.
    queue: Mutex<VecDeque<(Instant, Weak<dyn Waiting>)>>,
    /// Channels watched and not answered yet.
    live: AtomicUsize,
    wake: Notify,
    started: AtomicBool,
}

impl Pending {
    pub(crate) fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            queue: Mutex::new(VecDeque::new()),
            live: AtomicUsize::new(0),
            wake: Notify::new(),
            started: AtomicBool::new(false),
        })
    }

    /// Starts the clock for a channel that waits for its application.
    /// The task is started with the first one.
    pub(crate) fn watch(
        self: &Arc<Self>,
        chan: Weak<dyn Waiting>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let live = self.live.fetch_add(1, Ordering::AcqRel) + 1;
        let was_empty = {
            let mut q = lock(&self.queue);
            if q.len() > 2 * live + 64 {
                q.retain(|(_, c)| c.upgrade().is_some_and(|c| !c.is_answered()));
            }
            q.push_back((Instant::now() + self.timeout, chan));
            q.len() == 1
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            tracker.spawn(self.clone().run(cancel.clone()));
        } else if was_empty {
            self.wake.notify_one();
        }
    }

    /// A watched channel got its answer (see `ChanShared::take_answer`).
    pub(crate) fn answered(&self) {
        let _ = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let wake = self.wake.notified();
            let next = lock(&self.queue).front().map(|(at, _)| *at);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake, if next.is_none() => continue,
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            }
            let now = Instant::now();
            let due: Vec<_> = {
                let mut q = lock(&self.queue);
                let n = q.iter().take_while(|(at, _)| *at <= now).count();
                q.drain(..n).filter_map(|(_, c)| c.upgrade()).collect()
            };
            for chan in due {
                chan.expire(self.timeout);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
