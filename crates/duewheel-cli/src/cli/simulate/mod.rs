//! `duewheel simulate`: a flash sale end to end, with invariant checks and a
//! report.
//!
//! One concept per file:
//! - [`args`]: the arguments and their validation (every refusal is here);
//! - [`buyers`]: the sale drawn from the seed (every random choice is here);
//! - [`world`]: the order table and the stock ledger the services share;
//! - [`services`]: checkout and payments, and the orders, inventory and
//!   notifier consumer groups;
//! - [`clock`]: the manual and the sped-up system clock;
//! - [`lockstep`]: the driver's handshake with the service threads;
//! - [`callers`]: the checkout's engine calls, a step's calls made
//!   together (accepted in order, waited for together);
//! - [`crash`]: the storage `--crash-at` cuts, to kill the engine as
//!   `kill -9` would while the services and their order table live on;
//! - [`driver`]: the engine, the threads, the step loop, and the crash and
//!   recovery;
//! - [`checks`]: the invariants;
//! - [`report`], [`html`], [`memory`]: what the run tells people and
//!   machines;
//! - `cluster`: the same sale on N `duewheel node`
//!   processes sharing PostgreSQL, with `cluster_nodes` (the processes and
//!   their pipes), `cluster_checks` (its invariants) and `cluster_report`.
//!
//! `--durable DIR` runs the same sale on the engine's write-ahead log;
//! `--crash-at 5m` also kills the engine at that simulated moment (no
//! shutdown, no final checkpoint, the events in its groups lost), recovers a
//! new engine from DIR, re-subscribes the services and finishes the sale,
//! and the same invariants are checked (see [`checks`] for the three places
//! where at-least-once delivery changes what they expect).

mod args;
mod buyers;
mod callers;
mod checks;
mod clock;
mod cluster;
mod cluster_checks;
mod cluster_db;
mod cluster_nodes;
mod cluster_report;
mod crash;
mod driver;
mod html;
mod lockstep;
mod memory;
mod metrics_http;
mod report;
mod services;
mod world;

pub(crate) use args::Args;

use args::{Config, show_ms};
use buyers::Sale;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use world::World;

/// Why `simulate` did not produce a report.
#[derive(Debug)]
pub(crate) enum Error {
    /// The arguments were refused (exit code 2).
    Usage(String),
    /// The run could not complete (exit code 1).
    Run(String),
}

/// Runs the simulation; `Ok(true)` if every invariant held.
pub(crate) fn run(args: Args) -> Result<bool, Error> {
    let mut config = Config::from_args(args)?;
    if config.cluster.is_some() {
        return cluster::run(&config);
    }
    let report_file = config.report.take();
    let config = Arc::new(config);
    let progress = progress_bar(&config);
    progress.set_message("drawing the sale");
    let sale = Arc::new(Sale::draw(&config));
    config.check_against(&sale)?;
    let world = Arc::new(World::new(sale.plans.len(), config.stock));
    let outcome = driver::run(config.clone(), sale.clone(), world.clone(), &progress)?;
    progress.finish_and_clear();

    let invariants = checks::run(&config, &sale, &world, &outcome);
    let report = report::Report::new(&config, &sale, &world, &outcome, invariants);
    if config.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Run(format!("could not encode the report: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", report.to_text());
    }
    if let Some((path, file)) = report_file {
        html::write(file, &report, &outcome)
            .map_err(|e| Error::Run(format!("could not write {}: {e}", path.display())))?;
        if !config.json {
            println!("report written to {}", path.display());
        }
    }
    Ok(report.ok)
}

/// A bar of simulated time; hidden with `--json` or when stdout is not a
/// terminal.
fn progress_bar(config: &Config) -> ProgressBar {
    if config.json || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{spinner} {sim:>7} / {sim_len} simulated [{bar:20}] {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .with_key(
        "sim",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&show_ms(state.pos()));
        },
    )
    .with_key(
        "sim_len",
        |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&show_ms(state.len().unwrap_or(0)));
        },
    )
    .progress_chars("=> ");
    ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout()).with_style(style)
}
