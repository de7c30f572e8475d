//! Plugins: a host spawns plugin processes and talks to each over the
//! child's stdin and stdout, with full Duplex (both sides open channels and
//! serve them) and real authentication.
//!
//! - Host side: [`Plugin::spawn`] starts a [`PluginCommand`] and returns
//!   once it is connected; [`Plugin::peer`] is the host's peer for it
//!   (serve host services on it, open channels and make calls to the
//!   plugin, whose peer name is the command's name).
//! - Plugin side: [`connect_host`] returns the plugin's peer, connected to
//!   its host over stdin/stdout.
//!
//! **Handshake.** For each launch the host generates a key pair for the
//! plugin and one for itself, and writes one line to the plugin's stdin
//! (the protocol version, both names, the host's public key and the
//! plugin's private key): secrets travel over the pipe only, never through
//! a file, an argument or the environment. The plugin answers with one
//! line on stdout, `DUPLEX-PLUGIN 1`, and SSH starts on the same pipes:
//! the plugin dials, presenting its key under its name, and checks the
//! host's key. A version mismatch fails clearly on both sides; output on
//! the plugin's stdout before the answer (a stray `println!`) is reported
//! as such, not waited on.
//!
//! **Lifecycle.** The plugin's stderr is forwarded to the host's tracing
//! (target `duplex::plugin`, one event per line). A plugin that exits is
//! reported ([`PluginEvent::Exited`], with its status) and restarted as its
//! [`RestartPolicy`] says; a plugin whose host dies sees its stdin close
//! and ends (see [`PluginConnection::closed`]). Dropping the [`Plugin`], or
//! [`Plugin::shutdown`], closes the connection (so the plugin reads EOF)
//! and kills the process if it has not exited after the grace period.
//!
//! Plugins must not write to stdout themselves: it carries the connection.
//! Log to stderr.

use std::ffi::OsString;
use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStderr};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proto::Limits;
use crate::{AuthorizedKeys, Config, Headers, Identity, KnownHosts, Peer, PublicKey};

/// The plugin protocol version this build speaks.
pub const PLUGIN_PROTOCOL_VERSION: u32 = 1;

/// The first word of the plugin's answer line.
const MAGIC: &str = "DUPLEX-PLUGIN";

/// Longest handshake line read, either way.
const MAX_LINE: usize = 16 << 10;

/// Longest stderr line forwarded as one event; longer lines are split.
const MAX_STDERR_LINE: usize = 4 << 10;

/// When a plugin that exits is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never: an exit is reported and the plugin stays down.
    Never,
    /// After an exit with a failure status (or a signal), up to
    /// `max_restarts` times over the handle's life.
    OnFailure {
        /// Restarts allowed.
        max_restarts: u32,
    },
    /// After any exit, up to `max_restarts` times.
    Always {
        /// Restarts allowed.
        max_restarts: u32,
    },
}

/// How to start a plugin.
///
/// ```no_run
/// # async fn demo() -> Result<(), duplex::plugin::PluginError> {
/// use duplex::plugin::{Plugin, PluginCommand, RestartPolicy};
/// let plugin = Plugin::spawn(
///     PluginCommand::new("resizer", "/usr/lib/app/plugins/resizer")
///         .arg("--fast")
///         .restart(RestartPolicy::OnFailure { max_restarts: 3 }),
/// )
/// .await?;
/// let ch = plugin.peer().open("resizer", "resize", duplex::Headers::new()).await;
/// # let _ = ch; Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PluginCommand {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    host_name: String,
    restart: RestartPolicy,
    grace: Duration,
    handshake_timeout: Duration,
    config: Config,
}

impl PluginCommand {
    /// Runs `program`; the plugin's peer name is `name`.
    pub fn new(name: impl Into<String>, program: impl Into<OsString>) -> Self {
        PluginCommand {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            host_name: "host".to_owned(),
            restart: RestartPolicy::Never,
            grace: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            config: Config::default(),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for the plugin.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// The host's peer name, as the plugin sees it. Default `host`.
    pub fn host_name(mut self, name: impl Into<String>) -> Self {
        self.host_name = name.into();
        self
    }

    /// When to restart the plugin after it exits. Default
    /// [`RestartPolicy::Never`].
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// How long a plugin may take to exit once its connection is closed,
    /// before it is killed. Default 5 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long the plugin may take to answer the handshake and connect.
    /// Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The configuration of the host's peer for this plugin.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
}

/// A plugin could not be started or connected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The process could not be started.
    #[error("cannot start plugin {name:?}")]
    Spawn {
        /// The plugin's name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The handshake failed: the plugin printed something else first,
    /// speaks another protocol version, did not answer, or exited.
    #[error("plugin {name:?} handshake failed: {why}")]
    Handshake {
        /// The plugin's name.
        name: String,
        /// What happened.
        why: String,
    },
    /// The plugin side: stdin did not carry a host's handshake (the
    /// program was not started by a Duplex plugin host?).
    #[error("not started by a Duplex plugin host: {0}")]
    NoHost(String),
    /// The SSH connection over the pipes failed.
    #[error("the plugin connection failed")]
    Connect(#[from] crate::ConnectError),
    /// Keys could not be made or read.
    #[error(transparent)]
    Key(#[from] crate::KeyError),
    /// The peer could not be built.
    #[error(transparent)]
    Name(#[from] crate::NameError),
}

/// What happens to a plugin, from [`Plugin::events`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PluginEvent {
    /// A launch finished its handshake and is connected.
    Started {
        /// 1 for the first launch, 2 after the first restart, ...
        launch: u32,
        /// The process id.
        pid: Option<u32>,
    },
    /// The process exited.
    Exited {
        /// Which launch.
        launch: u32,
        /// How it exited (`exit status: 3`, `signal: 9 (SIGKILL)`...).
        status: String,
        /// Whether the status was success.
        success: bool,
    },
    /// A restart failed to start or connect.
    RestartFailed {
        /// Which launch.
        launch: u32,
        /// Why.
        error: String,
    },
    /// The restart policy allows no more restarts: the plugin stays down.
    GaveUp {
        /// Launches made.
        launches: u32,
    },
}

/// A running plugin, seen from the host. Dropping it stops the plugin:
/// its connection closes (the plugin reads EOF), then after the grace
/// period the process is killed.
#[must_use = "dropping a Plugin stops the plugin"]
pub struct Plugin {
    name: String,
    peer: Peer,
    /// The running launch's process id (0 when none runs).
    pid: Arc<AtomicU32>,
    events: broadcast::Sender<PluginEvent>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).finish()
    }
}

/// One started process, connected.
struct Launch {
    child: Child,
    stderr: Option<ChildStderr>,
}

impl Plugin {
    /// Starts the plugin and returns once it completed the handshake and
    /// is connected, or fails with why (it printed to stdout first, speaks
    /// another version, exited, or did not answer in time).
    ///
    /// Cancel-safe: cancelled, the process is killed.
    pub async fn spawn(cmd: PluginCommand) -> Result<Plugin, PluginError> {
        let host_id = Identity::generate();
        let peer = Peer::builder()
            .name(cmd.host_name.clone())
            .identity(host_id.clone())
            .config(cmd.config.clone())
            .build()?;
        let first = launch(&cmd, &peer, &host_id, 1).await?;
        let (events, _) = broadcast::channel(64);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let _ = events.send(PluginEvent::Started {
            launch: 1,
            pid: first.child.id(),
        });
        let pid = Arc::new(AtomicU32::new(first.child.id().unwrap_or(0)));
        tracker.spawn(supervise(
            cmd.clone(),
            peer.clone(),
            host_id,
            first,
            Watch {
                events: events.clone(),
                pid: pid.clone(),
            },
            stop.clone(),
            tracker.clone(),
        ));
        Ok(Plugin {
            name: cmd.name,
            peer,
            pid,
            events,
            stop,
            tracker,
        })
    }

    /// The host's peer for this plugin: serve host services on it, and
    /// open channels or make calls to the plugin (named as the command
    /// said). Across restarts it stays the same; `open` waits for a
    /// restarting plugin up to `Config::peer_wait_timeout`.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The plugin's peer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The running plugin process's id, if one runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// Subscribes to the plugin's lifecycle events.
    pub fn events(&self) -> broadcast::Receiver<PluginEvent> {
        self.events.subscribe()
    }

    /// Stops the plugin: closes its connection, waits up to the grace
    /// period for it to exit, kills it otherwise, and waits until it is
    /// gone. Cancel-safe: cancelled, dropping finishes the job.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // The supervisor closes the connection and kills after the grace.
        self.stop.cancel();
    }
}

/// Starts one process, performs the handshake and connects it.
async fn launch(
    cmd: &PluginCommand,
    peer: &Peer,
    host_id: &Identity,
    n: u32,
) -> Result<Launch, PluginError> {
    let fail = |why: String| PluginError::Handshake {
        name: cmd.name.clone(),
        why,
    };
    let plugin_id = Identity::generate();
    // Only this launch's key, and only under the plugin's name.
    let mut trust = AuthorizedKeys::new();
    trust.add_named(plugin_id.public_key(), &cmd.name);
    peer.set_authorized_keys(trust);

    let mut child = tokio::process::Command::new(&cmd.program)
        .args(&cmd.args)
        .envs(cmd.envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| PluginError::Spawn {
            name: cmd.name.clone(),
            source,
        })?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(fail("the process has no stdin or stdout pipe".into()));
    };
    let stderr = child.stderr.take();

    let offer = Headers::new()
        .with("version", PLUGIN_PROTOCOL_VERSION.to_string())
        .with("name", cmd.name.clone())
        .with("host", cmd.host_name.clone())
        .with("host-key", host_id.public_key().to_openssh())
        .with("key", plugin_id.to_openssh_private()?)
        .with("launch", n.to_string());
    let mut line = offer
        .encode(&Limits::default())
        .map_err(|e| fail(format!("cannot encode the handshake: {e}")))?;
    line.push('\n');
    let handshake = async {
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| fail(format!("cannot write to its stdin: {e}")))?;
        stdin
            .flush()
            .await
            .map_err(|e| fail(format!("cannot write to its stdin: {e}")))?;
        let answer = read_line(&mut stdout)
            .await
            .map_err(|e| fail(format!("cannot read its stdout: {e}")))?;
        check_answer(&answer).map_err(fail)
    };
    match tokio::time::timeout(cmd.handshake_timeout, handshake).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(with_exit(e, &mut child).await),
        Err(_) => {
            return Err(fail(format!(
                "no answer within {:?}: is {:?} a Duplex plugin (it must call duplex::plugin::connect_host)?",
                cmd.handshake_timeout, cmd.program
            )));
        }
    }
    let stream = tokio::io::join(stdout, stdin);
    let label = format!("plugin {} (launch {n})", cmd.name);
    peer.serve_stream(stream, &label);
    // Connected once the plugin's peer registered with ours.
    let mut events = peer.events();
    let connected = async {
        loop {
            if peer.peers().iter().any(|p| p.name == cmd.name) {
                return Ok(());
            }
            match events.recv().await {
                Some(_) => continue,
                None => return Err(fail("the host peer shut down".into())),
            }
        }
    };
    tokio::select! {
        r = tokio::time::timeout(cmd.handshake_timeout, connected) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(fail(format!("did not connect within {:?}", cmd.handshake_timeout))),
        },
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            return Err(fail(format!("it exited ({status}) before connecting")));
        }
    }
    Ok(Launch { child, stderr })
}

/// Adds the exit status to a handshake error if the process has exited.
async fn with_exit(e: PluginError, child: &mut Child) -> PluginError {
    let PluginError::Handshake { name, why } = e else {
        return e;
    };
    let exited = tokio::time::timeout(Duration::from_millis(200), child.wait()).await;
    let why = match exited {
        Ok(Ok(status)) => format!("{why} (it exited: {status})"),
        _ => why,
    };
    let _ = child.start_kill();
    PluginError::Handshake { name, why }
}

/// The host's check of the plugin's answer line.
fn check_answer(answer: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(answer);
    let text = text.trim_end_matches(['\r', '\n']);
    let Some(version) = text.strip_prefix(MAGIC).map(str::trim) else {
        if answer.is_empty() {
            return Err("it closed its stdout without answering".into());
        }
        let shown: String = text.chars().take(80).collect();
        return Err(format!(
            "it wrote {shown:?} to stdout before the handshake (plugins must not print to stdout; log to stderr)"
        ));
    };
    if version != PLUGIN_PROTOCOL_VERSION.to_string() {
        return Err(format!(
            "plugin protocol version mismatch: the plugin speaks {version:?}, this host speaks {PLUGIN_PROTOCOL_VERSION}"
        ));
    }
    Ok(())
}

/// Reads one line (up to `\n`, which is not returned), at most
/// [`MAX_LINE`] bytes, byte by byte so nothing after it is consumed.
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        let n = r.read(&mut b).await?;
        let [byte] = b;
        if n == 0 || byte == b'\n' {
            return Ok(line);
        }
        if line.len() >= MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line longer than {MAX_LINE} bytes"),
            ));
        }
        line.push(byte);
    }
}

/// Where the supervisor reports.
struct Watch {
    events: broadcast::Sender<PluginEvent>,
    pid: Arc<AtomicU32>,
}

/// Watches the running launch: forwards stderr, reports exits, restarts
/// by policy, and stops it when the handle goes.
async fn supervise(
    cmd: PluginCommand,
    peer: Peer,
    host_id: Identity,
    mut current: Launch,
    watch: Watch,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let events = &watch.events;
    let mut n = 1u32;
    let mut restarts = 0u32;
    loop {
        if let Some(err) = current.stderr.take() {
            tracker.spawn(forward_stderr(cmd.name.clone(), n, err));
        }
        let status = tokio::select! {
            s = current.child.wait() => s,
            _ = stop.cancelled() => {
                stop_launch(&peer, &mut current.child, cmd.grace, &cmd.name).await;
                watch.pid.store(0, Ordering::Relaxed);
                return;
            }
        };
        watch.pid.store(0, Ordering::Relaxed);
        let (status, success) = match status {
            Ok(s) => (s.to_string(), s.success()),
            Err(e) => (e.to_string(), false),
        };
        tracing::warn!(plugin = %cmd.name, launch = n, %status, "plugin exited");
        let _ = events.send(PluginEvent::Exited {
            launch: n,
            status,
            success,
        });
        // The plugin's connection is gone with it; drop ours too.
        peer.drop_peer(&cmd.name).await;
        loop {
            let allowed = match cmd.restart {
                RestartPolicy::Never => false,
                RestartPolicy::OnFailure { max_restarts } => !success && restarts < max_restarts,
                RestartPolicy::Always { max_restarts } => restarts < max_restarts,
            };
            if !allowed || stop.is_cancelled() {
                let _ = events.send(PluginEvent::GaveUp { launches: n });
                // Stay until the handle goes, then stop the peer.
                stop.cancelled().await;
                peer.shutdown().await;
                return;
            }
            restarts += 1;
            n += 1;
            match launch(&cmd, &peer, &host_id, n).await {
                Ok(l) => {
                    tracing::info!(plugin = %cmd.name, launch = n, "plugin restarted");
                    let _ = events.send(PluginEvent::Started {
                        launch: n,
                        pid: l.child.id(),
                    });
                    watch
                        .pid
                        .store(l.child.id().unwrap_or(0), Ordering::Relaxed);
                    current = l;
                    break;
                }
                Err(e) => {
                    tracing::warn!(plugin = %cmd.name, launch = n, "plugin restart failed: {}", crate::error::full_text(&e));
                    let _ = events.send(PluginEvent::RestartFailed {
                        launch: n,
                        error: crate::error::full_text(&e),
                    });
                }
            }
        }
    }
}

/// Closes the plugin's connection (it reads EOF and should exit), waits up
/// to `grace` for that and for it to exit, then kills it (which also ends
/// a connection it kept open).
async fn stop_launch(peer: &Peer, child: &mut Child, grace: Duration, name: &str) {
    let polite = async {
        peer.shutdown().await;
        let _ = child.wait().await;
    };
    if tokio::time::timeout(grace, polite).await.is_ok() {
        tracing::debug!(plugin = name, "plugin exited");
        return;
    }
    tracing::warn!(
        plugin = name,
        "plugin did not exit within {grace:?}; killing it"
    );
    let _ = child.kill().await;
    peer.shutdown().await;
}

/// Forwards the plugin's stderr to tracing, a line per event.
async fn forward_stderr(name: String, launch: u32, mut err: ChildStderr) {
    let mut buf = vec![0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match err.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in buf.get(..n).unwrap_or_default() {
            if b == b'\n' || line.len() >= MAX_STDERR_LINE {
                emit(&name, launch, &line);
                line.clear();
                if b == b'\n' {
                    continue;
                }
            }
            line.push(b);
        }
    }
    if !line.is_empty() {
        emit(&name, launch, &line);
    }
}

fn emit(name: &str, launch: u32, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    tracing::info!(target: "duplex::plugin", plugin = name, launch, "{}", text.trim_end_matches('\r'));
}

/// The plugin's side of the connection, from [`connect_host`].
#[derive(Debug)]
pub struct PluginConnection {
    /// The plugin's peer, connected to the host (serve plugin services on
    /// it; open channels and make calls to [`host`](Self::host)).
    pub peer: Peer,
    /// The host's peer name.
    pub host: String,
    /// Which launch this is (1 first, then one more per restart).
    pub launch: u32,
}

impl PluginConnection {
    /// Resolves when the connection to the host has ended (the host closed
    /// it, or died and its end of the pipes closed). A plugin returns from
    /// `main` then. Cancel-safe.
    pub async fn closed(&self) {
        let mut events = self.peer.events();
        while !self.peer.peers().is_empty() {
            if events.recv().await.is_none() {
                return;
            }
        }
    }
}

/// The plugin side: reads the host's handshake from stdin, answers on
/// stdout, and connects over stdin/stdout. Call it first thing, before
/// anything could print to stdout.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), duplex::plugin::PluginError> {
/// let conn = duplex::plugin::connect_host().await?;
/// // ... serve services on conn.peer, call the host ...
/// conn.closed().await; // the host went away: exit
/// # Ok(()) }
/// ```
pub async fn connect_host() -> Result<PluginConnection, PluginError> {
    connect_over(tokio::io::stdin(), tokio::io::stdout()).await
}

/// [`connect_host`] over other pipes.
pub async fn connect_over<R, W>(
    mut input: R,
    mut output: W,
) -> Result<PluginConnection, PluginError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let line = read_line(&mut input)
        .await
        .map_err(|e| PluginError::NoHost(format!("cannot read stdin: {e}")))?;
    let text = String::from_utf8(line)
        .map_err(|_| PluginError::NoHost("the handshake is not text".into()))?;
    let offer = Headers::decode(&text, &Limits::default()).map_err(|e| {
        PluginError::NoHost(format!("the first line of stdin is not a handshake: {e}"))
    })?;
    let version = offer.get("version").unwrap_or("");
    if version != PLUGIN_PROTOCOL_VERSION.to_string() {
        // Answer anyway, so the host reports the mismatch too.
        let _ = output
            .write_all(format!("{MAGIC} {PLUGIN_PROTOCOL_VERSION}\n").as_bytes())
            .await;
        return Err(PluginError::NoHost(format!(
            "plugin protocol version mismatch: the host speaks {version:?}, this plugin speaks {PLUGIN_PROTOCOL_VERSION}"
        )));
    }
    let get = |k: &str| {
        offer
            .get(k)
            .map(str::to_owned)
            .ok_or_else(|| PluginError::NoHost(format!("the handshake has no {k:?}")))
    };
    let (name, host) = (get("name")?, get("host")?);
    let host_key = PublicKey::parse(&get("host-key")?)?;
    let identity = Identity::from_openssh(&get("key")?, None)?;
    let launch = offer
        .get("launch")
        .and_then(|l| l.parse().ok())
        .unwrap_or(1);
    output
        .write_all(format!("{MAGIC} {PLUGIN_PROTOCOL_VERSION}\n").as_bytes())
        .await
        .map_err(|e| PluginError::NoHost(format!("cannot write stdout: {e}")))?;
    output
        .flush()
        .await
        .map_err(|e| PluginError::NoHost(format!("cannot write stdout: {e}")))?;
    let peer = Peer::builder()
        .name(name)
        .identity(identity)
        .known_hosts(KnownHosts::new().with_pinned(host_key))
        .config(Config::default().reconnect(false))
        .build()?;
    peer.connect_stream(tokio::io::join(input, output), "host")
        .await?;
    Ok(PluginConnection { peer, host, launch })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert!(check_answer(b"DUPLEX-PLUGIN 1").is_ok());
        assert!(check_answer(b"DUPLEX-PLUGIN 1\r").is_ok());
        let e = check_answer(b"DUPLEX-PLUGIN 2").unwrap_err();
        assert!(e.contains("version mismatch"), "{e}");
        let e = check_answer(b"hello from main()").unwrap_err();
        assert!(e.contains("wrote \"hello from main()\" to stdout"), "{e}");
        let e = check_answer(b"").unwrap_err();
        assert!(e.contains("without answering"), "{e}");
    }
}
