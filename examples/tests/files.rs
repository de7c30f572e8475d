//! The files example as real processes: files sent arrive byte for byte
//! with the right digest; a sender whose source fails aborts, and the
//! receiver keeps nothing of the file; a name that is not a plain file
//! name is rejected.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Output, Stdio};

use duplex_tests::{TempDir, random_bytes, within};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const FILES: &str = env!("CARGO_BIN_EXE_files");

struct Receiver {
    child: Child,
    out: Lines<BufReader<ChildStdout>>,
    endpoint: String,
}

/// Starts `files receive` into `dir/out`.
async fn start_receiver(dir: &TempDir) -> Receiver {
    let mut child = Command::new(FILES)
        .args(["receive", "--listen", "tcp://127.0.0.1:0", "--dir", "out"])
        .current_dir(&dir.0)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let endpoint = next_line_with(&mut out, "listening on ").await;
    Receiver {
        child,
        out,
        endpoint,
    }
}

/// The rest of the next line that starts with `prefix`.
async fn next_line_with(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    loop {
        let line = lines.next_line().await.unwrap().expect("process exited");
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

async fn send(dir: &TempDir, args: &[&str]) -> Output {
    Command::new(FILES)
        .arg("send")
        .args(args)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_arrive_whole_with_their_digest() {
    let dir = TempDir::new("files-send");
    let big = random_bytes(1 << 20);
    let small = b"a small file\n".to_vec();
    std::fs::create_dir(dir.0.join("in")).unwrap();
    std::fs::write(dir.0.join("in/big.bin"), &big).unwrap();
    std::fs::write(dir.0.join("in/small.txt"), &small).unwrap();
    within(60, async {
        let mut rx = start_receiver(&dir).await;
        let out = send(&dir, &["--to", &rx.endpoint, "in/big.bin", "in/small.txt"]).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "sender failed\n{stdout}\n{stderr}");
        let (big_sum, small_sum) = (sha256_hex(&big), sha256_hex(&small));
        assert!(
            stdout.contains(&format!("sent big.bin 1048576 bytes sha256 {big_sum}")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!("sent small.txt 13 bytes sha256 {small_sum}")),
            "{stdout}"
        );
        // The receiver's progress reports, on the nested channel: some on
        // the way (their counts depend on the reads), and the last.
        let reports = stdout
            .lines()
            .filter(|l| l.starts_with("big.bin: ") && l.ends_with(" of 1048576 bytes"))
            .count();
        assert!(reports >= 2, "{stdout}");
        assert!(
            stdout.contains("big.bin: 1048576 of 1048576 bytes"),
            "{stdout}"
        );

        // One at a time, in order: the sender waits for each verdict.
        let line = next_line_with(&mut rx.out, "received ").await;
        assert_eq!(line, format!("big.bin 1048576 bytes sha256 {big_sum}"));
        let line = next_line_with(&mut rx.out, "received ").await;
        assert_eq!(line, format!("small.txt 13 bytes sha256 {small_sum}"));
        assert!(std::fs::read(dir.0.join("out/big.bin")).unwrap() == big);
        assert_eq!(std::fs::read(dir.0.join("out/small.txt")).unwrap(), small);
        assert_eq!(names_in(&dir.0.join("out")), ["big.bin", "small.txt"]);
        rx.child.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transfer_leaves_no_file() {
    let dir = TempDir::new("files-abort");
    std::fs::create_dir(dir.0.join("in")).unwrap();
    std::fs::write(dir.0.join("in/big.bin"), random_bytes(1 << 20)).unwrap();
    within(60, async {
        let mut rx = start_receiver(&dir).await;
        let args = ["--to", &rx.endpoint, "in/big.bin", "--fail-after", "100000"];
        let out = send(&dir, &args).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("reading in/big.bin failed: simulated after 100000 bytes"),
            "{stderr}"
        );
        assert!(!stdout.contains("sent big.bin"), "{stdout}");

        // The receiver got the reason, not a short file.
        let line = next_line_with(&mut rx.out, "failed big.bin: ").await;
        assert!(line.contains("reading big.bin failed: simulated"), "{line}");
        // Neither the file nor its part file is left.
        assert!(names_in(&dir.0.join("out")).is_empty());
        rx.child.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_plain_file_names_are_rejected() {
    use duplex::{AuthorizedKeys, Headers, Identity, KnownHosts, OpenError, Peer};

    let dir = TempDir::new("files-names");
    within(60, async {
        let mut rx = start_receiver(&dir).await;
        // A client of our own, with the demo key the receiver trusts.
        let id = Identity::load(dir.0.join(".duplex-demo/id_ed25519")).unwrap();
        let peer = Peer::builder()
            .name("test")
            .identity(id.clone())
            .authorized_keys(AuthorizedKeys::new().with(id.public_key()))
            .known_hosts(KnownHosts::new().with_pinned(id.public_key()))
            .build()
            .unwrap();
        let remote = peer.connect(rx.endpoint.as_str()).await.unwrap().name;
        for name in ["../escape", "a/b", "..", ""] {
            let headers = Headers::new().with("name", name).with("size", "1");
            match peer.open(&remote, "files.put", headers).await {
                Err(OpenError::Rejected { reason, .. }) => {
                    assert!(reason.contains("plain file name"), "{name:?}: {reason}")
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // Only `files.put` is served.
        let err = peer
            .open(&remote, "files.get", Headers::new())
            .await
            .unwrap_err();
        assert!(matches!(err, OpenError::NoService { .. }), "{err}");
        assert!(names_in(&dir.0.join("out")).is_empty());
        let line = next_line_with(&mut rx.out, "rejected ").await;
        assert!(line.starts_with("\"../escape\""), "{line}");
        peer.shutdown().await;
        rx.child.kill().await.unwrap();
    })
    .await;
}
