//! The log's on-disk layout as `docs/WAL_FORMAT.md` documents it. The
//! layer itself is private (a layout, not an API), so the tests that build
//! or inspect files by hand hold the document to its word here.
#![allow(dead_code)] // each test file uses part of it

/// Size of a segment header ("Segment").
pub(crate) const HEADER_BYTES: usize = 20;

const MAGIC: &[u8; 8] = b"DWWAL\x00\x00\x01";

/// The file name of segment `number`: `wal-` and 16 zero-padded digits.
pub(crate) fn name(number: u64) -> String {
    format!("wal-{number:016}.log")
}

/// The number of a segment file name, if it is one.
pub(crate) fn number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (digits.len() == 16).then(|| digits.parse().ok()).flatten()
}

/// A segment's header: magic (8) | number u64 LE | crc32c of those 16, u32 LE.
pub(crate) fn header(number: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&number.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends one record ("Record"): `len u32 LE | crc u32 LE | seq u64 LE |
/// kind u8 | body`, `len` counting from `seq`, the crc32c over the same.
pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, kind: u8, body: &[u8]) {
    let len = u32::try_from(body.len() + 9).unwrap();
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The segment number a snapshot file name says it covers up to
/// ("Snapshot": `snapshot-` and 16 zero-padded digits, `.snap`).
pub(crate) fn snapshot_covers(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 16).then(|| digits.parse().ok()).flatten()
}
