//! Issue 3, point 3: a TCP echo server behind a Duplex channel via `join`,
//! driven through the channel: 256 MiB move intact and half-close
//! propagates both ways.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use duplex::Headers;
use duplex_tests::{Transport, pair, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP echo server that, after its client half-closes, writes a marker
/// and closes: proof that EOF reached it through the channel.
async fn tcp_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = sock.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.write_all(b"<eof seen>").await.unwrap();
        w.shutdown().await.unwrap();
    });
    addr
}

/// Cheap deterministic bytes (a test should not hold 256 MiB of RNG output
/// twice).
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 17)) as u8;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_behind_a_channel() {
    const TOTAL: u64 = 256 << 20;
    let echo = tcp_echo().await;
    let p = pair(Transport::Tcp).await;
    let server = p.server.clone();
    let gateway = tokio::spawn(async move {
        let ch = server.accept().await.unwrap().accept().await;
        let backend = tokio::net::TcpStream::connect(echo).await.unwrap();
        ch.join(backend).await.unwrap()
    });
    let ch = p
        .client
        .open("server", "tcp-echo", Headers::new())
        .await
        .unwrap();
    let (mut r, mut w) = ch.split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 << 10];
        let mut off = 0u64;
        while off < TOTAL {
            pattern(off, &mut buf);
            w.write_all(&buf).await.unwrap();
            off += buf.len() as u64;
        }
        w.close_write().await.unwrap();
        w
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let mut want = vec![0u8; 256 << 10];
    let mut tail = Vec::new();
    within(300, async {
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            let mut chunk = &buf[..n];
            if got < TOTAL {
                let take = ((TOTAL - got) as usize).min(chunk.len());
                pattern(got, &mut want[..take]);
                assert!(chunk[..take] == want[..take], "mismatch at byte {got}");
                got += take as u64;
                chunk = &chunk[take..];
            }
            tail.extend_from_slice(chunk);
        }
    })
    .await;
    assert_eq!(got, TOTAL);
    // The backend saw our EOF (through join) and its close came back as
    // channel EOF (through join again).
    assert_eq!(tail, b"<eof seen>");
    let stats = within(30, gateway).await.unwrap();
    assert_eq!(stats.from_channel, TOTAL);
    assert_eq!(stats.to_channel, TOTAL + 10);
    drop(writer.await.unwrap());
    p.shutdown().await;
}

/// Joining two channels: a gateway peer splices a client's channel to a
/// channel it opens to a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_two_channels() {
    let p = pair(Transport::Memory).await;
    let server = p.server.clone();
    let client = p.client.clone();
    // The client also serves "upper": it upper-cases what it reads.
    tokio::spawn(async move {
        let mut ch = client.accept().await.unwrap().accept().await;
        let mut v = Vec::new();
        ch.read_to_end(&mut v).await.unwrap();
        ch.write_all(&v.to_ascii_uppercase()).await.unwrap();
        ch.close_write().await.unwrap();
    });
    tokio::spawn(async move {
        let front = server.accept().await.unwrap().accept().await;
        let back = server
            .open("client", "upper", Headers::new())
            .await
            .unwrap();
        front.join(back).await.unwrap();
    });
    let mut ch = p
        .client
        .open("server", "via-gateway", Headers::new())
        .await
        .unwrap();
    ch.write_all(b"spliced").await.unwrap();
    ch.close_write().await.unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"SPLICED");
    p.shutdown().await;
}

/// A gateway routes each client channel to one of two backends by a header,
/// passing headers through and carrying data, error frames and trailers
/// back with `splice`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_by_header_and_carries_trailers() {
    use duplex::Identity;
    use duplex_tests::peer_trusting;
    let ids: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let gateway = peer_trusting("gateway", &ids[0], &all, Default::default());
    let client = peer_trusting("client", &ids[1], &all, Default::default());
    let backends = [
        peer_trusting("backend-a", &ids[2], &all, Default::default()),
        peer_trusting("backend-b", &ids[3], &all, Default::default()),
    ];
    // The backends dial the gateway (they may sit behind a firewall).
    let ep = gateway.bind("tcp://127.0.0.1:0").await.unwrap();
    for b in &backends {
        b.connect(&ep).await.unwrap();
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(inc) = b.accept().await {
                let me = b.name().to_owned();
                tokio::spawn(async move {
                    let user = inc.headers().get("user").unwrap_or("?").to_owned();
                    let mut ch = inc.accept().await;
                    let mut v = Vec::new();
                    ch.read_to_end(&mut v).await.unwrap();
                    ch.write_all(format!("{me} served {user}: ").as_bytes())
                        .await
                        .unwrap();
                    ch.write_all(&v).await.unwrap();
                    ch.write_error(b"a warning").await.unwrap();
                    ch.write_trailers(&Headers::new().with("served-by", me))
                        .await
                        .unwrap();
                });
            }
        });
    }
    client.connect(&ep).await.unwrap();
    let g = gateway.clone();
    tokio::spawn(async move {
        while let Some(inc) = g.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let target = match inc.headers().get("route") {
                    Some("a") => "backend-a",
                    Some("b") => "backend-b",
                    _ => return inc.reject("no route header").await,
                };
                let headers = inc.headers().clone();
                let service = inc.service().to_owned();
                let back = g.open(target, &service, headers).await.unwrap();
                let front = inc.accept().await;
                front.splice(back).await.unwrap();
            });
        }
    });
    for (route, expect) in [("a", "backend-a"), ("b", "backend-b")] {
        let headers = Headers::new().with("route", route).with("user", "ann");
        let mut ch = client.open("gateway", "hello", headers).await.unwrap();
        ch.write_all(b"hi").await.unwrap();
        ch.close_write().await.unwrap();
        let mut got = String::new();
        within(10, ch.read_to_string(&mut got)).await.unwrap();
        assert_eq!(got, format!("{expect} served ann: hi"));
        assert_eq!(&ch.read_error().await.unwrap().unwrap()[..], b"a warning");
        let t = within(10, ch.trailers()).await.unwrap();
        assert_eq!(t.get("served-by"), Some(expect));
    }
    let err = client
        .open("gateway", "hello", Headers::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no route header"), "{err}");
    for p in [client, gateway] {
        p.shutdown().await;
    }
    for b in backends {
        b.shutdown().await;
    }
}
