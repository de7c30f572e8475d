//! Peer events: connections coming and going, and re-dialling.

use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::ssh::keys::Fingerprint;

/// Which side dialled the connection to a remote peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We connected to the remote.
    Outbound,
    /// The remote connected to us.
    Inbound,
}

/// A connected remote peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The remote peer's name.
    pub name: String,
    /// Its key fingerprint (`SHA256:...`).
    pub fingerprint: Fingerprint,
    /// The endpoint of the connection: the one we dialled, or for inbound
    /// connections the listener's address scheme and the remote address.
    pub endpoint: String,
    /// Who dialled.
    pub direction: Direction,
}

/// Something that happened to a peer's connections. See
/// [`Peer::events`](crate::Peer::events).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A remote peer completed the handshake (either direction).
    Connected(PeerInfo),
    /// A connection to a remote peer ended; its channels failed.
    Disconnected {
        /// Who it was.
        peer: PeerInfo,
        /// Why it ended.
        reason: Arc<str>,
    },
    /// Dialling `endpoint` failed (or its connection was lost) and will be
    /// tried again after `delay`: by [`Peer::connect`](crate::Peer::connect)
    /// while it retries, or in the background after a connection was lost.
    Reconnecting {
        /// The endpoint being dialled.
        endpoint: String,
        /// The attempt about to be made (the first retry is 2 for
        /// `connect`, 1 after a lost connection).
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// Why the connection was lost, or the previous attempt failed.
        reason: Arc<str>,
    },
    /// Re-dialling `endpoint` stopped for good: the remote rejected our key
    /// or showed a host key we do not trust.
    GaveUp {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: Arc<str>,
    },
}

/// A subscription to a peer's events, from the moment it was made.
///
/// Events are kept in a bounded buffer (256); a subscriber that falls
/// further behind skips the oldest ones (a warning is logged). Ends once the
/// peer is shut down.
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) {
/// let mut events = peer.events();
/// while let Some(event) = events.recv().await {
///     println!("{event:?}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct PeerEvents {
    rx: broadcast::Receiver<PeerEvent>,
    /// The peer's shutdown.
    done: CancellationToken,
}

impl PeerEvents {
    pub(crate) fn new(rx: broadcast::Receiver<PeerEvent>, done: CancellationToken) -> Self {
        Self { rx, done }
    }

    /// The next event; `None` once the peer is shut down (after the events
    /// from before that). Cancel-safe.
    pub async fn recv(&mut self) -> Option<PeerEvent> {
        loop {
            let got = tokio::select! {
                biased;
                r = self.rx.recv() => r,
                _ = self.done.cancelled() => match self.rx.try_recv() {
                    Ok(e) => Ok(e),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Err(_) => return None,
                },
            };
            match got {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("peer events: a slow subscriber skipped {n} events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = PeerEvent> + Send + 'static {
        futures_util::stream::unfold(self, |mut events| async move {
            events.recv().await.map(|e| (e, events))
        })
    }
}

/// Capacity of the event buffer.
pub(crate) const EVENT_BUFFER: usize = 256;
