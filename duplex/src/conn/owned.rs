//! Channels the driver holds before an application handle does: one we
//! opened, closed if it is dropped before the application has it, and one
//! the remote opened, rejected if it is dropped unanswered. The public
//! handles (`Channel`, `IncomingChannel`) wrap these, so the driver never
//! names them.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::proto::open::OPEN_PROHIBITED;

use super::chan::ChanShared;
use super::meta::ChannelMeta;

/// A channel no application handle holds yet; dropping it aborts the
/// channel (or closes it if it was never accepted), as dropping an
/// unfinished `Channel` does.
pub(crate) struct Owned {
    chan: Arc<ChanShared>,
    armed: bool,
}

impl Owned {
    pub(crate) fn new(chan: Arc<ChanShared>) -> Self {
        Owned { chan, armed: true }
    }

    /// Hands the channel to the application's handles, whose drops close
    /// it from then on.
    pub(crate) fn into_shared(mut self) -> Arc<ChanShared> {
        self.armed = false;
        self.chan.clone()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.armed {
            // What dropping an unfinished `Channel` does.
            self.chan.reader_dropped();
            self.chan.close_on_drop();
        }
    }
}

/// A channel the remote opened, waiting for the application's answer.
/// Dropping it rejects the channel.
pub(crate) struct Offer {
    /// `None` only after `accept` or `reject` consumed it.
    chan: Option<Arc<ChanShared>>,
}

impl Offer {
    /// `chan` is pending: a plain SSH client's open waits in it (see
    /// `ChanShared::set_plain_reply`) for our answer.
    pub(crate) fn new(chan: Arc<ChanShared>) -> Self {
        Offer { chan: Some(chan) }
    }

    /// The accept timeout rejected it while it waited in a queue.
    pub(crate) fn is_expired(&self) -> bool {
        self.chan.as_ref().is_none_or(|s| s.is_answered())
    }

    /// Service, headers and peers.
    pub(crate) fn meta(&self) -> &ChannelMeta {
        match &self.chan {
            Some(s) => s.meta_or_unknown(),
            None => ChannelMeta::unknown(),
        }
    }

    /// Accepts the channel: the opener's `open` returns and data flows.
    /// If the accept timeout rejected it a moment before, the channel
    /// returned has failed (`ChannelError::NotAccepted`). Cancel-safe in
    /// that the channel is closed if the future is dropped.
    pub(crate) async fn accept(mut self) -> Option<Owned> {
        let shared = self.chan.take()?;
        if !shared.take_answer() {
            return Some(Owned::new(shared)); // rejected by the accept timeout
        }
        shared.conn.pending_done(shared.kind);
        match shared.take_plain_reply() {
            Some(reply) => {
                shared.conn.insert(shared.clone());
                let owned = Owned::new(shared);
                reply.accept().await;
                Some(owned)
            }
            None => {
                shared.accept_duplex();
                Some(Owned::new(shared))
            }
        }
    }

    /// Rejects the channel with `reason`.
    pub(crate) async fn reject(mut self, reason: &str) {
        if let Some(shared) = self.chan.take()
            && shared.take_answer()
        {
            shared.conn.pending_done(shared.kind);
            match shared.take_plain_reply() {
                Some(reply) => reply.reject(OPEN_PROHIBITED, reason).await,
                None => shared.refuse(reason),
            }
        }
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        if let Some(shared) = self.chan.take() {
            shared.refuse_unanswered();
        }
    }
}

/// Where an acceptor's channels go: its queue, for its `accept`; or a
/// function the connection's task calls with each as it arrives (an
/// acceptor that dispatches, saving the task wake-up of a queue).
#[derive(Clone)]
pub(crate) enum Sink {
    Queue(mpsc::Sender<Offer>),
    Call(Deliver),
}

/// The function of an acceptor that dispatches.
pub(crate) type Deliver = Arc<dyn Fn(Offer) + Send + Sync>;

impl Sink {
    /// Hands over `offer` now if there is room; a full queue drops it,
    /// which refuses the channel.
    pub(crate) fn give(&self, offer: Offer) {
        match self {
            Sink::Queue(q) => drop(q.try_send(offer)),
            Sink::Call(f) => f(offer),
        }
    }
}
