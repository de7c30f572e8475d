//! The plugin handshake's failure modes, with stand-in programs: a version
//! mismatch fails clearly on both sides, a program that never answers
//! times out with a hint, one that exits early is reported with its
//! status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use duplex::plugin::{Plugin, PluginCommand, PluginError, connect_over};
use duplex_tests::{init_tracing, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn spawn_err(cmd: PluginCommand) -> String {
    match within(
        20,
        Plugin::spawn(cmd.handshake_timeout(Duration::from_millis(500))),
    )
    .await
    {
        Ok(_) => panic!("the stand-in was accepted as a plugin"),
        Err(e) => {
            assert!(matches!(e, PluginError::Handshake { .. }), "{e:?}");
            e.to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_side_failures_are_clear() {
    init_tracing();
    let sh = |script: &str| {
        PluginCommand::new("standin", "sh")
            .arg("-c")
            .arg(script.to_owned())
    };
    let e = spawn_err(sh("read x; echo DUPLEX-PLUGIN 2; sleep 5")).await;
    assert!(
        e.contains("the plugin speaks \"2\", this host speaks 1"),
        "{e}"
    );
    let e = spawn_err(sh("sleep 30")).await;
    assert!(
        e.contains("no answer within 500ms") && e.contains("connect_host"),
        "{e}"
    );
    let e = spawn_err(sh("read x; exit 7")).await;
    assert!(
        e.contains("closed its stdout without answering") && e.contains("exit status: 7"),
        "{e}"
    );
    let e = match Plugin::spawn(PluginCommand::new("missing", "/nonexistent/plugin")).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a missing program started"),
    };
    assert!(e.contains("cannot start plugin \"missing\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_side_version_mismatch_is_clear() {
    init_tracing();
    let (plugin_in, mut host_out) = tokio::io::duplex(64 << 10);
    let (host_in, plugin_out) = tokio::io::duplex(64 << 10);
    host_out
        .write_all(b"version=2&name=p&host=h\n")
        .await
        .unwrap();
    let err = within(10, connect_over(plugin_in, plugin_out))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the host speaks \"2\", this plugin speaks 1"),
        "{err}"
    );
    // It still answered, so the host reports the mismatch from its side.
    let mut answer = String::new();
    BufReader::new(host_in)
        .read_line(&mut answer)
        .await
        .unwrap();
    assert_eq!(answer, "DUPLEX-PLUGIN 1\n");
    // And a program not started by a host says so.
    let (plugin_in, mut host_out) = tokio::io::duplex(1024);
    let (_host_in, plugin_out) = tokio::io::duplex(1024);
    host_out.write_all(b"just some input\n").await.unwrap();
    let err = within(10, connect_over(plugin_in, plugin_out))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not started by a Duplex plugin host"),
        "{err}"
    );
}
