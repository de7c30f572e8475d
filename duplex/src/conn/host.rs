//! What a peer gives every connection it runs: who it is, its settings, the
//! tokens and task tracker they run under, the receive-buffer budgets and
//! accept queue they share, and the registry they report to. The peer's own
//! tables (connections by name, listeners, dialled endpoints) stay in
//! `peer/`; a connection reaches them only through [`Registry`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::lograte::Refusals;
use crate::pending::Pending;
use crate::proto::budget::{Budget, Level};
use crate::ssh::keys::Fingerprint;
use crate::ssh::trust::AuthorizedKeys;

use super::ConnShared;
use super::owned::{Offer, Sink};
use super::routes::{Route, Routes};

/// The peer's side of a connection: what the connection tells the peer
/// that owns it. Implemented by the peer's tables (`peer::PeerCore`).
pub(crate) trait Registry: Send + Sync {
    /// The remote finished the Duplex hello: it is a peer now.
    fn register(&self, conn: Arc<ConnShared>);
    /// The connection ended, for `reason`.
    fn unregister(&self, conn: &ConnShared, reason: Arc<str>);
}

/// What every connection of one peer shares.
pub(crate) struct Host {
    pub(crate) name: Arc<str>,
    pub(crate) config: Arc<Config>,
    /// Replaced whole by `set_authorized_keys`; read per authentication.
    pub(crate) authorized: Mutex<Arc<AuthorizedKeys>>,
    /// Fired when a channel leaves a connection's table (for draining,
    /// and for opens waiting for receive buffer).
    pub(crate) channels_changed: Notify,
    /// Opens waiting for receive buffer wait here, one at a time.
    pub(crate) room: tokio::sync::Mutex<()>,
    /// Cancelled when `shutdown` starts: no new connections or channels.
    pub(crate) draining: CancellationToken,
    /// The peer's accept queue (`Peer::accept`).
    pub(crate) incoming_tx: mpsc::Sender<Offer>,
    pub(crate) conn_ids: AtomicU64,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Rejects incoming channels left waiting (`Config::accept_timeout`).
    pub(crate) pending: Arc<Pending>,
    /// Rate limits for logging what remotes can cause at will.
    pub(crate) refusals: Refusals,
    /// Receive buffer reserved over all connections
    /// (`Config::max_total_buffer`).
    pub(crate) total_budget: Arc<Budget>,
    /// Per remote key, over its connections (`Config::max_peer_buffer`).
    pub(crate) peer_budgets: Mutex<HashMap<Fingerprint, Weak<Budget>>>,
    /// Which queue each top-level channel goes to (`Peer::acceptor`,
    /// `Peer::accept`, `Peer::accept_at_once`).
    pub(crate) routes: RwLock<Routes<Sink>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Host {
    /// The receive-buffer budget of the remote with key `fp`, shared by its
    /// connections while any of them holds it.
    pub(crate) fn budget_for(&self, fp: &Fingerprint) -> Arc<Budget> {
        let mut map = lock(&self.peer_budgets);
        if let Some(b) = map.get(fp).and_then(Weak::upgrade) {
            return b;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let b = Budget::new(self.config.max_peer_buffer, Level::Peer);
        map.insert(fp.clone(), Arc::downgrade(&b));
        b
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Where a channel for `service` goes.
    pub(crate) fn route(&self, service: &str) -> Route<Sink> {
        self.routes().route(service)
    }

    pub(crate) fn routes(&self) -> std::sync::RwLockReadGuard<'_, Routes<Sink>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn routes_mut(&self) -> std::sync::RwLockWriteGuard<'_, Routes<Sink>> {
        self.routes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys allowed to connect now.
    pub(crate) fn authorized(&self) -> Arc<AuthorizedKeys> {
        lock(&self.authorized).clone()
    }
}
