//! A channel's nested channels: the children it adopted (kept in the
//! connection's nesting tree, `proto::mux`), the nested opens waiting for
//! `Children::accept`, and the cascade that ends every descendant when a
//! channel ends.
//!
//! A channel's end is two steps, never under both locks at once: first
//! the tree marks it ended and hands back its children (from then on it
//! refuses to adopt any), then its own state changes under its lock. The
//! tree comes first because the step may queue the channel's close, and a
//! send turn may send it and forget the channel (take it out of the table
//! and the tree) before the step returns: by then its children must be in
//! the caller's hands, to end with the right reason.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::ChannelError;
use crate::proto::ChannelId;
use crate::proto::mux::AdoptError;

use super::{ChanShared, Inner, closed_reason};

impl ChanShared {
    /// Records `child` as nested in this channel, unless this one is
    /// closed (then the reason).
    pub(crate) fn adopt(&self, child: &Arc<ChanShared>) -> Result<(), Arc<str>> {
        if let Some(why) = self.closed_reason() {
            return Err(why);
        }
        let adopted = self
            .conn
            .channels()
            .adopt(ChannelId(self.id), ChannelId(child.id));
        match adopted {
            // A child already gone from the table has ended: there is
            // nothing left to cascade to.
            Ok(()) | Err(AdoptError::ChildGone) => Ok(()),
            // It is ending: the tree knew before its state did.
            Err(AdoptError::ParentEnded | AdoptError::Taken) => Err(self
                .closed_reason()
                .unwrap_or_else(|| "the parent channel is closing".into())),
            // Out of the table without a close: the connection is gone.
            Err(AdoptError::ParentGone) => Err(self
                .closed_reason()
                .unwrap_or_else(|| self.conn.lost_reason().into())),
        }
    }

    /// Queues a nested channel the remote opened for `accept_child`; gives
    /// it back if this channel closed meanwhile.
    pub(crate) fn offer_child(&self, child: Arc<ChanShared>) -> Option<Arc<ChanShared>> {
        let mut st = self.lock();
        if closed_reason(&st.chan).is_some() {
            return Some(child);
        }
        // Children the accept timeout rejected while nobody accepted here
        // leave the queue now (dropped after the lock).
        let mut expired = Vec::new();
        if st.incoming.iter().any(|c| c.is_answered()) {
            for c in std::mem::take(&mut st.incoming) {
                if c.is_answered() {
                    expired.push(c);
                } else {
                    st.incoming.push_back(c);
                }
            }
        }
        st.incoming.push_back(child);
        drop(st);
        drop(expired);
        self.children_ready.notify_waiters();
        None
    }

    /// The next nested channel the remote opened; `None` once this channel
    /// is closed. Cancel-safe.
    pub(crate) async fn accept_child(&self) -> Option<Arc<ChanShared>> {
        loop {
            let notified = self.children_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                while let Some(c) = st.incoming.pop_front() {
                    if !c.is_answered() {
                        return Some(c);
                    }
                }
                if closed_reason(&st.chan).is_some() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// How the children of a channel closed on this side end.
    pub(super) fn closed_here(&self) -> Ending {
        Ending {
            local: ChannelError::ParentClosed(
                format!("{:?} was closed on this side", self.service()).into(),
            ),
            remote: Some(
                format!("{:?} was closed by {}", self.service(), self.local_peer()).into(),
            ),
            close: true,
        }
    }

    /// Ends the children a channel still had when it was forgotten (its
    /// close was sent: they ended then, so this finds none in practice).
    pub(crate) fn end_orphans(&self, children: Vec<Arc<ChanShared>>) {
        if !children.is_empty() {
            self.end_children((children, VecDeque::new()), || self.closed_here());
        }
    }

    /// Ends this channel because an ancestor ended: fails it with
    /// `ending.local`, tells the remote why (a `PARENT_CLOSED` record) and
    /// closes it, then does the same to its own children.
    pub(super) fn end_by_parent(&self, ending: &Ending) {
        let children = self.end_in_tree();
        let incoming = self.with(|st, _| {
            let remote = ending.remote.as_deref();
            st.chan
                .end_by_parent(ending.local.clone(), remote, ending.close)
                .then(|| take_incoming(st))
        });
        self.end_children((children, incoming.unwrap_or_default()), || ending.clone());
    }

    /// Marks this channel ended in the connection's nesting tree (before
    /// its own state, see the module docs) and takes its children.
    pub(super) fn end_in_tree(&self) -> Vec<Arc<ChanShared>> {
        self.conn.end_nested(self)
    }

    /// Ends the children taken from this channel (see `end_in_tree`), and
    /// rejects the nested channels nobody accepted yet.
    pub(super) fn end_children(&self, nested: Nested, ending: impl FnOnce() -> Ending) {
        let (children, pending) = nested;
        if !children.is_empty() {
            let ending = ending();
            for c in &children {
                c.end_by_parent(&ending);
            }
        }
        for c in pending {
            c.refuse_unanswered();
        }
    }
}

/// A channel's children and its unaccepted nested channels.
pub(super) type Nested = (Vec<Arc<ChanShared>>, VecDeque<Arc<ChanShared>>);

/// Takes the unaccepted nested channels (the children come from the
/// nesting tree, see `end_in_tree`).
pub(super) fn take_incoming(st: &mut Inner) -> VecDeque<Arc<ChanShared>> {
    std::mem::take(&mut st.incoming)
}

/// How the descendants of an ended channel end.
#[derive(Clone)]
pub(super) struct Ending {
    /// The error their local handles get.
    pub(super) local: ChannelError,
    /// The reason sent to the remote in a `PARENT_CLOSED` record, if any.
    pub(super) remote: Option<Arc<str>>,
    /// Whether we close them (not when the connection is gone).
    pub(super) close: bool,
}
