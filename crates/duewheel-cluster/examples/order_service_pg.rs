//! An order service whose deadlines live in its own PostgreSQL: the order
//! and its deadline commit in one transaction, the payment and the cancel
//! of the deadline in another, and the expiry's effect (cancel the order,
//! release the stock) commits with the end of its timer row, so it happens
//! exactly once, with no idempotency code in the handler.
//!
//! ```text
//! eval "$(scripts/pg-up.sh)"     # or any DUEWHEEL_PG_DSN
//! cargo run --release -p duewheel-cluster --example order_service_pg
//! ```

use duewheel::Cancel;
use duewheel_cluster::{NodeConfig, StoreConfig, TxTimers};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::var("DUEWHEEL_PG_DSN")
        .map_err(|_| "set DUEWHEEL_PG_DSN (`eval \"$(scripts/pg-up.sh)\"` starts a server)")?;
    let timers_schema = format!("example_timers_{}", std::process::id());
    let app = format!("example_shop_{}", std::process::id());
    let store = StoreConfig::new(&dsn).schema(&timers_schema).shards(16);

    let mut db = postgres::Client::connect(&dsn, postgres::NoTls)?;
    db.batch_execute(&format!(
        "CREATE SCHEMA \"{app}\";
         CREATE TABLE \"{app}\".orders (id bigint PRIMARY KEY, qty int NOT NULL,
           status text NOT NULL DEFAULT 'open');
         CREATE TABLE \"{app}\".stock (available bigint NOT NULL);
         INSERT INTO \"{app}\".stock VALUES (10);"
    ))?;

    let node = NodeConfig::new(store.clone(), "shop-1")
        .group("expiry")
        .start::<String>()?;
    let timers = TxTimers::new(&store)?;

    // Create: stock, order and deadline in one transaction.
    for (id, qty) in [(1_u64, 2_i32), (2, 3), (3, 1)] {
        let mut tx = db.transaction()?;
        tx.execute(
            &format!("UPDATE \"{app}\".stock SET available = available - $1"),
            &[&i64::from(qty)],
        )?;
        tx.execute(
            &format!("INSERT INTO \"{app}\".orders (id, qty) VALUES ($1, $2)"),
            &[&(id as i64), &qty],
        )?;
        timers.schedule(
            &mut tx,
            id,
            Duration::from_millis(500),
            &format!("order {id}"),
        )?;
        tx.commit()?;
    }

    // Pay order 2 in time: lock the order, then cancel its deadline.
    let pay =
        |db: &mut postgres::Client, id: u64| -> Result<&'static str, Box<dyn std::error::Error>> {
            let mut tx = db.transaction()?;
            tx.execute(
                &format!("SELECT 1 FROM \"{app}\".orders WHERE id = $1 FOR UPDATE"),
                &[&(id as i64)],
            )?;
            let outcome = match timers.cancel::<_, String>(&mut tx, id)? {
                Cancel::Cancelled(_) => {
                    tx.execute(
                        &format!("UPDATE \"{app}\".orders SET status = 'paid' WHERE id = $1"),
                        &[&(id as i64)],
                    )?;
                    "paid"
                }
                Cancel::AlreadyFired | Cancel::NotFound => "too late: refunded",
            };
            tx.commit()?;
            Ok(outcome)
        };
    println!("order 2: {}", pay(&mut db, 2)?);

    // Expiries: unconditional writes, committed with each timer row's end.
    let mut expiries = node.subscribe_tx("expiry")?;
    let release = format!(
        "WITH o AS (UPDATE \"{app}\".orders SET status = 'cancelled' WHERE id = $1 RETURNING qty)
         UPDATE \"{app}\".stock SET available = available + (SELECT qty FROM o)"
    );
    let until = Instant::now() + Duration::from_secs(30);
    let mut expired = 0;
    while expired < 2 && Instant::now() < until {
        expired += expiries.handle_batch(100, Duration::from_millis(200), |events, tx| {
            for e in events {
                tx.execute(&release, &[&(e.id as i64)])?;
                println!("expired: {}", e.payload);
            }
            Ok::<(), postgres::Error>(())
        })?;
    }
    println!("order 3: {}", pay(&mut db, 3)?);

    for row in db.query(
        &format!("SELECT id, status FROM \"{app}\".orders ORDER BY id"),
        &[],
    )? {
        println!(
            "order {}: {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1)
        );
    }
    let available: i64 = db
        .query_one(&format!("SELECT available FROM \"{app}\".stock"), &[])?
        .get(0);
    println!("stock available: {available} (10 - 3 for the paid order)");

    node.shutdown();
    db.batch_execute(&format!(
        "DROP SCHEMA \"{app}\" CASCADE; DROP SCHEMA \"{timers_schema}\" CASCADE"
    ))?;
    Ok(())
}
