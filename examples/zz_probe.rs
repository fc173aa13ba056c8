//! Temporary probe (not committed): wheel payment workload phases in
//! on-CPU nanoseconds from /proc/thread-self/schedstat.
#[path = "../benches/peers/mod.rs"]
#[allow(dead_code)]
mod peers;
use peers::workload::{Scenario, Workload};
use peers::{Contender, Visitor};

fn cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

struct M(usize);
impl Visitor for M {
    type Output = ();
    fn visit<C: Contender>(self, name: &'static str, _: &'static str) {
        let w = Workload::new(Scenario::Payment, self.0);
        let mut best = [u64::MAX; 3];
        for _ in 0..5 {
            let mut c = C::new(self.0);
            let mut fired = Vec::with_capacity(w.live());
            let t0 = cpu_ns();
            c.schedule_all(&w.deadlines_ms);
            let t1 = cpu_ns();
            c.cancel_all(&w.cancels);
            let t2 = cpu_ns();
            c.drain(&mut fired);
            let t3 = cpu_ns();
            for (b, v) in best.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                *b = (*b).min(v);
            }
        }
        println!(
            "{name:<12} cpu ms: schedule {:.1} cancel {:.1} drain {:.1} whole {:.1}",
            best[0] as f64 / 1e6,
            best[1] as f64 / 1e6,
            best[2] as f64 / 1e6,
            best.iter().sum::<u64>() as f64 / 1e6
        );
    }
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    for name in std::env::args().skip(2) {
        peers::visit(&name, M(n));
    }
}
