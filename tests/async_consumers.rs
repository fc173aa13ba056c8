//! Feature `tokio`: async consumers and scheduling calls that never block
//! the runtime.
//!
//! Each test runs its runtime on a thread of its own and waits for it with a
//! timeout, so a blocked worker thread fails the test instead of hanging it.
#![cfg(feature = "tokio")]

use duewheel::wal::{FaultStorage, Storage, StorageFile};
use duewheel::{Cancel, Engine, EventKind, ManualClock, ScheduleError};
use futures_core::Stream;
use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;

/// Runs `test` on a current-thread runtime (one thread for every task) and
/// fails if it does not finish within `limit`.
fn on_one_thread<F>(limit: Duration, test: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(test());
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => runner.join().unwrap(),
        // The runner panicked: report its panic.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the runtime did not finish in {limit:?}: a worker thread is blocked")
        }
    }
}

/// Counts its own ticks every millisecond: proof that the runtime's thread
/// is free while other tasks await.
fn heartbeat() -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let beats = Arc::new(AtomicU64::new(0));
    let counter = beats.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (beats, task)
}

#[test]
fn a_slow_async_consumer_loses_nothing_and_the_runtime_keeps_running() {
    on_one_thread(Duration::from_secs(60), || async {
        let clock = ManualClock::new(T0);
        // A group holds at most 16 events: the dispatcher waits on the slow
        // consumer many times over.
        let engine = Engine::<u64, u64>::builder()
            .clock(clock.clone())
            .shards(2)
            .channel_capacity(16)
            .batch_size(4)
            .build()
            .unwrap();
        let mut consumer = engine.subscribe("orders").unwrap();
        let scheduler = engine.scheduler();
        const N: u64 = 600;
        for id in 0..N {
            scheduler
                .schedule_async(id, Duration::from_secs(60 + id % 7), id * 10)
                .await
                .unwrap();
        }
        let (beats, heart) = heartbeat();
        clock.advance(Duration::from_secs(120));

        let mut seen = BTreeSet::new();
        let mut slow_awaits = 0;
        while seen.len() < N as usize {
            let event = consumer.recv_async().await.expect("the engine is running");
            assert_eq!(event.kind, EventKind::Expired);
            assert_eq!(event.payload, event.id * 10);
            assert!(seen.insert(event.id), "event {} twice", event.id);
            if event.id % 50 == 0 {
                // The slow part of the consumer: the thread is free meanwhile.
                tokio::time::sleep(Duration::from_millis(20)).await;
                slow_awaits += 1;
            }
        }
        assert_eq!(seen, (0..N).collect());
        assert_eq!(slow_awaits, N / 50);
        // 12 slow awaits of 20 ms: the heartbeat ran during them.
        assert!(
            beats.load(Ordering::Relaxed) >= 50,
            "heartbeat ran {} times",
            beats.load(Ordering::Relaxed)
        );
        heart.abort();
        assert!(consumer.try_recv().is_err(), "nothing more than N events");
        let stats = engine.stats();
        assert_eq!(stats.expired_total, N);
        assert_eq!(stats.groups[0].lag, 0);
    });
}

#[test]
fn an_idle_async_consumer_wakes_for_an_event_fired_later_and_ends_at_shutdown() {
    on_one_thread(Duration::from_secs(30), || async {
        let clock = ManualClock::new(T0);
        let engine = Engine::<u64, &str>::builder()
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut consumer = engine.subscribe("orders").unwrap();
        let scheduler = engine.scheduler();
        let waiter = tokio::spawn(async move {
            let first = consumer.recv_async().await;
            let after_shutdown = consumer.recv_async().await;
            (first, after_shutdown)
        });
        // The consumer is parked on the runtime, not on a thread: this task
        // runs while it waits.
        let (beats, heart) = heartbeat();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        assert!(beats.load(Ordering::Relaxed) > 0);

        scheduler
            .schedule_async(1, Duration::from_secs(5), "order 1")
            .await
            .unwrap();
        clock.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shutdown = engine.shutdown();
        assert!(shutdown.pending.is_empty());
        let (first, after_shutdown) = waiter.await.unwrap();
        let first = first.expect("the expiry");
        assert_eq!((first.id, first.kind), (1, EventKind::Expired));
        assert!(after_shutdown.is_none(), "the stream ends after shutdown");
        heart.abort();
    });
}

#[test]
fn a_receive_dropped_while_waiting_loses_no_event() {
    on_one_thread(Duration::from_secs(30), || async {
        let clock = ManualClock::new(T0);
        let engine = Engine::<u64, ()>::builder()
            .clock(clock.clone())
            .build()
            .unwrap();
        let mut consumer = engine.subscribe("orders").unwrap();
        // Receives that give up after 5 ms, again and again, while nothing
        // has fired: each drops its future mid-wait.
        for _ in 0..10 {
            let gave_up =
                tokio::time::timeout(Duration::from_millis(5), consumer.recv_async()).await;
            assert!(gave_up.is_err());
        }
        for id in 0..3 {
            engine
                .scheduler()
                .schedule(id, Duration::from_secs(1), ())
                .unwrap();
        }
        clock.advance(Duration::from_secs(1));
        let mut ids = Vec::new();
        while ids.len() < 3 {
            // Time out and retry too: an event is never lost in between.
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(1), consumer.recv_async()).await
            {
                ids.push(event.id);
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, [0, 1, 2]);
    });
}

/// A stream of events, polled through `futures_core::Stream` alone.
fn next<S: Stream + Unpin>(stream: &mut S) -> impl Future<Output = Option<S::Item>> + '_ {
    std::future::poll_fn(move |cx| std::pin::Pin::new(&mut *stream).poll_next(cx))
}

#[test]
fn many_async_consumers_share_one_thread_and_a_group_shares_its_events() {
    on_one_thread(Duration::from_secs(60), || async {
        let clock = ManualClock::new(T0);
        let engine = Engine::<u64, ()>::builder()
            .clock(clock.clone())
            .batch_size(8)
            .channel_capacity(64)
            .build()
            .unwrap();
        const CONSUMERS: usize = 100;
        const N: u64 = 2_000;
        let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..CONSUMERS {
            let mut consumer = engine.subscribe("billing").unwrap();
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(event) = next(&mut consumer).await {
                    received.lock().push(event.id);
                    tokio::task::yield_now().await;
                }
            }));
        }
        let scheduler = engine.scheduler();
        for id in 0..N {
            scheduler.schedule(id, Duration::from_secs(1), ()).unwrap();
        }
        clock.advance(Duration::from_secs(1));
        let started = Instant::now();
        while received.lock().len() < N as usize {
            assert!(started.elapsed() < Duration::from_secs(30), "events lost");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(engine.shutdown());
        for task in tasks {
            task.await.unwrap();
        }
        let mut ids = received.lock().clone();
        ids.sort_unstable();
        assert_eq!(ids, (0..N).collect::<Vec<_>>(), "each event exactly once");
    });
}

#[test]
fn async_consumers_on_a_multi_thread_runtime_receive_every_event_fired_from_other_threads() {
    // The lost-wake-up race: events fire while consumers go to sleep.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let engine = Engine::<u64, ()>::builder()
            .batch_size(1)
            .channel_capacity(4)
            .build()
            .unwrap();
        let a = engine.subscribe("g").unwrap();
        let b = engine.subscribe("g").unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let spawn = |mut c: duewheel::Consumer<u64, ()>, count: Arc<AtomicU64>| {
            tokio::spawn(async move {
                while c.recv_async().await.is_some() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let ta = spawn(a, count.clone());
        let tb = spawn(b, count.clone());
        let scheduler = engine.scheduler();
        const N: u64 = 20_000;
        let producer = std::thread::spawn(move || {
            for id in 0..N {
                // Due now: fires on the next dispatcher round.
                scheduler.schedule(id, Duration::ZERO, ()).unwrap();
                if id % 1_000 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        producer.join().unwrap();
        let started = Instant::now();
        while count.load(Ordering::Relaxed) < N {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {} of {N} events arrived",
                count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(engine.shutdown());
        ta.await.unwrap();
        tb.await.unwrap();
        assert_eq!(count.load(Ordering::Relaxed), N);
    });
}

/// Storage whose every fsync takes 150 ms: a durable call waits that long.
struct SlowSync(FaultStorage);

struct SlowFile(Box<dyn StorageFile>);

impl StorageFile for SlowFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        std::thread::sleep(Duration::from_millis(150));
        self.0.sync()
    }
}

impl Storage for SlowSync {
    fn list(&self) -> io::Result<Vec<String>> {
        self.0.list()
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.0.read(name)
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(SlowFile(self.0.create(name)?)))
    }
    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        self.0.truncate(name, len)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.0.sync_dir()
    }
}

#[test]
fn durable_async_calls_await_the_commit_while_the_runtime_runs_other_tasks() {
    on_one_thread(Duration::from_secs(60), || async {
        let clock = ManualClock::new(T0);
        let storage = FaultStorage::new();
        let engine = Engine::<u64, String>::builder()
            .clock(clock.clone())
            .group("orders")
            .durable_storage(Arc::new(SlowSync(storage.clone())) as Arc<dyn Storage>)
            .build()
            .unwrap();
        let scheduler = engine.scheduler();
        let (beats, heart) = heartbeat();

        // Eight schedules at once share group commits; each waits ~150 ms
        // or more for its fsync, as an `.await`.
        let started = Instant::now();
        let before = beats.load(Ordering::Relaxed);
        let mut calls = Vec::new();
        for id in 0..8u64 {
            let s = scheduler.clone();
            calls.push(tokio::spawn(async move {
                s.schedule_async(id, Duration::from_secs(60), format!("order {id}"))
                    .await
            }));
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let waited = started.elapsed();
        let during = beats.load(Ordering::Relaxed) - before;
        assert!(waited >= Duration::from_millis(140), "waited {waited:?}");
        assert!(
            during >= 20,
            "the heartbeat ran {during} times in {waited:?}"
        );

        let before = beats.load(Ordering::Relaxed);
        assert!(matches!(
            scheduler.cancel_async(&0).await.unwrap(),
            Cancel::Cancelled(_)
        ));
        scheduler
            .reschedule_async(&1, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(beats.load(Ordering::Relaxed) - before >= 20);

        // An async ack, durable too.
        let mut orders = engine.subscribe("orders").unwrap();
        clock.advance(Duration::from_secs(10));
        let expiry = orders.recv_async().await.unwrap();
        assert_eq!((expiry.id, expiry.kind), (1, EventKind::Expired));
        orders.ack_async(&expiry).await.unwrap();
        assert_eq!(engine.stats().acked_total, 1);
        heart.abort();
        drop(engine.shutdown());

        // Everything the async calls acknowledged is in the log.
        let reopened = Engine::<u64, String>::builder()
            .clock(clock.clone())
            .group("orders")
            .durable_storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
            .build()
            .unwrap();
        assert_eq!(reopened.recovered().unwrap().timers, 6);
        assert!(matches!(
            reopened.scheduler().cancel(&0).unwrap(),
            Cancel::NotFound
        ));
    });
}

#[test]
fn a_failed_fsync_fails_the_async_call_and_hands_the_payload_back() {
    on_one_thread(Duration::from_secs(30), || async {
        let clock = ManualClock::new(T0);
        let storage = FaultStorage::new();
        let engine = Engine::<u64, String>::builder()
            .clock(clock.clone())
            .group("orders")
            .durable_storage(Arc::new(storage.clone()) as Arc<dyn Storage>)
            .build()
            .unwrap();
        let scheduler = engine.scheduler();
        scheduler
            .schedule_async(1, Duration::from_secs(60), "order 1".into())
            .await
            .unwrap();
        // The next write fails: the log poisons and wakes the async waiter.
        storage.fail_at(storage.io_count(), duewheel::wal::Fault::Error);
        let err = scheduler
            .schedule_async(2, Duration::from_secs(60), "order 2".into())
            .await
            .unwrap_err();
        assert!(matches!(err, ScheduleError::Storage(p) if p == "order 2"));
        assert!(engine.stats().storage_failed);
    });
}
