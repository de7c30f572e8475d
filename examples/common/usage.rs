//! `--help` and usage errors, the same in every example: `--help` (or
//! `-h`), for the program or any subcommand, prints the usage to stdout and
//! exits 0; a usage error prints what was wrong and the usage to stderr and
//! exits 2; any other error prints `Error: ...` to stderr and exits 1.

use std::fmt;
use std::process::ExitCode;

/// Not a failure to report as an error: help was asked for, or the command
/// line is wrong.
#[derive(Debug)]
pub(crate) enum Usage {
    /// `--help` or `-h`: the usage goes to stdout.
    Help,
    /// The command line is wrong, and this says how.
    Error(String),
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Usage::Help => f.write_str("help requested"),
            Usage::Error(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Usage {}

/// The error for `--help`.
pub(crate) fn help() -> anyhow::Error {
    Usage::Help.into()
}

/// A usage error saying `why`.
pub(crate) fn usage_error(why: impl Into<String>) -> anyhow::Error {
    Usage::Error(why.into()).into()
}

/// True for `--help` and `-h`.
pub(crate) fn is_help(arg: &str) -> bool {
    matches!(arg, "--help" | "-h")
}

/// The error for a first argument that names no command: help for `--help`
/// or `-h`, else a usage error listing the `commands` (e.g. "run or
/// server").
#[allow(dead_code)] // the plugin programs take no command
pub(crate) fn bad_command(cmd: &str, commands: &str) -> anyhow::Error {
    if is_help(cmd) {
        help()
    } else if cmd.is_empty() {
        usage_error(format!("give a command: {commands}"))
    } else {
        usage_error(format!("unknown command {cmd:?}"))
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (tracing's `EnvFilter` syntax),
/// or by `default` when it is unset or invalid.
#[allow(dead_code)] // the gateway and the plugin log nothing of their own
pub(crate) fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// For a subcommand that takes no arguments: help if asked for, else a
/// usage error for the first one.
#[allow(dead_code)] // not every example has such a subcommand (the gateway)
pub(crate) fn no_args(cmd: &str, mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    match args.next() {
        None => Ok(()),
        Some(a) if is_help(&a) => Err(help()),
        Some(a) => Err(usage_error(format!("{cmd} takes no arguments, got {a:?}"))),
    }
}

/// The process's exit: 0 on success or help (usage on stdout), 2 on a
/// usage error (the reason and usage on stderr), 1 on any other error.
pub(crate) fn exit(result: anyhow::Result<()>, usage: &str) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    match e.downcast_ref::<Usage>() {
        Some(Usage::Help) => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        Some(Usage::Error(why)) => {
            eprintln!("{why}\n{usage}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("Error: {e:?}");
            ExitCode::from(1)
        }
    }
}
