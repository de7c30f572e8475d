//! A connection's channels, without I/O: the table by [`ChannelId`], which
//! of them we opened, the remote's numbers for those (so a nested open's
//! parent reference resolves in O(1)), the nesting tree, and the counts of
//! channels waiting for the application.
//!
//! [`Mux<C>`] is generic over what it keeps per channel: the driver keeps
//! an `Arc<ChanShared>` (`conn/mod.rs`, under the connection's table lock),
//! the connection-level pair harness (`proto/pair.rs`) a `Chan` of its own.
//!
//! The nesting tree: [`Mux::adopt`] records a child under a parent, refused
//! once the parent has ended; [`Mux::end`] marks a channel ended and hands
//! back (detached) the children it had. The caller ends each of them in
//! turn, whose own `end` hands back theirs, and so on: every channel
//! adopted before an end is reached by its cascade exactly once, and none
//! can be adopted after it. [`Mux::remove`] takes a channel out of the
//! table, of the remote index and of its parent's children.
//!
//! Parent references (`proto::nest`): [`ParentRef::Yours`]`(n)` names an
//! incoming channel by our number `n`; [`ParentRef::Mine`]`(n)` a channel
//! we opened by the number the remote gave it in its `ACCEPT`, looked up in
//! an index that [`Mux::set_remote`] fills. The remote's numbers are its own
//! SSH channel numbers, unique among its open channels; should a remote
//! give one number to two of our channels, the first keeps it and the
//! second cannot be named by it (the index never disagrees with a scan of
//! the table).

use std::collections::BTreeSet;

use foldhash::HashMap;

use super::ChannelId;
use super::nest::ParentRef;

/// A connection's channel table and nesting tree (see the module docs).
#[derive(Debug)]
pub(crate) struct Mux<C> {
    chans: HashMap<ChannelId, Entry<C>>,
    /// The remote's number of each channel we opened that it accepted.
    by_remote: HashMap<u32, ChannelId>,
    /// Incoming channels waiting for the application's answer.
    pending: usize,
    /// The pending ones from plain SSH clients: they are not in the table
    /// until accepted, so they count towards the channel limit here.
    pending_plain: usize,
}

#[derive(Debug)]
struct Entry<C> {
    chan: C,
    outgoing: bool,
    /// The remote's number for it, if it is in `by_remote`.
    remote: Option<u32>,
    parent: Option<ChannelId>,
    children: BTreeSet<ChannelId>,
    /// Ended: takes no more children.
    ended: bool,
}

/// A channel taken out of the table.
#[derive(Debug)]
pub(crate) struct Removed<C> {
    pub(crate) chan: C,
    /// The children it still had (only if it had not ended), detached: the
    /// caller ends them, as after [`Mux::end`].
    pub(crate) children: Vec<ChannelId>,
}

/// Why a parent reference names no channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unknown {
    /// [`ParentRef::Yours`] named a channel that we opened (it must be
    /// named with the other kind): see `proto::open::unknown_parent`.
    pub(crate) ours: bool,
}

/// Why [`Mux::adopt`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdoptError {
    /// The parent is not in the table.
    ParentGone,
    /// The parent has ended.
    ParentEnded,
    /// The child is not in the table (it ended and was removed already:
    /// there is nothing left to cascade to).
    ChildGone,
    /// The child is nested elsewhere already, or is the parent or one of
    /// its ancestors.
    Taken,
}

impl<C> Default for Mux<C> {
    fn default() -> Self {
        Mux {
            chans: HashMap::default(),
            by_remote: HashMap::default(),
            pending: 0,
            pending_plain: 0,
        }
    }
}

impl<C> Mux<C> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    // ---- the table ----

    /// Adds a channel; one already under `id` is removed first (and
    /// returned, see [`Mux::remove`]).
    pub(crate) fn insert(&mut self, id: ChannelId, chan: C, outgoing: bool) -> Option<Removed<C>> {
        let old = self.remove(id);
        self.chans.insert(
            id,
            Entry {
                chan,
                outgoing,
                remote: None,
                parent: None,
                children: BTreeSet::new(),
                ended: false,
            },
        );
        old
    }

    pub(crate) fn get(&self, id: ChannelId) -> Option<&C> {
        self.chans.get(&id).map(|e| &e.chan)
    }

    /// Channels in the table.
    pub(crate) fn len(&self) -> usize {
        self.chans.len()
    }

    /// Every channel, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &C> {
        self.chans.values().map(|e| &e.chan)
    }

    /// Takes a channel out of the table (the driver's `forget`, or the
    /// remote's close), of the remote index, and of its parent's children.
    pub(crate) fn remove(&mut self, id: ChannelId) -> Option<Removed<C>> {
        self.remove_if(id, |_| true)
    }

    /// As [`Mux::remove`], only if `check` accepts the entry under `id`
    /// (the driver checks it is still the same channel: a number is
    /// reused only once its channel is gone).
    pub(crate) fn remove_if(
        &mut self,
        id: ChannelId,
        check: impl FnOnce(&C) -> bool,
    ) -> Option<Removed<C>> {
        if !check(&self.chans.get(&id)?.chan) {
            return None;
        }
        let e = self.chans.remove(&id)?;
        if let Some(n) = e.remote
            && self.by_remote.get(&n) == Some(&id)
        {
            self.by_remote.remove(&n);
        }
        if let Some(p) = e.parent
            && let Some(pe) = self.chans.get_mut(&p)
        {
            pe.children.remove(&id);
        }
        let children: Vec<ChannelId> = e.children.into_iter().collect();
        self.detach(&children);
        Some(Removed {
            chan: e.chan,
            children,
        })
    }

    /// Empties the table (the session ended), in the order of the ids.
    /// The pending counts are left alone: each pending channel still gets
    /// its answer, which counts it down.
    pub(crate) fn drain(&mut self) -> Vec<(ChannelId, C)> {
        self.by_remote.clear();
        let mut all: Vec<_> = self.chans.drain().map(|(id, e)| (id, e.chan)).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    // ---- the remote's numbers ----

    /// The remote accepted channel `id`, which we opened, and numbered it
    /// `n`: from now on [`ParentRef::Mine`]`(n)` resolves to it. False
    /// (nothing changes) for a channel we did not open, one numbered
    /// already, or a number another of our channels holds.
    pub(crate) fn set_remote(&mut self, id: ChannelId, n: u32) -> bool {
        if self.by_remote.contains_key(&n) {
            return false;
        }
        let Some(e) = self.chans.get_mut(&id) else {
            return false;
        };
        if !e.outgoing || e.remote.is_some() {
            return false;
        }
        e.remote = Some(n);
        self.by_remote.insert(n, id);
        true
    }

    /// The channel a nested open's parent reference names: `Yours(n)` an
    /// incoming channel with our number `n`, `Mine(n)` a channel we opened
    /// that the remote numbered `n`. Ended channels are found too (the
    /// caller refuses them with their reason).
    pub(crate) fn resolve(&self, parent: ParentRef) -> Result<ChannelId, Unknown> {
        match parent {
            ParentRef::Yours(n) => {
                let id = ChannelId(n);
                match self.chans.get(&id) {
                    Some(e) if !e.outgoing => Ok(id),
                    Some(_) => Err(Unknown { ours: true }),
                    None => Err(Unknown { ours: false }),
                }
            }
            ParentRef::Mine(n) => self
                .by_remote
                .get(&n)
                .copied()
                .ok_or(Unknown { ours: false }),
        }
    }

    // ---- the nesting tree ----

    /// Records `child` as nested in `parent`, unless the parent has ended
    /// (or is gone). A child adopted here is handed back by the parent's
    /// [`Mux::end`].
    pub(crate) fn adopt(&mut self, parent: ChannelId, child: ChannelId) -> Result<(), AdoptError> {
        let pe = self.chans.get(&parent).ok_or(AdoptError::ParentGone)?;
        if pe.ended {
            return Err(AdoptError::ParentEnded);
        }
        let ce = self.chans.get(&child).ok_or(AdoptError::ChildGone)?;
        match ce.parent {
            Some(p) if p == parent => return Ok(()),
            Some(_) => return Err(AdoptError::Taken),
            None => {}
        }
        // No circles: the child may not be the parent or above it.
        let mut up = Some(parent);
        while let Some(at) = up {
            if at == child {
                return Err(AdoptError::Taken);
            }
            up = self.chans.get(&at).and_then(|e| e.parent);
        }
        if let Some(ce) = self.chans.get_mut(&child) {
            ce.parent = Some(parent);
        }
        if let Some(pe) = self.chans.get_mut(&parent) {
            pe.children.insert(child);
        }
        Ok(())
    }

    /// Marks a channel ended (it takes no more children) and hands back,
    /// detached, the children it had, in the order of their ids: the
    /// caller ends each of them, and so on down. Empty when it ended
    /// before (its children were handed back then) or is not in the table.
    pub(crate) fn end(&mut self, id: ChannelId) -> Vec<ChannelId> {
        let Some(e) = self.chans.get_mut(&id) else {
            return Vec::new();
        };
        e.ended = true;
        let children: Vec<ChannelId> = std::mem::take(&mut e.children).into_iter().collect();
        self.detach(&children);
        children
    }

    fn detach(&mut self, children: &[ChannelId]) {
        for c in children {
            if let Some(ce) = self.chans.get_mut(c) {
                ce.parent = None;
            }
        }
    }

    // ---- counts ----

    /// Incoming channels waiting for the application's answer.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Channels on the connection for the channel limit: the table and
    /// the plain clients' pending ones.
    pub(crate) fn open_count(&self) -> usize {
        self.chans.len().saturating_add(self.pending_plain)
    }

    /// An incoming channel waits for the application (`plain`: a plain SSH
    /// client's).
    pub(crate) fn add_pending(&mut self, plain: bool) {
        self.pending = self.pending.saturating_add(1);
        if plain {
            self.pending_plain = self.pending_plain.saturating_add(1);
        }
    }

    /// An incoming channel was answered. Never below zero: an answer with
    /// no matching [`Mux::add_pending`] changes nothing.
    pub(crate) fn pending_done(&mut self, plain: bool) {
        self.pending = self.pending.saturating_sub(1);
        if plain {
            self.pending_plain = self.pending_plain.saturating_sub(1);
        }
    }
}

/// What the tests and the pair harness ask of the table and the tree.
#[cfg(any(test, feature = "fuzzing"))]
impl<C> Mux<C> {
    pub(crate) fn get_mut(&mut self, id: ChannelId) -> Option<&mut C> {
        self.chans.get_mut(&id).map(|e| &mut e.chan)
    }

    /// Every channel's id, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.chans.keys().copied()
    }

    /// Whether we opened it (`None`: not in the table).
    pub(crate) fn is_outgoing(&self, id: ChannelId) -> Option<bool> {
        self.chans.get(&id).map(|e| e.outgoing)
    }

    /// The remote's number for a channel we opened, once it accepted.
    pub(crate) fn remote(&self, id: ChannelId) -> Option<u32> {
        self.chans.get(&id).and_then(|e| e.remote)
    }

    pub(crate) fn is_ended(&self, id: ChannelId) -> bool {
        self.chans.get(&id).is_some_and(|e| e.ended)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl<C> Mux<C> {
    /// Checks the invariants: the remote index agrees with a scan of the
    /// table (each number held by one channel we opened, and each such
    /// channel in the index); every link has its reverse and points at a
    /// channel in the table; an ended channel has no children; no circles.
    pub(crate) fn check(&self) -> Result<(), String> {
        let numbered = self.chans.values().filter(|e| e.remote.is_some()).count();
        if numbered != self.by_remote.len() {
            return Err(format!(
                "{numbered} channels numbered by the remote, {} in the index",
                self.by_remote.len()
            ));
        }
        for (n, id) in &self.by_remote {
            match self.chans.get(id) {
                Some(e) if e.outgoing && e.remote == Some(*n) => {}
                _ => return Err(format!("the index names {id} for {n} wrongly")),
            }
        }
        for (id, e) in &self.chans {
            if let Some(p) = e.parent {
                let Some(pe) = self.chans.get(&p) else {
                    return Err(format!("{id}'s parent {p} is gone"));
                };
                if !pe.children.contains(id) {
                    return Err(format!("{p} does not list its child {id}"));
                }
            }
            if e.ended && !e.children.is_empty() {
                return Err(format!("{id} ended with children {:?}", e.children));
            }
            for c in &e.children {
                if self.chans.get(c).and_then(|ce| ce.parent) != Some(*id) {
                    return Err(format!("{id} lists {c}, which is not its child"));
                }
            }
            let mut up = e.parent;
            let mut steps = 0usize;
            while let Some(at) = up {
                steps += 1;
                if at == *id || steps > self.chans.len() {
                    return Err(format!("a circle through {id}"));
                }
                up = self.chans.get(&at).and_then(|e| e.parent);
            }
        }
        Ok(())
    }
}

/// What only the unit tests ask.
#[cfg(test)]
impl<C> Mux<C> {
    /// The pending ones from plain SSH clients (not in the table).
    pub(crate) fn pending_plain(&self) -> usize {
        self.pending_plain
    }

    pub(crate) fn contains(&self, id: ChannelId) -> bool {
        self.chans.contains_key(&id)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.chans.is_empty()
    }

    /// The channel `id` is nested in, while neither has ended.
    pub(crate) fn parent(&self, id: ChannelId) -> Option<ChannelId> {
        self.chans.get(&id).and_then(|e| e.parent)
    }

    /// The children of `id` (until it ends), in the order of their ids.
    pub(crate) fn children(&self, id: ChannelId) -> impl Iterator<Item = ChannelId> + '_ {
        self.chans
            .get(&id)
            .into_iter()
            .flat_map(|e| e.children.iter().copied())
    }
}

#[cfg(test)]
mod tests;
