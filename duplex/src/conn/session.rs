//! The session's events, as both SSH roles deliver them.

use std::future::Future;
use std::sync::Arc;

use crate::proto::chan::Delivery;
use crate::ssh::keys::{Fingerprint, PublicKey};
use crate::ssh::{IncomingOpen, SessionEvents};

use super::*;

impl SessionEvents for ConnShared {
    fn on_host_key(&self, fp: Fingerprint) {
        let _ = self.remote_key.set(fp);
    }

    fn authorizes(&self, key: &PublicKey) -> bool {
        self.host.authorized().authorizes(key)
    }

    fn check_name(&self, fp: &Fingerprint, claimed: &str) -> Result<(), crate::NameBindingError> {
        self.host.authorized().check_name(fp, claimed)
    }

    fn on_key_refused(&self, user: &str, fp: &Fingerprint, why: &str) {
        if let Some(n) = self.host.refusals.keys.allow() {
            tracing::info!(
                endpoint = %self.endpoint,
                user,
                fingerprint = %fp,
                "refused a key at authentication: {why}{}",
                crate::lograte::left_out(n)
            );
        }
    }

    fn on_authenticated(&self, user: &str, fp: Fingerprint) {
        let _ = self.remote_user.set(user.into());
        let _ = self.remote_key.set(fp);
        self.authenticated.notify_one();
    }

    fn on_open(this: &Arc<Self>, open: IncomingOpen) -> impl Future<Output = ()> + Send {
        this.open_from_remote(open)
    }

    /// An open we sent was confirmed: create the channel now, so events that
    /// follow the confirmation have somewhere to go before the opening task
    /// claims it.
    fn on_confirm(this: &Arc<Self>, id: u32) {
        this.meet(id);
    }

    fn on_data(&self, id: u32, data: &[u8]) {
        let Some(chan) = self.get(id) else { return };
        match chan.on_data(data) {
            Delivery::Ok => {}
            Delivery::Violation => chan.send_close_after_failure(),
        }
    }

    fn on_ext(&self, id: u32, code: u32, data: &[u8]) {
        if let Some(chan) = self.get(id)
            && let Delivery::Violation = chan.on_ext(code, data)
        {
            chan.send_close_after_failure();
        }
    }

    fn on_eof(&self, id: u32) {
        if let Some(chan) = self.get(id) {
            chan.on_eof();
        }
    }

    fn on_close(&self, id: u32) {
        let removed = {
            let mut chans = self.channels();
            chans
                .remove(ChannelId(id))
                .map(|r| (r.chan, resolve_all(&chans, r.children)))
        };
        tracing::trace!(channel = id, known = removed.is_some(), "remote closed");
        if let Some((chan, children)) = removed {
            // Out of the table, and of the tree with it: its children come
            // back with it, to end with it.
            chan.on_close(children);
            self.host.channels_changed.notify_waiters();
        }
    }

    fn on_disconnect(&self, why: String) {
        self.set_end_reason(why);
    }

    fn on_ended(&self) {
        self.ended.cancel();
    }
}
