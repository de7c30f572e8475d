//! The plugin example as processes: a host calls its plugin, which calls
//! back into the host; a crashing plugin is reported and restarted by
//! policy; killing the host ends the plugin by itself; a plugin printing
//! junk to stdout before the handshake gets a clear error, not a hang.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use duplex_tests::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const HOST: &str = env!("CARGO_BIN_EXE_plugin-host");
const PLUGIN: &str = env!("CARGO_BIN_EXE_plugin");

fn host(arg: &str) -> Command {
    let mut c = Command::new(HOST);
    c.arg(arg)
        .env("PLUGIN", PLUGIN)
        .env("RUST_BACKTRACE", "0")
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_callback_crash_and_restart() {
    let out = within(60, host("demo").output()).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The call, with the plugin's callback into the host during it.
    assert!(
        stdout.contains("host stored entry 1 from greeter: greeted world"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plugin answered: hello, world (the host stored it as entry 1)"),
        "{stdout}"
    );
    // The crash is reported with its status, and the plugin restarted.
    assert!(
        stdout.contains("plugin launch 1 exited: exit status: 3"),
        "{stdout}"
    );
    assert!(stdout.contains("plugin restarted as launch 2"), "{stdout}");
    assert!(
        stdout.contains("plugin (launch 2) answered: hello, again (the host stored it as entry 2)"),
        "{stdout}"
    );
    // The plugin's stderr reached the host's log.
    assert!(
        stderr.contains("crashing on purpose with status 3"),
        "{stderr}"
    );
    assert!(stdout.contains("plugin stopped; demo done"), "{stdout}");
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_host_ends_the_plugin() {
    let mut h = host("wait").stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(h.stdout.take().unwrap()).lines();
    let pid: u32 = within(30, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("host exited");
            if let Some(p) = line.strip_prefix("plugin pid ") {
                break p.trim().parse().unwrap();
            }
        }
    })
    .await;
    assert!(!ended(pid));
    h.kill().await.unwrap(); // SIGKILL: no chance to stop the plugin itself
    let killed = Instant::now();
    // The plugin notices its stdin closed and exits. (No event tells a
    // test when an unrelated process ends: poll, bounded.)
    while !ended(pid) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "plugin {pid} still running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "plugin ended {:?} after its host was killed",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_stdout_before_the_handshake_is_a_clear_error() {
    let t = Instant::now();
    let out = within(30, host("junk").output()).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "it wrote \"hello from a chatty plugin\" to stdout before the handshake (plugins must not print to stdout; log to stderr)"
        ),
        "{stderr}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_plugin_is_graceful_then_forceful() {
    use duplex::plugin::{Plugin, PluginCommand};
    let grace = Duration::from_millis(300);
    for (stubborn, name) in [(false, "polite"), (true, "stubborn")] {
        let mut cmd = PluginCommand::new(name, PLUGIN).shutdown_grace(grace);
        if stubborn {
            cmd = cmd.env("PLUGIN_STUBBORN", "1");
        }
        let plugin = within(30, Plugin::spawn(cmd)).await.unwrap();
        let pid = plugin.pid().unwrap();
        let t = Instant::now();
        within(30, plugin.shutdown()).await;
        let took = t.elapsed();
        assert!(
            ended(pid),
            "{name} plugin {pid} still running after shutdown"
        );
        if stubborn {
            // Killed once the grace period ran out.
            assert!(took >= grace, "{name}: {took:?}");
        } else {
            // Exited by itself on EOF, before the grace period.
            assert!(took < grace, "{name}: {took:?}");
        }
        eprintln!("{name} plugin stopped in {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_output_after_the_handshake_does_not_break_the_host() {
    use duplex::plugin::{Plugin, PluginCommand, PluginEvent, RestartPolicy};
    let plugin = within(
        30,
        Plugin::spawn(
            PluginCommand::new("careless", PLUGIN)
                .restart(RestartPolicy::Always { max_restarts: 1 }),
        ),
    )
    .await
    .unwrap();
    let mut events = plugin.events();
    let client = duplex_rpc::Client::new(plugin.peer().clone()).to("careless");
    // Garbage in the SSH stream: the call fails, the connection with it.
    let r = within(30, client.call::<_, ()>("Plugin.Print", "stray text")).await;
    assert!(r.is_err(), "a call survived garbage in the stream");
    // The plugin's exit is reported, it is restarted, and it answers.
    within(30, async {
        loop {
            if let PluginEvent::Started { launch: 2, .. } = events.recv().await.unwrap() {
                break;
            }
        }
    })
    .await;
    let launch: u32 = within(30, client.call("Plugin.Launch", &())).await.unwrap();
    assert_eq!(launch, 2);
    plugin.shutdown().await;
}
