//! `Peer::accept_at_once`: the session accepts a registered service's
//! channels as they arrive (the opener's `open` returns before the
//! application has taken the channel); the application still takes them
//! through `accept`; refusing one that was accepted at once closes it
//! without breaking the protocol; and dropping the guard brings back the
//! wait for the application.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use duplex::{Config, Headers};
use duplex_tests::{Transport, pair, pair_with, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_returns_before_the_application_takes_the_channel() {
    let p = pair(Transport::Tcp).await;
    let guard = p.server.accept_at_once("echo");
    // Nobody calls accept yet: without acceptance at once this open would
    // wait for the application (and time out).
    let mut ch = within(10, p.client.open("server", "echo", Headers::new()))
        .await
        .unwrap();
    // Data may flow before the application takes the channel: its
    // initial window came with the ACCEPT.
    ch.write_all(b"early").await.unwrap();
    let incoming = within(10, p.server.accept()).await.unwrap();
    assert_eq!(incoming.service(), "echo");
    let mut served = within(10, incoming.accept()).await;
    let mut got = [0u8; 5];
    within(10, served.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"early");
    served.write_all(b"reply").await.unwrap();
    within(10, ch.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"reply");

    // Another service still waits for the application's answer.
    let other = tokio::spawn({
        let client = p.client.clone();
        async move { client.open("server", "other", Headers::new()).await }
    });
    let incoming = within(10, p.server.accept()).await.unwrap();
    assert_eq!(incoming.service(), "other");
    assert!(
        !other.is_finished(),
        "an unregistered service was accepted at once"
    );
    let _other_served = incoming.accept().await;
    drop(within(10, other).await.unwrap().unwrap());

    // Dropping the guard ends it: the next echo waits for the answer too.
    drop(guard);
    let waiting = tokio::spawn({
        let client = p.client.clone();
        async move { client.open("server", "echo", Headers::new()).await }
    });
    let incoming = within(10, p.server.accept()).await.unwrap();
    assert!(
        !waiting.is_finished(),
        "accepted at once after the guard was dropped"
    );
    incoming.reject("not now").await;
    let err = within(10, waiting).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("not now"), "{err}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_channel_accepted_at_once_closes_it_and_the_connection_serves_on() {
    let p = pair(Transport::Memory).await;
    let _guard = p.server.accept_at_once("svc");
    let mut ch = within(10, p.client.open("server", "svc", Headers::new()))
        .await
        .unwrap();
    let incoming = within(10, p.server.accept()).await.unwrap();
    incoming.reject("changed my mind").await;
    // No REJECT may follow an ACCEPT: the opener sees its channel end.
    let mut buf = [0u8; 8];
    let n = within(10, ch.read(&mut buf)).await.unwrap();
    assert_eq!(n, 0, "expected the end of the channel");
    within(10, ch.closed()).await;
    // Dropping an IncomingChannel does the same.
    let mut ch = within(10, p.client.open("server", "svc", Headers::new()))
        .await
        .unwrap();
    drop(within(10, p.server.accept()).await.unwrap());
    assert_eq!(within(10, ch.read(&mut buf)).await.unwrap(), 0);
    // Neither side saw a protocol violation: the connection serves on.
    let mut again = within(10, p.client.open("server", "svc", Headers::new()))
        .await
        .unwrap();
    let mut served = within(10, p.server.accept()).await.unwrap().accept().await;
    again.write_all(b"ok").await.unwrap();
    let mut got = [0u8; 2];
    within(10, served.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ok");
    assert_eq!(p.client.peers().len(), 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_accepted_at_once_and_never_taken_is_closed_after_the_accept_timeout() {
    let wait = Duration::from_millis(300);
    let server_config = Config::default()
        .accept_timeout(wait)
        .unwrap()
        .max_pending_channels(1)
        .unwrap();
    let p = pair_with(Transport::Tcp, server_config, Config::default()).await;
    let _guard = p.server.accept_at_once("svc");
    for _ in 0..3 {
        // Accepted at once, then left in the queue: closed by the bound,
        // and its pending slot comes back (one slot only, three rounds).
        let mut ch = within(10, p.client.open("server", "svc", Headers::new()))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(within(10, ch.read(&mut buf)).await.unwrap(), 0);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // The expired ones are skipped by accept; a fresh one is handed out.
    let mut ch = within(10, p.client.open("server", "svc", Headers::new()))
        .await
        .unwrap();
    let mut served = within(10, p.server.accept()).await.unwrap().accept().await;
    ch.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    within(10, served.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"hi");
    p.shutdown().await;
}
