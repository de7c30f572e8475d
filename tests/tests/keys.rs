//! Keys written by `ssh-keygen` (ed25519, ECDSA, RSA; with and without a
//! passphrase) load, and work as peer identities over a real connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use duplex::{AuthorizedKeys, Headers, Identity, KeyError, KnownHosts, Peer, PublicKey};
use duplex_tests::{TempDir, init_tracing, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn keygen(dir: &TempDir, name: &str, args: &[&str], pass: &str) -> std::path::PathBuf {
    let path = dir.0.join(name);
    let out = Command::new("ssh-keygen")
        .args(args)
        .args(["-q", "-N", pass, "-C", "test@duplex", "-f"])
        .arg(&path)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keygen_keys_work_as_identities() {
    init_tracing();
    let dir = TempDir::new("keygen");
    let server_key = keygen(&dir, "server_ed25519", &["-t", "ed25519"], "");
    for (name, args) in [
        ("ed25519", vec!["-t", "ed25519"]),
        ("ecdsa", vec!["-t", "ecdsa", "-b", "256"]),
        ("rsa", vec!["-t", "rsa", "-b", "2048"]),
    ] {
        let path = keygen(&dir, name, &args, "");
        let client_id = Identity::load(&path).unwrap();
        let public = PublicKey::load(format!("{}.pub", path.display())).unwrap();
        assert_eq!(client_id.public_key(), public);
        // Same fingerprint as OpenSSH prints.
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&path)
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains(client_id.fingerprint().as_str()),
            "{name}: ssh-keygen printed {printed}, we computed {}",
            client_id.fingerprint()
        );

        let server_id = Identity::load(&server_key).unwrap();
        let server = Peer::builder()
            .name("server")
            .identity(server_id.clone())
            .authorized_keys(AuthorizedKeys::from_file(format!("{}.pub", path.display())).unwrap())
            .build()
            .unwrap();
        let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
        let client = Peer::builder()
            .name(format!("client-{name}"))
            .identity(client_id.clone())
            .known_hosts(KnownHosts::new().with_pinned(server_id.public_key()))
            .build()
            .unwrap();
        let info = within(10, client.connect(&ep)).await.unwrap();
        assert_eq!(info.fingerprint, server_id.fingerprint());
        assert_eq!(server.peers()[0].fingerprint, client_id.fingerprint());
        let s = server.clone();
        tokio::spawn(async move {
            let mut ch = s.accept().await.unwrap().accept().await;
            ch.write_all(b"hi").await.unwrap();
            ch.close_write().await.unwrap();
        });
        let mut ch = client.open("server", "x", Headers::new()).await.unwrap();
        let mut got = Vec::new();
        within(10, ch.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"hi");
        client.shutdown().await;
        server.shutdown().await;
    }
}

#[test]
fn passphrases_and_permissions() {
    let dir = TempDir::new("keypass");
    let path = keygen(&dir, "locked", &["-t", "ed25519"], "s3cret");
    let err = Identity::load(&path).unwrap_err();
    assert!(matches!(err, KeyError::Encrypted { .. }), "{err:?}");
    assert!(err.to_string().contains("passphrase"), "{err}");
    let err = Identity::load_with_passphrase(&path, "wrong").unwrap_err();
    assert!(matches!(err, KeyError::BadPassphrase { .. }), "{err:?}");
    let id = Identity::load_with_passphrase(&path, "s3cret").unwrap();
    assert_eq!(
        id.public_key(),
        PublicKey::load(format!("{}.pub", path.display())).unwrap()
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let open = keygen(&dir, "open", &["-t", "ed25519"], "");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(&open).unwrap_err();
        assert!(
            matches!(err, KeyError::Permissions { mode: 0o644, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    std::fs::write(dir.0.join("junk"), "not a key").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.0.join("junk"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let err = Identity::load(dir.0.join("junk")).unwrap_err();
    assert!(err.to_string().contains("junk"), "{err}");
    assert!(matches!(
        Identity::load(dir.0.join("missing")),
        Err(KeyError::Io { .. })
    ));
}
