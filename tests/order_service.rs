//! The example service (`examples/order_service`), started on a loopback
//! port with an ephemeral number and a `ManualClock`, driven with real HTTP
//! requests: an unpaid order is cancelled when its window closes and its
//! stock comes back, a paid one is not, the pay call's answer matches the
//! outcome, and `/metrics` is Prometheus text with the expected numbers.
//! In durable mode the service runs as a child process (this test binary,
//! re-run as [`serves_as_the_child_process_when_asked`]) on the system
//! clock; it is killed with SIGKILL and restarted on the same directory.
#![cfg(all(feature = "tokio", feature = "prometheus"))]

use duewheel_testkit::prom_text;
#[path = "../examples/order_service/service.rs"]
mod service;

use duewheel::ManualClock;
use serde_json::Value;
use service::{OrderService, Settings};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T0: u64 = 1_700_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request over a fresh connection: the status and the body.
fn http(addr: SocketAddr, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let body = json.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `GET /orders/{id}` until its state is `want`.
fn wait_for_state(addr: SocketAddr, id: u64, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = http(addr, "GET", &format!("/orders/{id}"), None);
        assert_eq!(status, 200, "{body}");
        let order = json(&body);
        if order["state"] == want {
            return order;
        }
        assert!(
            started.elapsed() < WAIT,
            "order {id} is {} not {want}",
            order["state"]
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn unpaid_orders_expire_paid_ones_do_not_and_metrics_tell_the_story() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::new(T0);
    let settings = Settings {
        window: Duration::from_secs(30 * 60),
        remind_before: Duration::from_secs(5 * 60),
        stock: 10,
        data_dir: None,
        abort_before_first_ack: false,
    };
    let service = {
        let _inside = runtime.enter();
        OrderService::start(settings, clock.clone()).unwrap()
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback());
    let server = runtime.spawn(axum::serve(listener, service.router()).into_future());
    let order = |qty: u64| http(addr, "POST", "/orders", Some(&format!("{{\"qty\":{qty}}}")));

    // Two orders reserve 3 + 2 of 10 units; a third would overdraw.
    let (status, paid) = order(3);
    assert_eq!(status, 201, "{paid}");
    let paid = json(&paid)["id"].as_u64().unwrap();
    let (status, unpaid) = order(2);
    assert_eq!(status, 201, "{unpaid}");
    let unpaid = json(&unpaid)["id"].as_u64().unwrap();
    let (status, body) = order(6);
    assert_eq!(status, 409, "{body}");

    // Ten minutes in, the first buyer pays: the payment beats the expiry.
    clock.advance(Duration::from_secs(10 * 60));
    let (status, body) = http(addr, "POST", &format!("/orders/{paid}/pay"), None);
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(answer["paid"], true);
    assert_eq!(answer["beat_expiry"], true);
    assert_eq!(answer["state"], "paid");

    // The reminder reaches the unpaid order at 25 minutes.
    clock.advance(Duration::from_secs(15 * 60));
    wait_until(|| {
        json(&http(addr, "GET", &format!("/orders/{unpaid}"), None).1)["reminded"] == true
    });

    // At 30 minutes the unpaid order expires: cancelled, stock released.
    clock.advance(Duration::from_secs(5 * 60));
    let cancelled = wait_for_state(addr, unpaid, "cancelled");
    assert_eq!(cancelled["reminded"], true);
    // A payment arriving now hears that the expiry won.
    let (status, body) = http(addr, "POST", &format!("/orders/{unpaid}/pay"), None);
    assert_eq!(status, 409, "{body}");
    let answer = json(&body);
    assert_eq!(answer["paid"], false);
    assert_eq!(answer["beat_expiry"], false);

    // The paid order's window passes too, and it stays paid.
    clock.advance(Duration::from_secs(60 * 60));
    let paid_order = json(&http(addr, "GET", &format!("/orders/{paid}"), None).1);
    assert_eq!(paid_order["state"], "paid");
    assert_eq!(
        paid_order["reminded"], false,
        "a paid order gets no reminder"
    );
    // 10 - 3 sold; the 2 of the cancelled order came back.
    let (status, _) = order(7);
    assert_eq!(status, 201, "7 units are available again");

    // The metrics endpoint: Prometheus text with the story's numbers.
    let (status, text) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let m = prom_text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(m.type_of("duewheel_scheduled_total"), Some("counter"));
    assert_eq!(m.type_of("duewheel_lateness_seconds"), Some("histogram"));
    assert_eq!(v("duewheel_scheduled_total", &[]), 3.0);
    assert_eq!(v("duewheel_cancelled_total", &[]), 1.0);
    assert_eq!(v("duewheel_fired_total", &[("kind", "expired")]), 1.0);
    assert_eq!(v("duewheel_fired_total", &[("kind", "reminder")]), 1.0);
    assert_eq!(v("duewheel_acked_total", &[]), 1.0);
    assert_eq!(v("duewheel_in_flight", &[]), 0.0);
    // The third order (7 units) waits; nothing is overdue.
    assert_eq!(v("duewheel_pending_timers", &[]), 1.0);
    assert_eq!(v("duewheel_consumer_lag", &[("group", "orders")]), 0.0);
    assert_eq!(v("duewheel_consumers", &[("group", "orders")]), 1.0);
    assert_eq!(v("duewheel_oldest_overdue_seconds", &[]), 0.0);
    assert_eq!(v("duewheel_lateness_seconds_count", &[]), 2.0);
    assert_eq!(v("duewheel_storage_failed", &[]), 0.0);

    server.abort();
    runtime.block_on(service.shutdown());
}

#[test]
fn payments_racing_the_expiry_get_answers_that_match_the_outcome() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let clock = ManualClock::new(T0);
    const ORDERS: u64 = 40;
    let settings = Settings {
        window: Duration::from_secs(60),
        remind_before: Duration::from_secs(10),
        stock: ORDERS * 2,
        data_dir: None,
        abort_before_first_ack: false,
    };
    let service = {
        let _inside = runtime.enter();
        OrderService::start(settings, clock.clone()).unwrap()
    };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = runtime.spawn(axum::serve(listener, service.router()).into_future());
    let ids: Vec<u64> = (0..ORDERS)
        .map(|_| {
            let (status, body) = http(addr, "POST", "/orders", Some("{\"qty\":2}"));
            assert_eq!(status, 201, "{body}");
            json(&body)["id"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(service.available(), 0);

    // Every buyer pays in the window's last moment, while the clock moves
    // past it: some payments win, some expiries do.
    clock.advance(Duration::from_secs(59));
    let payers: Vec<_> = ids
        .chunks(10)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                chunk
                    .into_iter()
                    .map(|id| (id, http(addr, "POST", &format!("/orders/{id}/pay"), None)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Let some payments through first, so both sides win some.
    std::thread::sleep(Duration::from_millis(3));
    clock.advance(Duration::from_secs(1));
    let answers: Vec<(u64, (u16, String))> =
        payers.into_iter().flat_map(|p| p.join().unwrap()).collect();

    let mut paid = 0;
    for (id, (status, body)) in answers {
        let answer = json(&body);
        let want = if status == 200 {
            assert_eq!(answer["beat_expiry"], true, "{body}");
            paid += 1;
            "paid"
        } else {
            assert_eq!(status, 409, "{body}");
            assert_eq!(answer["beat_expiry"], false, "{body}");
            "cancelled"
        };
        // The final state is what the answer said, once the consumer ran.
        wait_for_state(addr, id, want);
    }
    // Stock: every cancelled order gave its 2 units back, no paid one did.
    wait_until(|| service.available() == (ORDERS - paid) * 2);
    server.abort();
    runtime.block_on(service.shutdown());
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Set in the child process: the service's data directory.
const CHILD_DIR: &str = "ORDER_SERVICE_TEST_CHILD_DIR";
/// Set in the child process: abort after the first cancellations are on
/// disk, before their expiries are acked.
const CHILD_ABORTS: &str = "ORDER_SERVICE_TEST_CHILD_ABORTS";
/// The child's payment window: short, so orders expire around the kill.
const CHILD_WINDOW: Duration = Duration::from_millis(3_000);
const CHILD_STOCK: u64 = 500;

/// Not a test of its own: when [`CHILD_DIR`] is set, this is the service
/// process the durable test starts and kills (durable, system clock,
/// a loopback port it prints). Otherwise it returns at once.
#[test]
fn serves_as_the_child_process_when_asked() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings {
        window: CHILD_WINDOW,
        remind_before: CHILD_WINDOW / 3,
        stock: CHILD_STOCK,
        data_dir: Some(PathBuf::from(dir)),
        abort_before_first_ack: std::env::var_os(CHILD_ABORTS).is_some(),
    };
    let service = {
        let _inside = runtime.enter();
        OrderService::start(settings, duewheel::SystemClock::new()).unwrap()
    };
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("LISTENING {}", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        axum::serve(listener, service.router()).await.unwrap();
    });
}

/// The service as a child process on `dir` (aborting before its first ack
/// if `aborts`), and the address it listens on.
fn start_child(dir: &Path, aborts: bool) -> (Child, SocketAddr) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "serves_as_the_child_process_when_asked",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped());
    if aborts {
        command.env(CHILD_ABORTS, "1");
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the child prints its address").unwrap();
        if let Some(addr) = line.strip_prefix("LISTENING ") {
            break addr.parse().unwrap();
        }
    };
    // Keep reading, so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

fn stock(addr: SocketAddr) -> Value {
    let (status, body) = http(addr, "GET", "/stock", None);
    assert_eq!(status, 200, "{body}");
    json(&body)
}

#[test]
fn orders_survive_kill_9_none_lost_none_cancelled_twice_stock_conserved() {
    let dir = std::env::temp_dir().join(format!("duewheel-order-service-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // The first process dies at the worst moment: its first cancellations
    // are on disk, their expiries not acked.
    let (mut child, addr) = start_child(&dir, true);

    // What the clients were told: every order placed (201) with its qty,
    // and the ones whose payment was answered 200.
    let mut placed: HashMap<u64, u64> = HashMap::new();
    let mut paid: Vec<u64> = Vec::new();
    let mut place_and_pay = |addr: SocketAddr, n: u64, placed: &mut HashMap<u64, u64>| {
        for i in 0..n {
            let qty = 1 + i % 3;
            let (status, body) = http(addr, "POST", "/orders", Some(&format!("{{\"qty\":{qty}}}")));
            assert_eq!(status, 201, "{body}");
            let id = json(&body)["id"].as_u64().unwrap();
            placed.insert(id, qty);
            if i % 3 == 0 {
                let (status, body) = http(addr, "POST", &format!("/orders/{id}/pay"), None);
                assert_eq!(status, 200, "{body}");
                paid.push(id);
            }
        }
    };
    place_and_pay(addr, 30, &mut placed);
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < CHILD_WINDOW + WAIT,
            "the service did not reach its first expiry"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The second process gets the expiries again (they were in flight), and
    // a second wave of orders; it is killed with SIGKILL while their
    // expiries are due.
    let (mut child, addr) = start_child(&dir, false);
    place_and_pay(addr, 30, &mut placed);
    std::thread::sleep(CHILD_WINDOW - Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, addr) = start_child(&dir, false);
    // Every unpaid order's window has closed: each is cancelled, once.
    let started = Instant::now();
    let after = loop {
        let now = stock(addr);
        if now["unpaid"] == 0 {
            break now;
        }
        assert!(started.elapsed() < WAIT, "orders still unpaid: {now}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // No order lost: every one the clients were answered 201 for is there,
    // in the state its answers imply.
    assert_eq!(
        after["orders"].as_u64().unwrap(),
        placed.len() as u64,
        "{after}"
    );
    for &id in placed.keys() {
        let want = if paid.contains(&id) {
            "paid"
        } else {
            "cancelled"
        };
        let (status, body) = http(addr, "GET", &format!("/orders/{id}"), None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["state"], want, "order {id}: {body}");
    }
    // None cancelled twice.
    assert_eq!(after["cancel_effects"], after["cancelled"], "{after}");
    assert_eq!(
        after["paid"].as_u64().unwrap(),
        paid.len() as u64,
        "{after}"
    );
    // Stock conserved: only the paid orders' units are gone.
    let sold: u64 = paid.iter().map(|id| placed[id]).sum();
    assert_eq!(after["sold"].as_u64().unwrap(), sold, "{after}");
    assert_eq!(after["reserved"], 0, "{after}");
    assert_eq!(
        after["available"].as_u64().unwrap(),
        CHILD_STOCK - sold,
        "{after}"
    );
    // A late payment for a cancelled order hears that the expiry won.
    let cancelled = placed.keys().find(|id| !paid.contains(id)).unwrap();
    let (status, body) = http(addr, "POST", &format!("/orders/{cancelled}/pay"), None);
    assert_eq!(status, 409, "{body}");

    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
