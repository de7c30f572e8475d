#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Test harness: peers that trust each other, connected over TCP, a Unix
//! socket or an in-memory pipe.

use std::time::Duration;

use duplex::{AuthorizedKeys, Config, Headers, Identity, KnownHosts, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod wire;

/// Installs a tracing subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// How two peers are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP on 127.0.0.1.
    Tcp,
    /// A Unix socket in a temporary directory.
    Unix,
    /// An in-memory pipe (`tokio::io::duplex`).
    Memory,
}

/// All transports, for tests that run on each.
pub const TRANSPORTS: [Transport; 3] = [Transport::Tcp, Transport::Unix, Transport::Memory];

/// A peer with its identity.
pub struct TestPeer {
    /// The peer.
    pub peer: Peer,
    /// Its key pair.
    pub identity: Identity,
}

/// Builds a peer named `name` that trusts `trusted` both ways.
///
/// Tests that do not set them get short drain and peer-wait timeouts
/// (most tests end with channels still open, or look up absent peers on
/// purpose); tests of those features set their own.
pub fn peer_trusting(
    name: &str,
    identity: &Identity,
    trusted: &[&Identity],
    mut config: Config,
) -> Peer {
    let defaults = Config::default();
    if config.get_drain_timeout() == defaults.get_drain_timeout() {
        config = config.drain_timeout(Duration::from_millis(200));
    }
    if config.get_peer_wait_timeout() == defaults.get_peer_wait_timeout() {
        config = config.peer_wait_timeout(Duration::from_millis(500));
    }
    let mut ak = AuthorizedKeys::new();
    let mut kh = KnownHosts::new();
    for t in trusted {
        ak.add(t.public_key());
        kh.pin(t.public_key());
    }
    Peer::builder()
        .name(name)
        .identity(identity.clone())
        .authorized_keys(ak)
        .known_hosts(kh)
        .config(config)
        .build()
        .unwrap()
}

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates one.
    pub fn new(tag: &str) -> Self {
        use rand::RngExt;
        let n: u64 = rand::rng().random();
        let p = std::env::temp_dir().join(format!("duplex-{tag}-{n:016x}"));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two connected peers: `client` dialled `server`.
pub struct Pair {
    /// The listening side, named "server".
    pub server: Peer,
    /// The dialling side, named "client".
    pub client: Peer,
    _dir: Option<TempDir>,
}

impl Pair {
    /// Shuts both down.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

/// Connects a client peer to a server peer over `transport`.
pub async fn pair(transport: Transport) -> Pair {
    pair_with(transport, Config::default(), Config::default()).await
}

/// [`pair`] with configurations.
pub async fn pair_with(transport: Transport, server_config: Config, client_config: Config) -> Pair {
    init_tracing();
    let (sid, cid) = (Identity::generate(), Identity::generate());
    let server = peer_trusting("server", &sid, &[&cid], server_config);
    let client = peer_trusting("client", &cid, &[&sid], client_config);
    let mut dir = None;
    match transport {
        Transport::Tcp => {
            let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
            client.connect(ep).await.unwrap();
        }
        Transport::Unix => {
            let d = TempDir::new("sock");
            let ep = format!("unix://{}/s.sock", d.0.display());
            server.bind(ep.as_str()).await.unwrap();
            client.connect(ep.as_str()).await.unwrap();
            dir = Some(d);
        }
        Transport::Memory => {
            let (a, b) = tokio::io::duplex(256 << 10);
            server.serve_stream(b, "memory");
            client.connect_stream(a, "memory").await.unwrap();
        }
    }
    Pair {
        server,
        client,
        _dir: dir,
    }
}

/// Random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngExt;
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

/// Awaits `f` for at most `secs` seconds, failing the test on timeout.
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

/// Two fresh identities (a server's and a client's).
pub fn ids() -> (Identity, Identity) {
    (Identity::generate(), Identity::generate())
}

/// Echoes every channel the peer accepts, until it shuts down.
pub fn echo_server(peer: &Peer) {
    let p = peer.clone();
    tokio::spawn(async move {
        while let Some(inc) = p.accept().await {
            tokio::spawn(async move {
                let ch = inc.accept().await;
                let (mut r, mut w) = ch.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
}

/// Opens an echo channel to the peer named "server", sends `n` random
/// bytes with EOF and checks they come back exactly.
pub async fn echo_once(client: &Peer, n: usize) {
    echo_with(client, "server", n).await
}

/// `echo_once` to the peer named `remote`.
pub async fn echo_with(client: &Peer, remote: &str, n: usize) {
    let mut ch = client.open(remote, "echo", Headers::new()).await.unwrap();
    let data = random_bytes(n);
    let (mut r, mut w) = tokio::io::split(&mut ch);
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let ((), got) = tokio::join!(send, r.read_to_end(&mut back));
    got.unwrap();
    assert!(back == data);
}

/// A russh client handler that accepts any host key: for tests that speak
/// raw SSH to a peer (hostile input, authentication).
pub struct RawSsh;

impl russh::client::Handler for RawSsh {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// The port of a `tcp://` endpoint.
pub fn port(ep: &duplex::Endpoint) -> u16 {
    match ep {
        duplex::Endpoint::Tcp { port, .. } => *port,
        other => panic!("not a TCP endpoint: {other}"),
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// Open file descriptors of process `pid` (a number, or "self").
pub fn fds_of(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Resident memory of process `pid` (a number, or "self"), in KiB.
pub fn rss_kib_of(pid: &str) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// `opener` opens `service` to the peer called `remote` while `acceptor`
/// accepts it: both ends.
pub async fn open_pair(
    opener: &Peer,
    acceptor: &Peer,
    remote: &str,
    service: &str,
) -> (duplex::Channel, duplex::Channel) {
    let (opened, accepted) = tokio::join!(opener.open(remote, service, Headers::new()), async {
        acceptor.accept().await.unwrap().accept().await
    });
    (opened.unwrap(), accepted)
}

/// Waits (up to 30 s) for the `listening on ENDPOINT` line a server
/// process prints on stdout and returns the endpoint; the rest of its
/// stdout is read and discarded, so it never blocks on a full pipe.
pub async fn listening_endpoint(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let stdout = child
        .stdout
        .take()
        .expect("the child's stdout is not piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let endpoint = within(30, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the server exited");
            if let Some(e) = line.strip_prefix("listening on ") {
                break e.to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    endpoint
}

/// OpenSSH client options for a test: no user config, no prompts, only the
/// given key.
pub const SSH_OPTS: [&str; 6] = [
    "-F",
    "/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
];

/// The Python interpreter for tests that drive a Python SSH library:
/// `DUPLEX_PYTHON` (`.ci/run` sets it to the venv it makes), else
/// `python3`. Fails the test, saying how to install it, when that Python
/// cannot import `module`; `pin` is the pip requirement `.ci/run` installs.
pub fn python_with(module: &str, pin: &str) -> String {
    let py = std::env::var("DUPLEX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let how = format!(
        "install it with `python3 -m venv target/ci-venv && target/ci-venv/bin/pip install {pin}` \
         and run the tests with DUPLEX_PYTHON=$PWD/target/ci-venv/bin/python (what .ci/run does), \
         or `pip install {pin}` for the default python3"
    );
    let check = format!("import {module}; print({module}.__version__)");
    match std::process::Command::new(&py)
        .args(["-c", &check])
        .output()
    {
        Ok(o) if o.status.success() => {
            eprintln!(
                "{py} with {module} {}",
                String::from_utf8_lossy(&o.stdout).trim()
            );
            py
        }
        Ok(o) => panic!(
            "this test needs {module}, which {py} cannot import ({}): {how}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("this test needs Python ({py}: {e}) with {module}: {how}"),
    }
}
