//! The echo example as real processes: `serve` and `send` talking, stock
//! OpenSSH reaching the echo service with `ssh -W echo:1`, and the README's
//! demo command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use duplex::Identity;
use duplex_tests::{SSH_OPTS, TempDir, random_bytes, within};
use tokio::io::AsyncWriteExt;

const ECHO: &str = env!("CARGO_BIN_EXE_echo");

/// A running `echo serve`, killed on drop.
struct Server {
    child: tokio::process::Child,
    endpoint: String,
}

async fn start_server(dir: &TempDir, args: &[&str]) -> Server {
    let mut child = tokio::process::Command::new(ECHO)
        .arg("serve")
        .args(args)
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let endpoint = duplex_tests::listening_endpoint(&mut child).await;
    Server { child, endpoint }
}

fn port_of(endpoint: &str) -> &str {
    endpoint.rsplit(':').next().unwrap()
}

/// Keys for an OpenSSH client and the server, with the trust files.
fn keys(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf, Identity) {
    let server = Identity::generate();
    let client = Identity::generate();
    let skey = dir.0.join("server_key");
    let ckey = dir.0.join("client_key");
    server.save(&skey).unwrap();
    client.save(&ckey).unwrap();
    std::fs::write(
        dir.0.join("authorized_keys"),
        format!("{}\n", client.public_key().to_openssh()),
    )
    .unwrap();
    (skey, ckey, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_reaches_echo_service() {
    let dir = TempDir::new("ssh-w");
    let (skey, ckey, server_id) = keys(&dir);
    let mut server = start_server(
        &dir,
        &[
            "tcp://127.0.0.1:0",
            "--key",
            skey.to_str().unwrap(),
            "--authorized-keys",
            dir.0.join("authorized_keys").to_str().unwrap(),
        ],
    )
    .await;
    let port = port_of(&server.endpoint).to_owned();
    // Strict host key checking against a known_hosts file we wrote.
    let kh = dir.0.join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{port} {}\n",
            server_id.public_key().to_openssh()
        ),
    )
    .unwrap();

    for size in [6usize, 16 << 20] {
        let data = if size == 6 {
            b"hello\n".to_vec()
        } else {
            random_bytes(size)
        };
        let mut ssh = tokio::process::Command::new("ssh")
            .args(["-p", &port, "-i", ckey.to_str().unwrap()])
            .args(SSH_OPTS)
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args(["-W", "echo:1", "tester@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the OpenSSH client (ssh) must be installed: apt-get install openssh-client");
        let mut stdin = ssh.stdin.take().unwrap();
        let input = data.clone();
        tokio::spawn(async move {
            stdin.write_all(&input).await.unwrap();
            drop(stdin);
        });
        let out = within(60, ssh.wait_with_output()).await.unwrap();
        assert!(
            out.status.success(),
            "ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.len(), data.len());
        assert!(out.stdout == data, "echo through ssh -W differs");
    }

    // An OpenSSH client whose key is not authorized is refused.
    let stranger = dir.0.join("stranger");
    Identity::generate().save(&stranger).unwrap();
    let out = Command::new("ssh")
        .args(["-p", &port, "-i", stranger.to_str().unwrap()])
        .args(SSH_OPTS)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .args(["-W", "echo:1", "tester@127.0.0.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_serve_processes() {
    let dir = TempDir::new("echo-procs");
    // Demo mode: both processes share the demo key in `dir`.
    let mut server = start_server(&dir, &["tcp://127.0.0.1:0"]).await;
    let data = random_bytes(3 << 20);
    let mut send = tokio::process::Command::new(ECHO)
        .args(["send", &server.endpoint, "echo", "trace=abc"])
        .current_dir(&dir.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    let input = data.clone();
    tokio::spawn(async move {
        stdin.write_all(&input).await.unwrap();
    });
    let out = within(60, send.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == data);
    assert!(String::from_utf8_lossy(&out.stderr).contains("connected to echo-server"));
    server.child.kill().await.unwrap();
}

#[test]
fn demo_command_runs() {
    let dir = TempDir::new("demo");
    let out = Command::new(ECHO)
        .arg("demo")
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("echoed bytes: Hello over Duplex!"),
        "{stdout}"
    );
    assert!(stdout.contains("echoed frame: a frame"), "{stdout}");
    assert!(
        stdout.contains("echoed error frame: an error frame"),
        "{stdout}"
    );
    assert!(stdout.contains("demo done"), "{stdout}");
}

/// Issue 4, point 2: the listening process is killed mid-transfer; the
/// transfer fails promptly and clearly; once the process is started again
/// (same key, same port), the dialler reconnects by itself and new
/// channels work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_process_fails_transfers_and_is_redialled_after_restart() {
    use duplex::{AuthorizedKeys, Backoff, Config, Headers, KnownHosts, Peer, PeerEvent};
    use std::time::{Duration, Instant};
    use tokio::io::AsyncReadExt;

    let dir = TempDir::new("echo-kill");
    let (skey, ckey, server_id) = keys(&dir);
    let (skey, ak) = (
        skey.display().to_string(),
        dir.0.join("authorized_keys").display().to_string(),
    );
    let args = |ep: &str| {
        vec![
            ep.to_owned(),
            "--key".to_owned(),
            skey.clone(),
            "--authorized-keys".to_owned(),
            ak.clone(),
        ]
    };
    let first = args("tcp://127.0.0.1:0");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut server = start_server(&dir, &first).await;
    let backoff = Backoff::default()
        .initial(Duration::from_millis(20))
        .max_interval(Duration::from_millis(200));
    let client = Peer::builder()
        .name("client")
        .identity(Identity::load(&ckey).unwrap())
        .known_hosts(KnownHosts::new().with_pinned(server_id.public_key()))
        .authorized_keys(AuthorizedKeys::new())
        .config(Config::default().connect_backoff(backoff).unwrap())
        .build()
        .unwrap();
    let mut events = client.events();
    client.connect(server.endpoint.as_str()).await.unwrap();
    assert!(matches!(events.recv().await, Some(PeerEvent::Connected(_))));
    let name = client.peers()[0].name.clone();

    // A transfer in flight when the process dies.
    let ch = client.open(&name, "echo", Headers::new()).await.unwrap();
    let (mut r, mut w) = ch.split();
    let writer = tokio::spawn(async move {
        let chunk = vec![5u8; 32 << 10];
        while w.write_all(&chunk).await.is_ok() {}
    });
    let mut buf = vec![0u8; 64 << 10];
    assert!(r.read(&mut buf).await.unwrap() > 0, "echo flowing");
    server.child.kill().await.unwrap();
    let killed = Instant::now();
    let err = within(10, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) => panic!("clean EOF after the server was killed"),
                Ok(_) => {}
                Err(e) => break e,
            }
        }
    })
    .await;
    let took = killed.elapsed();
    writer.abort();
    assert!(err.to_string().contains("connection lost"), "{err}");
    assert!(took < Duration::from_secs(2), "noticed after {took:?}");
    eprintln!("transfer failed {took:?} after the kill: {err}");

    // Restart on the same port: the client re-dials by itself.
    let again = args(&server.endpoint);
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    let _server = start_server(&dir, &again).await;
    within(30, async {
        loop {
            if let Some(PeerEvent::Connected(_)) = events.recv().await {
                break;
            }
        }
    })
    .await;
    let mut ch = client.open(&name, "echo", Headers::new()).await.unwrap();
    ch.write_all(b"back again").await.unwrap();
    ch.close_write().await.unwrap();
    let mut back = Vec::new();
    within(10, ch.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"back again");
    client.shutdown().await;
}
