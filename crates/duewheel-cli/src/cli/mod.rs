//! Command-line parsing and dispatch for the `duewheel` binary.
//!
//! Exit codes are part of the interface, so scripts and CI can tell the
//! cases apart:
//!
//! - `0`: the run finished and every invariant held;
//! - `1`: an invariant failed, or the run could not complete;
//! - `2`: the arguments were refused (clap's own convention for usage
//!   errors, which every refusal here reuses), before anything ran;
//! - `3` (`node` only): the database could not be opened: unreachable,
//!   refused, or a schema this build does not understand.

mod node;
mod simulate;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// duewheel: a timer engine for payment deadlines.
#[derive(Debug, Parser)]
#[command(name = "duewheel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a flash sale end to end: orders, payments, reminders, re-checks,
    /// cancellations and stock, then check the invariants and report.
    Simulate(Box<simulate::Args>),
    /// Run one cluster node on a shared PostgreSQL database, driven over
    /// stdin/stdout (see docs/SCALE_OUT.md).
    Node(Box<node::Args>),
}

/// Parses the command line, runs the command and returns its exit code.
pub(crate) fn run() -> ExitCode {
    // `parse` prints clap's message and exits with 2 on a usage error (0 for
    // `--help` and `--version`).
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => match node::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(node::Error::Usage(message)) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
            Err(node::Error::Database(message)) => {
                eprintln!("error: {message}");
                ExitCode::from(3)
            }
        },
        Command::Simulate(args) => match simulate::run(*args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(simulate::Error::Usage(message)) => {
                // Same format and exit code (2) as clap's own refusals.
                let mut command = Cli::command();
                let simulate = command
                    .find_subcommand_mut("simulate")
                    .map(|c| c.clone().bin_name("duewheel simulate"));
                simulate
                    .unwrap_or(command)
                    .error(clap::error::ErrorKind::ValueValidation, message)
                    .exit()
            }
            Err(simulate::Error::Run(message)) => {
                eprintln!("error: {message}");
                ExitCode::from(1)
            }
        },
    }
}
