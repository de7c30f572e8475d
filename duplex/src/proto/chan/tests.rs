//! Two channel state machines wired back to back, with no session, socket
//! or runtime: what one queues (`next_out`) is delivered to the other as
//! the SSH layer would (`on_data`, `on_ext`, `on_eof`, `on_close`).

#![allow(clippy::unwrap_used, clippy::panic)]

use proptest::prelude::*;

use std::task::Poll;

use super::pair::*;
use super::*;
use crate::proto::EXT_ERROR;

#[test]
fn accept_answers_the_opener_and_wakes_it() {
    let mut p = Pair::opening(true, TestEnv::new());
    assert!(matches!(p.a.open_phase().0, OpenPhase::Waiting));
    p.b.accept_duplex(9);
    let fx = p.b.take_effects();
    assert!(fx.send, "the ACCEPT asks for a send turn");
    let told = p.b_to_a().unwrap();
    assert_eq!(told[0].accepted, Some(9));
    let fx = p.a.take_effects();
    assert!(fx.wake.contains(Wake::OPENED));
    assert!(
        fx.wake.contains(Wake::WRITE),
        "the window is credit to write with"
    );
    assert!(p.a.is_established() && p.b.is_established());
}

#[test]
fn reject_reaches_the_opener_with_its_reason() {
    let mut p = Pair::opening(true, TestEnv::new());
    p.b.force_reject("no service \"x\"".into());
    p.b_to_a().unwrap();
    match p.a.open_phase().0 {
        OpenPhase::Rejected(why) => assert_eq!(why, "no service \"x\""),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(p.a.closed_in());
}

#[test]
fn data_before_the_accept_is_a_violation() {
    let mut p = Pair::opening(true, TestEnv::new());
    let err = p.a.on_data(b"early", &p.env).unwrap_err();
    assert_eq!(err, "sent data before answering the open with ACCEPT");
    assert_eq!(p.a.buffered(), 0);
}

#[test]
fn a_credit_overrun_is_a_violation_and_buffers_nothing() {
    let mut p = Pair::open(true, TestEnv::new());
    p.b.on_data(&vec![0; W as usize], &p.env).unwrap();
    let err = p.b.on_data(b"x", &p.env).unwrap_err();
    assert_eq!(err, "sent more data than its flow-control window allows");
    assert_eq!(p.b.buffered(), W as usize);
}

#[test]
fn a_writer_is_held_to_its_credit_until_the_reader_reads() {
    let mut p = Pair::open(true, TestEnv::new());
    let data = vec![5u8; 3 * W as usize];
    assert_eq!(write(&mut p.a, &data), W as usize);
    assert_eq!(write(&mut p.a, &data[W as usize..]), 0, "no credit left");
    p.a_to_b().unwrap();
    // Nothing read: no grant, still no credit.
    assert!(p.b_to_a().unwrap().is_empty());
    assert_eq!(write(&mut p.a, &data[W as usize..]), 0);
    // The reader reads; the grant brings the credit back.
    assert_eq!(read(&mut p.b, &p.env).unwrap().len(), W as usize);
    p.b_to_a().unwrap();
    assert!(p.a.take_effects().wake.contains(Wake::WRITE));
    assert!(write(&mut p.a, &data[W as usize..]) > 0);
}

#[test]
fn the_window_grows_only_by_what_the_budget_gives() {
    for (budget, grows) in [(0u64, false), (64 << 20, true)] {
        let mut p = Pair::open(true, TestEnv::with_budget(budget));
        let data = vec![1u8; 16 * W as usize];
        let (mut sent, mut got) = (0, 0);
        while got < data.len() {
            sent += write(&mut p.a, &data[sent..]);
            p.a_to_b().unwrap();
            assert!(p.b.buffered() as u64 <= u64::from(MAX_W));
            // The reader keeps up, waiting for more each time it is empty.
            got += read(&mut p.b, &p.env).unwrap().len();
            let _ = p.b.poll_read(1, |_| {}, &p.env);
            p.b_to_a().unwrap();
        }
        let grown = p.b.take_effects().grown.is_some()
            || p.env.budget.as_ref().is_some_and(|b| b.used() > 0);
        assert_eq!(grown, grows, "budget {budget}");
    }
}

#[test]
fn version_2_eof_is_a_record_and_ssh_eof_waits_for_both_sides() {
    let mut p = Pair::open(true, TestEnv::new());
    assert_eq!(write(&mut p.a, b"hello"), 5);
    p.a.send_eof();
    // The `EOF` record only: the remote still writes.
    let mut items = Vec::new();
    while let Some(o) = p.a.next_out() {
        items.push(o);
    }
    assert!(matches!(
        items.as_slice(),
        [Out::Data(_), Out::Ext(EXT_CONTROL, _)]
    ));
    for o in items {
        match o {
            Out::Data(b) => p.b.on_data(&b, &p.env).unwrap(),
            Out::Ext(c, b) => {
                p.b.on_ext(c, &b, &p.env).unwrap();
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(read(&mut p.b, &p.env).unwrap(), b"hello");
    assert_eq!(read(&mut p.b, &p.env), None, "the stream ended");
    // Data after EOF is a violation.
    let err = p.b.on_data(b"late", &p.env).unwrap_err();
    assert_eq!(err, "sent data after its EOF");
    // `b` finishes too: its EOF record, then SSH EOF from both.
    p.b.send_eof();
    let mut from_b = Vec::new();
    while let Some(o) = p.b.next_out() {
        from_b.push(o);
    }
    assert!(
        matches!(from_b.as_slice(), [Out::Ext(EXT_CONTROL, _), Out::Eof]),
        "{from_b:?}"
    );
}

#[test]
fn version_1_eof_is_ssh_eof_and_version_2_records_are_refused() {
    let mut p = Pair::open(false, TestEnv::new());
    p.a.send_eof();
    assert!(matches!(p.a.next_out(), Some(Out::Eof)));
    let err =
        p.b.on_ext(EXT_CONTROL, &Control::Eof.encode(), &p.env)
            .unwrap_err();
    assert!(err.contains("version-2 record"), "{err}");
}

#[test]
fn trailers_arrive_once_before_eof() {
    let mut p = Pair::open(true, TestEnv::new());
    let mut t = Headers::new();
    t.push("sha256", "abc");
    let enc = t.encode(&p.env.limits).unwrap();
    assert_eq!(p.b.poll_trailers(), Poll::Pending);
    p.a.send_trailers(enc.clone()).unwrap();
    assert_eq!(
        p.a.send_trailers(enc.clone()),
        Err(WriteRefused::WriteClosed)
    );
    p.a_to_b().unwrap();
    match p.b.poll_trailers() {
        Poll::Ready(Ok(h)) => assert_eq!(h.get("sha256"), Some("abc")),
        other => panic!("{other:?}"),
    }
    // A second set from the remote is a violation.
    let mut c = Pair::open(true, TestEnv::new());
    let rec = Control::Trailers { headers: enc }.encode();
    c.b.on_ext(EXT_CONTROL, &rec, &c.env).unwrap();
    let err = c.b.on_ext(EXT_CONTROL, &rec, &c.env).unwrap_err();
    assert_eq!(err, "sent trailers twice or after EOF");
}

#[test]
fn misplaced_records_are_violations_with_their_reasons() {
    let accept = Control::Accept { window: 1, id: 1 }.encode();
    let mut p = Pair::open(true, TestEnv::new());
    assert_eq!(
        p.b.on_ext(EXT_CONTROL, &accept, &p.env).unwrap_err(),
        "sent ACCEPT or REJECT on a channel it opened itself"
    );
    assert_eq!(
        p.a.on_ext(EXT_CONTROL, &accept, &p.env).unwrap_err(),
        "answered the open twice (a second ACCEPT or REJECT)"
    );
    let q = Pair::opening(true, TestEnv::new());
    let mut a = q.a;
    let window = Control::Window { increment: 1 }.encode();
    assert_eq!(
        a.on_ext(EXT_CONTROL, &window, &q.env).unwrap_err(),
        "sent WINDOW, TRAILERS, EOF or ABORT before answering the open with ACCEPT"
    );
    let hello = Control::Hello {
        headers: String::new(),
    }
    .encode();
    assert_eq!(
        a.on_ext(EXT_CONTROL, &hello, &q.env).unwrap_err(),
        "sent HELLO on a channel other than the @hello channel"
    );
}

#[test]
fn the_hello_answers_the_hello_channel() {
    let mut env = TestEnv::new();
    env.awaiting_hello = true;
    for (refuse, ok) in [(None, true), (Some("wrong name"), false)] {
        let mut a = Chan::<E>::new(&spec(true, false), u64::from(W));
        let mut h = Headers::new();
        if let Some(why) = refuse {
            h.push("refuse", why);
        }
        let rec = Control::Hello {
            headers: h.encode(&env.limits).unwrap(),
        }
        .encode();
        a.on_ext(EXT_CONTROL, &rec, &env).unwrap();
        assert!(a.take_effects().wake.contains(Wake::OPENED));
        match (a.open_phase().0, ok) {
            (OpenPhase::Hello(_), true) => {}
            (OpenPhase::Rejected(why), false) => assert_eq!(why, "wrong name"),
            (other, _) => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_violation_is_reported_before_the_close() {
    let mut p = Pair::open(true, TestEnv::new());
    p.b.note_violation("sent junk (seen by b)".into());
    p.b.fail(E::Lost);
    p.b.send_close_after_failure();
    let told = p.b_to_a().unwrap();
    assert_eq!(told[0].reported.as_deref(), Some("sent junk (seen by b)"));
    // The driver fails `a` with the report; the close follows and ends it.
    assert!(p.a.closed_in());
}

#[test]
fn a_parent_ending_closes_the_child_with_a_reason() {
    let mut p = Pair::open(true, TestEnv::new());
    assert!(p.a.end_by_parent(E::Lost, Some("\"top\" was closed by a"), true));
    assert!(p.a.take_effects().wake == Wake::ALL);
    assert!(!p.a.end_by_parent(E::Lost, None, true), "closed already");
    let told = p.a_to_b().unwrap();
    assert_eq!(
        told[0].parent_closed.as_deref(),
        Some("\"top\" was closed by a")
    );
    assert!(p.b.closed_in());
    assert_eq!(p.a.poll_flush(), Poll::Ready(Err(E::Lost)));
}

#[test]
fn error_frames_arrive_whole_and_return_their_credit() {
    let mut p = Pair::open(true, TestEnv::new());
    let frame = super::super::frame::encode(b"it broke", 1 << 20).unwrap();
    let Poll::Ready(Ok(n)) =
        p.a.poll_write(Some(EXT_ERROR), frame.len(), |n| frame.slice(..n))
    else {
        panic!("no credit for the frame")
    };
    assert_eq!(n, frame.len());
    p.a_to_b().unwrap();
    assert!(p.b.take_effects().wake.contains(Wake::ERR));
    assert_eq!(
        p.b.poll_read_error(&p.env),
        Poll::Ready(Ok(Some(Bytes::from_static(b"it broke"))))
    );
    p.b.on_eof();
    assert_eq!(p.b.poll_read_error(&p.env), Poll::Ready(Ok(None)));
}

#[test]
fn a_plain_clients_window_is_granted_as_ssh_window() {
    let env = TestEnv::new();
    let plain = Spec {
        kind: Kind::Plain,
        ..spec(false, true)
    };
    let mut b = Chan::<E>::new(&plain, 32 << 10);
    b.on_data(&vec![0; 32 << 10], &env).unwrap();
    assert!(b.on_data(b"x", &env).is_err(), "the SSH window bounds it");
    assert_eq!(read(&mut b, &env).unwrap().len(), 32 << 10);
    assert_eq!(env.ssh_granted.get(), 32 << 10);
    assert!(b.next_out().is_none(), "no WINDOW record to a plain client");
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (side(), 1usize..200_000).prop_map(|(s, n)| Op::Write(s, n)),
        2 => (side(), 1usize..20_000).prop_map(|(s, n)| Op::WriteErr(s, n)),
        4 => (side(), 1usize..200_000).prop_map(|(s, n)| Op::Read(s, n)),
        2 => side().prop_map(Op::ReadErr),
        4 => (side(), 1usize..8).prop_map(|(s, n)| Op::Deliver(s, n)),
        1 => (side(), any::<bool>()).prop_map(|(s, t)| Op::Eof(s, t)),
    ]
}

fn hostile_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => op(),
        1 => side().prop_map(Op::Close),
        1 => side().prop_map(Op::DropReader),
        1 => (
            side(),
            prop_oneof![Just(None), Just(Some(EXT_ERROR)), Just(Some(EXT_CONTROL)), Just(Some(99))],
            proptest::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(s, c, b)| Op::Raw(s, c, b)),
    ]
}

proptest! {
    /// Both directions at once, any interleaving: a remote that keeps to
    /// its credit is never refused, readers get exactly what was written,
    /// in order, and at the end everything written arrives.
    #[test]
    fn a_pair_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..120), v2: bool) {
        if let Err(e) = run(v2, &ops) {
            return Err(TestCaseError::fail(e));
        }
    }

    /// With closes, dropped readers and raw records from a hostile remote
    /// mixed in: no panic, buffers stay bounded, violations have reasons.
    #[test]
    fn a_pair_survives_hostile_input(ops in proptest::collection::vec(hostile_op(), 1..120), v2: bool) {
        if let Err(e) = run(v2, &ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn scripts_from_bytes_run() {
    // The fuzz target's decoding, on a few fixed inputs.
    for data in [
        &b""[..],
        b"\x00\x01\x00\x0c\x00\x00",
        &[0xff; 300],
        &[0x16, 0x02, 0x05, 1, 2, 3, 4, 5],
    ] {
        let ops = ops_from_bytes(data);
        run(true, &ops).unwrap();
        run(false, &ops).unwrap();
    }
}

#[test]
fn parent_closed_after_our_close_tells_nothing() {
    // We refused the remote's nested open (REJECT and close, as a channel
    // of its own); its parent closed before our answer reached it, so it
    // ends the child with PARENT_CLOSED: nothing to check or end here.
    let mut p = Pair::open(true, TestEnv::new());
    p.b.send_close();
    let rec = Control::ParentClosed {
        reason: "gone".into(),
    }
    .encode();
    let told = p.b.on_ext(EXT_CONTROL, &rec, &p.env).unwrap();
    assert_eq!(told.parent_closed, None);
    // While open, it is reported (the driver checks the channel has a
    // parent).
    let mut p = Pair::open(true, TestEnv::new());
    let told = p.b.on_ext(EXT_CONTROL, &rec, &p.env).unwrap();
    assert_eq!(told.parent_closed, Some("gone".into()));
}
