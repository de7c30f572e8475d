//! Issue 18, point 3: `open` waits for room instead of failing. A burst of
//! 1,000 opens under the default limits all succeed, each channel held
//! open until every one is open; 3,000 at once (more than a connection's
//! receive buffer and channel limit allow) wait for room as others close;
//! and an open that waits for a peer that is re-dialling makes it dial now,
//! not after its backoff's current delay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use duplex::{Backoff, Config, Headers, Peer, PeerEvent};
use duplex_tests::{Transport, echo_server, ids, pair, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_opens_under_default_limits_succeeds() {
    // Every channel is held open until all are: none may be refused.
    burst(1000, true).await;
}

/// More opens at once than the connection's channel limit: the ones over
/// it wait for room (channels closing) rather than failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_over_the_channel_limit_wait_for_room() {
    burst(3000, false).await;
}

/// `n` tasks each open an echo channel at once and check their echo;
/// with `hold`, no channel sends until every one is open.
async fn burst(n: usize, hold: bool) {
    let p = pair(Transport::Tcp).await;
    echo_server(&p.server);
    let all_open = Arc::new(Barrier::new(if hold { n } else { 1 }));
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = p.client.clone();
        let all_open = all_open.clone();
        tasks.push(tokio::spawn(async move {
            let mut ch = client
                .open("server", "echo", Headers::new())
                .await
                .unwrap_or_else(|e| panic!("open {i}: {e}"));
            all_open.wait().await;
            let msg = format!("channel {i}");
            ch.write_all(msg.as_bytes()).await.unwrap();
            ch.close_write().await.unwrap();
            let mut back = String::new();
            ch.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    within(120, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_waiting_for_a_reconnecting_peer_redials_now() {
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    // The client's backoff waits at least 30 s before its first re-dial,
    // three times its wait for a peer (10 s): only an immediate re-dial
    // lets the open below succeed.
    let slow = Backoff::default()
        .initial(Duration::from_secs(60))
        .max_interval(Duration::from_secs(60));
    let client = peer_trusting(
        "client",
        &cid,
        &[&sid],
        Config::default().connect_backoff(slow).unwrap(),
    );
    let mut events = client.events();
    client.connect(&ep).await.unwrap();
    // The remote restarts: the client sees the loss and waits to re-dial.
    server.shutdown().await;
    within(30, async {
        while !matches!(events.recv().await, Some(PeerEvent::Reconnecting { .. })) {}
    })
    .await;
    let again = restart(&sid, &cid, &ep.to_string()).await;
    echo_server(&again);
    let mut ch = within(20, client.open("server", "echo", Headers::new()))
        .await
        .expect("the open waited for the re-dial's backoff");
    ch.write_all(b"back").await.unwrap();
    ch.close_write().await.unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"back");
    client.shutdown().await;
    again.shutdown().await;
}

/// The server again, on the same address (its old socket may linger
/// briefly).
async fn restart(sid: &duplex::Identity, cid: &duplex::Identity, ep: &str) -> Peer {
    let p = peer_trusting("server", sid, &[cid], Config::default());
    within(30, async {
        while p.bind(ep).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    p
}
