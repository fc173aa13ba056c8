//! The order table's own durability: an append-only file of effects
//! (`orders.jsonl` in the data directory), one JSON line each, fsynced
//! before the service answers or acks the expiry that caused it.
//!
//! Invariant: the table after a restart is exactly the effects whose line
//! reached the disk whole, replayed in order. Each effect is idempotent by
//! order id (a second `cancelled` of an order already cancelled changes
//! nothing), so an expiry redelivered after a crash, at least once as the
//! engine promises, is harmless. A torn last line (the process died while
//! writing it) was never fsynced, so nothing was answered on it: it is cut
//! off at open.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

/// One change to the order table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub(crate) enum Effect {
    /// An order reserved `qty` units, due at `deadline_ms`.
    Placed { id: u64, qty: u64, deadline_ms: u64 },
    /// The engine refused the order's timer: its stock went back.
    Dropped { id: u64 },
    /// The payment beat the expiry (the engine's cancel was durable).
    Paid { id: u64 },
    /// The expiry cancelled the unpaid order and its stock went back.
    Cancelled { id: u64 },
}

/// The effects file, open for appending.
pub(crate) struct Effects {
    file: File,
}

impl Effects {
    /// Opens (or creates) `path`, cuts a torn last line, and returns the
    /// file with every whole effect in it, in order.
    pub(crate) fn open(path: &Path) -> io::Result<(Self, Vec<Effect>)> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let mut effects = Vec::new();
        let mut whole_bytes = 0u64;
        let mut reader = BufReader::new(&file);
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line)?;
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            match serde_json::from_str(line.trim_end()) {
                Ok(effect) => effects.push(effect),
                // Only the last line can be torn; a bad line inside is
                // corruption, and the service refuses to guess.
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            whole_bytes += read as u64;
        }
        drop(reader);
        if file.metadata()?.len() != whole_bytes {
            file.set_len(whole_bytes)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok((Self { file }, effects))
    }

    /// Appends `effects` and fsyncs them: one write and one fsync for the
    /// whole batch.
    pub(crate) fn append(&mut self, effects: &[Effect]) -> io::Result<()> {
        if effects.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for effect in effects {
            serde_json::to_writer(&mut buf, effect).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }
}
