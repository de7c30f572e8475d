//! Every example binary and subcommand: `--help` and `-h` print the usage
//! to stdout and exit 0 (without running anything); a usage error prints
//! the reason and the usage to stderr and exits 2. Neither prints `Error`
//! or a backtrace, even with `RUST_BACKTRACE` set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Output, Stdio};

use duplex_tests::{TempDir, within};

const ECHO: &str = env!("CARGO_BIN_EXE_echo");
const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
const CALCULATOR: &str = env!("CARGO_BIN_EXE_calculator");
const PLUGIN_HOST: &str = env!("CARGO_BIN_EXE_plugin-host");
const PLUGIN: &str = env!("CARGO_BIN_EXE_plugin");
const AGENT: &str = env!("CARGO_BIN_EXE_agent");
const FILES: &str = env!("CARGO_BIN_EXE_files");
const FORWARD: &str = env!("CARGO_BIN_EXE_forward");

async fn run(dir: &TempDir, exe: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(exe)
        .args(args)
        .current_dir(&dir.0)
        .env("RUST_BACKTRACE", "1")
        .env("PLUGIN", PLUGIN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    within(30, child.wait_with_output()).await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_and_usage_errors_in_every_example() {
    let dir = TempDir::new("examples-help");
    // Each binary with its subcommands ("" for the binary alone).
    let commands: [(&str, &str, &[&str]); 8] = [
        ("echo", ECHO, &["", "serve", "send", "demo"]),
        ("gateway", GATEWAY, &[""]),
        ("calculator", CALCULATOR, &["", "agent", "server", "demo"]),
        ("plugin-host", PLUGIN_HOST, &["", "demo", "wait", "junk"]),
        ("plugin", PLUGIN, &[""]),
        ("agent", AGENT, &["", "run", "server"]),
        ("files", FILES, &["", "receive", "send"]),
        ("forward", FORWARD, &["", "serve", "local"]),
    ];
    for (name, exe, subcommands) in commands {
        for sub in subcommands {
            for flag in ["--help", "-h"] {
                let args: Vec<&str> = [*sub, flag].into_iter().filter(|a| !a.is_empty()).collect();
                let what = format!("{name} {}", args.join(" "));
                let out = run(&dir, exe, &args).await;
                let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
                assert_eq!(out.status.code(), Some(0), "{what}: {stdout}\n{stderr}");
                assert!(stdout.starts_with("usage"), "{what}: {stdout}");
                assert!(stderr.is_empty(), "{what}: stderr {stderr}");
                assert!(!stdout.contains("Error"), "{what}: {stdout}");
            }
        }
    }
    // Help comes before running anything: no demo key was made.
    assert!(!dir.0.join(".duplex-demo").exists());

    let usage_errors: [(&str, &[&str], &str); 19] = [
        (ECHO, &[], "give a command"),
        (ECHO, &["nope"], "unknown command \"nope\""),
        (ECHO, &["serve"], "serve takes one ENDPOINT"),
        (ECHO, &["send", "--bogus"], "unknown flag --bogus"),
        (ECHO, &["send", "--key"], "--key needs a value"),
        (ECHO, &["demo", "extra"], "demo takes no arguments"),
        (GATEWAY, &[], "give one ENDPOINT"),
        (
            CALCULATOR,
            &["agent"],
            "give one of --listen, --poll, --agent",
        ),
        (
            CALCULATOR,
            &["server", "--agent", "tcp://127.0.0.1:1", "x", "1"],
            "\"x\" is not a number",
        ),
        (CALCULATOR, &["demo", "--listen"], "demo takes no arguments"),
        (PLUGIN_HOST, &["nope"], "unknown command \"nope\""),
        (PLUGIN, &["extra"], "plugin takes no arguments"),
        (AGENT, &[], "give a command"),
        (AGENT, &["run"], "give --poll ENDPOINT"),
        (AGENT, &["run", "--poll"], "--poll needs a value"),
        (
            FILES,
            &["send", "--to", "tcp://127.0.0.1:1"],
            "give the FILEs to send",
        ),
        (
            FILES,
            &[
                "send",
                "--to",
                "tcp://127.0.0.1:1",
                "f",
                "--fail-after",
                "x",
            ],
            "--fail-after \"x\": not a number",
        ),
        (
            FILES,
            &["receive", "--listen", "tcp://127.0.0.1:0"],
            "give --dir DIR",
        ),
        (
            FORWARD,
            &[
                "local",
                "--via",
                "tcp://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ],
            "give --target HOST:PORT",
        ),
    ];
    for (exe, args, why) in usage_errors {
        let what = format!("{exe} {}", args.join(" "));
        let out = run(&dir, exe, args).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{what}: {stdout}\n{stderr}");
        assert!(stdout.is_empty(), "{what}: stdout {stdout}");
        assert!(stderr.starts_with(why), "{what}: {stderr}");
        assert!(stderr.contains("\nusage"), "{what}: {stderr}");
        assert!(
            !stderr.contains("Error") && !stderr.contains("backtrace"),
            "{what}: {stderr}"
        );
    }
}
