//! The data directory as the engine holds it: an [`FsStorage`] it can let
//! go of at shutdown, whatever handles outlive the engine.
//!
//! Invariant: once [`OwnedDir::release`] returned, this engine holds no
//! lock on the directory and does nothing more in it: every later call
//! fails with an error instead of touching files another engine may own
//! by then. The engine releases it only after its log is closed (the
//! writer joined, the final checkpoint written), so nothing is cut short.

use crate::sync::RwLock;
use crate::wal::{FsStorage, Storage, StorageFile};
use std::io;

/// An [`FsStorage`] that shutdown can release (see the module docs).
pub(crate) struct OwnedDir {
    storage: RwLock<Option<FsStorage>>,
}

impl OwnedDir {
    pub(crate) fn new(storage: FsStorage) -> Self {
        Self {
            storage: RwLock::new(Some(storage)),
        }
    }

    /// Unlocks the directory (the lock file closes with the storage).
    pub(crate) fn release(&self) {
        drop(self.storage.write().take());
    }

    fn with<T>(&self, f: impl FnOnce(&FsStorage) -> io::Result<T>) -> io::Result<T> {
        match &*self.storage.read() {
            Some(storage) => f(storage),
            None => Err(io::Error::other(
                "the engine was shut down and released its data directory",
            )),
        }
    }
}

impl Storage for OwnedDir {
    fn list(&self) -> io::Result<Vec<String>> {
        self.with(Storage::list)
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.with(|s| s.read(name))
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.with(|s| s.create(name))
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.with(|s| s.truncate(name, len))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.with(|s| s.rename(from, to))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.with(|s| s.remove(name))
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.with(Storage::sync_dir)
    }
}
