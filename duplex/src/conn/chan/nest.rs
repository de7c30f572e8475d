//! A channel's nested channels: the children it adopted, the nested opens
//! waiting for `Children::accept`, and the cascade that ends every
//! descendant when a channel ends.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use crate::error::ChannelError;

use super::{ChanShared, Inner, closed_reason};

impl ChanShared {
    /// Records `child` as nested in this channel, unless this one is
    /// closed (then the reason).
    pub(crate) fn adopt(&self, child: &Arc<ChanShared>) -> Result<(), Arc<str>> {
        let mut st = self.lock();
        if let Some(why) = closed_reason(&st.chan) {
            return Err(why);
        }
        st.children.retain(|w| w.strong_count() > 0);
        st.children.push(Arc::downgrade(child));
        Ok(())
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

    /// Ends this channel because an ancestor ended: fails it with
    /// `ending.local`, tells the remote why (a `PARENT_CLOSED` record) and
    /// closes it, then does the same to its own children.
    pub(super) fn end_by_parent(&self, ending: &Ending) {
        let nested = self.with(|st, _| {
            let remote = ending.remote.as_deref();
            st.chan
                .end_by_parent(ending.local.clone(), remote, ending.close)
                .then(|| take_children(st))
        });
        if let Some(nested) = nested {
            self.end_children(nested, || ending.clone());
        }
    }

    /// Ends the children taken from this channel, and rejects the nested
    /// channels nobody accepted yet.
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

/// Takes the live children and the unaccepted nested channels.
pub(super) fn take_children(st: &mut Inner) -> Nested {
    let children = std::mem::take(&mut st.children)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    (children, std::mem::take(&mut st.incoming))
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
