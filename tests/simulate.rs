//! `duewheel simulate`, run as the built binary: a small sale keeps every
//! invariant and replays exactly from its seed, and bad arguments are
//! refused with exit code 2 and a message, never a panic.

use serde_json::Value;
use std::process::{Command, Output};

fn simulate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_duewheel"))
        .arg("simulate")
        .args(args)
        .output()
        .expect("the duewheel binary runs")
}

/// Runs with `--json`, asserts success, returns the report.
fn report(args: &[&str]) -> Value {
    let out = simulate(&[args, &["--json"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn assert_every_invariant_holds(report: &Value) {
    let invariants = report["invariants"].as_array().expect("invariants");
    let ids: Vec<&str> = invariants
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "never_paid_cancelled_once",
            "no_paid_order_cancelled",
            "stock_conserved",
            "reminders_before_expiry_none_after_payment",
            "no_event_dropped",
            "no_event_early",
        ]
    );
    for check in invariants {
        assert_eq!(check["ok"], true, "{check:#}");
        assert_eq!(check["violations"], 0, "{check:#}");
    }
    assert_eq!(report["ok"], true);
}

/// `"--a 1 --b 2"` as arguments.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn count(report: &Value, section: &str, field: &str) -> u64 {
    report[section][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{section}.{field} in {report:#}"))
}

#[test]
fn a_small_sale_keeps_every_invariant_and_exercises_every_path() {
    let report = report(&words("--orders 10000"));
    assert_every_invariant_holds(&report);
    let sale = |field| count(&report, "sale", field);
    assert_eq!(sale("orders"), 10_000);
    assert_eq!(sale("placed"), 10_000);
    assert_eq!(sale("paid") + sale("cancelled"), 10_000);
    assert!(
        sale("cancelled_never_paid") > 2_000,
        "about a quarter never pay"
    );
    assert!(
        sale("last_second_refunded") > 0,
        "some last-second payments lose the race"
    );
    assert!(
        sale("paid_after_recheck") > 0,
        "some pending payments win after a re-check"
    );
    assert!(sale("rechecks_ran_out") > 0, "some re-checks run out");
    assert!(sale("reminders_sent") > 0);
    assert_eq!(
        sale("stock_initial"),
        sale("stock_sold") + sale("stock_available")
    );
    assert_eq!(count(&report, "engine", "redelivered"), 0);
}

#[test]
fn the_same_seed_replays_the_same_sale() {
    let args = ["--orders", "3000", "--step", "1s", "--seed", "7"];
    let (a, b) = (report(&args), report(&args));
    assert_eq!(a["sale"], b["sale"]);
    assert_eq!(a["invariants"], b["invariants"]);
    let other = report(&words("--orders 3000 --step 1s --seed 8"));
    assert_ne!(a["sale"], other["sale"], "another seed, another sale");
}

#[test]
fn selling_out_and_short_windows_keep_stock_conserved() {
    // Windows shorter than the sale: stock released by expiries is sold
    // again while the sale goes on, and the last buyers find it sold out.
    let report = report(&words(
        "--orders 5000 --stock 4000 --sale 5m --window 1m --remind-before 20s \
         --pending-for 2s..40s --recheck 2s --step 1s",
    ));
    assert_every_invariant_holds(&report);
    assert!(count(&report, "sale", "sold_out") > 0);
}

#[test]
fn a_full_engine_turns_orders_away_without_losing_stock() {
    let report = report(&words("--orders 4000 --max-pending 1000 --step 1s"));
    assert_every_invariant_holds(&report);
    assert!(count(&report, "sale", "engine_refused") > 0);
    assert_eq!(
        count(&report, "sale", "engine_refused"),
        count(&report, "engine", "rejected_full")
    );
}

#[test]
fn the_real_time_clock_keeps_every_invariant_too() {
    let report = report(&words(
        "--real-time --speed 100 --orders 3000 --sale 20s --window 1m --remind-before 20s \
         --pending-for 1s..15s --recheck 1s",
    ));
    assert_every_invariant_holds(&report);
}

#[test]
fn the_html_report_is_one_self_contained_page() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("simulate-report.html");
    let out = simulate(&[
        "--orders",
        "2000",
        "--step",
        "1s",
        "--report",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all 6 invariants hold"));
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(
        html.matches("<svg").count(),
        4,
        "pending, expiries, lateness, memory"
    );
    assert!(!html.contains("<script") && !html.contains("http://") && !html.contains("https://"));
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let unwritable = "/nonexistent-dir/report.html";
    let cases: &[(&[&str], &str)] = &[
        (&["--pay-ratio", "1.5"], "between 0 and 1"),
        (&["--orders", "0"], "at least 1"),
        (&["--report", unwritable], "cannot write the report"),
        (
            &["--pay-ratio", "0.9", "--pending-ratio", "0.2"],
            "add up to more than 1",
        ),
        (&["--remind-before", "40m"], "shorter than --window"),
        (&["--window", "30"], "duration"),
        (&["--step", "0ms"], "--step"),
        (&["--speed", "60"], "--real-time"),
        (&["--real-time", "--speed", "0"], "between"),
        (&["--pending-for", "5m..1m"], "MIN <= MAX"),
        (&["--max-qty", "0"], "max-qty"),
        (&["--no-such-flag"], "no-such-flag"),
    ];
    for (args, expected) in cases {
        let out = simulate(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a report");
    }
}
