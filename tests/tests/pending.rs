//! Issue 15, the bug: every open is answered in bounded time. A channel the
//! application never accepts (top-level or nested, Duplex or plain) is
//! rejected after `Config::accept_timeout` with a reason saying so, and its
//! pending slot is free again; a peer that takes no channels, or no nested
//! ones, says so at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::{Config, Headers, OpenError};
use duplex_tests::wire::WireConn;
use duplex_tests::{Transport, within};
use duplex_tests::{ids, init_tracing, open_pair, pair_with, peer_trusting};

const WAIT: Duration = Duration::from_millis(300);

fn rejected(r: Result<duplex::Channel, OpenError>) -> String {
    match r {
        Err(OpenError::Rejected { reason, .. }) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_level_open_nobody_accepts_is_rejected_and_its_slot_freed() {
    // The server never calls accept; two pending slots only.
    let server_config = Config::default()
        .accept_timeout(WAIT)
        .unwrap()
        .max_pending_channels(2)
        .unwrap();
    let p = pair_with(Transport::Tcp, server_config, Config::default()).await;
    for round in 0..3 {
        let started = Instant::now();
        let (a, b) = tokio::join!(
            p.client.open("server", "nobody-home", Headers::new()),
            p.client.open("server", "nobody-home", Headers::new()),
        );
        for r in [a, b] {
            let reason = rejected(r);
            assert!(
                reason.contains("\"nobody-home\" was not accepted within 300ms")
                    && reason.contains("on server")
                    && reason.contains("Config::accept_timeout"),
                "round {round}: {reason}"
            );
        }
        // Rejected by the bound, not at once, and long before open_timeout.
        let took = started.elapsed();
        assert!(took >= WAIT && took < Duration::from_secs(10), "{took:?}");
    }
    // Both slots were released each round, or round 2 would have been
    // refused for "too many channels waiting to be accepted".
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_skips_the_channels_that_timed_out() {
    let server_config = Config::default().accept_timeout(WAIT).unwrap();
    let p = pair_with(Transport::Memory, server_config, Config::default()).await;
    let late = rejected(p.client.open("server", "too-late", Headers::new()).await);
    assert!(late.contains("was not accepted within"), "{late}");
    // The expired one is still in the queue; accept hands out the next.
    let (opened, accepted) = open_pair(&p.client, &p.server, "server", "in-time").await;
    assert_eq!(accepted.service(), "in-time");
    drop((opened, accepted));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_open_nobody_accepts_is_rejected() {
    let server_config = Config::default().accept_timeout(WAIT).unwrap();
    let p = pair_with(Transport::Tcp, server_config, Config::default()).await;
    // The server accepts the parent and echoes on it, like the echo
    // example, but never takes nested channels.
    let (parent, _server_side) = open_pair(&p.client, &p.server, "server", "echo").await;
    let started = Instant::now();
    let reason = rejected(within(10, parent.open("child", Headers::new())).await);
    assert!(
        reason.contains("\"child\" was not accepted within 300ms")
            && reason.contains("nested channels of \"echo\"")
            && reason.contains("Config::accept_timeout"),
        "{reason}"
    );
    assert!(started.elapsed() >= WAIT);
    // The parent is unharmed.
    assert!(
        tokio::time::timeout(Duration::from_millis(1), parent.closed())
            .await
            .is_err()
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_no_channels_says_so_at_once() {
    // The dialler serves nothing (like `echo send` or `duplex open`): the
    // listener's opens to it are refused at once, with the reason.
    let client_config = Config::default().accept_channels(false);
    let p = pair_with(Transport::Tcp, Config::default(), client_config).await;
    let started = Instant::now();
    let reason = rejected(p.server.open("client", "callback", Headers::new()).await);
    assert!(
        reason.contains("client accepts no channels") && reason.contains("accept_channels"),
        "{reason}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_takes_no_nested_channels_says_so_at_once() {
    let server_config = Config::default().max_nesting_depth(0).unwrap();
    let p = pair_with(Transport::Tcp, server_config, Config::default()).await;
    let (parent, _server_side) = open_pair(&p.client, &p.server, "server", "echo").await;
    let reason = rejected(within(5, parent.open("child", Headers::new())).await);
    assert!(
        reason.contains("server takes no nested channels")
            && reason.contains("max_nesting_depth is 0"),
        "{reason}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_nobody_accepts_gets_an_open_failure() {
    init_tracing();
    let (sid, cid) = ids();
    let config = Config::default().accept_timeout(WAIT).unwrap();
    let server = peer_trusting("server", &sid, &[&cid], config);
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
    assert!(started.elapsed() >= WAIT);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_that_lost_the_race_fails_at_once() {
    let server_config = Config::default().accept_timeout(WAIT).unwrap();
    let p = pair_with(Transport::Tcp, server_config, Config::default()).await;
    let client = p.client.clone();
    let opening = tokio::spawn(async move { client.open("server", "slow", Headers::new()).await });
    // The application takes the channel in time but decides too late.
    let incoming = within(10, p.server.accept()).await.unwrap();
    let reason = rejected(within(10, opening).await.unwrap());
    assert!(reason.contains("was not accepted within"), "{reason}");
    let mut ch = incoming.accept().await;
    match within(5, ch.read_frame()).await {
        Err(duplex::ChannelError::NotAccepted(why)) => {
            assert!(why.contains("Config::accept_timeout"), "{why}")
        }
        other => panic!("expected NotAccepted, got {other:?}"),
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_channels_give_their_buffer_back() {
    // Room for two 1 MiB windows: the parent's and one child's. Each child
    // nobody accepts must give its share back when it expires, or the next
    // one is refused for a full buffer instead.
    let server_config = Config::default()
        .accept_timeout(WAIT)
        .unwrap()
        .max_connection_buffer(2 << 20)
        .unwrap();
    let p = pair_with(Transport::Tcp, server_config, Config::default()).await;
    let (parent, _server_side) = open_pair(&p.client, &p.server, "server", "echo").await;
    for round in 0..4 {
        let reason = rejected(within(10, parent.open("child", Headers::new())).await);
        assert!(
            reason.contains("was not accepted within"),
            "round {round}: {reason}"
        );
    }
    p.shutdown().await;
}
