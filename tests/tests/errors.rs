//! Issue 18, point 6: no error repeats itself. One rule for every error
//! type of both crates: a wrapper's `Display` says what failed, and its
//! cause is only in `source()`. Each error kind below is made for real
//! where that is cheap (a refused connect, an untrusted host key, a port in
//! use, a missing key file, a call to a peer that is not there) and built
//! directly otherwise; the test walks its `source()` chain and finds no
//! text of a cause inside the text of an error above it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::io;
use std::time::Duration;

use duplex::{
    Backoff, ChannelError, ClaimError, Config, ConnectError, ControlError, FrameError, HeaderError,
    Identity, JoinError, JoinStats, KnownHosts, OpenError, Peer, SpliceError,
};
use duplex_rpc::{Client, RpcError, TransportError};
use duplex_tests::{TempDir, ids, init_tracing, peer_trusting, within};

/// The texts of `e` and its causes, outermost first, checked for repeats.
fn assert_says_each_thing_once(what: &str, e: &(dyn Error + 'static)) -> Vec<String> {
    let mut texts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        texts.push(c.to_string());
        cause = c.source();
    }
    for (i, outer) in texts.iter().enumerate() {
        for inner in &texts[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{what}: {outer:?} repeats its cause {inner:?} (chain: {texts:?})"
            );
        }
    }
    // And `full_text` says everything, once each.
    assert_eq!(duplex::error::full_text(e), texts.join(": "), "{what}");
    texts
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_bind_errors_say_each_thing_once() {
    init_tracing();
    let ep = format!("tcp://127.0.0.1:{}", closed_port());
    let once = Config::default().connect_backoff(Backoff::default().max_attempts(Some(1)));
    let p = Peer::builder().config(once.unwrap()).build().unwrap();
    // Refused: Io, inside GaveUp.
    let e = within(30, p.connect(ep.as_str())).await.unwrap_err();
    let texts = assert_says_each_thing_once("refused", &e);
    assert!(texts.len() >= 2, "the OS error is a cause: {texts:?}");
    let twice = Config::default().connect_backoff(
        Backoff::default()
            .max_attempts(Some(2))
            .initial(Duration::from_millis(1)),
    );
    let p2 = Peer::builder().config(twice.unwrap()).build().unwrap();
    let e = within(30, p2.connect(ep.as_str())).await.unwrap_err();
    assert!(matches!(e, ConnectError::GaveUp { .. }), "{e:?}");
    let texts = assert_says_each_thing_once("gave up", &e);
    assert!(texts.len() >= 3, "GaveUp -> Io -> OS error: {texts:?}");

    // An untrusted host key: HostKey, with the fingerprints in its cause.
    let (sid, cid) = ids();
    let server = peer_trusting("server", &sid, &[&cid], Config::default());
    let bound = server.bind("tcp://127.0.0.1:0").await.unwrap();
    let stranger = Peer::builder()
        .identity(cid.clone())
        .known_hosts(KnownHosts::new().with_pinned(Identity::generate().public_key()))
        .config(Config::default().reconnect(false))
        .build()
        .unwrap();
    let e = within(30, stranger.connect(&bound)).await.unwrap_err();
    assert!(matches!(e, ConnectError::HostKey { .. }), "{e:?}");
    let texts = assert_says_each_thing_once("host key", &e);
    assert!(
        texts[1].contains(&sid.fingerprint().to_string()),
        "{texts:?}"
    );

    // A key the server does not trust: the message says the name may be
    // the problem too.
    let unknown = Peer::builder()
        .name("client")
        .known_hosts(KnownHosts::new().with_pinned(sid.public_key()))
        .config(Config::default().reconnect(false))
        .build()
        .unwrap();
    let e = within(30, unknown.connect(&bound)).await.unwrap_err();
    assert!(matches!(e, ConnectError::AuthRejected { .. }), "{e:?}");
    assert_says_each_thing_once("auth", &e);
    assert!(e.to_string().contains("the name is the problem"), "{e}");

    // A port in use: BindError::Io.
    let e = server.bind(bound.to_string().as_str()).await.unwrap_err();
    let texts = assert_says_each_thing_once("bind", &e);
    assert_eq!(texts.len(), 2, "{texts:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_keys_opens_calls_and_joins_say_each_thing_once() {
    init_tracing();
    let dir = TempDir::new("errors");
    let e = Identity::load(dir.0.join("missing")).unwrap_err();
    assert_eq!(assert_says_each_thing_once("key file", &e).len(), 2);

    // A call to a peer that is not there: Transport -> Open.
    let config = Config::default().peer_wait_timeout(Duration::from_millis(50));
    let p = Peer::builder().config(config).build().unwrap();
    let e = Client::new(p.clone())
        .to("nobody")
        .call::<_, i64>("Calc.Add", &(1, 2))
        .await
        .unwrap_err();
    let texts = assert_says_each_thing_once("rpc transport", &e);
    assert!(texts.len() >= 2 && texts[1].contains("nobody"), "{texts:?}");
    // Its status (what a handler's `?` sends on) carries the whole text.
    let st = duplex_rpc::Status::from(e);
    assert!(st.message().contains("nobody"), "{st}");

    // A claim refused.
    let _a = p.acceptor(["svc"]).unwrap();
    let e = p.acceptor(["svc"]).unwrap_err();
    assert!(matches!(e, ClaimError::Taken { .. }));
    assert_says_each_thing_once("claim", &e);

    // Built directly: the wrappers whose causes are hard to provoke here.
    let made: Vec<(&str, Box<dyn Error + 'static>)> = vec![
        (
            "open headers",
            Box::new(OpenError::Headers(HeaderError::EmptyKey)),
        ),
        (
            "control frame",
            Box::new(ControlError::Frame(FrameError::TooLarge { len: 9, max: 1 })),
        ),
        (
            "join",
            Box::new(JoinError {
                stats: JoinStats::default(),
                source: io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer"),
            }),
        ),
        (
            "splice",
            Box::new(SpliceError {
                stats: JoinStats::default(),
                source: ChannelError::Aborted("bob aborted the channel: disk full".into()),
            }),
        ),
        (
            "rpc over a lost connection",
            Box::new(RpcError::Transport {
                method: "Calc.Add".into(),
                source: TransportError::Channel(ChannelError::ConnectionLost(
                    "connection reset".into(),
                )),
            }),
        ),
        (
            "plugin spawn",
            Box::new(duplex::plugin::PluginError::Spawn {
                name: "greeter".into(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
            }),
        ),
        (
            "plugin connect",
            Box::new(duplex::plugin::PluginError::Connect(
                ConnectError::Handshake {
                    endpoint: "stdio".into(),
                    reason: "eof".into(),
                },
            )),
        ),
    ];
    for (what, e) in &made {
        let texts = assert_says_each_thing_once(what, e.as_ref());
        assert!(texts.len() >= 2, "{what} has a cause: {texts:?}");
    }
    // "connection lost" once, not twice.
    let lost = duplex::error::full_text(made[4].1.as_ref());
    assert_eq!(lost.matches("connection lost").count(), 1, "{lost}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_named_once() {
    let p = duplex_tests::pair(duplex_tests::Transport::Tcp).await;
    let _s = duplex_rpc::Server::new(duplex_rpc::Router::new())
        .serve(&p.server)
        .unwrap();
    let e = Client::new(p.client.clone())
        .to("server")
        .call::<_, ()>("Agent.Nope", &())
        .await
        .unwrap_err();
    let text = duplex::error::full_text(&e);
    assert_eq!(text.matches("Agent.Nope").count(), 1, "{text}");
    assert_says_each_thing_once("unknown method", &e);
    p.shutdown().await;
}
