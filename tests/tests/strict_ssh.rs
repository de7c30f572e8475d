//! Duplex against an unmodified, RFC-strict SSH stack: asyncssh, driven by
//! `tests/strict/duplex_peer.py`, a minimal Duplex peer written from
//! docs/PROTOCOL.md. asyncssh drops the connection on extended data after
//! the remote's SSH EOF and refuses to send anything after its own
//! (RFC 4254 section 5.3), so a `WINDOW` record after EOF, which protocol
//! version 1 sends, fails here; version 2 (half-close is an `EOF` record)
//! must pass. The `--version 1` runs show the check can fail.
//!
//! Needs Python with asyncssh: `DUPLEX_PYTHON` names the interpreter
//! (`.ci/run` sets it to its venv's), else `python3`. Without asyncssh the
//! tests fail, saying how to install it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::sync::OnceLock;

use duplex::{Config, Headers, Identity, Peer};
use duplex_tests::{TempDir, init_tracing, peer_trusting, port, random_bytes, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const PEER_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/strict/duplex_peer.py");

/// The interpreter, once checked to import asyncssh.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| duplex_tests::python_with("asyncssh", "asyncssh==2.24.1"))
}

/// Key files: the Duplex peer's and the Python peer's, with the trust
/// files each side needs.
struct Keys {
    dir: TempDir,
    duplex: Identity,
    python: Identity,
}

impl Keys {
    fn new() -> Self {
        let dir = TempDir::new("strict");
        let (duplex, python) = (Identity::generate(), Identity::generate());
        // save() writes the private key (OpenSSH format) and KEY.pub.
        duplex.save(dir.0.join("duplex_key")).unwrap();
        python.save(dir.0.join("python_key")).unwrap();
        std::fs::write(
            dir.0.join("authorized_keys"),
            format!("{}\n", duplex.public_key().to_openssh()),
        )
        .unwrap();
        Keys {
            dir,
            duplex,
            python,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).to_str().unwrap().to_owned()
    }
}

/// A running `duplex_peer.py`, killed on drop; its stderr is collected.
struct PyPeer {
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

fn spawn_py(args: &[String]) -> PyPeer {
    let mut child = tokio::process::Command::new(python())
        .arg(PEER_PY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} {PEER_PY}: {e}", python()));
    let mut err = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    PyPeer { child, stderr }
}

impl PyPeer {
    /// Waits (bounded) for the exit; returns success and stderr.
    async fn finish(mut self, secs: u64) -> (bool, String) {
        let status = within(secs, self.child.wait()).await.unwrap();
        let stderr = within(10, self.stderr).await.unwrap();
        // Shown with --nocapture or when the test fails.
        eprintln!("--- duplex_peer.py ({status}) ---\n{stderr}---");
        (status.success(), stderr)
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// A Duplex listener "server" that trusts the Python key and echoes every
/// channel with half-close: copies the stream back, then ends its writing
/// with the trailers it received (if any) or a bare `close_write`. Errors
/// seen by the echo tasks are sent to the returned receiver.
async fn duplex_listener(keys: &Keys) -> (Peer, u16, mpsc::UnboundedReceiver<String>) {
    init_tracing();
    let server = peer_trusting("server", &keys.duplex, &[&keys.python], Config::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let p = server.clone();
    tokio::spawn(async move {
        while let Some(inc) = p.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let ch = inc.accept().await;
                let (mut r, mut w) = ch.split();
                let res = async {
                    tokio::io::copy(&mut r, &mut w)
                        .await
                        .map_err(|e| format!("echo copy: {e}"))?;
                    let t = r.trailers().await.map_err(|e| format!("trailers: {e}"))?;
                    if t.is_empty() {
                        w.close_write().await
                    } else {
                        w.write_trailers(&t).await
                    }
                    .map_err(|e| format!("half-close: {e}"))
                }
                .await;
                if let Err(e) = res {
                    let _ = tx.send(e);
                }
                // Dropping both halves closes the channel.
            });
        }
    });
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap();
    (server, port(&ep), rx)
}

/// Runs the Python dialler against a Duplex listener at `port`.
fn py_dialler(keys: &Keys, version: u32, port: u16, extra: &[&str]) -> PyPeer {
    let mut args = strings(&["--version", &version.to_string(), "--name", "strict"]);
    args.extend(strings(&["--key", &keys.path("python_key"), "dial"]));
    args.extend(strings(&["--port", &port.to_string()]));
    args.extend(strings(&["--host-key", &keys.path("duplex_key.pub")]));
    args.extend(strings(extra));
    spawn_py(&args)
}

/// Starts the Python listener (named "server") and returns it with its
/// endpoint.
async fn py_listener(keys: &Keys, version: u32, extra: &[&str]) -> (PyPeer, String) {
    let mut args = strings(&["--version", &version.to_string(), "--name", "server"]);
    args.extend(strings(&["--key", &keys.path("python_key"), "listen"]));
    args.extend(strings(&[
        "--authorized-keys",
        &keys.path("authorized_keys"),
    ]));
    args.extend(strings(extra));
    let mut py = spawn_py(&args);
    let ep = duplex_tests::listening_endpoint(&mut py.child).await;
    (py, ep)
}

/// A Duplex dialler "client" connected to the Python listener.
async fn duplex_dialler(keys: &Keys, ep: &str) -> Peer {
    init_tracing();
    let client = peer_trusting("client", &keys.duplex, &[&keys.python], Config::default());
    within(30, client.connect(ep)).await.unwrap();
    client
}

/// Opens `echo` to "server", sends `n` random bytes, half-closes
/// (`close_write`), reads to the end and compares.
async fn echo_half_close(client: &Peer, n: usize) -> Result<(), String> {
    let ch = client
        .open("server", "echo", Headers::new())
        .await
        .map_err(|e| format!("open: {e}"))?;
    let (mut r, mut w) = ch.split();
    let data = random_bytes(n);
    let send = async {
        w.write_all(&data)
            .await
            .map_err(|e| format!("write: {e}"))?;
        w.close_write()
            .await
            .map_err(|e| format!("close_write: {e}"))
    };
    let mut back = Vec::with_capacity(n);
    let (sent, got) = tokio::join!(send, r.read_to_end(&mut back));
    sent?;
    got.map_err(|e| format!("read after {} of {n} bytes: {e}", back.len()))?;
    if back != data {
        return Err(format!("echo mismatch: sent {n} bytes, got {}", back.len()));
    }
    Ok(())
}

const SIZES: [usize; 2] = [1 << 20, 2 << 20];

/// (a) asyncssh dials a Duplex listener: 1 MiB and 2 MiB echoes, with the
/// `EOF` record as half-close, twice each; then the same with trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncssh_dialler_against_duplex_listener() {
    python();
    let keys = Keys::new();
    let (server, port, mut errors) = duplex_listener(&keys).await;
    let sizes = ["--size", "1048576", "--size", "2097152"];
    let plain = py_dialler(&keys, 2, port, &[&sizes[..], &["--rounds", "2"]].concat());
    let (ok, stderr) = plain.finish(120).await;
    assert!(ok, "the asyncssh dialler failed:\n{stderr}");
    // Frames are just bytes to the echo; trailers travel both ways and are
    // echoed back before the listener's EOF record.
    let trailers = py_dialler(&keys, 2, port, &[&sizes[..], &["--trailers"]].concat());
    let (ok, stderr) = trailers.finish(120).await;
    assert!(ok, "the asyncssh dialler with trailers failed:\n{stderr}");
    assert!(
        stderr.contains("with protocol version 2"),
        "version 2 was not negotiated:\n{stderr}"
    );
    server.shutdown().await;
    if let Ok(e) = errors.try_recv() {
        panic!("the Duplex echo saw an error: {e}");
    }
}

/// (b) a Duplex peer dials the asyncssh listener: 1 MiB and 2 MiB echoes
/// with `close_write`, three rounds on one connection; the listener exits 0
/// once it has completed all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplex_dialler_against_asyncssh_listener() {
    python();
    let keys = Keys::new();
    let rounds = 3;
    let n = (rounds * SIZES.len()).to_string();
    let (py, ep) = py_listener(&keys, 2, &["--exit-after", &n]).await;
    let client = duplex_dialler(&keys, &ep).await;
    for round in 0..rounds {
        for size in SIZES {
            if let Err(e) = within(60, echo_half_close(&client, size)).await {
                client.shutdown().await;
                let (_, stderr) = py.finish(30).await;
                panic!("round {round}, {size} bytes: {e}\nasyncssh listener:\n{stderr}");
            }
        }
    }
    let (ok, stderr) = py.finish(60).await;
    client.shutdown().await;
    assert!(ok, "the asyncssh listener failed:\n{stderr}");
    assert!(stderr.contains("protocol version 2"), "{stderr}");
}

/// (b) again with the asyncssh listener holding the whole stream until the
/// half-close: every byte of the echo comes after the Duplex side's `EOF`
/// record, so all its credit is granted after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplex_dialler_against_store_and_forward_asyncssh_listener() {
    python();
    let keys = Keys::new();
    let (py, ep) = py_listener(&keys, 2, &["--exit-after", "2", "--hold"]).await;
    let client = duplex_dialler(&keys, &ep).await;
    for size in SIZES {
        if let Err(e) = within(60, echo_half_close(&client, size)).await {
            client.shutdown().await;
            let (_, stderr) = py.finish(30).await;
            panic!("{size} bytes: {e}\nasyncssh listener:\n{stderr}");
        }
    }
    let (ok, stderr) = py.finish(60).await;
    client.shutdown().await;
    assert!(ok, "the asyncssh listener failed:\n{stderr}");
}

/// (c) message frames and trailers to the asyncssh listener: it echoes the
/// bytes (frames included) and answers with our trailers plus the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_and_trailers_with_asyncssh_listener() {
    python();
    let keys = Keys::new();
    let (py, ep) = py_listener(&keys, 2, &["--exit-after", "1"]).await;
    let client = duplex_dialler(&keys, &ep).await;
    let frames: Vec<Vec<u8>> = [0usize, 1, 100, 64 << 10, 1 << 20, 7]
        .iter()
        .map(|&n| random_bytes(n))
        .collect();
    let total: usize = frames.iter().map(|f| 4 + f.len()).sum();
    let res = within(60, async {
        let ch = client
            .open("server", "echo", Headers::new())
            .await
            .map_err(|e| format!("open: {e}"))?;
        let (mut r, mut w) = ch.split();
        let send = async {
            for f in &frames {
                w.write_frame(f)
                    .await
                    .map_err(|e| format!("write_frame: {e}"))?;
            }
            w.write_trailers(&Headers::new().with("from", "duplex"))
                .await
                .map_err(|e| format!("write_trailers: {e}"))
        };
        let receive = async {
            let mut got = Vec::new();
            while let Some(f) = r
                .read_frame()
                .await
                .map_err(|e| format!("read_frame: {e}"))?
            {
                got.push(f.to_vec());
            }
            let t = r.trailers().await.map_err(|e| format!("trailers: {e}"))?;
            Ok::<_, String>((got, t))
        };
        let (sent, received) = tokio::join!(send, receive);
        sent?;
        let (got, t) = received?;
        if got != frames {
            return Err(format!(
                "{} frames back, {} sent, or different bytes",
                got.len(),
                frames.len()
            ));
        }
        let want = Headers::new()
            .with("from", "duplex")
            .with("echoed-bytes", total.to_string());
        if t != want {
            return Err(format!("trailers {t:?}, expected {want:?}"));
        }
        Ok(())
    })
    .await;
    if let Err(e) = res {
        client.shutdown().await;
        let (_, stderr) = py.finish(30).await;
        panic!("{e}\nasyncssh listener:\n{stderr}");
    }
    // The listener exits once its channel is closed both ways; shutting
    // down first would cut the connection under it.
    let (ok, stderr) = py.finish(60).await;
    client.shutdown().await;
    assert!(ok, "the asyncssh listener failed:\n{stderr}");
}

/// The negative check, dialler side: speaking version 1 (SSH EOF as the
/// half-close), asyncssh refuses to send the `WINDOW` records the echo
/// needs after its own EOF. The Python dialler grants credit for every
/// chunk it reads, and the echo of its last bytes necessarily arrives
/// after its EOF, so this fails every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_fails_against_asyncssh_dialler() {
    python();
    let keys = Keys::new();
    let (server, port, _errors) = duplex_listener(&keys).await;
    let py = py_dialler(&keys, 1, port, &["--size", "1048576"]);
    let (ok, stderr) = py.finish(120).await;
    server.shutdown().await;
    assert!(!ok, "version 1 passed against asyncssh:\n{stderr}");
    assert!(
        stderr.contains("with protocol version 1")
            && stderr.contains("refused to send WINDOW after our own SSH EOF")
            && stderr.contains("Channel not open for sending"),
        "version 1 failed, but not as expected:\n{stderr}"
    );
}

/// The negative check, listener side: a version-1 listener makes the
/// Duplex dialler speak version 1; its `WINDOW` records after its SSH EOF
/// make asyncssh drop the connection ("Channel not open for sending").
/// The listener holds the echo until the half-close, so all of the 2 MiB
/// echo (more than the dialler's 1 MiB window) comes after that EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_fails_against_asyncssh_listener() {
    python();
    let keys = Keys::new();
    let (py, ep) = py_listener(&keys, 1, &["--exit-after", "1", "--hold"]).await;
    let client = duplex_dialler(&keys, &ep).await;
    let res = within(60, echo_half_close(&client, 2 << 20)).await;
    client.shutdown().await;
    let (ok, stderr) = py.finish(60).await;
    assert!(res.is_err(), "the version-1 echo succeeded:\n{stderr}");
    assert!(
        !ok,
        "the asyncssh listener succeeded on version 1:\n{stderr}"
    );
    assert!(
        stderr.contains("protocol version 1") && stderr.contains("Channel not open for sending"),
        "version 1 failed, but not as expected ({}):\n{stderr}",
        res.unwrap_err()
    );
}
