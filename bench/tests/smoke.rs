//! The benchmark binary end to end with tiny sizes (`--quick`), so it keeps
//! working between the runs that produce docs/BENCHMARKS.md: every figure
//! gets a number for Duplex and for each peer that applies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn quick_run_fills_every_row() {
    let dir = std::env::temp_dir().join(format!("duplex-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("table.md");
    let run = Command::new(env!("CARGO_BIN_EXE_duplex-bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "duplex-bench failed:\n{stderr}");
    let table = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let with_sshd = !table.contains("OpenSSH figures skipped");
    for (row, peers) in [
        ("Bulk, 1 channel", 3),
        ("Bulk, 8 channels", 3),
        ("64 B echo round trip, p50", 3),
        ("64 B echo round trip, p99", 3),
        ("Open + echo + close, sequential", 2),
        ("Open + echo + close, 64 tasks", 2),
        ("Connection setup", 5),
        ("RPC unary echo, p50", 2),
        ("RPC unary echo, p99", 2),
        ("RPC unary calls, 64 in flight", 2),
        ("RPC server streaming", 2),
        ("Memory per idle channel", 1),
        ("Memory per idle connection", 1),
    ] {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("| {row}")))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{table}"));
        // Peers with a number show a ratio; OpenSSH only if sshd is here.
        let ratios = line.matches("×)").count();
        let ssh_rows = ["Bulk", "64 B echo", "Connection setup"];
        let expected = if !with_sshd && ssh_rows.iter().any(|r| row.starts_with(r)) {
            peers - 1
        } else {
            peers
        };
        assert_eq!(ratios, expected, "row {row:?}: {line}");
    }
}
