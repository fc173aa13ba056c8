//! Checkpoint files: the state as of a segment boundary.
//!
//! `snapshot-NNNNNNNNNNNNNNNN.snap` holds every entry needed to rebuild the
//! state that segments numbered below `N` described; recovery replays it,
//! then segments `N` and up.
//!
//! ```text
//! header  magic "DWSNAP\0\x01" (8) | covers u64 | last_seq u64 | crc32c of the 24 bytes before, u32
//! entries records (record framing; seq = 1, 2, ...)
//! trailer magic "DWSNEND\x01" (8) | count u64 | crc32c of every byte before the trailer, u32
//! ```
//!
//! Invariant: a snapshot file exists under its final name only complete and
//! synced (written as `snapshot.tmp`, fsynced, renamed, directory fsynced), and
//! the segments it covers are deleted only after that. A bad final-named
//! snapshot is therefore corruption, never a crash artefact.

use super::record::{self, Record};
use super::storage::StorageFile;
use std::io;

const MAGIC: &[u8; 8] = b"DWSNAP\x00\x01";
const END: &[u8; 8] = b"DWSNEND\x01";
const HEADER_BYTES: usize = 28;
const TRAILER_BYTES: usize = 20;
/// The name a snapshot is written under before it is complete.
pub const TEMP_NAME: &str = "snapshot.tmp";

/// The final name of the snapshot that covers segments below `covers`.
pub fn name(covers: u64) -> String {
    format!("snapshot-{covers:016}.snap")
}

/// The `covers` number of a snapshot file name, if it is one.
pub fn covers(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
    (digits.len() == 16).then(|| digits.parse().ok()).flatten()
}

/// Streams entries into a snapshot file.
pub struct SnapshotWriter {
    file: Box<dyn StorageFile>,
    buf: Vec<u8>,
    crc: u32,
    count: u64,
    max_record_bytes: u32,
}

impl SnapshotWriter {
    pub(crate) fn new(
        mut file: Box<dyn StorageFile>,
        covers: u64,
        last_seq: u64,
        max_record_bytes: u32,
    ) -> io::Result<Self> {
        let mut header = [0; HEADER_BYTES];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&covers.to_le_bytes());
        header[16..24].copy_from_slice(&last_seq.to_le_bytes());
        let crc = crc32c::crc32c(&header[..24]);
        header[24..].copy_from_slice(&crc.to_le_bytes());
        file.write_all(&header)?;
        Ok(Self {
            file,
            buf: Vec::with_capacity(1 << 20),
            crc: crc32c::crc32c(&header),
            count: 0,
            max_record_bytes,
        })
    }

    /// Adds one entry.
    pub fn append(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        if body.len() > self.max_record_bytes as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshot entry over the record cap",
            ));
        }
        self.count += 1;
        record::encode(&mut self.buf, self.count, kind, body);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    /// Entries appended so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn flush(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes the trailer and syncs the file.
    pub(crate) fn finish(mut self) -> io::Result<u64> {
        self.flush()?;
        let mut trailer = [0; TRAILER_BYTES];
        trailer[..8].copy_from_slice(END);
        trailer[8..16].copy_from_slice(&self.count.to_le_bytes());
        trailer[16..].copy_from_slice(&self.crc.to_le_bytes());
        self.file.write_all(&trailer)?;
        self.file.sync()?;
        Ok(self.count)
    }
}

/// Reads a snapshot; calls `visit` for each entry and returns the entry
/// count and the log's last sequence number at the checkpoint. Errors name
/// the offset.
pub fn read(
    bytes: &[u8],
    covers: u64,
    max_record_bytes: u32,
    mut visit: impl FnMut(Record<'_>) -> Result<(), String>,
) -> Result<(u64, u64), (u64, String)> {
    let bad = |offset: usize, why: &str| (offset as u64, why.to_string());
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(bad(0, "snapshot too short"));
    }
    let header = &bytes[..HEADER_BYTES];
    if &header[..8] != MAGIC
        || header[8..16] != covers.to_le_bytes()
        || header[24..] != crc32c::crc32c(&header[..24]).to_le_bytes()
    {
        return Err(bad(0, "bad snapshot header"));
    }
    let body_end = bytes.len() - TRAILER_BYTES;
    let trailer = &bytes[body_end..];
    if &trailer[..8] != END || trailer[16..] != crc32c::crc32c(&bytes[..body_end]).to_le_bytes() {
        return Err(bad(body_end, "bad snapshot trailer or checksum"));
    }
    let count = u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes"));
    let mut at = HEADER_BYTES;
    let mut seen = 0;
    while at < body_end {
        let (r, size) = record::decode(&bytes[at..body_end], max_record_bytes)
            .map_err(|e| bad(at, &e.to_string()))?;
        visit(r).map_err(|why| bad(at, &why))?;
        seen += 1;
        at += size;
    }
    if seen != count {
        return Err(bad(body_end, "snapshot entry count mismatch"));
    }
    let last_seq = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    Ok((count, last_seq))
}
