//! Done-when 5: bad input. Random bytes to a listening port, a frame header
//! claiming 4 GiB, a truncated frame, opens with malformed header blocks, and
//! a sender that ignores flow control: each gets a clear error or a closed
//! connection, nothing panics, memory stays bounded, and the peer keeps
//! serving other clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use duplex::{ChannelError, Config, FrameError, Headers, Identity, Peer};
use duplex_tests::{
    RawSsh, Transport, init_tracing, pair, peer_trusting, port, random_bytes, within,
};
use russh::client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that echoes every channel, and a trusted client identity.
async fn echo_server() -> (Peer, duplex::Endpoint, Identity, Identity) {
    init_tracing();
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let config = Config::default().channel_window(256 << 10).unwrap();
    let server = peer_trusting("server", &sid, &[&cid], config);
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let s = server.clone();
    tokio::spawn(async move {
        while let Some(inc) = s.accept().await {
            tokio::spawn(async move {
                let ch = inc.accept().await;
                let (mut r, mut w) = ch.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.close_write().await;
            });
        }
    });
    (server, ep, sid, cid)
}

/// A well-behaved client still gets an echo.
async fn still_serves(ep: &duplex::Endpoint, sid: &Identity, cid: &Identity) {
    let client = peer_trusting("client", cid, &[sid], Config::default());
    client.connect(ep).await.unwrap();
    let mut ch = client.open("server", "echo", Headers::new()).await.unwrap();
    ch.write_all(b"still here").await.unwrap();
    ch.close_write().await.unwrap();
    let mut got = Vec::new();
    within(10, ch.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"still here");
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_to_the_port() {
    let (server, ep, sid, cid) = echo_server().await;
    for (i, len) in [0usize, 1, 100, 70_000].into_iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port(&ep)))
            .await
            .unwrap();
        let mut junk = random_bytes(len);
        if i == 3 {
            // A valid SSH banner, then garbage where key exchange should be.
            let mut v = b"SSH-2.0-evil\r\n".to_vec();
            v.extend_from_slice(&junk);
            junk = v;
        }
        let _ = s.write_all(&junk).await;
        let _ = s.shutdown().await;
        // The server answers with at most its banner and closes.
        let mut sink = Vec::new();
        let _ = within(15, s.read_to_end(&mut sink)).await;
        assert!(sink.len() < 4096, "server sent {} bytes", sink.len());
        still_serves(&ep, &sid, &cid).await;
    }
    // Clients that left are forgotten.
    within(10, async {
        while !server.peers().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_truncated_frames() {
    let p = pair(Transport::Tcp).await;
    let server = p.server.clone();
    let checks = tokio::spawn(async move {
        // A length prefix claiming 4 GiB - 1: refused before allocating.
        let mut ch = server.accept().await.unwrap().accept().await;
        match ch.read_frame().await {
            Err(ChannelError::Frame(FrameError::TooLarge { len, max })) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, 8 << 20);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let msg = ChannelError::Frame(FrameError::TooLarge { len: 1, max: 0 }).to_string();
        assert!(msg.contains("exceeds the maximum"), "{msg}");
        // Truncated: 100 bytes announced, 10 sent, then EOF.
        let mut ch = server.accept().await.unwrap().accept().await;
        match ch.read_frame().await {
            Err(ChannelError::Frame(FrameError::Truncated { got, want })) => {
                assert_eq!((got, want), (14, 104));
            }
            other => panic!("expected Truncated, got {other:?}"),
        }
        // Truncated inside the prefix.
        let mut ch = server.accept().await.unwrap().accept().await;
        assert!(matches!(
            ch.read_frame().await,
            Err(ChannelError::Frame(FrameError::Truncated {
                got: 2,
                want: 4
            }))
        ));
        // The connection is fine: a normal frame on a new channel.
        let mut ch = server.accept().await.unwrap().accept().await;
        let f = ch.read_frame().await.unwrap().unwrap();
        assert_eq!(&f[..], b"fine");
    });
    let mut a = p.client.open("server", "a", Headers::new()).await.unwrap();
    a.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    a.flush().await.unwrap();
    let mut b = p.client.open("server", "b", Headers::new()).await.unwrap();
    b.write_all(&[0, 0, 0, 100]).await.unwrap();
    b.write_all(&[7; 10]).await.unwrap();
    b.close_write().await.unwrap();
    let mut c = p.client.open("server", "c", Headers::new()).await.unwrap();
    c.write_all(&[0, 0]).await.unwrap();
    c.close_write().await.unwrap();
    let mut d = p.client.open("server", "d", Headers::new()).await.unwrap();
    d.write_frame(b"fine").await.unwrap();
    within(10, checks).await.unwrap();
    // Sending a frame over our own limit is refused locally too.
    let err = d.write_frame(&vec![0u8; (8 << 20) + 1]).await.unwrap_err();
    assert!(matches!(
        err,
        ChannelError::Frame(FrameError::TooLarge { .. })
    ));
    drop((a, b, c, d));
    p.shutdown().await;
}

async fn raw_client(ep: &duplex::Endpoint, cid: &Identity, user: &str) -> client::Handle<RawSsh> {
    let dir = duplex_tests::TempDir::new("raw");
    let path = dir.0.join("k");
    cid.save(&path).unwrap();
    let key = russh::keys::load_secret_key(&path, None).unwrap();
    let mut h = client::connect(
        Arc::new(client::Config::default()),
        ("127.0.0.1", port(ep)),
        RawSsh,
    )
    .await
    .unwrap();
    let r = h
        .authenticate_publickey(
            user,
            russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None),
        )
        .await
        .unwrap();
    assert!(r.success());
    // Say hello so the server treats channels as Duplex channels.
    let hello = h
        .channel_open_direct_tcpip("@hello", 1, "name=raw&version=1", 0)
        .await
        .unwrap();
    drop(hello);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_opens_are_refused() {
    let (server, ep, sid, cid) = echo_server().await;
    let h = raw_client(&ep, &cid, "raw").await;
    let too_many: String = (0..100)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join("&");
    let too_big = format!("k={}", "x".repeat(20_000));
    // Each refusal says what was wrong (the SSH open failure's description,
    // which the vendored russh hands to the opener).
    let cases: Vec<(&str, String, &str)> = vec![
        ("echo", "bad%zz".into(), "malformed header block"),
        ("echo", "novalue".into(), "malformed header block"),
        ("echo", "=v".into(), "header key is empty"),
        ("echo", "k=%FF%FE".into(), "not valid UTF-8"),
        ("echo", too_many, "too many headers"),
        ("echo", too_big, "header block too large"),
        // The opener's window (PROTOCOL.md section 3), malformed: the
        // reason names the window, not the block.
        (
            "echo",
            "%40window=".into(),
            "malformed @window pair: no digits",
        ),
        (
            "echo",
            "%40window=4294967296".into(),
            "malformed @window pair: over 4294967295",
        ),
        (
            "echo",
            "%40window=12345678901&a=b".into(),
            "malformed @window pair: more than 10 digits",
        ),
        (
            "echo",
            "%40window=1&".into(),
            "malformed @window pair: an '&' with nothing after it",
        ),
        (
            "echo",
            "%40window=x&a=b".into(),
            "malformed @window pair: not decimal digits",
        ),
        (
            "echo",
            "@window=65536&a=b".into(),
            "malformed @window pair: its '@' is not percent-encoded",
        ),
        ("bad service name", String::new(), "service name"),
        ("@reserved", String::new(), "reserved"),
        ("", String::new(), "service name"),
    ];
    for (service, originator, said) in cases {
        let r = h
            .channel_open_direct_tcpip(service, 1, originator.clone(), 0)
            .await;
        match r {
            Err(russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::Other {
                code,
                reason,
            })) => {
                assert!(
                    code == 1 || code == 4,
                    "{service:?} {originator:.40}: code {code}"
                );
                assert!(
                    reason.contains(said),
                    "{service:?} {originator:.40}: {reason:?} does not say {said:?}"
                );
            }
            Err(other) => panic!("{service:?}: unexpected error {other:?}"),
            Ok(_) => panic!("{service:?} {originator:.40}: open was accepted"),
        }
    }
    // A parent reference of an unknown kind is malformed.
    assert!(h.channel_open_direct_tcpip("echo", 9, "", 7).await.is_err());
    // A nested open naming a parent that does not exist (ours or theirs) is
    // refused with a reason: a REJECT record (type 3), then the close.
    for port in [1, 2] {
        let mut ch = h
            .channel_open_direct_tcpip("echo", port, "", 7)
            .await
            .unwrap();
        let mut control = Vec::new();
        within(10, async {
            while let Some(msg) = ch.wait().await {
                match msg {
                    russh::ChannelMsg::ExtendedData {
                        data,
                        ext: 0x6475_7801,
                    } => control.extend_from_slice(&data),
                    russh::ChannelMsg::Close => break,
                    _ => {}
                }
            }
        })
        .await;
        assert_eq!(control.get(4), Some(&3), "a REJECT record: {control:?}");
        let reason = String::from_utf8_lossy(&control[5..]);
        // Each reference kind says which numbering it was resolved in.
        let want = if port == 1 {
            "reference kind 1"
        } else {
            "reference kind 2"
        };
        assert!(
            reason.contains("no channel") && reason.contains(want),
            "{reason}"
        );
    }
    // A well-formed open on the same connection still works.
    let ch = h
        .channel_open_direct_tcpip("echo", 1, "a=b", 0)
        .await
        .unwrap();
    drop(ch);
    still_serves(&ep, &sid, &cid).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_ignoring_flow_control_loses_its_channel_only() {
    let (server, ep, sid, cid) = echo_server().await;
    let h = raw_client(&ep, &cid, "raw").await;
    // Open and send 4 MiB at once, without waiting for any credit.
    let ch = h.channel_open_direct_tcpip("echo", 1, "", 0).await.unwrap();
    let (mut r, w) = ch.split();
    let blast = tokio::spawn(async move {
        let _ = w
            .data_bytes(bytes::Bytes::from(random_bytes(4 << 20)))
            .await;
        w
    });
    // The server closes the offending channel.
    let closed = within(15, async {
        loop {
            match r.wait().await {
                Some(russh::ChannelMsg::Close) | None => break true,
                Some(_) => {}
            }
        }
    })
    .await;
    assert!(closed);
    drop(blast);
    // The connection itself and the server are fine.
    let ch2 = h.channel_open_direct_tcpip("echo", 1, "", 0).await.unwrap();
    drop(ch2);
    let (chans, buffered) = server.channel_stats("raw");
    assert!(
        buffered <= 256 << 10,
        "{buffered} bytes buffered over {chans} channels"
    );
    still_serves(&ep, &sid, &cid).await;
    server.shutdown().await;
}

/// The same hostile client without the hello is a plain SSH client: its
/// data is bounded by connection-level backpressure instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_flood_is_bounded() {
    init_tracing();
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let config = Config::default().plain_channel_buffer(64 << 10).unwrap();
    let server = peer_trusting("server", &sid, &[&cid], config);
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let s = server.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let ch = s.accept().await.unwrap().accept().await;
        tx.send(ch).unwrap();
    });
    let dir = duplex_tests::TempDir::new("plain");
    cid.save(dir.0.join("k")).unwrap();
    let key = russh::keys::load_secret_key(dir.0.join("k"), None).unwrap();
    let mut h = client::connect(
        Arc::new(client::Config::default()),
        ("127.0.0.1", port(&ep)),
        RawSsh,
    )
    .await
    .unwrap();
    let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None);
    assert!(
        h.authenticate_publickey("plain", key)
            .await
            .unwrap()
            .success()
    );
    let ch = h
        .channel_open_direct_tcpip("sink", 1, "127.0.0.1", 5555)
        .await
        .unwrap();
    let mut accepted = rx.await.unwrap();
    assert!(accepted.headers().is_empty());
    let data = random_bytes(8 << 20);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        ch.data_bytes(bytes::Bytes::from(sent)).await.unwrap();
        ch.eof().await.unwrap();
        ch
    });
    // Wait until the buffer is full; it never exceeds bound + one packet.
    within(15, async {
        while accepted.buffered_len() < 64 << 10 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let held = accepted.buffered_len();
        assert!(
            held <= (64 << 10) + 32 * 1024 + 1024,
            "{held} bytes buffered"
        );
    }
    let mut got = Vec::new();
    within(30, accepted.read_to_end(&mut got)).await.unwrap();
    assert!(got == data);
    drop(writer.await.unwrap());
    server.shutdown().await;
}

/// The opener's initial window rides in the open (`@window`), so the
/// receiver answers at once; an opener that leaves it out is answered once
/// its `WINDOW` record grants credit (PROTOCOL.md sections 3 and 6.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openers_window_comes_in_the_open_or_in_a_record() {
    const CONTROL: u32 = 0x6475_7801;
    let (server, ep, sid, cid) = echo_server().await;
    let h = raw_client(&ep, &cid, "raw").await;
    for with_window in [true, false] {
        let originator = if with_window {
            "%40window=65536&a=b"
        } else {
            "a=b"
        };
        let ch = h
            .channel_open_direct_tcpip("echo", 1, originator, 0)
            .await
            .unwrap();
        let (mut r, w) = ch.split();
        // Wait for ACCEPT (type 1): the server's credit to send with.
        let mut control = Vec::new();
        within(10, async {
            while control.len() < 13 {
                match r.wait().await {
                    Some(russh::ChannelMsg::ExtendedData { data, ext: CONTROL }) => {
                        control.extend_from_slice(&data)
                    }
                    Some(_) => {}
                    None => panic!("channel closed before ACCEPT"),
                }
            }
        })
        .await;
        assert_eq!(control[4], 1, "an ACCEPT record: {control:?}");
        if !with_window {
            // Grant 64 KiB the old way: a WINDOW record (type 2).
            let mut rec = vec![0, 0, 0, 5, 2];
            rec.extend_from_slice(&(64u32 << 10).to_be_bytes());
            w.extended_data_bytes(CONTROL, bytes::Bytes::from(rec))
                .await
                .unwrap();
        }
        w.data_bytes(bytes::Bytes::from_static(b"ping"))
            .await
            .unwrap();
        let mut echoed = Vec::new();
        within(10, async {
            while echoed.len() < 4 {
                match r.wait().await {
                    Some(russh::ChannelMsg::Data { data }) => echoed.extend_from_slice(&data),
                    Some(_) => {}
                    None => panic!("channel closed before the echo"),
                }
            }
        })
        .await;
        assert_eq!(echoed, b"ping", "with_window {with_window}");
        w.close().await.unwrap();
    }
    still_serves(&ep, &sid, &cid).await;
    server.shutdown().await;
}
