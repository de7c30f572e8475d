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
//! `$PLUGIN` if set.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use duplex::plugin::{Plugin, PluginCommand, PluginEvent, RestartPolicy};
use duplex_rpc::{Client, Context, Router, Server, Status};

fn plugin_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PLUGIN") {
        return Ok(p.into());
    }
    Ok(std::env::current_exe()?.with_file_name("plugin"))
}

/// What the host offers its plugins.
fn host_router(store: Arc<AtomicU64>) -> Router {
    Router::new().unary("Host.Store", move |ctx: Context, entry: String| {
        let store = store.clone();
        async move {
            let n = store.fetch_add(1, Ordering::Relaxed) + 1;
            println!("host stored entry {n} from {}: {entry}", ctx.remote_peer());
            Ok::<_, Status>(n)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,duplex::conn=warn,duplex::peer=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match std::env::args().nth(1).as_deref() {
        Some("demo") | None => demo().await,
        Some("wait") => wait().await,
        Some("junk") => junk().await,
        Some(other) => bail!("unknown command {other:?}: use demo, wait or junk"),
    }
}
