//! A host that runs `examples/plugin` as a plugin over its stdin/stdout.
//!
//! ```text
//! plugin-host demo     call the plugin (which calls back into the host),
//!                      crash it, watch it restart, call it again, stop it
//! plugin-host wait     start the plugin, print its pid, wait to be killed
//! plugin-host junk     start a plugin that prints to stdout first: a clear error
//! ```
//!
//! The plugin binary is the `plugin` executable next to this one, or
//! `$PLUGIN` if set. With no command, `demo`. `--help` prints the usage
//! (exit 0); a usage error exits 2.

#[path = "../common/usage.rs"]
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use duplex::plugin::{Plugin, PluginCommand, PluginEvent, RestartPolicy};
use duplex_rpc::{CallContext, Client, Router, Server};
use usage::{help, is_help, no_args, usage_error};

const USAGE: &str = "usage:
  plugin-host [demo]   call the plugin (which calls back), crash it, watch it restart, stop it
  plugin-host wait     start the plugin, print its pid, wait to be killed
  plugin-host junk     start a plugin that prints to stdout first: a clear error
The plugin is the `plugin` executable next to this one, or $PLUGIN.";

fn plugin_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PLUGIN") {
        return Ok(p.into());
    }
    Ok(std::env::current_exe()?.with_file_name("plugin"))
}

/// What the host offers its plugins.
fn host_router(store: Arc<AtomicU64>) -> Router {
    Router::new().unary("Host.Store", move |ctx: CallContext, entry: String| {
        let store = store.clone();
        async move {
            let n = store.fetch_add(1, Ordering::Relaxed) + 1;
            println!("host stored entry {n} from {}: {entry}", ctx.remote_peer());
            Ok(n)
        }
    })
}

async fn demo() -> anyhow::Result<()> {
    let plugin = Plugin::spawn(
        PluginCommand::new("greeter", plugin_path()?)
            .restart(RestartPolicy::OnFailure { max_restarts: 3 }),
    )
    .await?;
    let mut events = plugin.events();
    let _serving = Server::new(host_router(Arc::new(AtomicU64::new(0)))).serve(plugin.peer())?;
    let client = Client::new(plugin.peer().clone()).to("greeter");

    let hello: String = client.call("Plugin.Greet", "world").await?;
    println!("plugin answered: {hello}");

    println!("asking the plugin to crash");
    let _ = client.call::<_, ()>("Plugin.Crash", &3).await;
    loop {
        match events.recv().await? {
            PluginEvent::Exited { launch, status, .. } => {
                println!("plugin launch {launch} exited: {status}")
            }
            PluginEvent::Started { launch, .. } => {
                println!("plugin restarted as launch {launch}");
                break;
            }
            PluginEvent::GaveUp { .. } => bail!("the plugin was not restarted"),
            _ => {}
        }
    }
    let launch: u32 = client.call("Plugin.Launch", &()).await?;
    let hello: String = client.call("Plugin.Greet", "again").await?;
    println!("plugin (launch {launch}) answered: {hello}");
    plugin.shutdown().await;
    println!("plugin stopped; demo done");
    Ok(())
}

async fn wait() -> anyhow::Result<()> {
    let plugin = Plugin::spawn(PluginCommand::new("greeter", plugin_path()?)).await?;
    let _serving = Server::new(host_router(Arc::new(AtomicU64::new(0)))).serve(plugin.peer())?;
    let client = Client::new(plugin.peer().clone()).to("greeter");
    let hello: String = client.call("Plugin.Greet", "waiter").await?;
    println!("plugin answered: {hello}");
    let pid = std::process::id();
    println!("host pid {pid}");
    // The plugin's pid, from the OS: the child of this process.
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .context("reading our children")?;
    println!("plugin pid {}", children.trim());
    tokio::signal::ctrl_c().await?;
    plugin.shutdown().await;
    Ok(())
}

async fn junk() -> anyhow::Result<()> {
    let cmd = PluginCommand::new("chatty", plugin_path()?).env("PLUGIN_JUNK", "1");
    match Plugin::spawn(cmd).await {
        Ok(_) => bail!("a plugin that printed to stdout first was accepted"),
        Err(e) => Err(e).context("starting the chatty plugin"),
    }
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next();
    match cmd.as_deref() {
        Some(c) if is_help(c) => return Err(help()),
        Some("demo" | "wait" | "junk") | None => {}
        Some(other) => {
            return Err(usage_error(format!(
                "unknown command {other:?}: use demo, wait or junk"
            )));
        }
    }
    let cmd = cmd.unwrap_or_else(|| "demo".to_owned());
    no_args(&cmd, args)?;
    match cmd.as_str() {
        "wait" => wait().await,
        "junk" => junk().await,
        _ => demo().await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    usage::init_logging("info,duplex::conn=warn,duplex::peer=warn");
    usage::exit(run().await, USAGE)
}
