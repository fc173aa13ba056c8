//! The harness duewheel's command-line tool and its tests share, so that
//! each thing is written once:
//!
//! - [`protocol`]: the line protocol of `duewheel node` (its stdin
//!   commands and stdout lines), with `Display` and `FromStr`: the node
//!   writes it, the simulator, the benchmark and the tests read it.
//! - [`process`]: one `duewheel node` process under control: spawn, a
//!   stdout reader parsing each line, stdin, SIGKILL and reaping, and the
//!   kill on drop that keeps a failing driver from leaving nodes behind.
//! - [`prom_text`]: a strict reader of the Prometheus text format, for the
//!   tests of `duewheel::prometheus` and of `duewheel simulate
//!   --metrics-addr`.
//! - [`pg`] (feature `pg`): the real-server plumbing of the PostgreSQL
//!   tests: where the DSN comes from, when a missing one skips and when it
//!   fails, a schema of one's own per test.
//!
//! Not published: it has no stability promise outside this repository.

#![forbid(unsafe_code)]

#[cfg(feature = "pg")]
pub mod pg;
pub mod process;
pub mod prom_text;
pub mod protocol;
pub mod wait;
