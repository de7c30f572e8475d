//! Done-when 2 and 3: one peer bound and connected to two others at once,
//! names and fingerprints on both sides, round-robin; untrusted client keys
//! and unexpected host keys are refused with clear errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;

use duplex::{
    AuthorizedKeys, ConnectError, Direction, Headers, HostKeyError, Identity, KnownHosts, Peer,
};
use duplex_tests::{init_tracing, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_bound_and_connected_to_two() {
    init_tracing();
    let (hub_id, a_id, b_id, c_id) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let all = [&hub_id, &a_id, &b_id, &c_id];
    let hub = peer_trusting("hub", &hub_id, &all, Default::default());
    let a = peer_trusting("a", &a_id, &all, Default::default());
    let b = peer_trusting("b", &b_id, &all, Default::default());
    let c = peer_trusting("c", &c_id, &all, Default::default());

    // `a` dials the hub; the hub dials `b` and `c`.
    let hub_ep = hub.bind("tcp://127.0.0.1:0").await.unwrap();
    let b_ep = b.bind("tcp://127.0.0.1:0").await.unwrap();
    let c_ep = c.bind("tcp://127.0.0.1:0").await.unwrap();
    let info = a.connect(&hub_ep).await.unwrap();
    assert_eq!(info.name, "hub");
    assert_eq!(info.fingerprint, hub_id.fingerprint());
    assert_eq!(info.direction, Direction::Outbound);
    assert_eq!(hub.connect(&b_ep).await.unwrap().name, "b");
    assert_eq!(hub.connect(&c_ep).await.unwrap().name, "c");

    let seen: HashSet<_> = hub
        .peers()
        .into_iter()
        .map(|p| (p.name, p.fingerprint, p.direction))
        .collect();
    let want: HashSet<_> = [
        ("a".to_owned(), a_id.fingerprint(), Direction::Inbound),
        ("b".to_owned(), b_id.fingerprint(), Direction::Outbound),
        ("c".to_owned(), c_id.fingerprint(), Direction::Outbound),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, want);
    for (p, id) in [(&a, &a_id), (&b, &b_id), (&c, &c_id)] {
        let peers = p.peers();
        assert_eq!(peers.len(), 1, "{} sees {peers:?}", id.fingerprint());
        assert_eq!(peers[0].name, "hub");
        assert_eq!(peers[0].fingerprint, hub_id.fingerprint());
    }
    assert!(
        hub.peers().iter().any(|p| p.endpoint == b_ep.to_string()),
        "outbound endpoint is the dialled one"
    );

    // next_peer cycles through all three.
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(hub.next_peer().unwrap().name);
    }
    let first: HashSet<_> = names[..3].iter().cloned().collect();
    assert_eq!(first.len(), 3, "{names:?}");
    assert_eq!(names[..3], names[3..], "round-robin order repeats");

    // The hub opens to each (including `a`, which dialled it), and each
    // serves.
    for p in [&a, &b, &c] {
        let p = p.clone();
        tokio::spawn(async move {
            let mut ch = p.accept().await.unwrap().accept().await;
            let name = ch.meta().local_peer().to_owned();
            ch.write_all(name.as_bytes()).await.unwrap();
            ch.close_write().await.unwrap();
        });
    }
    for name in ["a", "b", "c"] {
        let mut ch = hub.open(name, "whoami", Headers::new()).await.unwrap();
        let mut got = String::new();
        within(10, ch.read_to_string(&mut got)).await.unwrap();
        assert_eq!(got, name);
    }

    // drop_peer and disconnect remove peers on both sides.
    assert!(hub.drop_peer("a").await);
    assert!(hub.disconnect(&b_ep).await);
    within(10, async {
        while hub.peers().len() != 1 || !a.peers().is_empty() || !b.peers().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(hub.peers()[0].name, "c");
    for p in [hub, a, b, c] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_key_is_refused() {
    init_tracing();
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let server = Peer::builder()
        .name("server")
        .identity(sid.clone())
        .authorized_keys(AuthorizedKeys::new().with(Identity::generate().public_key()))
        .build()
        .unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let client = Peer::builder()
        .name("client")
        .identity(cid.clone())
        .known_hosts(KnownHosts::new().with_pinned(sid.public_key()))
        // Opens below must fail at once, not wait for the peer.
        .config(duplex::Config::default().peer_wait_timeout(std::time::Duration::ZERO))
        .build()
        .unwrap();
    let err = within(10, client.connect(&ep)).await.unwrap_err();
    match &err {
        ConnectError::AuthRejected { fingerprint, .. } => {
            assert_eq!(*fingerprint, cid.fingerprint())
        }
        other => panic!("expected AuthRejected, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("rejected our key") && msg.contains(&cid.fingerprint().to_string()),
        "{msg}"
    );
    assert!(server.peers().is_empty() && client.peers().is_empty());
    // No channel can be opened either way.
    assert!(client.open("server", "x", Headers::new()).await.is_err());
    server.shutdown().await;
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_mismatch_names_both_fingerprints() {
    init_tracing();
    let (sid, cid, other) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let server = peer_trusting("server", &sid, &[&cid], Default::default());
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let port = match &ep {
        duplex::Endpoint::Tcp { port, .. } => *port,
        _ => unreachable!(),
    };
    // The client's known_hosts names another key for this host.
    let kh = KnownHosts::parse(&format!(
        "[127.0.0.1]:{port} {}",
        other.public_key().to_openssh()
    ))
    .unwrap();
    let client = Peer::builder()
        .name("client")
        .identity(cid)
        .known_hosts(kh)
        .build()
        .unwrap();
    let err = within(10, client.connect(&ep)).await.unwrap_err();
    match &err {
        ConnectError::HostKey {
            source: HostKeyError::Mismatch {
                expected, actual, ..
            },
            ..
        } => {
            assert_eq!(expected, &vec![other.fingerprint()]);
            assert_eq!(*actual, sid.fingerprint());
        }
        e => panic!("expected a host key mismatch, got {e:?}"),
    }
    let msg = duplex::error::full_text(&err);
    assert!(msg.contains(&other.fingerprint().to_string()), "{msg}");
    assert!(msg.contains(&sid.fingerprint().to_string()), "{msg}");
    assert!(msg.contains(&ep.to_string()), "{msg}");

    // A host that is in no list at all is "unknown", also naming the key.
    let stranger = Peer::builder().name("s").build().unwrap();
    let err = within(10, stranger.connect(&ep)).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectError::HostKey {
                source: HostKeyError::Unknown { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(server.peers().is_empty());
    server.shutdown().await;
    client.shutdown().await;
    stranger.shutdown().await;
}

/// A trusted peer whose key comes from an OpenSSH-format file pair written
/// by the library and read back, with known_hosts in a file too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_from_files() {
    init_tracing();
    let dir = duplex_tests::TempDir::new("trust");
    let (sid, cid) = (Identity::generate(), Identity::generate());
    sid.save(dir.0.join("server_key")).unwrap();
    cid.save(dir.0.join("client_key")).unwrap();
    let client_pub = std::fs::read_to_string(dir.0.join("client_key.pub")).unwrap();
    std::fs::write(
        dir.0.join("authorized_keys"),
        format!("# comment\nno-pty {client_pub}"),
    )
    .unwrap();
    let server = Peer::builder()
        .name("server")
        .identity(Identity::load(dir.0.join("server_key")).unwrap())
        .authorized_keys(AuthorizedKeys::from_file(dir.0.join("authorized_keys")).unwrap())
        .build()
        .unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let duplex::Endpoint::Tcp { port, .. } = &ep else {
        unreachable!()
    };
    let server_pub = std::fs::read_to_string(dir.0.join("server_key.pub")).unwrap();
    std::fs::write(
        dir.0.join("known_hosts"),
        format!("[127.0.0.1]:{port} {server_pub}"),
    )
    .unwrap();
    let client = Peer::builder()
        .name("client")
        .identity(Identity::load(dir.0.join("client_key")).unwrap())
        .known_hosts(KnownHosts::from_file(dir.0.join("known_hosts")).unwrap())
        .build()
        .unwrap();
    let info = client.connect(&ep).await.unwrap();
    assert_eq!(info.fingerprint, sid.fingerprint());
    server.shutdown().await;
    client.shutdown().await;
}

/// The listener opens a channel the moment the dialler appears in its peer
/// list; the dialler sees it as a Duplex channel from the named peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_opens_immediately_after_hello() {
    init_tracing();
    for _ in 0..20 {
        let (sid, cid) = (Identity::generate(), Identity::generate());
        let server = peer_trusting("server", &sid, &[&cid], Default::default());
        let client = peer_trusting("client", &cid, &[&sid], Default::default());
        let (a, b) = tokio::io::duplex(64 << 10);
        server.serve_stream(b, "memory");
        let s = server.clone();
        let opener = tokio::spawn(async move {
            while s.peers().is_empty() {
                tokio::task::yield_now().await;
            }
            let mut ch = s
                .open("client", "early", Headers::new().with("h", "1"))
                .await
                .unwrap();
            ch.write_all(b"early bird").await.unwrap();
            ch.close_write().await.unwrap();
        });
        let c = client.clone();
        let acceptor = tokio::spawn(async move {
            let inc = c.accept().await.unwrap();
            assert_eq!(inc.meta().remote_peer(), "server");
            assert_eq!(inc.headers().get("h"), Some("1"));
            let mut ch = inc.accept().await;
            let mut got = Vec::new();
            ch.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"early bird");
        });
        client.connect_stream(a, "memory").await.unwrap();
        within(10, opener).await.unwrap();
        within(10, acceptor).await.unwrap();
        client.shutdown().await;
        server.shutdown().await;
    }
}
