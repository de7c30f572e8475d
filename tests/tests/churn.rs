//! Channel churn on one long-lived connection: opening and closing
//! channels (plain ones and RPC calls, in both directions) leaves nothing
//! behind on either side. Alone in its test binary, so the process-wide
//! heap count sees no other test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use duplex::Peer;
use duplex_rpc::{CallContext, Client, Router, Server, Status};
use duplex_tests::{Transport, echo_once, echo_server, pair, within};

mod jemalloc;
use jemalloc::heap_kib;

/// Heap growth allowed over a batch, whatever its size: allocator and
/// table slack (hash maps keep their capacity), far below what a
/// kilobyte per channel would leave.
const SLACK_KIB: u64 = 2048;

async fn calls(client: &Client, n: usize, tasks: usize) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let client = client.clone();
        set.spawn(async move {
            for i in 0..n / tasks {
                let x = (t * n + i) as i64;
                let y: i64 = client.call("Churn.Inc", &x).await.unwrap();
                assert_eq!(y, x + 1);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

async fn echoes(from: &Peer, to: &str, n: usize, tasks: usize) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let from = from.clone();
        let to = to.to_owned();
        set.spawn(async move {
            for _ in 0..n / tasks {
                duplex_tests::echo_with(&from, &to, 100).await;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Waits until neither side has a channel left in its tables.
async fn settled(a: &Peer, a_name: &str, b: &Peer, b_name: &str) {
    within(10, async {
        while a.channel_stats(b_name).0 + b.channel_stats(a_name).0 > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind_on_either_side() {
    let p = pair(Transport::Tcp).await;
    let router = || {
        Router::new().unary("Churn.Inc", |_ctx: CallContext, x: i64| async move {
            Ok::<_, Status>(x + 1)
        })
    };
    let _s1 = Server::new(router()).serve(&p.server).unwrap();
    let _s2 = Server::new(router()).serve(&p.client).unwrap();
    let to_server = Client::new(p.client.clone()).to("server");
    let to_client = Client::new(p.server.clone()).to("client");
    // Plain channels on a second pair: the RPC servers take every channel
    // their peers accept.
    let e = pair(Transport::Tcp).await;
    echo_server(&e.server);
    echo_once(&e.client, 10).await;

    // Warm up: tables, pools and the allocator reach their working size.
    let round = async || {
        calls(&to_server, 2_000, 16).await;
        calls(&to_client, 2_000, 16).await;
        echoes(&e.client, "server", 1_000, 8).await;
        settled(&p.client, "client", &p.server, "server").await;
        settled(&e.client, "client", &e.server, "server").await;
    };
    within(120, round()).await;
    let before = heap_kib();
    for _ in 0..4 {
        within(120, round()).await;
    }
    let after = heap_kib();
    // 20,000 channels over the four rounds.
    assert!(
        after <= before + SLACK_KIB,
        "the heap grew from {before} KiB to {after} KiB over 20,000 channels opened and closed: \
         about {} bytes left behind per channel",
        (after.saturating_sub(before)) * 1024 / 20_000
    );
    p.shutdown().await;
    e.shutdown().await;
}
