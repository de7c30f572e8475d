//! Issue 3, point 2: nested channels. Three levels deep opened from each
//! side (and alternating sides), with traffic on every level at once;
//! closing a parent closes its descendants on both sides; a dead connection
//! ends every nested channel with an error; the depth limit is clear.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use duplex::{Channel, ChannelError, Config, Headers, OpenError, Peer};
use duplex_tests::{Transport, pair, pair_with, random_bytes, within};
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Who opens a channel: the side that owns `.0` of each pair, or the other.
#[derive(Clone, Copy, Debug)]
enum By {
    Client,
    Server,
}

/// One channel seen from both sides: (client's end, server's end).
struct Level {
    client: Channel,
    server: Channel,
}

/// Opens a top-level channel (`parent` None) or one nested in `parent`,
/// by `by`, and accepts it on the other side through the parent.
async fn open_level(p: &(Peer, Peer), parent: Option<&Level>, by: By, service: &str) -> Level {
    let (client, server) = (&p.0, &p.1);
    let headers = Headers::new().with("by", format!("{by:?}"));
    let (opened, accepted) = match (parent, by) {
        (None, By::Client) => tokio::join!(client.open("server", service, headers), async {
            server.accept().await.unwrap().accept().await
        }),
        (None, By::Server) => tokio::join!(server.open("client", service, headers), async {
            client.accept().await.unwrap().accept().await
        }),
        (Some(l), By::Client) => tokio::join!(l.client.open(service, headers), async {
            l.server.accept().await.unwrap().accept().await
        }),
        (Some(l), By::Server) => tokio::join!(l.server.open(service, headers), async {
            l.client.accept().await.unwrap().accept().await
        }),
    };
    let opened = opened.unwrap();
    assert_eq!(accepted.service(), service);
    assert_eq!(
        accepted.headers().get("by"),
        Some(format!("{by:?}").as_str())
    );
    match by {
        By::Client => Level {
            client: opened,
            server: accepted,
        },
        By::Server => Level {
            client: accepted,
            server: opened,
        },
    }
}

/// A chain of four channels (top level and three nested levels), each
/// opened by the side `order` says.
async fn chain(p: &(Peer, Peer), order: [By; 4]) -> Vec<Level> {
    let mut levels: Vec<Level> = Vec::new();
    for (depth, by) in order.into_iter().enumerate() {
        let l = open_level(p, levels.last(), by, &format!("level{depth}")).await;
        levels.push(l);
    }
    // Meta on both sides: depth and the parent chain.
    for (depth, l) in levels.iter().enumerate() {
        for ch in [&l.client, &l.server] {
            assert_eq!(ch.meta().depth(), depth as u32);
            match depth {
                0 => assert!(ch.meta().parent().is_none()),
                d => assert_eq!(
                    ch.meta().parent().unwrap().service(),
                    format!("level{}", d - 1)
                ),
            }
        }
    }
    assert_eq!(levels[0].client.meta().remote_peer(), "server");
    assert_eq!(levels[3].server.meta().remote_peer(), "client");
    levels
}

/// Both ends of `l` send `n` random bytes and EOF at the same time, and
/// each receives exactly what the other sent.
async fn exchange(l: &mut Level, n: usize) {
    async fn one_way(ch: &mut Channel, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(ch);
        let write = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let ((), res) = tokio::join!(write, read);
        res.unwrap();
        got
    }
    let (a, b) = (random_bytes(n), random_bytes(n));
    let (from_b, from_a) = tokio::join!(
        one_way(&mut l.client, a.clone()),
        one_way(&mut l.server, b.clone())
    );
    assert!(from_b == b, "client end got wrong bytes");
    assert!(from_a == a, "server end got wrong bytes");
}

fn peers(p: &duplex_tests::Pair) -> (Peer, Peer) {
    (p.client.clone(), p.server.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_levels_from_each_side_with_traffic_on_all_at_once() {
    for transport in [Transport::Tcp, Transport::Unix] {
        let p = pair(transport).await;
        let pp = peers(&p);
        use By::{Client as C, Server as S};
        // All opened by the client, all by the server, and alternating (so
        // each side names parents in both numberings of the protocol).
        for order in [[C, C, C, C], [S, S, S, S], [C, S, C, S], [S, C, S, C]] {
            let mut levels = within(30, chain(&pp, order)).await;
            within(
                120,
                join_all(levels.iter_mut().map(|l| exchange(l, 4 << 20))),
            )
            .await;
            // Close, children first.
            while let Some(l) = levels.pop() {
                drop(l);
            }
        }
        // Nothing left behind on either side.
        eventually(|| p.client.channel_stats("server").0 == 0).await;
        eventually(|| p.server.channel_stats("client").0 == 0).await;
        p.shutdown().await;
    }
}

/// Waits (bounded) for a condition that follows from messages in flight.
async fn eventually(mut cond: impl FnMut() -> bool) {
    within(10, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn parent_closed(r: Result<usize, std::io::Error>, what: &str) -> String {
    let e = match r {
        Ok(n) => panic!("{what}: expected the read to fail, got {n} bytes"),
        Err(e) => e,
    };
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<ChannelError>())
        .unwrap_or_else(|| panic!("not a channel error: {e}"));
    match inner {
        ChannelError::ParentClosed(why) => why.to_string(),
        other => panic!("expected ParentClosed, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_parent_closes_its_descendants_on_both_sides() {
    let p = pair(Transport::Tcp).await;
    let pp = peers(&p);
    use By::{Client as C, Server as S};
    for closer in [C, S] {
        let mut levels = within(30, chain(&pp, [C, S, C, S])).await;
        let l3 = levels.pop().unwrap();
        let l2 = levels.pop().unwrap();
        let l1 = levels.pop().unwrap();
        let mut l0 = levels.pop().unwrap();
        // Unread data and a child waiting to be accepted, to see both go.
        let (mut l2c, mut l2s) = (l2.client, l2.server);
        let (mut l3c, mut l3s) = (l3.client, l3.server);
        l2c.write_all(b"unread").await.unwrap();
        l2c.flush().await.unwrap();
        let pending = match closer {
            C => l3s.children(),
            S => l3c.children(),
        };
        // Close level 1 on one side.
        let (closed_here, survivor) = match closer {
            C => (l1.client, l1.server),
            S => (l1.server, l1.client),
        };
        let survivor_children = survivor.children();
        closed_here.close().await.unwrap();
        // The other side's level 1 ends (clean close: its own remote closed
        // it), and no more children can be opened in or accepted from it.
        let mut survivor = survivor;
        let mut rest = Vec::new();
        within(10, survivor.read_to_end(&mut rest)).await.unwrap();
        assert!(within(10, survivor_children.accept()).await.is_none());
        match within(10, survivor.open("late", Headers::new())).await {
            Err(OpenError::ParentClosed { parent, reason, .. }) => {
                assert_eq!(parent, "level1");
                assert!(reason.contains("closed"), "{reason}");
            }
            other => panic!("open on a closed parent: {other:?}"),
        }
        // Descendants on both sides fail with an error that says why.
        let mut buf = [0u8; 64];
        for (side, ch) in [
            ("client", &mut l2c),
            ("server", &mut l2s),
            ("client", &mut l3c),
            ("server", &mut l3s),
        ] {
            // Data already received is still readable first.
            let mut r = within(10, ch.read(&mut buf)).await;
            if let Ok(n) = r
                && n > 0
            {
                assert_eq!(&buf[..n], b"unread");
                r = within(10, ch.read(&mut buf)).await;
            }
            let why = parent_closed(r, &format!("{closer:?} closed; {side}"));
            assert!(why.contains("level1"), "{closer:?} closed; {side}: {why}");
            let writing = ch.write_all(b"more").await;
            assert!(writing.is_err(), "{side}: write after parent closed");
        }
        // The grandchild's accept ends too; a nested open in it fails.
        assert!(within(10, pending.accept()).await.is_none());
        assert!(matches!(
            within(10, l3c.open("x", Headers::new())).await,
            Err(OpenError::ParentClosed { .. })
        ));
        drop((l2c, l2s, l3c, l3s, survivor));
        // Level 0 is unaffected and works both ways.
        within(30, exchange(&mut l0, 64 << 10)).await;
        drop(l0);
        eventually(|| p.client.channel_stats("server").0 == 0).await;
        eventually(|| p.server.channel_stats("client").0 == 0).await;
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaccepted_children_are_rejected_when_the_parent_closes() {
    let p = pair(Transport::Memory).await;
    let pp = peers(&p);
    let l0 = open_level(&pp, None, By::Client, "top").await;
    let (c, s) = (l0.client, l0.server);
    // The server never accepts the child; the client's open is pending.
    let opening = tokio::spawn(async move {
        let r = c.open("child", Headers::new()).await;
        (r, c)
    });
    // Wait for the child to reach the server, then close the parent there.
    let children = s.children();
    let incoming = within(10, children.accept()).await.unwrap();
    assert_eq!(incoming.meta().parent().unwrap().service(), "top");
    drop(s);
    drop(incoming);
    let (r, _c) = within(10, opening).await.unwrap();
    match r {
        Err(OpenError::ParentClosed { .. } | OpenError::Rejected { .. }) => {}
        other => panic!("child open after the parent closed: {other:?}"),
    }
    eventually(|| p.server.channel_stats("client").0 == 0).await;
    p.shutdown().await;
}

/// A TCP relay the test can cut: the connection dies without either peer
/// closing it.
async fn cuttable_relay(upstream: std::net::SocketAddr) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = format!("tcp://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut down, _) = listener.accept().await.unwrap();
        let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    (ep, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_connection_ends_every_nested_channel_with_an_error() {
    duplex_tests::init_tracing();
    let (sid, cid) = (duplex::Identity::generate(), duplex::Identity::generate());
    let server = duplex_tests::peer_trusting("server", &sid, &[&cid], Config::default());
    let client = duplex_tests::peer_trusting("client", &cid, &[&sid], Config::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let addr = ep.to_string().trim_start_matches("tcp://").parse().unwrap();
    let (relay, relay_task) = cuttable_relay(addr).await;
    client.connect(relay.as_str()).await.unwrap();
    let pp = (client.clone(), server.clone());
    let mut levels = within(
        30,
        chain(&pp, [By::Client, By::Server, By::Client, By::Server]),
    )
    .await;
    // Traffic in flight on every level when the connection is cut.
    let mut readers = Vec::new();
    let (flowing_tx, mut flowing_rx) = tokio::sync::mpsc::channel(8);
    for l in levels.drain(..) {
        for ch in [l.client, l.server] {
            let flowing = flowing_tx.clone();
            readers.push(tokio::spawn(async move {
                let mut flowing = Some(flowing);
                let kids = ch.children();
                let (mut r, mut w) = ch.split();
                let mut buf = vec![0u8; 64 << 10];
                let junk = random_bytes(32 << 10);
                loop {
                    tokio::select! {
                        got = r.read(&mut buf) => match got {
                            Ok(0) => return Err("clean EOF, expected an error".to_owned()),
                            Ok(_) => {
                                if let Some(f) = flowing.take() {
                                    let _ = f.send(()).await;
                                }
                            }
                            Err(e) => return Ok((e.to_string(), kids, r, w)),
                        },
                        put = w.write_all(&junk) => if let Err(e) = put {
                            return Ok((e.to_string(), kids, r, w));
                        },
                    }
                }
            }));
        }
    }
    // Cut once data flows on every channel.
    for _ in 0..readers.len() {
        within(30, flowing_rx.recv()).await.unwrap();
    }
    relay_task.abort();
    for r in readers {
        let (why, kids, _r, _w) = within(60, r).await.unwrap().unwrap();
        assert!(why.contains("connection lost"), "{why}");
        // And nothing can be nested in it any more.
        match within(10, kids.open("x", Headers::new())).await {
            Err(OpenError::ParentClosed { reason, .. }) => {
                assert!(reason.contains("connection lost"), "{reason}")
            }
            other => panic!("open in a channel of a dead connection: {other:?}"),
        }
    }
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_limit_gives_a_clear_error() {
    // The client allows 2 levels, the server the default 8.
    let client_config = Config::default().max_nesting_depth(2).unwrap();
    let p = pair_with(Transport::Tcp, Config::default(), client_config).await;
    let pp = peers(&p);
    let l0 = open_level(&pp, None, By::Client, "l0").await;
    let l1 = open_level(&pp, Some(&l0), By::Server, "l1").await;
    let mut l2 = open_level(&pp, Some(&l1), By::Client, "l2").await;
    // Ours: refused before anything is sent.
    let e = l2.client.open("l3", Headers::new()).await.unwrap_err();
    assert!(
        matches!(
            e,
            OpenError::DepthLimit {
                depth: 3,
                limit: 2,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("max_nesting_depth") && msg.contains('2'),
        "{msg}"
    );
    // The remote's: the server may go deeper, the client refuses and says why.
    let e = within(10, l2.server.open("l3", Headers::new()))
        .await
        .unwrap_err();
    match &e {
        OpenError::Rejected { reason, .. } => {
            assert!(reason.contains("nesting depth 3"), "{reason}");
            assert!(reason.contains("limit of 2"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The chain itself is unaffected.
    within(30, exchange(&mut l2, 1 << 20)).await;
    // Out-of-range limits are refused.
    assert!(Config::default().max_nesting_depth(65).is_err());
    p.shutdown().await;
}
