//! Issue 18, point 2: a daemon has things to wait on. `Peer::wait_for_peer`
//! waits for a named peer with no time limit, `Peer::closed` resolves once
//! the peer is shut down, `ServerHandle::wait` once its server has stopped,
//! and `Backoff::forever` keeps a first `connect` trying.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use duplex::{Backoff, Config};
use duplex_rpc::{CallContext, Client, Router, Server, Status};
use duplex_tests::{echo_once, echo_server, ids, init_tracing, peer_trusting, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_peer_outlasts_the_peer_wait_timeout() {
    init_tracing();
    let (sid, cid) = ids();
    // `open` to a name gives up after 200 ms here; the wait does not.
    let config = Config::default().peer_wait_timeout(Duration::from_millis(200));
    let server = peer_trusting("server", &sid, &[&cid], config);
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let waiting = tokio::spawn({
        let server = server.clone();
        async move { server.wait_for_peer("client").await }
    });
    // Three times the open's limit passes with nobody connected; the wait
    // is still on.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!waiting.is_finished(), "wait_for_peer gave up on its own");
    let client = peer_trusting("client", &cid, &[&sid], Config::default());
    client.connect(&ep).await.unwrap();
    let info = within(10, waiting).await.unwrap().expect("a peer");
    assert_eq!(info.name, "client");
    // Already connected: at once.
    let again = within(10, server.wait_for_peer("client")).await.unwrap();
    assert_eq!(again.fingerprint, info.fingerprint);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_peer_ends_with_the_peer() {
    init_tracing();
    let (sid, _) = ids();
    let server = peer_trusting("server", &sid, &[], Config::default());
    let waiting = tokio::spawn({
        let server = server.clone();
        async move { server.wait_for_peer("nobody").await }
    });
    let closed = tokio::spawn({
        let server = server.clone();
        async move { server.closed().await }
    });
    tokio::task::yield_now().await;
    assert!(!closed.is_finished());
    // A clone shuts the peer down: both waits end.
    server.clone().shutdown().await;
    assert!(within(10, waiting).await.unwrap().is_none());
    within(10, closed).await.unwrap();
    // And a wait started afterwards ends at once.
    assert!(within(10, server.wait_for_peer("nobody")).await.is_none());
    within(10, server.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_wait_resolves_once_its_peer_is_shut_down() {
    init_tracing();
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let router = Router::new().unary(
        "Calc.Add",
        |_ctx: CallContext, (a, b): (i64, i64)| async move { Ok::<_, Status>(a + b) },
    );
    let handle = Server::new(router).serve(&server).unwrap();
    let client = peer_trusting("client", &cid, &[&sid], Config::default());
    client.connect(&ep).await.unwrap();
    let sum: i64 = within(
        10,
        Client::new(client.clone())
            .to("server")
            .call("Calc.Add", &(40, 2)),
    )
    .await
    .unwrap();
    assert_eq!(sum, 42);
    // Serving: `wait` does not return.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), handle.wait())
            .await
            .is_err()
    );
    server.clone().shutdown().await;
    within(10, handle.wait()).await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forever_backoff_outlasts_the_default_attempts() {
    init_tracing();
    let (sid, cid) = ids();
    // Nothing listens yet. The default backoff gives up after 8 attempts;
    // this one, with short waits, passes 8 attempts well before the
    // listener appears, and connects when it does.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = format!("tcp://127.0.0.1:{port}");
    let backoff = Backoff::forever()
        .initial(Duration::from_millis(5))
        .factor(1.0)
        .max_interval(Duration::from_millis(5));
    let config = Config::default().connect_backoff(backoff).unwrap();
    let client = peer_trusting("client", &cid, &[&sid], config);
    let mut events = client.events();
    let dial = tokio::spawn({
        let client = client.clone();
        let ep = ep.clone();
        async move { client.connect(ep.as_str()).await }
    });
    // Wait until the dialler has failed more than the default 8 attempts.
    loop {
        match within(10, events.recv()).await {
            Some(duplex::PeerEvent::Reconnecting { attempt, .. }) if attempt > 8 => break,
            Some(_) => {}
            None => panic!("events ended"),
        }
    }
    assert!(!dial.is_finished(), "connect gave up");
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    server.bind(ep.as_str()).await.unwrap();
    echo_server(&server);
    within(30, dial).await.unwrap().unwrap();
    echo_once(&client, 100).await;
    client.shutdown().await;
    server.shutdown().await;
}

#[test]
fn out_of_range_backoff_values_are_refused_where_the_backoff_is_used() {
    let err = Config::default()
        .connect_backoff(Backoff::default().initial(Duration::ZERO))
        .unwrap_err();
    assert!(err.to_string().contains("backoff initial"), "{err}");
    let err = Config::default()
        .connect_backoff(Backoff::forever().factor(0.5))
        .unwrap_err();
    assert!(err.to_string().contains("backoff factor"), "{err}");
}
