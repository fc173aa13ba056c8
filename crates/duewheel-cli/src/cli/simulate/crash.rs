//! The crash of `--crash-at`: the engine's log on a storage that can be cut.
//!
//! A `kill -9` ends a process at one instant: what it had written to the
//! operating system stays on disk, anything it would have written later
//! never arrives, and everything it held in memory (its wheels, its fired-id
//! memory, the events waiting in its consumer groups) is gone. The
//! simulation cannot kill itself, since the platform's services and their
//! order table (the [`World`](super::world::World)) must survive, so it
//! does the same to the engine from below: the first engine's log sits on a
//! [`CutStorage`] over the real directory, and [`CutStorage::cut`] makes
//! every later write, fsync, create, rename and remove fail. From that
//! instant DIR holds exactly what the engine had written, as after a kill.
//! The dead engine is then dropped: its `Drop` runs the shutdown path, whose
//! final checkpoint and log close are refused at the cut (they are counted,
//! and reported), and its threads end. The cut also releases DIR's lock, as
//! the kernel does for a killed process, so a new engine can open DIR.
//!
//! Invariant: after [`CutStorage::cut`] returns, no byte reaches DIR
//! through this storage. (A write already inside the operating system when
//! the cut comes completes, as it would under a kill.)

use duewheel::wal::{FsStorage, OpenDirError, Storage, StorageFile};
use parking_lot::RwLock;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// What the cut storage and its files share.
#[derive(Debug, Default)]
struct Cut {
    done: AtomicBool,
    /// I/Os refused after the cut.
    refused: AtomicU64,
}

impl Cut {
    fn check(&self) -> io::Result<()> {
        if self.done.load(SeqCst) {
            self.refused.fetch_add(1, SeqCst);
            return Err(io::Error::other("the engine crashed (--crash-at)"));
        }
        Ok(())
    }
}

/// The real directory, until [`cut`](Self::cut).
#[derive(Debug)]
pub(crate) struct CutStorage {
    /// `None` once cut: dropping the [`FsStorage`] releases DIR's lock.
    dir: RwLock<Option<FsStorage>>,
    cut: Arc<Cut>,
}

impl CutStorage {
    /// Opens (and locks) `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, OpenDirError> {
        Ok(Self {
            dir: RwLock::new(Some(FsStorage::open(dir)?)),
            cut: Arc::new(Cut::default()),
        })
    }

    /// From now on every I/O fails; DIR's lock is released.
    pub(crate) fn cut(&self) {
        // Under the write lock: no directory operation is half done.
        let mut dir = self.dir.write();
        self.cut.done.store(true, SeqCst);
        dir.take();
    }

    /// I/Os the engine attempted after the cut.
    pub(crate) fn refused(&self) -> u64 {
        self.cut.refused.load(SeqCst)
    }

    fn with<T>(&self, op: impl FnOnce(&FsStorage) -> io::Result<T>) -> io::Result<T> {
        let dir = self.dir.read();
        self.cut.check()?;
        // The directory goes only with the cut, under the write lock.
        let dir = dir
            .as_ref()
            .ok_or_else(|| io::Error::other("the engine crashed (--crash-at)"))?;
        op(dir)
    }
}

impl Storage for CutStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        self.with(|d| d.list())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.with(|d| d.read(name))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = self.with(|d| d.create(name))?;
        Ok(Box::new(CutFile {
            file,
            cut: self.cut.clone(),
        }))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.with(|d| d.truncate(name, len))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.with(|d| d.rename(from, to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.with(|d| d.remove(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.with(|d| d.sync_dir())
    }
}

/// A log file that refuses writes and syncs after the cut.
struct CutFile {
    file: Box<dyn StorageFile>,
    cut: Arc<Cut>,
}

impl StorageFile for CutFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.cut.check()?;
        self.file.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.cut.check()?;
        self.file.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_cut_nothing_reaches_the_directory_and_its_lock_is_free() {
        let dir = std::env::temp_dir().join(format!("duewheel-cut-{}", std::process::id()));
        let storage = CutStorage::open(&dir).unwrap();
        let mut file = storage.create("a").unwrap();
        file.write_all(b"before").unwrap();
        file.sync().unwrap();
        assert!(FsStorage::open(&dir).is_err(), "locked while alive");
        storage.cut();
        assert!(file.write_all(b"after").is_err());
        assert!(file.sync().is_err());
        assert!(storage.create("b").is_err());
        assert!(storage.remove("a").is_err());
        assert_eq!(storage.refused(), 4);
        let reopened = FsStorage::open(&dir).expect("the cut released the lock");
        assert_eq!(reopened.read("a").unwrap(), b"before");
        assert!(!reopened.list().unwrap().contains(&"b".to_string()));
        drop(reopened);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
