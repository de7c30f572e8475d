//! Deterministic connection-level scenarios over the pair, and a property
//! test over random scripts.

use proptest::prelude::*;

use super::*;
use crate::proto::budget::{Level, Refused};
use crate::proto::chan::OpenPhase;
use crate::proto::headers::split_window;
use crate::proto::nest::{REF_MINE, REF_YOURS};
use crate::proto::open::{OPEN_RESOURCE_SHORTAGE, ParentView, nested_verdict, unknown_parent};

const A: Side = Side::A;
const B: Side = Side::B;

/// Opens a channel from `side` (nested in `parent`), accepted by the
/// other side: the opener's number and the acceptor's.
fn open_accepted(p: &mut Pair, side: Side, parent: Option<ChannelId>) -> (ChannelId, ChannelId) {
    let id = p.peer(side).open("svc", parent).unwrap();
    p.settle();
    let theirs = ChannelId(p.counterpart(side, id).unwrap());
    p.sides(side).1.accept(theirs);
    p.settle();
    let ch = p.peer(side).mux.get(ChannelId(id)).unwrap();
    assert!(ch.chan.is_established(), "{side:?}'s open was not accepted");
    (ChannelId(id), theirs)
}

/// How the open of our channel `id` was answered with `REJECT`.
fn rejected(peer: &Peer, id: u32) -> String {
    match peer.ch(id).map(|c| c.chan.open_phase().0) {
        Some(OpenPhase::Rejected(why)) => why,
        other => panic!("{}'s open {id}: {other:?}", peer.name),
    }
}

fn failed(peer: &Peer, id: ChannelId) -> Option<E> {
    peer.ch(id.0).and_then(|c| c.chan.failed().cloned())
}

#[test]
fn the_open_block_carries_the_window() {
    assert_eq!(split_window(&open_block(W)), Ok((Some(W), "")));
}

#[test]
fn a_slow_reader_holds_up_only_its_own_channel() {
    let mut p = Pair::new(true, Lim::default(), Lim::default());
    let chans: Vec<_> = (0..4).map(|_| open_accepted(&mut p, A, None)).collect();
    const N: u64 = 1 << 20; // 16 windows each
    let stalled = 1;
    for _ in 0..10_000 {
        for &(a, _) in &chans {
            let left = N - p.a.mux.get(a).unwrap().written;
            p.a.write(a, left as usize, A).unwrap();
        }
        p.settle();
        for (i, &(_, b)) in chans.iter().enumerate() {
            if i != stalled {
                p.b.read(b, usize::MAX, A).unwrap();
            }
        }
        p.check().unwrap();
        let done = chans
            .iter()
            .enumerate()
            .all(|(i, &(_, b))| i == stalled || p.b.mux.get(b).unwrap().read == N);
        if done {
            break;
        }
    }
    for (i, &(a, b)) in chans.iter().enumerate() {
        let (w, r) = (p.a.mux.get(a).unwrap(), p.b.mux.get(b).unwrap());
        if i == stalled {
            // It holds at most its window, which never grew.
            assert_eq!(r.read, 0);
            assert_eq!(r.chan.window(), u64::from(W));
            assert!(
                r.chan.buffered() as u64 <= u64::from(W),
                "{}",
                r.chan.buffered()
            );
            assert!(
                w.written <= u64::from(W),
                "wrote {} past the credit",
                w.written
            );
        } else {
            assert_eq!((w.written, r.read), (N, N), "channel {i}");
        }
    }
    assert!(p.a.violations.is_empty() && p.b.violations.is_empty());
}

#[test]
fn a_credit_overrun_fails_only_its_channel() {
    let mut p = Pair::new(true, Lim::default(), Lim::default());
    let chans: Vec<_> = (0..3).map(|_| open_accepted(&mut p, A, None)).collect();
    let (a1, b1) = chans[1];
    // A hostile remote sends one byte more than the credit it was given.
    p.b.raw(b1, None, &vec![0u8; W as usize + 1]);
    let why = "sent more data than its flow-control window allows";
    assert_eq!(p.b.violations, vec![(b1.0, why.to_owned())]);
    assert_eq!(failed(&p.b, b1), Some(E::Protocol(why.into())));
    const N: u64 = 256 << 10;
    for _ in 0..1_000 {
        for (i, &(a, _)) in chans.iter().enumerate() {
            if i != 1 {
                let left = N - p.a.mux.get(a).unwrap().written;
                p.a.write(a, left as usize, A).unwrap();
            }
        }
        p.settle();
        for (i, &(_, b)) in chans.iter().enumerate() {
            if i != 1 {
                p.b.read(b, usize::MAX, A).unwrap();
            }
        }
        p.check().unwrap();
    }
    // The remote learned why (PROTOCOL_ERROR), and the channel is closed
    // both ways; the others carried everything.
    match failed(&p.a, a1) {
        Some(E::Reported(r)) => assert_eq!(r, format!("{why} (seen by b)")),
        other => panic!("{other:?}"),
    }
    assert!(!p.a.mux.contains(a1) && !p.b.mux.contains(b1));
    for (i, &(a, b)) in chans.iter().enumerate() {
        if i != 1 {
            let (w, r) = (p.a.mux.get(a).unwrap(), p.b.mux.get(b).unwrap());
            assert_eq!((w.written, r.read), (N, N), "channel {i}");
            assert!(r.chan.failed().is_none());
        }
    }
    assert_eq!(p.b.violations.len(), 1);
    assert!(p.a.violations.is_empty());
}

#[test]
fn ending_a_parent_ends_every_descendant_on_both_sides() {
    let mut p = Pair::new(true, Lim::default(), Lim::default());
    let (pa, pb) = open_accepted(&mut p, A, None);
    // Children from both sides: A names P by B's number (Yours), B by its
    // own (Mine, found through A's index).
    let (c1a, c1b) = open_accepted(&mut p, A, Some(pa));
    let (c2b, c2a) = open_accepted(&mut p, B, Some(pb));
    // Grandchildren: B in the child A opened (Mine), A in the child B
    // opened (Mine), B in its own child (Yours).
    let (g1b, g1a) = open_accepted(&mut p, B, Some(c1b));
    let (g2a, g2b) = open_accepted(&mut p, A, Some(c2a));
    let (g3b, g3a) = open_accepted(&mut p, B, Some(c2b));
    for (side, child, parent) in [
        (&p.a, c1a, pa),
        (&p.a, c2a, pa),
        (&p.a, g1a, c1a),
        (&p.a, g2a, c2a),
        (&p.a, g3a, c2a),
        (&p.b, c1b, pb),
        (&p.b, c2b, pb),
        (&p.b, g1b, c1b),
        (&p.b, g2b, c2b),
        (&p.b, g3b, c2b),
    ] {
        assert_eq!(
            side.mux.parent(child),
            Some(parent),
            "{}: {child}",
            side.name
        );
    }
    // An unrelated channel, and unread data on a grandchild.
    let (other_a, other_b) = open_accepted(&mut p, A, None);
    p.b.write(g1b, 1000, B).unwrap();
    p.settle();

    // A opens a child in P just before closing P: the confirmation finds
    // P ended, the tree refuses the child, and the open gives up.
    let early = p.a.open("svc", Some(pa)).unwrap();
    p.deliver(A, usize::MAX);
    p.a.close(pa);
    // B opens in P before it hears of the close; A still has P (its close
    // is not sent yet) and refuses with P's reason.
    let late = p.b.open("late", Some(pb)).unwrap();
    p.deliver(B, usize::MAX);
    // The refusal reaches b before P's close (which would end the child
    // first: its REJECT would then find it ended).
    let refusal = p.a.mux.ids().max().unwrap();
    p.a.pump_one(refusal, usize::MAX);
    p.deliver(A, usize::MAX);
    p.settle();
    p.check().unwrap();
    assert_eq!(rejected(&p.b, late), "the parent was closed on this side");
    assert_eq!(p.a.gave_up[&early], "the parent was closed on this side");

    let descendants_a = [c1a, c2a, g1a, g2a, g3a];
    let descendants_b = [c1b, c2b, g1b, g2b, g3b];
    for id in descendants_a {
        let want = E::ParentClosed("\"svc\" was closed on this side".into());
        assert_eq!(failed(&p.a, id), Some(want), "a: {id}");
        assert!(!p.a.mux.contains(id), "a: {id} still open");
    }
    for id in descendants_b {
        // The reason came in each one's PARENT_CLOSED.
        let want = E::ParentClosed("\"svc\" was closed by a".into());
        assert_eq!(failed(&p.b, id), Some(want), "b: {id}");
        assert!(!p.b.mux.contains(id), "b: {id} still open");
    }
    assert!(!p.b.mux.contains(pb));
    // The unrelated channel is untouched; only it is left.
    assert_eq!(p.a.mux.ids().collect::<Vec<_>>(), vec![other_a]);
    assert_eq!(p.b.mux.ids().collect::<Vec<_>>(), vec![other_b]);
    assert!(failed(&p.b, other_b).is_none());
    // Once P is gone, naming it finds nothing.
    let raw = p.b.open_raw("later", REF_MINE, pb.0 + 1).unwrap();
    p.settle();
    assert_eq!(
        rejected(&p.b, raw),
        unknown_parent(ParentRef::Mine(pb.0), "a", false)
    );
    assert!(p.a.violations.is_empty() && p.b.violations.is_empty());
}

#[test]
fn refusals_carry_the_code_and_reason_of_the_rules() {
    // Unknown parents, by both kinds, and ours named as theirs.
    let mut p = Pair::new(true, Lim::default(), Lim::default());
    let (pa, _) = open_accepted(&mut p, A, None);
    let yours = p.b.open_raw("x", REF_YOURS, 9_000).unwrap();
    let mine = p.b.open_raw("x", REF_MINE, 9_000).unwrap();
    let ours = p.b.open_raw("x", REF_YOURS, pa.0 + 1).unwrap();
    p.settle();
    assert_eq!(
        rejected(&p.b, yours),
        unknown_parent(ParentRef::Yours(8_999), "a", false)
    );
    assert_eq!(
        rejected(&p.b, mine),
        unknown_parent(ParentRef::Mine(8_999), "a", false)
    );
    assert_eq!(
        rejected(&p.b, ours),
        unknown_parent(ParentRef::Yours(pa.0), "a", true)
    );

    // Too deep: b takes two levels of nesting, a would open four.
    let deep_b = Lim {
        max_depth: 2,
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), deep_b);
    let (l0, _) = open_accepted(&mut p, A, None);
    let (l1, _) = open_accepted(&mut p, A, Some(l0));
    let (l2, _) = open_accepted(&mut p, A, Some(l1));
    let l3 = p.a.open("svc", Some(l2)).unwrap();
    p.settle();
    let view = ParentView {
        duplex: true,
        established: true,
        closed: None,
        depth: 2,
    };
    assert_eq!(Err(rejected(&p.a, l3)), nested_verdict(&view, "b", 2));

    // The channel limit, then the pending limit: SSH open failures with
    // the verdict's code and reason.
    let verdict_on = |channels, pending, lim: Lim| {
        let l = crate::proto::Limits::default();
        let limits = OpenLimits {
            max_channels: lim.max_channels,
            max_pending: lim.max_pending,
            max_nesting_depth: lim.max_depth,
            accept_channels: true,
            headers: &l,
        };
        let at = Conditions {
            me: "b",
            duplex: true,
            draining: false,
            channels,
            pending,
        };
        let block = open_block(W);
        let fields = OpenFields {
            service: "svc",
            originator: &block,
            port_to_connect: REF_YOURS,
            originator_port: 0,
        };
        match open::verdict(&fields, &at, &limits, true) {
            Verdict::Refuse(r) => (r.code, r.reason),
            other => panic!("{other:?}"),
        }
    };
    let few = Lim {
        max_channels: 3,
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), few);
    for _ in 0..3 {
        open_accepted(&mut p, A, None);
    }
    let over = p.a.open("svc", None).unwrap();
    p.settle();
    assert_eq!(p.a.refused[&over], verdict_on(3, 0, few));
    assert_eq!(p.a.refused[&over].0, OPEN_RESOURCE_SHORTAGE);

    let impatient = Lim {
        max_pending: 2,
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), impatient);
    let waiting: Vec<_> = (0..3).map(|_| p.a.open("svc", None).unwrap()).collect();
    p.settle();
    assert!(!p.a.refused.contains_key(&waiting[1]));
    assert_eq!(p.a.refused[&waiting[2]], verdict_on(2, 2, impatient));
    // Answering one makes room.
    let first = p.b.offers[0];
    p.b.accept(first);
    let again = p.a.open("svc", None).unwrap();
    p.settle();
    assert!(!p.a.refused.contains_key(&again));

    // The budget: b's connection buffer holds two windows.
    let small = Lim {
        budget: 2 * u64::from(W),
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), small);
    let (parent, _) = open_accepted(&mut p, A, None);
    open_accepted(&mut p, A, None);
    let spent = Refused {
        level: Level::Connection,
        used: 2 * u64::from(W),
        limit: 2 * u64::from(W),
    }
    .describe("b", || "a".into());
    // Top level: an SSH open failure; nested: a REJECT, same reason.
    let top = p.a.open("svc", None).unwrap();
    let nested = p.a.open("svc", Some(parent)).unwrap();
    p.settle();
    assert_eq!(p.a.refused[&top], (OPEN_RESOURCE_SHORTAGE, spent.clone()));
    assert_eq!(rejected(&p.a, nested), spent);
    p.check().unwrap();
}

/// Sends `n` bytes on each of `chans` from a to b, b reading as they come;
/// returns the largest window b's channels reached.
fn stream(p: &mut Pair, chans: &[(ChannelId, ChannelId)], n: u64) -> u64 {
    let mut largest = 0;
    for _ in 0..100_000 {
        for &(a, _) in chans {
            let left = n - p.a.mux.get(a).unwrap().written;
            p.a.write(a, left as usize, A).unwrap();
        }
        p.settle();
        for &(_, b) in chans {
            // A reader that keeps up reads until it has to wait.
            while let Some(1..) = p.b.read(b, usize::MAX, A).unwrap() {}
            largest = largest.max(p.b.mux.get(b).unwrap().chan.window());
        }
        p.check().unwrap();
        // Growth takes only what half the budget leaves, and what the
        // windows hold is what is reserved.
        let budget = p.b.env.budget.as_ref().unwrap();
        let windows: u64 = p.b.mux.values().map(|c| c.chan.window()).sum();
        assert_eq!(windows, budget.used());
        assert!(budget.used() <= (p.b.lim.budget / 2).max(2 * u64::from(W)));
        if chans
            .iter()
            .all(|&(_, b)| p.b.mux.get(b).unwrap().read == n)
        {
            return largest;
        }
    }
    panic!("the streams never finished");
}

#[test]
fn windows_grow_while_the_reader_keeps_up_within_the_budget() {
    // Room to grow: each window doubles as the reader keeps up, up to the
    // maximum and no further.
    let roomy = Lim {
        budget: 64 * u64::from(MAX_W),
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), roomy);
    let chans: Vec<_> = (0..2).map(|_| open_accepted(&mut p, A, None)).collect();
    assert_eq!(stream(&mut p, &chans, 16 << 20), u64::from(MAX_W));

    // Half the budget is kept for channels yet to open: at 16 windows, two
    // channels grow to 4 windows each (8 reserved), not further.
    let half = Lim {
        budget: 16 * u64::from(W),
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), half);
    let chans: Vec<_> = (0..2).map(|_| open_accepted(&mut p, A, None)).collect();
    let largest = stream(&mut p, &chans, 4 << 20);
    assert!(largest > u64::from(W), "never grew");
    assert!(p.b.env.budget.as_ref().unwrap().used() <= 8 * u64::from(W));

    // At four windows, the two initial ones already take half: no growth.
    let tight = Lim {
        budget: 4 * u64::from(W),
        ..Lim::default()
    };
    let mut p = Pair::new(true, Lim::default(), tight);
    let chans: Vec<_> = (0..2).map(|_| open_accepted(&mut p, A, None)).collect();
    assert_eq!(stream(&mut p, &chans, 1 << 20), u64::from(W));
}

#[test]
fn the_fuzz_seeds_run() {
    for seed in [
        &include_bytes!("../../../../fuzz/corpus/mux_pair/write_read")[..],
        include_bytes!("../../../../fuzz/corpus/mux_pair/nested_cascade"),
        include_bytes!("../../../../fuzz/corpus/mux_pair/limits"),
        include_bytes!("../../../../fuzz/corpus/mux_pair/hostile"),
        include_bytes!("../../../../fuzz/corpus/mux_pair/raw_parent"),
    ] {
        let (first, rest) = seed.split_first().unwrap();
        run(first & 1 == 1, &ops_from_bytes(rest)).unwrap();
    }
}

proptest! {
    /// Random scripts over several channels keep every invariant.
    #[test]
    fn random_scripts_keep_the_invariants(
        v2 in any::<bool>(),
        bytes in prop::collection::vec(any::<u8>(), 0..1200),
    ) {
        let ops = ops_from_bytes(&bytes);
        if let Err(e) = run(v2, &ops) {
            return Err(TestCaseError::fail(format!("{e}\n{ops:?}")));
        }
    }
}
