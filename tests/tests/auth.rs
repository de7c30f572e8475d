//! Authentication and names: an untrusted key gets nothing (no channel,
//! before or after a failed authentication), a trusted key cannot take
//! another peer's name (in either direction), and weak algorithms are not
//! negotiated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;
use std::sync::Arc;

use duplex::{AuthorizedKeys, Config, ConnectError, Identity, KnownHosts, NameBindingError, Peer};
use duplex_tests::{
    RawSsh, TempDir, echo_once, echo_server, init_tracing, peer_trusting, port, within,
};
use russh::client;

fn russh_key(id: &Identity) -> russh::keys::PrivateKey {
    let dir = TempDir::new("rawkey");
    let path = dir.0.join("k");
    id.save(&path).unwrap();
    russh::keys::load_secret_key(&path, None).unwrap()
}

/// A listening peer named "server" that trusts `authorized`, echoing.
async fn server(sid: &Identity, authorized: AuthorizedKeys) -> (Peer, duplex::Endpoint) {
    init_tracing();
    let server = Peer::builder()
        .name("server")
        .identity(sid.clone())
        .authorized_keys(authorized)
        .build()
        .unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    echo_server(&server);
    (server, ep)
}

fn client(name: &str, id: &Identity, sid: &Identity) -> Peer {
    Peer::builder()
        .name(name)
        .identity(id.clone())
        .known_hosts(KnownHosts::new().with_pinned(sid.public_key()))
        .config(Config::default().reconnect(false))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_key_gets_nothing() {
    let (sid, trusted, stranger) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (server, ep) = server(&sid, AuthorizedKeys::new().with(trusted.public_key())).await;
    within(30, async {
        // Through Duplex: a clear error.
        let err = client("stranger", &stranger, &sid)
            .connect(&ep)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::AuthRejected { .. }), "{err:?}");
        assert!(err.to_string().contains("rejected our key"), "{err}");

        // Through raw SSH: channel opens and global requests before (and
        // after a failed) authentication are not served.
        let mut h = client::connect(
            Arc::new(client::Config::default()),
            ("127.0.0.1", port(&ep)),
            RawSsh,
        )
        .await
        .unwrap();
        let early = h.channel_open_direct_tcpip("echo", 1, "", 0).await;
        assert!(early.is_err(), "a channel opened before authentication");
        let auth = h
            .authenticate_publickey(
                "server",
                russh::keys::PrivateKeyWithHashAlg::new(Arc::new(russh_key(&stranger)), None),
            )
            .await;
        assert!(!auth.map(|r| r.success()).unwrap_or(false));
        let after = h.channel_open_direct_tcpip("echo", 1, "", 0).await;
        assert!(
            after.is_err(),
            "a channel opened after a failed authentication"
        );
        let session = h.channel_open_session().await;
        assert!(session.is_err(), "a session opened without authentication");
        // Password authentication is not even offered.
        let pw = h.authenticate_password("server", "hunter2").await;
        assert!(!pw.map(|r| r.success()).unwrap_or(false));

        // The server saw nothing, and serves a trusted client.
        assert!(server.peers().is_empty());
        let c = client("trusted", &trusted, &sid);
        c.connect(&ep).await.unwrap();
        let _ = c;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_key_cannot_take_another_peers_name() {
    let (sid, alice, mallory) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    // Alice's key is bound to her name; Mallory's key is trusted, unbound.
    let text = format!(
        "duplex-name=\"alice\",no-pty {}\n{} mallory@laptop\n",
        alice.public_key().to_openssh(),
        mallory.public_key().to_openssh()
    );
    let trust = AuthorizedKeys::parse(&text).unwrap();
    assert_eq!(trust.entries()[0].names, vec!["alice".to_owned()]);
    let (server, ep) = server(&sid, trust).await;
    within(30, async {
        // Mallory posing as Alice is refused, with a message saying how to
        // fix a legitimate case.
        let err = client("alice", &mallory, &sid)
            .connect(&ep)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::AuthRejected { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("for the peer name \"alice\"") && msg.contains("duplex-name"),
            "{msg}"
        );
        // Alice under another name is refused too.
        let err = client("bob", &alice, &sid).connect(&ep).await.unwrap_err();
        assert!(matches!(err, ConnectError::AuthRejected { .. }), "{err:?}");
        // The server never saw a peer called alice.
        assert!(server.peers().is_empty());

        // Alice as herself, and Mallory as herself, are served.
        let a = client("alice", &alice, &sid);
        a.connect(&ep).await.unwrap();
        let m = client("mallory", &mallory, &sid);
        m.connect(&ep).await.unwrap();
        let mut names: Vec<_> = server.peers().into_iter().map(|p| p.name).collect();
        names.sort();
        assert_eq!(names, ["alice", "mallory"]);
        let fp = |id: &Identity| id.public_key().fingerprint();
        for p in server.peers() {
            let want = if p.name == "alice" {
                fp(&alice)
            } else {
                fp(&mallory)
            };
            assert_eq!(p.fingerprint, want);
        }
        a.shutdown().await;
        m.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_cannot_announce_another_peers_name() {
    init_tracing();
    let (real, impostor, cid) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let impostor_peer = peer_trusting("bob", &impostor, &[&cid], Config::default());
    let ep = impostor_peer.bind("tcp://127.0.0.1:0").await.unwrap();
    // We trust both host keys, but "bob" is bound to the real one.
    let mut known = KnownHosts::new();
    known.pin_named(real.public_key(), "bob");
    known.pin(impostor.public_key());
    let me = Peer::builder()
        .name("client")
        .identity(cid.clone())
        .known_hosts(known)
        .config(Config::default().reconnect(false))
        .build()
        .unwrap();
    let err = within(20, me.connect(&ep)).await.unwrap_err();
    let ConnectError::NameRefused { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(source, NameBindingError::TakenByAnother { .. }),
        "{source:?}"
    );
    assert!(
        duplex::error::full_text(&err).contains("the name \"bob\" is bound to another key"),
        "{err}"
    );
    assert!(me.peers().is_empty());
    me.shutdown().await;
    impostor_peer.shutdown().await;
}

/// An RSA key made by `ssh-keygen`.
fn rsa_key(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.0.join("id_rsa");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weak_algorithms_are_not_negotiated() {
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let dir = TempDir::new("rsa");
    let rsa_path = rsa_key(&dir);
    let rsa_public = Identity::load(&rsa_path).unwrap().public_key();
    let (server, ep) = server(
        &sid,
        AuthorizedKeys::new()
            .with(cid.public_key())
            .with(rsa_public),
    )
    .await;
    within(30, async {
        let weak = [
            russh::Preferred {
                kex: Cow::Owned(vec![russh::kex::DH_G1_SHA1, russh::kex::DH_G14_SHA1]),
                ..russh::Preferred::default()
            },
            russh::Preferred {
                mac: Cow::Owned(vec![russh::mac::HMAC_SHA1]),
                cipher: Cow::Owned(vec![russh::cipher::AES_128_CTR]),
                ..russh::Preferred::default()
            },
        ];
        for preferred in weak {
            let config = client::Config {
                preferred,
                ..client::Config::default()
            };
            let r = client::connect(Arc::new(config), ("127.0.0.1", port(&ep)), RawSsh).await;
            assert!(r.is_err(), "a weak algorithm was negotiated");
        }
        // A trusted RSA key signing with SHA-1 (ssh-rsa) is refused; the
        // same key with SHA-256 (rsa-sha2-256) is accepted.
        let rsa = Arc::new(russh::keys::load_secret_key(&rsa_path, None).unwrap());
        for (hash, accepted) in [(None, false), (Some(russh::keys::HashAlg::Sha256), true)] {
            let mut h = client::connect(
                Arc::new(client::Config::default()),
                ("127.0.0.1", port(&ep)),
                RawSsh,
            )
            .await
            .unwrap();
            let auth = h
                .authenticate_publickey(
                    "rsa-user",
                    russh::keys::PrivateKeyWithHashAlg::new(rsa.clone(), hash),
                )
                .await;
            assert_eq!(
                auth.map(|r| r.success()).unwrap_or(false),
                accepted,
                "{hash:?}"
            );
        }
        // And a Duplex client, with the defaults, is served.
        let c = peer_trusting("client", &cid, &[&sid], Config::default());
        c.connect(&ep).await.unwrap();
        echo_once(&c, 1000).await;
        c.shutdown().await;
    })
    .await;
    server.shutdown().await;
}

/// paramiko (what Fabric and Ansible use) with an untrusted key first and
/// the trusted one second: it asks for the `ssh-userauth` service again
/// before the second attempt, and must be answered (the vendored russh
/// patch; unpatched, the client waits out its 10 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paramiko_with_a_second_key_is_served() {
    let py = duplex_tests::python_with("paramiko", "paramiko==5.1.0");
    let (sid, trusted, stranger) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (server, ep) = server(&sid, AuthorizedKeys::new().with(trusted.public_key())).await;
    let dir = TempDir::new("paramiko");
    stranger.save(dir.0.join("first")).unwrap();
    trusted.save(dir.0.join("second")).unwrap();
    let port = port(&ep);
    std::fs::write(
        dir.0.join("known_hosts"),
        format!("[127.0.0.1]:{port} {}\n", sid.public_key().to_openssh()),
    )
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/strict/paramiko_client.py");
    let out = within(
        30,
        tokio::process::Command::new(&py)
            .arg(script)
            .arg(port.to_string())
            .arg(dir.0.join("known_hosts"))
            .args(["paramiko", "echo"])
            .arg(dir.0.join("first"))
            .arg(dir.0.join("second"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "paramiko failed: {stdout}{stderr}");
    assert!(
        stdout.contains("echoed 'hello from paramiko'"),
        "{stdout}{stderr}"
    );
    eprintln!("{}", stdout.trim());
    let took: f64 = stdout
        .split("authenticated in ")
        .nth(1)
        .and_then(|s| s.split('s').next())
        .unwrap()
        .parse()
        .unwrap();
    // One refused key costs the server's rejection delay (250 ms).
    assert!(took < 3.0, "authentication took {took}s");
    server.shutdown().await;
}
