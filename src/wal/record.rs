//! Record framing: how one record sits in a segment or a snapshot.
//!
//! ```text
//! len u32 LE | crc32c u32 LE | seq u64 LE | kind u8 | body (len - 9 bytes)
//! ```
//!
//! `len` counts `seq`, `kind` and `body`; `crc` covers the same bytes.
//! Invariant: [`decode`] checks `len` against the cap and against the bytes
//! actually present *before* touching the body, so arbitrary input never
//! panics and never allocates (it borrows the body from the input).

/// Bytes before the body: len, crc, seq, kind.
pub const HEADER_BYTES: usize = 4 + 4 + 8 + 1;
/// `len` never counts less than seq + kind.
const MIN_LEN: u32 = 9;

/// One decoded record, borrowing its body from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Sequence number (strictly increasing in a log).
    pub seq: u64,
    /// What the body is (the engine's record kinds).
    pub kind: u8,
    /// The payload bytes.
    pub body: &'a [u8],
}

/// Why bytes at some offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header, or than the header's length claims.
    #[error("record truncated")]
    Truncated,
    /// The length is below the minimum or above the cap.
    #[error("record length {0} out of bounds")]
    BadLength(u32),
    /// The checksum does not match.
    #[error("record checksum mismatch")]
    BadChecksum,
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, kind: u8, body: &[u8]) {
    let len = u32::try_from(body.len() + 9).expect("bodies are capped far below 4 GiB");
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `bytes`; returns it and its total size.
pub fn decode(bytes: &[u8], max_record_bytes: u32) -> Result<(Record<'_>, usize), DecodeError> {
    let header = bytes.get(..8).ok_or(DecodeError::Truncated)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(MIN_LEN..=max_record_bytes.saturating_add(MIN_LEN)).contains(&len) {
        return Err(DecodeError::BadLength(len));
    }
    let total = 8 + len as usize;
    let framed = bytes.get(8..total).ok_or(DecodeError::Truncated)?;
    if crc32c::crc32c(framed) != crc {
        return Err(DecodeError::BadChecksum);
    }
    let seq = u64::from_le_bytes(framed[..8].try_into().expect("8 bytes"));
    let record = Record {
        seq,
        kind: framed[8],
        body: &framed[9..],
    };
    Ok((record, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_every_truncation_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 2, b"hello");
        let (record, size) = decode(&buf, 1024).unwrap();
        assert_eq!(
            (record.seq, record.kind, record.body, size),
            (7, 2, &b"hello"[..], buf.len())
        );
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], 1024).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn flipped_bits_and_oversized_lengths_are_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, 1, &[0; 32]);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, 1024).is_err(), "flip at {i}");
        }
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, 1024), Err(DecodeError::BadLength(u32::MAX)));
    }
}
