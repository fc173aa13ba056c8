//! `duewheel node --listen`: the HTTP API of real node processes on a real
//! PostgreSQL, over real TCP — schedule, cancel, consume by long-poll, ack,
//! refusals with their JSON errors, `/healthz` and `/metrics`, and a SIGTERM
//! that hands the leases back at once.
//!
//! Needs `DUEWHEEL_PG_DSN` (`eval "$(scripts/pg-up.sh)"`); without it the
//! tests skip with a note, or fail under `CI=true`. One test at a time (they
//! share the machine's cores and, for the restart test, the server).

use duewheel_testkit::pg::{self, TestSchema};
use duewheel_testkit::process::{NodeProcess, Stderr};
use duewheel_testkit::prom_text;
use duewheel_testkit::protocol::Line;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SHARDS: u32 = 16;
/// The `node` label of the API test's node.
const NODE_API: [(&str, &str); 1] = [("node", "api")];
/// Long enough that only a handback explains a takeover within seconds.
const TTL_MS: u64 = 30_000;
/// How long a node may take to connect, migrate and listen.
const READY: Duration = Duration::from_secs(60);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One node process and the address it listens on.
struct Node {
    process: NodeProcess,
    addr: String,
}

impl Node {
    fn start(db: &TestSchema, name: &str, extra: &[&str]) -> Self {
        let mut args = db.node_args(
            SHARDS,
            TTL_MS,
            300,
            &[
                "--listen",
                "127.0.0.1:0",
                "--group",
                "billing",
                "--group",
                "mail",
                "--max-batch",
                "50",
                "--max-body-bytes",
                "65536",
            ],
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let (tx, rx) = mpsc::channel();
        let process = NodeProcess::spawn(
            env!("CARGO_BIN_EXE_duewheel"),
            &args,
            name,
            Stderr::Tail,
            move |line| {
                if let Some(Line::Unknown(text)) = line
                    && let Some(addr) = text.strip_prefix("listening http://")
                {
                    let _ = tx.send(addr.trim().to_string());
                }
            },
        )
        .expect("spawn duewheel node");
        let addr = rx.recv_timeout(READY).unwrap_or_else(|_| {
            panic!("{name} did not listen; stderr:\n{}", process.stderr_tail())
        });
        Self { process, addr }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(&self.addr, method, path, body)
    }

    fn json(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = self.call(method, path, body.as_deref());
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} not JSON ({e}): {text}"));
        (status, value)
    }

    /// Polls `/healthz` until it answers `want`.
    fn wait_health(&self, want: u16, within: Duration) {
        let start = Instant::now();
        loop {
            let (status, body) = self.call("GET", "/healthz", None);
            if status == want {
                return;
            }
            assert!(
                start.elapsed() < within,
                "healthz stayed {status} ({body}), wanted {want}; stderr:\n{}",
                self.process.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.process.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// Events of `group` from `node` until every id of `want` came (acking
/// each), or `within` passed; the ids seen.
fn consume_all(node: &Node, group: &str, want: &BTreeSet<u64>, within: Duration) -> BTreeSet<u64> {
    let start = Instant::now();
    let mut seen = BTreeSet::new();
    while !want.is_subset(&seen) && start.elapsed() < within {
        let (status, events) = node.json(
            "GET",
            &format!("/v1/groups/{group}/events?max=50&wait_ms=1000"),
            None,
        );
        assert_eq!(status, 200, "{events}");
        let events = events.as_array().expect("an array").clone();
        if events.is_empty() {
            continue;
        }
        let acks: Vec<Value> = events
            .iter()
            .map(|e| json!({ "id": e["id"], "token": e["token"] }))
            .collect();
        let (status, answer) = node.json(
            "POST",
            &format!("/v1/groups/{group}/acks"),
            Some(Value::Array(acks)),
        );
        assert_eq!(status, 200, "{answer}");
        for (event, result) in events.iter().zip(answer["results"].as_array().unwrap()) {
            assert_eq!(result["outcome"], "ok", "ack of {event}: {result}");
            assert_eq!(event["kind"], "expired");
            seen.insert(event["id"].as_u64().unwrap());
        }
    }
    seen
}

/// The next event of `group`, which must be `id`'s, within 30 s.
fn poll_one(node: &Node, group: &str, id: u64) -> Value {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let (status, events) = node.json(
            "GET",
            &format!("/v1/groups/{group}/events?max=1&wait_ms=1000"),
            None,
        );
        assert_eq!(status, 200, "{events}");
        if let Some(event) = events.as_array().and_then(|a| a.first()) {
            assert_eq!(event["id"], id, "{event}");
            return event.clone();
        }
    }
    panic!("no event of {id} in {group} within 30 s");
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {v}"))
}

#[test]
fn schedules_cancels_consumes_and_refuses_bad_input_over_http() {
    let _serial = serial();
    let Some(db) = TestSchema::new("node_http_api") else {
        return;
    };
    let node = Node::start(&db, "api", &[]);
    node.wait_health(200, READY);

    // Schedule: 201, the same again is idempotent, another payload is 409.
    let far = wall_ms() + 3_600_000;
    let timer = json!({ "id": 1, "deadline_ms": far, "payload": "order-1" });
    let (status, body) = node.json("POST", "/v1/timers", Some(timer.clone()));
    assert_eq!(
        (status, &body["outcome"]),
        (201, &json!("scheduled")),
        "{body}"
    );
    let (status, _) = node.json("POST", "/v1/timers", Some(timer));
    assert_eq!(status, 201, "same id, deadline and payload: idempotent");
    let (status, body) = node.json(
        "POST",
        "/v1/timers",
        Some(json!({ "id": 1, "deadline_ms": far, "payload": "other" })),
    );
    assert_eq!(
        (status, &body["outcome"]),
        (409, &json!("already_scheduled")),
        "{body}"
    );

    // Cancel: the payload back, then not_found.
    let (status, body) = node.json("DELETE", "/v1/timers/1", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["outcome"], &body["payload"]),
        (&json!("cancelled"), &json!("order-1"))
    );
    let (_, body) = node.json("DELETE", "/v1/timers/1", None);
    assert_eq!(body["outcome"], "not_found");

    // A batch: accepted and refused items answer one by one, in order.
    let (status, body) = node.json(
        "POST",
        "/v1/timers:batch",
        Some(json!({ "timers": [
            { "id": 10, "delay_ms": 0, "payload": "a" },
            { "id": 11 },
            { "id": 12, "delay_ms": 0, "payload": "c" },
        ]})),
    );
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 400, 201], "{body}");

    // Consume: both due timers come to group billing, and to mail too.
    let want = BTreeSet::from([10, 12]);
    assert_eq!(
        consume_all(&node, "billing", &want, Duration::from_secs(30)),
        want
    );
    assert_eq!(
        consume_all(&node, "mail", &want, Duration::from_secs(30)),
        want
    );
    // Fired: a cancel now says so (acked by both groups: gone, not_found,
    // unless the row is still there between claim and delete).
    let (_, body) = node.json("DELETE", "/v1/timers/10", None);
    assert!(
        body["outcome"] == "already_fired" || body["outcome"] == "not_found",
        "{body}"
    );
    // An ack of something not in flight here is told apart.
    let (_, body) = node.json(
        "POST",
        "/v1/groups/billing/acks",
        Some(json!([{ "id": 10, "token": 999 }])),
    );
    assert_eq!(body["results"][0]["outcome"], "not_in_flight", "{body}");
    // Snooze: the same delivery (same token) comes back after the delay.
    let (status, _) = node.json(
        "POST",
        "/v1/timers",
        Some(json!({ "id": 30, "delay_ms": 0, "payload": "snoozed" })),
    );
    assert_eq!(status, 201);
    let first = poll_one(&node, "billing", 30);
    let token = first["token"].clone();
    let (_, body) = node.json(
        "POST",
        "/v1/groups/billing/snooze",
        Some(json!([{ "id": 30, "token": token, "delay_ms": 200 }])),
    );
    assert_eq!(body["results"][0]["outcome"], "ok", "{body}");
    let again = poll_one(&node, "billing", 30);
    assert_eq!(again["token"], token, "{again}");
    let (_, body) = node.json(
        "POST",
        "/v1/groups/billing/acks",
        Some(json!([{ "id": 30, "token": token }])),
    );
    assert_eq!(body["results"][0]["outcome"], "ok", "{body}");

    // Nothing due: the long-poll answers an empty array after its wait.
    let (status, body) = node.json("GET", "/v1/groups/billing/events?wait_ms=200", None);
    assert_eq!((status, body), (200, json!([])));

    // Reschedule: a pending timer moves (it fires at the new deadline, an
    // hour early here); an unknown id is 404.
    let (status, _) = node.json(
        "POST",
        "/v1/timers",
        Some(json!({ "id": 40, "delay_ms": 3_600_000, "payload": "moved" })),
    );
    assert_eq!(status, 201);
    let (status, body) = node.json(
        "PUT",
        "/v1/timers/40/deadline",
        Some(json!({ "delay_ms": 200 })),
    );
    assert_eq!(
        (status, &body["outcome"]),
        (200, &json!("rescheduled")),
        "{body}"
    );
    let moved = poll_one(&node, "billing", 40);
    assert_eq!(moved["kind"], "expired", "{moved}");
    let (_, body) = node.json(
        "POST",
        "/v1/groups/billing/acks",
        Some(json!([{ "id": 40, "token": moved["token"] }])),
    );
    assert_eq!(body["results"][0]["outcome"], "ok", "{body}");
    let (status, body) = node.json(
        "PUT",
        "/v1/timers/99999/deadline",
        Some(json!({ "delay_ms": 200 })),
    );
    assert_eq!(
        (status, &body["outcome"]),
        (404, &json!("not_found")),
        "{body}"
    );

    // Reminders: the reminder comes before the expiry, both in the group.
    let (status, body) = node.json(
        "POST",
        "/v1/timers",
        Some(json!({ "id": 20, "delay_ms": 3000, "reminders_ms": [2500] })),
    );
    assert_eq!(status, 201, "{body}");
    for kind in ["reminder", "expired"] {
        let event = poll_one(&node, "billing", 20);
        assert_eq!(event["kind"], kind, "{event}");
        let (_, body) = node.json(
            "POST",
            "/v1/groups/billing/acks",
            Some(json!([{ "id": 20, "token": event["token"] }])),
        );
        assert_eq!(body["results"][0]["outcome"], "ok", "{body}");
    }

    // Refusals: each a 4xx with a JSON error naming the problem.
    let refusals: [(&str, &str, Option<String>, u16, &str); 11] = [
        ("POST", "/v1/timers", Some("{\"id\": 1,".into()), 400, "EOF"),
        (
            "POST",
            "/v1/timers",
            Some("{\"id\": -1, \"delay_ms\": 5}".into()),
            400,
            "invalid value",
        ),
        (
            "POST",
            "/v1/timers",
            Some("{\"id\": 2}".into()),
            400,
            "exactly one",
        ),
        (
            "POST",
            "/v1/timers",
            Some("{\"id\": 2, \"delay_ms\": 1, \"colour\": 1}".into()),
            400,
            "colour",
        ),
        (
            "POST",
            "/v1/timers",
            Some(format!(
                "{{\"id\": 2, \"delay_ms\": 1, \"payload\": \"{}\"}}",
                "x".repeat(70_000)
            )),
            413,
            "length limit",
        ),
        (
            "POST",
            "/v1/timers:batch",
            Some(json!({ "timers": vec![json!({"id": 1, "delay_ms": 1}); 51] }).to_string()),
            400,
            "at most 50",
        ),
        ("DELETE", "/v1/timers/abc", None, 400, "unsigned"),
        ("GET", "/v1/groups/nope/events", None, 404, "nope"),
        (
            "GET",
            "/v1/groups/billing/events?wait_ms=9999999",
            None,
            400,
            "wait_ms",
        ),
        ("GET", "/v1/groups/billing/events?max=0", None, 400, "max"),
        ("GET", "/v2/anything", None, 404, "no such endpoint"),
    ];
    for (method, path, body, want, says) in refusals {
        let (status, text) = node.call(method, path, body.as_deref());
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} body not JSON ({e}): {text}"));
        assert_eq!(status, want, "{method} {path}: {text}");
        assert!(error_of(&value).contains(says), "{method} {path}: {text}");
    }

    // Metrics parse and count what happened.
    let (status, text) = node.call("GET", "/metrics", None);
    assert_eq!(status, 200);
    let metrics = prom_text::parse(&text).expect("Prometheus text");
    assert!(
        metrics
            .value("duewheel_node_scheduled_total", &NODE_API)
            .unwrap()
            >= 3.0,
        "{text}"
    );
    assert_eq!(
        metrics.value("duewheel_node_owned_shards", &NODE_API),
        Some(f64::from(SHARDS))
    );
    assert_eq!(metrics.value("duewheel_node_ready", &NODE_API), Some(1.0));
    assert_eq!(
        metrics.type_of("duewheel_node_fenced_total"),
        Some("counter")
    );

    // SIGTERM with a long-poll waiting: it answers, the node exits 0.
    let addr = node.addr.clone();
    let poll = std::thread::spawn(move || {
        http(&addr, "GET", "/v1/groups/mail/events?wait_ms=30000", None)
    });
    std::thread::sleep(Duration::from_millis(300));
    node.sigterm();
    let (status, body) = poll.join().unwrap();
    assert!(status == 200 || status == 503, "{status} {body}");
    let mut process = node.process;
    let exit = process
        .wait_timeout(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(
        exit.success(),
        "{exit:?}; stderr:\n{}",
        process.stderr_tail()
    );
}

#[test]
fn sigterm_hands_leases_back_so_another_node_takes_over_and_delivers() {
    let _serial = serial();
    let Some(db) = TestSchema::new("node_http_term") else {
        return;
    };
    let a = Node::start(&db, "a", &[]);
    a.wait_health(200, READY);
    let b = Node::start(&db, "b", &[]);
    b.wait_health(200, READY);

    // Due after A's SIGTERM, scheduled through A.
    let due = wall_ms() + 1_500;
    let timers: Vec<Value> = (100..140)
        .map(|id| json!({ "id": id, "deadline_ms": due, "payload": format!("p{id}") }))
        .collect();
    let (status, body) = a.json(
        "POST",
        "/v1/timers:batch",
        Some(json!({ "timers": timers })),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == 201),
        "{body}"
    );

    let mut sql = db.client();
    let owners = |sql: &mut postgres::Client| -> Vec<Option<String>> {
        sql.query("SELECT owner FROM shards ORDER BY shard_id", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    // Ready does not mean owning shards (a node may have none to hold):
    // wait until A holds some, so the SIGTERM has leases to hand back.
    let start = Instant::now();
    while !owners(&mut sql).iter().any(|o| o.as_deref() == Some("a")) {
        assert!(
            start.elapsed() < READY,
            "a owns no shard before its SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent = Instant::now();
    a.sigterm();
    let taken_over = loop {
        let all_b = owners(&mut sql).iter().all(|o| o.as_deref() == Some("b"));
        if all_b {
            break sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_millis(TTL_MS / 3),
            "b did not take every shard within a third of the lease ttl: the leases were not handed back"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "takeover after SIGTERM: {} ms (lease ttl {TTL_MS} ms); loadavg {}",
        taken_over.as_millis(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut process = a.process;
    let exit = process
        .wait_timeout(Duration::from_secs(20))
        .expect("a exits after SIGTERM");
    assert!(
        exit.success(),
        "{exit:?}; stderr:\n{}",
        process.stderr_tail()
    );

    // Every timer scheduled through A fires at B, in both groups.
    let want: BTreeSet<u64> = (100..140).collect();
    assert_eq!(
        consume_all(&b, "billing", &want, Duration::from_secs(60)),
        want
    );
    assert_eq!(
        consume_all(&b, "mail", &want, Duration::from_secs(60)),
        want
    );
    b.wait_health(200, Duration::from_secs(5));
}

#[test]
fn healthz_turns_unready_on_database_errors_and_ready_again() {
    let _serial = serial();
    let Some(db) = TestSchema::new("node_http_health") else {
        return;
    };
    let Some(restart) = pg::restart_command() else {
        return;
    };
    let node = Node::start(&db, "h", &[]);
    node.wait_health(200, READY);
    // The restart breaks every connection: the next lease round fails.
    let ok = std::process::Command::new("sh")
        .args(["-c", &restart])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("restart")
        .success();
    assert!(ok, "restart command failed");
    node.wait_health(503, Duration::from_secs(20));
    node.wait_health(200, Duration::from_secs(60));
}
