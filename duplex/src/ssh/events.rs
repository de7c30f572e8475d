//! What a session tells the connection above it: the one interface both
//! SSH roles' handlers call, so the connection never sees russh and the
//! handlers never see the connection.

use std::future::Future;
use std::sync::Arc;

use super::channel::IncomingOpen;
use super::keys::{Fingerprint, PublicKey};
use super::trust::NameBindingError;

/// The events of one SSH session, in the session's own task (so each must
/// return quickly: nothing here waits for the application).
pub(crate) trait SessionEvents: Send + Sync + Sized + 'static {
    // ---- the handshake ----

    /// The remote's host key was checked and trusted (client role).
    fn on_host_key(&self, fp: Fingerprint);
    /// Whether `key` may authenticate at all (server role).
    fn authorizes(&self, key: &PublicKey) -> bool;
    /// Whether the key `fp` may use the peer name `claimed` (server role).
    fn check_name(&self, fp: &Fingerprint, claimed: &str) -> Result<(), NameBindingError>;
    /// A key was refused at authentication, and why: for a rate-limited
    /// log line naming the remote (a scanner can cause this at will).
    fn on_key_refused(&self, user: &str, fp: &Fingerprint, why: &str);
    /// The remote authenticated as `user` with the key `fp` (server role).
    fn on_authenticated(&self, user: &str, fp: Fingerprint);

    // ---- channels ----

    /// The remote opened a channel; answer it through `open.reply`. May
    /// wait only for the session's own queue.
    fn on_open(this: &Arc<Self>, open: IncomingOpen) -> impl Future<Output = ()> + Send;
    /// An open we sent was confirmed.
    fn on_confirm(this: &Arc<Self>, id: u32);
    /// Channel data arrived.
    fn on_data(&self, id: u32, data: &[u8]);
    /// Extended data of type `code` arrived.
    fn on_ext(&self, id: u32, code: u32, data: &[u8]);
    /// The remote sent SSH EOF.
    fn on_eof(&self, id: u32);
    /// The remote closed the channel (russh answered the close already).
    fn on_close(&self, id: u32);

    // ---- the end ----

    /// Why the session is ending, when the remote or russh said.
    fn on_disconnect(&self, why: String);
    /// The session's task has ended (russh dropped the handler).
    fn on_ended(&self);
}
