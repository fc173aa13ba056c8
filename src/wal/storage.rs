//! Where the log's files live: a small trait (as redb has) so tests can put
//! a fault-injecting backend under the log, and the real directory.
//!
//! Invariant: [`FsStorage`] holds an exclusive lock on `DIR/LOCK` for as long
//! as it lives, so two engines (or two processes) never write one log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// fsyncs of files and directories through every [`FsStorage`] of the
/// process.
static FSYNCS: AtomicU64 = AtomicU64::new(0);

/// How many fsyncs (of segment, snapshot and directory) every
/// [`FsStorage`] in this process has made so far: a run's count is the
/// difference between two readings. `duewheel simulate --durable` prints it.
pub fn process_fsyncs() -> u64 {
    FSYNCS.load(Ordering::Relaxed)
}

/// A flat directory of files, as the log needs it.
pub trait Storage: Send + Sync + 'static {
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// A whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// A new empty file (truncated if it exists), open for appending.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, name: &str, len: u64) -> io::Result<()>;
    /// Renames a file (atomic replace). Durable after [`sync_dir`](Self::sync_dir).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file. Durable after [`sync_dir`](Self::sync_dir).
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes creates, renames and removes durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
}

/// A file being appended to.
pub trait StorageFile: Send {
    /// Appends all of `buf`.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenDirError {
    /// Another engine (in this or another process) holds the directory.
    #[error("data directory {dir} is locked by {}", holder(*.pid))]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The holder's process id, as it wrote it into `DIR/LOCK` (`None`
        /// if unreadable, e.g. written by a version before it did).
        pid: Option<u32>,
    },
    /// The directory could not be created or opened.
    #[error("cannot open data directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Who holds a locked directory, for [`OpenDirError::Locked`]'s message.
fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) if pid == std::process::id() => {
            format!("another engine in this process (pid {pid}); shut it down first")
        }
        Some(pid) => format!("process {pid}"),
        None => "another engine or process".into(),
    }
}

/// The real thing: files in one directory.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    /// Held (locked) for the storage's whole life; unlocked on drop.
    _lock: File,
}

impl FsStorage {
    /// Opens (creating if needed) `dir` and takes its lock.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenDirError> {
        let dir = dir.as_ref().to_path_buf();
        let io_err = |source| OpenDirError::Io {
            dir: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let pid = fs::read_to_string(dir.join("LOCK"))
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                return Err(OpenDirError::Locked { dir, pid });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        // The holder's pid, so that a refused opener can name it. Not
        // synced: it only explains a refusal while this process lives.
        lock.set_len(0).map_err(io_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
        Ok(Self { dir, _lock: lock })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

struct FsFile(File);

impl StorageFile for FsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        FSYNCS.fetch_add(1, Ordering::Relaxed);
        self.0.sync_data()
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.path(name))?;
        Ok(Box::new(FsFile(file)))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path(name))?;
        file.set_len(len)?;
        FSYNCS.fetch_add(1, Ordering::Relaxed);
        file.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        FSYNCS.fetch_add(1, Ordering::Relaxed);
        File::open(&self.dir)?.sync_all()
    }
}
