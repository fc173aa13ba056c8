//! Restarting a durable engine inside one process (issue #20): shutdown
//! releases the data directory whatever handles live, and a refused open
//! names the holder.

use duewheel::wal::OpenDirError;
use duewheel::{BuildError, CancelError, Engine, RescheduleError, ScheduleError};
use std::path::PathBuf;
use std::time::Duration;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("duewheel-restart-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn open(dir: &PathBuf) -> Result<Engine<u64, String>, BuildError> {
    Engine::builder()
        .shards(2)
        .group("orders")
        .durable(dir)
        .build()
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

#[test]
fn shutdown_releases_the_directory_while_a_scheduler_clone_lives() {
    let dir = dir("clone");
    let engine = open(&dir).unwrap();
    let old = engine.scheduler();
    let consumer = engine.subscribe("orders").unwrap();
    old.schedule(1, hour(), "order 1".into()).unwrap();
    drop(engine.shutdown());

    // The supervisor restarts the engine in the same process.
    let engine = open(&dir).expect("the directory was released at shutdown");
    assert_eq!(engine.recovered().unwrap().timers, 1);
    // The old handles get a clear refusal, and touch nothing.
    let err = old.schedule(2, hour(), "order 2".into()).unwrap_err();
    assert!(
        matches!(err, ScheduleError::ShuttingDown(ref p) if p == "order 2"),
        "{err:?}"
    );
    assert_eq!(old.cancel(&1), Err(CancelError::ShuttingDown));
    assert_eq!(
        old.reschedule(&1, hour()),
        Err(RescheduleError::ShuttingDown)
    );
    drop((old, consumer));
    let s = engine.scheduler();
    assert!(
        s.cancel(&1).unwrap().is_cancelled(),
        "the new engine owns it"
    );
    drop(engine.shutdown());
    let engine = open(&dir).unwrap();
    assert_eq!(engine.recovered().unwrap().timers, 0);
    drop(engine.shutdown());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dropping_the_engine_releases_the_directory_too() {
    let dir = dir("drop");
    let engine = open(&dir).unwrap();
    let old = engine.scheduler();
    old.schedule(1, hour(), "order 1".into()).unwrap();
    drop(engine);
    let engine = open(&dir).expect("released on drop");
    assert_eq!(engine.recovered().unwrap().timers, 1);
    drop((old, engine));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_held_in_this_process_is_refused_naming_this_process() {
    let dir = dir("held");
    let engine = open(&dir).unwrap();
    let err = open(&dir).unwrap_err();
    let BuildError::Storage(OpenDirError::Locked { pid, .. }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*pid, Some(std::process::id()));
    assert!(err.to_string().contains("this process"), "{err}");
    drop(engine.shutdown());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Another process holds the lock (`flock(1)`, which writes nothing: once
/// it holds the lock, the script writes flock's pid as an engine would).
#[cfg(target_os = "linux")]
#[test]
fn a_directory_held_by_another_process_is_refused_naming_its_pid() {
    use std::process::{Command, Stdio};
    let dir = dir("other");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = dir.join("LOCK");
    let Ok(mut child) = Command::new("sh")
        .arg("-c")
        .arg("exec flock \"$0\" sh -c 'echo $PPID > \"$0\"; exec sleep 30' \"$0\"")
        .arg(&lock)
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("skipped: no sh");
        return;
    };
    // Wait until the child holds the lock and wrote its pid.
    let mut err = None;
    for _ in 0..400 {
        match open(&dir) {
            Err(e) => {
                let named = e.to_string().contains(&format!("process {}", child.id()));
                err = Some(e);
                if named {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            Ok(engine) => {
                drop(engine.shutdown());
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let err = err.expect("flock never took the lock");
    let BuildError::Storage(OpenDirError::Locked { pid, .. }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*pid, Some(child.id()));
    assert!(
        err.to_string().contains(&format!("process {}", child.id())),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
