//! Issue 3, point 1: trailers round-trip in both directions, arrive after a
//! large transfer's data, cost nothing to a reader that never asks, and are
//! empty when the remote sent none.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use duplex::{ChannelError, Headers};
use duplex_tests::{Transport, pair, random_bytes, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_after_a_large_transfer_both_ways() {
    let p = pair(Transport::Tcp).await;
    for (opener, acceptor, remote) in [
        (p.client.clone(), p.server.clone(), "server"),
        (p.server.clone(), p.client.clone(), "client"),
    ] {
        let data = random_bytes(8 << 20);
        let sent = data.clone();
        // The acceptor sends data then trailers; the opener checks that the
        // trailers are only visible once every byte has been read.
        tokio::spawn(async move {
            let mut ch = acceptor.accept().await.unwrap().accept().await;
            ch.write_all(&sent).await.unwrap();
            let t = Headers::new()
                .with("status", "ok")
                .with("bytes", sent.len().to_string());
            ch.write_trailers(&t).await.unwrap();
            // Writing after trailers is an error.
            assert!(ch.write_all(b"x").await.is_err());
            assert!(matches!(
                ch.write_trailers(&Headers::new()).await,
                Err(ChannelError::WriteClosed)
            ));
            // Our trailers from the other side.
            let theirs = within(30, ch.trailers()).await.unwrap();
            assert_eq!(theirs.get("from"), Some("opener"));
        });
        let mut ch = opener.open(remote, "t", Headers::new()).await.unwrap();
        ch.write_trailers(&Headers::new().with("from", "opener"))
            .await
            .unwrap();
        let mut got = Vec::new();
        within(60, ch.read_to_end(&mut got)).await.unwrap();
        assert!(got == data);
        let t = within(10, ch.trailers()).await.unwrap();
        assert_eq!(t.get("status"), Some("ok"));
        assert_eq!(t.get("bytes"), Some((8usize << 20).to_string().as_str()));
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trailers_and_readers_that_never_ask() {
    let p = pair(Transport::Memory).await;
    let s = p.server.clone();
    tokio::spawn(async move {
        // First channel: closes without trailers.
        let mut ch = s.accept().await.unwrap().accept().await;
        ch.write_all(b"plain end").await.unwrap();
        ch.close_write().await.unwrap();
        drop(ch);
        // Second: sends trailers nobody reads.
        let mut ch = s.accept().await.unwrap().accept().await;
        ch.write_all(b"data").await.unwrap();
        ch.write_trailers(&Headers::new().with("ignored", "yes"))
            .await
            .unwrap();
        let mut rest = Vec::new();
        ch.read_to_end(&mut rest).await.unwrap();
        ch.write_all(b"").await.ok();
        assert_eq!(rest, b"reply");
    });
    let mut ch = p.client.open("server", "a", Headers::new()).await.unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"plain end");
    assert!(within(10, ch.trailers()).await.unwrap().is_empty());

    let mut ch = p.client.open("server", "b", Headers::new()).await.unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"data");
    ch.write_all(b"reply").await.unwrap();
    ch.close_write().await.unwrap();
    p.shutdown().await;
}
