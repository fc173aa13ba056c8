//! The acker: deletes the rows of timers every group acknowledged, batched
//! like the writers' commits, fenced like the claim.
//!
//! Invariant: a row is deleted only by a statement that held its shard row
//! `FOR SHARE` at the epoch that claimed it, which is still the epoch this
//! node holds. An ack that cannot be written
//! (the shard moved on, the database is gone at shutdown) leaves the row
//! claimed, and the next owner redelivers it: at-least-once, never zero.

use super::sql::NodeDb;
use super::{KeeperMsg, Shared, bump};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub(super) fn run(shared: &Shared, db: NodeDb, rx: &Receiver<u64>) {
    let mut db = Some(db);
    let mut ids = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(id) => ids.push(id),
            Err(RecvTimeoutError::Timeout) if !shared.stopping() => continue,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                // Shutdown: what is queued is written once, if it can be.
                if !ids.is_empty() {
                    flush(shared, &mut db, &mut ids, true);
                }
                return;
            }
        }
        let until = Instant::now() + shared.config.batch_wait;
        while ids.len() < shared.config.batch_rows {
            match rx.recv_deadline(until) {
                Ok(id) => ids.push(id),
                Err(_) => break,
            }
        }
        flush(shared, &mut db, &mut ids, false);
    }
}

fn flush(shared: &Shared, db: &mut Option<NodeDb>, ids: &mut Vec<u64>, last: bool) {
    let mut backoff = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        // Rows of shards no longer ours are the new owner's to redeliver.
        // Each ack is fenced by the epoch that *claimed* the row: an ack
        // never crosses epochs. A delivery claimed before the shard moved on
        // is redelivered by the newer owner from its load; if that owner is
        // this node, and the load found the delivery still in flight (so
        // the wheel could not take it again), the pager fetches the row
        // again now and redelivers it.
        let mut refetch = Vec::new();
        let items: Vec<(u32, u64, u64)> = {
            let owned = shared.owned.read();
            let claimed = shared.claim_epochs.lock();
            ids.iter()
                .filter_map(|&id| {
                    let shard = shared.map.shard_of_id(id);
                    let held = *owned.get(&shard)?;
                    let claim = claimed.get(&id).copied().unwrap_or(held);
                    if claim != held {
                        refetch.push(id);
                        return None;
                    }
                    Some((shard, held, id))
                })
                .collect()
        };
        if !refetch.is_empty() {
            let _ = shared.refetch.send(std::mem::take(&mut refetch));
        }
        if items.is_empty() {
            break;
        }
        if db.as_ref().is_none_or(NodeDb::is_closed) {
            *db = shared.reconnect_for_rows(Some(Instant::now() + shared.config.op_timeout));
        }
        let result = match db.as_mut() {
            Some(conn) => conn.ack(&items).map_err(|e| e.to_string()),
            None => Err("cannot reach the database".into()),
        };
        match result {
            Ok((deleted, fence)) => {
                bump(&shared.counters.acked, deleted);
                for shard in fence.fenced {
                    bump(&shared.counters.fenced, 1);
                    if let Some(&(_, epoch, _)) = items.iter().find(|i| i.0 == shard) {
                        let _ = shared.keeper.send(KeeperMsg::Lost { shard, epoch });
                    }
                }
                break;
            }
            Err(e) => {
                // Deleting claimed rows again is harmless: retry.
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e, "ack failed; retrying");
                tries += 1;
                if (last || shared.stopping()) && tries >= 3 {
                    break;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    let mut epochs = shared.claim_epochs.lock();
    for id in ids.drain(..) {
        epochs.remove(&id);
    }
}
