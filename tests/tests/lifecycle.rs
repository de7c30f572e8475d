//! Binding, unbinding, shutdown, and what channels see when their connection
//! goes away.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use duplex::{ChannelError, ConnectError, HeaderError, Headers, Identity, OpenError};
use duplex_tests::{TempDir, Transport, init_tracing, pair, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_connections_and_channels() {
    for t in duplex_tests::TRANSPORTS {
        let p = pair(t).await;
        let server = p.server.clone();
        let held = tokio::spawn(async move { server.accept().await.unwrap().accept().await });
        let mut ch = p
            .client
            .open("server", "held", Headers::new())
            .await
            .unwrap();
        let _server_side = held.await.unwrap();

        // Shutting the server down fails the client's channel with a
        // connection error naming the peer, and returns.
        within(15, p.server.shutdown()).await;
        let mut buf = [0u8; 16];
        let err = within(15, ch.read(&mut buf)).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("server") && msg.contains("lost"),
            "{t:?}: {msg}"
        );
        assert!(
            within(10, async {
                loop {
                    if p.client.peers().is_empty() {
                        break true;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
        );
        assert!(matches!(
            p.server.open("client", "x", Headers::new()).await,
            Err(OpenError::Shutdown)
        ));
        assert!(p.server.accept().await.is_none());
        within(15, p.client.shutdown()).await;
        // Idempotent.
        within(15, p.client.shutdown()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_shuts_down() {
    let p = pair(Transport::Tcp).await;
    let client = p.client.clone();
    let server = p.server.clone();
    tokio::spawn(async move {
        let mut ch = server.accept().await.unwrap().accept().await;
        ch.write_all(b"written before the drop").await.unwrap();
        // `ch` and the last `Peer` handles are dropped here.
    });
    let mut ch = client.open("server", "x", Headers::new()).await.unwrap();
    drop(p.server);
    let mut got = Vec::new();
    // Data queued before the peer went away is still delivered.
    let _ = within(15, ch.read_to_end(&mut got)).await;
    assert_eq!(got, b"written before the drop");
    within(15, async {
        while !client.peers().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_and_rebind_unix() {
    init_tracing();
    let dir = TempDir::new("unbind");
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let server = peer_trusting("server", &sid, &[&cid], Default::default());
    let client = peer_trusting("client", &cid, &[&sid], Default::default());
    let ep = format!("unix://{}/s.sock", dir.0.display());
    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(dir.0.join("s.sock")).unwrap());
    server.bind(ep.as_str()).await.unwrap();
    // A live one is not.
    let other = peer_trusting("other", &Identity::generate(), &[], Default::default());
    assert!(other.bind(ep.as_str()).await.is_err());
    client.connect(ep.as_str()).await.unwrap();
    assert!(server.unbind(ep.as_str()).await);
    // New connections are refused; the existing one keeps working.
    let no_retry = duplex::Config::default()
        .connect_backoff(duplex::Backoff::default().max_attempts(Some(1)))
        .unwrap();
    let fresh = peer_trusting("fresh", &cid, &[&sid], no_retry);
    within(10, async {
        loop {
            match fresh.connect(ep.as_str()).await {
                Err(ConnectError::Io { .. }) => break,
                Ok(_) => panic!("connected after unbind"),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    let s = server.clone();
    tokio::spawn(async move {
        let mut ch = s.accept().await.unwrap().accept().await;
        ch.write_all(b"ok").await.unwrap();
        ch.close_write().await.unwrap();
    });
    let mut ch = client.open("server", "x", Headers::new()).await.unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"ok");
    for p in [server, client, other, fresh] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_are_checked_before_sending() {
    let p = pair(Transport::Memory).await;
    let many: Headers = (0..65).map(|i| (format!("k{i}"), "v")).collect();
    assert!(matches!(
        p.client.open("server", "x", many).await,
        Err(OpenError::Headers(HeaderError::TooMany {
            count: 65,
            max: 64
        }))
    ));
    let big = Headers::new().with("k", "x".repeat(17 << 10));
    assert!(matches!(
        p.client.open("server", "x", big).await,
        Err(OpenError::Headers(HeaderError::TooLarge { .. }))
    ));
    assert!(matches!(
        p.client
            .open("server", "x", Headers::new().with("", "v"))
            .await,
        Err(OpenError::Headers(HeaderError::EmptyKey))
    ));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_times_out_when_nobody_accepts() {
    let config = duplex::Config::default().open_timeout(std::time::Duration::from_millis(300));
    let p = duplex_tests::pair_with(Transport::Memory, Default::default(), config).await;
    let err = within(10, p.client.open("server", "ignored", Headers::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().contains("did not accept"), "{err}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_after_close_write_is_an_error() {
    let p = pair(Transport::Memory).await;
    let s = p.server.clone();
    tokio::spawn(async move {
        let mut ch = s.accept().await.unwrap().accept().await;
        let mut v = Vec::new();
        ch.read_to_end(&mut v).await.unwrap();
    });
    let mut ch = p.client.open("server", "x", Headers::new()).await.unwrap();
    ch.close_write().await.unwrap();
    let err = ch.write_frame(b"late").await.unwrap_err();
    assert!(matches!(err, ChannelError::WriteClosed), "{err:?}");
    p.shutdown().await;
}
