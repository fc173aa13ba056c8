//! `duewheel simulate --metrics-addr`: the engine's Prometheus metrics are
//! served over HTTP while the sale runs, and the run still keeps every
//! invariant.

use duewheel_testkit::prom_text;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn a_real_time_sale_serves_its_metrics_while_it_runs() {
    // About 2 s of real time: 40 s of sale and windows at 20x.
    let mut child = Command::new(env!("CARGO_BIN_EXE_duewheel"))
        .args([
            "simulate", "--orders", "5000", "--sale", "10s", "--window", "30s",
        ])
        .args([
            "--remind-before",
            "10s",
            "--pending-for",
            "1s..2s",
            "--recheck",
            "1s",
        ])
        .args(["--real-time", "--speed", "20", "--json"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the duewheel binary runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"));

    // Scrape until the sale is visibly under way: timers pending and
    // reminders fired, with the counter never going down.
    let started = Instant::now();
    let mut last_reminders = 0.0;
    loop {
        let text = scrape(&addr);
        let m = prom_text::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let reminders = m
            .value("duewheel_fired_total", &[("kind", "reminder")])
            .unwrap_or(0.0);
        assert!(reminders >= last_reminders, "a counter went down");
        last_reminders = reminders;
        let pending = m.value("duewheel_pending_timers", &[]).unwrap();
        if reminders > 0.0 && pending > 0.0 {
            for group in ["orders", "inventory", "notifier"] {
                assert!(
                    m.value("duewheel_consumer_lag", &[("group", group)])
                        .is_some()
                );
            }
            assert_eq!(m.type_of("duewheel_lateness_seconds"), Some("histogram"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no progress seen:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true);
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_duewheel"))
        .args(["simulate", "--orders", "100", "--metrics-addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot serve metrics"), "{stderr}");
}
