use std::sync::OnceLock;

use tokio::sync::mpsc::{Receiver, Sender, channel};
use tokio::sync::oneshot;

use super::WindowSizeRef;
use crate::ChannelMsg;

/// A handle to the [`super::Channel`]'s to be able to transmit messages
/// to it and update it's `window_size`.
#[derive(Debug)]
pub struct ChannelRef {
    pub(super) sender: Sender<ChannelMsg>,
    pub(super) window_size: WindowSizeRef,
    /// Duplex patch 9: for an open made with no channel queue, where the
    /// session's answer (`Open` or `OpenFailure`) goes.
    pub(super) answer: Option<oneshot::Sender<ChannelMsg>>,
}

impl ChannelRef {
    pub fn new(sender: Sender<ChannelMsg>) -> Self {
        Self {
            sender,
            window_size: WindowSizeRef::new(0),
            answer: None,
        }
    }

    pub(crate) fn window_size(&self) -> &WindowSizeRef {
        &self.window_size
    }

    /// Duplex patch 9: hands the answer to an open (`ChannelMsg::Open` or
    /// `ChannelMsg::OpenFailure`) to the task waiting for it. Returns
    /// whether anybody took it (the opener may have given up).
    pub(crate) async fn answer(&mut self, msg: ChannelMsg) -> bool {
        match self.answer.take() {
            Some(tx) => tx.send(msg).is_ok(),
            None => self.sender.send(msg).await.is_ok(),
        }
    }
}

impl std::ops::Deref for ChannelRef {
    type Target = Sender<ChannelMsg>;

    fn deref(&self) -> &Self::Target {
        &self.sender
    }
}

/// Duplex patch 9: the queue of every channel that has none
/// (`channel_buffer_size` 0): one sender whose receiver is gone, shared by
/// all of them, so every message sent to it fails at once and a channel
/// costs no queue of its own.
pub(crate) fn no_queue() -> Sender<ChannelMsg> {
    static NO_QUEUE: OnceLock<Sender<ChannelMsg>> = OnceLock::new();
    NO_QUEUE.get_or_init(|| channel(1).0).clone()
}

/// Duplex patch 9: how the task that opens a channel hears the session's
/// answer: through the channel's queue, or, for a channel with none
/// (`channel_buffer_size` 0), through a one-shot.
pub(crate) enum OpenAnswer {
    Queue(Receiver<ChannelMsg>),
    Once(Option<oneshot::Receiver<ChannelMsg>>),
}

impl OpenAnswer {
    /// The channel's reference for the session, and the opener's end.
    pub(crate) fn new(channel_buffer_size: usize) -> (ChannelRef, Self) {
        if channel_buffer_size == 0 {
            let (tx, rx) = oneshot::channel();
            let mut channel_ref = ChannelRef::new(no_queue());
            channel_ref.answer = Some(tx);
            (channel_ref, OpenAnswer::Once(Some(rx)))
        } else {
            let (sender, receiver) = channel(channel_buffer_size);
            (ChannelRef::new(sender), OpenAnswer::Queue(receiver))
        }
    }

    /// The next message for the opener; `None` once there is none to come.
    pub(crate) async fn recv(&mut self) -> Option<ChannelMsg> {
        match self {
            OpenAnswer::Queue(rx) => rx.recv().await,
            OpenAnswer::Once(rx) => match rx.take() {
                Some(rx) => rx.await.ok(),
                None => None,
            },
        }
    }

    /// The channel's queue, once the open is answered (none without one).
    pub(crate) fn into_queue(self) -> Option<Receiver<ChannelMsg>> {
        match self {
            OpenAnswer::Queue(rx) => Some(rx),
            OpenAnswer::Once(_) => None,
        }
    }
}
