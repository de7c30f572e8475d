//! Issue 4, point 5: 1,000 disconnect/re-dial cycles leave file
//! descriptors, tasks and memory flat. Alone in its test binary, so the
//! process-wide measurements see no other test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::{Backoff, Config, PeerEvent};
use duplex_tests::{
    echo_once, echo_server, ids, init_tracing, open_fds, peer_trusting, rss_kib, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reconnects_leave_resources_flat() {
    init_tracing();
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    let backoff = Backoff::default()
        .initial(Duration::from_millis(1))
        .max_interval(Duration::from_millis(5));
    let client = peer_trusting(
        "client",
        &cid,
        &[&sid],
        Config::default().connect_backoff(backoff).unwrap(),
    );
    let mut events = client.events();
    client.connect(&ep).await.unwrap();
    assert!(matches!(events.recv().await, Some(PeerEvent::Connected(_))));
    // One cycle: the server drops the client, which re-dials by itself;
    // a channel works on the new connection.
    let mut cycle = async |n: usize| {
        for _ in 0..n {
            assert!(server.drop_peer("client").await);
            loop {
                if let Some(PeerEvent::Connected(_)) = within(10, events.recv()).await {
                    break;
                }
            }
            echo_once(&client, 100).await;
        }
    };
    // Warm up (allocator pools, lazily created state), then measure.
    within(60, cycle(50)).await;
    let rt = tokio::runtime::Handle::current();
    let (fds, tasks, rss) = (open_fds(), rt.metrics().num_alive_tasks(), rss_kib());
    let start = Instant::now();
    within(600, cycle(1000)).await;
    let (fds2, tasks2, rss2) = (open_fds(), rt.metrics().num_alive_tasks(), rss_kib());
    eprintln!(
        "1000 cycles in {:?}: fds {fds} -> {fds2}, tasks {tasks} -> {tasks2}, rss {rss} KiB -> {rss2} KiB",
        start.elapsed()
    );
    assert!(fds2 <= fds + 2, "file descriptors grew: {fds} -> {fds2}");
    assert!(tasks2 <= tasks + 2, "tasks grew: {tasks} -> {tasks2}");
    assert!(rss2 <= rss + 16 * 1024, "memory grew: {rss} -> {rss2} KiB");
    client.shutdown().await;
    server.shutdown().await;
}
