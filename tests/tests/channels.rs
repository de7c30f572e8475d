//! Done-when 1: two peers over TCP, a Unix socket and an in-memory pipe;
//! open in both directions; bytes and frames round-trip exactly (1 byte to
//! 64 MiB, random content); headers and service arrive intact; EOF and close
//! are seen; error frames arrive as errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use duplex::{Headers, OpenError, Peer};
use duplex_tests::{TRANSPORTS, Transport, pair, random_bytes, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts one channel on `peer` and echoes its bytes, then its error
/// frames, then closes.
async fn echo_one(peer: Peer) -> (String, Headers) {
    let incoming = peer.accept().await.expect("peer shut down");
    let service = incoming.service().to_owned();
    let headers = incoming.headers().clone();
    let ch = incoming.accept().await;
    let (mut r, mut w) = ch.split();
    tokio::io::copy(&mut r, &mut w).await.unwrap();
    while let Some(e) = r.read_error().await.unwrap() {
        w.write_error(&e).await.unwrap();
    }
    w.close_write().await.unwrap();
    (service, headers)
}

/// Sends `data` through an echo channel and checks it comes back intact.
async fn round_trip(opener: &Peer, acceptor: &Peer, remote: &str, data: Vec<u8>) {
    let server = tokio::spawn(echo_one(acceptor.clone()));
    let headers = Headers::new()
        .with("k", "v")
        .with("unicode", "héllo wörld & = %")
        .with("k", "second");
    let ch = opener
        .open(remote, "echo/bytes", headers.clone())
        .await
        .unwrap();
    assert_eq!(ch.service(), "echo/bytes");
    assert_eq!(ch.meta().remote_peer(), remote);
    let (mut r, mut w) = ch.split();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.close_write().await.unwrap();
        w
    });
    let mut back = Vec::with_capacity(expected.len());
    r.read_to_end(&mut back).await.unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(back.len(), expected.len());
    assert!(back == expected, "echoed bytes differ");
    let (service, got_headers) = server.await.unwrap();
    assert_eq!(service, "echo/bytes");
    assert_eq!(got_headers, headers);
}

async fn sizes_both_ways(t: Transport) {
    let p = pair(t).await;
    for &n in &[1usize, 1000, (64 << 10) + 3, 1 << 20, 64 << 20] {
        let data = random_bytes(n);
        within(
            120,
            round_trip(&p.client, &p.server, "server", data.clone()),
        )
        .await;
        within(120, round_trip(&p.server, &p.client, "client", data)).await;
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_tcp() {
    sizes_both_ways(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_unix() {
    sizes_both_ways(Transport::Unix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_memory() {
    sizes_both_ways(Transport::Memory).await;
}

/// Frames of many sizes, interleaved with error frames, both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_error_frames_round_trip() {
    for t in TRANSPORTS {
        let p = pair(t).await;
        for (opener, acceptor, remote) in [
            (&p.client, &p.server, "server"),
            (&p.server, &p.client, "client"),
        ] {
            let server = tokio::spawn(echo_one(acceptor.clone()));
            let ch = opener.open(remote, "echo", Headers::new()).await.unwrap();
            let frames: Vec<Vec<u8>> = [0usize, 1, 5, 4096, 100_000, 3 << 20]
                .iter()
                .map(|&n| random_bytes(n))
                .collect();
            let (mut r, mut w) = ch.split();
            let to_send = frames.clone();
            let writer = tokio::spawn(async move {
                for f in &to_send {
                    w.write_frame(f).await.unwrap();
                    w.write_error(&f[..f.len().min(1000)]).await.unwrap();
                }
                w.close_write().await.unwrap();
                w
            });
            for f in &frames {
                let got = within(60, r.read_frame()).await.unwrap().expect("frame");
                assert!(got[..] == f[..], "frame of {} bytes differs", f.len());
            }
            assert!(
                r.read_frame().await.unwrap().is_none(),
                "clean EOF after frames"
            );
            for f in &frames {
                let e = r.read_error().await.unwrap().expect("error frame");
                assert_eq!(&e[..], &f[..f.len().min(1000)]);
            }
            assert!(r.read_error().await.unwrap().is_none());
            let _w = writer.await.unwrap();
            server.await.unwrap();
            drop((r, _w));
        }
        p.shutdown().await;
    }
}

/// EOF is seen while the other direction stays open; close is seen as the
/// end of both directions and as a write error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eof_and_close_are_seen() {
    for t in TRANSPORTS {
        let p = pair(t).await;
        let acceptor = p.server.clone();
        let server = tokio::spawn(async move {
            let mut ch = acceptor.accept().await.unwrap().accept().await;
            // Half-close from the client: we read EOF, then still write.
            let mut got = Vec::new();
            ch.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"ping");
            ch.write_all(b"pong after your EOF").await.unwrap();
            ch.close().await.unwrap();
        });
        let mut ch = p
            .client
            .open("server", "svc", Headers::new())
            .await
            .unwrap();
        ch.write_all(b"ping").await.unwrap();
        ch.close_write().await.unwrap();
        let mut back = Vec::new();
        within(10, ch.read_to_end(&mut back)).await.unwrap();
        assert_eq!(back, b"pong after your EOF");
        server.await.unwrap();
        // The remote closed: writing now fails.
        let err = loop {
            match ch.write_all(b"x").await {
                Ok(()) => tokio::task::yield_now().await,
                Err(e) => break e,
            }
        };
        assert!(
            err.to_string().contains("closed"),
            "unexpected write error: {err}"
        );
        p.shutdown().await;
    }
}

/// Dropping a finished channel closes it on the other side, which reads a
/// clean end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_after_close_write_closes_remote() {
    let p = pair(Transport::Tcp).await;
    let acceptor = p.server.clone();
    let server = tokio::spawn(async move {
        let mut ch = acceptor.accept().await.unwrap().accept().await;
        let mut got = Vec::new();
        ch.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut ch = p
        .client
        .open("server", "svc", Headers::new())
        .await
        .unwrap();
    ch.write_all(b"bye").await.unwrap();
    ch.close_write().await.unwrap();
    drop(ch);
    assert_eq!(within(10, server).await.unwrap(), b"bye");
    p.shutdown().await;
}

/// Issue 18, point 4: dropping a channel mid-write aborts it. The reader
/// gets the bytes written before, then an error saying who dropped it,
/// never a clean end of stream (which would pass for a complete, short
/// stream); trailers are refused likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_mid_write_aborts_remote() {
    let p = pair(Transport::Tcp).await;
    let acceptor = p.server.clone();
    let server = tokio::spawn(async move {
        let mut ch = acceptor.accept().await.unwrap().accept().await;
        let mut got = Vec::new();
        let e = ch.read_to_end(&mut got).await.unwrap_err();
        let trailers = ch.trailers().await;
        (got, e, trailers)
    });
    let mut ch = p
        .client
        .open("server", "svc", Headers::new())
        .await
        .unwrap();
    ch.write_all(b"half a fi").await.unwrap();
    drop(ch);
    let (got, e, trailers) = within(10, server).await.unwrap();
    assert_eq!(got, b"half a fi");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        e.to_string(),
        "client aborted the channel: client dropped the channel before finishing it (no close_write, shutdown or trailers)"
    );
    assert!(
        matches!(trailers, Err(duplex::ChannelError::Aborted(_))),
        "{trailers:?}"
    );
    p.shutdown().await;
}

/// `Channel::abort` carries its reason to the reader, and this side's own
/// handles fail with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_reaches_the_reader_with_its_reason() {
    let p = pair(Transport::Tcp).await;
    let acceptor = p.server.clone();
    let server = tokio::spawn(async move {
        let mut ch = acceptor.accept().await.unwrap().accept().await;
        let mut got = Vec::new();
        let e = ch.read_to_end(&mut got).await.unwrap_err();
        (got, e.to_string())
    });
    let ch = p
        .client
        .open("server", "svc", Headers::new())
        .await
        .unwrap();
    let (mut r, mut w) = ch.split();
    w.write_all(b"part").await.unwrap();
    w.abort("the source file shrank");
    let (got, e) = within(10, server).await.unwrap();
    assert_eq!(got, b"part");
    assert_eq!(e, "client aborted the channel: the source file shrank");
    let mut buf = Vec::new();
    let here = r.read_to_end(&mut buf).await.unwrap_err();
    assert!(
        here.to_string()
            .contains("aborted on this side: the source file shrank"),
        "{here}"
    );
    p.shutdown().await;
}

/// Dropping only the writer half while the reader is kept is a
/// half-close, as with TCP: the remote reads a clean end of stream and can
/// still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_writer_half_is_a_half_close() {
    let p = pair(Transport::Tcp).await;
    let acceptor = p.server.clone();
    tokio::spawn(async move {
        let mut ch = acceptor.accept().await.unwrap().accept().await;
        let mut got = Vec::new();
        ch.read_to_end(&mut got).await.unwrap();
        ch.write_all(&got).await.unwrap();
        ch.close_write().await.unwrap();
    });
    let ch = p
        .client
        .open("server", "svc", Headers::new())
        .await
        .unwrap();
    let (mut r, mut w) = ch.split();
    w.write_all(b"ping").await.unwrap();
    drop(w);
    let mut back = Vec::new();
    within(10, r.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"ping");
    p.shutdown().await;
}

/// Rejections reach the opener with the reason; invalid names fail locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_reason_both_ways() {
    let p = pair(Transport::Tcp).await;
    for (opener, acceptor, remote) in [
        (&p.client, &p.server, "server"),
        (&p.server, &p.client, "client"),
    ] {
        let a = acceptor.clone();
        tokio::spawn(async move {
            let inc = a.accept().await.unwrap();
            inc.reject("no such service: nope").await;
        });
        let err = opener
            .open(remote, "nope", Headers::new())
            .await
            .unwrap_err();
        match &err {
            OpenError::Rejected { reason, .. } => assert_eq!(reason, "no such service: nope"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        // Dropping an incoming channel rejects it too.
        let a = acceptor.clone();
        tokio::spawn(async move { drop(a.accept().await.unwrap()) });
        let err = opener
            .open(remote, "dropped", Headers::new())
            .await
            .unwrap_err();
        assert!(matches!(err, OpenError::Rejected { .. }), "{err:?}");
    }
    assert!(matches!(
        p.client.open("server", "bad name", Headers::new()).await,
        Err(OpenError::Service(_))
    ));
    assert!(matches!(
        p.client.open("nobody", "svc", Headers::new()).await,
        Err(OpenError::NoSuchPeer { .. })
    ));
    p.shutdown().await;
}

/// Many channels at once on one connection, both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_channels() {
    let p = pair(Transport::Tcp).await;
    for acceptor in [p.server.clone(), p.client.clone()] {
        tokio::spawn(async move {
            while let Some(inc) = acceptor.accept().await {
                tokio::spawn(async move {
                    let mut ch = inc.accept().await;
                    let mut v = Vec::new();
                    ch.read_to_end(&mut v).await.unwrap();
                    ch.write_all(&v).await.unwrap();
                    ch.close_write().await.unwrap();
                });
            }
        });
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (opener, remote) = if i % 2 == 0 {
            (p.client.clone(), "server")
        } else {
            (p.server.clone(), "client")
        };
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(10_000 + i * 97);
            let mut ch = opener.open(remote, "echo", Headers::new()).await.unwrap();
            ch.write_all(&data).await.unwrap();
            ch.close_write().await.unwrap();
            let mut back = Vec::new();
            ch.read_to_end(&mut back).await.unwrap();
            assert!(back == data);
        }));
    }
    for t in tasks {
        within(60, t).await.unwrap();
    }
    p.shutdown().await;
}

/// Closed channels leave the connection's table, whichever side closes
/// first: with room for 4 channels, 200 opened and closed one after another
/// all succeed, and both tables end empty. (russh forgets a channel once it
/// sent our close and never reports the answering close, so we forget it
/// then too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_channels_leave_the_table() {
    let config = || {
        duplex::Config::default()
            .max_channels_per_connection(4)
            .unwrap()
    };
    let p = duplex_tests::pair_with(Transport::Tcp, config(), config()).await;
    for i in 0..200 {
        let s = p.server.clone();
        let server_closes_first = i % 2 == 0;
        let acceptor = tokio::spawn(async move {
            let mut ch = s.accept().await.unwrap().accept().await;
            if server_closes_first {
                ch.close_write().await.unwrap();
                drop(ch);
            } else {
                // Finished or aborted by the client: either way it ends.
                let mut rest = Vec::new();
                let _ = ch.read_to_end(&mut rest).await;
            }
        });
        let mut ch = within(10, p.client.open("server", "x", Headers::new()))
            .await
            .unwrap_or_else(|e| panic!("open {i}: {e}"));
        if server_closes_first {
            let mut rest = Vec::new();
            within(10, ch.read_to_end(&mut rest)).await.unwrap();
        }
        if i % 4 < 2 {
            // (It may have closed already, when the server closed first.)
            let _ = ch.close_write().await;
        }
        drop(ch); // an abort every other round
        within(10, acceptor).await.unwrap();
    }
    within(10, async {
        while p.client.channel_stats("server").0 + p.server.channel_stats("client").0 > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    p.shutdown().await;
}

/// The channel limit counts a channel waiting to be accepted once: with a
/// limit of 4, four opens the application has not accepted yet all
/// succeed once it does, and a fifth meanwhile waits for room, and is
/// refused with the limit when its open timeout passes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_channels_count_once_against_the_channel_limit() {
    let config = || {
        duplex::Config::default()
            .max_channels_per_connection(4)
            .unwrap()
            .open_timeout(std::time::Duration::from_millis(500))
    };
    let p = duplex_tests::pair_with(Transport::Tcp, config(), config()).await;
    within(20, async {
        let mut opens = Vec::new();
        for _ in 0..4 {
            let c = p.client.clone();
            opens.push(tokio::spawn(async move {
                c.open("server", "x", Headers::new()).await
            }));
        }
        // All four are queued for `accept` before any is accepted.
        let mut incoming = Vec::new();
        for _ in 0..4 {
            incoming.push(p.server.accept().await.unwrap());
        }
        let fifth = p
            .client
            .open("server", "x", Headers::new())
            .await
            .unwrap_err();
        assert!(
            matches!(fifth, OpenError::Refused { code: 4, .. }),
            "{fifth}"
        );
        let mut held = Vec::new();
        for i in incoming {
            held.push(i.accept().await);
        }
        for o in opens {
            drop(o.await.unwrap().unwrap());
        }
    })
    .await;
    p.shutdown().await;
}

/// `closed` resolves when the remote closes the channel, not on its EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_resolves_on_close_not_on_eof() {
    let p = pair(Transport::Tcp).await;
    within(10, async {
        let s = p.server.clone();
        let (eof_seen_tx, eof_seen) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let mut ch = s.accept().await.unwrap().accept().await;
            let closed = ch.closed();
            tokio::pin!(closed);
            let mut rest = Vec::new();
            ch.read_to_end(&mut rest).await.unwrap(); // the client's EOF
            assert!(futures_util::poll!(closed.as_mut()).is_pending());
            eof_seen_tx.send(()).unwrap();
            closed.await
        });
        let mut ch = p.client.open("server", "x", Headers::new()).await.unwrap();
        ch.close_write().await.unwrap();
        eof_seen.await.unwrap();
        drop(ch);
        let end = server.await.unwrap();
        assert!(matches!(end, duplex::ChannelEnd::ClosedByRemote), "{end}");
    })
    .await;
    p.shutdown().await;
}

/// An `ErrorWriter` outlives the channel's halves: it writes after they
/// are dropped, and EOF and close wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_writer_holds_eof_until_it_finishes() {
    let p = pair(Transport::Tcp).await;
    within(10, async {
        let s = p.server.clone();
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut ch = s.accept().await.unwrap().accept().await;
            let mut errors = ch.error_writer();
            ch.write_frame(b"data").await.unwrap();
            drop(ch); // no EOF yet: `errors` holds it
            go.await.unwrap();
            errors.write_error(b"late status").await.unwrap();
            errors.finish();
        });
        let mut ch = p.client.open("server", "x", Headers::new()).await.unwrap();
        assert_eq!(&ch.read_frame().await.unwrap().unwrap()[..], b"data");
        {
            let next = ch.read_frame();
            tokio::pin!(next);
            assert!(
                futures_util::poll!(next.as_mut()).is_pending(),
                "EOF came early"
            );
            go_tx.send(()).unwrap();
            assert_eq!(next.await.unwrap(), None);
        }
        assert_eq!(&ch.read_error().await.unwrap().unwrap()[..], b"late status");
        assert_eq!(ch.read_error().await.unwrap(), None);
        let end = ch.closed().await;
        assert!(matches!(end, duplex::ChannelEnd::ClosedByRemote), "{end}");
    })
    .await;
    p.shutdown().await;
}

/// `read_frame_max` refuses a frame over its own bound from the prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_frame_max_refuses_long_frames_from_the_prefix() {
    let p = pair(Transport::Tcp).await;
    within(10, async {
        let s = p.server.clone();
        let server = tokio::spawn(async move {
            let mut ch = s.accept().await.unwrap().accept().await;
            let ok = ch.read_frame_max(10).await.unwrap().unwrap();
            let err = ch.read_frame_max(10).await.unwrap_err();
            (ok, err)
        });
        let mut ch = p.client.open("server", "x", Headers::new()).await.unwrap();
        ch.write_frame(b"0123456789").await.unwrap();
        // Only the prefix of the second frame is ever sent.
        ch.write_all(&1_000_000u32.to_be_bytes()).await.unwrap();
        ch.flush().await.unwrap();
        let (ok, err) = server.await.unwrap();
        assert_eq!(&ok[..], b"0123456789");
        assert!(
            matches!(
                err,
                duplex::ChannelError::Frame(duplex::FrameError::TooLarge {
                    len: 1_000_000,
                    max: 10
                })
            ),
            "{err:?}"
        );
    })
    .await;
    p.shutdown().await;
}

/// `open_next` goes round-robin over the connected peers, and without any
/// fails after the peer wait with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_next_round_robins_and_waits_for_a_peer() {
    use duplex_tests::{ids, peer_trusting};
    let (hub_id, a_id) = ids();
    let b_id = duplex::Identity::generate();
    let hub = peer_trusting("hub", &hub_id, &[&a_id, &b_id], duplex::Config::default());
    let err = within(10, hub.open_next("x", Headers::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::NoPeer { .. }), "{err:?}");
    assert!(err.to_string().contains("no peer is connected"), "{err}");
    let ep = hub.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut spokes = Vec::new();
    for (name, id) in [("a", &a_id), ("b", &b_id)] {
        let p = peer_trusting(name, id, &[&hub_id], duplex::Config::default());
        p.connect(&ep).await.unwrap();
        let acceptor = p.clone();
        tokio::spawn(async move {
            while let Some(i) = acceptor.accept().await {
                drop(i.accept().await);
            }
        });
        spokes.push(p);
    }
    within(10, async {
        let mut ev = hub.events();
        while hub.peers().len() < 2 {
            ev.recv().await;
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            let ch = hub.open_next("x", Headers::new()).await.unwrap();
            seen.push(ch.meta().remote_peer().to_owned());
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b"]);
    })
    .await;
    for s in spokes {
        s.shutdown().await;
    }
    hub.shutdown().await;
}
