//! The keeper: the node's heartbeat, its leases, and its share of shards.
//!
//! Every `renew_every` it renews every lease it holds in one statement (a
//! shard not renewed is lost: forgotten at once, its writes are fenced
//! anyway). More often, every [`BALANCE_EVERY`] (or `renew_every` if that
//! is shorter), it announces itself in `nodes` and moves toward its fair
//! share,
//! `ceil(shards / live nodes)`: below it, it takes free shards, its own
//! from an earlier incarnation, and shards whose lease expired more than
//! `grace` ago (`FOR UPDATE SKIP LOCKED`, bumping each epoch before anything
//! of it fires: the backstop sweeper); above it, it releases the surplus.
//! Leases are judged by the database's clock; each statement that acquires
//! or renews one also records, in the [`fence`](super::fence), how long the
//! lease is certain by this process's monotonic clock, counted from an
//! instant taken before the statement was sent.
//!
//! Invariant: `owned` holds a shard only at an epoch this node acquired,
//! and only until a renewal or a fenced write says otherwise; the fence
//! holds it at that epoch, no longer than `owned` does.

use super::sql::NodeDb;
use super::{KeeperMsg, Shared, bump, ms};
use crossbeam_channel::Receiver;
use std::time::{Duration, Instant};

/// How often the keeper looks for shards to take or give up: a dead
/// node's shards are taken within this (plus `grace`) of their lease's
/// expiry, not a whole renew interval later.
pub(super) const BALANCE_EVERY: Duration = Duration::from_millis(500);

pub(super) fn run(shared: &Shared, db: NodeDb, rx: &Receiver<KeeperMsg>) {
    let mut db = Some(db);
    let ttl_ms = i64::try_from(ms(shared.config.lease_ttl)).unwrap_or(i64::MAX);
    let grace_ms = i64::try_from(ms(shared.config.grace)).unwrap_or(i64::MAX);
    let mut rounds = 0u64;
    let mut next_round = Instant::now();
    let mut next_renew = Instant::now();
    let every = shared.config.renew_every.min(BALANCE_EVERY);
    loop {
        if shared.stopping() {
            leave(shared, &mut db);
            return;
        }
        if shared
            .keeper_paused
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let wait = next_round
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok(KeeperMsg::Lost { shard, epoch }) => {
                if shared.drop_shard(shard, epoch) {
                    bump(&shared.counters.lost, 1);
                    crate::trace::warning!(shard, epoch, "shard lost: a write was fenced");
                }
                continue;
            }
            Ok(KeeperMsg::Reacquire { shard, epoch }) => {
                if shared.drop_shard(shard, epoch) {
                    reacquire(shared, &mut db, shard);
                }
                continue;
            }
            Err(_) if Instant::now() < next_round => continue,
            Err(_) => {}
        }
        let started = Instant::now();
        let renew = started >= next_renew;
        // A first round only announces the node, so nodes started together
        // see each other before they divide the shards.
        next_round = started + every;
        match round(shared, &mut db, ttl_ms, grace_ms, renew, rounds > 0) {
            Ok(takeable_in) => {
                if renew {
                    next_renew = started + shared.config.renew_every;
                }
                // Short of its share, with another's lease about to become
                // takeable: the next round comes at that moment (perf,
                // #16: a dead node's shards were taken up to a whole round
                // after their lease and grace ran out).
                if let Some(wait) = takeable_in {
                    next_round = next_round.min(Instant::now() + wait + TAKE_MARGIN);
                }
            }
            Err(e) => {
                bump(&shared.counters.db_errors, 1);
                crate::trace::warning!(error = e, "lease round failed");
                db = None;
            }
        }
        rounds += 1;
    }
}

/// How long after another's lease becomes takeable (by the database's
/// clock, measured from here) the keeper tries: the round trip that read
/// the time, and the two clocks' tick.
const TAKE_MARGIN: Duration = Duration::from_millis(5);

/// One round: heartbeat, renewal (if `renew`), balance (if `balance`).
/// `Ok(Some(wait))` when this node is short of its share and another
/// node's lease becomes takeable in `wait` (less than a round from now).
fn round(
    shared: &Shared,
    db: &mut Option<NodeDb>,
    ttl_ms: i64,
    grace_ms: i64,
    renew: bool,
    balance: bool,
) -> Result<Option<Duration>, String> {
    if db.as_ref().is_none_or(NodeDb::is_closed) {
        *db = shared.reconnect(Some(Instant::now() + shared.config.renew_every));
    }
    let conn = db.as_mut().ok_or("cannot reach the database")?;
    let me = &shared.node_id;
    if super::session::superseded(conn.client(), me, &shared.session).map_err(|e| e.to_string())? {
        step_down(shared);
        return Ok(None);
    }
    // Counted as live: nodes heard from within a few balance rounds (or a
    // lease, if shorter). Not a whole lease: an incarnation that died
    // right after it started must not hold the others below the share
    // that would take its shards.
    let live_ms = ttl_ms.min(i64::try_from(ms(BALANCE_EVERY) * 3).unwrap_or(i64::MAX));
    let live = conn.heartbeat(me, live_ms).map_err(|e| e.to_string())?;
    let held: Vec<(u32, u64)> = shared.owned.read().iter().map(|(&s, &e)| (s, e)).collect();
    if renew && !held.is_empty() {
        // Before sending: the database's new expiry is later than this.
        let sent = Instant::now();
        let kept = conn.renew(me, &held, ttl_ms).map_err(|e| e.to_string())?;
        let kept: rustc_hash::FxHashSet<u32> = kept.into_iter().collect();
        for &(shard, epoch) in &held {
            if kept.contains(&shard) {
                shared.fence.grant(shard, epoch, sent);
            } else if shared.drop_shard(shard, epoch) {
                bump(&shared.counters.lost, 1);
                crate::trace::warning!(shard, epoch, "shard lost: its lease was taken");
            }
        }
    }
    if !balance {
        return Ok(None);
    }
    let shards = shared.map.shards();
    let target = shards.div_ceil(live) as usize;
    let owned: Vec<(u32, u64)> = shared.owned.read().iter().map(|(&s, &e)| (s, e)).collect();
    if owned.len() < target {
        let held: Vec<u32> = owned.iter().map(|&(s, _)| s).collect();
        let want = i64::try_from(target - owned.len()).unwrap_or(i64::MAX);
        let sent = Instant::now();
        let got = conn
            .acquire_some(me, ttl_ms, &held, grace_ms, want)
            .map_err(|e| e.to_string())?;
        if !got.is_empty() {
            crate::trace::info!(shards = got.len(), live, "acquired shards");
        }
        let short = got.len() < usize::try_from(want).unwrap_or(usize::MAX);
        for (shard, epoch) in got {
            take(shared, shard, epoch, sent);
        }
        if short {
            let every = shared.config.renew_every.min(BALANCE_EVERY);
            let wait = conn
                .next_takeable(me, grace_ms)
                .map_err(|e| e.to_string())?;
            return Ok(wait
                .and_then(|ms| u64::try_from(ms).ok())
                .map(Duration::from_millis)
                .filter(|&wait| wait < every));
        }
    } else if owned.len() > target {
        let mut surplus = owned;
        surplus.sort_unstable();
        let surplus = surplus.split_off(target);
        for &(shard, epoch) in &surplus {
            shared.drop_shard(shard, epoch);
        }
        conn.release(me, &surplus).map_err(|e| e.to_string())?;
        bump(&shared.counters.released, surplus.len() as u64);
        crate::trace::info!(shards = surplus.len(), live, "released shards to rebalance");
    }
    Ok(None)
}

/// Another process took our id (see `session.rs`): forget every shard and
/// stay idle; `round` returns here at every turn from now on.
fn step_down(shared: &Shared) {
    if !shared
        .superseded
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        crate::trace::error!(
            node = &*shared.node_id,
            "node id taken by another process; stepping down"
        );
    }
    let dropped = shared.owned.write().drain().count();
    shared.fence.clear();
    bump(&shared.counters.lost, dropped as u64);
}

/// Records a new lease, acquired by a statement sent at `sent`, and hands
/// the shard to the pager to load.
fn take(shared: &Shared, shard: u32, epoch: u64, sent: Instant) {
    shared.fence.grant(shard, epoch, sent);
    shared.owned.write().insert(shard, epoch);
    bump(&shared.counters.acquired, 1);
    let _ = shared.pager.send((shard, epoch));
}

/// After a fenced write in doubt: take the shard again at a new epoch (if
/// nobody else did) and reload it.
fn reacquire(shared: &Shared, db: &mut Option<NodeDb>, shard: u32) {
    if db.as_ref().is_none_or(NodeDb::is_closed) {
        *db = shared.reconnect(Some(Instant::now() + shared.config.renew_every));
    }
    let sent = Instant::now();
    let taken = db
        .as_mut()
        .map(|conn| conn.reacquire(&shared.node_id, shard, shared.config.lease_ttl));
    match taken {
        Some(Ok(Some(epoch))) => take(shared, shard, epoch, sent),
        // Someone else has it, or the database is gone: the balancer takes
        // it again later if it is free, and its owner reloads it either way.
        Some(Ok(None)) => bump(&shared.counters.lost, 1),
        Some(Err(_)) | None => {
            bump(&shared.counters.db_errors, 1);
            bump(&shared.counters.lost, 1);
        }
    }
}

/// Shutdown: release every shard (bumping its epoch, so the next owner
/// need not wait out the lease) and leave the heartbeat table.
fn leave(shared: &Shared, db: &mut Option<NodeDb>) {
    let held: Vec<(u32, u64)> = shared.owned.write().drain().collect();
    shared.fence.clear();
    if shared.superseded.load(std::sync::atomic::Ordering::SeqCst) {
        return; // the row and the id are the successor's
    }
    if db.as_ref().is_none_or(NodeDb::is_closed) {
        *db = shared.reconnect(Some(Instant::now() + shared.config.op_timeout));
    }
    let Some(conn) = db.as_mut() else {
        return;
    };
    if !held.is_empty() {
        match conn.release(&shared.node_id, &held) {
            Ok(_) => {
                bump(&shared.counters.released, held.len() as u64);
                crate::trace::info!(shards = held.len(), "released shards at shutdown");
            }
            Err(e) => crate::trace::warning!(
                shards = held.len(),
                error = e.to_string(),
                "could not release shards at shutdown; they expire with their leases"
            ),
        }
    }
    let _ = conn.leave(&shared.node_id);
}
