//! One test per limit: the refusal, its error text, and another client
//! served meanwhile. (Frame, window and malformed-input limits are also
//! exercised by hostile.rs and flow.rs; nesting depth by nested.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex::{Config, FrameError, Headers, Identity, OpenError, Peer};
use duplex_tests::{
    RawSsh, echo_once, echo_server, ids, init_tracing, open_pair, peer_trusting, within,
};
use russh::client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A listening echo peer called "server" trusting `clients`.
async fn server(config: Config, sid: &Identity, clients: &[&Identity]) -> (Peer, duplex::Endpoint) {
    init_tracing();
    let server = peer_trusting("server", sid, clients, config);
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    (server, ep)
}

/// A fresh client that connects and gets an echo: "another client is
/// served meanwhile".
async fn served(ep: &duplex::Endpoint, sid: &Identity, cid: &Identity) {
    let c = peer_trusting("client", cid, &[sid], Config::default());
    within(20, c.connect(ep)).await.unwrap();
    within(20, echo_once(&c, 10_000)).await;
    c.shutdown().await;
}

/// Another client connects to `server` (whose channels the test accepts
/// itself) and gets a channel through: served while a limit is hit.
async fn another_client_served(
    server: &Peer,
    ep: &duplex::Endpoint,
    sid: &Identity,
    id: &Identity,
) {
    let d = peer_trusting("another", id, &[sid], Config::default());
    d.connect(ep).await.unwrap();
    let (mut dch, mut sch) = open_pair(&d, server, "server", "x").await;
    dch.write_frame(b"ping").await.unwrap();
    assert_eq!(&sch.read_frame().await.unwrap().unwrap()[..], b"ping");
    d.shutdown().await;
}

fn addr(ep: &duplex::Endpoint) -> (String, u16) {
    match ep {
        duplex::Endpoint::Tcp { host, port } => (host.clone(), *port),
        _ => unreachable!(),
    }
}

/// Reads until EOF or error; what was read.
async fn read_all(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_listener() {
    let (sid, cid) = ids();
    let config = Config::default().max_connections(3).unwrap();
    let (server, ep) = server(config, &sid, &[&cid]).await;
    within(30, async {
        // Two silent connections and one real peer fill the listener.
        let a = TcpStream::connect(addr(&ep)).await.unwrap();
        let b = TcpStream::connect(addr(&ep)).await.unwrap();
        let c = peer_trusting("client", &cid, &[&sid], Config::default());
        c.connect(&ep).await.unwrap();
        // The next one is told why, and closed.
        let mut d = TcpStream::connect(addr(&ep)).await.unwrap();
        let said = read_all(&mut d).await;
        assert!(
            said.contains("too many connections") && said.contains("limit 3"),
            "{said:?}"
        );
        // The peer already connected is served meanwhile.
        echo_once(&c, 10_000).await;
        // Freed slots are reused.
        drop((a, b));
        let mut ok = false;
        for _ in 0..100 {
            let c2 = peer_trusting("client2", &cid, &[&sid], Config::default().reconnect(false));
            if c2.connect(&ep).await.is_ok() {
                echo_once(&c2, 100).await;
                ok = true;
                c2.shutdown().await;
                break;
            }
            c2.shutdown().await;
            tokio::task::yield_now().await;
        }
        assert!(ok, "no slot was freed");
        c.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let (sid, cid) = ids();
    let timeout = Duration::from_millis(400);
    let (server, ep) = server(Config::default().handshake_timeout(timeout), &sid, &[&cid]).await;
    within(30, async {
        let t = Instant::now();
        let mut silent = TcpStream::connect(addr(&ep)).await.unwrap();
        let served_meanwhile = served(&ep, &sid, &cid);
        let (said, ()) = tokio::join!(read_all(&mut silent), served_meanwhile);
        let took = t.elapsed();
        // It got the SSH banner, then nothing, then was closed.
        assert!(said.starts_with("SSH-2.0-duplex"), "{said:?}");
        assert!(
            took >= timeout && took < timeout * 5,
            "dropped after {took:?}"
        );
        eprintln!("silent client dropped after {took:?} (handshake timeout {timeout:?})");
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_connections_do_not_keep_a_client_out() {
    let (sid, cid) = ids();
    let (server, ep) = server(Config::default(), &sid, &[&cid]).await;
    within(60, async {
        let mut half_open = Vec::new();
        for _ in 0..1000 {
            let mut s = TcpStream::connect(addr(&ep)).await.unwrap();
            // Half a version line, then silence.
            s.write_all(b"SSH-2.0-half").await.unwrap();
            half_open.push(s);
        }
        let t = Instant::now();
        served(&ep, &sid, &cid).await;
        let took = t.elapsed();
        eprintln!("with 1000 half-open connections a client connected and was served in {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        // The oldest half-open connections were dropped to make room.
        let first = &mut half_open[0];
        let said = within(10, read_all(first)).await;
        assert!(said.starts_with("SSH-2.0-duplex"), "{said:?}");
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_attempts() {
    let (sid, cid) = ids();
    let (server, ep) = server(
        Config::default().max_auth_attempts(2).unwrap(),
        &sid,
        &[&cid],
    )
    .await;
    within(30, async {
        let (host, port) = addr(&ep);
        let mut h = client::connect(Arc::new(client::Config::default()), (host, port), RawSsh)
            .await
            .unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            let dir = duplex_tests::TempDir::new("k");
            let path = dir.0.join("k");
            Identity::generate().save(&path).unwrap();
            let key = russh::keys::load_secret_key(&path, None).unwrap();
            let r = h
                .authenticate_publickey(
                    "guess",
                    russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
                )
                .await;
            outcomes.push(match r {
                Ok(r) if r.success() => "accepted".to_owned(),
                Ok(_) => "rejected".to_owned(),
                Err(e) => format!("disconnected: {e}"),
            });
        }
        // Two rejections, then the connection is gone.
        assert_eq!(outcomes[..2], ["rejected", "rejected"], "{outcomes:?}");
        assert!(outcomes[3].starts_with("disconnected"), "{outcomes:?}");
        served(&ep, &sid, &cid).await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_per_connection_and_waiting_channels() {
    let (sid, cid) = ids();
    let other = Identity::generate();
    let config = Config::default()
        .max_channels_per_connection(3)
        .unwrap()
        .max_pending_channels(2)
        .unwrap();
    init_tracing();
    // This server accepts nothing by itself: the test does.
    let server = peer_trusting("server", &sid, &[&cid, &other], config);
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    within(30, async {
        // Opens wait for room up to their timeout: short here.
        let c = peer_trusting("client", &cid, &[&sid], quick());
        c.connect(&ep).await.unwrap();
        let open = |c: &Peer| {
            let c = c.clone();
            tokio::spawn(async move { c.open("server", "x", Headers::new()).await })
        };
        // Two waiting channels fill the pending limit.
        let (o1, o2) = (open(&c), open(&c));
        let i1 = server.accept().await.unwrap();
        let i2 = server.accept().await.unwrap();
        let err = c.open("server", "x", Headers::new()).await.unwrap_err();
        assert!(matches!(err, OpenError::Refused { code: 4, .. }), "{err:?}");
        assert!(err.to_string().contains("resource shortage"), "{err}");
        // Accepted, they count against the channel limit: a third fits,
        // a fourth does not.
        let (_s1, _s2) = (i1.accept().await, i2.accept().await);
        let _c1 = o1.await.unwrap().unwrap();
        let _c2 = o2.await.unwrap().unwrap();
        let o3 = open(&c);
        let _s3 = server.accept().await.unwrap().accept().await;
        let _c3 = o3.await.unwrap().unwrap();
        let err = c.open("server", "x", Headers::new()).await.unwrap_err();
        assert!(matches!(err, OpenError::Refused { code: 4, .. }), "{err:?}");
        // Another client's connection has its own limits and is served.
        let d = peer_trusting("client2", &other, &[&sid], Config::default());
        d.connect(&ep).await.unwrap();
        let od = open(&d);
        let mut ch = server.accept().await.unwrap().accept().await;
        let mut dch = od.await.unwrap().unwrap();
        dch.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        ch.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        c.shutdown().await;
        d.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_count_and_size() {
    let (sid, cid) = ids();
    let config = Config::default()
        .max_header_count(4)
        .unwrap()
        .max_header_bytes(256)
        .unwrap();
    let (server, ep) = server(config, &sid, &[&cid]).await;
    within(30, async {
        // The client's own limits are the defaults, so it sends these.
        let c = peer_trusting("client", &cid, &[&sid], Config::default());
        c.connect(&ep).await.unwrap();
        let mut many = Headers::new();
        for i in 0..5 {
            many.push(format!("k{i}"), "v");
        }
        let big = Headers::new().with("k", "x".repeat(300));
        // The listener's description of the refusal reaches the opener.
        for (h, said) in [(many, "too many headers: 5 (the limit is 4)"), (big, "256")] {
            let err = c.open("server", "echo", h).await.unwrap_err();
            assert!(matches!(err, OpenError::Refused { code: 1, .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("malformed open") && text.contains(said),
                "{err}"
            );
        }
        // Within the limits, the same connection is served.
        let ok = Headers::new().with("k", "v");
        let mut ch = c.open("server", "echo", ok).await.unwrap();
        ch.write_all(b"x").await.unwrap();
        // And its own limit stops it sending more than it may.
        let mut h = Headers::new();
        for i in 0..65 {
            h.push(format!("k{i}"), "v");
        }
        let err = c.open("server", "echo", h).await.unwrap_err();
        assert!(matches!(err, OpenError::Headers(_)), "{err:?}");
        let text = duplex::error::full_text(&err);
        assert!(text.contains("64"), "{text}");
        served(&ep, &sid, &cid).await;
        c.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_size() {
    let (sid, cid) = ids();
    let other = Identity::generate();
    init_tracing();
    let server = peer_trusting(
        "server",
        &sid,
        &[&cid, &other],
        Config::default().max_frame_len(1024).unwrap(),
    );
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    within(30, async {
        let c = peer_trusting("client", &cid, &[&sid], Config::default());
        c.connect(&ep).await.unwrap();
        let (mut ch, mut sch) = open_pair(&c, &server, "server", "frames").await;
        ch.write_frame(&[7u8; 2000]).await.unwrap();
        let err = sch.read_frame().await.unwrap_err();
        assert!(
            matches!(
                err,
                duplex::ChannelError::Frame(FrameError::TooLarge {
                    len: 2000,
                    max: 1024
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "frame of 2000 bytes exceeds the maximum of 1024 bytes"
        );
        // The application drops the channel, unfinished: the sender sees
        // it aborted.
        drop(sch);
        let end = ch.closed().await;
        assert!(
            matches!(
                end,
                duplex::ChannelEnd::Failed(duplex::ChannelError::Aborted(_))
            ),
            "{end}"
        );
        // Another channel on the same connection works.
        let (mut ch2, mut s2) = open_pair(&c, &server, "server", "frames").await;
        ch2.write_frame(b"small").await.unwrap();
        assert_eq!(&s2.read_frame().await.unwrap().unwrap()[..], b"small");
        another_client_served(&server, &ep, &sid, &other).await;
        c.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bytes_per_channel_and_per_connection() {
    let (sid, cid) = ids();
    let window = 1u32 << 20;
    let config = Config::default()
        .channel_window(window)
        .unwrap()
        .max_connection_buffer(3 << 20)
        .unwrap()
        .open_timeout(OPEN_WAIT);
    let other = Identity::generate();
    init_tracing();
    let server = peer_trusting("server", &sid, &[&cid, &other], config.clone());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    within(30, async {
        let c = peer_trusting("client", &cid, &[&sid], quick());
        c.connect(&ep).await.unwrap();
        // Per channel: an unread channel holds at most its window; the
        // sender is held back, not buffered without bound.
        let (mut ch, sch) = open_pair(&c, &server, "server", "sink").await;
        let data = vec![1u8; 4 << 20];
        let sent = tokio::time::timeout(Duration::from_millis(500), ch.write_all(&data)).await;
        assert!(sent.is_err(), "4 MiB went into an unread 1 MiB window");
        let held = sch.buffered_len();
        assert!(held <= window as usize, "{held} bytes buffered");
        // Per connection: three channels reserve the 3 MiB budget; the
        // fourth is refused by the server...
        let mut keep = Vec::new();
        for _ in 0..2 {
            let o = tokio::spawn({
                let c = c.clone();
                async move { c.open("server", "sink", Headers::new()).await }
            });
            keep.push(server.accept().await.unwrap().accept().await);
            keep.push(o.await.unwrap().unwrap());
        }
        let err = c.open("server", "sink", Headers::new()).await.unwrap_err();
        assert!(matches!(err, OpenError::Refused { code: 4, .. }), "{err:?}");
        // ... and the server cannot open one either, with a local error
        // naming the limit.
        let err = server
            .open("client", "back", Headers::new())
            .await
            .unwrap_err();
        assert!(matches!(err, OpenError::LocalLimit { .. }), "{err:?}");
        assert!(
            err.to_string().contains("Config::max_connection_buffer"),
            "{err}"
        );
        // Another client's connection has a budget of its own.
        another_client_served(&server, &ep, &sid, &other).await;
        // Closing a channel gives its share back.
        drop(sch);
        drop(ch);
        let mut reopened = false;
        for _ in 0..200 {
            if let Ok(o) = tokio::time::timeout(Duration::from_millis(50), async {
                let o = tokio::spawn({
                    let c = c.clone();
                    async move { c.open("server", "sink", Headers::new()).await }
                });
                let i = server.accept().await.unwrap().accept().await;
                (o.await.unwrap(), i)
            })
            .await
                && o.0.is_ok()
            {
                reopened = true;
                break;
            }
        }
        assert!(reopened, "the budget was not given back");
        drop(keep);
        c.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_depth() {
    let (sid, cid) = ids();
    let other = Identity::generate();
    init_tracing();
    let server = peer_trusting(
        "server",
        &sid,
        &[&cid, &other],
        Config::default().max_nesting_depth(1).unwrap(),
    );
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    within(30, async {
        let c = peer_trusting("client", &cid, &[&sid], Config::default());
        c.connect(&ep).await.unwrap();
        let (top, stop) = open_pair(&c, &server, "server", "top").await;
        // Depth 1 is allowed...
        let (child, schild) = tokio::join!(top.open("child", Headers::new()), async {
            stop.accept().await.unwrap().accept().await
        });
        let child = child.unwrap();
        // ... depth 2 is refused by the server, saying why.
        let err = child.open("grandchild", Headers::new()).await.unwrap_err();
        assert!(matches!(err, OpenError::Rejected { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("nesting depth 2 is over server's limit of 1"),
            "{err}"
        );
        drop((schild, stop));
        another_client_served(&server, &ep, &sid, &other).await;
        c.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

/// The defaults agree with each other: a burst of 1,000 opens on one
/// connection, all held open at once and then used, succeeds (it used to
/// lose some to the pending-channel limit, 256, with a reason that did
/// not say which limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_opens_succeeds_under_defaults() {
    let (sid, cid) = ids();
    let (server, ep) = server(Config::default(), &sid, &[&cid]).await;
    let c = peer_trusting("client", &cid, &[&sid], Config::default());
    within(20, c.connect(&ep)).await.unwrap();
    let opens = (0..1000).map(|_| c.open("server", "echo", Headers::new()));
    let results = within(60, futures_util::future::join_all(opens)).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 1000 failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let chans: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    let rounds = chans.into_iter().enumerate().map(|(i, mut ch)| async move {
        let msg = format!("channel {i}");
        ch.write_all(msg.as_bytes()).await.unwrap();
        ch.close_write().await.unwrap();
        let mut back = Vec::new();
        ch.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, msg.as_bytes());
    });
    within(60, futures_util::future::join_all(rounds)).await;
    c.shutdown().await;
    server.shutdown().await;
}

/// A refusal on a limit reaches the opener with the limit and the knob
/// that raises it (the listener's description of its SSH open failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_limit_and_its_knob() {
    let (sid, cid) = ids();
    let config = Config::default().max_channels_per_connection(2).unwrap();
    let (server, ep) = server(config, &sid, &[&cid]).await;
    let c = peer_trusting("client", &cid, &[&sid], quick());
    within(20, c.connect(&ep)).await.unwrap();
    let _a = c.open("server", "echo", Headers::new()).await.unwrap();
    let _b = c.open("server", "echo", Headers::new()).await.unwrap();
    let err = c.open("server", "echo", Headers::new()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OpenError::Refused { code: 4, .. }), "{err:?}");
    assert!(
        text.contains("limit 2") && text.contains("Config::max_channels_per_connection"),
        "{text}"
    );
    c.shutdown().await;
    server.shutdown().await;
}

/// The whole peer's receive buffer (`Config::max_total_buffer`) bounds all
/// remotes together: two clients with their own keys share it, and the
/// open past it is refused with a reason naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_buffer_bounds_all_remotes_together() {
    let (sid, a, b) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let config = Config::default()
        .channel_window(256 << 10)
        .unwrap()
        .max_total_buffer(1 << 20)
        .unwrap();
    let (server, ep) = server(config, &sid, &[&a, &b]).await;
    let ca = peer_trusting("a", &a, &[&sid], quick());
    let cb = peer_trusting("b", &b, &[&sid], quick());
    within(20, ca.connect(&ep)).await.unwrap();
    within(20, cb.connect(&ep)).await.unwrap();
    let mut held = Vec::new();
    for c in [&ca, &cb, &ca, &cb] {
        held.push(c.open("server", "echo", Headers::new()).await.unwrap());
    }
    for c in [&ca, &cb] {
        let err = c.open("server", "echo", Headers::new()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("1048576 of 1048576") && text.contains("Config::max_total_buffer"),
            "{text}"
        );
    }
    // A channel that ends gives its share back.
    drop(held.pop());
    within(10, async {
        while ca.open("server", "echo", Headers::new()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    ca.shutdown().await;
    cb.shutdown().await;
    server.shutdown().await;
}

/// Opens wait for room up to their timeout before a limit's refusal is
/// reported: short in the tests of limits.
const OPEN_WAIT: Duration = Duration::from_millis(300);

fn quick() -> Config {
    Config::default().open_timeout(OPEN_WAIT)
}
