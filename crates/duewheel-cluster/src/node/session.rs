//! The node's session: one live process per node id.
//!
//! Leases are held by node id, so two live processes with one id would
//! renew, release and fence each other's shards. At start a node takes the
//! id's row in `nodes` with a random session token (`nodes.session`);
//! the keeper's heartbeat then keeps `seen_at` moving, and leaving deletes
//! the row.
//!
//! The rule: the id is free if it has no row, or its heartbeat is older
//! than the lease ttl, or its heartbeat *stands still* for a quiet window
//! longer than a live keeper's heartbeat interval (the holder died
//! recently: a restart after a crash waits that window, not a whole ttl).
//! If the heartbeat moves during the window, another live process holds
//! the id: [`NodeError::NodeIdInUse`], before anything started. The take is
//! one conditional statement on the `seen_at` last read, so of two starters
//! racing for one id at most one wins.
//!
//! Invariant: a node starts only after writing its own token into the id's
//! row, at a moment when no other process had heartbeated within the quiet
//! window. (A holder paused for longer than the window, say by SIGSTOP,
//! loses the id like it loses its leases; its writes are fenced by epoch.)

use super::NodeError;
use crate::error::{OpenError, QueryError};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A random token for this process's node (hex, 32 characters).
pub(super) fn new_token() -> String {
    // `RandomState` is seeded from the OS per process; two of them differ
    // within one process too. Mixed with the pid and the time.
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", word(1), word(2))
}

fn db(e: postgres::Error) -> NodeError {
    NodeError::Open(OpenError::Schema(QueryError::from(e)))
}

/// Takes `node_id` for `token` (see the module doc), waiting at most
/// `quiet` (plus a statement or two) if a recent heartbeat must be watched.
pub(super) fn claim(
    client: &mut postgres::Client,
    node_id: &str,
    token: &str,
    fresh: Duration,
    quiet: Duration,
) -> Result<(), NodeError> {
    let fresh_ms = i64::try_from(fresh.as_millis()).unwrap_or(i64::MAX);
    // A fresh row of another session: `seen_at` as text, exact to the
    // microsecond, to compare after the window.
    let read = |client: &mut postgres::Client| -> Result<Option<String>, NodeError> {
        let row = client
            .query_opt(
                "SELECT seen_at::text FROM nodes
                 WHERE node_id = $1 AND session IS DISTINCT FROM $2
                   AND seen_at > now() - $3::bigint * interval '1 millisecond'",
                &[&node_id, &token, &fresh_ms],
            )
            .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    };
    // Writes our token if the row is absent, stale, or still at `seen`.
    let take = |client: &mut postgres::Client, seen: Option<&str>| -> Result<bool, NodeError> {
        let taken = client
            .query_opt(
                "INSERT INTO nodes (node_id, seen_at, session) VALUES ($1, now(), $2)
                 ON CONFLICT (node_id) DO UPDATE SET seen_at = now(), session = $2
                 WHERE nodes.session IS NOT DISTINCT FROM $2
                    OR nodes.seen_at <= now() - $3::bigint * interval '1 millisecond'
                    OR nodes.seen_at::text = $4
                 RETURNING 1",
                &[&node_id, &token, &fresh_ms, &seen],
            )
            .map_err(db)?;
        Ok(taken.is_some())
    };
    if read(client)?.is_none() && take(client, None)? {
        return Ok(());
    }
    // A fresh heartbeat of another session (or another starter took the
    // id between the read and the take): watch it.
    watch(client, node_id, quiet, read, take)
}

/// Waits `quiet`, then takes the id if its heartbeat stood still.
fn watch(
    client: &mut postgres::Client,
    node_id: &str,
    quiet: Duration,
    read: impl Fn(&mut postgres::Client) -> Result<Option<String>, NodeError>,
    take: impl Fn(&mut postgres::Client, Option<&str>) -> Result<bool, NodeError>,
) -> Result<(), NodeError> {
    let in_use = || NodeError::NodeIdInUse {
        node_id: node_id.to_owned(),
    };
    let Some(before) = read(client)? else {
        return if take(client, None)? {
            Ok(())
        } else {
            Err(in_use())
        };
    };
    std::thread::sleep(quiet);
    match read(client)? {
        Some(after) if after != before => Err(in_use()),
        // Stood still (its holder is gone) or went stale.
        still => {
            if take(client, still.as_deref())? {
                Ok(())
            } else {
                Err(in_use())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hex_and_differ() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
