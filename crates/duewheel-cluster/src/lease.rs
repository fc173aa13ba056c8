//! Shard leases: who should own a shard, and the epoch that fences its
//! writes.
//!
//! Time only decides who may *try* to own a shard; the epoch decides whether
//! a write is valid (Temporal's `range_id`). So:
//!
//! - **acquire** succeeds if the shard has no owner, is already ours, or its
//!   lease expired, and always bumps the epoch, even when re-acquiring our own
//!   shard after a restart: the previous incarnation of this node may still
//!   have writes in flight, and they must be fenced off.
//! - Expiry is compared with PostgreSQL's `now()` only. Node clocks never
//!   decide validity, so clock skew between nodes cannot make two owners.
//! - **renew** extends the lease without bumping and reports whether we are
//!   still the owner at our epoch; `false` means stop the shard at once.
//!   A renew that arrives after the lease expired but before anyone took the
//!   shard succeeds: nobody else wrote with a newer epoch, so nothing was
//!   unsafe (acquire and renew serialise on the shard row).
//! - **release** (on shutdown) clears the owner, expires the lease and bumps
//!   the epoch, so the next owner need not wait out the TTL and any write
//!   still in flight under the released epoch is fenced.
//!
//! Leases are rows of `shards`; see [`schema`](super::schema).

use std::time::Duration;

use super::error::LeaseError;
use super::store::PgStore;

/// The longest owner name accepted, in bytes.
pub const MAX_OWNER_BYTES: usize = 255;

/// The longest lease accepted. Longer leases only delay takeover after a
/// crash; the design renews every 2–3 s with a 10 s TTL.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

/// Ownership of one shard at one epoch, from [`PgStore::acquire`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    shard: u32,
    epoch: u64,
    owner: String,
}

impl Lease {
    /// The shard owned.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The epoch that fences this owner's writes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The owner's name, as given to `acquire`.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// The outcome of [`PgStore::acquire`].
#[must_use = "the shard may be owned by another node"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The shard is ours at a new epoch. Load it before firing anything.
    Acquired(Lease),
    /// Another owner holds a live lease.
    Held {
        /// Who held it when we looked (`None` if its lease ran out in
        /// between; try again).
        owner: Option<String>,
    },
}

impl PgStore {
    /// Takes `shard` for `owner` with a lease of `ttl`, if it is free, expired
    /// or already `owner`'s. Always bumps the epoch.
    pub fn acquire(
        &mut self,
        shard: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Acquire, LeaseError> {
        self.check_shard(shard)?;
        check_owner(owner)?;
        let ttl_ms = ttl_ms(ttl)?;
        if let Some(epoch) = self.db.acquire_one(owner, shard, ttl_ms)? {
            return Ok(Acquire::Acquired(Lease {
                shard,
                epoch,
                owner: owner.to_owned(),
            }));
        }
        let owner = self.db.owner_of(shard)?;
        Ok(Acquire::Held { owner })
    }

    /// Extends `lease` to `ttl` from the database's `now()`. `Ok(false)`: the
    /// shard was taken over or released; stop it at once (its writes are
    /// already fenced).
    pub fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<bool, LeaseError> {
        self.check_shard(lease.shard)?;
        let ttl_ms = ttl_ms(ttl)?;
        let kept = self
            .db
            .renew(&lease.owner, &[(lease.shard, lease.epoch)], ttl_ms)?;
        Ok(kept == [lease.shard])
    }

    /// Gives `lease` up: the shard is free for anyone at once, and its epoch
    /// is bumped so writes still in flight under `lease` are fenced.
    /// `Ok(false)`: it had already been taken over.
    pub fn release(&mut self, lease: &Lease) -> Result<bool, LeaseError> {
        self.check_shard(lease.shard)?;
        let released = self
            .db
            .release(&lease.owner, &[(lease.shard, lease.epoch)])?;
        Ok(released == [lease.shard])
    }

    fn check_shard(&self, shard: u32) -> Result<(), LeaseError> {
        if self.map.contains(shard) {
            Ok(())
        } else {
            Err(LeaseError::UnknownShard {
                shard,
                shards: self.map.shards(),
            })
        }
    }
}

fn check_owner(owner: &str) -> Result<(), LeaseError> {
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES {
        return Err(LeaseError::Invalid("owner must be 1..=255 bytes"));
    }
    // PostgreSQL text cannot hold NUL.
    if owner.contains('\0') {
        return Err(LeaseError::Invalid("owner must not contain NUL"));
    }
    Ok(())
}

fn ttl_ms(ttl: Duration) -> Result<i64, LeaseError> {
    if ttl < Duration::from_millis(1) || ttl > MAX_LEASE_TTL {
        return Err(LeaseError::Invalid("ttl must be 1 ms..=1 h"));
    }
    // <= 3,600,000 ms, fits.
    Ok(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}
