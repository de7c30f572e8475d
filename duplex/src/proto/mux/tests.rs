//! The mux's table, remote index and nesting tree, alone.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeSet, HashSet};

use proptest::prelude::*;

use super::*;

fn id(n: u32) -> ChannelId {
    ChannelId(n)
}

/// Ends `root` and every descendant as the driver does (each child's own
/// end hands back its children); returns the channels reached, in order.
fn cascade<C>(m: &mut Mux<C>, root: ChannelId) -> Vec<ChannelId> {
    let mut reached = Vec::new();
    let mut todo = m.end(root);
    while let Some(c) = todo.pop() {
        reached.push(c);
        todo.extend(m.end(c));
    }
    reached
}

#[test]
fn parent_references_resolve_by_kind() {
    let mut m = Mux::new();
    m.insert(id(3), "in", false);
    m.insert(id(4), "out", true);
    assert_eq!(m.resolve(ParentRef::Yours(3)), Ok(id(3)));
    // Ours: named with the wrong kind.
    assert_eq!(m.resolve(ParentRef::Yours(4)), Err(Unknown { ours: true }));
    assert_eq!(m.resolve(ParentRef::Yours(9)), Err(Unknown { ours: false }));
    // Not accepted yet: no remote number.
    assert_eq!(m.resolve(ParentRef::Mine(70)), Err(Unknown { ours: false }));
    assert!(m.set_remote(id(4), 70));
    assert_eq!(m.resolve(ParentRef::Mine(70)), Ok(id(4)));
    assert_eq!(m.remote(id(4)), Some(70));
    // Incoming channels have no remote number; one number names one
    // channel; a channel is numbered once.
    assert!(!m.set_remote(id(3), 71));
    m.insert(id(5), "out2", true);
    assert!(!m.set_remote(id(5), 70));
    assert!(!m.set_remote(id(4), 72));
    assert_eq!(m.resolve(ParentRef::Mine(72)), Err(Unknown { ours: false }));
    // Removal frees the number.
    m.remove(id(4)).unwrap();
    assert_eq!(m.resolve(ParentRef::Mine(70)), Err(Unknown { ours: false }));
    assert!(m.set_remote(id(5), 70));
    assert_eq!(m.resolve(ParentRef::Mine(70)), Ok(id(5)));
}

#[test]
fn an_ended_parent_takes_no_children_and_hands_back_all_it_had() {
    let mut m = Mux::new();
    for n in 1..=5 {
        m.insert(id(n), n, n % 2 == 0);
    }
    m.adopt(id(1), id(2)).unwrap();
    m.adopt(id(1), id(3)).unwrap();
    m.adopt(id(3), id(4)).unwrap();
    assert_eq!(m.parent(id(4)), Some(id(3)));
    assert_eq!(m.children(id(1)).collect::<Vec<_>>(), vec![id(2), id(3)]);
    let mut reached = cascade(&mut m, id(1));
    reached.sort();
    assert_eq!(reached, vec![id(2), id(3), id(4)]);
    assert!(m.is_ended(id(1)) && m.is_ended(id(4)) && !m.is_ended(id(5)));
    assert_eq!(m.adopt(id(1), id(5)), Err(AdoptError::ParentEnded));
    assert_eq!(m.adopt(id(4), id(5)), Err(AdoptError::ParentEnded));
    assert_eq!(m.end(id(1)), vec![], "a second end hands back nothing");
    assert_eq!(m.parent(id(2)), None);
}

#[test]
fn adopt_refuses_what_would_break_the_tree() {
    let mut m = Mux::new();
    for n in 1..=4 {
        m.insert(id(n), (), false);
    }
    m.adopt(id(1), id(2)).unwrap();
    m.adopt(id(2), id(3)).unwrap();
    assert_eq!(m.adopt(id(1), id(2)), Ok(()), "again: no change");
    assert_eq!(m.adopt(id(4), id(2)), Err(AdoptError::Taken));
    assert_eq!(m.adopt(id(3), id(1)), Err(AdoptError::Taken), "a circle");
    assert_eq!(m.adopt(id(2), id(2)), Err(AdoptError::Taken));
    assert_eq!(m.adopt(id(9), id(4)), Err(AdoptError::ParentGone));
    assert_eq!(m.adopt(id(4), id(9)), Err(AdoptError::ChildGone));
}

#[test]
fn removal_leaves_no_link_behind() {
    let mut m = Mux::new();
    for n in 1..=4 {
        m.insert(id(n), n, true);
    }
    assert!(m.set_remote(id(2), 20));
    m.adopt(id(1), id(2)).unwrap();
    m.adopt(id(2), id(3)).unwrap();
    m.adopt(id(2), id(4)).unwrap();
    // Removed before it ended: its children come back, detached.
    let r = m.remove(id(2)).unwrap();
    assert_eq!(r.chan, 2);
    assert_eq!(r.children, vec![id(3), id(4)]);
    assert_eq!(m.children(id(1)).count(), 0);
    assert_eq!(m.parent(id(3)), None);
    assert_eq!(m.resolve(ParentRef::Mine(20)), Err(Unknown { ours: false }));
    // Guarded removal: only the same channel.
    assert!(m.remove_if(id(3), |c| *c == 99).is_none());
    assert!(m.remove_if(id(3), |c| *c == 3).is_some());
    // A number reused: the new channel replaces the old one's links.
    m.adopt(id(1), id(4)).unwrap();
    let old = m.insert(id(4), 40, false).unwrap();
    assert_eq!(old.chan, 4);
    assert_eq!(m.children(id(1)).count(), 0);
    assert_eq!(m.get(id(4)), Some(&40));
}

#[test]
fn pending_counts_never_go_below_zero() {
    let mut m: Mux<()> = Mux::new();
    m.pending_done(true);
    assert_eq!((m.pending(), m.pending_plain()), (0, 0));
    m.add_pending(true);
    m.add_pending(false);
    assert_eq!((m.pending(), m.pending_plain(), m.open_count()), (2, 1, 1));
    m.pending_done(true);
    m.pending_done(false);
    m.pending_done(false);
    assert_eq!((m.pending(), m.pending_plain()), (0, 0));
}

#[test]
fn drain_empties_everything_in_id_order() {
    let mut m = Mux::new();
    for n in [5, 1, 3] {
        m.insert(id(n), n, true);
        m.set_remote(id(n), n + 100);
    }
    m.adopt(id(1), id(3)).unwrap();
    let all: Vec<u32> = m.drain().into_iter().map(|(_, c)| c).collect();
    assert_eq!(all, vec![1, 3, 5]);
    assert!(m.is_empty());
    assert_eq!(
        m.resolve(ParentRef::Mine(101)),
        Err(Unknown { ours: false })
    );
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum Op {
    Insert(u32, bool),
    SetRemote(u32, u32),
    Adopt(u32, u32),
    /// Ends the channel and cascades, as the driver does.
    End(u32),
    Remove(u32),
}

fn op() -> impl Strategy<Value = Op> {
    // Few ids and remote numbers, so they collide often.
    let n = 0u32..12;
    prop_oneof![
        3 => (n.clone(), any::<bool>()).prop_map(|(a, o)| Op::Insert(a, o)),
        2 => (n.clone(), 0u32..8).prop_map(|(a, r)| Op::SetRemote(a, r)),
        4 => (n.clone(), n.clone()).prop_map(|(a, b)| Op::Adopt(a, b)),
        1 => n.clone().prop_map(Op::End),
        1 => n.prop_map(Op::Remove),
    ]
}

/// Everything below `id` in the tree now.
fn descendants<C>(m: &Mux<C>, root: ChannelId) -> Vec<ChannelId> {
    let mut out = Vec::new();
    let mut todo: Vec<_> = m.children(root).collect();
    while let Some(c) = todo.pop() {
        out.push(c);
        todo.extend(m.children(c));
    }
    out
}

/// The invariants: every parent reference resolves as a scan of the table
/// would; every link has its reverse and points at a channel in the table;
/// ended channels have no children; no circles (and `Mux::check` agrees).
fn check<C>(m: &Mux<C>) -> Result<(), TestCaseError> {
    for n in 0u32..8 {
        let scan: Vec<_> = m
            .ids()
            .filter(|&i| m.is_outgoing(i) == Some(true) && m.remote(i) == Some(n))
            .collect();
        prop_assert!(scan.len() <= 1, "number {n} held by {scan:?}");
        prop_assert_eq!(m.resolve(ParentRef::Mine(n)).ok(), scan.first().copied());
    }
    for n in 0u32..12 {
        let scan = m.is_outgoing(id(n)).map(|out| !out);
        match m.resolve(ParentRef::Yours(n)) {
            Ok(found) => prop_assert!(found == id(n) && scan == Some(true)),
            Err(Unknown { ours }) => prop_assert_eq!(ours, scan == Some(false)),
        }
    }
    // The same through the accessors, independently of `Mux::check`.
    for i in m.ids() {
        if let Some(p) = m.parent(i) {
            prop_assert!(m.contains(p), "{i:?}'s parent {p:?} is gone");
            prop_assert!(m.children(p).any(|c| c == i), "{p:?} lost child {i:?}");
            prop_assert!(!m.is_ended(p), "ended {p:?} keeps a child");
        }
        for c in m.children(i) {
            prop_assert!(m.contains(c), "{i:?}'s child {c:?} is gone");
            prop_assert_eq!(m.parent(c), Some(i));
        }
        let mut seen = HashSet::new();
        let mut up = Some(i);
        while let Some(at) = up {
            prop_assert!(seen.insert(at), "a circle through {at:?}");
            up = m.parent(at);
        }
    }
    m.check().map_err(TestCaseError::fail)
}

proptest! {
    /// Any sequence of operations keeps the index and the tree consistent,
    /// and a cascade reaches every descendant exactly once, and nothing
    /// else.
    #[test]
    fn the_index_and_the_tree_stay_consistent(ops in prop::collection::vec(op(), 0..120)) {
        let mut m: Mux<u32> = Mux::new();
        for op in ops {
            match op {
                Op::Insert(a, out) => {
                    m.insert(id(a), a, out);
                }
                Op::SetRemote(a, r) => {
                    let free = !m.ids().any(|i| m.remote(i) == Some(r));
                    let ok = m.is_outgoing(id(a)) == Some(true) && m.remote(id(a)).is_none();
                    prop_assert_eq!(m.set_remote(id(a), r), free && ok);
                }
                Op::Adopt(p, c) => {
                    if m.adopt(id(p), id(c)).is_ok() {
                        prop_assert_eq!(m.parent(id(c)), Some(id(p)));
                    }
                }
                Op::End(a) => {
                    let expected: BTreeSet<_> = if m.is_ended(id(a)) {
                        BTreeSet::new()
                    } else {
                        descendants(&m, id(a)).into_iter().collect()
                    };
                    let reached = cascade(&mut m, id(a));
                    let once: BTreeSet<_> = reached.iter().copied().collect();
                    prop_assert_eq!(once.len(), reached.len(), "reached twice: {:?}", reached);
                    prop_assert_eq!(once, expected);
                    prop_assert!(m.is_ended(id(a)) || !m.contains(id(a)));
                    prop_assert_eq!(m.children(id(a)).count(), 0);
                }
                Op::Remove(a) => {
                    let kids: Vec<_> = m.children(id(a)).collect();
                    if let Some(r) = m.remove(id(a)) {
                        prop_assert_eq!(r.chan, a);
                        prop_assert_eq!(r.children, kids);
                    }
                    prop_assert!(!m.contains(id(a)));
                }
            }
            check(&m)?;
        }
    }
}
