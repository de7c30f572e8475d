//! The `duplex` command against real peers: keygen and fingerprint,
//! `serve --exec` driven by `duplex open` and by OpenSSH's `ssh -W`,
//! `serve --echo` with frames, `call` (unary and streaming) against an RPC
//! server, `peers`, and the exit codes scripts rely on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use duplex::Identity;
use duplex_rpc::{CallContext, Router, Sender, Server, Status};
use duplex_tests::{TempDir, peer_trusting, within};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

const DUPLEX: &str = env!("CARGO_BIN_EXE_duplex");

/// Keys for a server and a client, saved in `dir`.
struct Keys {
    server: PathBuf,
    client: PathBuf,
}

fn keys(dir: &TempDir) -> Keys {
    let server = dir.0.join("server");
    let client = dir.0.join("client");
    Identity::generate().save(&server).unwrap();
    Identity::generate().save(&client).unwrap();
    Keys { server, client }
}

fn pubkey(p: &Path) -> String {
    format!("{}.pub", p.display())
}

/// `duplex ARGS`, with its config directory in `dir`.
fn duplex(dir: &TempDir, args: &[&str]) -> Command {
    let mut c = Command::new(DUPLEX);
    c.args(args)
        .env("DUPLEX_HOME", dir.0.join("home"))
        .kill_on_drop(true);
    c
}

async fn run(dir: &TempDir, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = duplex(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    within(30, child.wait_with_output()).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `duplex serve ENDPOINT ARGS` as the server key, trusting the client;
/// returns it with the endpoint it printed.
async fn serve(dir: &TempDir, k: &Keys, args: &[&str]) -> (Child, String) {
    serve_as(dir, k, "srv", &pubkey(&k.client), args).await
}

/// `duplex serve` named `name`, trusting the key in `trust`.
async fn serve_as(
    dir: &TempDir,
    k: &Keys,
    name: &str,
    trust: &str,
    args: &[&str],
) -> (Child, String) {
    let mut all = vec![
        "serve",
        "tcp://127.0.0.1:0",
        "--key",
        k.server.to_str().unwrap(),
        "--name",
        name,
    ];
    all.extend(["--trust-key", trust]);
    all.extend(args);
    let mut child = duplex(dir, &all).stdout(Stdio::piped()).spawn().unwrap();
    let endpoint = duplex_tests::listening_endpoint(&mut child).await;
    (child, endpoint)
}

/// The client-side flags: our key, trusting the server's.
fn client_flags(k: &Keys) -> Vec<String> {
    vec![
        "--key".into(),
        k.client.display().to_string(),
        "--trust-key".into(),
        pubkey(&k.server),
    ]
}

fn with<'a>(args: &[&'a str], extra: &'a [String]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(extra.iter().map(String::as_str));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_and_fingerprint() {
    let dir = TempDir::new("cli-keygen");
    let out = run(&dir, &["keygen"], b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let fp = printed.split_whitespace().next().unwrap().to_owned();
    assert!(fp.starts_with("SHA256:"), "{printed}");
    let key = dir.0.join("home/id_ed25519");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The same fingerprint from the public and the private key, and from
    // the library.
    for f in [pubkey(&key), key.display().to_string()] {
        let out = run(&dir, &["fingerprint", &f], b"").await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with(&fp), "{}", text(&out.stdout));
    }
    assert_eq!(Identity::load(&key).unwrap().fingerprint().to_string(), fp);
    // No silent overwrite; a junk file is a clear error.
    let out = run(&dir, &["keygen"], b"").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exists already: pass --force"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(dir.0.join("junk"), "not a key").unwrap();
    let out = run(
        &dir,
        &["fingerprint", dir.0.join("junk").to_str().unwrap()],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("neither a public key"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exec_driven_by_open_and_by_ssh() {
    let dir = TempDir::new("cli-exec");
    let k = keys(&dir);
    let (mut server, ep) = serve(&dir, &k, &["--exec", "cat"]).await;
    let cf = client_flags(&k);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let out = run(&dir, &with(&["open", &ep, "cat"], &cf), &data).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout == data, "got {} bytes back", out.stdout.len());

    // Stock OpenSSH: ssh -W SERVICE:1 reaches the same service.
    let port = ep.rsplit(':').next().unwrap();
    let known = dir.0.join("ssh_known_hosts");
    std::fs::write(
        &known,
        format!(
            "[127.0.0.1]:{port} {}\n",
            std::fs::read_to_string(pubkey(&k.server)).unwrap().trim()
        ),
    )
    .unwrap();
    let ssh = Command::new("ssh")
        .args(duplex_tests::SSH_OPTS)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.display()))
        .args([
            "-i",
            k.client.to_str().unwrap(),
            "-p",
            port,
            "-W",
            "cat:1",
            "someone@127.0.0.1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ssh = ssh;
    let mut input = ssh.stdin.take().unwrap();
    input.write_all(b"through openssh\n").await.unwrap();
    drop(input);
    let out = within(30, ssh.wait_with_output()).await.unwrap();
    assert_eq!(
        text(&out.stdout),
        "through openssh\n",
        "{}",
        text(&out.stderr)
    );
    server.kill().await.unwrap();

    // Headers reach the command as variables; its exit status comes back.
    let (mut server, ep) = serve(
        &dir,
        &k,
        &[
            "--exec",
            "printf '%s/%s' \"$DUPLEX_SERVICE\" \"$DUPLEX_HEADER_GREETING_WORD\"; exit 3",
        ],
    )
    .await;
    let out = run(
        &dir,
        &with(&["open", &ep, "svc", "-H", "greeting-word=hi there"], &cf),
        b"",
    )
    .await;
    assert_eq!(text(&out.stdout), "svc/hi there");
    assert_eq!(out.status.code(), Some(3));
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_echo_with_frames_and_peers() {
    let dir = TempDir::new("cli-echo");
    let k = keys(&dir);
    let (mut server, ep) = serve(&dir, &k, &["--echo"]).await;
    let cf = client_flags(&k);
    let out = run(
        &dir,
        &with(&["open", &ep, "echo", "--frames"], &cf),
        b"one\ntwo\n\nthree\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one\ntwo\n\nthree\n");

    let out = run(&dir, &with(&["peers", &ep], &cf), b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fp = Identity::load(&k.server).unwrap().fingerprint().to_string();
    let line = text(&out.stdout);
    assert!(line.starts_with(&format!("srv {fp} ")), "{line}");
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_unary_and_streaming_against_an_rpc_server() {
    let dir = TempDir::new("cli-call");
    let k = keys(&dir);
    let sid = Identity::load(&k.server).unwrap();
    let cid = Identity::load(&k.client).unwrap();
    let server = peer_trusting("calc", &sid, &[&cid], duplex::Config::default());
    let router = Router::new()
        .unary(
            "Calc.Add",
            |_: CallContext, (a, b): (i64, i64)| async move {
                Ok::<_, Status>(serde_json::json!({ "sum": a + b }))
            },
        )
        .server_stream(
            "Calc.Count",
            |_: CallContext, n: u32, mut out: Sender<u32>| async move {
                for i in 0..n {
                    out.send(&i).await?;
                }
                Ok(())
            },
        )
        .unary("Calc.Fail", |_: CallContext, (): ()| async move {
            Err::<(), _>(Status::not_found("nothing here"))
        });
    let _serving = Server::new(router).serve(&server).unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let cf = client_flags(&k);

    let out = run(&dir, &with(&["call", &ep, "Calc.Add", "[40, 2]"], &cf), b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({ "sum": 42 }));

    let out = run(
        &dir,
        &with(&["call", &ep, "Calc.Count", "3", "--stream"], &cf),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0\n1\n2\n");

    // A remote status and an unknown method: exit 4, with the reason.
    let out = run(&dir, &with(&["call", &ep, "Calc.Fail", "null"], &cf), b"").await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("NOT_FOUND: nothing here"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&dir, &with(&["call", &ep, "Calc.Nope", "1"], &cf), b"").await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("\"Calc.Nope\" on ")
            && text(&out.stderr).contains("no such method"),
        "{}",
        text(&out.stderr)
    );
    // Bad JSON is the caller's mistake.
    let out = run(&dir, &with(&["call", &ep, "Calc.Add", "[40,"], &cf), b"").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not valid JSON"),
        "{}",
        text(&out.stderr)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_exit_codes() {
    let dir = TempDir::new("cli-errors");
    let k = keys(&dir);
    let (mut server, ep) = serve(&dir, &k, &["--echo"]).await;
    // A host key we do not trust: exit 3, and what to do.
    let stranger = dir.0.join("stranger");
    Identity::generate().save(&stranger).unwrap();
    let args = [
        "peers",
        ep.as_str(),
        "--key",
        k.client.to_str().unwrap(),
        "--trust-key",
        &pubkey(&stranger),
    ];
    let out = run(&dir, &args, b"").await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("host key"),
        "{}",
        text(&out.stderr)
    );
    // Nothing listening: exit 3.
    let cf = client_flags(&k);
    let out = run(&dir, &with(&["peers", "tcp://127.0.0.1:1"], &cf), b"").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // No key yet: a hint to run keygen.
    let out = run(
        &dir,
        &["peers", &ep, "--trust-key", &pubkey(&k.server)],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("duplex keygen"),
        "{}",
        text(&out.stderr)
    );
    // Usage errors: exit 2; --help shows examples.
    let out = run(&dir, &["serve"], b"").await;
    assert_eq!(out.status.code(), Some(2));
    let out = run(&dir, &["--help"], b"").await;
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains("Examples:"),
        "{}",
        text(&out.stdout)
    );
    server.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_bound_to_pinned_host_keys() {
    let dir = TempDir::new("cli-names");
    let k = keys(&dir);
    let (mut server, ep) = serve_as(&dir, &k, "real", &pubkey(&k.client), &["--echo"]).await;
    let cf = client_flags(&k);
    let refused = |out: &Output| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        let why = "may only be used under the name(s) other, not \"real\"";
        assert!(err.contains(why), "{err}");
        assert_eq!(err.matches(why).count(), 1, "said once: {err}");
    };

    // --expect-name binds the name to the --trust-key key: a listener
    // announcing another name is refused (exit 3, naming both).
    let out = run(
        &dir,
        &with(&["peers", &ep, "--expect-name", "other"], &cf),
        b"",
    )
    .await;
    refused(&out);
    let out = run(
        &dir,
        &with(&["peers", &ep, "--expect-name", "real"], &cf),
        b"",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("real "),
        "{}",
        text(&out.stdout)
    );
    // Any one of several names will do; `open` and `call` take it too.
    let out = run(
        &dir,
        &with(
            &[
                "open",
                &ep,
                "echo",
                "--expect-name",
                "x",
                "--expect-name",
                "real",
            ],
            &cf,
        ),
        b"through\n",
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through\n");
    let out = run(
        &dir,
        &with(&["call", &ep, "A.B", "1", "--expect-name", "other"], &cf),
        b"",
    )
    .await;
    refused(&out);

    // A `duplex-name=` token in the .pub file's comment does the same.
    let server_pub = std::fs::read_to_string(pubkey(&k.server)).unwrap();
    let named_pub = |name: &str| {
        let p = dir.0.join(format!("server-{name}.pub"));
        std::fs::write(&p, format!("{} duplex-name={name}\n", server_pub.trim())).unwrap();
        p.display().to_string()
    };
    let key = k.client.to_str().unwrap();
    for (name, ok) in [("other", false), ("real", true)] {
        let args = ["peers", &ep, "--key", key, "--trust-key", &named_pub(name)];
        let out = run(&dir, &args, b"").await;
        if ok {
            assert!(out.status.success(), "{}", text(&out.stderr));
        } else {
            refused(&out);
        }
    }

    // And in a known_hosts line, which OpenSSH still reads.
    let port = ep.rsplit(':').next().unwrap();
    for (name, ok) in [("other", false), ("real", true)] {
        let known = dir.0.join(format!("known_hosts-{name}"));
        std::fs::write(
            &known,
            format!(
                "[127.0.0.1]:{port} {} srv duplex-name={name}\n",
                server_pub.trim()
            ),
        )
        .unwrap();
        let kh = known.to_str().unwrap();
        let out = run(
            &dir,
            &["peers", &ep, "--key", key, "--known-hosts", kh],
            b"",
        )
        .await;
        if ok {
            assert!(out.status.success(), "{}", text(&out.stderr));
            let ssh = Command::new("ssh-keygen")
                .args(["-F", &format!("[127.0.0.1]:{port}"), "-f", kh])
                .output()
                .await
                .unwrap();
            assert!(ssh.status.success(), "{}", text(&ssh.stderr));
        } else {
            refused(&out);
        }
    }

    // Usage errors (exit 2): --expect-name needs a --trust-key key, a name
    // must be a peer name, and `serve` does not take it.
    let out = run(
        &dir,
        &["peers", &ep, "--key", key, "--expect-name", "real"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--trust-key"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&dir, &with(&["peers", &ep, "--expect-name", ""], &cf), b"").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a peer name"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &dir,
        &["serve", "tcp://127.0.0.1:0", "--echo", "--expect-name", "x"],
        b"",
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // A token that binds no valid name is an error, not ignored.
    let bad = dir.0.join("bad.pub");
    std::fs::write(&bad, format!("{} duplex-name=\"open\n", server_pub.trim())).unwrap();
    let args = [
        "peers",
        &ep,
        "--key",
        key,
        "--trust-key",
        bad.to_str().unwrap(),
    ];
    let out = run(&dir, &args, b"").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr)
            .contains("bad.pub: in the key's comment: duplex-name=\"open: the quote is not closed"),
        "{}",
        text(&out.stderr)
    );
    server.kill().await.unwrap();

    // On `serve`, the names in a --trust-key file's comment bind the
    // dialler's key, as `duplex-name="..."` does in authorized_keys.
    let client_pub = dir.0.join("client-alice.pub");
    std::fs::write(
        &client_pub,
        format!(
            "{} duplex-name=alice\n",
            std::fs::read_to_string(pubkey(&k.client)).unwrap().trim()
        ),
    )
    .unwrap();
    let (mut server, ep) =
        serve_as(&dir, &k, "real", client_pub.to_str().unwrap(), &["--echo"]).await;
    let out = run(&dir, &with(&["peers", &ep, "--name", "bob"], &cf), b"").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("\"bob\""),
        "{}",
        text(&out.stderr)
    );
    let out = run(&dir, &with(&["peers", &ep, "--name", "alice"], &cf), b"").await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    server.kill().await.unwrap();
}

/// Issue 15's bug, with real processes: `serve --echo` takes no nested
/// channels and says so at once; `duplex call` serves nothing, so a
/// handler's callback to it is refused at once and the call fails with
/// UNAVAILABLE naming the reason, long before any timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_nothing_can_accept_are_refused_at_once() {
    let dir = TempDir::new("cli-refuse");
    let k = keys(&dir);
    let sid = Identity::load(&k.server).unwrap();
    let cid = Identity::load(&k.client).unwrap();

    // A nested open inside a `serve --echo` channel.
    let (mut server, ep) = serve(&dir, &k, &["--echo"]).await;
    let client = peer_trusting("client", &cid, &[&sid], duplex::Config::default());
    let remote = client.connect(ep.as_str()).await.unwrap();
    let parent = client
        .open(&remote.name, "echo", duplex::Headers::new())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    match within(10, parent.open("child", duplex::Headers::new())).await {
        Err(duplex::OpenError::Rejected { reason, .. }) => {
            assert!(reason.contains("srv takes no nested channels"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(parent);
    client.shutdown().await;
    server.kill().await.unwrap();

    // A callback into `duplex call`.
    let server = peer_trusting("calc", &sid, &[&cid], duplex::Config::default());
    let router = Router::new().unary("Calc.Log", |ctx: CallContext, (): ()| async move {
        let logged: Result<(), _> = ctx.caller().call("Server.Log", "hello").await;
        logged.map_err(|e| Status::unavailable(duplex::error::full_text(&e)))
    });
    let _serving = Server::new(router).serve(&server).unwrap();
    let ep = server.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let cf = client_flags(&k);
    let started = std::time::Instant::now();
    let out = run(&dir, &with(&["call", &ep, "Calc.Log", "null"], &cf), b"").await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("UNAVAILABLE") && err.contains("accepts no channels"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    server.shutdown().await;
}
