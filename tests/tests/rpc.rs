//! duplex-rpc over real connections: every call kind both ways with both
//! codecs, concurrency and the in-flight limit, callbacks, typed errors,
//! deadlines and cancellation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex::{Config, Headers, Peer};
use duplex_rpc::codec::{BoxError, Codec, Json, MsgPack};
use duplex_rpc::{
    CallContext, Client, Code, Receiver, Router, RpcError, Sender, Server, ServerHandle, Side,
    Status,
};
use duplex_tests::{Transport, pair, pair_with, within};
use serde::de::DeserializeSeed;
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, mpsc};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i64,
    label: String,
}

/// The methods both peers serve in these tests.
fn calc_router(name: &'static str) -> Router {
    Router::new()
        .unary(
            "Calc.Add",
            |_ctx: CallContext, (a, b): (i64, i64)| async move {
                a.checked_add(b)
                    .ok_or_else(|| Status::invalid_argument("overflow"))
            },
        )
        .unary("Calc.Whoami", move |ctx: CallContext, (): ()| async move {
            Ok::<_, Status>(format!(
                "{name} serving {} with {}",
                ctx.remote_peer(),
                ctx.headers().get("rpc-codec").unwrap_or("?")
            ))
        })
        .unary("Calc.Move", |_ctx: CallContext, p: Point| async move {
            Ok::<_, Status>(Point {
                x: p.x + 1,
                label: format!("{}'", p.label),
            })
        })
        .server_stream(
            "Calc.Count",
            |_ctx: CallContext, n: u32, mut out: Sender<u32>| async move {
                for i in 0..n {
                    out.send(&i).await?;
                }
                Ok(())
            },
        )
        .client_stream(
            "Calc.Sum",
            |_ctx: CallContext, mut xs: Receiver<i64>| async move {
                let mut total = 0i64;
                while let Some(x) = xs.recv().await? {
                    total += x;
                }
                Ok(total)
            },
        )
        .bidi(
            "Calc.Double",
            |_ctx: CallContext, mut xs: Receiver<i64>, mut out: Sender<i64>| async move {
                while let Some(x) = xs.recv().await? {
                    out.send(&(x * 2)).await?;
                }
                Ok(())
            },
        )
        .raw(
            "Calc.Raw",
            |_ctx: CallContext, mut ch: duplex::Channel| async move {
                let frame = ch
                    .read_frame()
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                let mut back = frame.unwrap_or_default().to_vec();
                back.reverse();
                ch.write_frame(&back)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                Ok(())
            },
        )
        .unary("Calc.Fail", |_ctx: CallContext, code: u16| async move {
            Err::<(), _>(
                Status::new(Code::from_u16(code), "it failed on purpose")
                    .with_details(&b"detail bytes"[..]),
            )
        })
        .unary("Calc.Panic", |_ctx: CallContext, (): ()| async move {
            if true {
                panic!("the handler gave up");
            }
            Ok::<(), Status>(())
        })
}

fn serve(peer: &Peer, router: Router) -> ServerHandle {
    Server::new(router).serve(peer).unwrap()
}

/// Every call kind against `client`'s remote, with the client's codec.
async fn exercise(client: &Client, expect_server: &str) {
    let sum: i64 = client.call("Calc.Add", &(40, 2)).await.unwrap();
    assert_eq!(sum, 42);
    let who: String = client.call("Calc.Whoami", &()).await.unwrap();
    assert!(who.starts_with(expect_server), "{who}");
    let p: Point = client
        .call(
            "Calc.Move",
            &Point {
                x: 1,
                label: "p".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        p,
        Point {
            x: 2,
            label: "p'".into()
        }
    );

    let mut counts = client
        .server_stream::<u32, u32>("Calc.Count", &1000)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(i) = counts.recv().await.unwrap() {
        got.push(i);
    }
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    // As a `Stream` too.
    use futures_util::StreamExt;
    let streamed: Vec<u32> = client
        .server_stream::<u32, u32>("Calc.Count", &5)
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(streamed, vec![0, 1, 2, 3, 4]);

    let mut sum = client.client_stream::<i64, i64>("Calc.Sum").await.unwrap();
    for x in 1..=100 {
        sum.send(&x).await.unwrap();
    }
    assert_eq!(sum.finish().await.unwrap(), 5050);

    let (mut tx, mut rx) = client.bidi::<i64, i64>("Calc.Double").await.unwrap();
    // Interleaved: each answer arrives before the next request is sent.
    for x in 0..50 {
        tx.send(&x).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(x * 2));
    }
    tx.finish().await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), None);

    let mut raw = client.open_raw("Calc.Raw", Headers::new()).await.unwrap();
    raw.write_frame(b"abc").await.unwrap();
    assert_eq!(&raw.read_frame().await.unwrap().unwrap()[..], b"cba");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_kind_both_directions_both_codecs() {
    within(60, async {
        let p = pair(Transport::Tcp).await;
        let _s1 = serve(&p.server, calc_router("server"));
        let _s2 = serve(&p.client, calc_router("client"));
        for (caller, callee) in [(&p.client, "server"), (&p.server, "client")] {
            let base = Client::new(caller.clone());
            exercise(&base.to(callee), callee).await;
            exercise(&base.to(callee).with_codec(Json), callee).await;
            exercise(&base.with_codec(MsgPack), callee).await; // round-robin: the only peer
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_serves_msgpack_and_json_callers_at_once() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let meet = Arc::new(Barrier::new(2));
        let m = meet.clone();
        let router = Router::new().unary("Sync.Meet", move |ctx: CallContext, who: String| {
            let m = m.clone();
            async move {
                // Both calls must be in the handler at once to pass.
                m.wait().await;
                Ok::<_, Status>(format!(
                    "{who} via {}",
                    ctx.headers().get("rpc-codec").unwrap()
                ))
            }
        });
        let _s = serve(&p.server, router);
        let client = Client::new(p.client.clone()).to("server");
        let (mp, js) = (client.with_codec(MsgPack), client.with_codec(Json));
        let (a, b) = tokio::join!(
            mp.call::<_, String>("Sync.Meet", "a"),
            js.call::<_, String>("Sync.Meet", "b"),
        );
        assert_eq!(a.unwrap(), "a via msgpack");
        assert_eq!(b.unwrap(), "b via json");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_all_in_flight_at_once() {
    within(120, async {
        const N: usize = 10_000;
        // Room for every call to be open at the same time.
        let roomy = || {
            Config::default()
                .max_channels_per_connection(N + 100)
                .unwrap()
                .max_pending_channels(N + 100)
                .unwrap()
                .accept_backlog(N + 100)
                .unwrap()
                .max_connection_buffer(
                    (N as u64 + 100) * u64::from(Config::default().get_channel_window()),
                )
                .unwrap()
                .max_peer_buffer(
                    (N as u64 + 100) * u64::from(Config::default().get_channel_window()),
                )
                .unwrap()
                .max_total_buffer(
                    (N as u64 + 100) * u64::from(Config::default().get_channel_window()),
                )
                .unwrap()
        };
        let p = pair_with(Transport::Tcp, roomy(), roomy()).await;
        let all_in = Arc::new(Barrier::new(N));
        let b = all_in.clone();
        let router =
            Router::new().unary("Calc.Add", move |_ctx: CallContext, (a, c): (u64, u64)| {
                let b = b.clone();
                async move {
                    // Returns only once all N calls are in their handlers.
                    b.wait().await;
                    Ok::<_, Status>(a + c)
                }
            });
        let _s = Server::new(router)
            .max_in_flight(N)
            .serve(&p.server)
            .unwrap();
        let client = Client::new(p.client.clone())
            .with_max_concurrent_calls(N)
            .to("server");
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N as u64 {
            let c = client.clone();
            tasks.spawn(async move { (i, c.call::<_, u64>("Calc.Add", &(i, 1000)).await) });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            let (i, sum) = r.unwrap();
            assert_eq!(sum.unwrap(), i + 1000);
            ok += 1;
        }
        assert_eq!(ok, N);
        eprintln!("{N} concurrent calls in {:?}", started.elapsed());
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_with_default_limits_complete() {
    within(120, async {
        const N: u64 = 10_000;
        let p = pair(Transport::Tcp).await;
        let _s = serve(&p.server, calc_router("server"));
        let client = Client::new(p.client.clone()).to("server");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N as i64 {
            let c = client.clone();
            tasks.spawn(async move { (i, c.call::<_, i64>("Calc.Add", &(i, -1)).await) });
        }
        while let Some(r) = tasks.join_next().await {
            let (i, sum) = r.unwrap();
            assert_eq!(sum.unwrap(), i - 1);
        }
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_in_flight_limit_get_overloaded_at_once() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (entered_tx, mut entered) = mpsc::channel::<()>(16);
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let r = release.clone();
        let router = Router::new().unary("Slow.Wait", move |_ctx: CallContext, (): ()| {
            let (tx, r) = (entered_tx.clone(), r.clone());
            async move {
                tx.send(()).await.unwrap();
                r.acquire().await.unwrap().forget();
                Ok::<_, Status>("done".to_owned())
            }
        });
        let server = Server::new(router)
            .max_in_flight(4)
            .serve(&p.server)
            .unwrap();
        let client = Client::new(p.client.clone()).to("server");
        let mut busy = Vec::new();
        for _ in 0..4 {
            let c = client.clone();
            busy.push(tokio::spawn(async move {
                c.call::<_, String>("Slow.Wait", &()).await
            }));
        }
        for _ in 0..4 {
            entered.recv().await.unwrap();
        }
        assert_eq!(server.in_flight(), 4);
        let t = Instant::now();
        let err = client
            .call::<_, String>("Slow.Wait", &())
            .await
            .unwrap_err();
        let took = t.elapsed();
        assert_eq!(err.code(), Code::RESOURCE_EXHAUSTED, "{err}");
        assert!(matches!(err, RpcError::Status { .. }), "{err:?}");
        assert!(err.to_string().contains("overloaded"), "{err}");
        assert!(
            took < Duration::from_secs(2),
            "overload answer took {took:?}"
        );
        eprintln!("overload answer in {took:?}");
        // Meanwhile the four are still served, and afterwards calls work.
        release.add_permits(4);
        for b in busy {
            assert_eq!(b.await.unwrap().unwrap(), "done");
        }
        release.add_permits(1);
        let again: String = client.call("Slow.Wait", &()).await.unwrap();
        assert_eq!(again, "done");
        p.shutdown().await;
    })
    .await;
}

/// `Depth.Down(n)`: calls back into its caller with n-1 until 0; returns
/// the names of the peers that served each level.
fn depth_router(name: &'static str) -> Router {
    Router::new().unary("Depth.Down", move |ctx: CallContext, n: u32| async move {
        let mut path = vec![name.to_owned()];
        if n > 0 {
            let deeper: Vec<String> = ctx.caller().call("Depth.Down", &(n - 1)).await?;
            path.extend(deeper);
        }
        Ok::<_, Status>(path)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_into_the_caller_ten_levels_deep() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        // Small in-flight limits: each level holds a slot on one side.
        let _s1 = Server::new(depth_router("server"))
            .max_in_flight(8)
            .serve(&p.server)
            .unwrap();
        let _s2 = Server::new(depth_router("client"))
            .max_in_flight(8)
            .serve(&p.client)
            .unwrap();
        for codec in ["msgpack", "json"] {
            let client = Client::new(p.client.clone()).to("server");
            let client = if codec == "json" {
                client.with_codec(Json)
            } else {
                client
            };
            let path: Vec<String> = client.call("Depth.Down", &10u32).await.unwrap();
            assert_eq!(path.len(), 11);
            for (i, who) in path.iter().enumerate() {
                assert_eq!(who, if i % 2 == 0 { "server" } else { "client" });
            }
        }
        // And started from the other side.
        let path: Vec<String> = Client::new(p.server.clone())
            .call("Depth.Down", &10u32)
            .await
            .unwrap();
        assert_eq!(path.first().map(String::as_str), Some("client"));
        assert_eq!(path.len(), 11);
        p.shutdown().await;
    })
    .await;
}

/// A codec nobody serves.
struct Xml;
impl Codec for Xml {
    fn name(&self) -> &'static str {
        "xml"
    }
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        serde_json::to_writer(out, value)?;
        Ok(())
    }
    fn decode<'de, S: DeserializeSeed<'de>>(
        &self,
        bytes: &'de [u8],
        seed: S,
    ) -> Result<S::Value, BoxError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        Ok(seed.deserialize(&mut de)?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_arrive_typed_and_the_server_keeps_serving() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let _s = serve(&p.server, calc_router("server"));
        let client = Client::new(p.client.clone()).to("server");
        let still_serving = || async {
            let sum: i64 = client.call("Calc.Add", &(1, 1)).await.unwrap();
            assert_eq!(sum, 2);
        };

        // A handler's status, with code, message and details.
        let err = client.call::<_, ()>("Calc.Fail", &5u16).await.unwrap_err();
        let RpcError::Status {
            status,
            peer,
            method,
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(
            (status.code(), status.message()),
            (Code::NOT_FOUND, "it failed on purpose")
        );
        assert_eq!(&status.details()[..], b"detail bytes");
        assert_eq!((peer.as_str(), method.as_str()), ("server", "Calc.Fail"));
        assert_eq!(
            err.to_string(),
            "Calc.Fail on server failed: NOT_FOUND: it failed on purpose"
        );
        let err = client
            .call::<_, ()>("Calc.Fail", &4242u16)
            .await
            .unwrap_err();
        assert_eq!(err.code().as_u16(), 4242);
        still_serving().await;

        // An unknown method.
        let err = client
            .call::<_, i64>("Calc.Nope", &(1, 2))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::UnknownMethod { .. }), "{err:?}");
        assert_eq!(err.code(), Code::UNIMPLEMENTED);
        assert!(err.to_string().contains("Calc.Nope"), "{err}");
        // A known method called as the wrong kind.
        let err = client
            .call::<_, u32>("Calc.Count", &3u32)
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::UnknownMethod { .. }), "{err:?}");
        assert!(err.to_string().contains("server-stream"), "{err}");
        still_serving().await;

        // A request the server cannot decode.
        let err = client
            .call::<_, i64>("Calc.Add", "not a pair")
            .await
            .unwrap_err();
        let RpcError::Codec { side, message, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*side, Side::Remote);
        assert!(
            message.contains("cannot decode the request with msgpack"),
            "{message}"
        );
        let err = client
            .with_codec(Json)
            .call::<_, i64>("Calc.Add", &[1, 2, 3])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::Codec {
                    side: Side::Remote,
                    ..
                }
            ),
            "{err:?}"
        );
        // Inside a stream: the handler's `?` on the bad message still
        // reports a codec failure.
        let mut sum = client
            .client_stream::<String, i64>("Calc.Sum")
            .await
            .unwrap();
        let sent = sum.send(&"x".to_owned()).await;
        let err = match sent {
            Err(e) => e,
            Ok(()) => sum.finish().await.unwrap_err(),
        };
        assert!(
            matches!(
                err,
                RpcError::Codec {
                    side: Side::Remote,
                    ..
                }
            ),
            "{err:?}"
        );
        // A response we cannot decode.
        let err = client
            .call::<_, Point>("Calc.Add", &(1, 2))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::Codec {
                    side: Side::Local,
                    ..
                }
            ),
            "{err:?}"
        );
        // A codec the server does not speak.
        let err = client
            .with_codec(Xml)
            .call::<_, i64>("Calc.Add", &(1, 2))
            .await
            .unwrap_err();
        let RpcError::Codec {
            side: Side::Remote,
            message,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert!(
            message.contains("\"xml\" is not supported; this server speaks msgpack, json"),
            "{message}"
        );
        still_serving().await;

        // A panicking handler.
        let err = client.call::<_, ()>("Calc.Panic", &()).await.unwrap_err();
        let RpcError::Status { status, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(status.code(), Code::INTERNAL);
        assert!(status.message().contains("the handler gave up"), "{status}");
        still_serving().await;

        // No such peer.
        let err = Client::new(p.client.clone())
            .to("nobody")
            .call::<_, i64>("Calc.Add", &(1, 2))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Transport { .. }), "{err:?}");
        let text = duplex::error::full_text(&err);
        assert!(text.contains("no peer named \"nobody\""), "{text}");
        p.shutdown().await;
    })
    .await;
}

/// Sends on `tx` when dropped: how a test sees a handler being cancelled.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

type Signals = Arc<std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>>;

/// `Slow.Sleep` sleeps 10 s, announcing itself with its timeout on
/// `entered` and signalling through a `DropSignal` when cancelled.
fn slow_router(entered: mpsc::Sender<Option<Duration>>, cancelled: Signals) -> Router {
    let e2 = entered.clone();
    let c2 = cancelled.clone();
    Router::new()
        .unary("Slow.Sleep", move |ctx: CallContext, (): ()| {
            let (entered, cancelled) = (entered.clone(), cancelled.clone());
            async move {
                let _guard = DropSignal(cancelled.lock().unwrap().pop());
                entered.send(ctx.timeout()).await.unwrap();
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, Status>(())
            }
        })
        .server_stream(
            "Slow.Stream",
            move |ctx: CallContext, (): (), mut out: Sender<u64>| {
                let (entered, cancelled) = (e2.clone(), c2.clone());
                async move {
                    let _guard = DropSignal(cancelled.lock().unwrap().pop());
                    entered.send(ctx.timeout()).await.unwrap();
                    for i in 0.. {
                        out.send(&i).await?;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Ok(())
                }
            },
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_the_call_and_cancels_the_handler() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (entered_tx, mut entered) = mpsc::channel(4);
        let signals: Signals = Default::default();
        let _s = serve(&p.server, slow_router(entered_tx, signals.clone()));
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel();
        signals.lock().unwrap().push(cancel_tx);
        let client = Client::new(p.client.clone()).to("server");

        let t = Instant::now();
        let err = client
            .with_timeout(Duration::from_millis(100))
            .call::<_, ()>("Slow.Sleep", &())
            .await
            .unwrap_err();
        let took = t.elapsed();
        assert!(matches!(err, RpcError::DeadlineExceeded { timeout, .. } if timeout == Duration::from_millis(100)), "{err:?}");
        assert_eq!(err.code(), Code::DEADLINE_EXCEEDED);
        assert!(took >= Duration::from_millis(100) && took < Duration::from_millis(600), "took {took:?}");
        // The handler saw the timeout and was cancelled, long before its
        // 10 s sleep ended.
        let seen = entered.recv().await.unwrap().unwrap();
        assert!(seen <= Duration::from_millis(100) && seen > Duration::from_millis(50), "{seen:?}");
        tokio::time::timeout(Duration::from_secs(2), cancel_rx).await.unwrap().unwrap();
        eprintln!(
            "100 ms deadline: call failed after {took:?}, handler cancelled {:?} after the call began",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(3));

        // A deadline on a stream covers the whole stream.
        let (tx, rx) = tokio::sync::oneshot::channel();
        signals.lock().unwrap().push(tx);
        let mut s = client
            .with_timeout(Duration::from_millis(300))
            .server_stream::<_, u64>("Slow.Stream", &())
            .await
            .unwrap();
        let mut n = 0;
        let end = loop {
            match s.recv().await {
                Ok(Some(_)) => n += 1,
                other => break other,
            }
        };
        assert!(n > 0);
        assert!(matches!(end, Err(RpcError::DeadlineExceeded { .. })), "{end:?}");
        tokio::time::timeout(Duration::from_secs(2), rx).await.unwrap().unwrap();
        entered.recv().await.unwrap();
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_deadline_answers_when_the_caller_waits_longer() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (entered_tx, mut entered) = mpsc::channel(4);
        let signals: Signals = Default::default();
        let _s = serve(&p.server, slow_router(entered_tx, signals.clone()));
        // A raw call with a timeout header but no local deadline: the
        // server's own timer answers.
        let mut ch = p
            .client
            .open(
                "server",
                "Slow.Sleep",
                Headers::new()
                    .with("rpc-timeout", "150ms")
                    .with("rpc-kind", "unary"),
            )
            .await
            .unwrap();
        let mut req = Vec::new();
        MsgPack.encode(&(), &mut req).unwrap();
        ch.write_frame(&req).await.unwrap();
        ch.close_write().await.unwrap();
        let t = Instant::now();
        assert_eq!(ch.read_frame().await.unwrap(), None);
        let frame = ch.read_error().await.unwrap().unwrap();
        let err = RpcError::from_status_frame("Slow.Sleep", "server", &frame);
        assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        entered.recv().await.unwrap();
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_cancels_the_handler() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (entered_tx, mut entered) = mpsc::channel(4);
        let signals: Signals = Default::default();
        let _s = serve(&p.server, slow_router(entered_tx, signals.clone()));
        let client = Client::new(p.client.clone()).to("server");

        // A unary call whose future is dropped.
        let (tx, rx) = tokio::sync::oneshot::channel();
        signals.lock().unwrap().push(tx);
        let c = client.clone();
        let call = tokio::spawn(async move { c.call::<_, ()>("Slow.Sleep", &()).await });
        assert_eq!(entered.recv().await.unwrap(), None);
        call.abort();
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .unwrap()
            .unwrap();

        // A stream whose receiver is dropped.
        let (tx, rx) = tokio::sync::oneshot::channel();
        signals.lock().unwrap().push(tx);
        let mut s = client
            .server_stream::<_, u64>("Slow.Stream", &())
            .await
            .unwrap();
        assert_eq!(s.recv().await.unwrap(), Some(0));
        entered.recv().await.unwrap();
        drop(s);
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .unwrap()
            .unwrap();
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_calls_still_running_after_the_grace() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (entered_tx, mut entered) = mpsc::channel(4);
        let server = serve(&p.server, slow_router(entered_tx, Default::default()));
        let client = Client::new(p.client.clone()).to("server");
        let call = tokio::spawn(async move { client.call::<_, ()>("Slow.Sleep", &()).await });
        entered.recv().await.unwrap();
        server.shutdown(Duration::from_millis(50)).await;
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::UNAVAILABLE, "{err}");
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_connection_frame_limit_fails_at_once() {
    within(30, async {
        let small = || Config::default().max_frame_len(64 << 10).unwrap();
        let p = pair_with(Transport::Tcp, small(), small()).await;
        let _s = serve(&p.server, calc_router("server"));
        let client = Client::new(p.client.clone())
            .to("server")
            .with_max_message_len(8 << 20);
        // Our own limit is higher, the connection's is not: refused here,
        // not sent half-way and left waiting.
        let err = client
            .call::<_, i64>("Calc.Add", &vec![0u8; 100 << 10])
            .await
            .unwrap_err();
        assert!(
            matches!(err, RpcError::TooLarge { side: Side::Local, max, .. } if max == 64 << 10),
            "{err:?}"
        );
        let mut sum = client
            .client_stream::<Vec<u8>, i64>("Calc.Sum")
            .await
            .unwrap();
        let err = sum.send(&vec![0u8; 100 << 10]).await.unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Local,
                    ..
                }
            ),
            "{err:?}"
        );
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_endings_finish_fail_and_abandon() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (seen_tx, mut seen) = mpsc::channel::<String>(8);
        let seen2 = seen_tx.clone();
        let router = Router::new()
            // Answers after three requests, without reading the rest.
            .client_stream(
                "Take.Three",
                |_ctx: CallContext, mut xs: Receiver<i64>| async move {
                    let mut got = Vec::new();
                    while got.len() < 3 {
                        got.push(xs.recv().await?.unwrap_or_default());
                    }
                    Ok::<_, Status>(got)
                },
            )
            // Finishes its responses, then fails: the failure must arrive.
            .server_stream(
                "Send.ThenFail",
                |_ctx: CallContext, (): (), mut out: Sender<u32>| async move {
                    out.send(&1).await?;
                    out.send(&2).await?;
                    out.finish().await?;
                    Err(Status::new(
                        Code::DATA_LOSS,
                        "failed after the last response",
                    ))
                },
            )
            // Reports how its requests ended.
            .client_stream(
                "Watch.End",
                move |_ctx: CallContext, mut xs: Receiver<u8>| {
                    let seen = seen_tx.clone();
                    async move {
                        let end = loop {
                            match xs.recv().await {
                                Ok(Some(_)) => continue,
                                Ok(None) => break "finished".to_owned(),
                                Err(e) => break format!("{e}"),
                            }
                        };
                        seen.send(end).await.unwrap();
                        Ok::<_, Status>(())
                    }
                },
            )
            // Closes its channel, then carries on: it is not cancelled.
            .raw(
                "Raw.CloseFirst",
                move |_ctx: CallContext, ch: duplex::Channel| {
                    let seen = seen2.clone();
                    async move {
                        ch.close().await.ok();
                        tokio::task::yield_now().await;
                        seen.send("raw handler ran to its end".into())
                            .await
                            .unwrap();
                        Ok(())
                    }
                },
            );
        let _s = serve(&p.server, router);
        let client = Client::new(p.client.clone()).to("server");

        // An early answer: later sends are discarded, finish returns it.
        let mut call = client
            .client_stream::<i64, Vec<i64>>("Take.Three")
            .await
            .unwrap();
        for x in 0..2000 {
            call.send(&x).await.unwrap();
        }
        assert_eq!(call.finish().await.unwrap(), vec![0, 1, 2]);

        // A status after the handler's finish still ends the stream.
        let mut rx = client
            .server_stream::<_, u32>("Send.ThenFail", &())
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(1));
        assert_eq!(rx.recv().await.unwrap(), Some(2));
        let err = rx.recv().await.unwrap_err();
        assert_eq!(err.code(), Code::DATA_LOSS, "{err}");
        // And the receiver keeps saying so.
        assert_eq!(rx.recv().await.unwrap_err().code(), Code::DATA_LOSS);

        // A finished request stream, then an abandoned one.
        let mut call = client.client_stream::<u8, ()>("Watch.End").await.unwrap();
        call.send(&1).await.unwrap();
        call.finish().await.unwrap();
        assert_eq!(seen.recv().await.unwrap(), "finished");
        let mut call = client.client_stream::<u8, ()>("Watch.End").await.unwrap();
        call.send(&1).await.unwrap();
        drop(call);
        let end = seen.recv().await.unwrap();
        assert!(end.contains("abandoned"), "{end}");

        // A raw handler that closes first is not cancelled by its close.
        let ch = client
            .open_raw("Raw.CloseFirst", Headers::new())
            .await
            .unwrap();
        assert_eq!(seen.recv().await.unwrap(), "raw handler ran to its end");
        drop(ch);
        p.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_a_failed_handler_spawned_is_cancelled() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let (tx, mut rx) = mpsc::channel::<&'static str>(1);
        let router = Router::new().unary("Spawn.Fail", move |ctx: CallContext, (): ()| {
            let tx = tx.clone();
            async move {
                tokio::spawn(async move {
                    ctx.cancelled().await;
                    tx.send("spawned work saw the cancellation").await.unwrap();
                });
                Err::<(), _>(Status::internal("failed"))
            }
        });
        let _s = serve(&p.server, router);
        let err = Client::new(p.client.clone())
            .call::<_, ()>("Spawn.Fail", &())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::INTERNAL);
        assert_eq!(
            rx.recv().await.unwrap(),
            "spawned work saw the cancellation"
        );
        p.shutdown().await;
    })
    .await;
}

/// A small unary or server-streaming request rides in the open's
/// `rpc-request` header (one round trip); a large one goes as a frame.
/// Both give the same results, and a malformed header is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_ride_in_the_open_large_ones_in_a_frame() {
    within(30, async {
        let p = pair(Transport::Tcp).await;
        let router = Router::new()
            .unary("Req.Len", |ctx: CallContext, s: String| async move {
                Ok::<_, Status>((s.len(), ctx.headers().get("rpc-request").is_some()))
            })
            .server_stream(
                "Req.Bytes",
                |ctx: CallContext, s: String, mut out: Sender<(u8, bool)>| async move {
                    let inline = ctx.headers().get("rpc-request").is_some();
                    for b in s.bytes().take(3) {
                        out.send(&(b, inline)).await?;
                    }
                    Ok(())
                },
            )
            .client_stream(
                "Req.Count",
                |_ctx: CallContext, mut xs: Receiver<u8>| async move {
                    let mut n = 0u32;
                    while xs.recv().await?.is_some() {
                        n += 1;
                    }
                    Ok::<_, Status>(n)
                },
            );
        let _s = serve(&p.server, router);
        let client = Client::new(p.client.clone()).to("server");
        let small = "x".repeat(100);
        let large = "y".repeat(10_000);
        let (n, inline): (usize, bool) = client.call("Req.Len", &small).await.unwrap();
        assert_eq!((n, inline), (100, true));
        let (n, inline): (usize, bool) = client.call("Req.Len", &large).await.unwrap();
        assert_eq!((n, inline), (10_000, false));
        for (req, inline) in [(&small, true), (&large, false)] {
            let mut rx = client
                .server_stream::<_, (u8, bool)>("Req.Bytes", req)
                .await
                .unwrap();
            let mut got = Vec::new();
            while let Some(x) = rx.recv().await.unwrap() {
                got.push(x);
            }
            let b = req.as_bytes()[0];
            assert_eq!(got, vec![(b, inline); 3]);
        }
        // A caller that puts garbage in the header gets a clear refusal.
        let bad = client.with_header("rpc-request", "not base64!");
        let err = bad
            .call::<_, (usize, bool)>("Req.Len", &large)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{err}");
        assert!(err.to_string().contains("rpc-request"), "{err}");
        // And one that inlines into a streaming-request call, too.
        let mut call = bad.client_stream::<u8, u32>("Req.Count").await.unwrap();
        let _ = call.send(&1).await;
        let err = call.finish().await.unwrap_err();
        assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{err}");
        p.shutdown().await;
    })
    .await;
}
