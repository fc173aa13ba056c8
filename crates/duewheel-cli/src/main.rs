//! The `duewheel` command.
//!
//! `duewheel simulate` runs a flash sale end to end on the engine: a million
//! orders, a payment window per order, reminders, buyers who pay, pay late or
//! never, and in-process stand-ins for the order, inventory and notification
//! services. At the end it checks the invariants a payment platform relies on
//! and prints a report; a broken invariant makes the exit code non-zero.
//!
//! ```text
//! cargo run --release -p duewheel-cli -- simulate
//! cargo run --release -p duewheel-cli -- simulate --orders 10000 --json
//! cargo run --release -p duewheel-cli -- simulate --real-time --speed 60 --report sale.html
//! cargo run --release -p duewheel-cli -- simulate --durable /tmp/sale-log --crash-at 5m
//! ```

#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
