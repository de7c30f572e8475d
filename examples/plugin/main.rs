//! A plugin for `examples/plugin-host`: it serves `Plugin.Greet`, which
//! calls back into the host (`Host.Store`) while the call is open, and
//! `Plugin.Crash`, which exits the process (to show restarts), and
//! `Plugin.Print`, which prints to stdout as a careless plugin would. It logs to
//! stderr, which the host forwards to its tracing; stdout carries the
//! connection. It exits when its host goes away.
//!
//! With `PLUGIN_JUNK` set it prints to stdout before the handshake, as a
//! careless plugin would: the host reports that clearly. With
//! `PLUGIN_STUBBORN` set it does not exit when its host goes away, so the
//! host has to kill it. `--help` prints the usage (exit 0); any other
//! argument is a usage error (exit 2).

#[path = "../common/usage.rs"]
mod usage;

use std::process::ExitCode;

use duplex_rpc::{CallContext, Router, Server, Status};

const USAGE: &str = "usage: plugin
A plugin for plugin-host, which starts it: it speaks Duplex on stdin/stdout
and serves Plugin.Greet, Plugin.Launch, Plugin.Print and Plugin.Crash.
Try `plugin-host demo`.";

#[tokio::main]
async fn main() -> ExitCode {
    let result = match usage::no_args("plugin", std::env::args().skip(1)) {
        Ok(()) => run().await,
        Err(e) => Err(e),
    };
    usage::exit(result, USAGE)
}

async fn run() -> anyhow::Result<()> {
    if std::env::var_os("PLUGIN_JUNK").is_some() {
        println!("hello from a chatty plugin");
    }
    let conn = duplex::plugin::connect_host().await?;
    let launch = conn.launch;
    let router = Router::new()
        .unary("Plugin.Greet", |ctx: CallContext, who: String| async move {
            // A callback into the host during the call.
            let entry: u64 = ctx
                .caller()
                .call("Host.Store", &format!("greeted {who}"))
                .await?;
            Ok(format!(
                "hello, {who} (the host stored it as entry {entry})"
            ))
        })
        .unary(
            "Plugin.Launch",
            move |_ctx: CallContext, (): ()| async move { Ok(launch) },
        )
        .unary(
            "Plugin.Print",
            |_ctx: CallContext, text: String| async move {
                // What a careless plugin does: stdout carries the connection.
                println!("{text}");
                Ok(())
            },
        )
        .unary("Plugin.Crash", |_ctx: CallContext, code: i32| async move {
            eprintln!("crashing on purpose with status {code}");
            std::process::exit(code);
            #[allow(unreachable_code)]
            Ok::<(), Status>(())
        });
    let _server = Server::new(router).serve(&conn.peer)?;
    eprintln!("plugin ready (launch {launch}, host {})", conn.host);
    conn.closed().await;
    if std::env::var_os("PLUGIN_STUBBORN").is_some() {
        // A plugin that ignores its host going away: the host kills it
        // after its grace period.
        eprintln!("the host went away; staying anyway");
        std::future::pending::<()>().await;
    }
    eprintln!("the host went away; exiting");
    Ok(())
}
