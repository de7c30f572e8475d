//! Channels the remote opened, waiting for an answer, and the nested
//! channels of a channel.

use crate::conn::owned::Offer;
use crate::error::OpenError;
use crate::proto::headers::Headers;
use crate::proto::service::ServiceName;
use std::fmt;
use std::sync::Arc;

use super::*;

/// Opens and accepts the channels nested in one channel (its children).
///
/// A nested channel goes to the same remote peer as its parent and is
/// delivered to the remote through its side of the parent, so a protocol
/// can open sub-streams (a callback, a side transfer) without any routing
/// of its own. Either side may open children, to any depth up to
/// [`Config::max_nesting_depth`](crate::Config::max_nesting_depth).
///
/// A child never outlives its parent: when the parent is closed (by either
/// side) or fails, every descendant fails with
/// [`ChannelError::ParentClosed`] saying which channel closed and how, and
/// is closed on both sides; when the connection dies they fail with
/// [`ChannelError::ConnectionLost`] like every channel. Close children
/// first when their last bytes matter.
///
/// The handle is cheap to clone and does not keep the parent open.
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
/// use duplex::Headers;
/// let session = peer.open("bob", "session", Headers::new()).await?;
/// // Opener: a side stream inside the session.
/// let mut log = session.open("log", Headers::new()).await?;
/// log.write_frame(b"started").await?;
/// # Ok(()) }
/// # async fn remote(peer: duplex::Peer) -> anyhow::Result<()> {
/// // The other side: children arrive through the parent.
/// let session = peer.accept().await.unwrap().accept().await;
/// while let Some(incoming) = session.accept().await {
///     let mut child = incoming.accept().await;
///     let first = child.read_frame().await?;
/// #   let _ = first;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Children {
    pub(super) parent: Arc<ChanShared>,
}

impl fmt::Debug for Children {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Children")
            .field("parent", &self.parent.id)
            .finish()
    }
}

impl Children {
    /// The parent channel's meta.
    pub fn parent(&self) -> &ChannelMeta {
        self.parent.meta_or_unknown()
    }

    /// Opens a channel for `service` nested in the parent, and waits until
    /// the remote application accepts it.
    ///
    /// Fails with [`OpenError::ParentClosed`] if the parent is closed (or
    /// closes meanwhile), [`OpenError::DepthLimit`] beyond our nesting
    /// limit (a remote with a lower limit rejects with a reason that says
    /// so), [`OpenError::NotNestable`] if the parent's remote is a plain SSH
    /// client, and otherwise like [`Peer::open`](crate::Peer::open).
    /// Cancel-safe: a channel whose open is abandoned is closed.
    pub async fn open(&self, service: &str, headers: Headers) -> Result<Channel, OpenError> {
        let service = ServiceName::new(service)?;
        let conn = self.parent.conn.clone();
        conn.open(service, headers, Some(self.parent.clone()))
            .await
            .map(Channel::from_owned)
    }

    /// Waits for the next channel the remote opened inside the parent.
    ///
    /// Returns `None` once the parent is closed or failed (children not
    /// accepted by then are rejected). Cancel-safe: a cancelled call loses
    /// no channel. Unaccepted children count against
    /// [`Config::max_pending_channels`](crate::Config::max_pending_channels)
    /// like top-level ones.
    pub async fn accept(&self) -> Option<IncomingChannel> {
        let child = self.parent.accept_child().await?;
        Some(IncomingChannel::new(Offer::new(child)))
    }
}

/// A channel the remote opened, waiting for the application to accept or
/// reject it. Dropping it rejects the channel. One left waiting longer than
/// [`Config::accept_timeout`](crate::Config::accept_timeout) is rejected
/// for the application (and never handed out by `accept`).
#[must_use = "dropping an IncomingChannel rejects the channel"]
pub struct IncomingChannel {
    offer: Offer,
}

impl fmt::Debug for IncomingChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingChannel")
            .field("service", &self.meta().service())
            .field("remote", &self.meta().remote_peer())
            .finish()
    }
}

impl IncomingChannel {
    pub(crate) fn new(offer: Offer) -> Self {
        Self { offer }
    }

    /// Service, headers and peers.
    pub fn meta(&self) -> &ChannelMeta {
        self.offer.meta()
    }

    /// Shortcut for `meta().service()`.
    pub fn service(&self) -> &str {
        self.meta().service()
    }

    /// Shortcut for `meta().headers()`.
    pub fn headers(&self) -> &Headers {
        self.meta().headers()
    }

    /// Accepts the channel: the opener's `open` returns and data flows.
    ///
    /// Cancel-safe in that a cancelled accept leaves the channel to be
    /// closed when it is dropped. If the accept timeout rejected the
    /// channel a moment before, the channel returned has failed: its reads
    /// and writes return [`ChannelError::NotAccepted`].
    pub async fn accept(self) -> Channel {
        match self.offer.accept().await {
            Some(owned) => Channel::from_owned(owned),
            None => unreachable_incoming(),
        }
    }

    /// Rejects the channel; the opener's `open` fails with
    /// [`OpenError::Rejected`] carrying `reason`
    /// (at most 1 KiB is sent).
    pub async fn reject(self, reason: &str) {
        self.offer.reject(reason).await
    }
}

#[allow(clippy::panic)] // an offer is only consumed by methods that consume it
fn unreachable_incoming() -> ! {
    panic!("IncomingChannel used after accept/reject")
}
