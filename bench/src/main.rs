//! `duplex-bench`: Duplex measured side by side with raw russh, OpenSSH,
//! tonic gRPC (TLS and plaintext) and raw TCP, in one run on one machine.
//!
//! ```text
//! cargo run --release -p duplex-bench -- [--quick] [--runs N] [--only a,b] [--out FILE]
//! ```
//!
//! Every figure is measured `--runs` times per system, the systems taking
//! turns within each run so that a noisy moment hurts all of them alike;
//! the table shows medians, and for each peer the ratio Duplex / peer.
//! See docs/BENCHMARKS.md.

// A binary: `pub` marks what modules share, not an API.
#![allow(unreachable_pub, missing_docs)]

mod dx;
mod grpc;
mod mem;
mod openssh;
mod raw;
mod stats;
mod tcp;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::future::LocalBoxFuture;
use tokio::task::JoinSet;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bulk writes and streamed messages are this big.
pub const WRITE_SIZE: usize = 64 << 10;
/// `total` bytes as a sequence of writes of at most [`WRITE_SIZE`].
pub fn writes(total: u64) -> impl Iterator<Item = &'static [u8]> {
    static CHUNK: [u8; WRITE_SIZE] = [0x5a; WRITE_SIZE];
    let full = total / WRITE_SIZE as u64;
    let rest = (total % WRITE_SIZE as u64) as usize;
    (0..full)
        .map(|_| &CHUNK[..])
        .chain((rest > 0).then(|| &CHUNK[..rest]))
}

/// Echoed messages are this big.
pub const MSG_SIZE: usize = 64;

/// A task aborted when this is dropped.
pub struct Owned(pub tokio::task::JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How much each figure does.
#[derive(Debug, Clone)]
pub struct Params {
    pub runs: usize,
    pub bulk_bytes: u64,
    pub round_trips: usize,
    pub warmup: usize,
    pub calls: usize,
    pub rate_calls: usize,
    pub stream_bytes: u64,
    pub opens_seq: usize,
    pub opens_conc: usize,
    pub setups: usize,
    pub ssh_setups: usize,
    pub idle_channels: usize,
    pub idle_conns: usize,
}

impl Params {
    fn full() -> Self {
        Params {
            runs: 5,
            bulk_bytes: 1 << 30,
            round_trips: 10_000,
            warmup: 1_000,
            calls: 10_000,
            rate_calls: 50_000,
            stream_bytes: 512 << 20,
            opens_seq: 3_000,
            opens_conc: 20_000,
            setups: 100,
            ssh_setups: 20,
            idle_channels: 10_000,
            idle_conns: 1_000,
        }
    }

    fn quick() -> Self {
        Params {
            runs: 1,
            bulk_bytes: 16 << 20,
            round_trips: 200,
            warmup: 20,
            calls: 200,
            rate_calls: 1_000,
            stream_bytes: 8 << 20,
            opens_seq: 100,
            opens_conc: 400,
            setups: 5,
            ssh_setups: 3,
            idle_channels: 200,
            idle_conns: 20,
        }
    }
}

/// Runs `total` operations from `tasks` concurrent tasks; operations per
/// second.
pub async fn spread<F, Fut>(total: usize, tasks: usize, op: F) -> Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks.max(1) {
        let (next, op) = (next.clone(), op.clone());
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                op().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(stats::per_sec(total as u64, start.elapsed()))
}

/// The systems compared, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Sys {
    Duplex,
    Russh,
    OpenSsh,
    TonicTls,
    TonicPlain,
    Tcp,
}

const PEERS: [Sys; 5] = [
    Sys::Russh,
    Sys::OpenSsh,
    Sys::TonicTls,
    Sys::TonicPlain,
    Sys::Tcp,
];

impl Sys {
    fn id(self) -> &'static str {
        match self {
            Sys::Duplex => "duplex",
            Sys::Russh => "russh",
            Sys::OpenSsh => "openssh",
            Sys::TonicTls => "tonic-tls",
            Sys::TonicPlain => "tonic-plain",
            Sys::Tcp => "tcp",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sys::Duplex => "Duplex",
            Sys::Russh => "raw russh",
            Sys::OpenSsh => "OpenSSH",
            Sys::TonicTls => "tonic TLS",
            Sys::TonicPlain => "tonic plain",
            Sys::Tcp => "TCP",
        }
    }
}

/// A reported figure.
struct Fig {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    /// Against a peer: Duplex/peer must be at least (higher is better) or
    /// at most (lower is better) this.
    target_ratio: Option<(Sys, f64)>,
    /// A second ratio target (bulk against OpenSSH).
    target_ratio2: Option<(Sys, f64)>,
    /// An absolute bound on Duplex's own value.
    target_abs: Option<f64>,
}

const FIGS: &[Fig] = &[
    Fig {
        key: "bulk1",
        title: "Bulk, 1 channel (64 KiB writes)",
        unit: "MiB/s",
        higher_is_better: true,
        target_ratio: Some((Sys::Russh, 0.9)),
        target_ratio2: Some((Sys::OpenSsh, 2.0)),
        target_abs: None,
    },
    Fig {
        key: "bulk8",
        title: "Bulk, 8 channels of 1 connection",
        unit: "MiB/s",
        higher_is_better: true,
        target_ratio: None,
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "rtt_p50",
        title: "64 B echo round trip, p50",
        unit: "µs",
        higher_is_better: false,
        target_ratio: Some((Sys::Russh, 1.2)),
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "rtt_p99",
        title: "64 B echo round trip, p99",
        unit: "µs",
        higher_is_better: false,
        target_ratio: Some((Sys::Russh, 1.2)),
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "open_seq",
        title: "Open + echo + close, sequential",
        unit: "/s",
        higher_is_better: true,
        target_ratio: Some((Sys::Russh, 0.8)),
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "open_conc",
        title: "Open + echo + close, 64 tasks",
        unit: "/s",
        higher_is_better: true,
        target_ratio: Some((Sys::Russh, 0.8)),
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "setup",
        title: "Connection setup",
        unit: "ms",
        higher_is_better: false,
        target_ratio: None,
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "rpc_p50",
        title: "RPC unary echo, p50",
        unit: "µs",
        higher_is_better: false,
        target_ratio: Some((Sys::TonicTls, 1.0)),
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "rpc_p99",
        title: "RPC unary echo, p99",
        unit: "µs",
        higher_is_better: false,
        target_ratio: None,
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "rpc_rate",
        title: "RPC unary calls, 64 in flight",
        unit: "/s",
        higher_is_better: true,
        target_ratio: Some((Sys::TonicTls, 1.0)),
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "rpc_stream",
        title: "RPC server streaming, 64 KiB messages",
        unit: "MiB/s",
        higher_is_better: true,
        target_ratio: None,
        target_ratio2: None,
        target_abs: None,
    },
    Fig {
        key: "mem_chan",
        title: "Memory per idle channel (accepting end)",
        unit: "KiB",
        higher_is_better: false,
        target_ratio: None,
        target_ratio2: None,
        target_abs: Some(16.0),
    },
    Fig {
        key: "mem_conn",
        title: "Memory per idle connection (accepting end)",
        unit: "KiB",
        higher_is_better: false,
        target_ratio: None,
        target_ratio2: None,
        target_abs: Some(64.0),
    },
];

type Values = Vec<(&'static str, f64)>;
type Job<'a> = Box<dyn Fn() -> LocalBoxFuture<'a, Result<Values>> + 'a>;

/// One measurement that yields one or more figures, for several systems.
struct Scenario<'a> {
    name: &'static str,
    jobs: Vec<(Sys, Job<'a>)>,
}

fn job<'a, F, Fut>(f: F) -> Job<'a>
where
    F: Fn() -> Fut + 'a,
    Fut: Future<Output = Result<Values>> + 'a,
{
    Box::new(move || Box::pin(f()))
}

struct Args {
    params: Params,
    only: Option<Vec<String>>,
    systems: Option<Vec<String>>,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut params = Params::full();
    let mut runs = None;
    let mut only = None;
    let mut systems = None;
    let mut out = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => params = Params::quick(),
            "--runs" => runs = Some(it.next().context("--runs N")?.parse()?),
            "--only" => {
                only = Some(
                    it.next()
                        .context("--only a,b")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "--systems" => {
                systems = Some(
                    it.next()
                        .context("--systems a,b")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "--out" => out = Some(PathBuf::from(it.next().context("--out FILE")?)),
            "-h" | "--help" => {
                println!(
                    "duplex-bench [--quick] [--runs N] [--only SCENARIOS] [--systems SYSTEMS] [--out FILE]\n\
                     scenarios: bulk1 bulk8 rtt open_seq open_conc setup rpc_latency \
                     rpc_rate rpc_stream mem_chan mem_conn\n\
                     systems: duplex russh openssh tonic-tls tonic-plain tcp"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if let Some(r) = runs {
        params.runs = r;
    }
    Ok(Args {
        params,
        only,
        systems,
        out,
    })
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--mem-server") {
        let (Some(system), Some(dir)) = (argv.get(2), argv.get(3)) else {
            bail!("--mem-server SYSTEM DIR");
        };
        // The accepting end of a memory figure: a small runtime of its own.
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(mem::child(system, std::path::Path::new(dir)));
    }
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: Args) -> Result<()> {
    let p = args.params.clone();
    let started = Instant::now();
    let dir = TempDir(std::env::temp_dir().join(format!("duplex-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;

    eprintln!("starting servers...");
    let tcp = tcp::start().await?;
    let dxp = dx::start().await?;
    let rawp = raw::start_pair().await?;
    let tls = Arc::new(grpc::tls()?);
    let g_tls = grpc::start(Some(tls)).await?;
    let g_plain = grpc::start(None).await?;
    let (sshd, ssh_note) = match openssh::unavailable() {
        Some(why) => (None, Some(why)),
        None => match openssh::start(&dir.0).await {
            Ok(s) => (Some(s), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        },
    };
    if let Some(why) = &ssh_note {
        eprintln!("OpenSSH figures skipped: {why}");
    }
    let sshd = sshd.as_ref();

    let (tcp, dxp, rawp, g_tls, g_plain, p) = (&tcp, &dxp, &rawp, &g_tls, &g_plain, &p);
    let memdir = dir.0.clone();
    let memdir = &memdir;
    let mut scenarios: Vec<Scenario<'_>> = Vec::new();

    let mut bulk = |name: &'static str, streams: usize| {
        let mut jobs: Vec<(Sys, Job<'_>)> = vec![
            (
                Sys::Duplex,
                job(move || async move { Ok(vec![(name, dx::bulk(dxp, p, streams).await?)]) }),
            ),
            (
                Sys::Russh,
                job(move || async move { Ok(vec![(name, raw::bulk(rawp, p, streams).await?)]) }),
            ),
        ];
        if let Some(s) = sshd {
            jobs.push((
                Sys::OpenSsh,
                job(move || async move { Ok(vec![(name, openssh::bulk(s, p, streams).await?)]) }),
            ));
        }
        jobs.push((
            Sys::Tcp,
            job(move || async move { Ok(vec![(name, tcp::bulk(tcp, p, streams).await?)]) }),
        ));
        scenarios.push(Scenario { name, jobs });
    };
    bulk("bulk1", 1);
    bulk("bulk8", 8);

    let rtt = |(a, b): (f64, f64)| -> Values { vec![("rtt_p50", a), ("rtt_p99", b)] };
    let mut jobs: Vec<(Sys, Job<'_>)> = vec![
        (
            Sys::Duplex,
            job(move || async move { Ok(rtt(dx::rtt(dxp, p).await?)) }),
        ),
        (
            Sys::Russh,
            job(move || async move { Ok(rtt(raw::rtt(rawp, p).await?)) }),
        ),
    ];
    if let Some(s) = sshd {
        jobs.push((
            Sys::OpenSsh,
            job(move || async move { Ok(rtt(openssh::rtt(s, p).await?)) }),
        ));
    }
    jobs.push((
        Sys::Tcp,
        job(move || async move { Ok(rtt(tcp::rtt(tcp, p).await?)) }),
    ));
    scenarios.push(Scenario { name: "rtt", jobs });

    for (name, opens, tasks) in [
        ("open_seq", p.opens_seq, 1),
        ("open_conc", p.opens_conc, 64),
    ] {
        scenarios.push(Scenario {
            name,
            jobs: vec![
                (
                    Sys::Duplex,
                    job(move || async move {
                        Ok(vec![(name, dx::open_rate(dxp, opens, tasks).await?)])
                    }),
                ),
                (
                    Sys::Russh,
                    job(move || async move {
                        Ok(vec![(name, raw::open_rate(rawp, opens, tasks).await?)])
                    }),
                ),
                (
                    Sys::Tcp,
                    job(move || async move {
                        Ok(vec![(name, tcp::open_rate(tcp, opens, tasks).await?)])
                    }),
                ),
            ],
        });
    }

    let mut jobs: Vec<(Sys, Job<'_>)> = vec![
        (
            Sys::Duplex,
            job(move || async move { Ok(vec![("setup", dx::setup(dxp, p.setups).await?)]) }),
        ),
        (
            Sys::Russh,
            job(move || async move { Ok(vec![("setup", raw::setup(rawp, p.setups).await?)]) }),
        ),
    ];
    if let Some(s) = sshd {
        jobs.push((
            Sys::OpenSsh,
            job(move || async move { Ok(vec![("setup", openssh::setup(s, p.ssh_setups).await?)]) }),
        ));
    }
    jobs.push((
        Sys::TonicTls,
        job(move || async move { Ok(vec![("setup", grpc::setup(g_tls, p.setups).await?)]) }),
    ));
    jobs.push((
        Sys::TonicPlain,
        job(move || async move { Ok(vec![("setup", grpc::setup(g_plain, p.setups).await?)]) }),
    ));
    jobs.push((
        Sys::Tcp,
        job(move || async move { Ok(vec![("setup", tcp::setup(tcp, p.setups).await?)]) }),
    ));
    scenarios.push(Scenario {
        name: "setup",
        jobs,
    });

    let lat = |(a, b): (f64, f64)| -> Values { vec![("rpc_p50", a), ("rpc_p99", b)] };
    scenarios.push(Scenario {
        name: "rpc_latency",
        jobs: vec![
            (
                Sys::Duplex,
                job(move || async move { Ok(lat(dx::rpc_latency(dxp, p).await?)) }),
            ),
            (
                Sys::TonicTls,
                job(move || async move { Ok(lat(grpc::rpc_latency(g_tls, p).await?)) }),
            ),
            (
                Sys::TonicPlain,
                job(move || async move { Ok(lat(grpc::rpc_latency(g_plain, p).await?)) }),
            ),
        ],
    });
    let n = p.rate_calls;
    scenarios.push(Scenario {
        name: "rpc_rate",
        jobs: vec![
            (Sys::Duplex, job(move || async move { Ok(vec![("rpc_rate", dx::rpc_rate(dxp, n, 64).await?)]) })),
            (Sys::TonicTls, job(move || async move { Ok(vec![("rpc_rate", grpc::rpc_rate(g_tls, n, 64).await?)]) })),
            (Sys::TonicPlain, job(move || async move { Ok(vec![("rpc_rate", grpc::rpc_rate(g_plain, n, 64).await?)]) })),
        ],
    });
    scenarios.push(Scenario {
        name: "rpc_stream",
        jobs: vec![
            (Sys::Duplex, job(move || async move { Ok(vec![("rpc_stream", dx::rpc_stream(dxp, p).await?)]) })),
            (Sys::TonicTls, job(move || async move { Ok(vec![("rpc_stream", grpc::rpc_stream(g_tls, p).await?)]) })),
            (Sys::TonicPlain, job(move || async move { Ok(vec![("rpc_stream", grpc::rpc_stream(g_plain, p).await?)]) })),
        ],
    });
    for name in ["mem_chan", "mem_conn"] {
        let mut jobs: Vec<(Sys, Job<'_>)> = Vec::new();
        for (sys, id) in [(Sys::Duplex, "duplex"), (Sys::Russh, "russh")] {
            jobs.push((
                sys,
                job(move || async move {
                    let bytes = if name == "mem_chan" {
                        mem::per_channel(id, p.idle_channels, memdir).await?
                    } else {
                        mem::per_connection(id, p.idle_conns, memdir).await?
                    };
                    Ok(vec![(name, bytes / 1024.0)])
                }),
            ));
        }
        scenarios.push(Scenario { name, jobs });
    }

    let mut results: BTreeMap<(&'static str, Sys), Vec<f64>> = BTreeMap::new();
    for sc in &scenarios {
        if let Some(only) = &args.only
            && !only.iter().any(|o| o == sc.name)
        {
            continue;
        }
        for run in 0..p.runs {
            for (sys, j) in &sc.jobs {
                if let Some(systems) = &args.systems
                    && !systems.iter().any(|s| s == sys.id())
                {
                    continue;
                }
                let t = Instant::now();
                let values = j()
                    .await
                    .with_context(|| format!("{} on {}", sc.name, sys.label()))?;
                eprintln!(
                    "{:<12} run {}/{} {:<12} {:>6.2}s  {}",
                    sc.name,
                    run + 1,
                    p.runs,
                    sys.label(),
                    t.elapsed().as_secs_f64(),
                    values
                        .iter()
                        .map(|(k, v)| format!("{k}={v:.1}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                for (k, v) in values {
                    results.entry((k, *sys)).or_default().push(v);
                }
            }
        }
    }
    let report = report(&results, p, ssh_note.as_deref(), started.elapsed()).await;
    println!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        let s = format!("{v:.0}");
        // thousands separators
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

async fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let ssh = tokio::process::Command::new("ssh")
        .arg("-V")
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|_| "no ssh".into());
    format!("{cpu}, {cores} cores, Linux {kernel}; {ssh}")
}

async fn report(
    results: &BTreeMap<(&'static str, Sys), Vec<f64>>,
    p: &Params,
    ssh_note: Option<&str>,
    took: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Machine: {}  ", machine().await);
    let _ = writeln!(
        s,
        "Runs per figure: {}; the table shows medians. Whole run: {:.0} s.",
        p.runs,
        took.as_secs_f64()
    );
    if let Some(why) = ssh_note {
        let _ = writeln!(s, "OpenSSH figures skipped: {why}.");
    }
    let _ = writeln!(s);
    let _ = write!(s, "| Figure | Duplex |");
    for peer in PEERS {
        let _ = write!(s, " {} |", peer.label());
    }
    let _ = writeln!(s, " Target | Met |");
    let _ = writeln!(s, "|---|---:|{}---|---|", "---:|".repeat(PEERS.len()));
    let med = |k: &str, sys: Sys| results.get(&(k, sys)).map(|v| stats::median(v));
    for f in FIGS {
        let Some(d) = med(f.key, Sys::Duplex) else {
            continue;
        };
        let _ = write!(s, "| {} ({}) | **{}** |", f.title, f.unit, fmt_value(d));
        for peer in PEERS {
            match med(f.key, peer) {
                Some(v) => {
                    let _ = write!(s, " {} ({:.2}×) |", fmt_value(v), d / v);
                }
                None => {
                    let _ = write!(s, " – |");
                }
            }
        }
        let mut targets = Vec::new();
        let mut met = Vec::new();
        for (peer, r) in [f.target_ratio, f.target_ratio2].into_iter().flatten() {
            let cmp = if f.higher_is_better { "≥" } else { "≤" };
            targets.push(format!("{cmp} {r}× {}", peer.label()));
            if let Some(v) = med(f.key, peer) {
                let ratio = d / v;
                let ok = if f.higher_is_better {
                    ratio >= r
                } else {
                    ratio <= r
                };
                met.push(if ok { "yes" } else { "**no**" });
            } else {
                met.push("n/a");
            }
        }
        if let Some(a) = f.target_abs {
            targets.push(format!("< {a} {}", f.unit));
            met.push(if d < a { "yes" } else { "**no**" });
        }
        let _ = writeln!(s, " {} | {} |", targets.join(", "), met.join(", "));
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Ratios are Duplex / peer. Each run's values:");
    let _ = writeln!(s);
    for f in FIGS {
        let mut line = Vec::new();
        for sys in std::iter::once(Sys::Duplex).chain(PEERS) {
            if let Some(v) = results.get(&(f.key, sys)) {
                line.push(format!(
                    "{} {}",
                    sys.label(),
                    v.iter()
                        .map(|x| fmt_value(*x))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ));
            }
        }
        if !line.is_empty() {
            let _ = writeln!(s, "- {} ({}): {}", f.key, f.unit, line.join("; "));
        }
    }
    s
}
