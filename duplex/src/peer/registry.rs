//! The peer's tables: its connections (all, and those that became peers),
//! listeners and dialled endpoints, the accept queue's receiver and the
//! handshakes in progress. What its connections share with it is
//! `conn::host::Host`; they reach these tables through `conn::host::Registry`.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::conn::ConnShared;
use crate::conn::host::{Host, Registry};
use crate::conn::owned::Offer;
use crate::endpoint::Endpoint;
use crate::events::PeerEvent;
use crate::ssh::SshConfigs;
use crate::ssh::keys::Identity;
use crate::ssh::trust::KnownHosts;

use super::*;

pub(crate) struct PeerCore {
    /// What its connections share with it.
    pub(crate) host: Arc<Host>,
    pub(crate) identity: Identity,
    pub(crate) known_hosts: Arc<KnownHosts>,
    pub(crate) ssh: SshConfigs,
    /// Connections whose remote finished the Duplex hello: the peers.
    pub(super) peers: Mutex<Vec<Arc<ConnShared>>>,
    /// Every live connection, for shutdown.
    pub(super) all: Mutex<HashMap<u64, Arc<ConnShared>>>,
    /// Per bound endpoint: the token that stops its accept loop, and the
    /// token the loop fires once its socket is closed.
    pub(super) listeners: Mutex<HashMap<Endpoint, (CancellationToken, CancellationToken)>>,
    /// Endpoints given to `connect`, kept connected by `redial`.
    pub(super) dialed: Mutex<HashMap<Endpoint, Arc<Dialer>>>,
    pub(super) events: broadcast::Sender<PeerEvent>,
    /// Fired when a peer registers (for `open` waiting on a name).
    pub(super) peers_changed: Notify,
    // An async mutex only to let several tasks call `accept`; it guards the
    // receiver and nothing else.
    pub(super) incoming_rx: tokio::sync::Mutex<mpsc::Receiver<Offer>>,
    pub(super) rr: AtomicUsize,
    /// Inbound connections still in their handshake, in arrival order,
    /// with the token that ends each and when it last read anything (see
    /// `Config::max_unauthenticated`).
    pub(super) handshaking: Mutex<Vec<Unfinished>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerCore {
    pub(super) fn emit(&self, event: PeerEvent) {
        let _ = self.events.send(event);
    }

    /// Open channels over all connections.
    pub(super) fn channel_total(&self) -> usize {
        let conns: Vec<_> = lock(&self.all).values().cloned().collect();
        conns.iter().map(|c| c.channel_count()).sum()
    }

    pub(super) fn find(&self, name: &str) -> Option<Arc<ConnShared>> {
        lock(&self.peers)
            .iter()
            .find(|c| c.remote.get().is_some_and(|r| &*r.name == name) && !c.cancel.is_cancelled())
            .cloned()
    }
}

impl Registry for PeerCore {
    fn register(&self, conn: Arc<ConnShared>) {
        let info = conn.info();
        {
            let mut peers = lock(&self.peers);
            // Not a peer twice, and not once it has ended: a connection
            // closed while its hello was still being sent (say, dropped
            // with `drop_peer` at once) was unregistered already. Checked
            // under the peers lock, which `unregister` takes first.
            if peers.iter().any(|c| c.id == conn.id) || !lock(&self.all).contains_key(&conn.id) {
                return;
            }
            tracing::info!(peer = %conn.remote_name(), endpoint = %conn.endpoint, "peer connected");
            peers.push(conn);
        }
        if let Some(info) = info {
            let _ = self.events.send(PeerEvent::Connected(info));
        }
        self.peers_changed.notify_waiters();
    }

    fn unregister(&self, conn: &ConnShared, reason: Arc<str>) {
        let was_peer = {
            let mut peers = lock(&self.peers);
            let before = peers.len();
            peers.retain(|c| c.id != conn.id);
            peers.len() != before
        };
        lock(&self.all).remove(&conn.id);
        if was_peer && let Some(peer) = conn.info() {
            tracing::info!(peer = %peer.name, endpoint = %peer.endpoint, %reason, "peer disconnected");
            let _ = self.events.send(PeerEvent::Disconnected { peer, reason });
        }
    }
}
