//! The `duewheel node` processes of `simulate --cluster`: spawning them,
//! writing their commands, reading their answers, killing them.
//!
//! The protocol (`duewheel node`'s stdin and stdout, one line each way) is
//! `duewheel_testkit::protocol`'s, and each process is a
//! `duewheel_testkit::process::NodeProcess`: the driver writes [`Command`]s
//! and sees [`Line`] values.
//!
//! Invariant: every child spawned here is killed (SIGKILL) and reaped when
//! the [`Nodes`] is dropped, unless it already exited, whichever way the
//! driver leaves (an error, an early return, a panic; SIGKILL ends a
//! stopped node too): no node outlives
//! the simulation and goes on holding leases in the database (each
//! `NodeProcess` does so on drop).
//!
//! Each node's stdout lines are sent, with the node's index and the
//! wall-clock moment they were read, to one channel the driver drains; a
//! `None` line closes a node's stream (after a kill it says that everything
//! the node wrote before it died has been read, since a pipe keeps what was
//! written). Stderr keeps its last lines for error messages.

use crossbeam_channel::{Receiver, Sender, unbounded};
use duewheel_testkit::process::{NodeProcess, Stderr};
pub(super) use duewheel_testkit::protocol::{Command, Ev, Line};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    process: NodeProcess,
    fate: Fate,
}

/// The node processes; kills and reaps them on drop (see the module
/// invariant).
pub(super) struct Nodes {
    procs: Vec<Proc>,
    lines: Receiver<Received>,
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
        };
        let mut args = vec!["node".to_string()];
        args.extend(common.iter().cloned());
        for (index, name) in names.iter().enumerate() {
            // On error `nodes` is dropped here, which kills the ones
            // already started.
            let tx: Sender<Received> = tx.clone();
            let process = NodeProcess::spawn(exe, &args, name, Stderr::Tail, move |line| {
                let _ = tx.send(Received {
                    node: index,
                    wall_ms: wall_now_ms(),
                    line,
                });
            })
            .map_err(|e| format!("cannot start node {name} ({}): {e}", exe.display()))?;
            nodes.procs.push(Proc {
                process,
                fate: Fate::Running,
            });
        }
        Ok(nodes)
    }

    /// How many nodes.
    pub(super) fn len(&self) -> usize {
        self.procs.len()
    }

    /// Node `node`'s `--node-id`.
    pub(super) fn name(&self, node: usize) -> &str {
        self.procs[node].process.name()
    }

    /// `true` while node `node` runs and its stdin is open.
    pub(super) fn is_up(&self, node: usize) -> bool {
        let p = &self.procs[node];
        p.fate == Fate::Running && p.process.can_send()
    }

    /// Node `node`'s last stderr lines, joined.
    pub(super) fn stderr_tail(&self, node: usize) -> String {
        self.procs[node].process.stderr_tail()
    }

    /// The channel of every node's lines.
    pub(super) fn lines(&self) -> &Receiver<Received> {
        &self.lines
    }

    /// Writes one command to node `node` (buffered until
    /// [`flush`](Self::flush)). `false` if the node cannot take it (dead or
    /// its stdin closed): the command was not sent.
    pub(super) fn send(&mut self, node: usize, command: &Command) -> bool {
        let p = &mut self.procs[node];
        // A broken pipe closes its stdin: the node is gone, and its end of
        // the story comes as `None` on stdout.
        p.fate == Fate::Running && p.process.send(command)
    }

    /// Flushes every node's buffered commands. A node whose pipe broke
    /// stops taking commands.
    pub(super) fn flush(&mut self) {
        for p in &mut self.procs {
            p.process.flush();
        }
    }

    /// SIGKILLs node `node` and reaps it. What it wrote before dying has
    /// been read from its pipe when this returns, up to its `None`.
    pub(super) fn kill(&mut self, node: usize) -> Result<(), String> {
        let p = &mut self.procs[node];
        // Its buffered commands die with it: they were never sent.
        p.process
            .kill()
            .map_err(|e| format!("cannot kill node {}: {e}", p.process.name()))?;
        p.fate = Fate::Killed;
        Ok(())
    }

    /// Sends `signal` (`STOP` or `CONT`) to node `node` with kill(1), as
    /// the process tests do (no libc call in this binary). A stopped node keeps its pipes: what the
    /// driver writes meanwhile waits in them, and it answers on `CONT`.
    pub(super) fn signal(&mut self, node: usize, signal: &str) -> Result<(), String> {
        let p = &self.procs[node];
        if p.fate != Fate::Running {
            return Err(format!(
                "cannot signal node {}: it is not running",
                p.process.name()
            ));
        }
        let pid = p.process.pid();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .map_err(|e| format!("cannot run kill(1) for node {}: {e}", p.process.name()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "kill -{signal} {pid} (node {}): {status}",
                p.process.name()
            ))
        }
    }

    /// Stops sending to node `node` (its stdout closed unasked).
    pub(super) fn retire(&mut self, node: usize) {
        self.procs[node].process.close_stdin();
    }

    /// Notes that node `node` exited by itself if it did; returns its fate.
    pub(super) fn poll_exit(&mut self, node: usize) -> Fate {
        let p = &mut self.procs[node];
        if p.fate == Fate::Running
            && let Some(status) = p.process.try_wait()
        {
            p.fate = Fate::Exited(status.code());
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
            p.process.close_stdin();
        }
        let until = Instant::now() + timeout;
        let mut out = Vec::new();
        for (node, p) in self.procs.iter_mut().enumerate() {
            if p.fate != Fate::Running {
                continue;
            }
            let left = until.saturating_duration_since(Instant::now());
            let status = match p.process.wait_timeout(left) {
                Some(status) => Ok(status),
                None => {
                    let _ = p.process.kill();
                    Err(format!(
                        "did not exit within {:.0} s of `quit`; killed",
                        timeout.as_secs_f64()
                    ))
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
