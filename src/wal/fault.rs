//! An in-memory [`Storage`] that fails on command, for crash tests without
//! pulling a plug (as redb's fuzzer does with an I/O countdown).
//!
//! Every file has a synced prefix and an unsynced tail. [`FaultStorage::power_loss`]
//! drops every unsynced byte; [`FaultStorage::fail_at`] makes the k-th I/O
//! (counting every write, sync, create, truncate, rename, remove and
//! directory sync) fail, or tear (persist only a prefix of a write).
//! Simplification, stated: directory operations are durable at once.

use super::storage::{Storage, StorageFile};
use crate::sync::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

/// What the chosen I/O does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with an I/O error, changing nothing.
    Error,
    /// A write keeps only its first `n` bytes (unsynced), then fails.
    Tear(usize),
}

#[derive(Clone, Default)]
struct MemFile {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, MemFile>,
    io_count: u64,
    fault: Option<(u64, Fault)>,
}

impl State {
    /// Counts one I/O and says whether it is the one that must fail.
    fn tick(&mut self) -> Option<Fault> {
        let n = self.io_count;
        self.io_count += 1;
        match self.fault {
            Some((k, fault)) if k == n => Some(fault),
            _ => None,
        }
    }
}

fn eio() -> io::Error {
    io::Error::other("injected I/O error")
}

/// In-memory, fault-injecting storage. Clones share the same files.
#[derive(Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<State>>,
}

impl FaultStorage {
    /// Empty storage with no fault armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes I/O number `k` (0-based, counted from creation) fail.
    pub fn fail_at(&self, k: u64, fault: Fault) {
        self.state.lock().fault = Some((k, fault));
    }

    /// I/O operations performed so far.
    pub fn io_count(&self) -> u64 {
        self.state.lock().io_count
    }

    /// Drops every byte not yet synced, in every file.
    pub fn power_loss(&self) {
        for file in self.state.lock().files.values_mut() {
            file.data.truncate(file.synced);
        }
    }

    /// A fresh storage holding what survives a power loss now, with no fault
    /// armed and the I/O count at zero: the machine after a reboot.
    pub fn reboot(&self) -> Self {
        let files = self
            .state
            .lock()
            .files
            .iter()
            .map(|(name, f)| {
                let data = f.data[..f.synced].to_vec();
                let synced = data.len();
                (name.clone(), MemFile { data, synced })
            })
            .collect();
        Self {
            state: Arc::new(Mutex::new(State {
                files,
                ..State::default()
            })),
        }
    }

    /// Overwrites one byte of a file (to simulate corruption).
    pub fn flip_byte(&self, name: &str, offset: usize) {
        if let Some(byte) = self
            .state
            .lock()
            .files
            .get_mut(name)
            .and_then(|f| f.data.get_mut(offset))
        {
            *byte ^= 0xff;
        }
    }

    /// Cuts a file to `len` bytes (to simulate a torn tail), durably.
    pub fn cut(&self, name: &str, len: usize) {
        if let Some(f) = self.state.lock().files.get_mut(name) {
            f.data.truncate(len);
            f.synced = f.synced.min(len);
        }
    }

    /// The length of a file, if it exists.
    pub fn len_of(&self, name: &str) -> Option<usize> {
        self.state.lock().files.get(name).map(|f| f.data.len())
    }
}

struct MemHandle {
    state: Arc<Mutex<State>>,
    name: String,
}

impl StorageFile for MemHandle {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock();
        let fault = state.tick();
        let file = state.files.get_mut(&self.name).ok_or_else(eio)?;
        match fault {
            None => {
                file.data.extend_from_slice(buf);
                Ok(())
            }
            Some(Fault::Error) => Err(eio()),
            Some(Fault::Tear(n)) => {
                file.data.extend_from_slice(&buf[..n.min(buf.len())]);
                Err(eio())
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.tick().is_some() {
            return Err(eio());
        }
        let file = state.files.get_mut(&self.name).ok_or_else(eio)?;
        file.synced = file.data.len();
        Ok(())
    }
}

impl Storage for FaultStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().files.keys().cloned().collect())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.state
            .lock()
            .files
            .get(name)
            .map(|f| f.data.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.state.lock();
        if state.tick().is_some() {
            return Err(eio());
        }
        state.files.insert(name.to_string(), MemFile::default());
        Ok(Box::new(MemHandle {
            state: self.state.clone(),
            name: name.to_string(),
        }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.tick().is_some() {
            return Err(eio());
        }
        let file = state.files.get_mut(name).ok_or_else(eio)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        file.data.truncate(len);
        file.synced = file.synced.min(len);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.tick().is_some() {
            return Err(eio());
        }
        let file = state.files.remove(from).ok_or_else(eio)?;
        state.files.insert(to.to_string(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.tick().is_some() {
            return Err(eio());
        }
        state.files.remove(name).map(drop).ok_or_else(eio)
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.tick().is_some() {
            return Err(eio());
        }
        Ok(())
    }
}
