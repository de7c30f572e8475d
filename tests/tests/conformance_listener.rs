//! Protocol conformance, the dialler's side: a Duplex peer dials a
//! scripted raw SSH server (`duplex_tests::wire::WireListener`), which
//! answers its hello and its opens record by record. One test per rule of
//! `docs/PROTOCOL.md`, named after its section (see tests/CONFORMANCE.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use duplex::{Channel, Config, ConnectError, Headers, Identity, KnownHosts, OpenError, Peer};
use duplex_tests::wire::{Ev, Record, STDERR, WireChannel, WireConn, WireListener};
use duplex_tests::{init_tracing, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A Duplex peer "client" that trusts the harness's host key, and the
/// harness listening.
struct Fixture {
    client: Peer,
    listener: WireListener,
}

impl Fixture {
    async fn new(config: Config) -> Fixture {
        init_tracing();
        let hid = Identity::generate();
        let known = KnownHosts::new().with_pinned(hid.public_key());
        Fixture::with(config, &hid, known).await
    }

    async fn with(config: Config, hid: &Identity, known: KnownHosts) -> Fixture {
        init_tracing();
        let client = Peer::builder()
            .name("client")
            .identity(Identity::generate())
            .known_hosts(known)
            .config(
                config
                    .reconnect(false)
                    .drain_timeout(Duration::from_millis(200))
                    .peer_wait_timeout(Duration::from_millis(500)),
            )
            .build()
            .unwrap();
        let listener = WireListener::bind(hid).await;
        Fixture { client, listener }
    }

    /// The client dials; the script answers its hello with `hello`.
    async fn connect_answering(
        &self,
        hello: &str,
    ) -> (Result<duplex::PeerInfo, ConnectError>, WireConn) {
        let dial = self.client.connect(self.listener.endpoint.as_str());
        let script = async {
            let conn = self.listener.accept().await;
            conn.answer_hello(hello).await;
            conn
        };
        tokio::join!(dial, script)
    }

    /// A connection at `version` ("1" or "2").
    async fn connected(&self, version: &str) -> WireConn {
        let (r, conn) = self
            .connect_answering(&format!("name=server&version={version}"))
            .await;
        r.unwrap();
        conn
    }

    /// The client opens `service` to the harness, which accepts it with
    /// ACCEPT(window, its number).
    async fn opened(&self, conn: &WireConn, service: &str, window: u32) -> (Channel, WireChannel) {
        let open = self.client.open("server", service, Headers::new());
        let answer = async { conn.expect_open().await.accept(window).await };
        let (ch, wire) = tokio::join!(open, answer);
        (ch.unwrap(), wire)
    }

    async fn shutdown(self) {
        self.client.shutdown().await;
    }
}

// ---------------------------------------------------------------- 1.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_dialler_aborts_on_an_unknown_host_key() {
    init_tracing();
    let (hid, other) = (Identity::generate(), Identity::generate());
    let f = Fixture::with(
        Config::default(),
        &hid,
        KnownHosts::new().with_pinned(other.public_key()),
    )
    .await;
    let dial = f.client.connect(f.listener.endpoint.as_str());
    let script = async {
        let conn = f.listener.accept().await;
        conn.expect_disconnect().await;
        conn.users()
    };
    let (r, users) = tokio::join!(dial, script);
    assert!(r.is_err(), "connected to an unknown host key");
    assert!(users.is_empty(), "authenticated anyway: {users:?}");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_dialler_authenticates_with_publickey_as_its_name() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    assert_eq!(conn.users(), ["client"]);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_1_dialler_closes_on_a_hello_name_bound_to_another_key() {
    init_tracing();
    let (hid, real_bob) = (Identity::generate(), Identity::generate());
    let mut known = KnownHosts::new();
    known.pin_named(real_bob.public_key(), "bob");
    known.pin(hid.public_key());
    let f = Fixture::with(Config::default(), &hid, known).await;
    let (r, conn) = f.connect_answering("name=bob&version=2").await;
    let err = r.unwrap_err();
    assert!(matches!(err, ConnectError::NameRefused { .. }), "{err:?}");
    conn.expect_disconnect().await;
    assert!(f.client.peers().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_dialler_accepts_opens_from_the_listener() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let app = async {
        let mut ch = within(10, f.client.accept()).await.unwrap().accept().await;
        ch.write_all(b"to you").await.unwrap();
        ch.write_error(b"err").await.unwrap();
        let mut buf = [0u8; 6];
        ch.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"to me.");
        ch
    };
    let script = async {
        let (mut ch, _, _) = conn.open_accepted("svc", 65536, "k=v").await;
        ch.send_data(b"to me.").await;
        ch.send_ext(77, b"ignored").await; // an unknown type: ignored
        ch.expect_data(b"to you").await;
        assert_eq!(ch.expect_error_frame().await, b"err");
        ch
    };
    let (_app, _ch) = tokio::join!(app, script);
    f.shutdown().await;
}

// ---------------------------------------------------------------- 2. hello

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_dialler_hello_fields() {
    let f = Fixture::new(Config::default()).await;
    let dial = f.client.connect(f.listener.endpoint.as_str());
    let script = async {
        let conn = f.listener.accept().await;
        let inc = conn.expect_open().await; // the first open
        let info = inc.info();
        let mut ch = inc.confirm().await;
        ch.send_record(&Record::Hello("name=server&version=2".into()))
            .await;
        ch.send_eof().await;
        // The dialler sends nothing on the hello channel but EOF and close
        // (if it closes first; otherwise it answers ours, which russh does
        // not report: it forgets a channel once it sent its close).
        let mut seen = Vec::new();
        while let Some(e) = ch.try_next_event(Duration::from_millis(300)).await {
            let end = e == Ev::Close;
            seen.push(e);
            if end {
                break;
            }
        }
        assert!(
            seen.iter().all(|e| matches!(e, Ev::Eof | Ev::Close)),
            "{seen:?}"
        );
        if !seen.contains(&Ev::Close) {
            ch.send_close().await;
        }
        (info, conn)
    };
    let (r, (info, _conn)) = tokio::join!(dial, script);
    r.unwrap();
    assert_eq!(info.host, "@hello");
    assert_eq!((info.port, info.originator_port), (1, 0));
    assert_eq!(info.originator, "name=client&version=1&max-version=3");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_dialler_refuses_hello_without_name() {
    let f = Fixture::new(Config::default()).await;
    let (r, conn) = f.connect_answering("version=2").await;
    assert!(r.unwrap_err().to_string().contains("name"));
    conn.expect_disconnect().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_dialler_refuses_a_bad_hello_version() {
    let f = Fixture::new(Config::default()).await;
    for hello in [
        "name=server",
        "name=server&version=",
        "name=server&version=x",
        "name=server&version=0",
        "name=server&version=4",
    ] {
        let (r, conn) = f.connect_answering(hello).await;
        let e = r.expect_err(hello);
        assert!(e.to_string().contains("version"), "{hello}: {e}");
        conn.expect_disconnect().await;
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_dialler_fails_when_the_hello_is_refused_or_unanswered() {
    let f = Fixture::new(Config::default()).await;
    // Refused at the SSH level.
    let dial = f.client.connect(f.listener.endpoint.as_str());
    let script = async {
        let conn = f.listener.accept().await;
        conn.expect_open().await.refuse(1, "no hello here").await;
        conn
    };
    let (r, _conn) = tokio::join!(dial, script);
    assert!(r.is_err());
    // Confirmed, then closed without a HELLO.
    let dial = f.client.connect(f.listener.endpoint.as_str());
    let script = async {
        let conn = f.listener.accept().await;
        let ch = conn.expect_open().await.confirm().await;
        ch.send_eof().await;
        ch.send_close().await;
        conn
    };
    let (r, _conn) = tokio::join!(dial, script);
    assert!(r.is_err());
    assert!(f.client.peers().is_empty());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_listener_answering_version_1_is_used_as_version_1() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("1").await;
    let (mut app, mut ch) = f.opened(&conn, "svc", 65536).await;
    ch.keep_windows(true);
    app.write_all(b"x").await.unwrap();
    app.close_write().await.unwrap();
    ch.expect_data(b"x").await;
    ch.expect_eof().await; // version 1: SSH EOF is the half-close
    // The other direction still works after it, WINDOW included.
    ch.send_data(b"back").await;
    let mut buf = [0u8; 4];
    within(10, app.read_exact(&mut buf)).await.unwrap();
    ch.send_eof().await;
    let mut rest = Vec::new();
    within(10, app.read_to_end(&mut rest)).await.unwrap();
    drop(app);
    ch.expect_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_listener_answering_version_2_is_used_as_version_2() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let (mut app, mut ch) = f.opened(&conn, "svc", 65536).await;
    ch.keep_windows(true);
    app.write_all(b"x").await.unwrap();
    app.close_write().await.unwrap();
    ch.expect_data(b"x").await;
    ch.expect_eof_record().await;
    ch.send_data(b"back").await;
    let mut buf = [0u8; 4];
    within(10, app.read_exact(&mut buf)).await.unwrap();
    ch.send_eof_record().await;
    // Both EOF records exchanged: SSH EOF, then nothing but the close.
    ch.expect_eof().await;
    drop(app);
    ch.expect_only_close().await;
    f.shutdown().await;
}

// ---------------------------------------------------------------- 3. opens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_opener_sends_the_window_pair_first() {
    let f = Fixture::new(Config::default().channel_window(256 << 10).unwrap()).await;
    let conn = f.connected("2").await;
    let open = f
        .client
        .open("server", "svc", Headers::new().with("a b", "c"));
    let script = async {
        let inc = conn.expect_open().await;
        let info = inc.info();
        (info, inc.accept(1024).await)
    };
    let (ch, (info, _w)) = tokio::join!(open, script);
    drop(ch.unwrap());
    assert_eq!(info.host, "svc");
    assert_eq!((info.port, info.originator_port), (1, 0));
    assert_eq!(info.originator, "%40window=262144&a%20b=c");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_open_completes_on_accept_only() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let client = f.client.clone();
    let open = client.open("server", "svc", Headers::new());
    tokio::pin!(open);
    let ch = tokio::select! {
        _ = &mut open => panic!("the open completed before any answer"),
        inc = conn.expect_open() => inc.confirm().await,
    };
    // Confirmed but not accepted: still waiting, and sending nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut open)
            .await
            .is_err(),
        "the open completed without ACCEPT"
    );
    ch.send_accept(1024).await;
    let mut app = within(10, open).await.unwrap();
    app.write_all(b"now").await.unwrap();
    let mut ch = ch;
    ch.expect_data(b"now").await;
    drop(app);
    f.client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_opener_fails_on_reject_refusal_or_close() {
    let f = Fixture::new(Config::default().open_timeout(Duration::from_millis(500))).await;
    let conn = f.connected("2").await;
    // REJECT, then close.
    let open = f.client.open("server", "svc", Headers::new());
    let script = async {
        let ch = conn.expect_open().await.confirm().await;
        ch.send_record(&Record::Reject("nope".into())).await;
        ch.send_close().await;
    };
    let (r, ()) = tokio::join!(open, script);
    let e = r.unwrap_err();
    assert!(
        matches!(&e, OpenError::Rejected { .. }) && e.to_string().contains("nope"),
        "{e:?}"
    );
    // Refused at the SSH level, code 4 (a limit): the opener asks again
    // after a pause, and reports the refusal when its open timeout passes
    // (500 ms here).
    let open = f.client.open("server", "svc", Headers::new());
    let script = async {
        loop {
            conn.expect_open().await.refuse(4, "full").await;
        }
    };
    let r = tokio::select! {
        r = open => r,
        _ = script => unreachable!(),
    };
    let e = r.unwrap_err();
    assert!(matches!(e, OpenError::Refused { code: 4, .. }), "{e:?}");
    // Code 1 (prohibited) is final: one open, refused at once.
    let open = f.client.open("server", "svc", Headers::new());
    let script = async { conn.expect_open().await.refuse(1, "no").await };
    let (r, ()) = tokio::join!(open, script);
    assert!(
        matches!(r, Err(OpenError::Refused { code: 1, .. })),
        "{r:?}"
    );
    // Closed before an answer.
    let open = f.client.open("server", "svc", Headers::new());
    let script = async {
        let ch = conn.expect_open().await.confirm().await;
        ch.send_close().await;
    };
    let (r, ()) = tokio::join!(open, script);
    assert!(r.is_err());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_1_dialler_accept_carries_window_and_its_number() {
    let f = Fixture::new(Config::default().channel_window(128 << 10).unwrap()).await;
    let conn = f.connected("2").await;
    let app = async { within(10, f.client.accept()).await.unwrap().accept().await };
    let (app, (_ch, window, id)) = tokio::join!(app, conn.open_accepted("svc", 1024, ""));
    assert_eq!(window, 128 << 10);
    // The number names the channel in a nested open (kind 1).
    let child = async {
        let mut ch = conn
            .open("child", 1, "%40window=1024", id + 1)
            .await
            .unwrap();
        ch.expect_accept().await;
        ch
    };
    let app_child = async { within(10, app.accept()).await.unwrap().accept().await };
    let (_c, _a) = tokio::join!(child, app_child);
    f.shutdown().await;
}

// ---------------------------------------------------------------- 3.2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_dialler_names_a_parent_it_opened_by_kind_1() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let (app_parent, parent) = f.opened(&conn, "parent", 65536).await;
    let kids = app_parent.children();
    let open = kids.open("child", Headers::new());
    let script = async {
        let inc = conn.expect_open().await;
        let info = inc.info();
        (info, inc.accept(1024).await)
    };
    let (child, (info, _w)) = tokio::join!(open, script);
    drop(child.unwrap());
    assert_eq!(info.host, "child");
    assert_eq!((info.port, info.originator_port), (1, parent.id + 1));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_dialler_names_a_parent_it_accepted_by_kind_2() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let app = async { within(10, f.client.accept()).await.unwrap().accept().await };
    let (app_parent, (_p, _, their_id)) =
        tokio::join!(app, conn.open_accepted("parent", 65536, ""));
    let kids = app_parent.children();
    let open = kids.open("child", Headers::new());
    let script = async {
        let inc = conn.expect_open().await;
        let info = inc.info();
        (info, inc.accept(1024).await)
    };
    let (child, (info, _w)) = tokio::join!(open, script);
    drop(child.unwrap());
    assert_eq!((info.port, info.originator_port), (2, their_id + 1));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_dialler_sends_parent_closed_to_descendants() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let (app_parent, mut parent) = f.opened(&conn, "parent", 65536).await;
    let kids = app_parent.children();
    let open = kids.open("child", Headers::new());
    let script = async { conn.expect_open().await.accept(1024).await };
    let (app_child, mut child) = tokio::join!(open, script);
    let _app_child = app_child.unwrap();
    drop(kids);
    drop(app_parent);
    let r = child.expect_parent_closed().await;
    assert!(r.contains("parent"), "{r}");
    child.expect_end().await;
    parent.expect_finish().await;
    f.shutdown().await;
}

// ---------------------------------------------------------------- 3.3

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_3_accept_timeout_rejects() {
    let config = Config::default()
        .accept_timeout(Duration::from_millis(300))
        .unwrap();
    let f = Fixture::new(config).await;
    let conn = f.connected("2").await;
    // The client's application never answers.
    let mut ch = conn.open_top("svc", "%40window=1024").await.unwrap();
    let r = ch.expect_reject().await;
    assert!(
        r.contains("svc") && r.contains("Config::accept_timeout"),
        "{r}"
    );
    ch.expect_end().await;
    // Skipped by accept: the next channel offered is the next one opened.
    let app = async { within(10, f.client.accept()).await.unwrap() };
    let (inc, _ch2) = tokio::join!(app, conn.open_top("second", "%40window=1024"));
    assert_eq!(inc.service(), "second");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_3_accept_channels_false_refuses_at_once() {
    let f = Fixture::new(Config::default().accept_channels(false)).await;
    let conn = f.connected("2").await;
    let mut ch = conn.open_top("svc", "%40window=1024").await.unwrap();
    let r = ch.expect_reject().await;
    assert!(r.contains("client accepts no channels"), "{r}");
    ch.expect_end().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_3_a_service_nothing_takes_is_refused_at_once() {
    let f = Fixture::new(Config::default()).await;
    // The peer routes by service: it claims one and never calls accept.
    let mut claimed = f.client.acceptor(["claimed"]).unwrap();
    let conn = f.connected("2").await;
    let started = std::time::Instant::now();
    let mut ch = conn.open_top("other", "%40window=1024").await.unwrap();
    assert_eq!(ch.expect_reject().await, "no service \"other\" on client");
    ch.expect_end().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // The claimed one goes to its acceptor.
    let app = async { within(10, claimed.accept()).await.unwrap() };
    let (inc, _ch2) = tokio::join!(app, conn.open_top("claimed", "%40window=1024"));
    assert_eq!(inc.service(), "claimed");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_3_opener_gives_up_after_open_timeout() {
    let f = Fixture::new(Config::default().open_timeout(Duration::from_millis(500))).await;
    let conn = f.connected("2").await;
    let open = f.client.open("server", "svc", Headers::new());
    let script = async {
        let mut ch = conn.expect_open().await.confirm().await;
        ch.expect_finish().await; // the opener closes, unanswered
    };
    let (r, ()) = tokio::join!(open, script);
    assert!(matches!(r, Err(OpenError::Timeout { .. })), "{r:?}");
    f.shutdown().await;
}

// ---------------------------------------------------------------- 5. / 6.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_protocol_error_fails_the_channel_unanswered() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let (mut app, mut ch) = f.opened(&conn, "svc", 65536).await;
    ch.keep_windows(true);
    ch.send_record(&Record::ProtocolError("you did it wrong".into()))
        .await;
    let mut buf = [0u8; 1];
    let e = within(10, app.read(&mut buf)).await.unwrap_err();
    assert!(e.to_string().contains("you did it wrong"), "{e}");
    // No PROTOCOL_ERROR back: at most its SSH EOF and close. (Whether
    // nothing comes cannot be shown by a later event: wait a little.)
    while let Some(e) = ch.try_next_event(Duration::from_millis(300)).await {
        assert!(matches!(e, Ev::Eof | Ev::Close), "{e:?}");
        if e == Ev::Close {
            break;
        }
    }
    ch.send_close().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_3_dialler_limited_to_credit() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let (mut app, mut ch) = f.opened(&conn, "svc", 10).await;
    let writer = tokio::spawn(async move {
        app.write_all(&[6u8; 100]).await.unwrap();
        app.flush().await.unwrap();
        app
    });
    ch.read_data(10).await;
    ch.expect_quiet(300).await;
    ch.send_window(90).await;
    ch.read_data(90).await;
    drop(within(10, writer).await.unwrap());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_6_dialler_violation_is_protocol_error_then_close() {
    let f = Fixture::new(Config::default().channel_window(64 << 10).unwrap()).await;
    let conn = f.connected("2").await;
    let (_app, mut ch) = f.opened(&conn, "svc", 65536).await;
    ch.send_data(&vec![0u8; (64 << 10) + 1]).await;
    loop {
        match ch.next_event().await {
            Ev::Record(Record::ProtocolError(r)) => {
                assert!(!r.is_empty());
                break;
            }
            Ev::Data(_) | Ev::Ext(STDERR, _) => {}
            other => panic!("expected PROTOCOL_ERROR, got {other:?}"),
        }
    }
    ch.expect_end().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_close_is_answered_at_once() {
    let f = Fixture::new(Config::default()).await;
    let conn = f.connected("2").await;
    let (app, ch) = f.opened(&conn, "svc", 65536).await;
    ch.send_close().await;
    // Ended although the application still holds the channel. (The close
    // russh sends back is not reported to the harness: russh forgets a
    // channel once it sent its own close.)
    within(10, app.closed()).await;
    drop(app);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_dialler_handshake_timeout() {
    // One attempt: a timed-out attempt is transient and would be retried.
    let config = Config::default()
        .handshake_timeout(Duration::from_secs(1))
        .connect_backoff(duplex::Backoff::default().max_attempts(Some(1)))
        .unwrap();
    let f = Fixture::new(config).await;
    let dial = f.client.connect(f.listener.endpoint.as_str());
    let t0 = std::time::Instant::now();
    let script = async {
        let conn = f.listener.accept().await;
        // The hello is never answered.
        let inc = conn.expect_open().await;
        conn.expect_disconnect().await;
        drop(inc);
    };
    let (r, ()) = within(20, async { tokio::join!(dial, script) }).await;
    let e = r.unwrap_err();
    assert!(matches!(e, ConnectError::Timeout { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    f.shutdown().await;
}
