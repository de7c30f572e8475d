//! `duplex`: work with Duplex peers and services from the shell, the way
//! `ssh` and `grpcurl` are used.
//!
//! Exit codes: 0 success; 1 any other failure; 2 usage error; 3 could not
//! connect (unreachable, host key, authentication); 4 the remote refused
//! or failed (open rejected, RPC error status, deadline).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use duplex::{
    AuthorizedKeys, Channel, ConnectError, Headers, Identity, KnownHosts, OpenError, Peer,
    PublicKey, ReadEvent,
};
use duplex_rpc::codec::Json;
use duplex_rpc::{Client, RpcError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const EXAMPLES: &str = "\
Examples:
  duplex keygen                                  # key pair in ~/.config/duplex/id_ed25519
  duplex fingerprint ~/.config/duplex/id_ed25519.pub
  duplex serve tcp://0.0.0.0:7000 --echo --trust-key alice.pub
  duplex serve tcp://0.0.0.0:7000 --exec 'tr a-z A-Z' --trust-key alice.pub
  echo hi | duplex open tcp://server:7000 upper --trust-key server.pub
  duplex open tcp://server:7000 chat --frames -H room=42 --trust-key server.pub
  duplex call tcp://server:7000 Calc.Add '[40, 2]' --trust-key server.pub
  duplex call tcp://server:7000 Clock.Ticks '5' --stream --trust-key server.pub
  duplex peers tcp://server:7000 --trust-key server.pub

Keys and trust default to files under $DUPLEX_HOME (else
$XDG_CONFIG_HOME/duplex, else ~/.config/duplex): id_ed25519, authorized_keys
(peers that may connect to `serve`) and known_hosts (listeners we dial).
--trust-key FILE.pub trusts a key both ways.

Names bound to keys: a `duplex-name=NAME` token (repeatable) in the comment
of a known_hosts line or of a --trust-key FILE.pub binds NAME to that key
(OpenSSH ignores it):
  [server]:7000 ssh-ed25519 AAAA... duplex-name=billing
A listener with that key must then announce one of its names, and no other
listener may use them: `open`, `call` and `peers` refuse a wrong one (exit
3). --expect-name NAME binds NAME to every --trust-key key of the command:
  duplex call tcp://server:7000 Calc.Add '[1, 2]' --trust-key server.pub --expect-name billing
On `serve`, the names in a --trust-key file's comment bind the dialler's
key as duplex-name=\"NAME\" does in authorized_keys.

Exit codes: 0 ok, 1 error, 2 usage, 3 cannot connect (unreachable, host key,
authentication), 4 the remote refused or failed the request.";

#[derive(Parser)]
#[command(
    name = "duplex",
    version,
    about = "Work with Duplex peers and services: keys, serving, piping, RPC calls",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    trust: TrustFlags,
}

#[derive(Args)]
struct TrustFlags {
    /// Private key file [default: CONFIG/id_ed25519]
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Keys that may connect to `serve` [default: CONFIG/authorized_keys]
    #[arg(long, global = true, value_name = "FILE")]
    authorized_keys: Option<PathBuf>,
    /// Host keys accepted when dialling [default: CONFIG/known_hosts]
    #[arg(long, global = true, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Trust this public key both ways (repeatable)
    #[arg(long = "trust-key", global = true, value_name = "FILE.pub")]
    trust_keys: Vec<PathBuf>,
    /// Our peer name [default: $USER, else "duplex"]
    #[arg(long, global = true)]
    name: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a key pair (OpenSSH format; private key mode 0600)
    Keygen {
        /// Where to write it (the public key goes to FILE.pub)
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Overwrite an existing key
        #[arg(long)]
        force: bool,
    },
    /// Print the SHA256 fingerprint of a private or public key file
    Fingerprint {
        /// The key file
        keyfile: PathBuf,
    },
    /// Listen and serve every channel: echo it, or run a command for it
    Serve {
        /// tcp://HOST:PORT or unix:///PATH
        endpoint: String,
        /// Echo bytes, frames and error frames back
        #[arg(long, conflicts_with = "exec", required_unless_present = "exec")]
        echo: bool,
        /// Run CMD (with sh -c) for each channel, with the channel as its
        /// stdin/stdout and the headers in `DUPLEX_HEADER_<KEY>` variables
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
    },
    /// Open a channel and pipe stdin/stdout through it
    Open {
        /// tcp://HOST:PORT or unix:///PATH
        endpoint: String,
        /// The service to open
        service: String,
        /// A header to send (repeatable)
        #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
        headers: Vec<String>,
        /// One frame per line, both ways (error frames go to stderr)
        #[arg(long)]
        frames: bool,
        #[command(flatten)]
        expect: Expect,
    },
    /// Make an RPC call with the JSON codec and print the JSON response
    Call {
        /// tcp://HOST:PORT or unix:///PATH
        endpoint: String,
        /// The method (Service.Method)
        method: String,
        /// The request, as JSON
        json: String,
        /// The method streams responses: print one JSON line each
        #[arg(long)]
        stream: bool,
        /// A header to send (repeatable)
        #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
        headers: Vec<String>,
        /// Give up after this long (250ms, 5s, 1m)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,
        #[command(flatten)]
        expect: Expect,
    },
    /// Connect and show the remote peer's name and key fingerprint
    Peers {
        /// tcp://HOST:PORT or unix:///PATH
        endpoint: String,
        #[command(flatten)]
        expect: Expect,
    },
}

/// The names the listener we dial may announce.
#[derive(Args)]
struct Expect {
    /// The listener must announce NAME: bind it to every --trust-key key
    /// (repeatable; a key then may use only the names bound to it)
    #[arg(
        long = "expect-name",
        value_name = "NAME",
        value_parser = parse_peer_name,
        requires = "trust_keys"
    )]
    names: Vec<String>,
}

/// The peer-name rules (those of the library's `PeerBuilder::build`).
fn parse_peer_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
        return Err(format!(
            "{s:?} is not a peer name: use 1 to 255 bytes with no control characters"
        ));
    }
    Ok(s.to_owned())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duplex_rpc::wire::parse_timeout(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as 250ms, 5s or 1m"))
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = if error.downcast_ref::<ConnectError>().is_some() {
            3
        } else if error.downcast_ref::<OpenError>().is_some()
            || error.downcast_ref::<RpcError>().is_some()
        {
            4
        } else {
            1
        };
        Failure { code, error }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("duplex: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("duplex: {}", one_line(&f.error));
            ExitCode::from(f.code)
        }
    }
}

/// The error and its causes on one line, each said once: a cause whose
/// text is already in the line (many errors print their source) is left
/// out.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let t = &cli.trust;
    match cli.cmd {
        Cmd::Keygen { file, force } => keygen(file.unwrap_or_else(default_key), force),
        Cmd::Fingerprint { keyfile } => fingerprint(&keyfile),
        Cmd::Serve {
            endpoint,
            echo: _,
            exec,
        } => serve(t, &endpoint, exec).await,
        Cmd::Open {
            endpoint,
            service,
            headers,
            frames,
            expect,
        } => {
            let headers = parse_headers(&headers)?;
            open(t, &expect, &endpoint, &service, headers, frames).await
        }
        Cmd::Call {
            endpoint,
            method,
            json,
            stream,
            headers,
            timeout,
            expect,
        } => {
            let req: serde_json::Value = serde_json::from_str(&json)
                .with_context(|| format!("the request is not valid JSON: {json}"))?;
            let how = CallHow {
                stream,
                headers: &headers,
                timeout,
            };
            call(t, &expect, &endpoint, &method, req, how).await
        }
        Cmd::Peers { endpoint, expect } => peers(t, &expect, &endpoint).await,
    }
}

/// The directory for default keys and trust files.
fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DUPLEX_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(d).join("duplex");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".config").join("duplex")
}

fn default_key() -> PathBuf {
    config_dir().join("id_ed25519")
}

fn keygen(path: PathBuf, force: bool) -> Result<u8, Failure> {
    if path.exists() && !force {
        return Err(anyhow::anyhow!(
            "{} exists already: pass --force to overwrite it",
            path.display()
        )
        .into());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let id = Identity::generate();
    id.save(&path)?;
    println!("{} {}", id.fingerprint(), path.display());
    println!("public key: {}.pub", path.display());
    Ok(0)
}

fn fingerprint(path: &Path) -> Result<u8, Failure> {
    let fp = match PublicKey::load(path) {
        Ok(k) => k.fingerprint(),
        Err(public_error) => match Identity::load(path) {
            Ok(id) => id.fingerprint(),
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{}: neither a public key ({}) nor a private key ({})",
                    path.display(),
                    duplex::error::full_text(&public_error),
                    duplex::error::full_text(&e)
                )
                .into());
            }
        },
    };
    println!("{fp} {}", path.display());
    Ok(0)
}

fn parse_headers(pairs: &[String]) -> anyhow::Result<Headers> {
    let mut h = Headers::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            bail!("header {p:?} is not KEY=VALUE");
        };
        h.push(k, v);
    }
    Ok(h)
}

fn peer_name(t: &TrustFlags) -> String {
    t.name.clone().unwrap_or_else(|| {
        std::env::var("USER")
            .ok()
            .filter(|u| {
                !u.is_empty()
                    && u.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            })
            .unwrap_or_else(|| "duplex".to_owned())
    })
}

fn identity(t: &TrustFlags) -> anyhow::Result<Identity> {
    let path = t.key.clone().unwrap_or_else(default_key);
    if t.key.is_none() && !path.exists() {
        bail!(
            "no key at {}: run `duplex keygen` first, or pass --key FILE",
            path.display()
        );
    }
    Ok(Identity::load(&path)?)
}

/// The --trust-key keys, each with the names its comment binds to it
/// (`duplex-name=NAME` tokens).
fn trusted_keys(t: &TrustFlags) -> anyhow::Result<Vec<(PublicKey, Vec<String>)>> {
    t.trust_keys
        .iter()
        .map(|p| {
            let key = PublicKey::load(p)?;
            let names = key
                .bound_names()
                .with_context(|| format!("{}: in the key's comment", p.display()))?;
            Ok((key, names))
        })
        .collect()
}

/// A peer that listens: it trusts `authorized_keys` (flag or default file)
/// and every --trust-key.
fn listening_peer(t: &TrustFlags) -> anyhow::Result<Peer> {
    let default = config_dir().join("authorized_keys");
    let mut authorized = match &t.authorized_keys {
        Some(p) => AuthorizedKeys::from_file(p)?,
        None if default.exists() => AuthorizedKeys::from_file(&default)?,
        None => AuthorizedKeys::new(),
    };
    let extra = trusted_keys(t)?;
    if authorized.entries().is_empty() && extra.is_empty() {
        bail!(
            "nobody could connect: give --trust-key FILE.pub or --authorized-keys FILE, or create {}",
            default.display()
        );
    }
    for (k, names) in extra {
        if names.is_empty() {
            authorized.add(k);
        } else {
            for n in names {
                authorized.add_named(k.clone(), &n);
            }
        }
    }
    // `serve --echo` and `--exec` take no nested channels: a remote's
    // nested open is refused at once, with the reason.
    let config = duplex::Config::default().max_nesting_depth(0)?;
    Ok(Peer::builder()
        .name(peer_name(t))
        .identity(identity(t)?)
        .authorized_keys(authorized)
        .config(config)
        .build()?)
}

/// A peer that dials `endpoint` and returns once connected; it trusts
/// `known_hosts` (flag or default file) and every --trust-key, with the
/// names bound to them (in their comments, and by --expect-name).
async fn dialling_peer(
    t: &TrustFlags,
    expect: &Expect,
    endpoint: &str,
) -> Result<(Peer, String), Failure> {
    let default = config_dir().join("known_hosts");
    let mut known = match &t.known_hosts {
        Some(p) => KnownHosts::from_file(p)?,
        None if default.exists() => KnownHosts::from_file(&default)?,
        None => KnownHosts::new(),
    };
    for (k, mut names) in trusted_keys(t)? {
        names.extend(expect.names.iter().cloned());
        if names.is_empty() {
            known.pin(k);
        } else {
            for n in names {
                known.pin_named(k.clone(), &n);
            }
        }
    }
    // One attempt, like ssh: a script decides whether to retry. A client
    // only: channels the listener opens to us (RPC callbacks included) are
    // refused at once.
    let config = duplex::Config::default()
        .accept_channels(false)
        .reconnect(false)
        .connect_backoff(duplex::Backoff::default().max_attempts(Some(1)))?;
    let peer = Peer::builder()
        .name(peer_name(t))
        .identity(identity(t)?)
        .known_hosts(known)
        .config(config)
        .build()
        .map_err(anyhow::Error::from)?;
    let remote = peer.connect(endpoint).await?;
    Ok((peer, remote.name))
}

async fn serve(t: &TrustFlags, endpoint: &str, exec: Option<String>) -> Result<u8, Failure> {
    let peer = listening_peer(t)?;
    let bound = peer.bind(endpoint).await?;
    println!("listening on {bound}");
    println!("name {} fingerprint {}", peer.name(), peer.fingerprint());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    loop {
        let incoming = tokio::select! {
            i = peer.accept() => i,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(incoming) = incoming else { break };
        let ch = incoming.accept().await;
        let exec = exec.clone();
        tokio::spawn(async move {
            let service = ch.service().to_owned();
            let res = match exec {
                Some(cmd) => run_exec(ch, &cmd).await,
                None => echo(ch).await,
            };
            if let Err(e) = res {
                eprintln!("duplex: channel {service:?}: {e:#}");
            }
        });
    }
    peer.shutdown().await;
    Ok(0)
}

/// Echoes the byte stream (and so any frames on it) and the error frames.
async fn echo(ch: Channel) -> anyhow::Result<()> {
    let (mut r, mut w) = ch.split();
    let mut buf = vec![0u8; 64 << 10];
    while let Some(event) = r.read_event(&mut buf).await? {
        match event {
            ReadEvent::Data(n) => w.write_all(buf.get(..n).unwrap_or_default()).await?,
            ReadEvent::Error(frame) => w.write_error(&frame).await?,
        }
    }
    w.close_write().await?;
    Ok(())
}

/// The environment variable for a header key: `DUPLEX_HEADER_` and the
/// key upper-cased, other characters than letters and digits as `_`.
fn header_var(key: &str) -> String {
    let mut v = String::from("DUPLEX_HEADER_");
    v.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    v
}

/// Runs `cmd` for one channel: the channel is its stdin and stdout; its
/// exit status goes back as the trailer `exit-status` (to Duplex peers).
async fn run_exec(ch: Channel, cmd: &str) -> anyhow::Result<()> {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .env("DUPLEX_SERVICE", ch.service())
        .env("DUPLEX_PEER", ch.meta().remote_peer())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in ch.headers().iter() {
        command.env(header_var(k), v);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let (mut stdin, mut stdout) = (
        child.stdin.take().context("no stdin")?,
        child.stdout.take().context("no stdout")?,
    );
    let (mut r, mut w) = ch.split();
    let input = async {
        let copied = tokio::io::copy(&mut r, &mut stdin).await;
        drop(stdin); // EOF for the command
        copied
    };
    let output = async {
        tokio::io::copy(&mut stdout, &mut w).await?;
        anyhow::Ok(())
    };
    let (_, out) = tokio::join!(input, output);
    out?;
    let status = child.wait().await?;
    let code = status
        .code()
        .map_or_else(|| "signal".to_owned(), |c| c.to_string());
    // A plain SSH client cannot receive trailers: EOF alone then.
    if w.write_trailers(&Headers::new().with("exit-status", code))
        .await
        .is_err()
    {
        w.close_write().await?;
    }
    Ok(())
}

async fn open(
    t: &TrustFlags,
    expect: &Expect,
    endpoint: &str,
    service: &str,
    headers: Headers,
    frames: bool,
) -> Result<u8, Failure> {
    let (peer, remote) = dialling_peer(t, expect, endpoint).await?;
    let ch = peer.open(&remote, service, headers).await?;
    let (mut r, mut w) = ch.split();
    let upload = async {
        let mut stdin = tokio::io::stdin();
        if frames {
            let mut lines = BufReader::new(stdin).lines();
            while let Some(line) = lines.next_line().await? {
                w.write_frame(line.as_bytes()).await?;
            }
        } else {
            tokio::io::copy(&mut stdin, &mut w).await?;
        }
        w.close_write().await?;
        anyhow::Ok(())
    };
    let download = async {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        if frames {
            // Frames and error frames, whichever comes first.
            enum Got {
                Frame(Option<bytes::Bytes>),
                Error(Option<bytes::Bytes>),
            }
            let mut errors_done = false;
            loop {
                let got = std::future::poll_fn(|cx| {
                    if !errors_done && let std::task::Poll::Ready(e) = r.poll_read_error(cx) {
                        return std::task::Poll::Ready(e.map(Got::Error));
                    }
                    r.poll_read_frame_max(cx, usize::MAX)
                        .map(|f| f.map(Got::Frame))
                })
                .await?;
                match got {
                    Got::Frame(Some(f)) => {
                        stdout.write_all(&f).await?;
                        stdout.write_all(b"\n").await?;
                        stdout.flush().await?;
                    }
                    Got::Frame(None) => break,
                    Got::Error(Some(e)) => {
                        stderr.write_all(&e).await?;
                        stderr.write_all(b"\n").await?;
                    }
                    Got::Error(None) => errors_done = true,
                }
            }
            while let Some(e) = r.read_error().await? {
                stderr.write_all(&e).await?;
                stderr.write_all(b"\n").await?;
            }
        } else {
            let mut buf = vec![0u8; 64 << 10];
            while let Some(event) = r.read_event(&mut buf).await? {
                match event {
                    ReadEvent::Data(n) => {
                        stdout.write_all(buf.get(..n).unwrap_or_default()).await?
                    }
                    ReadEvent::Error(e) => stderr.write_all(&e).await?,
                }
            }
        }
        stdout.flush().await?;
        anyhow::Ok(r.trailers().await?)
    };
    let (up, down) = tokio::join!(upload, download);
    up?;
    let trailers = down?;
    peer.shutdown().await;
    // A command run by `serve --exec` reports its exit status.
    Ok(match trailers.get("exit-status").map(str::parse::<u8>) {
        Some(Ok(0)) | None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => 1,
    })
}

/// How `call` makes its call.
struct CallHow<'a> {
    stream: bool,
    headers: &'a [String],
    timeout: Option<Duration>,
}

async fn call(
    t: &TrustFlags,
    expect: &Expect,
    endpoint: &str,
    method: &str,
    req: serde_json::Value,
    how: CallHow<'_>,
) -> Result<u8, Failure> {
    let CallHow {
        stream,
        headers,
        timeout,
    } = how;
    let (peer, remote) = dialling_peer(t, expect, endpoint).await?;
    let mut client = Client::new(peer.clone()).to(&remote).with_codec(Json);
    for p in headers {
        let Some((k, v)) = p.split_once('=') else {
            return Err(anyhow::anyhow!("header {p:?} is not KEY=VALUE").into());
        };
        client = client.with_header(k, v);
    }
    if let Some(t) = timeout {
        client = client.with_timeout(t);
    }
    if stream {
        let mut rx = client
            .server_stream::<_, serde_json::Value>(method, &req)
            .await?;
        while let Some(v) = rx.recv().await? {
            println!("{v}");
        }
    } else {
        let v: serde_json::Value = client.call(method, &req).await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    peer.shutdown().await;
    Ok(0)
}

async fn peers(t: &TrustFlags, expect: &Expect, endpoint: &str) -> Result<u8, Failure> {
    let (peer, _) = dialling_peer(t, expect, endpoint).await?;
    for p in peer.peers() {
        println!("{} {} {}", p.name, p.fingerprint, p.endpoint);
    }
    peer.shutdown().await;
    Ok(0)
}
