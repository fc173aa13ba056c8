//! The `duewheel node` processes of `simulate --cluster`: spawning them,
//! writing their commands, reading their answers, killing them.
//!
//! The protocol (`duewheel node`'s stdin and stdout, one line each way) is
//! `duewheel_testkit::protocol`'s: the driver writes [`Command`]s and sees
//! [`Line`] values.
//!
//! Invariant: every child spawned here is killed (SIGKILL) and reaped when
//! the [`Nodes`] is dropped, unless it already exited, whichever way the
//! driver leaves (an error, an early return, a panic): no node outlives
//! the simulation and goes on holding leases in the database.
//!
//! One reader thread per pipe: stdout lines are parsed and sent, with the
//! node's index and the wall-clock moment they were read, to one channel
//! the driver drains; `Line::Eof` closes a node's stream (after a kill it
//! says that everything the node wrote before it died has been read, since
//! a pipe keeps what was written). Stderr keeps its last lines for error
//! messages.

use crossbeam_channel::{Receiver, Sender, unbounded};
pub(super) use duewheel_testkit::protocol::{Command, Ev, Line};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Last stderr lines kept per node, for error messages.
const STDERR_TAIL: usize = 20;

/// The longest stdout line read whole; a longer one is a protocol error
/// (the node's lines are short: the payloads are the driver's own).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// A line from node `node`, read at `wall_ms` (UTC milliseconds).
#[derive(Debug)]
pub(super) struct Received {
    pub(super) node: usize,
    pub(super) wall_ms: u64,
    /// `None`: the node's stdout closed (after a kill: everything it wrote
    /// before it died has been read).
    pub(super) line: Option<Line>,
}

/// What became of a node process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    /// Still running.
    Running,
    /// Killed by the driver (`--kill-node`).
    Killed,
    /// Exited on its own (or after `quit`).
    Exited(Option<i32>),
}

struct Proc {
    name: String,
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    fate: Fate,
}

/// The node processes; kills and reaps them on drop (see the module
/// invariant).
pub(super) struct Nodes {
    procs: Vec<Proc>,
    lines: Receiver<Received>,
    readers: Vec<JoinHandle<()>>,
}

/// UTC milliseconds now.
pub(super) fn wall_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Nodes {
    /// Spawns one `exe node <common> --node-id <name>` per name.
    pub(super) fn spawn(exe: &Path, common: &[String], names: &[String]) -> Result<Nodes, String> {
        let (tx, lines) = unbounded();
        let mut nodes = Nodes {
            procs: Vec::with_capacity(names.len()),
            lines,
            readers: Vec::new(),
        };
        for (index, name) in names.iter().enumerate() {
            // On error `nodes` is dropped here, which kills the ones
            // already started.
            nodes.start(index, exe, common, name, &tx)?;
        }
        Ok(nodes)
    }

    fn start(
        &mut self,
        index: usize,
        exe: &Path,
        common: &[String],
        name: &str,
        tx: &Sender<Received>,
    ) -> Result<(), String> {
        let mut child = std::process::Command::new(exe)
            .arg("node")
            .args(common)
            .args(["--node-id", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start node {name} ({}): {e}", exe.display()))?;
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        // Pushed first, so that any error below still kills it on drop.
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            stdin: stdin.map(BufWriter::new),
            stderr_tail: stderr_tail.clone(),
            fate: Fate::Running,
        });
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(format!("node {name}: its pipes were not created"));
        };
        let tx = tx.clone();
        let reader = std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || read_stdout(index, stdout, &tx))
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        self.readers.push(reader);
        let reader = std::thread::Builder::new()
            .name(format!("{name}-stderr"))
            .spawn(move || read_stderr(stderr, &stderr_tail))
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        self.readers.push(reader);
        Ok(())
    }

    /// How many nodes.
    pub(super) fn len(&self) -> usize {
        self.procs.len()
    }

    /// Node `node`'s `--node-id`.
    pub(super) fn name(&self, node: usize) -> &str {
        &self.procs[node].name
    }

    /// `true` while node `node` runs and its stdin is open.
    pub(super) fn is_up(&self, node: usize) -> bool {
        let p = &self.procs[node];
        p.fate == Fate::Running && p.stdin.is_some()
    }

    /// Node `node`'s last stderr lines, joined.
    pub(super) fn stderr_tail(&self, node: usize) -> String {
        let tail = self.procs[node]
            .stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default();
        if tail.is_empty() {
            "(nothing on stderr)".into()
        } else {
            tail
        }
    }

    /// The channel of every node's lines.
    pub(super) fn lines(&self) -> &Receiver<Received> {
        &self.lines
    }

    /// Writes one command line to node `node` (buffered until
    /// [`flush`](Self::flush)). `false` if the node cannot take it (dead or
    /// its stdin closed): the command was not sent.
    pub(super) fn send(&mut self, node: usize, command: &Command) -> bool {
        let p = &mut self.procs[node];
        let Some(stdin) = p.stdin.as_mut() else {
            return false;
        };
        if p.fate != Fate::Running {
            return false;
        }
        let written = writeln!(stdin, "{command}");
        if written.is_err() {
            // A broken pipe: the node is gone; its end of the story comes
            // as `Eof` on stdout.
            p.stdin = None;
        }
        written.is_ok()
    }

    /// Flushes every node's buffered commands. A node whose pipe broke
    /// stops taking commands.
    pub(super) fn flush(&mut self) {
        for p in &mut self.procs {
            if let Some(stdin) = p.stdin.as_mut()
                && stdin.flush().is_err()
            {
                p.stdin = None;
            }
        }
    }

    /// SIGKILLs node `node` and reaps it. What it wrote before dying is
    /// still read from its pipe, up to its `Eof`.
    pub(super) fn kill(&mut self, node: usize) -> Result<(), String> {
        let p = &mut self.procs[node];
        // Its buffered commands die with it: they were never sent.
        discard_stdin(p);
        p.child
            .kill()
            .map_err(|e| format!("cannot kill node {}: {e}", p.name))?;
        p.child
            .wait()
            .map_err(|e| format!("cannot reap node {}: {e}", p.name))?;
        p.fate = Fate::Killed;
        Ok(())
    }

    /// Stops sending to node `node` (its stdout closed unasked).
    pub(super) fn retire(&mut self, node: usize) {
        discard_stdin(&mut self.procs[node]);
    }

    /// Notes that node `node` exited by itself if it did; returns its fate.
    pub(super) fn poll_exit(&mut self, node: usize) -> Fate {
        let p = &mut self.procs[node];
        if p.fate == Fate::Running
            && let Ok(Some(status)) = p.child.try_wait()
        {
            p.fate = Fate::Exited(status.code());
            p.stdin = None;
        }
        p.fate
    }

    /// Sends `quit` to every running node, closes their stdin, and waits up
    /// to `timeout` for them to exit; a node still running then is killed
    /// (and reported as not exiting).
    pub(super) fn quit_all(
        &mut self,
        timeout: Duration,
    ) -> Vec<(usize, Result<ExitStatus, String>)> {
        for node in 0..self.procs.len() {
            if self.is_up(node) {
                self.send(node, &Command::Quit);
            }
        }
        self.flush();
        for p in &mut self.procs {
            p.stdin = None;
        }
        let started = Instant::now();
        let mut out = Vec::new();
        for (node, p) in self.procs.iter_mut().enumerate() {
            if p.fate != Fate::Running {
                continue;
            }
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if started.elapsed() < timeout => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break Err(format!(
                            "did not exit within {:.0} s of `quit`; killed",
                            timeout.as_secs_f64()
                        ));
                    }
                    Err(e) => break Err(format!("cannot wait for it: {e}")),
                }
            };
            p.fate = match &status {
                Ok(s) => Fate::Exited(s.code()),
                Err(_) => Fate::Killed,
            };
            out.push((node, status));
        }
        out
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for p in &mut self.procs {
            // Not flushed: a stuck node must not block the clean-up.
            discard_stdin(p);
            if p.fate == Fate::Running {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        // The readers end at their pipe's EOF, which the kills brought.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Closes `p`'s stdin without flushing what is buffered.
fn discard_stdin(p: &mut Proc) {
    if let Some(stdin) = p.stdin.take() {
        drop(stdin.into_parts());
    }
}

fn read_stdout(node: usize, stdout: impl std::io::Read, tx: &Sender<Received>) {
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let mut buf = Vec::with_capacity(128);
    loop {
        buf.clear();
        let read =
            std::io::Read::take(&mut reader, MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf);
        let line = match read {
            Ok(0) | Err(_) => break,
            Ok(_) if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE_BYTES => {
                // Keep the head for the report and drop the rest of it.
                let head = String::from_utf8_lossy(&buf[..200]).into_owned();
                let mut rest = Vec::new();
                if reader.read_until(b'\n', &mut rest).is_err() {
                    break;
                }
                Some(Line::Unknown(format!(
                    "{head}... (a line over {MAX_LINE_BYTES} bytes)"
                )))
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                Some(Line::parse(text.trim_end_matches(['\n', '\r'])))
            }
        };
        let received = Received {
            node,
            wall_ms: wall_now_ms(),
            line,
        };
        if tx.send(received).is_err() {
            return;
        }
    }
    let _ = tx.send(Received {
        node,
        wall_ms: wall_now_ms(),
        line: None,
    });
}

fn read_stderr(stderr: impl std::io::Read, tail: &Mutex<VecDeque<String>>) {
    let reader = BufReader::new(stderr);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(String::from_utf8_lossy(&line).into_owned());
        }
    }
}
