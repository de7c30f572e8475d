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
