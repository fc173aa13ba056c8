//! `duewheel node`'s stdin/stdout protocol (the one the process tests and
//! `simulate --cluster` speak; see `docs/SCALE_OUT.md`).
//!
//! The lines, both ways, are `duewheel_testkit::protocol`'s types: stdin
//! one [`Command`] per line (EOF is `quit`), stdout one [`Line`] per answer
//! or event. Events are group `out`'s.
//!
//! Invariant: an `ev` line is written and flushed before its delivery is
//! acknowledged, so every acked delivery is on stdout even if the process
//! is killed right after (a pipe keeps what was written).

use super::NodeCell;
use crossbeam_channel::{Receiver, Sender};
use duewheel::{Cancel, CancelError, Deadline, ScheduleError};
use duewheel_cluster::{NodeScheduler, NodeStats};
use duewheel_testkit::protocol::{Command, Ev, Line};
use parking_lot::Mutex;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub(super) type Out = Arc<Mutex<BufWriter<std::io::Stdout>>>;

/// Appends `line` and its newline to `buf`.
/// An event's `ev` line. The epoch is the event's own: a redelivery queued
/// before an ack still names the claim it was admitted under.
pub(super) fn ev_line(e: &duewheel::Event<u64, String>) -> Line {
    Line::Ev(Ev {
        id: e.id,
        attempt: e.attempt,
        fired_at_ms: e.fired_at_ms,
        deadline_ms: e.deadline_ms,
        epoch: e.claim,
        payload: e.payload.clone(),
    })
}

pub(super) fn push(buf: &mut String, line: &Line) {
    let _ = writeln!(buf, "{line}");
}

pub(super) fn write_line(out: &Out, line: &Line) {
    write_lines(out, &format!("{line}\n"));
}

pub(super) fn write_lines(out: &Out, lines: &str) {
    let mut out = out.lock();
    // A closed stdout (the driver went away) leaves nothing to tell.
    let _ = out.write_all(lines.as_bytes());
    let _ = out.flush();
}

/// The protocol running: a thread reading stdin and one writing group
/// `out`'s events to stdout.
pub(super) struct Stdio {
    consumer: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

/// Standard output, shared by the threads that write lines to it.
pub(super) fn stdout() -> Out {
    Arc::new(Mutex::new(BufWriter::new(std::io::stdout())))
}

/// Prints `ready`, then serves stdin until `quit` or EOF, when `ended`
/// fires; events of group `out` go to stdout until [`Stdio::stop`].
pub(super) fn start(
    node: &Arc<NodeCell>,
    ended: tokio::sync::mpsc::Sender<&'static str>,
) -> Result<Stdio, String> {
    let out = stdout();
    let scheduler = node.scheduler.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut events = node
        .with(|n| n.subscribe("out"))
        .ok_or("the node is stopping")?
        .map_err(|e| e.to_string())?;
    write_line(&out, &Line::Ready(node.node_id.clone()));
    let consumer = {
        let (out, stop) = (out.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(first) = events.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let mut batch = vec![first];
                batch.extend(events.drain_ready());
                let mut lines = String::new();
                for e in &batch {
                    push(&mut lines, &ev_line(e));
                }
                // Written and flushed before the acks (see the module doc).
                write_lines(&out, &lines);
                for e in &batch {
                    let _ = events.ack(e);
                }
            }
        })
    };

    let node = node.clone();
    std::thread::spawn(move || {
        let (work_tx, work_rx) = crossbeam_channel::bounded::<Work>(64);
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (rx, s, out) = (work_rx.clone(), scheduler.clone(), out.clone());
                std::thread::spawn(move || worker(&rx, &s, &out))
            })
            .collect();
        read_commands(&node, &work_tx, &out);
        drop(work_tx);
        for w in workers {
            let _ = w.join();
        }
        let _ = ended.blocking_send("stdin closed");
    });
    Ok(Stdio { consumer, stop })
}

impl Stdio {
    /// Stops writing events (what is delivered and unacked is redelivered).
    pub(super) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.consumer.join();
    }
}

enum Work {
    Schedule(Vec<(u64, u64, String)>),
    Cancel(Vec<u64>),
}

/// Reads commands until `quit` or EOF; batches consecutive ones that are
/// already buffered.
fn read_commands(node: &NodeCell, work: &Sender<Work>, out: &Out) {
    let mut input = BufReader::with_capacity(1 << 16, std::io::stdin());
    let mut schedules = Vec::new();
    let mut cancels = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let eof = !matches!(input.read_line(&mut line), Ok(n) if n > 0);
        if !eof && !line.trim().is_empty() {
            match line.parse::<Command>() {
                Ok(Command::Schedule {
                    id,
                    deadline_ms,
                    payload,
                }) => schedules.push((id, deadline_ms, payload)),
                Ok(Command::Cancel { id }) => cancels.push(id),
                Ok(Command::Stats) => {
                    write_line(out, &stats_line(&node.stats().unwrap_or_default()))
                }
                Ok(Command::Quit) => break,
                Ok(c @ (Command::Order { .. } | Command::Pay { .. })) => {
                    super::orders::refuse(out, &c);
                }
                Err(e) => {
                    let id = Command::id_of(&line);
                    let (kind, message) = ("invalid".to_string(), Line::one_line(&e.0));
                    write_line(
                        out,
                        &if line.trim_start().starts_with("c ") {
                            Line::Cerr { id, kind, message }
                        } else {
                            Line::Err { id, kind, message }
                        },
                    );
                }
            }
        }
        // Hand over what is gathered once nothing more is buffered.
        let idle = input.buffer().is_empty();
        if (idle || schedules.len() >= 1000) && !schedules.is_empty() {
            let _ = work.send(Work::Schedule(std::mem::take(&mut schedules)));
        }
        if (idle || cancels.len() >= 1000) && !cancels.is_empty() {
            let _ = work.send(Work::Cancel(std::mem::take(&mut cancels)));
        }
        if eof {
            break;
        }
    }
    if !schedules.is_empty() {
        let _ = work.send(Work::Schedule(schedules));
    }
    if !cancels.is_empty() {
        let _ = work.send(Work::Cancel(cancels));
    }
}

fn worker(rx: &Receiver<Work>, scheduler: &NodeScheduler<String>, out: &Out) {
    for work in rx {
        let mut lines = String::new();
        match work {
            Work::Schedule(timers) => {
                let ids: Vec<u64> = timers.iter().map(|t| t.0).collect();
                let timers = timers
                    .into_iter()
                    .map(|(id, at, p)| (id, Deadline::at_unix_ms(at), p));
                for (&id, result) in ids.iter().zip(scheduler.schedule_batch(timers)) {
                    push(
                        &mut lines,
                        &match result {
                            Ok(()) => Line::Ok(id),
                            Err(e) => {
                                let kind = match &e {
                                    ScheduleError::AlreadyScheduled(_) => "duplicate",
                                    ScheduleError::Invalid { .. } => "invalid",
                                    ScheduleError::Unavailable { .. } => "unavailable",
                                    ScheduleError::InDoubt(_) => "indoubt",
                                    ScheduleError::ShuttingDown(_) => "shutdown",
                                    // The engine's own refusals; a node
                                    // does not answer them.
                                    _ => "other",
                                };
                                Line::Err {
                                    id: Some(id),
                                    kind: kind.into(),
                                    message: Line::one_line(&e.to_string()),
                                }
                            }
                        },
                    );
                }
            }
            Work::Cancel(ids) => {
                for (&id, result) in ids.iter().zip(scheduler.cancel_batch(ids.iter().copied())) {
                    push(
                        &mut lines,
                        &match result {
                            Ok(Cancel::Cancelled(_)) => Line::Cancelled(id),
                            Ok(Cancel::AlreadyFired) => Line::Fired(id),
                            Ok(Cancel::NotFound) => Line::NotFound(id),
                            Err(e) => {
                                let kind = match &e {
                                    CancelError::Unavailable(_) => "unavailable",
                                    CancelError::InDoubt => "indoubt",
                                    CancelError::ShuttingDown => "shutdown",
                                    CancelError::Corrupt(_) => "corrupt",
                                    _ => "other",
                                };
                                Line::Cerr {
                                    id: Some(id),
                                    kind: kind.into(),
                                    message: Line::one_line(&e.to_string()),
                                }
                            }
                        },
                    );
                }
            }
        }
        write_lines(out, &lines);
    }
}

pub(super) fn stats_line(s: &NodeStats) -> Line {
    let kv = [
        ("owned", s.owned as u64),
        ("pending", s.pending as u64),
        ("scheduled", s.scheduled),
        ("cancelled", s.cancelled),
        ("claimed", s.claimed),
        ("redelivered", s.redelivered),
        ("acked", s.acked),
        ("fenced", s.fenced),
        ("lost", s.lost),
        ("acquired", s.acquired),
        ("released", s.released),
        ("loaded", s.loaded),
        ("swept", s.swept),
        ("notified", s.notified),
        ("db_errors", s.db_errors),
        ("overdue", s.overdue),
        ("fence_held", s.fence_held),
    ];
    Line::Stats(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}
