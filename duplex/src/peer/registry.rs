//! What a peer shares with its connections and tasks: identity, settings,
//! the tables of connections, listeners and dialled endpoints, budgets and
//! the accept queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::channel::IncomingChannel;
use crate::config::Config;
use crate::conn::ConnShared;
use crate::endpoint::Endpoint;
use crate::events::PeerEvent;
use crate::ssh::SshConfigs;
use crate::ssh::keys::Identity;
use crate::ssh::trust::{AuthorizedKeys, KnownHosts};

use super::*;

pub(crate) struct PeerCore {
    pub(crate) name: Arc<str>,
    pub(crate) identity: Identity,
    /// Replaced whole by `set_authorized_keys`; read per authentication.
    pub(super) authorized: Mutex<Arc<AuthorizedKeys>>,
    pub(crate) known_hosts: Arc<KnownHosts>,
    pub(crate) config: Arc<Config>,
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
    /// Fired when a channel leaves a connection's table (for draining).
    pub(crate) channels_changed: Notify,
    /// Cancelled when `shutdown` starts: no new connections or channels.
    pub(crate) draining: CancellationToken,
    pub(crate) incoming_tx: mpsc::Sender<IncomingChannel>,
    // An async mutex only to let several tasks call `accept`; it guards the
    // receiver and nothing else.
    pub(super) incoming_rx: tokio::sync::Mutex<mpsc::Receiver<IncomingChannel>>,
    pub(super) rr: AtomicUsize,
    pub(super) conn_ids: AtomicU64,
    /// Inbound connections still in their handshake, in arrival order,
    /// with the token that ends each and when it last read anything (see
    /// `Config::max_unauthenticated`).
    pub(super) handshaking: Mutex<Vec<Unfinished>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Rejects incoming channels left waiting (`Config::accept_timeout`).
    pub(crate) pending: Arc<crate::pending::Pending>,
    /// Rate limits for logging what remotes can cause at will.
    pub(crate) refusals: crate::lograte::Refusals,
    /// Receive buffer reserved over all connections
    /// (`Config::max_total_buffer`).
    pub(crate) total_budget: Arc<crate::proto::budget::Budget>,
    /// Per remote key, over its connections (`Config::max_peer_buffer`).
    pub(super) peer_budgets:
        Mutex<HashMap<crate::Fingerprint, std::sync::Weak<crate::proto::budget::Budget>>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerCore {
    /// The receive-buffer budget of the remote with key `fp`, shared by its
    /// connections while any of them holds it.
    pub(crate) fn budget_for(&self, fp: &crate::Fingerprint) -> Arc<crate::proto::budget::Budget> {
        let mut map = lock(&self.peer_budgets);
        if let Some(b) = map.get(fp).and_then(std::sync::Weak::upgrade) {
            return b;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let b = crate::proto::budget::Budget::new(
            self.config.max_peer_buffer,
            crate::proto::budget::Level::Peer,
        );
        map.insert(fp.clone(), Arc::downgrade(&b));
        b
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register(&self, conn: Arc<ConnShared>) {
        let info = conn.info();
        {
            let mut peers = lock(&self.peers);
            if peers.iter().any(|c| c.id == conn.id) {
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

    pub(crate) fn unregister(&self, conn: &ConnShared, reason: Arc<str>) {
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

    pub(super) fn emit(&self, event: PeerEvent) {
        let _ = self.events.send(event);
    }

    /// Open channels over all connections.
    pub(super) fn channel_total(&self) -> usize {
        let conns: Vec<_> = lock(&self.all).values().cloned().collect();
        conns.iter().map(|c| c.channel_count()).sum()
    }

    /// The keys allowed to connect now.
    pub(crate) fn authorized(&self) -> Arc<AuthorizedKeys> {
        lock(&self.authorized).clone()
    }

    pub(super) fn find(&self, name: &str) -> Option<Arc<ConnShared>> {
        lock(&self.peers)
            .iter()
            .find(|c| c.remote.get().is_some_and(|r| &*r.name == name) && !c.cancel.is_cancelled())
            .cloned()
    }
}
