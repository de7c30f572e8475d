//! Issue 4: connect retry, re-dialling, peer events, waiting opens,
//! graceful shutdown, and resources staying flat over many reconnects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::{Backoff, Config, ConnectError, Headers, OpenError, Peer, PeerEvent};
use duplex_tests::{echo_once, echo_server, ids, init_tracing, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn fast_backoff() -> Backoff {
    Backoff::default()
        .initial(Duration::from_millis(20))
        .factor(1.5)
        .max_interval(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waits_for_a_listener_that_appears_later() {
    init_tracing();
    let (sid, cid) = ids();
    let port = free_port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let config = Config::default().connect_backoff(fast_backoff()).unwrap();
    let client = peer_trusting("client", &cid, &[&sid], config);
    let mut events = client.events();
    let c = client.clone();
    let e = ep.clone();
    let dialling = tokio::spawn(async move { c.connect(e.as_str()).await });
    // The listener appears once the client has failed and retried.
    let mut retries = 0;
    while retries < 2 {
        if let Some(PeerEvent::Reconnecting { reason, .. }) = within(10, events.recv()).await {
            assert!(reason.contains("cannot reach"), "{reason}");
            retries += 1;
        }
    }
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    server.bind(ep.as_str()).await.unwrap();
    let info = within(10, dialling).await.unwrap().unwrap();
    assert_eq!(info.name, "server");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_gives_up_within_its_bounds() {
    init_tracing();
    let ep = format!("tcp://127.0.0.1:{}", free_port());
    for (attempts, total) in [(Some(4), None), (None, Some(Duration::from_millis(700)))] {
        let backoff = fast_backoff().max_attempts(attempts).max_elapsed(total);
        let client = Peer::builder()
            .config(Config::default().connect_backoff(backoff).unwrap())
            .build()
            .unwrap();
        let mut events = client.events();
        let start = Instant::now();
        let err = within(30, client.connect(ep.as_str())).await.unwrap_err();
        let took = start.elapsed();
        let ConnectError::GaveUp {
            endpoint,
            attempts: made,
            last,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(endpoint, &ep);
        assert!(matches!(**last, ConnectError::Io { .. }), "{last:?}");
        let msg = duplex::error::full_text(&err);
        assert!(msg.contains(&ep) && msg.contains("refused"), "{msg}");
        if let Some(max) = attempts {
            assert_eq!(*made, max);
        }
        if let Some(total) = total {
            assert!(took <= total + Duration::from_millis(300), "{took:?}");
        }
        // One Reconnecting event per retry.
        let mut retries = 0;
        while let Ok(Some(e)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
            if matches!(e, PeerEvent::Reconnecting { .. }) {
                retries += 1;
            }
        }
        assert_eq!(retries, made - 1);
        client.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_host_key_failures_are_not_retried() {
    init_tracing();
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[], Config::default()); // trusts nobody
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let client = peer_trusting("client", &cid, &[&sid], Config::default());
    let start = Instant::now();
    let err = client.connect(&ep).await.unwrap_err();
    assert!(matches!(err, ConnectError::AuthRejected { .. }), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let stranger = peer_trusting("stranger", &cid, &[&cid], Config::default());
    let err = stranger.connect(&ep).await.unwrap_err();
    assert!(matches!(err, ConnectError::HostKey { .. }), "{err:?}");
    for p in [server, client, stranger] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_redialled_and_channels_fail_clearly() {
    init_tracing();
    let (sid, cid) = ids();
    let port = free_port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    server.bind(ep.as_str()).await.unwrap();
    echo_server(&server);
    let config = Config::default().connect_backoff(fast_backoff()).unwrap();
    let client = peer_trusting("client", &cid, &[&sid], config);
    let mut events = client.events();
    client.connect(ep.as_str()).await.unwrap();
    assert!(matches!(events.recv().await, Some(PeerEvent::Connected(_))));
    echo_once(&client, 1 << 20).await;
    // A channel open when the server goes away.
    let mut open = client.open("server", "echo", Headers::new()).await.unwrap();
    open.write_all(b"x").await.unwrap();
    server.shutdown().await;
    let mut buf = Vec::new();
    let err = within(10, open.read_to_end(&mut buf)).await.unwrap_err();
    assert!(err.to_string().contains("connection lost"), "{err}");
    match within(10, events.recv()).await {
        Some(PeerEvent::Disconnected { peer, reason }) => {
            assert_eq!(peer.name, "server");
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Re-dialled while the server is away, and connected once it is back.
    match within(10, events.recv()).await {
        Some(PeerEvent::Reconnecting { endpoint, .. }) => assert_eq!(endpoint, ep),
        other => panic!("{other:?}"),
    }
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    server.bind(ep.as_str()).await.unwrap();
    echo_server(&server);
    within(20, async {
        loop {
            if let Some(PeerEvent::Connected(info)) = events.recv().await {
                assert_eq!(info.name, "server");
                break;
            }
        }
    })
    .await;
    echo_once(&client, 1 << 20).await;
    // `disconnect` stops re-dialling.
    assert!(client.disconnect(ep.as_str()).await);
    assert!(client.peers().is_empty());
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_waits_for_a_peer_up_to_the_timeout() {
    init_tracing();
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    let config = Config::default().peer_wait_timeout(Duration::from_secs(5));
    let client = peer_trusting("client", &cid, &[&sid], config);
    let c = client.clone();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await; // the scenario: a late peer
        c.connect(&ep).await.unwrap();
    });
    let start = Instant::now();
    echo_once(&client, 1000).await;
    assert!(start.elapsed() >= Duration::from_secs(2));
    late.await.unwrap();
    // A peer that never comes: fails at the timeout, naming it.
    let quick = Config::default().peer_wait_timeout(Duration::from_millis(500));
    let lonely = peer_trusting("lonely", &cid, &[], quick);
    let start = Instant::now();
    let err = lonely
        .open("nobody", "echo", Headers::new())
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, OpenError::NoSuchPeer { .. }), "{err:?}");
    assert!(err.to_string().contains("nobody") && err.to_string().contains("500ms"));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    for p in [server, client, lonely] {
        p.shutdown().await;
    }
}
