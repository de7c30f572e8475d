//! Starting this example's own binary as a child process that listens.

use std::process::Stdio;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts this executable with `args`, waits for the `listening on
/// ENDPOINT` line it prints, and returns the child (killed when dropped)
/// with the endpoint. The child's later output is read and discarded, so
/// it never blocks on a full pipe.
pub(crate) async fn spawn_listening(
    args: &[&str],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the child process")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let endpoint = loop {
        let line = lines
            .next_line()
            .await?
            .context("the child exited before listening")?;
        if let Some(e) = line.strip_prefix("listening on ") {
            break e.to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, endpoint))
}
