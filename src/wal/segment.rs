//! Segment files: naming, header, and reading one back.
//!
//! A segment is `wal-NNNNNNNNNNNNNNNN.log` (its number, zero-padded so names
//! sort), a 20-byte header, then records ([`super::record`]) with strictly
//! increasing sequence numbers:
//!
//! ```text
//! magic "DWWAL\0\0\x01" (8) | segment number u64 LE | crc32c of the 16 bytes before, u32 LE
//! ```
//!
//! Invariants of [`scan`]:
//! - a record that fails validation is a **torn tail** only in the last
//!   segment and only if no valid record follows it there (a crash can leave
//!   a partial last write, never a good record after a bad one that was
//!   synced); anything else is **corruption**, reported with the segment and
//!   offset, never skipped;
//! - sequence numbers are **dense**: each record's is one more than the one
//!   before it (in this segment, the segment before, or the snapshot), so a
//!   missing record, segment or snapshot shows as a gap, reported with the
//!   missing range; a checksummed record is never a crash artefact, so a gap
//!   is corruption even at the very end of the log;
//! - a file of at most [`HEADER_BYTES`] bytes without a valid header is a
//!   segment whose creation a crash interrupted ([`End::Headerless`]): it
//!   never held a record, wherever it sits.

use super::record::{self, Record};

const MAGIC: &[u8; 8] = b"DWWAL\x00\x00\x01";
/// Size of a segment header.
pub const HEADER_BYTES: usize = 20;

/// The file name of segment `number`.
pub fn name(number: u64) -> String {
    format!("wal-{number:016}.log")
}

/// The number of a segment file name, if it is one.
pub fn number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (digits.len() == 16).then(|| digits.parse().ok()).flatten()
}

/// The header of segment `number`.
pub fn header(number: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&number.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

fn header_ok(bytes: &[u8], number: u64) -> bool {
    bytes.get(..HEADER_BYTES) == Some(&header(number)[..])
}

/// How a segment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte was a valid record.
    Clean,
    /// At most a header's worth of bytes and no valid header: a crash
    /// between creating the file and syncing its header. It holds no record.
    Headerless {
        /// Its length.
        len: u64,
    },
    /// A torn tail starts at `offset`; `dropped` bytes follow it.
    Torn {
        /// Where the tail starts.
        offset: u64,
        /// Bytes from there to the end of the file.
        dropped: u64,
    },
}

/// A bad record or header that is not a torn tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// Byte offset in the segment.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// Reads segment `number` from `bytes`, calling `visit` for each record in
/// order. `last_seq` is the sequence number before this segment and is
/// advanced past each record.
pub fn scan(
    bytes: &[u8],
    number: u64,
    is_last: bool,
    max_record_bytes: u32,
    last_seq: &mut u64,
    mut visit: impl FnMut(Record<'_>) -> Result<(), String>,
) -> Result<End, Corrupt> {
    if !header_ok(bytes, number) {
        // A crash right after creating a segment can leave its header
        // unwritten or partial; nothing in it was ever acknowledged. Records
        // go in only after the header is synced, so a longer file with a bad
        // header is damage, not a crash.
        if bytes.len() <= HEADER_BYTES {
            return Ok(End::Headerless {
                len: bytes.len() as u64,
            });
        }
        return Err(Corrupt {
            offset: 0,
            reason: "bad segment header".into(),
        });
    }
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        let problem = match record::decode(&bytes[at..], max_record_bytes) {
            Ok((r, _)) if r.seq != last_seq.saturating_add(1) => {
                // A whole checksummed record: not a torn write, wherever it is.
                return Err(Corrupt {
                    offset: at as u64,
                    reason: if r.seq > *last_seq {
                        format!(
                            "sequence numbers {}..={} missing before this record",
                            *last_seq + 1,
                            r.seq - 1
                        )
                    } else {
                        format!("sequence {} after {}", r.seq, *last_seq)
                    },
                });
            }
            Ok((r, size)) => {
                visit(r).map_err(|reason| Corrupt {
                    offset: at as u64,
                    reason,
                })?;
                *last_seq = r.seq;
                at += size;
                continue;
            }
            Err(e) => e.to_string(),
        };
        if is_last && !valid_record_after(bytes, at + 1, *last_seq, max_record_bytes) {
            return Ok(End::Torn {
                offset: at as u64,
                dropped: (bytes.len() - at) as u64,
            });
        }
        return Err(Corrupt {
            offset: at as u64,
            reason: problem,
        });
    }
    Ok(End::Clean)
}

/// Whether a plausible, checksummed record with a later sequence number
/// starts anywhere at or after `from`. Sequence numbers are dense within a
/// log, so only a small window above `last_seq` is plausible; the checksum
/// is computed only for candidates that pass that cheap test.
fn valid_record_after(bytes: &[u8], from: usize, last_seq: u64, max_record_bytes: u32) -> bool {
    const WINDOW: u64 = 1 << 20;
    (from..bytes.len()).any(|at| {
        let seq = bytes
            .get(at + 8..at + 16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        seq.is_some_and(|s| s > last_seq && s - last_seq <= WINDOW)
            && matches!(record::decode(&bytes[at..], max_record_bytes), Ok((r, _)) if r.seq > last_seq)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: &[&[u8]]) -> Vec<u8> {
        let mut bytes = header(3).to_vec();
        for (i, body) in records.iter().enumerate() {
            record::encode(&mut bytes, i as u64 + 1, 1, body);
        }
        bytes
    }

    #[test]
    fn a_file_shorter_than_a_header_without_one_is_headerless_anywhere() {
        for len in 0..=HEADER_BYTES {
            let bytes = &header(4)[..len];
            for is_last in [true, false] {
                let mut seq = 0;
                let end = scan(bytes, 3, is_last, 1024, &mut seq, |_| Ok(()));
                assert_eq!(end, Ok(End::Headerless { len: len as u64 }));
            }
        }
        let mut long = vec![0; HEADER_BYTES + 1];
        long[..HEADER_BYTES].copy_from_slice(&header(4));
        let mut seq = 0;
        assert!(scan(&long, 3, true, 1024, &mut seq, |_| Ok(())).is_err());
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(name(42), "wal-0000000000000042.log");
        assert_eq!(number(&name(42)), Some(42));
        assert_eq!(number("wal-42.log"), None);
    }

    #[test]
    fn a_cut_tail_is_torn_but_a_bad_middle_is_corrupt() {
        let bytes = segment(&[b"one", b"two", b"three"]);
        let mut seq = 0;
        assert_eq!(
            scan(&bytes, 3, true, 1024, &mut seq, |_| Ok(())),
            Ok(End::Clean)
        );
        for cut in HEADER_BYTES + 1..bytes.len() {
            let mut seq = 0;
            let end = scan(&bytes[..cut], 3, true, 1024, &mut seq, |_| Ok(())).unwrap();
            assert!(matches!(end, End::Torn { .. } | End::Clean), "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[HEADER_BYTES + 10] ^= 1; // inside the first record
        let mut seq = 0;
        let err = scan(&bad, 3, true, 1024, &mut seq, |_| Ok(())).unwrap_err();
        assert_eq!(err.offset, HEADER_BYTES as u64);
        // A record that repeats a sequence number is corruption, even last.
        let mut seq = 1;
        let err = scan(&bytes, 3, true, 1024, &mut seq, |_| Ok(())).unwrap_err();
        assert_eq!(err.offset, HEADER_BYTES as u64);
        let mut seq = 0;
        let mut gap = header(3).to_vec();
        record::encode(&mut gap, 1, 1, b"one");
        record::encode(&mut gap, 4, 1, b"four");
        let err = scan(&gap, 3, true, 1024, &mut seq, |_| Ok(())).unwrap_err();
        assert!(err.reason.contains("2..=3 missing"), "{}", err.reason);
        // In an earlier segment even a cut tail is corruption.
        let mut seq = 0;
        assert!(
            scan(&bytes[..bytes.len() - 1], 3, false, 1024, &mut seq, |_| Ok(
                ()
            ))
            .is_err()
        );
    }
}
