//! OpenSSH: a private `sshd` on a loopback port, started here with keys
//! of its own and only aes256-gcm, and `ssh` processes piping data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinSet;

use crate::{MSG_SIZE, Params, stats};

pub const CIPHER: &str = "aes256-gcm@openssh.com";

/// A running private sshd (killed on drop) and the client settings.
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    user: String,
    _sshd: Child,
    /// A ControlMaster connection for the 8-channel figure.
    _master: Option<Child>,
}

fn sshd_path() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Why the OpenSSH figures cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if sshd_path().is_none() {
        return Some("sshd not found (apt-get install openssh-server)".into());
    }
    if which("ssh").is_none() || which("ssh-keygen").is_none() {
        return Some("ssh or ssh-keygen not found (apt-get install openssh-client)".into());
    }
    None
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.exists())
    })
}

async fn keygen(path: &Path) -> Result<()> {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .await?;
    if !st.success() {
        bail!("ssh-keygen failed: {st}");
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub async fn start(dir: &Path) -> Result<Sshd> {
    let sshd = sshd_path().context("sshd not found")?;
    let dir = dir.join("openssh");
    std::fs::create_dir_all(&dir)?;
    keygen(&dir.join("host")).await?;
    keygen(&dir.join("client")).await?;
    std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys"))?;
    // sshd's privilege separation directory (on a fresh machine, made by
    // the service manager, which did not run here).
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port()?;
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into());
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n\
         AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
         UsePAM no\nStrictModes no\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
         PermitRootLogin prohibit-password\nCiphers {CIPHER}\n\
         MaxSessions 100\nMaxStartups 100:30:200\nLogLevel ERROR\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), config)?;
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting sshd")?;
    let mut s = Sshd {
        dir,
        port,
        user,
        _sshd: child,
        _master: None,
    };
    // Ready once it accepts connections (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("sshd did not start listening on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A login that fails here names the problem better than a figure.
    let out = s.ssh(&["true"], None).output().await?;
    if !out.status.success() {
        bail!(
            "ssh to the private sshd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.start_master().await?;
    Ok(s)
}

impl Sshd {
    fn ssh(&self, remote: &[&str], control: Option<&str>) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-T", "-i"])
            .arg(self.dir.join("client"))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-c",
                CIPHER,
                "-p",
            ])
            .arg(self.port.to_string());
        if let Some(mode) = control {
            c.arg("-S").arg(self.dir.join("ctl"));
            if mode == "master" {
                c.args(["-M", "-N"]);
            }
        }
        c.arg(format!("{}@127.0.0.1", self.user))
            .args(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn start_master(&mut self) -> Result<()> {
        let master = self.ssh(&[], Some("master")).spawn()?;
        self._master = Some(master);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.dir.join("ctl").exists() {
            if Instant::now() > deadline {
                bail!("ssh ControlMaster did not come up");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// An `ssh` running `remote` behind a "ready" line, piped both ways.
    async fn piped(
        &self,
        remote: &str,
        control: bool,
    ) -> Result<(Child, ChildStdin, BufReader<ChildStdout>)> {
        let cmd = format!("echo ready; exec {remote}");
        let mut c = self.ssh(&[&cmd], control.then_some("client"));
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn()?;
        let stdin = child.stdin.take().context("ssh stdin")?;
        let mut stdout = BufReader::new(child.stdout.take().context("ssh stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).await?;
        if line.trim() != "ready" {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            bail!("ssh did not start {remote:?}: {err}");
        }
        Ok((child, stdin, stdout))
    }
}

/// `ssh host 'cat > /dev/null'` fed 64 KiB writes; with `streams` > 1,
/// that many sessions multiplexed on one ControlMaster connection.
pub async fn bulk(s: &Sshd, p: &Params, streams: usize) -> Result<f64> {
    let per = p.bulk_bytes / streams as u64;
    let mut procs = Vec::new();
    for _ in 0..streams {
        procs.push(s.piped("cat > /dev/null", streams > 1).await?);
    }
    let start = Instant::now();
    let mut set = JoinSet::new();
    for (mut child, mut stdin, _out) in procs {
        set.spawn(async move {
            for chunk in crate::writes(per) {
                stdin.write_all(chunk).await?;
            }
            drop(stdin);
            let st = child.wait().await?;
            if !st.success() {
                bail!("ssh exited with {st}");
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(stats::mib_per_sec(per * streams as u64, start.elapsed()))
}

/// 64-byte echo through `ssh host cat`.
pub async fn rtt(s: &Sshd, p: &Params) -> Result<(f64, f64)> {
    let (mut child, mut stdin, mut stdout) = s.piped("cat", false).await?;
    let msg = [7u8; MSG_SIZE];
    let mut back = [0u8; MSG_SIZE];
    let mut samples = Vec::with_capacity(p.round_trips);
    for i in 0..p.warmup + p.round_trips {
        let t = Instant::now();
        stdin.write_all(&msg).await?;
        stdin.flush().await?;
        stdout.read_exact(&mut back).await?;
        if i >= p.warmup {
            samples.push(t.elapsed());
        }
    }
    drop(stdin);
    child.wait().await?;
    Ok(stats::p50_p99(samples))
}

/// `ssh host true`: process start, TCP, key exchange, authentication,
/// the remote command and teardown; median ms.
pub async fn setup(s: &Sshd, n: usize) -> Result<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = s.ssh(&["true"], None).status().await?;
        times.push(t.elapsed());
        if !st.success() {
            bail!("ssh true exited with {st}");
        }
    }
    Ok(crate::tcp::median_ms(times))
}
