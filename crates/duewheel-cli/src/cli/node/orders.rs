//! `duewheel node --orders`: the node as an order service whose effects
//! commit exactly once, in the platform's own PostgreSQL transactions.
//!
//! The application's tables, created by the mode (if missing) in
//! `--app-schema` (default `shop`) of the node's database:
//!
//! ```sql
//! CREATE TABLE orders (id bigint PRIMARY KEY,
//!   qty int NOT NULL CHECK (qty > 0),
//!   status text NOT NULL DEFAULT 'open');   -- open | paid | cancelled
//! CREATE TABLE stock (singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
//!   available bigint NOT NULL);             -- starts at --stock
//! CREATE TABLE effects (order_id bigint NOT NULL,
//!   kind text NOT NULL,                     -- cancel | refund
//!   node text NOT NULL,
//!   at timestamptz NOT NULL DEFAULT now());
//! ```
//!
//! - `o <id> <deadline_ms> <qty>`: one transaction reserves the stock
//!   (`soldout` if short), inserts the order and schedules its deadline
//!   ([`TxTimers::schedule`]): all three commit, or none.
//! - `p <id>`: one transaction locks the order, then cancels its deadline
//!   ([`TxTimers::cancel`]): `Cancelled` marks it paid (`cancelled <id>`);
//!   `AlreadyFired` means the expiry won, the payment is refunded (an
//!   `effects` row `refund`, `fired <id>`).
//! - expiries: the node's group is consumed by a [`TxConsumer`] whose
//!   handler has **no idempotency code** (it does not look at the status):
//!   it cancels the orders, gives their quantity back to the stock and
//!   records a `cancel` effect, unconditionally; the fenced end of each
//!   timer row commits in the same transaction, so each runs exactly once
//!   whatever process dies when. An `ev` line is written for each expiry
//!   once its transaction committed (epoch: the claim's).
//!
//! Invariant (checked by `tests/cluster_effects.rs`): every order that
//! expired unpaid has exactly one `cancel` effect, and the stock equals the
//! initial stock minus the quantity of the orders not cancelled; no paid
//! order is cancelled.

use super::Error;
use super::config::Settings as NodeArgs;
use super::stdio::{Out, ev_line, push, stats_line, write_line, write_lines};
use crossbeam_channel::Receiver;
use duewheel::{Cancel, Deadline};
use duewheel_cluster::{
    Node, StoreConfig, TxCancelError, TxConsumeError, TxScheduleError, TxTimers,
};
use duewheel_testkit::protocol::{Command, Line};
use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The order-service mode's options.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Run as an order service: `o`/`p` commands, and expiries handled in
    /// transactions that commit each effect exactly once (see docs/SCALE_OUT.md).
    #[arg(long)]
    pub(crate) orders: bool,
    /// The application's schema for `--orders` (orders, stock, effects).
    #[arg(long, default_value = "shop", requires = "orders")]
    app_schema: String,
    /// Initial stock for `--orders` (used when the stock row is created).
    #[arg(long, default_value_t = 1_000_000_000, requires = "orders")]
    stock: i64,
}

/// The answer to `o`/`p` without `--orders`.
pub(super) fn refuse(out: &Out, command: &Command) {
    let id = match command {
        Command::Order { id, .. } | Command::Pay { id } => Some(*id),
        _ => None,
    };
    let (kind, message) = ("invalid".to_string(), "needs --orders".to_string());
    write_line(
        out,
        &if matches!(command, Command::Pay { .. }) {
            Line::Cerr { id, kind, message }
        } else {
            Line::Err { id, kind, message }
        },
    );
}

fn valid_schema(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(b'a'..=b'z' | b'_'))
        && b.all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && name.len() <= 63
}

/// Creates the application's tables if missing (one node at a time).
fn create_tables(db: &mut postgres::Client, app: &str, stock: i64) -> Result<(), postgres::Error> {
    let mut tx = db.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('duewheel orders ' || $1::text))",
        &[&app],
    )?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{app}\";
         CREATE TABLE IF NOT EXISTS \"{app}\".orders (id bigint PRIMARY KEY,
           qty int NOT NULL CHECK (qty > 0), status text NOT NULL DEFAULT 'open');
         CREATE TABLE IF NOT EXISTS \"{app}\".stock (
           singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
           available bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS \"{app}\".effects (order_id bigint NOT NULL,
           kind text NOT NULL, node text NOT NULL, at timestamptz NOT NULL DEFAULT now());"
    ))?;
    tx.execute(
        &format!("INSERT INTO \"{app}\".stock (available) VALUES ($1) ON CONFLICT DO NOTHING"),
        &[&stock],
    )?;
    tx.commit()
}

fn connect(dsn: &str) -> Result<postgres::Client, postgres::Error> {
    let mut db = postgres::Client::connect(dsn, postgres::NoTls)?;
    db.batch_execute("SET synchronous_commit TO on; SET statement_timeout TO 30000")?;
    Ok(db)
}

pub(super) fn run(node: Node<String>, args: &NodeArgs, out: &Out) -> Result<(), Error> {
    let app = args.orders.app_schema.clone();
    if !valid_schema(&app) {
        return Err(Error::Usage(
            "--app-schema: use [a-z_][a-z0-9_]*, at most 63 bytes".into(),
        ));
    }
    let database = |e: postgres::Error| Error::Database(e.to_string());
    let mut db = connect(&args.pg).map_err(database)?;
    create_tables(&mut db, &app, args.orders.stock).map_err(database)?;
    drop(db);
    let store = StoreConfig::new(args.pg.clone())
        .schema(args.schema.clone())
        .shards(args.shards);
    // Every committed order is announced to its owner (the deadlines are
    // on the node's clock, which may run fast).
    let timers = TxTimers::new(&store)
        .map_err(|e| Error::Usage(e.to_string()))?
        .notify_within(Duration::MAX);
    let mut expiries = node
        .subscribe_tx("out")
        .map_err(|e| Error::Database(e.to_string()))?;
    write_line(out, &Line::Ready(args.node_id.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (out, stop) = (out.clone(), stop.clone());
        let (app, node_id) = (app.clone(), args.node_id.clone());
        std::thread::spawn(move || {
            let expire = format!(
                "WITH l AS (SELECT id FROM \"{app}\".orders WHERE id = ANY($1)
                   ORDER BY id FOR UPDATE),
                 o AS (UPDATE \"{app}\".orders o SET status = 'cancelled' FROM l
                   WHERE o.id = l.id RETURNING o.id, o.qty),
                 s AS (UPDATE \"{app}\".stock
                   SET available = available + (SELECT coalesce(sum(qty), 0) FROM o)),
                 e AS (INSERT INTO \"{app}\".effects (order_id, kind, node)
                   SELECT id, 'cancel', $2 FROM o)
                 SELECT count(*) FROM o"
            );
            while !stop.load(Ordering::SeqCst) {
                let mut lines = String::new();
                let result =
                    expiries.handle_batch(1000, Duration::from_millis(100), |events, tx| {
                        lines.clear();
                        let ids: Vec<i64> = events.iter().map(|e| e.id as i64).collect();
                        tx.query_one(&expire, &[&ids, &node_id])?;
                        for e in events {
                            push(&mut lines, &ev_line(e));
                        }
                        Ok::<(), postgres::Error>(())
                    });
                match result {
                    // Lines only of a batch that committed: a rolled-back
                    // attempt whose retry ended up empty left its lines.
                    Ok(0) => {}
                    Ok(_) => {
                        if !lines.is_empty() {
                            write_lines(&out, &lines);
                        }
                    }
                    Err(TxConsumeError::ShuttingDown) => break,
                    Err(e) => {
                        // Nothing committed: the expiries come again.
                        eprintln!("expiry batch not committed: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
    };

    let (work_tx, work_rx) = crossbeam_channel::bounded::<Command>(1024);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (rx, out, timers) = (work_rx.clone(), out.clone(), timers.clone());
            let (dsn, app, node_id) = (args.pg.clone(), app.clone(), args.node_id.clone());
            std::thread::spawn(move || worker(&rx, &out, &timers, &dsn, &app, &node_id))
        })
        .collect();
    let mut input = BufReader::new(std::io::stdin());
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(input.read_line(&mut line), Ok(n) if n > 0) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        match line.parse::<Command>() {
            Ok(c @ (Command::Order { .. } | Command::Pay { .. })) => {
                let _ = work_tx.send(c);
            }
            Ok(Command::Stats) => write_line(out, &stats_line(&node.stats())),
            Ok(Command::Quit) => break,
            Ok(Command::Schedule { id, .. }) => write_line(
                out,
                &Line::Err {
                    id: Some(id),
                    kind: "invalid".into(),
                    message: "with --orders, schedule through `o`".into(),
                },
            ),
            Ok(Command::Cancel { id }) => write_line(
                out,
                &Line::Cerr {
                    id: Some(id),
                    kind: "invalid".into(),
                    message: "with --orders, cancel through `p`".into(),
                },
            ),
            Err(e) => {
                let id = Command::id_of(&line);
                let (kind, message) = ("invalid".to_string(), Line::one_line(&e.0));
                let pay = line.trim_start().starts_with("p ");
                write_line(
                    out,
                    &if pay {
                        Line::Cerr { id, kind, message }
                    } else {
                        Line::Err { id, kind, message }
                    },
                );
            }
        }
    }
    drop(work_tx);
    for w in workers {
        let _ = w.join();
    }
    stop.store(true, Ordering::SeqCst);
    let _ = consumer.join();
    node.shutdown();
    Ok(())
}

/// Runs orders and payments, one transaction each, on its own connection.
fn worker(
    rx: &Receiver<Command>,
    out: &Out,
    timers: &TxTimers,
    dsn: &str,
    app: &str,
    node_id: &str,
) {
    let mut db: Option<postgres::Client> = None;
    for command in rx {
        if db.as_ref().is_none_or(postgres::Client::is_closed) {
            db = connect(dsn).ok();
        }
        let line = match (&command, db.as_mut()) {
            (Command::Order { id, .. }, None) | (Command::Pay { id }, None) => {
                failure(&command, *id, "unavailable", "cannot reach the database")
            }
            (
                &Command::Order {
                    id,
                    deadline_ms,
                    qty,
                },
                Some(db),
            ) => order(db, timers, app, id, deadline_ms, qty),
            (&Command::Pay { id }, Some(db)) => pay(db, timers, app, node_id, id),
            _ => continue,
        };
        write_line(out, &line);
    }
}

fn failure(command: &Command, id: u64, kind: &str, message: &str) -> Line {
    let (id, kind, message) = (Some(id), kind.to_string(), Line::one_line(message));
    match command {
        Command::Pay { .. } => Line::Cerr { id, kind, message },
        _ => Line::Err { id, kind, message },
    }
}

/// `unavailable` if nothing can have committed, `indoubt` if the commit's
/// answer was lost.
fn db_failure(command: &Command, id: u64, db: &postgres::Client, e: &postgres::Error) -> Line {
    let kind = if db.is_closed() {
        "indoubt"
    } else {
        "unavailable"
    };
    failure(command, id, kind, &e.to_string())
}

fn order(
    db: &mut postgres::Client,
    timers: &TxTimers,
    app: &str,
    id: u64,
    deadline_ms: u64,
    qty: u32,
) -> Line {
    let command = Command::Order {
        id,
        deadline_ms,
        qty,
    };
    let qty = i32::try_from(qty).unwrap_or(i32::MAX);
    let result = (|| -> Result<Result<(), (&'static str, String)>, postgres::Error> {
        let mut tx = db.transaction()?;
        let reserved = tx.execute(
            &format!("UPDATE \"{app}\".stock SET available = available - $1 WHERE available >= $1"),
            &[&i64::from(qty)],
        )?;
        if reserved == 0 {
            return Ok(Err(("soldout", "not enough stock".into())));
        }
        let inserted = tx.execute(
            &format!(
                "INSERT INTO \"{app}\".orders (id, qty) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ),
            &[&(id as i64), &qty],
        )?;
        if inserted == 0 {
            return Ok(Err(("duplicate", "the order exists".into())));
        }
        match timers.schedule(
            &mut tx,
            id,
            Deadline::at_unix_ms(deadline_ms),
            &qty.to_string(),
        ) {
            Ok(()) => {}
            Err(TxScheduleError::Query(e)) => return Err(e),
            Err(TxScheduleError::AlreadyScheduled(_)) => {
                return Ok(Err(("duplicate", "the order's timer exists".into())));
            }
            Err(e) => return Ok(Err(("invalid", e.to_string()))),
        }
        tx.commit()?;
        Ok(Ok(()))
    })();
    match result {
        Ok(Ok(())) => Line::Ok(id),
        Ok(Err((kind, message))) => failure(&command, id, kind, &message),
        Err(e) => db_failure(&command, id, db, &e),
    }
}

fn pay(db: &mut postgres::Client, timers: &TxTimers, app: &str, node_id: &str, id: u64) -> Line {
    let command = Command::Pay { id };
    let result = (|| -> Result<Result<Line, String>, postgres::Error> {
        let mut tx = db.transaction()?;
        // The order's lock first, then the timer's: the expiry handler takes
        // them in the same order.
        let status: Option<String> = tx
            .query_opt(
                &format!("SELECT status FROM \"{app}\".orders WHERE id = $1 FOR UPDATE"),
                &[&(id as i64)],
            )?
            .map(|r| r.get(0));
        let line = match status.as_deref() {
            None => Line::NotFound(id),
            Some("paid") => Line::Cancelled(id),
            Some(_) => match timers.cancel::<_, String>(&mut tx, id) {
                Ok(Cancel::Cancelled(_)) => {
                    tx.execute(
                        &format!("UPDATE \"{app}\".orders SET status = 'paid' WHERE id = $1"),
                        &[&(id as i64)],
                    )?;
                    Line::Cancelled(id)
                }
                Ok(Cancel::AlreadyFired | Cancel::NotFound) => {
                    // A payment retried after its answer was lost refunds
                    // once (the order's lock serializes the two).
                    tx.execute(
                        &format!(
                            "INSERT INTO \"{app}\".effects (order_id, kind, node)
                             SELECT $1, 'refund', $2 WHERE NOT EXISTS (
                               SELECT 1 FROM \"{app}\".effects
                               WHERE order_id = $1 AND kind = 'refund')"
                        ),
                        &[&(id as i64), &node_id],
                    )?;
                    Line::Fired(id)
                }
                Err(TxCancelError::Query(e)) => return Err(e),
                Err(e) => return Ok(Err(e.to_string())),
            },
        };
        tx.commit()?;
        Ok(Ok(line))
    })();
    match result {
        Ok(Ok(line)) => line,
        Ok(Err(message)) => failure(&command, id, "corrupt", &message),
        Err(e) => db_failure(&command, id, db, &e),
    }
}
