//! Protocol conformance of RPC (`docs/PROTOCOL.md` section 9): a real
//! `duplex-rpc` [`Server`] (or [`Client`]) on one side, and on the other
//! either the scripted raw SSH peer of `duplex_tests::wire`, where the rule
//! is about bytes on the wire (status frames, codec encodings), or a real
//! Duplex peer, where it is about behaviour (call slots, callbacks).
//! `tests/CONFORMANCE.md` names these tests as `conformance_rpc::NAME`.
//!
//! The harness connections speak protocol version 2 (`dial_v2`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use duplex::{Config, Identity, Peer};
use duplex_rpc::{CallContext, Client, Code, Router, RpcError, Server, ServerHandle, Status};
use duplex_tests::wire::{Ev, Record, STDERR, Transcript, WireChannel, WireConn, frame, header};
use duplex_tests::{Transport, init_tracing, pair_with, peer_trusting, within};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

// ---------------------------------------------------------------- fixture

/// A Duplex peer "server" serving `server`, and a harness connection
/// (user "raw", protocol version 2) to it.
struct Fixture {
    server: Peer,
    rpc: Option<ServerHandle>,
    conn: WireConn,
}

impl Fixture {
    async fn new(server: Server) -> Fixture {
        init_tracing();
        let (sid, cid) = (Identity::generate(), Identity::generate());
        let peer = peer_trusting("server", &sid, &[&cid], Config::default());
        let ep = peer.bind("tcp://127.0.0.1:0").await.unwrap();
        let rpc = server.serve(&peer).unwrap();
        let conn = WireConn::dial_v2(&ep, "raw", &cid).await;
        Fixture {
            server: peer,
            rpc: Some(rpc),
            conn,
        }
    }

    async fn shutdown(mut self) {
        drop(self.rpc.take());
        self.server.shutdown().await;
    }
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn unb64url(s: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = A.iter().position(|&a| a == c).expect("not base64url") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// The header block of a unary call with its request inline; `codec`
/// `None` sends no `rpc-codec` (msgpack, the protocol's default).
fn inline(codec: Option<&str>, request: &[u8]) -> String {
    let req = format!("rpc-request={}", b64url(request));
    match codec {
        Some(c) => format!("rpc-codec={c}&{req}"),
        None => req,
    }
}

/// A status frame: (version, origin, code, message, details).
fn status(frame: &[u8]) -> (u8, u8, u16, String, Vec<u8>) {
    assert!(frame.len() >= 8, "status frame too short: {frame:?}");
    let code = u16::from_be_bytes([frame[2], frame[3]]);
    let n = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let msg = String::from_utf8_lossy(&frame[8..8 + n]).into_owned();
    (frame[0], frame[1], code, msg, frame[8 + n..].to_vec())
}

/// A status frame as a writer builds it.
fn status_frame(origin: u8, code: u16, msg: &str, details: &[u8]) -> Vec<u8> {
    let mut f = vec![1, origin];
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg.as_bytes());
    f.extend_from_slice(details);
    f
}

/// Reads the server's answer on a call channel up to its `EOF` record,
/// then expects the close (the server does not wait for ours).
async fn answer(ch: &mut WireChannel, method: &str) -> Transcript {
    let mut t = Transcript::default();
    loop {
        let e = ch.next_event().await;
        t.events.push(e.clone());
        match e {
            Ev::Data(d) => t.data.extend(d),
            Ev::Ext(STDERR, d) => t.stderr.extend(d),
            Ev::Record(Record::Eof) => break,
            Ev::Record(r) => t.records.push(r),
            other => panic!("{method}: unexpected {other:?} before the EOF record"),
        }
    }
    t.closed = true;
    t.ssh_eof = ch.expect_end().await;
    t
}

/// A call opened with `block` (our window 1 MiB); the server's answer.
async fn call(c: &WireConn, method: &str, block: &str) -> Transcript {
    let (mut ch, _, _) = c.open_accepted(method, 1 << 20, block).await;
    answer(&mut ch, method).await
}

/// The one status frame of a failed call: (origin, code, message,
/// details).
async fn failed(c: &WireConn, method: &str, block: &str) -> (u8, u16, String, Vec<u8>) {
    let t = call(c, method, block).await;
    let frames = t.error_frames();
    assert_eq!(
        frames.len(),
        1,
        "{method}: one status frame: {:?}",
        t.events
    );
    let (v, origin, code, msg, details) = status(&frames[0]);
    assert_eq!(v, 1, "status frame version");
    (origin, code, msg, details)
}

/// The one response of a successful unary call.
async fn response(c: &WireConn, method: &str, block: &str) -> Vec<u8> {
    let t = call(c, method, block).await;
    assert!(
        t.stderr.is_empty(),
        "{method}: a status frame on success: {:?}",
        t.error_frames().first().map(|f| status(f))
    );
    let frames = t.data_frames();
    assert_eq!(frames.len(), 1, "{method}: {:?}", t.events);
    frames.into_iter().next().unwrap()
}

fn calc_router() -> Router {
    Router::new()
        .unary(
            "Calc.Add",
            |_ctx: CallContext, (a, b): (i64, i64)| async move { Ok::<_, Status>(a + b) },
        )
        .unary("Calc.Fail", |_ctx: CallContext, code: u16| async move {
            Err::<(), _>(Status::new(Code::from_u16(code), "it failed on purpose"))
        })
}

// ---------------------------------------------------------------- 9.1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_server_closes_right_after_its_eof() {
    let f = Fixture::new(Server::new(calc_router())).await;
    for (method, req, want_data) in [("Calc.Add", "[40,2]", true), ("Calc.Fail", "9", false)] {
        let (mut ch, _, _) = f
            .conn
            .open_accepted(method, 1 << 20, &inline(Some("json"), req.as_bytes()))
            .await;
        if want_data {
            assert_eq!(ch.expect_data_frame().await, b"42");
        } else {
            ch.expect_error_frame().await;
        }
        ch.expect_eof_record().await;
        // We send nothing at all: no EOF record, no SSH EOF, no close. The
        // server closes anyway (an SSH EOF may come right before).
        ch.expect_end().await;
    }
    f.shutdown().await;
}

// ---------------------------------------------------------------- 9.2

fn status_router() -> Router {
    Router::new()
        .unary("Status.Long", |_ctx: CallContext, n: usize| async move {
            Err::<(), _>(Status::internal("x".repeat(n)))
        })
        .unary("Status.Details", |_ctx: CallContext, n: usize| async move {
            Err::<(), _>(Status::internal("boom").with_details(vec![7u8; n]))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_status_message_at_most_16_kib() {
    let f = Fixture::new(Server::new(status_router())).await;
    for n in [16 << 10, 100_000] {
        let (o, code, msg, details) = failed(
            &f.conn,
            "Status.Long",
            &inline(Some("json"), n.to_string().as_bytes()),
        )
        .await;
        assert_eq!((o, code), (0, 13));
        assert!(details.is_empty());
        assert!(msg.len() <= 16 << 10, "{} bytes of message", msg.len());
        assert_eq!(msg.len(), 16 << 10, "the message is cut, not dropped");
        assert!(msg.bytes().all(|b| b == b'x'));
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_details_over_64_kib_are_dropped_and_the_message_says_so() {
    let f = Fixture::new(Server::new(status_router())).await;
    // 64 KiB of details go out as they are.
    let (_, _, msg, details) =
        failed(&f.conn, "Status.Details", &inline(Some("json"), b"65536")).await;
    assert_eq!(msg, "boom");
    assert_eq!(details, vec![7u8; 64 << 10]);
    // One byte more and they are dropped, with a note in the message.
    let (o, code, msg, details) =
        failed(&f.conn, "Status.Details", &inline(Some("json"), b"65537")).await;
    assert_eq!((o, code), (0, 13));
    assert!(details.is_empty(), "{} detail bytes sent", details.len());
    assert!(msg.starts_with("boom"), "{msg}");
    assert!(msg.contains("dropped") && msg.contains("65537"), "{msg}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_status_waits_at_most_2_s_for_credit() {
    let f = Fixture::new(Server::new(calc_router())).await;
    let block = inline(Some("json"), b"9");
    // Credit granted while the server waits: the status arrives.
    let (mut ch, _, _) = f.conn.open_accepted("Calc.Fail", 0, &block).await;
    ch.send_window(1 << 20).await;
    let (_, o, code, _, _) = status(&ch.expect_error_frame().await);
    assert_eq!((o, code), (0, 9));
    // No credit at all: the server gives up after 2 s and closes without
    // the status.
    let start = Instant::now();
    let (mut ch, _, _) = f.conn.open_accepted("Calc.Fail", 0, &block).await;
    let t = ch.read_to_end().await;
    let waited = start.elapsed();
    assert!(t.closed, "{:?}", t.events);
    assert!(t.stderr.is_empty() && t.data.is_empty(), "{:?}", t.events);
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_reader_treats_an_unknown_origin_as_0() {
    let f = Fixture::new(Server::new(Router::new())).await;
    let client = Client::new(f.server.clone()).to("raw");
    for origin in [10u8, 0xee] {
        let call = client.call::<_, u32>("Remote.Thing", &());
        let script = async {
            let inc = f.conn.expect_open().await;
            assert_eq!(inc.host, "Remote.Thing");
            let ch = inc.accept(1 << 20).await;
            let st = status_frame(origin, 999, "from a newer version", b"dd");
            ch.send_error_frame(&st).await;
            ch.send_eof_record().await;
            ch.send_eof().await;
            ch.send_close().await;
        };
        let (r, ()) = within(10, async { tokio::join!(call, script) }).await;
        match r {
            Err(RpcError::Status { status, .. }) => {
                assert_eq!(status.code().as_u16(), 999, "{status:?}");
                assert_eq!(status.message(), "from a newer version");
                assert_eq!(&status.details()[..], b"dd");
            }
            other => panic!("origin {origin}: expected a handler status, got {other:?}"),
        }
    }
    f.shutdown().await;
}

// ---------------------------------------------------------------- 9.3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_3_257th_call_of_a_client_waits_for_a_slot() {
    assert_eq!(duplex_rpc::DEFAULT_MAX_CONCURRENT_CALLS, 256);
    let f = Fixture::new(Server::new(Router::new())).await;
    let client = Client::new(f.server.clone()).to("raw");
    let calls: Vec<_> = (0..257u32)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { c.call::<_, u32>("Slot.Hold", &i).await })
        })
        .collect();
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(f.conn.expect_open().await);
    }
    // Every slot is taken: the 257th open is not sent.
    f.conn.expect_no_open_within(300).await;
    // One call ends; its slot goes to the 257th.
    let ch = held.pop().unwrap().accept(1 << 20).await;
    ch.send_data_frame(&[0x00]).await;
    ch.send_eof_record().await;
    ch.send_eof().await;
    ch.send_close().await;
    let last = f.conn.expect_open().await;
    assert_eq!(last.host, "Slot.Hold");
    let done = calls.iter().filter(|c| c.is_finished()).count();
    assert!(done <= 1, "{done} calls ended");
    for c in &calls {
        c.abort();
    }
    drop((held, last));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_3_257th_callback_of_a_call_waits_for_a_slot() {
    let p = pair_with(Transport::Tcp, Config::default(), Config::default()).await;
    // The server's handler makes N callbacks at once.
    let fan = Router::new().unary("Outer.Fan", |ctx: CallContext, n: u32| async move {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let caller = ctx.caller();
            set.spawn(async move { caller.call::<_, u32>("Cb.Hold", &i).await });
        }
        let mut ok = 0u32;
        while let Some(r) = set.join_next().await {
            r.unwrap()?;
            ok += 1;
        }
        Ok::<_, Status>(ok)
    });
    let _s = Server::new(fan).serve(&p.server).unwrap();
    // The caller's callbacks report that they started, then wait for the
    // gate.
    let (entered_tx, mut entered) = mpsc::channel::<u32>(512);
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let hold = Router::new().unary("Cb.Hold", move |_ctx: CallContext, i: u32| {
        let (tx, g) = (entered_tx.clone(), g.clone());
        async move {
            tx.send(i).await.unwrap();
            let _p = g.acquire().await.unwrap();
            Ok::<_, Status>(i)
        }
    });
    let _c = Server::new(hold).serve(&p.client).unwrap();
    let client = Client::new(p.client.clone()).to("server");
    let outer = tokio::spawn(async move { client.call::<_, u32>("Outer.Fan", &257).await });
    for _ in 0..256 {
        within(10, entered.recv()).await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), entered.recv())
            .await
            .is_err(),
        "a 257th callback was open at once"
    );
    gate.add_permits(1);
    within(10, entered.recv()).await.unwrap();
    gate.add_permits(1000);
    assert_eq!(within(10, outer).await.unwrap().unwrap(), 257);
    p.shutdown().await;
}

/// `depth` msgpack arrays, each holding the next, around a nil.
fn nested_msgpack(depth: usize) -> Vec<u8> {
    let mut v = vec![0x91; depth];
    v.push(0xc0);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_3_msgpack_nesting_over_128_is_origin_2() {
    let router = Router::new().unary(
        "Deep.Take",
        |_ctx: CallContext, _v: serde_json::Value| async move { Ok::<_, Status>(true) },
    );
    let f = Fixture::new(Server::new(router)).await;
    // Nesting up to the limit is decoded.
    for depth in [1, 127, 128] {
        let t = call(&f.conn, "Deep.Take", &inline(None, &nested_msgpack(depth))).await;
        let refused = t.error_frames().first().map(|f| status(f).3);
        assert_eq!(
            refused, None,
            "{depth} nested arrays (within the limit of 128) refused"
        );
        assert_eq!(t.data_frames(), [vec![0xc3]], "depth {depth}");
    }
    // One level more is a decode error, origin 2 INVALID_ARGUMENT.
    for depth in [129, 1000] {
        let (o, code, msg, _) =
            failed(&f.conn, "Deep.Take", &inline(None, &nested_msgpack(depth))).await;
        assert_eq!((o, code), (2, 3), "depth {depth}: {msg}");
        assert!(msg.contains("depth"), "{msg}");
    }
    f.shutdown().await;
}

// ---------------------------------------------------------------- 9.4

fn callback_router() -> Router {
    // The request: milliseconds of the call's deadline to use up before
    // calling back (time passing, not synchronisation).
    Router::new().unary("Cb.Outer", |ctx: CallContext, spend_ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(spend_ms)).await;
        let said: String = ctx.caller().call("Log.Line", "hello").await?;
        Ok::<_, Status>(said)
    })
}

/// A `rpc-timeout` value as a duration.
fn parse_timeout(v: &str) -> Duration {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = v.split_at(digits);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("rpc-timeout {v:?}"));
    match unit {
        "ns" => Duration::from_nanos(n),
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("rpc-timeout {v:?}: unit {unit:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_4_callback_carries_the_codec_and_the_remaining_timeout() {
    let f = Fixture::new(Server::new(callback_router())).await;
    // 300 ms of the 5 s are spent before the callback.
    let block = format!("{}&rpc-timeout=5000ms", inline(Some("json"), b"300"));
    let (mut outer, _, _) = f.conn.open_accepted("Cb.Outer", 1 << 20, &block).await;
    let inc = f.conn.expect_open().await;
    assert_eq!(inc.host, "Log.Line");
    assert_eq!((inc.port, inc.originator_port), (1, 0), "a top-level open");
    let h = inc.block().to_owned();
    assert_eq!(header(&h, "rpc-codec").as_deref(), Some("json"), "{h}");
    let t = parse_timeout(&header(&h, "rpc-timeout").unwrap_or_else(|| panic!("{h}")));
    assert!(
        t <= Duration::from_millis(4700) && t > Duration::ZERO,
        "callback timeout {t:?}: more than what is left of 5000ms after 300ms"
    );
    let req = unb64url(&header(&h, "rpc-request").unwrap_or_else(|| panic!("{h}")));
    assert_eq!(req, b"\"hello\"", "encoded with the call's codec (JSON)");
    let cb = inc.accept(1 << 20).await;
    cb.send_data_frame(b"\"logged\"").await;
    cb.send_eof_record().await;
    cb.send_eof().await;
    cb.send_close().await;
    assert_eq!(outer.expect_data_frame().await, b"\"logged\"");
    outer.expect_eof_record().await;
    outer.expect_end().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_4_caller_serving_nothing_refuses_callbacks_at_once() {
    let client_config = Config::default()
        .accept_channels(false)
        .accept_timeout(Duration::from_secs(10))
        .unwrap();
    let p = pair_with(Transport::Tcp, Config::default(), client_config).await;
    let _s = Server::new(callback_router()).serve(&p.server).unwrap();
    let client = Client::new(p.client.clone()).to("server");
    let start = Instant::now();
    let r = within(10, client.call::<_, String>("Cb.Outer", &0u64)).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the callback failed after {took:?}, not at once (accept timeout 10 s)"
    );
    let e = r.expect_err("the callback should fail");
    assert_eq!(e.code(), Code::UNAVAILABLE, "{e}");
    let msg = e
        .status()
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    assert!(msg.contains("Log.Line"), "{msg}");
    assert!(msg.contains("accepts no channels"), "{msg}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_4_rejected_callback_ends_the_call_with_unavailable() {
    let f = Fixture::new(Server::new(callback_router())).await;
    let (mut outer, _, _) = f
        .conn
        .open_accepted("Cb.Outer", 1 << 20, &inline(Some("json"), b"0"))
        .await;
    let inc = f.conn.expect_open().await;
    assert_eq!(inc.host, "Log.Line");
    let cb = inc.confirm().await;
    cb.send_record(&Record::Reject("not today, thank you".into()))
        .await;
    cb.send_close().await;
    let t = answer(&mut outer, "Cb.Outer").await;
    let frames = t.error_frames();
    assert_eq!(frames.len(), 1, "{:?}", t.events);
    let (_, o, code, msg, _) = status(&frames[0]);
    assert_eq!((o, code), (0, 14), "origin 0, UNAVAILABLE: {msg}");
    assert!(msg.contains("Log.Line"), "{msg}");
    assert!(msg.contains("not today, thank you"), "{msg}");
    f.shutdown().await;
}

// ---------------------------------------------------------------- 9.5

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_5_trailing_bytes_are_origin_2() {
    let f = Fixture::new(Server::new(calc_router())).await;
    // The value alone is fine.
    let ok = response(&f.conn, "Calc.Add", &inline(None, &[0x92, 0x02, 0x03])).await;
    assert_eq!(ok, [0x05]);
    // Inline, msgpack and JSON.
    for block in [
        inline(None, &[0x92, 0x02, 0x03, 0xc0]),
        inline(Some("json"), b"[2,3] 4"),
    ] {
        let (o, code, msg, _) = failed(&f.conn, "Calc.Add", &block).await;
        assert_eq!((o, code), (2, 3), "{block}: {msg}");
        assert!(msg.contains("trailing"), "{msg}");
    }
    // In a frame.
    for (codec, body) in [
        ("msgpack", &[0x92, 0x02, 0x03, 0x00][..]),
        ("json", b"[2,3]x"),
    ] {
        let (mut ch, _, _) = f
            .conn
            .open_accepted("Calc.Add", 1 << 20, &format!("rpc-codec={codec}"))
            .await;
        ch.send_data(&frame(body)).await;
        ch.send_eof_record().await;
        let t = answer(&mut ch, "Calc.Add").await;
        let frames = t.error_frames();
        assert_eq!(frames.len(), 1, "{codec}: {:?}", t.events);
        let (_, o, code, msg, _) = status(&frames[0]);
        assert_eq!((o, code), (2, 3), "{codec}: {msg}");
    }
    f.shutdown().await;
}

#[derive(Clone, Serialize)]
struct TupleStruct(i64, i64);
#[derive(Clone, Serialize)]
struct UnitStruct;
#[derive(Clone, Serialize)]
struct Newtype(u32);
#[derive(Clone, Serialize, Deserialize)]
struct Req {
    a: u8,
    name: String,
}
#[derive(Clone, Serialize)]
enum E {
    Unit,
    New(u32),
    Tup(u32, bool),
    St { x: u32 },
}
/// Bytes as `serde_bytes` serializes them.
#[derive(Clone)]
struct Bytes2(Vec<u8>);
impl Serialize for Bytes2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

fn golden<T: Serialize + Clone + Send + Sync + 'static>(r: Router, method: &str, v: T) -> Router {
    r.unary(method, move |_ctx: CallContext, (): ()| {
        let v = v.clone();
        async move { Ok::<T, Status>(v) }
    })
}

/// The table of PROTOCOL.md 9.5: method, msgpack bytes, JSON text.
const GOLDEN: &[(&str, &[u8], &str)] = &[
    ("G.Tuple", &[0x92, 0x02, 0x03], "[2,3]"),
    ("G.TupleStruct", &[0x92, 0x02, 0x03], "[2,3]"),
    ("G.One", &[0x91, 0xa1, 0x61], "[\"a\"]"),
    ("G.Unit", &[0xc0], "null"),
    ("G.UnitStruct", &[0x90], "null"),
    ("G.Newtype", &[0x07], "7"),
    ("G.None", &[0xc0], "null"),
    ("G.Some", &[0x05], "5"),
    (
        "G.Struct",
        &[
            0x82, 0xa1, 0x61, 0x01, 0xa4, 0x6e, 0x61, 0x6d, 0x65, 0xa1, 0x78,
        ],
        "{\"a\":1,\"name\":\"x\"}",
    ),
    ("G.EUnit", &[0xa4, 0x55, 0x6e, 0x69, 0x74], "\"Unit\""),
    (
        "G.ENew",
        &[0x81, 0xa3, 0x4e, 0x65, 0x77, 0x07],
        "{\"New\":7}",
    ),
    (
        "G.ETup",
        &[0x81, 0xa3, 0x54, 0x75, 0x70, 0x92, 0x01, 0xc3],
        "{\"Tup\":[1,true]}",
    ),
    (
        "G.ESt",
        &[0x81, 0xa2, 0x53, 0x74, 0x81, 0xa1, 0x78, 0x01],
        "{\"St\":{\"x\":1}}",
    ),
    ("G.VecU8", &[0x92, 0x01, 0x02], "[1,2]"),
    ("G.Bytes", &[0xc4, 0x02, 0x01, 0x02], "[1,2]"),
    ("G.MapStr", &[0x81, 0xa1, 0x6b, 0x01], "{\"k\":1}"),
    ("G.MapInt", &[0x81, 0x01, 0xc3], "{\"1\":true}"),
    ("G.Str", &[0xa2, 0x68, 0x69], "\"hi\""),
    ("G.True", &[0xc3], "true"),
    ("G.Neg", &[0xff], "-1"),
    ("G.U300", &[0xcd, 0x01, 0x2c], "300"),
    ("G.F64", &[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0], "1.5"),
    ("G.F32", &[0xca, 0x3f, 0xc0, 0, 0], "1.5"),
];

fn golden_router() -> Router {
    let r = Router::new();
    let r = golden(r, "G.Tuple", (2i64, 3i64));
    let r = golden(r, "G.TupleStruct", TupleStruct(2, 3));
    let r = golden(r, "G.One", ("a".to_owned(),));
    let r = golden(r, "G.Unit", ());
    let r = golden(r, "G.UnitStruct", UnitStruct);
    let r = golden(r, "G.Newtype", Newtype(7));
    let r = golden(r, "G.None", None::<u32>);
    let r = golden(r, "G.Some", Some(5u32));
    let r = golden(
        r,
        "G.Struct",
        Req {
            a: 1,
            name: "x".into(),
        },
    );
    let r = golden(r, "G.EUnit", E::Unit);
    let r = golden(r, "G.ENew", E::New(7));
    let r = golden(r, "G.ETup", E::Tup(1, true));
    let r = golden(r, "G.ESt", E::St { x: 1 });
    let r = golden(r, "G.VecU8", vec![1u8, 2]);
    let r = golden(r, "G.Bytes", Bytes2(vec![1, 2]));
    let r = golden(r, "G.MapStr", BTreeMap::from([("k".to_owned(), 1u32)]));
    let r = golden(r, "G.MapInt", BTreeMap::from([(1u32, true)]));
    let r = golden(r, "G.Str", "hi".to_owned());
    let r = golden(r, "G.True", true);
    let r = golden(r, "G.Neg", -1i64);
    let r = golden(r, "G.U300", 300u64);
    let r = golden(r, "G.F64", 1.5f64);
    golden(r, "G.F32", 1.5f32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_5_msgpack_structs_are_maps_golden_bytes() {
    let f = Fixture::new(Server::new(golden_router())).await;
    let mut wrong = Vec::new();
    for &(method, msgpack, json) in GOLDEN {
        // msgpack, the default: the request () is nil.
        let got = response(&f.conn, method, &inline(None, &[0xc0])).await;
        if got != msgpack {
            wrong.push(format!(
                "{method} msgpack: got {got:02x?}, want {msgpack:02x?}"
            ));
        }
        let got = response(&f.conn, method, &inline(Some("json"), b"null")).await;
        if got != json.as_bytes() {
            wrong.push(format!(
                "{method} json: got {:?}, want {json:?}",
                String::from_utf8_lossy(&got)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_5_msgpack_decoders_accept_arrays_unknown_keys_any_int_width() {
    let router = Router::new().unary("G.Req", |_ctx: CallContext, r: Req| async move {
        Ok::<_, Status>(format!("{}:{}", r.a, r.name))
    });
    let f = Fixture::new(Server::new(router)).await;
    // "1:x"
    let want = [0xa3, b'1', b':', b'x'];
    let name = [0xa4, b'n', b'a', b'm', b'e', 0xa1, b'x'];
    let with_a = |a: &[u8]| {
        let mut v = vec![0x82, 0xa1, b'a'];
        v.extend_from_slice(a);
        v.extend_from_slice(&name);
        v
    };
    let mut forms: Vec<(&str, Vec<u8>)> = vec![
        ("map", with_a(&[0x01])),
        ("array", [&[0x92, 0x01][..], &[0xa1, b'x']].concat()),
        (
            "unknown key",
            [
                &[
                    0x83, 0xa1, b'a', 0x01, 0xa5, b'e', b'x', b't', b'r', b'a', 0xc3,
                ][..],
                &name,
            ]
            .concat(),
        ),
        (
            "reordered",
            [&[0x82][..], &name, &[0xa1, b'a', 0x01]].concat(),
        ),
    ];
    for (what, a) in [
        ("uint 8", &[0xcc, 0x01][..]),
        ("uint 16", &[0xcd, 0x00, 0x01]),
        ("uint 32", &[0xce, 0, 0, 0, 0x01]),
        ("uint 64", &[0xcf, 0, 0, 0, 0, 0, 0, 0, 0x01]),
        ("int 8", &[0xd0, 0x01]),
        ("int 16", &[0xd1, 0x00, 0x01]),
        ("int 32", &[0xd2, 0, 0, 0, 0x01]),
        ("int 64", &[0xd3, 0, 0, 0, 0, 0, 0, 0, 0x01]),
    ] {
        forms.push((what, with_a(a)));
    }
    for (what, body) in &forms {
        let got = response(&f.conn, "G.Req", &inline(None, body)).await;
        assert_eq!(got, want, "{what}: {body:02x?}");
    }
    // A value that does not fit the target type (256 into a u8) is refused.
    let (o, code, msg, _) = failed(
        &f.conn,
        "G.Req",
        &inline(None, &with_a(&[0xcd, 0x01, 0x00])),
    )
    .await;
    assert_eq!((o, code), (2, 3), "{msg}");
    f.shutdown().await;
}
