//! Issue 4 through the fault-injection proxy: a cut, a reset and a stall
//! mid-transfer fail the transfer promptly with a clear error, and the
//! dialler reconnects by itself; keepalives detect a stalled connection
//! within their bound and keep an idle healthy one up for hours.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::fault::FaultProxy;
use duplex::{Backoff, Config, Headers, Identity, Peer, PeerEvent};
use duplex_tests::{Transport, echo_server, init_tracing, pair, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> Config {
    let backoff = Backoff::default()
        .initial(Duration::from_millis(20))
        .max_interval(Duration::from_millis(200));
    Config::default()
        .connect_backoff(backoff)
        .unwrap()
        .keepalive_interval(Some(Duration::from_millis(250)))
        .keepalive_max(2)
        .handshake_timeout(Duration::from_secs(3))
}

/// An echo server, a fault proxy in front of it, and a client connected
/// through the proxy, with the client's events.
async fn through_proxy() -> (Peer, FaultProxy, Peer, duplex::PeerEvents) {
    init_tracing();
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let server = peer_trusting("server", &sid, &[&cid], config());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    let upstream = ep.to_string().trim_start_matches("tcp://").parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let client = peer_trusting("client", &cid, &[&sid], config());
    let mut events = client.events();
    client.connect(proxy.endpoint().as_str()).await.unwrap();
    assert!(matches!(events.recv().await, Some(PeerEvent::Connected(_))));
    (server, proxy, client, events)
}

/// Waits for the client's next `Connected` event.
async fn reconnected(events: &mut duplex::PeerEvents) {
    within(20, async {
        loop {
            if let Some(PeerEvent::Connected(_)) = events.recv().await {
                break;
            }
        }
    })
    .await;
}

/// Streams through an echo channel until it fails; returns the error.
async fn stream_until_error(client: Peer, started: tokio::sync::oneshot::Sender<()>) -> String {
    let ch = client.open("server", "echo", Headers::new()).await.unwrap();
    let (mut r, mut w) = ch.split();
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 32 << 10];
        while w.write_all(&chunk).await.is_ok() {}
    });
    let mut started = Some(started);
    let mut buf = vec![0u8; 64 << 10];
    let err = loop {
        match r.read(&mut buf).await {
            Ok(0) => break "clean EOF".to_owned(),
            Ok(_) => {
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
            Err(e) => break e.to_string(),
        }
    };
    writer.abort();
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_reset_and_stall_fail_promptly_and_the_dialler_reconnects() {
    let (server, proxy, client, mut events) = through_proxy().await;
    for fault in ["cut", "reset", "stall", "truncate"] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let transfer = tokio::spawn(stream_until_error(client.clone(), tx));
        within(10, rx).await.unwrap();
        let start = Instant::now();
        match fault {
            "cut" => proxy.cut(),
            "reset" => proxy.reset(),
            "stall" => proxy.stall(),
            _ => proxy.truncate_after(1000),
        }
        let err = within(10, transfer).await.unwrap();
        let took = start.elapsed();
        assert!(err.contains("connection lost"), "{fault}: {err}");
        // Keepalive bound for a stall: 250 ms × (2 + 1), plus scheduling.
        let bound = if fault == "stall" { 2500 } else { 1000 };
        assert!(
            took < Duration::from_millis(bound),
            "{fault}: noticed after {took:?}"
        );
        eprintln!("{fault}: transfer failed after {took:?}: {err}");
        proxy.resume();
        reconnected(&mut events).await;
        let mut ch = client.open("server", "echo", Headers::new()).await.unwrap();
        ch.write_all(b"after").await.unwrap();
        ch.close_write().await.unwrap();
        let mut back = Vec::new();
        within(10, ch.read_to_end(&mut back)).await.unwrap();
        assert_eq!(back, b"after", "{fault}");
    }
    client.shutdown().await;
    server.shutdown().await;
}

/// With tokio's clock paused, two hours pass in an instant: keepalives go
/// back and forth, russh rekeys after an hour, and nothing drops the idle
/// connection.
#[tokio::test(start_paused = true)]
async fn an_idle_healthy_connection_stays_up_for_hours() {
    let p = pair(Transport::Memory).await;
    let mut events = p.client.events();
    echo_server(&p.server);
    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    assert_eq!(p.client.peers().len(), 1);
    assert_eq!(p.server.peers().len(), 1);
    let mut ch = p
        .client
        .open("server", "echo", Headers::new())
        .await
        .unwrap();
    ch.write_all(b"still here").await.unwrap();
    ch.close_write().await.unwrap();
    let mut back = Vec::new();
    ch.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"still here");
    if let Ok(Some(e)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
        panic!("unexpected event on an idle connection: {e:?}");
    }
    p.shutdown().await;
}

/// A connection reset mid-transfer, twenty times: every error the channel
/// gives, on the write side and the read side, names the peer, the
/// endpoint and the cause, whichever path notices the loss first (the
/// write path used to fail first, with "the session stopped accepting
/// data: Channel send error").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_a_lost_connection_names_peer_endpoint_and_cause() {
    let (server, proxy, client, mut events) = through_proxy().await;
    let named = format!("connection to server ({}) lost: ", proxy.endpoint());
    for round in 0..20 {
        let ch = client.open("server", "echo", Headers::new()).await.unwrap();
        let (mut r, mut w) = ch.split();
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 32 << 10];
            loop {
                if let Err(e) = w.write_all(&chunk).await {
                    break e.to_string();
                }
            }
        });
        let mut buf = vec![0u8; 64 << 10];
        assert!(within(10, r.read(&mut buf)).await.unwrap() > 0);
        proxy.reset();
        let read_err = within(10, async {
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => break "clean EOF".to_owned(),
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
            }
        })
        .await;
        let write_err = within(10, writer).await.unwrap();
        for (side, err) in [("read", &read_err), ("write", &write_err)] {
            let cause = err.split(&named).nth(1).unwrap_or_default();
            assert!(
                err.starts_with("connection lost: ") && !cause.is_empty(),
                "round {round}, {side}: {err}"
            );
        }
        if round == 0 {
            eprintln!("read: {read_err}\nwrite: {write_err}");
        }
        proxy.resume();
        reconnected(&mut events).await;
    }
    client.shutdown().await;
    server.shutdown().await;
}
