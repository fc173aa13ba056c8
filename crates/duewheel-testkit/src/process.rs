//! One `duewheel node` process under a driver's control (the simulator's
//! `--cluster` mode, the process tests, the cluster benchmark): spawned with
//! piped stdin and stdout, its stdout read by a thread of its own and parsed
//! into [`Line`]s, its stderr kept (the last lines in memory, or a file).
//!
//! Invariant: a [`NodeProcess`] that is dropped, whichever way the driver
//! leaves (an error, an early return, a panic), SIGKILLs its process if it
//! still runs, reaps it and joins its reader threads, so no node outlives
//! its driver and goes on holding leases in the database. Every line the
//! process wrote before it died reaches the callback (a pipe keeps what was
//! written), then one `None` for the end of its stdout.

use crate::protocol::{Command, Line};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The longest stdout line read whole; a longer one comes as
/// [`Line::Unknown`] with its head (the node's lines are short).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Stderr lines kept in memory with [`Stderr::Tail`].
pub const STDERR_TAIL_LINES: usize = 20;

/// Where a node's stderr goes.
#[derive(Clone, Debug)]
pub enum Stderr {
    /// Read by a thread that keeps the last [`STDERR_TAIL_LINES`] lines.
    Tail,
    /// Written to this file (created or truncated).
    File(PathBuf),
}

/// A running (or finished) node process. See the module invariant.
pub struct NodeProcess {
    name: String,
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stderr: Stderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl std::fmt::Debug for NodeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("exited", &self.exited)
            .finish_non_exhaustive()
    }
}

impl NodeProcess {
    /// Spawns `bin` with `args` and `--node-id <name>` appended. Each stdout
    /// line is parsed and handed to `on_line` on the reader thread (a torn
    /// last line, written by a process killed mid-write, as
    /// [`Line::Unknown`], so no half line counts as an answer); at the end
    /// of stdout, `None`.
    ///
    /// # Errors
    ///
    /// The spawn's, or a reader thread's that could not start (the process
    /// is then killed).
    pub fn spawn(
        bin: impl Into<PathBuf>,
        args: &[String],
        name: &str,
        stderr: Stderr,
        on_line: impl FnMut(Option<Line>) + Send + 'static,
    ) -> io::Result<Self> {
        let bin = bin.into();
        let stderr_to = match &stderr {
            Stderr::Tail => Stdio::piped(),
            Stderr::File(path) => Stdio::from(File::create(path)?),
        };
        let mut child = std::process::Command::new(&bin)
            .args(args)
            .args(["--node-id", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr_to)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", bin.display())))?;
        let stdin = child.stdin.take().map(BufWriter::new);
        let (stdout, stderr_pipe) = (child.stdout.take(), child.stderr.take());
        // Built first, so that an error below still kills it on drop.
        let mut process = Self {
            name: name.to_string(),
            child,
            stdin,
            stderr,
            tail: Arc::new(Mutex::new(VecDeque::new())),
            readers: Vec::new(),
            exited: None,
        };
        let Some(stdout) = stdout else {
            return Err(io::Error::other("its stdout pipe was not created"));
        };
        let reader = thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || read_stdout(stdout, on_line))?;
        process.readers.push(reader);
        if let Some(pipe) = stderr_pipe {
            let tail = process.tail.clone();
            let reader = thread::Builder::new()
                .name(format!("{name}-stderr"))
                .spawn(move || read_stderr(pipe, &tail))?;
            process.readers.push(reader);
        }
        Ok(process)
    }

    /// The `--node-id` it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `true` while its stdin takes commands (not closed, never broken).
    pub fn can_send(&self) -> bool {
        self.stdin.is_some()
    }

    /// Writes `command` and a newline, buffered until [`flush`](Self::flush).
    /// `false` if stdin is closed or the pipe broke (the process is gone;
    /// its end comes as `None` on stdout): the command was not sent.
    pub fn send(&mut self, command: &Command) -> bool {
        self.write_text(&format!("{command}\n"))
    }

    /// Writes `text` (whole lines) as it is; see [`send`](Self::send).
    pub fn write_text(&mut self, text: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        if stdin.write_all(text.as_bytes()).is_err() {
            self.stdin = None;
            return false;
        }
        true
    }

    /// Flushes what [`send`](Self::send) buffered; `false` (and stdin is
    /// closed) if the pipe broke.
    pub fn flush(&mut self) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        if stdin.flush().is_err() {
            self.stdin = None;
            return false;
        }
        true
    }

    /// Hands stdin over (to a writer thread of the caller's, say, so that a
    /// stopped process's full pipe never blocks the driver). Later sends
    /// answer `false`.
    pub fn take_stdin(&mut self) -> Option<BufWriter<ChildStdin>> {
        self.stdin.take()
    }

    /// Closes stdin *without* flushing: commands still buffered die here,
    /// never sent. A process reading EOF on stdin stops (as on `quit`).
    pub fn close_stdin(&mut self) {
        if let Some(stdin) = self.stdin.take() {
            drop(stdin.into_parts());
        }
    }

    /// Its exit status if it exited (reaped now), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some(status);
            self.stdin = None;
        }
        self.exited
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs it (unless it exited), reaps it and joins its readers: when
    /// this returns, everything it wrote has reached the callback, `None`
    /// included. Commands still buffered are discarded, never sent.
    ///
    /// # Errors
    ///
    /// The kill's or the wait's.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.close_stdin();
        let status = match self.try_wait() {
            Some(status) => status,
            None => {
                self.child.kill()?;
                let status = self.child.wait()?;
                self.exited = Some(status);
                status
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(status)
    }

    /// The last lines it wrote to stderr, joined (`(nothing on stderr)` if
    /// none): from memory ([`Stderr::Tail`]) or the file.
    pub fn stderr_tail(&self) -> String {
        let lines: Vec<String> = match &self.stderr {
            Stderr::Tail => self
                .tail
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned()
                .collect(),
            Stderr::File(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(STDERR_TAIL_LINES)..]
                    .iter()
                    .map(|l| l.to_string())
                    .collect()
            }
        };
        if lines.is_empty() {
            "(nothing on stderr)".into()
        } else {
            lines.join("\n")
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Not flushed: a stuck process must not block the clean-up.
        let _ = self.kill();
    }
}

fn read_stdout(stdout: impl Read, mut on_line: impl FnMut(Option<Line>)) {
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let mut buf = Vec::with_capacity(128);
    loop {
        buf.clear();
        let read = Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf);
        let whole = buf.last() == Some(&b'\n');
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) if !whole && buf.len() > MAX_LINE_BYTES => {
                // Keep the head for the report and drop the rest of it.
                let head = String::from_utf8_lossy(&buf[..200]).into_owned();
                let mut rest = Vec::new();
                if reader.read_until(b'\n', &mut rest).is_err() {
                    break;
                }
                on_line(Some(Line::Unknown(format!(
                    "{head}... (a line over {MAX_LINE_BYTES} bytes)"
                ))));
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches(['\n', '\r']);
                on_line(Some(if whole {
                    Line::parse(text)
                } else {
                    // A torn last line: the process died mid-write.
                    Line::Unknown(text.to_string())
                }));
            }
        }
    }
    on_line(None);
}

fn read_stderr(stderr: impl Read, tail: &Mutex<VecDeque<String>>) {
    for line in BufReader::new(stderr).split(b'\n') {
        let Ok(line) = line else { break };
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(String::from_utf8_lossy(&line).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// `sh` stands in for a node: it ignores `--node-id`, echoes a
    /// protocol line, and dies mid-line.
    #[test]
    fn every_line_then_the_end_reaches_the_callback_and_drop_reaps() {
        let (tx, rx) = mpsc::channel();
        let script = "echo ok 1; printf 'ev 1 1 5 4 2 p\\nfired'; exit 3".to_string();
        let mut p = NodeProcess::spawn(
            "sh",
            &["-c".into(), script, "sh".into()],
            "n1",
            Stderr::Tail,
            move |line| {
                let _ = tx.send(line);
            },
        )
        .unwrap();
        let status = p.wait_timeout(Duration::from_secs(30)).expect("exits");
        assert_eq!(status.code(), Some(3));
        p.kill().unwrap();
        let lines: Vec<Option<Line>> = rx.try_iter().collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0], Some(Line::Ok(1)));
        assert!(matches!(&lines[1], Some(Line::Ev(e)) if e.epoch == 2));
        // The torn line is not an answer.
        assert_eq!(lines[2], Some(Line::Unknown("fired".into())));
        assert_eq!(lines[3], None);
        assert!(!p.send(&Command::Stats));
    }

    #[test]
    fn kill_sigkills_a_running_process_and_reaps_it() {
        use std::os::unix::process::ExitStatusExt;
        let (tx, rx) = mpsc::channel();
        let mut p = NodeProcess::spawn(
            "sh",
            &[
                "-c".into(),
                "echo ready n1; exec sleep 600".into(),
                "sh".into(),
            ],
            "n1",
            Stderr::Tail,
            move |line| {
                let _ = tx.send(line);
            },
        )
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(first, Some(Line::Ready("n1".into())));
        assert!(p.try_wait().is_none(), "still running");
        let status = p.kill().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        let rest: Vec<Option<Line>> = rx.try_iter().collect();
        assert_eq!(rest, [None], "the end of stdout, after the kill");
    }
}
