//! Issue 18, points 1 and 5: incoming channels are routed by service. An
//! RPC server claims its methods, so a raw `Peer::accept` loop beside it
//! never takes a call; an acceptor claims its services; a channel nothing
//! takes is refused at once with "no service X on PEER", also after a
//! dropped `ServerHandle`, rather than left to time out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::{ClaimError, Config, Headers, OpenError};
use duplex_rpc::{CallContext, Client, Code, Router, RpcError, Server, Status};
use duplex_tests::wire::WireConn;
use duplex_tests::{Transport, init_tracing};
use duplex_tests::{ids, pair, pair_with, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Well under the accept timeout (10 s) and the open timeout (30 s): an
/// answer this fast was not a timeout.
const AT_ONCE: Duration = Duration::from_secs(3);

/// Waits until `n` channels from "client" are in the server's table
/// (pending ones included).
async fn arrived(server: &duplex::Peer, n: usize) {
    within(10, async {
        while server.channel_stats("client").0 < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn calc() -> Router {
    Router::new().unary(
        "Calc.Add",
        |_: CallContext, (a, b): (i64, i64)| async move { Ok::<_, Status>(a + b) },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_accept_loop_beside_an_rpc_server_never_takes_a_call() {
    let p = pair(Transport::Tcp).await;
    let _server = Server::new(calc()).serve(&p.server).unwrap();
    // The raw loop reports every service it is given.
    let (seen_tx, mut seen) = mpsc::channel(64);
    let raw = p.server.clone();
    tokio::spawn(async move {
        while let Some(inc) = raw.accept().await {
            let _ = seen_tx.send(inc.service().to_owned()).await;
            let mut ch = inc.accept().await;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = ch.read_to_end(&mut buf).await;
                let _ = ch.write_all(&buf).await;
                let _ = ch.close_write().await;
            });
        }
    });
    let client = Client::new(p.client.clone()).to("server");
    for i in 0..10i64 {
        let sum: i64 = within(10, client.call("Calc.Add", &(i, 1))).await.unwrap();
        assert_eq!(sum, i + 1);
    }
    // A service nobody claims goes to the raw loop.
    let mut ch = p
        .client
        .open("server", "echo", Headers::new())
        .await
        .unwrap();
    ch.write_all(b"hi").await.unwrap();
    ch.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(10, ch.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"hi");
    assert_eq!(within(10, seen.recv()).await.unwrap(), "echo");
    // The raw loop saw nothing but that one.
    assert!(seen.try_recv().is_err());
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_the_server_handle_is_dropped_fails_at_once() {
    let p = pair(Transport::Tcp).await;
    let server = Server::new(calc()).serve(&p.server).unwrap();
    let client = Client::new(p.client.clone()).to("server");
    let sum: i64 = client.call("Calc.Add", &(40, 2)).await.unwrap();
    assert_eq!(sum, 42);
    drop(server);
    let started = Instant::now();
    let e = client
        .call::<_, i64>("Calc.Add", &(1, 2))
        .await
        .unwrap_err();
    assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
    assert_eq!(e.code(), Code::UNIMPLEMENTED, "{e}");
    assert!(matches!(e, RpcError::UnknownMethod { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("\"Calc.Add\" on server") && text.contains("no such method"),
        "{text}"
    );
    // A raw open says so too, naming the service and the peer.
    let started = Instant::now();
    match p.client.open("server", "Calc.Add", Headers::new()).await {
        Err(e @ OpenError::NoService { .. }) => {
            assert!(
                e.to_string()
                    .starts_with("no service \"Calc.Add\" on server: "),
                "{e}"
            );
        }
        other => panic!("expected NoService, got {other:?}"),
    }
    assert!(started.elapsed() < AT_ONCE);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_unimplemented_while_a_server_runs() {
    // The server is the fallback for unclaimed services while nothing
    // calls `accept`: an unknown method gets its status (rule r9.2-5).
    let p = pair(Transport::Tcp).await;
    let _server = Server::new(calc()).serve(&p.server).unwrap();
    let client = Client::new(p.client.clone()).to("server");
    let e = client.call::<_, i64>("Calc.Nope", &()).await.unwrap_err();
    assert_eq!(e.code(), Code::UNIMPLEMENTED);
    assert_eq!(e.to_string(), "\"Calc.Nope\" on server: no such method");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptors_get_their_services_and_the_rest_is_refused_at_once() {
    let p = pair(Transport::Tcp).await;
    let mut files = p.server.acceptor(["files.put", "files.get"]).unwrap();
    assert_eq!(
        files.services().collect::<Vec<_>>(),
        ["files.put", "files.get"]
    );
    // One acceptor per service; a refused claim claims nothing.
    match p.server.acceptor(["logs", "files.get"]) {
        Err(e @ ClaimError::Taken { .. }) => assert!(
            e.to_string()
                .contains("service \"files.get\" on server is claimed by another acceptor"),
            "{e}"
        ),
        other => panic!("expected Taken, got {other:?}"),
    }
    let (opened, mut theirs) = tokio::join!(
        p.client.open("server", "files.get", Headers::new()),
        async { within(10, files.accept()).await.unwrap().accept().await },
    );
    assert_eq!(theirs.service(), "files.get");
    let mut ours = opened.unwrap();
    ours.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    within(10, theirs.read_exact(&mut b)).await.unwrap();
    // "logs" was not claimed by the refused claim, and nothing calls
    // accept: refused at once.
    let started = Instant::now();
    let e = p
        .client
        .open("server", "logs", Headers::new())
        .await
        .unwrap_err();
    assert!(matches!(e, OpenError::NoService { .. }), "{e:?}");
    assert!(started.elapsed() < AT_ONCE);
    // Released when dropped: the other claim succeeds now.
    drop(files);
    let _logs = p.server.acceptor(["logs", "files.get"]).unwrap();
    // Invalid names are refused.
    assert!(matches!(
        p.server.acceptor(["no spaces"]),
        Err(ClaimError::Service(_))
    ));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_routes_nothing_still_queues_for_a_late_accept() {
    // Today's behaviour for a peer with no acceptor: the channel waits for
    // `accept` (here called after the open started).
    let p = pair(Transport::Tcp).await;
    let open = p.client.open("server", "late", Headers::new());
    let late = async {
        arrived(&p.server, 1).await;
        p.server.accept().await.unwrap().accept().await
    };
    let (ch, _theirs) = tokio::join!(open, late);
    let _ours = ch.unwrap();
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_acceptor_refuses_with_the_limit() {
    let config = Config::default().accept_backlog(1).unwrap();
    // The second open waits for room up to its timeout, then reports the
    // limit.
    let client = Config::default().open_timeout(Duration::from_millis(300));
    let p = pair_with(Transport::Tcp, config, client).await;
    let _a = p.server.acceptor(["q"]).unwrap();
    // The first waits in the queue; the second finds it full.
    let client = p.client.clone();
    let first = client.open("server", "q", Headers::new());
    let second = async {
        arrived(&p.server, 1).await;
        p.client.open("server", "q", Headers::new()).await
    };
    tokio::pin!(first);
    let r = tokio::select! {
        r = &mut first => panic!("the first open ended: {r:?}"),
        r = second => r,
    };
    match r {
        Err(OpenError::Refused { why, .. }) => assert!(
            why.contains("the acceptor of \"q\" on server is full")
                && why.contains("Config::accept_backlog"),
            "{why}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acceptor_returns_none_when_the_peer_shuts_down() {
    let p = pair(Transport::Tcp).await;
    let mut a = p.server.acceptor(["q"]).unwrap();
    let server = p.server.clone();
    let (none, ()) = tokio::join!(within(10, a.accept()), async {
        server.shutdown().await;
    });
    assert!(none.is_none());
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_asking_for_a_service_nobody_serves_gets_an_open_failure_at_once() {
    init_tracing();
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let _a = server.acceptor(["claimed"]).unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    // No hello: a plain SSH connection, as `ssh -W nobody-home:1` makes.
    let c = WireConn::dial(&ep, "plain", &cid).await;
    let started = Instant::now();
    let refused = c
        .open("nobody-home", 1, "127.0.0.1", 5555)
        .await
        .map(|_| ())
        .expect_err("the open must be refused");
    assert_eq!(refused.code, 1, "{refused:?}");
    let why = refused.description.clone().unwrap_or_default();
    assert!(why.contains("no service \"nobody-home\""), "{why}");
    assert!(started.elapsed() < AT_ONCE);
    server.shutdown().await;
}

/// `Peer::dispatch`: each channel goes to the function as it arrives (no
/// accept loop), the claim excludes acceptors of the same service, a
/// fallback dispatch gets unclaimed services, and dropping it releases
/// the services at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_hands_each_channel_to_its_function_until_dropped() {
    let p = pair(Transport::Tcp).await;
    let (seen_tx, mut seen) = mpsc::channel::<String>(64);
    let dispatch = p
        .server
        .dispatch(["echo"], move |incoming| {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let _ = seen.send(incoming.service().to_owned()).await;
                let ch = incoming.accept().await;
                let (mut r, mut w) = ch.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        })
        .unwrap()
        .fallback();
    assert_eq!(dispatch.services().collect::<Vec<_>>(), ["echo"]);
    assert!(matches!(
        p.server.acceptor(["echo"]),
        Err(ClaimError::Taken { .. })
    ));
    // Twenty channels at once, to the claimed service and (as the
    // fallback) to one nobody claimed; each echoes.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = p.client.clone();
        let service = if i % 2 == 0 { "echo" } else { "unclaimed" };
        tasks.push(tokio::spawn(async move {
            let mut ch = client
                .open("server", service, Headers::new())
                .await
                .unwrap();
            let msg = format!("message {i}");
            ch.write_all(msg.as_bytes()).await.unwrap();
            ch.close_write().await.unwrap();
            let mut back = String::new();
            ch.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    within(30, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    let mut services = Vec::new();
    for _ in 0..20 {
        services.push(within(10, seen.recv()).await.unwrap());
    }
    services.sort();
    assert_eq!(services.iter().filter(|s| *s == "echo").count(), 10);
    assert_eq!(services.iter().filter(|s| *s == "unclaimed").count(), 10);
    // Dropped: refused at once, and the service can be claimed again.
    drop(dispatch);
    let started = Instant::now();
    let e = p
        .client
        .open("server", "echo", Headers::new())
        .await
        .unwrap_err();
    assert!(matches!(e, OpenError::NoService { .. }), "{e:?}");
    assert!(started.elapsed() < AT_ONCE);
    let _again = p.server.acceptor(["echo"]).unwrap();
    p.shutdown().await;
}

/// Channels that arrived while the peer routed nothing, and waited for a
/// late `accept`, go to a dispatch claimed for their service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_takes_the_channels_queued_before_it() {
    let p = pair(Transport::Tcp).await;
    let client = p.client.clone();
    let opening = tokio::spawn(async move {
        let mut ch = client.open("server", "late", Headers::new()).await?;
        ch.write_all(b"hi").await?;
        ch.close_write().await?;
        let mut back = Vec::new();
        ch.read_to_end(&mut back).await?;
        anyhow::Ok(back)
    });
    arrived(&p.server, 1).await;
    let _late = p
        .server
        .dispatch(["late"], |incoming| {
            tokio::spawn(async move {
                let mut ch = incoming.accept().await;
                let mut got = Vec::new();
                if ch.read_to_end(&mut got).await.is_ok() {
                    let _ = ch.write_all(&got).await;
                    let _ = ch.close_write().await;
                }
            });
        })
        .unwrap();
    assert_eq!(within(10, opening).await.unwrap().unwrap(), b"hi");
    p.shutdown().await;
}
