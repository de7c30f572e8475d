//! Issue 4, point 6: `shutdown` during 100 busy channels drains or closes
//! them all within the drain timeout and leaves no task running. Alone in
//! its test binary, so the runtime's task count sees no other test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use duplex::{Config, ConnectError, Headers};
use duplex_tests::{echo_server, ids, init_tracing, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_busy_channels_within_the_timeout() {
    init_tracing();
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let (sid, cid) = ids();
    let drain = Duration::from_secs(1);
    let server = peer_trusting(
        "server",
        &sid,
        &[&cid],
        Config::default().drain_timeout(drain),
    );
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    let client = peer_trusting("client", &cid, &[&sid], Config::default());
    client.connect(&ep).await.unwrap();
    // 100 channels streaming; half finish on their own during the drain.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let ch = client.open("server", "echo", Headers::new()).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = ch.split();
            let reader = tokio::spawn(async move {
                let mut sink = vec![0u8; 64 << 10];
                loop {
                    match r.read(&mut sink).await {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
            });
            let chunk = vec![7u8; 16 << 10];
            let rounds = if i % 2 == 0 { 20 } else { usize::MAX };
            for _ in 0..rounds {
                if w.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            drop(w);
            reader.await.unwrap()
        }));
    }
    let start = Instant::now();
    server.shutdown().await;
    let took = start.elapsed();
    assert!(
        took < drain + Duration::from_secs(3),
        "shutdown took {took:?}"
    );
    // Every channel ended: the finite ones cleanly, the endless ones with
    // a clear error.
    let mut clean = 0;
    for t in tasks {
        match within(10, t).await.unwrap() {
            Ok(()) => clean += 1,
            Err(e) => assert!(e.contains("connection lost"), "{e}"),
        }
    }
    assert!(clean >= 50, "{clean} channels finished cleanly");
    // New connections are refused after shutdown.
    assert!(matches!(
        server.connect(&ep).await,
        Err(ConnectError::Shutdown)
    ));
    client.shutdown().await;
    drop((server, client));
    within(10, async {
        while tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            > baseline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Dropping the last handle of a connected peer (no `shutdown`) ends all of
/// its tasks, re-dialling included: the connection closes and nothing
/// keeps trying to reach the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_everything() {
    init_tracing();
    let rt = tokio::runtime::Handle::current();
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    let baseline = rt.metrics().num_alive_tasks();
    let mut events = server.events();
    let client = peer_trusting("client", &cid, &[&sid], Config::default());
    client.connect(&ep).await.unwrap();
    assert!(rt.metrics().num_alive_tasks() > baseline);
    drop(client);
    loop {
        if let Some(duplex::PeerEvent::Disconnected { .. }) = within(10, events.recv()).await {
            break;
        }
    }
    within(10, async {
        while rt.metrics().num_alive_tasks() > baseline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Nothing dialled the server again.
    while let Ok(Some(e)) = tokio::time::timeout(Duration::ZERO, events.recv()).await {
        assert!(
            !matches!(e, duplex::PeerEvent::Connected(_)),
            "the dropped peer connected again: {e:?}"
        );
    }
    server.shutdown().await;
}
