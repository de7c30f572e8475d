//! Protocol conformance, the listener's side: a scripted raw SSH client
//! (`duplex_tests::wire`) dials a Duplex listener and checks each rule of
//! `docs/PROTOCOL.md` on the wire, record by record. One test per rule,
//! named after its section; `tests/CONFORMANCE.md` maps rule ids to tests
//! (and `conformance_table_is_complete` keeps the two in step).
//!
//! Unless a test says otherwise the connection speaks protocol version 2
//! (`dial_v2`): half-close is the `EOF` record, SSH EOF comes last.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use duplex::{
    AuthorizedKeys, Channel, ChannelError, Config, Headers, Identity, IncomingChannel, Peer,
};
use duplex_tests::wire::{
    CONTROL, Ev, Record, Refused, STDERR, WireChannel, WireConn, frame, headers,
};
use duplex_tests::{init_tracing, peer_trusting, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

// ---------------------------------------------------------------- fixture

/// A Duplex listener named "server" that trusts the returned client key
/// under any name.
struct Fixture {
    server: Peer,
    ep: duplex::Endpoint,
    cid: Identity,
}

impl Fixture {
    async fn new(config: Config) -> Fixture {
        init_tracing();
        let (sid, cid) = (Identity::generate(), Identity::generate());
        let server = peer_trusting("server", &sid, &[&cid], config);
        let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
        Fixture { server, ep, cid }
    }

    async fn v2(&self) -> WireConn {
        WireConn::dial_v2(&self.ep, "raw", &self.cid).await
    }

    async fn v3(&self) -> WireConn {
        WireConn::dial_v3(&self.ep, "raw", &self.cid).await
    }

    async fn v1(&self) -> WireConn {
        WireConn::dial_v1(&self.ep, "raw", &self.cid).await
    }

    async fn plain(&self) -> WireConn {
        WireConn::dial(&self.ep, "plain", &self.cid).await
    }

    /// The next channel the server's application is offered.
    async fn incoming(&self) -> IncomingChannel {
        within(10, self.server.accept())
            .await
            .expect("the server stopped accepting")
    }

    async fn accepted(&self) -> Channel {
        self.incoming().await.accept().await
    }

    /// Every channel accepted and echoed (each with close_write at the end).
    fn echo(&self) {
        let s = self.server.clone();
        tokio::spawn(async move {
            while let Some(inc) = s.accept().await {
                tokio::spawn(echo_channel(inc.accept().await));
            }
        });
    }

    async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

async fn echo_channel(ch: Channel) {
    let (mut r, mut w) = ch.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.close_write().await;
}

/// An application task holding a channel (which it returns).
struct Bg(tokio::task::JoinHandle<Channel>);

impl Bg {
    async fn join(self) -> Channel {
        within(10, self.0).await.unwrap()
    }
}

/// A refusal at the SSH level with `code`; returns its description.
fn refused(r: Result<WireChannel, Refused>, code: u32, what: &str) -> String {
    match r {
        Err(f) => {
            assert_eq!(f.code, code, "{what}: {f:?}");
            f.description.unwrap_or_default()
        }
        Ok(ch) => panic!("{what}: the open was confirmed ({ch:?})"),
    }
}

/// A version-2 violation: `PROTOCOL_ERROR` (skipping data still in
/// flight), then the close; returns the reason.
async fn violation_v2(ch: &mut WireChannel) -> String {
    loop {
        match ch.next_event().await {
            Ev::Data(_) | Ev::Ext(STDERR, _) => continue,
            Ev::Record(Record::ProtocolError(r)) => {
                ch.expect_end().await;
                return r;
            }
            other => panic!("expected PROTOCOL_ERROR then the close, got {other:?}"),
        }
    }
}

/// A version-1 violation: a bare close, with no EOF and no record before
/// it.
async fn violation_v1(ch: &mut WireChannel) {
    loop {
        match ch.next_event().await {
            Ev::Data(_) | Ev::Ext(STDERR, _) => continue,
            Ev::Close => return,
            other => panic!("expected a bare close, got {other:?}"),
        }
    }
}

/// The connection still serves: a fresh channel echoes.
async fn still_serves(conn: &WireConn) {
    let (mut ch, _, _) = conn.open_accepted("echo", 65536, "").await;
    ch.send_data(b"still here").await;
    ch.expect_data(b"still here").await;
    ch.send_close().await;
}

// ---------------------------------------------------------------- 1. auth

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_publickey_only() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::connect(&f.ep).await;
    assert!(!c.auth_none("raw").await, "none accepted");
    assert!(
        !c.auth_password("raw", "hunter2").await,
        "password accepted"
    );
    assert!(!c.auth("raw", &Identity::generate()).await, "untrusted key");
    assert!(c.auth("raw", &f.cid).await, "the trusted key refused");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_names_bound_to_keys_at_auth() {
    init_tracing();
    let (sid, alice, mallory) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let text = format!(
        "duplex-name=\"alice\" {}\n{}\n",
        alice.public_key().to_openssh(),
        mallory.public_key().to_openssh()
    );
    let server = Peer::builder()
        .name("server")
        .identity(sid)
        .authorized_keys(AuthorizedKeys::parse(&text).unwrap())
        .build()
        .unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    // A bound name only for its key; a key with bound names only under them.
    for (user, key, ok) in [
        ("alice", &mallory, false),
        ("bob", &alice, false),
        ("alice", &alice, true),
        ("mallory", &mallory, true),
        ("anyone", &mallory, true),
    ] {
        let c = WireConn::connect(&ep).await;
        assert_eq!(c.auth(user, key).await, ok, "{user}");
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------- 2. hello

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_answer_is_hello_then_eof_and_close() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    // `hello` checks the order: HELLO record, SSH EOF, close, nothing else.
    let a = c.hello("name=raw&version=1&max-version=2").await.unwrap();
    assert_eq!(a.get("name"), Some("server"), "{a:?}");
    assert_eq!(a.get("version"), Some("2"), "{a:?}");
    // The remote is a peer named by its SSH user name.
    within(10, async {
        while f.server.peers().iter().all(|p| p.name != "raw") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_version_1_only_gets_version_1() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let a = c.hello("name=raw&version=1").await.unwrap();
    assert_eq!(a.get("version"), Some("1"), "{a:?}");
    assert_eq!(a.get("name"), Some("server"), "{a:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_picks_the_lower_maximum() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let a = c.hello("name=raw&version=1&max-version=9").await.unwrap();
    assert_eq!(a.get("version"), Some("3"), "{a:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_version_refused() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let err = c
        .hello("name=raw&version=4&max-version=5")
        .await
        .unwrap_err();
    assert_eq!(err.code, 1, "{err:?}");
    let d = err.description.unwrap();
    assert!(
        d.contains('4') && d.contains('3'),
        "names both versions: {d}"
    );
    // The connection stays up (plain): a hello may not follow, but opens do.
    assert!(f.server.peers().is_empty());
    f.shutdown().await;
}

/// r2-5: a refused hello was the first open too; a second hello is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_after_a_refused_hello_refused() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let first = c.hello("name=raw&version=4").await.unwrap_err();
    assert_eq!(first.code, 1, "{first:?}");
    let second = c
        .hello("name=raw&version=1&max-version=2")
        .await
        .unwrap_err();
    assert_eq!(second.code, 1, "{second:?}");
    let d = second.description.unwrap();
    assert!(d.contains("first channel open"), "{d}");
    assert!(f.server.peers().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_name_must_equal_user() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let err = c
        .hello("name=other&version=1&max-version=2")
        .await
        .unwrap_err();
    assert_eq!(err.code, 1, "{err:?}");
    let d = err.description.unwrap();
    assert!(d.contains("other") && d.contains("raw"), "{d}");
    assert!(f.server.peers().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_without_name_refused() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let err = c.hello("version=1&max-version=2").await.unwrap_err();
    assert_eq!(err.code, 1, "{err:?}");
    assert!(err.description.unwrap().contains("name"));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_must_be_the_first_open() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let mut first = c.open_top("echo", "127.0.0.1").await.unwrap();
    first.send_data(b"x").await;
    first.expect_data(b"x").await; // plain: no ACCEPT record
    let err = c
        .hello("name=raw&version=1&max-version=2")
        .await
        .unwrap_err();
    assert_eq!(err.code, 1, "{err:?}");
    // Plain for good: the next open is answered at the SSH level only.
    let mut ch = c.open_top("echo", "%40window=65536").await.unwrap();
    ch.send_data(b"y").await;
    ch.expect_data(b"y").await;
    assert!(f.server.peers().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_after_the_handshake_timeout_refused() {
    let f = Fixture::new(Config::default().handshake_timeout(Duration::from_secs(2))).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    // Waits out the time limit (this sleep is the subject of the test, not
    // a synchronisation).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = c
        .hello("name=raw&version=1&max-version=2")
        .await
        .unwrap_err();
    assert_eq!(err.code, 1, "{err:?}");
    let d = err.description.unwrap();
    assert!(d.contains("handshake"), "{d}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_ignores_other_headers() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let a = c
        .hello("%40window=5&name=raw&x=y&version=1&max-version=2")
        .await
        .unwrap();
    assert_eq!(a.get("version"), Some("2"), "{a:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_malformed_refused() {
    let f = Fixture::new(Config::default()).await;
    let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
    let err = c.hello("name=raw&version=1&bad%zz").await.unwrap_err();
    assert_eq!(err.code, 1, "{err:?}");
    assert!(err.description.unwrap().contains("malformed"));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_hello_bad_version_fields_refused() {
    let f = Fixture::new(Config::default()).await;
    for hello in [
        "name=raw",
        "name=raw&version=",
        "name=raw&version=one",
        "name=raw&version=1&max-version=two",
        "name=raw&version=2&max-version=1",
    ] {
        let c = WireConn::dial(&f.ep, "raw", &f.cid).await;
        let err = c.hello(hello).await.unwrap_err();
        assert_eq!(err.code, 1, "{hello}: {err:?}");
        assert!(err.description.unwrap().contains("version"), "{hello}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_1_names_of_several_lines_combine() {
    init_tracing();
    let (sid, alice) = (Identity::generate(), Identity::generate());
    let k = alice.public_key().to_openssh();
    let text = format!("duplex-name=\"alice\" {k}\nduplex-name=\"al\" {k}\n");
    let server = Peer::builder()
        .name("server")
        .identity(sid)
        .authorized_keys(AuthorizedKeys::parse(&text).unwrap())
        .build()
        .unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    for (user, ok) in [("alice", true), ("al", true), ("bob", false)] {
        let c = WireConn::connect(&ep).await;
        assert_eq!(c.auth(user, &alice).await, ok, "{user}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_plain_connection_is_not_a_peer() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.plain().await;
    let mut ch = c.open_top("echo", "127.0.0.1").await.unwrap();
    ch.send_data(b"x").await;
    ch.expect_data(b"x").await;
    assert!(f.server.peers().is_empty());
    // The listener never opens channels to it.
    assert!(f.server.open("plain", "svc", Headers::new()).await.is_err());
    c.expect_no_open_within(100).await;
    f.shutdown().await;
}

// ---------------------------------------------------------------- 3. opens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_service_name_rules() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.v2().await;
    let long = "a".repeat(256);
    for bad in ["", "a b", "caf\u{e9}", "a\0b", "a:b", "a*b", long.as_str()] {
        let d = refused(c.open_top(bad, "%40window=1024").await, 1, bad);
        assert!(!d.is_empty(), "{bad:?}: the description says which");
    }
    // 255 bytes of every allowed kind of character is a valid name.
    let ok = format!("Az09-._/+~{}", "x".repeat(245));
    assert_eq!(ok.len(), 255);
    let (ch, _, _) = c.open_accepted(&ok, 1024, "").await;
    ch.send_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_reserved_service_refused() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.v2().await;
    for name in ["@foo", "@hello", "@"] {
        let d = refused(c.open_top(name, "%40window=1024").await, 1, name);
        assert!(d.contains("reserved") || d.contains('@'), "{name}: {d}");
    }
    still_serves(&c).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_top_level_port_is_ignored() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.v2().await;
    for port in [0, 1, 22, 65535] {
        let mut ch = c.open("echo", port, "%40window=1024", 0).await.unwrap();
        ch.expect_accept().await;
        ch.send_data(b"p").await;
        ch.expect_data(b"p").await;
        ch.send_close().await;
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_window_pair_present() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = c.open_accepted("svc", 4, "k=v");
    let app = async {
        let inc = f.incoming().await;
        let h: Vec<_> = inc
            .headers()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(h, [("k".to_owned(), "v".to_owned())], "the pair is removed");
        let mut ch = inc.accept().await;
        // The opener's window is known at once: 4 bytes may go.
        Bg(tokio::spawn(async move {
            ch.write_all(b"abcdefgh").await.unwrap();
            ch
        }))
    };
    let ((mut ch, _, _), writer) = tokio::join!(open, app);
    ch.expect_data(b"abcd").await;
    ch.expect_quiet(200).await; // the other 4 wait for credit
    ch.send_window(4).await;
    ch.expect_data(b"efgh").await;
    drop(writer.join().await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_window_pair_absent_means_zero_window() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "k=v").await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        Bg(tokio::spawn(async move {
            ch.write_all(b"data").await.unwrap();
            ch.flush().await.unwrap();
            ch
        }))
    };
    let (mut ch, writer) = tokio::join!(open, app);
    ch.expect_quiet(300).await; // no credit yet: nothing may come
    ch.send_window(4).await;
    ch.expect_data(b"data").await;
    drop(writer.join().await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_later_window_pair_is_an_ordinary_header() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = c.open_accepted("svc", 1024, "%40window=7&a=b");
    let app = async {
        let inc = f.incoming().await;
        assert_eq!(inc.headers().get("@window"), Some("7"));
        assert_eq!(inc.headers().get("a"), Some("b"));
        inc.accept().await
    };
    let ((_ch, _, _), _app) = tokio::join!(open, app);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_window_pair_malformed_refused() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.v2().await;
    for (originator, why) in [
        ("%40window=", "no digits"),
        ("%40window=&a=b", "no digits"),
        ("%40window=12345678901", "more than 10 digits"),
        ("%40window=4294967296", "over 4294967295"),
        ("%40window=x&a=b", "not decimal"),
        ("%40window=-1", "not decimal"),
        ("%40window=1&", "nothing after it"),
    ] {
        let d = refused(c.open_top("echo", originator).await, 1, originator);
        assert!(d.contains(why), "{originator}: {d}");
    }
    let (ch, _, _) = c.open_accepted("echo", u32::MAX, "").await;
    ch.send_close().await;
    f.shutdown().await;
}

// ---------------------------------------------------------------- 3.1

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_protocol_checks_refused_at_ssh_level() {
    let f = Fixture::new(Config::default().max_pending_channels(1).unwrap()).await;
    let c = f.v2().await;
    // Malformed: code 1 with a description saying what.
    let d = refused(c.open_top("svc", "%40window=1&bad%zz").await, 1, "bad %");
    assert!(d.contains("malformed") || d.contains('%'), "{d}");
    // A limit: code 4 (one channel waits already; the app is not accepting).
    let _waiting = c.open_top("svc", "%40window=1").await.unwrap();
    let d = refused(c.open_top("svc", "%40window=1").await, 4, "pending limit");
    assert!(d.contains("limit"), "{d}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_accept_carries_window_and_acceptor_number() {
    let f = Fixture::new(Config::default().channel_window(128 << 10).unwrap()).await;
    let c = f.v2().await;
    let open = c.open_accepted("parent", 65536, "");
    let app = f.accepted();
    let ((parent, window, id), app_parent) = tokio::join!(open, app);
    assert_eq!(window, 128 << 10, "the acceptor's window");
    // The number is the acceptor's own: a nested open naming it (kind 1)
    // reaches the parent.
    let child = c.open("child", 1, "%40window=1024", id + 1);
    let app_child = async {
        within(10, app_parent.accept())
            .await
            .unwrap()
            .accept()
            .await
    };
    let (child, _app_child) = tokio::join!(child, app_child);
    let mut child = child.unwrap();
    child.expect_accept().await;
    parent.send_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_reject_record_then_close() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "%40window=1024").await.unwrap();
        ch.keep_windows(true);
        let reason = ch.expect_reject().await;
        ch.expect_end().await;
        reason
    };
    let app = async { f.incoming().await.reject("not today").await };
    let (reason, ()) = tokio::join!(open, app);
    assert_eq!(reason, "not today");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_reject_reason_at_most_1024_bytes() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "%40window=1024").await.unwrap();
        ch.expect_reject().await
    };
    let long = "\u{e9}".repeat(1000); // 2000 bytes
    let app = async { f.incoming().await.reject(&long).await };
    let (reason, ()) = tokio::join!(open, app);
    assert!(reason.len() <= 1024, "{} bytes", reason.len());
    assert!(long.starts_with(&reason));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_accept_is_the_first_thing_sent() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "%40window=65536").await.unwrap();
        ch.keep_windows(true);
        let first = ch.next_event().await;
        assert!(
            matches!(first, Ev::Record(Record::Accept { .. })),
            "first: {first:?}"
        );
        ch.expect_data(b"hi").await;
        assert_eq!(ch.expect_error_frame().await, b"e");
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        ch.write_all(b"hi").await.unwrap();
        ch.write_error(b"e").await.unwrap();
        ch
    };
    let (_c, _a) = tokio::join!(open, app);
    f.shutdown().await;
}

// ---------------------------------------------------------------- 3.2

/// Opens "parent" (accepted by the app) and returns both ends and the
/// acceptor's number from ACCEPT.
async fn parent_from_harness(f: &Fixture, c: &WireConn) -> (WireChannel, Channel, u32) {
    let open = c.open_accepted("parent", 65536, "");
    let app = f.accepted();
    let ((ch, _, id), app) = tokio::join!(open, app);
    (ch, app, id)
}

/// The server's application opens "parent" to the harness, which accepts
/// it with ACCEPT(window, its own number).
async fn parent_from_server(f: &Fixture, c: &WireConn) -> (WireChannel, Channel) {
    let open = f.server.open("raw", "parent", Headers::new());
    let answer = async { c.expect_open().await.accept(65536).await };
    let (app, ch) = tokio::join!(open, answer);
    (ch, app.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_nested_kind_1_names_the_receivers_number() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (_p, app_parent, id) = parent_from_harness(&f, &c).await;
    let child = async {
        let mut ch = c
            .open("child", 1, "%40window=1024&x=1", id + 1)
            .await
            .unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let inc = within(10, app_parent.accept()).await.unwrap();
        assert_eq!(inc.service(), "child");
        assert_eq!(inc.headers().get("x"), Some("1"));
        assert_eq!(inc.meta().depth(), 1);
        inc.accept().await
    };
    let (_ch, _app) = tokio::join!(child, app);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_nested_kind_2_names_the_senders_number() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (p, app_parent) = parent_from_server(&f, &c).await;
    let child = async {
        let mut ch = c
            .open("child", 2, "%40window=1024", p.id + 1)
            .await
            .unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let inc = within(10, app_parent.accept()).await.unwrap();
        assert_eq!(inc.service(), "child");
        inc.accept().await
    };
    let (_ch, _app) = tokio::join!(child, app);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_other_reference_kinds_malformed() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (_p, _app, id) = parent_from_harness(&f, &c).await;
    for kind in [0, 3, 9, 65536] {
        let d = refused(
            c.open("child", kind, "%40window=1024", id + 1).await,
            1,
            "kind",
        );
        assert!(d.contains(&kind.to_string()), "{kind}: {d}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_nested_parent_unknown_is_rejected() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    // Kind 1, a number the receiver never gave.
    let mut ch = c.open("child", 1, "%40window=1024", 1000).await.unwrap();
    let r = ch.expect_reject().await;
    assert!(
        r.contains("no channel numbered 999 on server was opened by you"),
        "{r}"
    );
    ch.expect_end().await;
    // Kind 2, a number of ours the receiver never saw in an ACCEPT.
    let mut ch = c.open("child", 2, "%40window=1024", 1000).await.unwrap();
    let r = ch.expect_reject().await;
    assert!(
        r.contains("no channel that server opened has your number 999"),
        "{r}"
    );
    ch.expect_end().await;
    still_serves_after_echo(&f, &c).await;
    f.shutdown().await;
}

async fn still_serves_after_echo(f: &Fixture, c: &WireConn) {
    f.echo();
    still_serves(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_kind_1_naming_a_channel_the_receiver_opened() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (_p, _app_p) = parent_from_server(&f, &c).await;
    // The server's own number for the channel it opened is not on the wire
    // (russh hides the confirmation's sender channel): try the first few
    // numbers; exactly one is that channel.
    let mut hits = 0;
    for n in 0..6u32 {
        let mut ch = c.open("child", 1, "%40window=1024", n + 1).await.unwrap();
        let r = ch.expect_reject().await;
        if r.contains("was opened by server: name it with reference kind 2") {
            hits += 1;
        } else {
            assert!(r.contains("no channel numbered"), "{r}");
        }
        ch.expect_end().await;
    }
    assert_eq!(hits, 1);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_nested_parent_not_accepted_is_rejected() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    // The server opens a parent; we confirm it but send no ACCEPT yet.
    let open = f.server.open("raw", "parent", Headers::new());
    let script = async {
        let p = c.expect_open().await.confirm().await;
        let mut ch = c
            .open("child", 2, "%40window=1024", p.id + 1)
            .await
            .unwrap();
        let r = ch.expect_reject().await;
        ch.expect_end().await;
        p.send_accept(1024).await;
        (r, p)
    };
    let (app, (r, _p)) = tokio::join!(open, script);
    assert!(r.contains("accepted"), "{r}");
    drop(app);
    f.shutdown().await;
}

/// Accepts every channel and every child, recursively, holding them open.
fn accept_all(peer: &Peer) -> mpsc::Receiver<Channel> {
    let (tx, rx) = mpsc::channel(64);
    let p = peer.clone();
    tokio::spawn(async move {
        while let Some(inc) = p.accept().await {
            accept_tree(inc.accept().await, tx.clone());
        }
    });
    rx
}

fn accept_tree(ch: Channel, tx: mpsc::Sender<Channel>) {
    let children = ch.children();
    let tx2 = tx.clone();
    tokio::spawn(async move {
        while let Some(inc) = children.accept().await {
            accept_tree(inc.accept().await, tx2.clone());
        }
    });
    tokio::spawn(async move {
        let _ = tx.send(ch).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_depth_limit() {
    let f = Fixture::new(Config::default().max_nesting_depth(1).unwrap()).await;
    let _held = accept_all(&f.server);
    let c = f.v2().await;
    let (_p, _, p_id) = c.open_accepted("d0", 1024, "").await;
    let mut d1 = c.open("d1", 1, "%40window=1024", p_id + 1).await.unwrap();
    let (_, d1_id) = d1.expect_accept().await;
    let mut d2 = c.open("d2", 1, "%40window=1024", d1_id + 1).await.unwrap();
    let r = d2.expect_reject().await;
    assert!(r.contains("depth") || r.contains("nesting"), "{r}");
    d2.expect_end().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_max_nesting_depth_0_takes_no_nested_channels() {
    let f = Fixture::new(Config::default().max_nesting_depth(0).unwrap()).await;
    let _held = accept_all(&f.server);
    let c = f.v2().await;
    let (_p, _, p_id) = c.open_accepted("d0", 1024, "").await;
    let mut d1 = c.open("d1", 1, "%40window=1024", p_id + 1).await.unwrap();
    let r = d1.expect_reject().await;
    assert!(
        r.contains("server takes no nested channels (Config::max_nesting_depth is 0)"),
        "{r}"
    );
    d1.expect_end().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_parent_closed_ends_descendants() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut p, app_parent, id) = parent_from_harness(&f, &c).await;
    let child = async {
        let mut ch = c.open("child", 1, "%40window=1024", id + 1).await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        within(10, app_parent.accept())
            .await
            .unwrap()
            .accept()
            .await
    };
    let (mut child, app_child) = tokio::join!(child, app);
    // The server's application closes the parent.
    drop(app_parent);
    let r = child.expect_parent_closed().await;
    assert!(r.contains("parent"), "{r}");
    child.expect_end().await;
    p.expect_finish().await;
    // Its own handle of the child fails naming the closed ancestor.
    let mut app_child = app_child;
    let mut buf = [0u8; 1];
    let e = within(10, app_child.read(&mut buf)).await.unwrap_err();
    assert!(e.to_string().contains("parent"), "{e}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_pending_child_of_a_closed_parent_gets_parent_closed() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (_p, app_parent, id) = parent_from_harness(&f, &c).await;
    // A child the application never answers.
    let mut child = c.open("child", 1, "%40window=1024", id + 1).await.unwrap();
    let inc = within(10, app_parent.accept()).await.unwrap();
    drop(app_parent);
    let r = child.expect_parent_closed().await;
    assert!(r.contains("parent"), "{r}");
    child.expect_end().await;
    drop(inc);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_remote_close_fails_descendants_without_record() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (p, app_parent, id) = parent_from_harness(&f, &c).await;
    let child = async {
        let mut ch = c.open("child", 1, "%40window=1024", id + 1).await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        within(10, app_parent.accept())
            .await
            .unwrap()
            .accept()
            .await
    };
    let (mut child, mut app_child) = tokio::join!(child, app);
    // We close the parent: the server fails the child locally and closes
    // it with no PARENT_CLOSED record.
    p.send_close().await;
    child.keep_windows(true);
    child.expect_end().await;
    let mut buf = [0u8; 1];
    assert!(within(10, app_child.read(&mut buf)).await.is_err());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_parent_closed_fails_the_child_with_the_reason() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (_p, app_parent, id) = parent_from_harness(&f, &c).await;
    let child = async {
        let mut ch = c.open("child", 1, "%40window=1024", id + 1).await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        within(10, app_parent.accept())
            .await
            .unwrap()
            .accept()
            .await
    };
    let (child, mut app_child) = tokio::join!(child, app);
    child
        .send_record(&Record::ParentClosed("the ancestor went away".into()))
        .await;
    child.send_close().await;
    let mut buf = [0u8; 1];
    let e = within(10, app_child.read(&mut buf)).await.unwrap_err();
    assert!(e.to_string().contains("the ancestor went away"), "{e}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_parent_closed_on_a_top_level_channel_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let _held = accept_all(&f.server);
    let c = f.v2().await;
    let (mut ch, _, _) = c.open_accepted("top", 1024, "").await;
    ch.send_record(&Record::ParentClosed("nonsense".into()))
        .await;
    let r = violation_v2(&mut ch).await;
    assert!(
        r.contains("PARENT_CLOSED") || r.contains("top-level"),
        "{r}"
    );
    f.shutdown().await;
}

// ---------------------------------------------------------------- 4. headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_header_encoding() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    // The protocol's example, a repeated key, lower-case hex.
    let block = "k=v&a%20b=x%3Dy%26z&k=w&lower=%3d%c3%a9&empty=";
    assert_eq!(
        headers(&[("k", "v"), ("a b", "x=y&z")]),
        "k=v&a%20b=x%3Dy%26z"
    );
    let open = c.open_accepted("svc", 1024, block);
    let app = async {
        let inc = f.incoming().await;
        let got: Vec<(String, String)> = inc
            .headers()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let want = [
            ("k", "v"),
            ("a b", "x=y&z"),
            ("k", "w"),
            ("lower", "=\u{e9}"),
            ("empty", ""),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
        inc.accept().await
    };
    let (_o, _a) = tokio::join!(open, app);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_header_encoding_written_upper_case() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = c.open_accepted("svc", 1024, "");
    let app = async {
        let mut ch = f.accepted().await;
        let t = Headers::new().with("a b", "x=y&z\u{e9}");
        ch.write_trailers(&t).await.unwrap();
        ch.close_write().await.unwrap();
        ch
    };
    let ((mut ch, _, _), _app) = tokio::join!(open, app);
    assert_eq!(ch.expect_trailers().await, "a%20b=x%3Dy%26z%C3%A9");
    ch.expect_eof_record().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_malformed_header_blocks_refused() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.v2().await;
    for block in [
        "novalue", "=v", "k=%zz", "k=%4", "k=a b", "k=a!b", "k=%FF%FE", "a=b&&c=d",
    ] {
        let originator = format!("%40window=1024&{block}");
        refused(c.open_top("echo", &originator).await, 1, block);
    }
    still_serves(&c).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_header_limits() {
    let f = Fixture::new(Config::default()).await;
    f.echo();
    let c = f.v2().await;
    let pairs = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&")
    };
    // 64 pairs are fine, 65 are not.
    let (ch, _, _) = c.open_accepted("echo", 1024, &pairs(64)).await;
    ch.send_close().await;
    let d = refused(
        c.open_top("echo", &format!("%40window=1024&{}", pairs(65)))
            .await,
        1,
        "65 pairs",
    );
    assert!(d.contains("64"), "{d}");
    // 16 KiB of encoded text is the limit.
    let big = format!("%40window=1024&k={}", "x".repeat(16 << 10));
    let d = refused(c.open_top("echo", &big).await, 1, "17 KiB");
    assert!(d.contains("16384") || d.contains("KiB"), "{d}");
    still_serves(&c).await;
    f.shutdown().await;
}

// ---------------------------------------------------------------- 5. records

async fn held_channel(c: &WireConn, f: &Fixture) -> (WireChannel, Channel) {
    let open = c.open_accepted("svc", 65536, "");
    let app = f.accepted();
    let ((ch, _, _), app) = tokio::join!(open, app);
    (ch, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_unknown_record_type_closes_the_channel() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_record(&Record::Other {
        ty: 99,
        body: vec![1, 2, 3],
    })
    .await;
    let r = violation_v2(&mut ch).await;
    assert!(r.contains("99"), "{r}");
    still_serves_after_echo(&f, &c).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_wrong_size_body_closes_the_channel() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    for body in [vec![0u8; 3], vec![0u8; 5]] {
        let (mut ch, _app) = held_channel(&c, &f).await;
        ch.send_record(&Record::Other { ty: 2, body }).await; // WINDOW
        violation_v2(&mut ch).await;
    }
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_record(&Record::Other {
        ty: 7, // EOF, with a body
        body: vec![0],
    })
    .await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_record_over_32_kib_closes_the_channel() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    // Refused on the length prefix: the body need not come.
    ch.send_control(&((32u32 << 10) + 1).to_be_bytes()).await;
    ch.send_control(&[5; 100]).await;
    let r = violation_v2(&mut ch).await;
    assert!(!r.is_empty());
    still_serves_after_echo(&f, &c).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_a_record_may_be_split_across_messages() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "").await.unwrap(); // window 0
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        Bg(tokio::spawn(async move {
            ch.write_all(b"12345678").await.unwrap();
            ch.flush().await.unwrap();
            ch
        }))
    };
    let (mut ch, writer) = tokio::join!(open, app);
    // One record a byte at a time, then two records in one message.
    for b in Record::Window(4).encode() {
        ch.send_control(&[b]).await;
    }
    ch.expect_data(b"1234").await;
    let two = [Record::Window(2).encode(), Record::Window(2).encode()].concat();
    ch.send_control(&two).await;
    ch.expect_data(b"5678").await;
    drop(writer.join().await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_records_are_not_flow_controlled() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "").await.unwrap(); // window 0
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        let t = Headers::new().with("t", "1");
        ch.write_trailers(&t).await.unwrap();
        ch.close_write().await.unwrap();
        ch
    };
    let (mut ch, _app) = tokio::join!(open, app);
    assert_eq!(ch.expect_trailers().await, "t=1");
    ch.expect_eof_record().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_second_accept_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut p, _app) = parent_from_server(&f, &c).await;
    p.send_accept(1024).await;
    violation_v2(&mut p).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_reject_after_accept_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut p, _app) = parent_from_server(&f, &c).await;
    p.send_record(&Record::Reject("changed my mind".into()))
        .await;
    violation_v2(&mut p).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_data_before_accept_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    for early in [
        Record::Window(10),
        Record::Trailers("a=1".into()),
        Record::Eof,
    ] {
        let open = f.server.open("raw", "svc", Headers::new());
        let script = async {
            let mut ch = c.expect_open().await.confirm().await;
            ch.send_record(&early).await;
            violation_v2(&mut ch).await;
        };
        let (r, ()) = tokio::join!(open, script);
        assert!(r.is_err(), "{early:?}");
    }
    let open = f.server.open("raw", "svc", Headers::new());
    let script = async {
        let mut ch = c.expect_open().await.confirm().await;
        ch.send_data(b"early").await;
        violation_v2(&mut ch).await;
    };
    let (r, ()) = tokio::join!(open, script);
    assert!(r.is_err());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_long_reason_is_cut_not_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = f.server.open("raw", "svc", Headers::new());
    let script = async {
        let ch = c.expect_open().await.confirm().await;
        ch.send_record(&Record::Reject("\u{e9}".repeat(1500))).await;
        ch.send_close().await;
    };
    let (r, ()) = tokio::join!(open, script);
    let e = r.unwrap_err();
    assert!(matches!(e, duplex::OpenError::Rejected { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.matches('\u{e9}').count() <= 512, "{}", text.len());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_accept_or_reject_on_a_channel_the_receiver_did_not_open() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_accept(1024).await;
    violation_v2(&mut ch).await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_record(&Record::Reject("no".into())).await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_hello_record_outside_the_hello_channel_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_record(&Record::Hello("name=raw&version=2".into()))
        .await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_types_7_and_8_are_unknown_on_version_1() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v1().await;
    for rec in [Record::Eof, Record::ProtocolError("x".into())] {
        let (mut ch, _app) = held_channel(&c, &f).await;
        ch.send_record(&rec).await;
        violation_v1(&mut ch).await;
    }
    f.shutdown().await;
}

// ---------------------------------------------------------------- 6. data

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_1_frame_length_checked_first() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(&[0xff, 0xff, 0xff, 0xff, 1]).await;
    let e = within(10, app.read_frame()).await.unwrap_err();
    assert!(e.to_string().contains("exceeds the maximum"), "{e}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_1_eof_inside_a_frame_is_an_error() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(&[0, 0, 0, 100]).await;
    ch.send_data(&[7; 10]).await;
    ch.send_eof_record().await;
    assert!(within(10, app.read_frame()).await.is_err());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_2_error_frames_on_extended_type_1() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    app.write_error(b"oops").await.unwrap();
    assert_eq!(ch.expect_error_frame().await, b"oops");
    ch.send_error_frame(b"yours").await;
    let got = within(10, app.read_error()).await.unwrap().unwrap();
    assert_eq!(&got[..], b"yours");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_sender_limited_to_credit() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "%40window=10").await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        let data: Vec<u8> = (0..100u8).collect();
        Bg(tokio::spawn(async move {
            ch.write_all(&data).await.unwrap();
            ch.flush().await.unwrap();
            ch
        }))
    };
    let (mut ch, writer) = tokio::join!(open, app);
    let first = ch.read_data(10).await;
    assert_eq!(first, (0..10u8).collect::<Vec<_>>());
    // No later event can show that nothing more was sent: wait a little.
    ch.expect_quiet(300).await;
    ch.send_window(90).await;
    assert_eq!(ch.read_data(90).await, (10..100u8).collect::<Vec<_>>());
    drop(writer.join().await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_error_bytes_count_against_credit() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let open = async {
        let mut ch = c.open_top("svc", "%40window=10").await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        Bg(tokio::spawn(async move {
            ch.write_error(&[9u8; 20]).await.unwrap();
            ch
        }))
    };
    let (mut ch, writer) = tokio::join!(open, app);
    let mut got = ch.expect_ext(STDERR).await;
    while got.len() < 10 {
        got.extend(ch.expect_ext(STDERR).await);
    }
    assert_eq!(got.len(), 10, "4 bytes of prefix and 6 of payload");
    ch.expect_quiet(300).await;
    ch.send_window(14).await;
    let frame = {
        let mut all = got;
        while all.len() < 24 {
            all.extend(ch.expect_ext(STDERR).await);
        }
        all
    };
    assert_eq!(frame, [&[0, 0, 0, 20][..], &[9u8; 20][..]].concat());
    drop(writer.join().await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_credit_overrun_closes_the_channel() {
    let window = 64u32 << 10;
    let f = Fixture::new(Config::default().channel_window(window).unwrap()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_data(&vec![1u8; window as usize + 1]).await;
    let r = violation_v2(&mut ch).await;
    assert!(r.contains("credit") || r.contains("window"), "{r}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_overrun_leaves_other_channels_alone() {
    let window = 64u32 << 10;
    let f = Fixture::new(Config::default().channel_window(window).unwrap()).await;
    let c = f.v2().await;
    let (mut other, mut app_other) = held_channel(&c, &f).await;
    let (mut bad, _app_bad) = held_channel(&c, &f).await;
    bad.send_data(&vec![1u8; window as usize + 1]).await;
    violation_v2(&mut bad).await;
    // The other channel carries data both ways.
    other.send_data(b"fine").await;
    let mut buf = [0u8; 4];
    within(10, app_other.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"fine");
    app_other.write_all(b"back").await.unwrap();
    other.expect_data(b"back").await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_window_granted_as_the_application_reads() {
    let window = 64u32 << 10;
    let f = Fixture::new(Config::default().channel_window(window).unwrap()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(&vec![2u8; window as usize]).await;
    ch.expect_quiet(300).await; // nothing read, nothing granted
    assert_eq!(ch.granted(), 0);
    let mut buf = vec![0u8; window as usize / 2];
    within(10, app.read_exact(&mut buf)).await.unwrap();
    ch.wait_granted(u64::from(window) / 4).await;
    assert!(ch.granted() <= u64::from(window) / 2, "{}", ch.granted());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_discarded_bytes_are_granted_back() {
    let window = 64u32 << 10;
    let f = Fixture::new(Config::default().channel_window(window).unwrap()).await;
    let c = f.v2().await;
    let (mut ch, app) = held_channel(&c, &f).await;
    let (r, _w) = app.split();
    drop(r); // the application drops the reading half
    for _ in 0..4 {
        ch.send_data(&vec![3u8; window as usize]).await;
        let want = ch.granted() + u64::from(window);
        ch.wait_granted(want - u64::from(window) / 4 * 3).await;
    }
    ch.wait_granted(3 * u64::from(window)).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_no_credit_after_the_remote_eof() {
    let window = 64u32 << 10;
    let f = Fixture::new(Config::default().channel_window(window).unwrap()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    ch.send_data(&vec![4u8; window as usize]).await;
    ch.send_eof_record().await;
    // The EOF has arrived once the trailers are known.
    within(10, app.trailers()).await.unwrap();
    let mut all = Vec::new();
    within(10, app.read_to_end(&mut all)).await.unwrap();
    assert_eq!(all.len(), window as usize);
    app.write_all(b"done").await.unwrap();
    app.close_write().await.unwrap();
    // No WINDOW anywhere: strict expectations see it as a mismatch.
    ch.expect_data(b"done").await;
    ch.expect_eof_record().await;
    ch.expect_eof().await;
    drop(app);
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_4_trailers_once_before_eof() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    app.write_all(b"body").await.unwrap();
    app.write_trailers(&Headers::new().with("t", "1"))
        .await
        .unwrap();
    app.close_write().await.unwrap();
    ch.expect_data(b"body").await;
    assert_eq!(ch.expect_trailers().await, "t=1");
    ch.expect_eof_record().await;
    // Ours reach the application once our EOF does.
    ch.send_record(&Record::Trailers("u=2".into())).await;
    ch.send_eof_record().await;
    let t = within(10, app.trailers()).await.unwrap();
    assert_eq!(t.get("u"), Some("2"));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_4_no_trailers_reads_as_empty() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (ch, app) = held_channel(&c, &f).await;
    ch.send_eof_record().await;
    assert!(within(10, app.trailers()).await.unwrap().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_4_second_trailers_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_record(&Record::Trailers("a=1".into())).await;
    ch.send_record(&Record::Trailers("b=2".into())).await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_4_trailers_after_eof_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_eof_record().await;
    ch.send_record(&Record::Trailers("a=1".into())).await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_4_trailers_over_the_header_limits_fail() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (ch, app) = held_channel(&c, &f).await;
    let block = (0..65)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join("&");
    ch.send_record(&Record::Trailers(block)).await;
    ch.send_eof_record().await;
    assert!(within(10, app.trailers()).await.is_err());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_half_close_keeps_the_other_direction() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    ch.send_data(b"request").await;
    ch.send_eof_record().await;
    let mut got = Vec::new();
    within(10, app.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"request");
    // Our half is closed; theirs still works.
    app.write_all(b"reply").await.unwrap();
    app.close_write().await.unwrap();
    ch.expect_data(b"reply").await;
    ch.expect_eof_record().await;
    // Both EOF records exchanged: SSH EOF, then only the close.
    ch.expect_eof().await;
    drop(app);
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v2_ssh_eof_only_when_nothing_but_close_follows() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    // The application half-closes first: an EOF record, no SSH EOF (we may
    // still send).
    app.write_all(b"x").await.unwrap();
    app.close_write().await.unwrap();
    ch.expect_data(b"x").await;
    ch.expect_eof_record().await;
    // We still send; the application reads it.
    ch.send_data(b"late").await;
    let mut buf = [0u8; 4];
    within(10, app.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"late");
    // Our EOF record completes the exchange: now SSH EOF, then the close.
    ch.send_eof_record().await;
    ch.expect_eof().await;
    drop(app);
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v2_data_after_eof_record_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_eof_record().await;
    ch.send_data(b"more").await;
    violation_v2(&mut ch).await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_eof_record().await;
    ch.send_error_frame(b"more").await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v2_second_eof_record_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_eof_record().await;
    ch.send_eof_record().await;
    violation_v2(&mut ch).await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v2_ssh_eof_counts_as_the_eof_record() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    ch.send_data(b"req").await;
    ch.send_eof().await; // no EOF record: we send nothing more at all
    let mut got = Vec::new();
    within(10, app.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"req");
    app.write_all(b"bye").await.unwrap();
    app.close_write().await.unwrap();
    // No WINDOW to us (we finished), then the EOF record and SSH EOF.
    ch.expect_data(b"bye").await;
    ch.expect_eof_record().await;
    ch.expect_eof().await;
    drop(app);
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v1_ssh_eof_is_the_half_close() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v1().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(b"req").await;
    ch.send_eof().await;
    let mut got = Vec::new();
    within(10, app.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"req");
    app.write_all(b"reply").await.unwrap();
    app.close_write().await.unwrap();
    ch.expect_data(b"reply").await;
    ch.expect_eof().await; // version 1: no EOF record
    drop(app);
    ch.expect_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v1_window_after_ssh_eof_still_accepted() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v1().await;
    let open = async {
        let mut ch = c.open_top("svc", "%40window=1024").await.unwrap();
        ch.expect_accept().await;
        ch
    };
    let app = async {
        let mut ch = f.accepted().await;
        Bg(tokio::spawn(async move {
            ch.write_all(&[5u8; 2048]).await.unwrap();
            ch.close_write().await.unwrap();
            ch
        }))
    };
    let (mut ch, writer) = tokio::join!(open, app);
    ch.read_data(1024).await;
    ch.send_eof().await;
    ch.send_window(1024).await; // after our SSH EOF: legal on version 1
    ch.read_data(1024).await;
    ch.expect_eof().await;
    drop(writer.join().await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_close_ends_both_streams() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(b"part").await;
    ch.send_close().await;
    let mut got = Vec::new();
    let _ = within(10, app.read_to_end(&mut got)).await;
    within(10, app.closed()).await;
    assert!(app.write_all(b"x").await.is_err() || app.flush().await.is_err());
    f.shutdown().await;
}

// ---------------------------------------------------------------- 7. plain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plain_headers_empty_and_confirmed_on_accept() {
    let f = Fixture::new(Config::default()).await;
    let c = f.plain().await;
    let (go, gate) = oneshot::channel::<()>();
    let app = async {
        let inc = f.incoming().await;
        assert!(inc.headers().is_empty(), "{:?}", inc.headers());
        gate.await.unwrap();
        inc.accept().await
    };
    let open = async {
        let o = c.open_top("svc", "127.0.0.1");
        tokio::pin!(o);
        // Not confirmed while the application has not answered.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut o)
                .await
                .is_err(),
            "confirmed before the application accepted"
        );
        go.send(()).unwrap();
        o.await.unwrap()
    };
    let (_app, _ch) = tokio::join!(app, open);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plain_reject_reason_in_the_open_failure() {
    let f = Fixture::new(Config::default()).await;
    let c = f.plain().await;
    let app = async { f.incoming().await.reject("go away").await };
    let (r, ()) = tokio::join!(c.open_top("svc", "127.0.0.1"), app);
    let d = refused(r, 1, "plain reject");
    assert_eq!(d, "go away");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plain_no_control_records() {
    let f = Fixture::new(Config::default()).await;
    let c = f.plain().await;
    let app = async {
        let mut ch = f.accepted().await;
        ch.write_all(b"hi").await.unwrap();
        ch.write_error(b"err").await.unwrap();
        let _ = ch.write_trailers(&Headers::new().with("t", "1")).await;
        ch.close_write().await.unwrap();
        ch
    };
    let (ch, app) = tokio::join!(c.open_top("svc", "127.0.0.1"), app);
    let mut ch = ch.unwrap();
    ch.send_eof().await;
    drop(app);
    let t = ch.read_to_end().await;
    assert!(
        t.records.is_empty(),
        "records on a plain channel: {:?}",
        t.records
    );
    assert!(
        !t.events.iter().any(|e| matches!(e, Ev::Ext(CONTROL, _))),
        "{:?}",
        t.events
    );
    assert_eq!(t.data, b"hi");
    assert_eq!(t.stderr, frame(b"err"), "raw, length prefix included");
    assert!(t.ssh_eof && t.closed);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plain_extended_data_discarded() {
    let f = Fixture::new(Config::default()).await;
    let c = f.plain().await;
    let (ch, app) = tokio::join!(c.open_top("svc", "127.0.0.1"), f.accepted());
    let (ch, mut app) = (ch.unwrap(), app);
    ch.send_error_frame(b"ignored").await;
    ch.send_record(&Record::Window(1 << 20)).await;
    ch.send_data(b"data").await;
    ch.send_eof().await;
    let mut got = Vec::new();
    within(10, app.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"data");
    assert!(within(10, app.read_error()).await.unwrap().is_none());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plain_opens_are_top_level() {
    let f = Fixture::new(Config::default()).await;
    let c = f.plain().await;
    // The originator port is the client's port, never a parent reference.
    let app = async {
        let inc = f.incoming().await;
        assert_eq!(inc.meta().depth(), 0);
        inc.accept().await
    };
    let (ch, _app) = tokio::join!(c.open("svc", 2, "127.0.0.1", 7), app);
    ch.unwrap();
    f.shutdown().await;
}

// ---------------------------------------------------------------- 8. limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_channels_per_connection_refused_code_4() {
    let f = Fixture::new(Config::default().max_channels_per_connection(2).unwrap()).await;
    let _held = accept_all(&f.server);
    let c = f.v2().await;
    let (_a, _, _) = c.open_accepted("a", 1024, "").await;
    let (_b, _, _) = c.open_accepted("b", 1024, "").await;
    let d = refused(c.open_top("c", "%40window=1024").await, 4, "third");
    assert!(d.contains("limit 2"), "{d}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_pending_channels_refused_code_4() {
    let f = Fixture::new(Config::default().max_pending_channels(2).unwrap()).await;
    let c = f.v2().await;
    let _a = c.open_top("a", "%40window=1024").await.unwrap();
    let _b = c.open_top("b", "%40window=1024").await.unwrap();
    let d = refused(c.open_top("c", "%40window=1024").await, 4, "third");
    assert!(d.contains("limit 2"), "{d}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_accept_queue_refused_code_4() {
    let f = Fixture::new(Config::default().accept_backlog(1).unwrap()).await;
    let c = f.v2().await;
    let _a = c.open_top("a", "%40window=1024").await.unwrap();
    let d = refused(c.open_top("b", "%40window=1024").await, 4, "second");
    assert!(d.contains("accept queue"), "{d}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_connection_buffer_refused_code_4() {
    let config = Config::default()
        .channel_window(512 << 10)
        .unwrap()
        .max_connection_buffer(1 << 20)
        .unwrap();
    let f = Fixture::new(config).await;
    let _held = accept_all(&f.server);
    let c = f.v2().await;
    let (_a, _, _) = c.open_accepted("a", 1024, "").await;
    let (_b, _, _) = c.open_accepted("b", 1024, "").await;
    let d = refused(c.open_top("c", "%40window=1024").await, 4, "third");
    assert!(d.contains("buffer"), "{d}");
    f.shutdown().await;
}

// ---------------------------------------------------------------- 9. RPC

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn rpc_router() -> duplex_rpc::Router {
    use duplex_rpc::{CallContext, Code, Receiver, Status};
    duplex_rpc::Router::new()
        .unary(
            "Calc.Add",
            |_ctx: CallContext, (a, b): (i64, i64)| async move { Ok::<_, Status>(a + b) },
        )
        .client_stream(
            "Calc.Sum",
            |_ctx: CallContext, mut xs: Receiver<i64>| async move {
                let mut total = 0i64;
                while let Some(x) = xs.recv().await? {
                    total += x;
                }
                Ok(total)
            },
        )
        .unary("Calc.Fail", |_ctx: CallContext, code: u16| async move {
            Err::<(), _>(
                Status::new(Code::from_u16(code), "it failed on purpose")
                    .with_details(&b"detail bytes"[..]),
            )
        })
        .unary("Calc.Slow", |_ctx: CallContext, (): ()| async move {
            std::future::pending::<()>().await;
            Ok::<(), Status>(())
        })
        .unary("Calc.Panic", |_ctx: CallContext, (): ()| async move {
            if true {
                panic!("the handler gave up");
            }
            Ok::<(), Status>(())
        })
}

/// A status frame: (version, origin, code, message, details).
fn status(frame: &[u8]) -> (u8, u8, u16, String, Vec<u8>) {
    assert!(frame.len() >= 8, "status frame too short: {frame:?}");
    let code = u16::from_be_bytes([frame[2], frame[3]]);
    let n = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let msg = String::from_utf8_lossy(&frame[8..8 + n]).into_owned();
    (frame[0], frame[1], code, msg, frame[8 + n..].to_vec())
}

async fn rpc_fixture(server: duplex_rpc::Server) -> (Fixture, WireConn, duplex_rpc::ServerHandle) {
    let f = Fixture::new(Config::default()).await;
    let h = server.serve(&f.server).unwrap();
    let c = f.v2().await;
    (f, c, h)
}

/// A call with an inline JSON request; the transcript of the answer (we
/// send our EOF record once theirs came).
async fn inline_call(
    c: &WireConn,
    method: &str,
    json: &str,
    extra: &str,
) -> duplex_tests::wire::Transcript {
    let mut block = format!("rpc-codec=json&rpc-request={}", b64url(json.as_bytes()));
    if !extra.is_empty() {
        block = format!("{block}&{extra}");
    }
    let (mut ch, _, _) = c.open_accepted(method, 1 << 20, &block).await;
    let mut t = duplex_tests::wire::Transcript::default();
    loop {
        let e = ch.next_event().await;
        t.events.push(e.clone());
        match e {
            Ev::Data(d) => t.data.extend(d),
            Ev::Ext(STDERR, d) => t.stderr.extend(d),
            Ev::Record(Record::Eof) => break,
            Ev::Record(r) => t.records.push(r),
            other => panic!("{method}: unexpected {other:?} before the EOF record"),
        }
    }
    ch.send_eof_record().await;
    ch.expect_eof().await;
    ch.expect_only_close().await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_unary_request_inline() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router())).await;
    let t = inline_call(&c, "Calc.Add", "[40,2]", "").await;
    assert_eq!(t.data_frames(), [b"42".to_vec()]);
    assert!(t.stderr.is_empty(), "success: no status frame");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_unary_request_in_a_frame() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router())).await;
    let (mut ch, _, _) = c.open_accepted("Calc.Add", 1 << 20, "rpc-codec=json").await;
    ch.send_data_frame(b"[1,2]").await;
    ch.send_eof_record().await;
    assert_eq!(ch.expect_data_frame().await, b"3");
    ch.expect_eof_record().await;
    ch.expect_eof().await;
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_client_stream_ends_with_an_empty_frame() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router())).await;
    let (mut ch, _, _) = c
        .open_accepted("Calc.Sum", 1 << 20, "rpc-codec=json&rpc-kind=client-stream")
        .await;
    for x in [b"1", b"2", b"3"] {
        ch.send_data_frame(x).await;
    }
    ch.send_data_frame(b"").await;
    ch.send_eof_record().await;
    assert_eq!(ch.expect_data_frame().await, b"6");
    ch.expect_eof_record().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_1_client_stream_without_the_marker_is_abandoned() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router())).await;
    let (mut ch, _, _) = c.open_accepted("Calc.Sum", 1 << 20, "rpc-codec=json").await;
    ch.send_data_frame(b"1").await;
    ch.send_eof_record().await;
    let t = ch.read_to_end().await;
    assert!(
        !t.data_frames().contains(&b"1".to_vec()),
        "the handler took the requests as complete: {:?}",
        t.events
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_status_frame_layout() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router())).await;
    let t = inline_call(&c, "Calc.Fail", "9", "").await;
    assert!(t.data.is_empty());
    let frames = t.error_frames();
    assert_eq!(frames.len(), 1, "one status frame");
    let (version, origin, code, msg, details) = status(&frames[0]);
    assert_eq!((version, origin, code), (1, 0, 9));
    assert_eq!(msg, "it failed on purpose");
    assert_eq!(details, b"detail bytes");
    f.shutdown().await;
}

async fn origin_of(c: &WireConn, method: &str, json: &str, extra: &str) -> (u8, u16, String) {
    let t = inline_call(c, method, json, extra).await;
    let frames = t.error_frames();
    assert_eq!(frames.len(), 1, "{method}: {:?}", t.events);
    let (v, origin, code, msg, _) = status(&frames[0]);
    assert_eq!(v, 1);
    (origin, code, msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_origins() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router())).await;
    // 1: no such method.
    let (o, code, _) = origin_of(&c, "No.Such", "1", "").await;
    assert_eq!((o, code), (1, 12));
    // 2: undecodable request; bad rpc-timeout.
    let (o, code, _) = origin_of(&c, "Calc.Add", "\"x\"", "").await;
    assert_eq!((o, code), (2, 3));
    let (o, code, _) = origin_of(&c, "Calc.Add", "[1,2]", "rpc-timeout=soon").await;
    assert_eq!((o, code), (2, 3));
    // 3: unknown codec, listing those the server has.
    let block = format!("rpc-codec=cbor&rpc-request={}", b64url(b"x"));
    let (mut ch, _, _) = c.open_accepted("Calc.Add", 1 << 20, &block).await;
    let frame = ch.expect_error_frame().await;
    let (_, o, code, msg, _) = status(&frame);
    assert_eq!((o, code), (3, 12));
    assert!(msg.contains("json") && msg.contains("msgpack"), "{msg}");
    // 5: the deadline passed.
    let (o, code, _) = origin_of(&c, "Calc.Slow", "null", "rpc-timeout=100ms").await;
    assert_eq!((o, code), (5, 4));
    // 6: the handler panicked.
    let (o, code, _) = origin_of(&c, "Calc.Panic", "null", "").await;
    assert_eq!((o, code), (6, 13));
    // 9: rpc-kind does not match.
    let (o, code, _) = origin_of(&c, "Calc.Add", "[1,2]", "rpc-kind=bidi").await;
    assert_eq!((o, code), (9, 12));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_origin_4_overloaded() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router()).max_in_flight(1)).await;
    let block = format!("rpc-codec=json&rpc-request={}", b64url(b"null"));
    let (_slow, _, _) = c.open_accepted("Calc.Slow", 1 << 20, &block).await;
    let (mut ch, _, _) = c.open_accepted("Calc.Slow", 1 << 20, &block).await;
    let (_, o, code, _, _) = status(&ch.expect_error_frame().await);
    assert_eq!((o, code), (4, 8));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s9_2_origin_7_too_large() {
    let (f, c, _h) = rpc_fixture(duplex_rpc::Server::new(rpc_router()).max_message_len(16)).await;
    let (mut ch, _, _) = c.open_accepted("Calc.Add", 1 << 20, "rpc-codec=json").await;
    ch.send_data(&1000u32.to_be_bytes()).await;
    let (_, o, code, _, details) = status(&ch.expect_error_frame().await);
    assert_eq!((o, code), (7, 8));
    assert_eq!(details.len(), 16);
    assert_eq!(u64::from_be_bytes(details[..8].try_into().unwrap()), 1000);
    assert_eq!(u64::from_be_bytes(details[8..].try_into().unwrap()), 16);
    f.shutdown().await;
}

// ---------------------------------------------------------------- additions

/// Reads the SSH identification line (skipping lines before it) and the
/// first binary packet, which must be an unencrypted KEXINIT; returns its
/// kex_algorithms name-list.
async fn read_kexinit(s: &mut tokio::net::TcpStream) -> Vec<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        line.push(b[0]);
        if b[0] == b'\n' {
            if line.starts_with(b"SSH-") {
                break;
            }
            line.clear();
        }
        assert!(line.len() < 256, "identification line too long: {line:?}");
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let len = u32::from_be_bytes(len) as usize;
    assert!((16..35000).contains(&len), "packet length {len}");
    let mut pkt = vec![0u8; len];
    s.read_exact(&mut pkt).await.unwrap();
    let pad = pkt[0] as usize;
    let payload = &pkt[1..len - pad];
    assert_eq!(payload[0], 20, "the first packet is SSH_MSG_KEXINIT");
    // The type byte, then a 16-byte cookie, then name-list kex_algorithms.
    let n = u32::from_be_bytes(payload[17..21].try_into().unwrap()) as usize;
    String::from_utf8(payload[21..21 + n].to_vec())
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_strict_key_exchange_offered() {
    let f = Fixture::new(Config::default()).await;
    // The listener (SSH server role) offers kex-strict-s.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", duplex_tests::port(&f.ep)))
        .await
        .unwrap();
    s.write_all(b"SSH-2.0-conformance\r\n").await.unwrap();
    let kex = within(10, read_kexinit(&mut s)).await;
    assert!(
        kex.iter().any(|k| k == "kex-strict-s-v00@openssh.com"),
        "listener's kex_algorithms: {kex:?}"
    );
    drop(s);
    // A dialler (SSH client role) offers kex-strict-c.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = format!("tcp://{}", l.local_addr().unwrap());
    let dialler = peer_trusting("dialler", &Identity::generate(), &[], Config::default());
    let d = dialler.clone();
    let connect = tokio::spawn(async move { d.connect(ep.as_str()).await });
    let (mut s, _) = within(10, l.accept()).await.unwrap();
    s.write_all(b"SSH-2.0-conformance\r\n").await.unwrap();
    let kex = within(10, read_kexinit(&mut s)).await;
    assert!(
        kex.iter().any(|k| k == "kex-strict-c-v00@openssh.com"),
        "dialler's kex_algorithms: {kex:?}"
    );
    drop(s);
    connect.abort();
    dialler.shutdown().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_nested_open_when_the_connection_buffer_is_spoken_for() {
    let config = Config::default()
        .channel_window(512 << 10)
        .unwrap()
        .max_connection_buffer(1 << 20)
        .unwrap();
    let f = Fixture::new(config).await;
    let _held = accept_all(&f.server);
    let c = f.v2().await;
    // Two channels reserve the whole receive buffer.
    let (_p, _, p_id) = c.open_accepted("parent", 1024, "").await;
    let (_b, _, _) = c.open_accepted("b", 1024, "").await;
    // A nested open is confirmed at the SSH level, then rejected.
    let mut child = c
        .open("child", 1, "%40window=1024", p_id + 1)
        .await
        .unwrap_or_else(|r| panic!("a nested open got an SSH open failure: {r:?}"));
    let r = child.expect_reject().await;
    assert!(
        r.contains("receive buffer") && r.contains("fully reserved"),
        "{r}"
    );
    child.expect_end().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_plain_reading_never_stops_while_the_app_waits_to_write() {
    let f = Fixture::new(Config::default().plain_channel_buffer(64 << 10).unwrap()).await;
    f.echo();
    let c = f.plain().await;
    let mut ch = c.open_top("echo", "127.0.0.1").await.unwrap();
    // Far more than the plain channel buffer and than our SSH window: the
    // echo's writes wait for our window adjustments, which the listener
    // only sees if it keeps reading the connection while its application
    // waits to write.
    let data = duplex_tests::random_bytes(8 << 20);
    ch.send_data(&data).await;
    ch.send_eof().await;
    let back = ch.read_data(data.len()).await;
    assert!(back == data, "the echo differs");
    ch.expect_eof().await;
    f.shutdown().await;
}

// ---------------------------------------------------------------- the table

/// Every rule id of docs/PROTOCOL.md is in tests/CONFORMANCE.md, and every
/// test the table names exists (`file::name` in `tests/tests/file.rs`, a
/// bare name in either conformance file). A `TODO` cell fails it.
#[test]
fn conformance_table_is_complete() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let protocol = std::fs::read_to_string(root.join("../docs/PROTOCOL.md")).unwrap();
    let table = std::fs::read_to_string(root.join("CONFORMANCE.md")).unwrap();
    // Tests of this crate, or of the CLI's (`attack`: a `duplex serve`
    // process attacked from outside).
    let source = |file: &str| {
        std::fs::read_to_string(root.join("tests").join(format!("{file}.rs")))
            .or_else(|_| {
                std::fs::read_to_string(root.join("../cli/tests").join(format!("{file}.rs")))
            })
            .unwrap_or_default()
    };
    let ids = rule_ids(&protocol);
    assert!(!ids.is_empty(), "no rule ids found in docs/PROTOCOL.md");
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 6 || !cells[1].starts_with('r') || cells[1] == "rule id" {
            continue;
        }
        let tests = cells[cells.len() - 2]
            .split(',')
            .map(|t| t.trim().trim_matches('`').to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        rows.push((cells[1].trim_matches('`').to_owned(), tests));
    }
    let mut missing: Vec<&str> = ids
        .iter()
        .filter(|id| !rows.iter().any(|(r, _)| r == *id))
        .map(String::as_str)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "rule ids not in tests/CONFORMANCE.md: {missing:?}"
    );
    let mut absent = Vec::new();
    for (id, tests) in &rows {
        assert!(!tests.is_empty(), "{id}: no test named (write TODO)");
        for t in tests {
            if t == "TODO" {
                absent.push(format!("{id}: TODO (no test yet)"));
                continue;
            }
            let (files, name) = match t.split_once("::") {
                Some((file, name)) => (vec![file], name),
                None => (
                    vec!["conformance_dialler", "conformance_listener"],
                    t.as_str(),
                ),
            };
            if !files
                .iter()
                .any(|f| source(f).contains(&format!("fn {name}(")))
            {
                absent.push(format!("{id}: {t}"));
            }
        }
    }
    assert!(
        absent.is_empty(),
        "rules without a test (TODO), or tests named in the table that do not exist: {absent:?}"
    );
}

fn rule_ids(text: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("[r") {
        let tail = &rest[i + 2..];
        let end = tail.find(']').unwrap_or(0);
        let id = &tail[..end];
        let ok = match id.split_once('-') {
            Some((sec, n)) => {
                !sec.is_empty()
                    && sec.chars().all(|c| c.is_ascii_digit() || c == '.')
                    && !n.is_empty()
                    && n.chars().all(|c| c.is_ascii_digit())
            }
            None => false,
        };
        if ok {
            ids.push(format!("r{id}"));
        }
        rest = &tail[end.max(1).min(tail.len())..];
    }
    ids
}

// ---------------------------------------------------------------- 6.5 abort

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v3_abort_is_an_abort_record_then_the_close_with_no_eof() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v3().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    app.write_all(b"part").await.unwrap();
    app.abort("disk full");
    ch.expect_data(b"part").await;
    assert_eq!(ch.expect_record().await, Record::Abort("disk full".into()));
    ch.expect_only_close().await;
    // Dropping a channel unfinished is an abort too, saying so.
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    app.write_all(b"half").await.unwrap();
    app.flush().await.unwrap();
    drop(app);
    ch.expect_data(b"half").await;
    match ch.expect_record().await {
        Record::Abort(r) => assert!(
            r.contains("server dropped the channel before finishing it"),
            "{r}"
        ),
        other => panic!("expected ABORT, got {other:?}"),
    }
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v2_abort_is_the_close_with_no_eof() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, mut app) = held_channel(&c, &f).await;
    ch.keep_windows(true);
    app.write_all(b"part").await.unwrap();
    app.abort("disk full");
    ch.expect_data(b"part").await;
    ch.expect_only_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_v3_received_abort_fails_the_reader_with_the_reason() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v3().await;
    let (ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(b"part").await;
    ch.send_record(&Record::Abort("disk full".into())).await;
    ch.send_close().await;
    let mut got = [0u8; 4];
    within(10, app.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"part");
    let e = within(10, app.read_frame()).await.unwrap_err();
    assert!(
        matches!(e, ChannelError::Aborted(_))
            && e.to_string() == "raw aborted the channel: disk full",
        "{e:?}"
    );
    // Trailers are no answer either.
    assert!(app.trailers().await.is_err());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_close_without_eof_fails_the_reader() {
    for v3 in [false, true] {
        let f = Fixture::new(Config::default()).await;
        let c = if v3 { f.v3().await } else { f.v2().await };
        let (ch, mut app) = held_channel(&c, &f).await;
        ch.send_data(b"part").await;
        ch.send_close().await;
        let mut got = Vec::new();
        let e = within(10, app.read_to_end(&mut got)).await.unwrap_err();
        assert_eq!(got, b"part");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        assert!(
            e.to_string()
                .contains("raw closed the channel without finishing it (no EOF)"),
            "{e}"
        );
        f.shutdown().await;
    }
    // Version 1: a close with no SSH EOF before it.
    let f = Fixture::new(Config::default()).await;
    let c = f.v1().await;
    let (ch, mut app) = held_channel(&c, &f).await;
    ch.send_data(b"part").await;
    ch.send_close().await;
    let mut got = Vec::new();
    assert!(within(10, app.read_to_end(&mut got)).await.is_err());
    assert_eq!(got, b"part");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_1_abort_before_version_3_or_after_eof_is_a_violation() {
    let f = Fixture::new(Config::default()).await;
    let c = f.v2().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_record(&Record::Abort("no".into())).await;
    violation_v2(&mut ch).await;
    let c = f.v3().await;
    let (mut ch, _app) = held_channel(&c, &f).await;
    ch.send_eof_record().await;
    ch.send_record(&Record::Abort("late".into())).await;
    let why = violation_v2(&mut ch).await;
    assert!(why.contains("sent ABORT after its EOF"), "{why}");
    f.shutdown().await;
}
