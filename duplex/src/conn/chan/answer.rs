//! The answer to a channel the remote opened: claimed exactly once by
//! accept, reject, drop or the accept timeout; a plain SSH client's open
//! kept until then.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::ChannelError;
use crate::pending::Waiting;
use crate::proto::chan::Kind;
use crate::proto::control::Control;
use crate::proto::open::OPEN_PROHIBITED;
use crate::ssh::OpenReply;

use super::ChanShared;

impl ChanShared {
    /// Keeps a plain SSH client's open until the application answers.
    pub(crate) fn set_plain_reply(&self, reply: OpenReply) {
        *self.plain_reply.lock().unwrap_or_else(|p| p.into_inner()) = Some(reply);
    }

    /// Takes the plain SSH client's open, to answer it.
    pub(crate) fn take_plain_reply(&self) -> Option<OpenReply> {
        self.plain_reply
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Claims the right to answer an incoming channel: true exactly once
    /// (accept, reject, drop and the accept timeout race for it).
    pub(crate) fn take_answer(&self) -> bool {
        let won = !self.answered.swap(true, Ordering::AcqRel);
        if won {
            self.conn.host.pending.answered();
        }
        won
    }

    /// Rejects an incoming channel nobody answered (its handle was dropped,
    /// or its parent ended while it waited); does nothing once answered.
    pub(crate) fn refuse_unanswered(&self) {
        if self.take_answer() {
            self.conn.pending_done(self.kind);
            // A plain client's deferred open is refused by russh when the
            // reply handle drops.
            if self.take_plain_reply().is_none() && self.kind == Kind::Duplex {
                self.refuse("the application did not accept the channel");
            }
        }
    }

    /// Refuses a Duplex channel the application did not take: `REJECT`
    /// with `reason`, then the close. One the session accepted at once
    /// (`Peer::accept_at_once`) is only closed, with its nested channels:
    /// no `REJECT` may follow an `ACCEPT`.
    pub(crate) fn refuse(&self, reason: &str) {
        if self.is_established() {
            tracing::debug!(
                channel = self.id,
                "closing a channel accepted at once: {reason}"
            );
        } else {
            self.send_control(&Control::Reject {
                reason: reason.to_owned(),
            });
        }
        self.send_close();
    }

    /// Whether an incoming channel was answered already (the accept
    /// timeout rejected it while it sat in a queue).
    pub(crate) fn is_answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// The accept timeout passed with the channel still pending: reject
    /// it, saying which service, which peer and which setting.
    fn expire_now(&self, after: Duration) {
        if !self.take_answer() {
            return;
        }
        self.conn.pending_done(self.kind);
        // Its share of the connection's buffer goes back now, not when the
        // entry is finally dropped from a queue nobody reads.
        drop(
            self.reservation
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let me = self.local_peer();
        let reason = match self.meta.get().and_then(|m| m.parent()) {
            Some(parent) => format!(
                "{:?} was not accepted within {after:?}: the application on {me} did not take the nested channels of {:?} (Config::accept_timeout)",
                self.service(),
                parent.service()
            ),
            None => format!(
                "{:?} was not accepted within {after:?}: the application on {me} did not take it (Config::accept_timeout)",
                self.service()
            ),
        };
        tracing::info!(channel = self.id, "{reason}");
        // Should the application take it after all (it lost the race), its
        // reads and writes fail with the reason rather than wait.
        self.with(|st, _| {
            st.chan
                .set_failed(ChannelError::NotAccepted(reason.clone().into()))
        });
        match self.take_plain_reply() {
            Some(reply) => {
                // The reply goes through the session's queue: not awaited in
                // the timer's task.
                self.conn.host.tracker.spawn(async move {
                    reply.reject(OPEN_PROHIBITED, &reason).await;
                });
            }
            None if self.is_established() => {
                // Accepted at once: its nested channels end with it, and it
                // is closed without a `REJECT` (see `refuse`).
                self.fail(ChannelError::NotAccepted(reason.clone().into()));
                self.with(|st, _| st.chan.force_reject(reason));
            }
            None => self.with(|st, _| st.chan.force_reject(reason)),
        }
    }
}

impl Waiting for ChanShared {
    fn is_answered(&self) -> bool {
        ChanShared::is_answered(self)
    }

    fn expire(&self, after: Duration) {
        self.expire_now(after);
    }
}
