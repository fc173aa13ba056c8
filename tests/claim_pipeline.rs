//! The claim pipeline (`Hooks::pipeline` above 1): the next round's admit
//! runs while an earlier one waits on its store, rounds still reach the
//! groups in the order they fired, an id is never in two admits at once,
//! and shutdown loses nothing an admit kept.

use duewheel::{Consumer, Engine, Hooks, ManualClock, Round};
use parking_lot::{Condvar, Mutex};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A store whose admits wait until the test lets the round (named by its
/// first id) through, and that records what ran at once.
struct Store {
    depth: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// Most admits seen running at once.
    most_at_once: AtomicUsize,
}

#[derive(Default)]
struct State {
    /// Ids in an admit now.
    in_admit: HashSet<u64>,
    /// First ids of the admits running now.
    running: Vec<u64>,
    /// Rounds (by first id) let through; `open` lets every round through.
    let_through: HashSet<u64>,
    open: bool,
    /// Ids that entered an admit while already in another.
    twice: Vec<u64>,
    /// Every round admitted, by its ids, in the order admits began.
    rounds: Vec<Vec<u64>>,
    /// Ids to drop rather than keep.
    drop: HashSet<u64>,
}

impl Store {
    fn new(depth: usize) -> Arc<Self> {
        Arc::new(Self {
            depth,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            most_at_once: AtomicUsize::new(0),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock());
        self.changed.notify_all();
        r
    }

    /// Waits until `ready` holds of the state (or panics after `WAIT`).
    fn await_state(&self, what: &str, ready: impl Fn(&State) -> bool) {
        let until = Instant::now() + WAIT;
        let mut state = self.state.lock();
        while !ready(&state) {
            assert!(
                !self.changed.wait_until(&mut state, until).timed_out(),
                "timed out waiting for {what}"
            );
        }
    }
}

impl Hooks<u64, u64> for Store {
    fn admit(&self, round: &mut Round<'_, u64, u64>) {
        let ids: Vec<u64> = round.events().map(|e| e.id).collect();
        let first = ids[0];
        {
            let mut state = self.state.lock();
            for id in &ids {
                if !state.in_admit.insert(*id) {
                    state.twice.push(*id);
                }
            }
            state.running.push(first);
            state.rounds.push(ids.clone());
            self.most_at_once
                .fetch_max(state.running.len(), Ordering::SeqCst);
            self.changed.notify_all();
            // Bounded, so that a failed test ends instead of hanging in
            // the engine's drop.
            let until = Instant::now() + WAIT;
            while !(state.open || state.let_through.contains(&first)) {
                if self.changed.wait_until(&mut state, until).timed_out() {
                    break;
                }
            }
            for id in &ids {
                state.in_admit.remove(id);
            }
            state.running.retain(|&f| f != first);
            self.changed.notify_all();
        }
        let drop = self.state.lock().drop.clone();
        round.retain(|e| !drop.contains(&e.id));
    }

    fn pipeline(&self) -> usize {
        self.depth
    }
}

fn engine(store: &Arc<Store>, clock: &ManualClock, ack_timeout: Duration) -> Engine<u64, u64> {
    Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .shards(1)
        .batch_size(10)
        .ack_timeout(ack_timeout)
        .group("orders")
        .hooks(store.clone())
        .build()
        .unwrap()
}

/// An engine on `store` with 30 timers a millisecond apart, stepped past
/// them all: three rounds of 10 (the batch), in deadline order.
fn thirty_fired(store: &Arc<Store>) -> (Engine<u64, u64>, Consumer<u64, u64>, ManualClock) {
    let clock = ManualClock::new(0);
    let engine = engine(store, &clock, Duration::from_secs(60));
    let orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 1..=30 {
        s.schedule(id, Duration::from_millis(100 + id), id).unwrap();
    }
    clock.advance(Duration::from_millis(200));
    (engine, orders, clock)
}

#[test]
fn the_next_round_is_admitted_while_one_waits_and_rounds_arrive_in_firing_order() {
    let store = Store::new(2);
    let (_engine, mut orders, _clock) = thirty_fired(&store);
    // Two admits at once: the second round went to its claim while the
    // first waits.
    store.await_state("two admits at once", |st| st.running.len() == 2);
    assert_eq!(store.with(|st| st.running.clone()), vec![1, 11]);
    // The second answers first: it is not delivered before the first.
    store.with(|st| st.let_through.insert(11));
    store.await_state("the second admit to answer", |st| st.running == vec![1]);
    thread::sleep(Duration::from_millis(100));
    assert!(orders.drain_ready().is_empty(), "delivered out of order");
    assert_eq!(store.most_at_once.load(Ordering::SeqCst), 2);
    store.with(|st| st.open = true);
    let mut got = Vec::new();
    while got.len() < 30 {
        let event = orders.recv_timeout(WAIT).expect("every event arrives");
        got.push(event.id);
        orders.ack(&event).unwrap();
    }
    assert_eq!(got, (1..=30).collect::<Vec<_>>(), "deadline order");
    assert_eq!(
        store.most_at_once.load(Ordering::SeqCst),
        2,
        "never above the depth"
    );
    assert!(store.with(|st| st.twice.is_empty()));
}

#[test]
fn a_timer_fired_again_while_its_round_is_in_admit_waits_for_that_admit() {
    let store = Store::new(2);
    let clock = ManualClock::new(0);
    let engine = engine(&store, &clock, Duration::from_secs(1));
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    s.schedule(7, Duration::from_millis(100), 7).unwrap();
    clock.advance(Duration::from_millis(100));
    store.await_state("the first admit", |st| st.running == vec![7]);
    // Past the ack timeout while that admit still runs: the engine fires
    // 7 again (its redelivery), and another timer with it.
    s.schedule(8, Duration::from_millis(1_500), 8).unwrap();
    clock.advance(Duration::from_millis(1_600));
    // 8 goes to its own admit; the second 7 is held back, not admitted
    // beside the first.
    store.await_state("8 in an admit", |st| st.in_admit.contains(&8));
    thread::sleep(Duration::from_millis(100));
    store.with(|st| {
        assert!(st.twice.is_empty(), "an id in two admits at once");
        assert_eq!(st.rounds, vec![vec![7], vec![8]]);
    });
    store.with(|st| st.open = true);
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = orders.recv_timeout(WAIT).expect("every delivery arrives");
        got.push((event.id, event.attempt));
    }
    // The held-back redelivery went out after the first admit answered.
    assert_eq!(got, vec![(7, 1), (8, 1), (7, 2)]);
    assert!(store.with(|st| st.twice.is_empty()));
}

#[test]
fn what_an_admit_drops_is_forgotten_and_the_rest_delivered() {
    let store = Store::new(3);
    store.with(|st| {
        st.open = true;
        st.drop.extend([3, 15, 27]);
    });
    let (engine, mut orders, clock) = thirty_fired(&store);
    let s = engine.scheduler();
    let mut got = Vec::new();
    while got.len() < 27 {
        got.push(orders.recv_timeout(WAIT).unwrap().id);
    }
    let expected: Vec<u64> = (1..=30).filter(|id| ![3, 15, 27].contains(id)).collect();
    assert_eq!(got, expected);
    // The dropped ones are gone from the engine: only the delivered stay
    // in flight, and only they come back after the ack timeout.
    assert!(s.settle(WAIT));
    assert_eq!(engine.stats().in_flight, 27);
    clock.advance(Duration::from_secs(61));
    let mut again = Vec::new();
    while again.len() < 27 {
        let event = orders.recv_timeout(WAIT).unwrap();
        assert_eq!(event.attempt, 2);
        again.push(event.id);
    }
    assert_eq!(again, expected);
    assert!(s.settle(WAIT));
    assert!(orders.drain_ready().is_empty());
}

#[test]
fn shutdown_waits_for_the_admits_in_flight_and_loses_nothing() {
    let store = Store::new(2);
    let (engine, mut orders, _clock) = thirty_fired(&store);
    store.await_state("two admits at once", |st| st.running.len() == 2);
    let stopping = thread::spawn(move || engine.shutdown());
    thread::sleep(Duration::from_millis(100));
    assert!(!stopping.is_finished(), "shutdown waits for the admits");
    store.with(|st| st.open = true);
    let shutdown = stopping.join().unwrap();
    let mut seen: HashSet<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
    seen.extend(shutdown.undelivered.iter().map(|(_, e)| e.id));
    seen.extend(shutdown.pending.iter().map(|p| p.id));
    let lost: Vec<u64> = (1..=30).filter(|id| !seen.contains(id)).collect();
    assert!(lost.is_empty(), "lost at shutdown: {lost:?}");
}

#[test]
fn shutdown_with_a_full_group_hands_back_what_the_admits_kept() {
    let store = Store::new(2);
    store.with(|st| st.open = true);
    let clock = ManualClock::new(0);
    let engine = Engine::<u64, u64>::builder()
        .clock(clock.clone())
        .shards(1)
        .batch_size(10)
        .channel_capacity(10)
        .ack_timeout(Duration::from_secs(60))
        .group("orders")
        .hooks(store.clone())
        .build()
        .unwrap();
    let mut orders = engine.subscribe("orders").unwrap();
    let s = engine.scheduler();
    for id in 1..=30 {
        s.schedule(id, Duration::from_millis(100 + id), id).unwrap();
    }
    clock.advance(Duration::from_millis(200));
    // Nobody reads: the group fills and the dispatcher waits for room.
    store.await_state("every round admitted", |st| {
        st.rounds.iter().map(Vec::len).sum::<usize>() >= 20
    });
    thread::sleep(Duration::from_millis(100));
    let shutdown = engine.shutdown();
    let mut seen: Vec<u64> = orders.drain_ready().iter().map(|e| e.id).collect();
    seen.extend(shutdown.undelivered.iter().map(|(_, e)| e.id));
    seen.extend(shutdown.pending.iter().map(|p| p.id));
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=30).collect::<Vec<_>>(), "nothing lost");
    assert!(store.with(|st| st.twice.is_empty()));
}
