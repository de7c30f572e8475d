//! Routing by service: acceptors (queues of incoming channels for the
//! services they claim), dispatches (functions called with them), and the
//! `Peer` methods that make them, `accept` and `accept_at_once`.

use std::fmt;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::channel::IncomingChannel;
use crate::conn::host::Host;
use crate::conn::owned::{Deliver, Offer, Sink};
use crate::conn::routes::Route;
use crate::error::ClaimError;
use crate::proto::service::ServiceName;

use super::Peer;
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

/// Routing: which part of the application takes the channels remotes open
/// (the rule is `conn::routes`'s).
impl Peer {
    /// Claims `services`: the channels remotes open to this peer for them
    /// go to the returned [`Acceptor`], and nowhere else, while it is kept.
    ///
    /// This is how several parts of one application share a peer without
    /// taking each other's channels (an RPC server claims its methods this
    /// way). A top-level channel a remote opens goes to:
    ///
    /// 1. the acceptor that claimed its service;
    /// 2. otherwise [`accept`](Self::accept), if the application has
    ///    called it, or has never made an acceptor (such a peer keeps its
    ///    channels for a later `accept`, up to [`Config::accept_timeout`](crate::Config::accept_timeout));
    /// 3. otherwise the oldest [fallback](Acceptor::fallback) acceptor (an
    ///    RPC server, which answers `UNIMPLEMENTED`);
    /// 4. otherwise nowhere: the open is refused at once with the reason
    ///    `no service "NAME" on PEER` ([`OpenError::NoService`](crate::OpenError::NoService) at the
    ///    opener), rather than left to time out.
    ///
    /// Nested channels always go to their parent's
    /// [`Children::accept`](crate::Children::accept).
    ///
    /// Fails with [`ClaimError::Taken`] if another acceptor holds one of
    /// the services (then nothing is claimed), and with
    /// [`ClaimError::Service`] for an invalid service name.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// let peer = duplex::Peer::builder().build()?;
    /// let files = peer.acceptor(["files.put", "files.get"])?;
    /// assert!(peer.acceptor(["files.get"]).is_err()); // held by `files`
    /// drop(files);
    /// let _again = peer.acceptor(["files.get"])?;
    /// # Ok(()) }
    /// ```
    pub fn acceptor<I>(&self, services: I) -> Result<Acceptor, ClaimError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let (tx, rx) = mpsc::channel(self.core.host.config.accept_backlog);
        let (id, names) = self.claim(services, Sink::Queue(tx.clone()))?;
        Ok(Acceptor::new(self.core.clone(), id, names, tx, rx))
    }

    /// Claims `services` as [`acceptor`](Self::acceptor) does, but hands
    /// each of their channels to `f` the moment the connection receives
    /// it, in the connection's own task, instead of queueing it for an
    /// `accept` loop: one task wake-up less per channel, for a server that
    /// starts a task per channel anyway (an RPC server does).
    ///
    /// `f` runs before the connection reads its next message, so it must
    /// return quickly and never block: it answers the [`IncomingChannel`]
    /// (or spawns a task that does) and returns. A channel it drops is
    /// rejected; one nothing accepts within [`Config::accept_timeout`](crate::Config::accept_timeout) is
    /// rejected then, as in a queue. The services stay claimed while the
    /// returned [`Dispatch`] is kept.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> anyhow::Result<()> {
    /// let peer = duplex::Peer::builder().build()?;
    /// let _echo = peer.dispatch(["echo"], |incoming| {
    ///     tokio::spawn(async move {
    ///         let mut ch = incoming.accept().await;
    ///         let (mut r, mut w) = tokio::io::split(&mut ch);
    ///         let _ = tokio::io::copy(&mut r, &mut w).await;
    ///         let _ = ch.close_write().await;
    ///     });
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn dispatch<I, F>(&self, services: I, f: F) -> Result<Dispatch, ClaimError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
        F: Fn(IncomingChannel) + Send + Sync + 'static,
    {
        let call: Deliver = Arc::new(move |offer| f(IncomingChannel::new(offer)));
        let (id, names) = self.claim(services, Sink::Call(call.clone()))?;
        Ok(Dispatch::new(self.core.clone(), id, names, call))
    }

    /// Claims `services` for a new acceptor delivering to `sink`.
    fn claim<I>(&self, services: I, sink: Sink) -> Result<(u64, Services), ClaimError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let host = &self.core.host;
        if host.draining.is_cancelled() {
            return Err(ClaimError::Shutdown);
        }
        let names = services
            .into_iter()
            .map(|s| ServiceName::new(s.as_ref()).map(|n| Box::<str>::from(n.as_str())))
            .collect::<Result<Box<[_]>, _>>()?;
        let id = host
            .routes_mut()
            .claim(names.iter().map(|n| &**n), sink)
            .map_err(|taken| ClaimError::Taken {
                service: taken.0,
                peer: host.name.to_string(),
            })?;
        Ok((id, names))
    }

    /// Waits for the next channel a remote opened to us for a service no
    /// [`Acceptor`] claims.
    ///
    /// Calling it (once is enough) tells the peer that the application
    /// takes unclaimed channels: from then on they wait here, up to
    /// [`Config::accept_timeout`](crate::Config::accept_timeout), rather than being refused at once or
    /// going to an RPC server's fallback. See [`acceptor`](Self::acceptor)
    /// for the whole routing rule.
    ///
    /// Returns `None` once the peer is shut down. Cancel-safe: a cancelled
    /// call loses no channel.
    pub async fn accept(&self) -> Option<IncomingChannel> {
        if !self.core.host.routes().is_general() {
            self.core.host.routes_mut().set_general();
        }
        let mut rx = self.core.incoming_rx.lock().await;
        loop {
            let ch = tokio::select! {
                ch = rx.recv() => ch?,
                _ = self.core.host.cancel.cancelled() => return None,
            };
            // One the accept timeout rejected while it waited is skipped.
            if !ch.is_expired() {
                return Some(IncomingChannel::new(ch));
            }
        }
    }

    /// Has the session accept every channel a remote opens to this peer
    /// for `service` the moment it arrives, until the returned guard is
    /// dropped: for an application that takes every such channel anyway
    /// (an RPC server, a service that answers each channel it is given).
    ///
    /// The `ACCEPT` then leaves with the SSH confirmation, in the same
    /// packet batch, rather than from the application's task once it has
    /// taken the channel from [`accept`](Self::accept): a round of task
    /// wake-ups less per channel, and the opener's `open` returns sooner.
    /// The channel still comes through `accept` as an
    /// [`IncomingChannel`], and still counts against
    /// [`Config::max_pending_channels`](crate::Config::max_pending_channels) until taken; what changes is what
    /// refusing it means. Already accepted, it can no longer be rejected
    /// with a reason: [`IncomingChannel::reject`], dropping it, or leaving
    /// it past [`Config::accept_timeout`](crate::Config::accept_timeout) closes it, and the opener sees
    /// its channel closed (an end of stream) rather than
    /// [`OpenError::Rejected`](crate::OpenError::Rejected). The checks before the application's answer
    /// (service name, limits, draining) refuse as before.
    ///
    /// Registrations count: a service stays accepted at once while any
    /// guard for it is alive. A name that is not a valid service name
    /// matches nothing.
    ///
    /// ```no_run
    /// # async fn demo(peer: duplex::Peer) {
    /// let _at_once = peer.accept_at_once("echo");
    /// while let Some(incoming) = peer.accept().await {
    ///     let mut ch = incoming.accept().await; // already accepted: no wait
    ///     tokio::spawn(async move {
    ///         let (mut r, mut w) = ch.split();
    ///         let _ = tokio::io::copy(&mut r, &mut w).await;
    ///     });
    /// }
    /// # }
    /// ```
    pub fn accept_at_once(&self, service: &str) -> AcceptAtOnce {
        self.core
            .host
            .routes_mut()
            .set_general_at_once(service, true);
        AcceptAtOnce {
            host: Arc::downgrade(&self.core.host),
            service: service.into(),
        }
    }
}

/// Keeps a service accepted at once (see [`Peer::accept_at_once`]);
/// dropping it ends that registration, and channels arriving afterwards
/// wait for the application's answer again.
#[must_use = "the service is accepted at once only while the guard is kept"]
pub struct AcceptAtOnce {
    host: std::sync::Weak<Host>,
    service: Box<str>,
}

impl fmt::Debug for AcceptAtOnce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptAtOnce")
            .field("service", &self.service)
            .finish()
    }
}

impl Drop for AcceptAtOnce {
    fn drop(&mut self) {
        if let Some(host) = self.host.upgrade() {
            host.routes_mut().set_general_at_once(&self.service, false);
        }
    }
}

/// The service names an acceptor claimed.
type Services = Box<[Box<str>]>;
