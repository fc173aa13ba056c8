//! The journal record: a timer's whole state as the write-ahead log stores
//! it, independent of how the engine lays timers out in memory.
//!
//! The engine writes a record for every accepted change ([`Journal`]) and
//! the durable mode (`durable`) replays them at open. Both depend on this
//! module and neither on the other's types, so the in-memory entry can change
//! shape without changing the disk format.
//!
//! Invariant: the byte layout below is the one written since the first
//! durable version, so every existing log still recovers; any change to it
//! needs a new record kind, never a reinterpretation of an old one.
//!
//! Upsert body layout (little-endian):
//!
//! ```text
//! id_len u32 | id | deadline_ms u64 | due_ms u64 | attempt u32 | snoozes u8 |
//! flags u8 | acked u64 | n u8 | fired u8 | n × offset_ms u64 |
//! [max_attempts u16, if flags bit 2] | payload
//! ```
//!
//! Flags: bit 0, in flight (its `Expired` awaits acks); bit 1, dead-lettered
//! (its `DeadLetter` event awaits the dead-letter group's ack; bit 0 is set
//! too); bit 2, the timer has its own attempt bound, written after the
//! reminder offsets. A record with neither bit 1 nor bit 2 is byte for byte
//! the first version's, so every old log still recovers (a log with dead
//! letters or own bounds is refused as malformed by versions before them).
//!
//! A remove body is the encoded id alone.

use crate::codec::{Codec, DecodeError};
use crate::error::StorageError;

/// The most reminders one record (and so one timer) may carry.
pub(crate) const MAX_REMINDERS: usize = 4;

/// Record kind: a timer's whole state.
pub(crate) const KIND_UPSERT: u8 = 1;
/// Upsert flag: the `Expired` event is in flight.
const FLAG_IN_FLIGHT: u8 = 1;
/// Upsert flag: dead-lettered.
const FLAG_DEAD_LETTER: u8 = 1 << 1;
/// Upsert flag: a `max_attempts u16` follows the reminder offsets.
const FLAG_MAX_ATTEMPTS: u8 = 1 << 2;

/// Record kind: a timer's end.
pub(crate) const KIND_REMOVE: u8 = 2;

/// Everything of a timer but its id and payload, as the journal stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerState {
    pub(crate) deadline_ms: u64,
    /// When the timer is next due: its next stage, or once in flight its
    /// redelivery time, or a snooze's end.
    pub(crate) due_ms: u64,
    pub(crate) attempt: u32,
    pub(crate) snoozes: u8,
    /// `Some(acked groups)` while its `Expired` event awaits acks.
    pub(crate) flight: Option<u64>,
    /// Reminder offsets before the deadline, earliest reminder first; the
    /// first `reminders_len` count.
    pub(crate) reminders_before_ms: [u64; MAX_REMINDERS],
    pub(crate) reminders_len: u8,
    /// How many reminders already fired.
    pub(crate) reminders_fired: u8,
    /// The timer's own attempt bound; 0 for the engine's.
    pub(crate) max_attempts: u16,
    /// Dead-lettered: its `DeadLetter` event awaits the dead-letter group's
    /// ack (`flight` holds that group's ack).
    pub(crate) dead_letter: bool,
}

impl TimerState {
    /// A fresh timer due at its deadline: no reminders, never fired.
    pub(crate) const fn plain(deadline_ms: u64) -> Self {
        Self {
            deadline_ms,
            due_ms: deadline_ms,
            attempt: 1,
            snoozes: 0,
            flight: None,
            reminders_before_ms: [0; MAX_REMINDERS],
            reminders_len: 0,
            reminders_fired: 0,
            max_attempts: 0,
            dead_letter: false,
        }
    }

    /// The reminder offsets that count.
    pub(crate) fn reminders(&self) -> &[u64] {
        &self.reminders_before_ms[..usize::from(self.reminders_len)]
    }
}

/// A timer decoded from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TimerRecord<K, P> {
    pub(crate) id: K,
    pub(crate) payload: P,
    pub(crate) state: TimerState,
}

/// Records every accepted change so it survives a restart. `upsert` writes
/// a timer's whole state, `remove` its end; replay is last-writer-wins per
/// id. Both only buffer (they never wait on I/O, so they may be called under
/// the shard lock); `wait` blocks until a record is durable.
pub(crate) trait Journal<K, P>: Send + Sync {
    fn upsert(&self, id: &K, payload: &P, state: &TimerState) -> Result<u64, StorageError>;
    fn remove(&self, id: &K) -> Result<u64, StorageError>;
    fn wait(&self, seq: u64) -> Result<(), StorageError>;
    /// [`wait`](Self::wait) as a future: the commit wait of the `_async`
    /// calls.
    #[cfg(feature = "tokio")]
    fn wait_async(
        &self,
        seq: u64,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send + '_>>;
    /// `true` once the log failed: the engine is fail-stopped.
    fn failed(&self) -> bool;
    /// Holds the log's writer while a batch appends its records, so they
    /// share one write and one fsync (see `Wal::hold_wakes`); `None` for a
    /// journal with nothing to hold.
    fn hold(&self) -> Option<crate::wal::WakeHold<'_>> {
        None
    }
}

/// Appends an upsert body (see the module docs) to `out`.
pub(crate) fn encode_upsert<K: Codec, P: Codec>(
    id: &K,
    payload: &P,
    state: &TimerState,
    out: &mut Vec<u8>,
) {
    let id_at = out.len();
    out.extend_from_slice(&[0; 4]);
    id.encode(out);
    let id_len = u32::try_from(out.len() - id_at - 4).unwrap_or(u32::MAX);
    out[id_at..id_at + 4].copy_from_slice(&id_len.to_le_bytes());
    out.extend_from_slice(&state.deadline_ms.to_le_bytes());
    out.extend_from_slice(&state.due_ms.to_le_bytes());
    out.extend_from_slice(&state.attempt.to_le_bytes());
    out.push(state.snoozes);
    let mut flags = 0;
    if state.flight.is_some() {
        flags |= FLAG_IN_FLIGHT;
    }
    if state.dead_letter {
        flags |= FLAG_DEAD_LETTER;
    }
    if state.max_attempts != 0 {
        flags |= FLAG_MAX_ATTEMPTS;
    }
    out.push(flags);
    out.extend_from_slice(&state.flight.unwrap_or(0).to_le_bytes());
    out.push(state.reminders_len);
    out.push(state.reminders_fired);
    for offset in state.reminders() {
        out.extend_from_slice(&offset.to_le_bytes());
    }
    if state.max_attempts != 0 {
        out.extend_from_slice(&state.max_attempts.to_le_bytes());
    }
    payload.encode(out);
}

/// Reads a little-endian body front to back; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| DecodeError::new("record body too short"))?;
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::decode(self.take(4)?)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        u64::decode(self.take(8)?)
    }
}

/// Decodes an upsert body; any malformed body is an error, never a panic.
pub(crate) fn decode_upsert<K: Codec, P: Codec>(
    body: &[u8],
) -> Result<TimerRecord<K, P>, DecodeError> {
    let mut r = Reader(body);
    let id_len = r.u32()? as usize;
    let id = K::decode(r.take(id_len)?)?;
    let deadline_ms = r.u64()?;
    let due_ms = r.u64()?;
    let attempt = r.u32()?;
    let snoozes = r.u8()?;
    let flags = r.u8()?;
    if flags & !(FLAG_IN_FLIGHT | FLAG_DEAD_LETTER | FLAG_MAX_ATTEMPTS) != 0
        || (flags & FLAG_DEAD_LETTER != 0 && flags & FLAG_IN_FLIGHT == 0)
    {
        return Err(DecodeError::new("bad flags"));
    }
    let acked = r.u64()?;
    let n = r.u8()?;
    let fired = r.u8()?;
    if usize::from(n) > MAX_REMINDERS {
        return Err(DecodeError::new("too many reminders"));
    }
    if fired > n {
        return Err(DecodeError::new("malformed reminders"));
    }
    let mut before_ms = [0u64; MAX_REMINDERS];
    for offset in &mut before_ms[..usize::from(n)] {
        *offset = r.u64()?;
    }
    // Written earliest reminder first (largest offset first); a record that
    // is not is sorted rather than refused, as the first version did.
    before_ms[..usize::from(n)].sort_unstable_by(|a, b| b.cmp(a));
    let max_attempts = if flags & FLAG_MAX_ATTEMPTS != 0 {
        u16::from_le_bytes([r.u8()?, r.u8()?])
    } else {
        0
    };
    let payload = P::decode(r.0)?;
    Ok(TimerRecord {
        id,
        payload,
        state: TimerState {
            deadline_ms,
            due_ms,
            attempt,
            snoozes,
            flight: (flags & FLAG_IN_FLIGHT != 0).then_some(acked),
            reminders_before_ms: before_ms,
            reminders_len: n,
            reminders_fired: fired,
            max_attempts,
            dead_letter: flags & FLAG_DEAD_LETTER != 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upsert_round_trips_with_reminders_and_flight() {
        let mut state = TimerState::plain(1_000);
        state.due_ms = 900;
        state.attempt = 3;
        state.snoozes = 2;
        state.flight = Some(0b101);
        state.reminders_before_ms[..2].copy_from_slice(&[300, 100]);
        state.reminders_len = 2;
        state.reminders_fired = 1;
        let mut body = Vec::new();
        encode_upsert(&7u64, &9u64, &state, &mut body);
        let record = decode_upsert::<u64, u64>(&body).unwrap();
        assert_eq!(
            record,
            TimerRecord {
                id: 7,
                payload: 9,
                state
            }
        );
    }

    /// The bytes of a record as the first durable version wrote them
    /// (id 7, payload 9, deadline 1000, due 900, attempt 2, in flight with
    /// group 0 acked, one reminder 100 ms before, not fired): still read.
    #[test]
    fn a_record_in_the_first_versions_layout_still_decodes() {
        let mut body = Vec::new();
        body.extend_from_slice(&8u32.to_le_bytes());
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&1_000u64.to_le_bytes());
        body.extend_from_slice(&900u64.to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.push(0);
        body.push(1);
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(1);
        body.push(0);
        body.extend_from_slice(&100u64.to_le_bytes());
        body.extend_from_slice(&9u64.to_le_bytes());
        let record = decode_upsert::<u64, u64>(&body).unwrap();
        assert_eq!((record.id, record.payload), (7, 9));
        assert_eq!(record.state.flight, Some(1));
        assert_eq!(record.state.reminders(), [100]);
        assert_eq!((record.state.due_ms, record.state.attempt), (900, 2));
    }

    #[test]
    fn a_dead_letter_with_its_own_bound_round_trips() {
        let mut state = TimerState::plain(1_000);
        state.flight = Some(0);
        state.dead_letter = true;
        state.max_attempts = 3;
        state.attempt = 3;
        state.reminders_before_ms[0] = 50;
        state.reminders_len = 1;
        state.reminders_fired = 1;
        let mut body = Vec::new();
        encode_upsert(&7u64, &9u64, &state, &mut body);
        let record = decode_upsert::<u64, u64>(&body).unwrap();
        assert_eq!((record.id, record.payload, record.state), (7, 9, state));
    }

    #[test]
    fn a_plain_record_keeps_the_first_versions_bytes() {
        let mut body = Vec::new();
        encode_upsert(&7u64, &9u64, &TimerState::plain(1_000), &mut body);
        assert_eq!(body.len(), 4 + 8 + 8 + 8 + 4 + 1 + 1 + 8 + 1 + 1 + 8);
        assert_eq!(body[4 + 8 + 8 + 8 + 4 + 1], 0, "no flag set");
    }

    #[test]
    fn too_many_reminders_in_a_record_is_a_decode_error_not_a_panic() {
        let mut body = Vec::new();
        encode_upsert(&1u64, &10u64, &TimerState::plain(100), &mut body);
        // The reminder count sits right after id_len, id, deadline, due,
        // attempt, snoozes, flags and acked.
        let at = 4 + 8 + 8 + 8 + 4 + 1 + 1 + 8;
        body[at] = u8::try_from(MAX_REMINDERS + 1).unwrap();
        assert!(decode_upsert::<u64, u64>(&body).is_err());
    }
}
