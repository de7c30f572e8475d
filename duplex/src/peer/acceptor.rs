//! Acceptors: queues of incoming channels for the services they claim.

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::channel::IncomingChannel;
use crate::conn::host::Host;
use crate::conn::owned::{Deliver, Offer, Sink};
use crate::conn::routes::Route;

use super::registry::PeerCore;

/// The channels remotes open to this peer for the services it claimed
/// (see [`Peer::acceptor`](crate::Peer::acceptor), which gives the
/// routing rule). A service has one acceptor at a time; dropping the
/// acceptor releases its services and rejects the channels still queued
/// in it.
///
/// ```no_run
/// # async fn demo(peer: duplex::Peer) -> anyhow::Result<()> {
/// let mut files = peer.acceptor(["files.put", "files.get"])?;
/// while let Some(incoming) = files.accept().await {
///     let ch = incoming.accept().await;
///     tokio::spawn(async move { /* serve ch */ drop(ch) });
/// }
/// # Ok(()) }
/// ```
#[must_use = "an Acceptor claims its services only while it is kept: dropping it releases them, and their channels are refused"]
pub struct Acceptor {
    rx: mpsc::Receiver<Offer>,
    /// Its own queue's sender, to register it as a fallback.
    tx: mpsc::Sender<Offer>,
    core: Arc<PeerCore>,
    host: Arc<Host>,
    id: u64,
    services: Box<[Box<str>]>,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("peer", &self.host.name)
            .field("services", &self.services)
            .finish()
    }
}

impl Acceptor {
    pub(super) fn new(
        core: Arc<PeerCore>,
        id: u64,
        services: Box<[Box<str>]>,
        tx: mpsc::Sender<Offer>,
        rx: mpsc::Receiver<Offer>,
    ) -> Self {
        let a = Acceptor {
            rx,
            tx,
            host: core.host.clone(),
            core,
            id,
            services,
        };
        reroute_queued(&a.core);
        a
    }

    /// Waits for the next channel a remote opened for one of the services
    /// this acceptor claimed (or, for a [fallback](Self::fallback), that
    /// nothing claimed).
    ///
    /// Returns `None` once the peer is shut down (the channels still
    /// queued are rejected then). Cancel-safe: a cancelled call loses no
    /// channel. A channel waits here up to
    /// [`Config::accept_timeout`](crate::Config::accept_timeout), like one
    /// in [`Peer::accept`](crate::Peer::accept)'s queue, and the queue
    /// holds up to [`Config::accept_backlog`](crate::Config::accept_backlog)
    /// channels; beyond it opens are refused with a reason naming the limit.
    pub async fn accept(&mut self) -> Option<IncomingChannel> {
        loop {
            let offer = tokio::select! {
                biased;
                o = self.rx.recv() => o,
                _ = self.host.cancel.cancelled() => None,
            };
            let Some(offer) = offer else {
                // Reject what is left (also breaks the reference cycle
                // through the queue).
                self.rx.close();
                while let Ok(o) = self.rx.try_recv() {
                    drop(o);
                }
                return None;
            };
            // One the accept timeout rejected while it waited is skipped.
            if !offer.is_expired() {
                return Some(IncomingChannel::new(offer));
            }
        }
    }

    /// Releases its services now (channels for them are routed as if it
    /// were gone) and stops taking channels; [`accept`](Self::accept) then
    /// returns the channels already queued, and `None` after them. For a
    /// server that stops: it answers what was queued for it, and nothing
    /// more arrives meanwhile.
    pub fn close(&mut self) {
        self.host.routes_mut().release(self.id);
        self.rx.close();
    }

    /// The services it claimed.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| &**s)
    }

    /// Has the session accept this acceptor's channels the moment they
    /// arrive, with the effects [`Peer::accept_at_once`] describes (an RPC
    /// server does this: it takes every call anyway).
    ///
    /// [`Peer::accept_at_once`]: crate::Peer::accept_at_once
    pub fn at_once(self) -> Self {
        self.host.routes_mut().set_at_once(self.id);
        self
    }

    /// Makes it also take the channels of services that no acceptor claims,
    /// while the application does not call
    /// [`Peer::accept`](crate::Peer::accept) (which gets them otherwise).
    /// An RPC server is a fallback, so that a call to a method nobody
    /// serves is answered `UNIMPLEMENTED`. Of several fallbacks, the oldest
    /// one still alive gets them.
    pub fn fallback(self) -> Self {
        self.host
            .routes_mut()
            .add_fallback(self.id, Sink::Queue(self.tx.clone()));
        reroute_queued(&self.core);
        self
    }
}

/// Services claimed by [`Peer::dispatch`](crate::Peer::dispatch): their
/// channels go to its function as they arrive. Dropping it (or
/// [`close`](Self::close)) releases the services; channels for them are
/// then routed as if it never existed.
///
/// The function is kept by the peer while the services are claimed, so
/// it may hold a clone of the [`Peer`](crate::Peer): dropping the
/// `Dispatch`, or shutting the peer down, lets both go.
#[must_use = "a Dispatch claims its services only while it is kept: dropping it releases them, and their channels are refused"]
pub struct Dispatch {
    core: Arc<PeerCore>,
    id: u64,
    services: Box<[Box<str>]>,
    call: Deliver,
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatch")
            .field("peer", &self.core.host.name)
            .field("services", &self.services)
            .finish()
    }
}

impl Dispatch {
    pub(super) fn new(
        core: Arc<PeerCore>,
        id: u64,
        services: Box<[Box<str>]>,
        call: Deliver,
    ) -> Self {
        reroute_queued(&core);
        Dispatch {
            core,
            id,
            services,
            call,
        }
    }

    /// Has the session accept these channels the moment they arrive, as
    /// [`Acceptor::at_once`] does.
    pub fn at_once(self) -> Self {
        self.core.host.routes_mut().set_at_once(self.id);
        self
    }

    /// Makes it also take the channels of services that nothing claims,
    /// as [`Acceptor::fallback`] does.
    pub fn fallback(self) -> Self {
        self.core
            .host
            .routes_mut()
            .add_fallback(self.id, Sink::Call(self.call.clone()));
        reroute_queued(&self.core);
        self
    }

    /// Releases its services now: channels for them are routed as if it
    /// were gone. Idempotent.
    pub fn close(&mut self) {
        self.core.host.routes_mut().release(self.id);
    }

    /// The services it claimed.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| &**s)
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        self.close();
    }
}

/// Channels that arrived before a claim, while the peer routed nothing,
/// wait in the general queue; unless the application takes that queue
/// itself (`Peer::accept`), they go where they are routed now, so that a
/// server started just after `connect` still gets the calls that came in
/// between. The others keep their place.
fn reroute_queued(core: &PeerCore) {
    let host = &core.host;
    if host.routes().is_general() {
        return;
    }
    // Held by an `accept` in progress: those channels are its to take.
    let Ok(mut rx) = core.incoming_rx.try_lock() else {
        return;
    };
    let mut queued = Vec::new();
    while let Ok(offer) = rx.try_recv() {
        queued.push(offer);
    }
    for offer in queued {
        if offer.is_expired() {
            continue;
        }
        match host.route(offer.meta().service()) {
            // Full: dropping the offer refuses the channel.
            Route::Acceptor { queue, .. } => queue.give(offer),
            Route::General { .. } => drop(host.incoming_tx.try_send(offer)),
            Route::NoService => drop(offer),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Release the services first, so no new channel lands in the queue,
        // whose receiver then rejects what it holds as it drops.
        self.host.routes_mut().release(self.id);
    }
}
