//! `--report PATH`: the report as one self-contained HTML page.
//!
//! Invariant: the page needs nothing but itself. Styles are inline, charts
//! are SVG drawn here, hover details are SVG `<title>`s, and there is no
//! script and no network reference, so it opens anywhere, offline, and can
//! be attached to a ticket as is.

use super::args::show_ms;
use super::driver::{Outcome, Sample, group_digits};
use super::report::{Report, mib, rate};
use super::services::BUCKETS;
use std::fmt::Write as _;
use std::io::Write as _;

/// Most points a chart draws; longer series are bucketed.
const MAX_POINTS: usize = 720;

const BLUE: &str = "#3b6fd8";
const GREEN: &str = "#2f9e6a";
const TEAL: &str = "#1c9aa8";
const ORANGE: &str = "#e8871e";
const RED: &str = "#d64545";
const GREY: &str = "#8a93a3";
const PURPLE: &str = "#7a5bd0";

/// Writes the page to `file`.
pub(crate) fn write(
    mut file: std::fs::File,
    report: &Report<'_>,
    outcome: &Outcome,
) -> std::io::Result<()> {
    file.write_all(page(report, outcome).as_bytes())?;
    file.sync_all()
}

fn page(report: &Report<'_>, outcome: &Outcome) -> String {
    let c = report.config;
    let s = &report.sale;
    let p = &report.performance;
    let mut html = String::with_capacity(256 * 1024);
    let title = format!(
        "duewheel flash sale: {} orders, seed {}",
        group_digits(s.orders),
        c.seed
    );
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><main>",
        esc(&title)
    );

    // Headline.
    let _ = write!(
        html,
        "<header><h1>Flash sale: {} orders</h1><p class=\"sub\">{} sale · {} payment window · \
         reminder {} before · seed {} · {} · {} shards · {}</p>",
        group_digits(s.orders),
        show_ms(c.sale_ms),
        show_ms(c.window_ms),
        show_ms(c.remind_before_ms),
        c.seed,
        esc(&p.clock),
        c.shards,
        esc(&p.storage)
    );
    let held = report.invariants.iter().filter(|i| i.ok).count();
    let _ = write!(
        html,
        "<div class=\"verdict {}\">{}</div></header>",
        if report.ok { "ok" } else { "bad" },
        if report.ok {
            format!("✓ All {held} invariants hold")
        } else {
            format!(
                "✗ {} of {} invariants broken",
                report.invariants.len() - held,
                report.invariants.len()
            )
        }
    );

    // Cards.
    let pct = |n: u64| format!("{:.1}%", 100.0 * n as f64 / s.orders.max(1) as f64);
    let per_timer = p
        .bytes_per_pending_timer
        .map_or("n/a".to_string(), |b| format!("{b:.0} B"));
    let cards = [
        ("Paid", group_digits(s.paid), pct(s.paid)),
        (
            "Cancelled unpaid",
            group_digits(s.cancelled),
            pct(s.cancelled),
        ),
        (
            "Refunded (expiry won)",
            group_digits(s.refunded),
            format!(
                "{} in the last second",
                group_digits(s.last_second_refunded)
            ),
        ),
        (
            "Re-checks",
            group_digits(s.rechecks),
            format!("{} ran out", group_digits(s.rechecks_ran_out)),
        ),
        (
            "Wall time",
            format!("{:.1} s", p.wall_s),
            format!("{:.0}× real time", p.speedup),
        ),
        (
            "Peak pending",
            group_digits(p.peak_pending as u64),
            format!("at {}", show_ms((p.peak_pending_at_s * 1e3) as u64)),
        ),
        (
            "Lateness p99",
            format!("{} ms", p.lateness_p99_ms),
            format!("max {} ms, {} ms ticks", p.lateness_max_ms, p.tick_ms),
        ),
        (
            "Memory",
            p.rss_peak_bytes.map_or("n/a".into(), mib),
            format!("{per_timer} per pending timer"),
        ),
    ];
    html.push_str("<section class=\"cards\">");
    for (label, value, note) in cards {
        let _ = write!(
            html,
            "<div class=\"card\"><div class=\"label\">{}</div><div class=\"value\">{}</div>\
             <div class=\"note\">{}</div></div>",
            esc(label),
            esc(&value),
            esc(&note)
        );
    }
    html.push_str("</section>");

    // Where the orders went.
    html.push_str("<section><h2>Where the orders went</h2>");
    let paid_first = s.paid - s.paid_after_recheck;
    let refunded = s.refunded;
    let never = s.cancelled - refunded;
    let turned_away = s.sold_out + s.engine_refused;
    let parts = [
        ("paid in the window", paid_first, GREEN),
        ("paid after a re-check", s.paid_after_recheck, TEAL),
        ("cancelled, never paid", never, GREY),
        ("cancelled, paid too late (refunded)", refunded, ORANGE),
        ("turned away (sold out / engine full)", turned_away, RED),
    ];
    html.push_str("<div class=\"stack\">");
    for (label, n, color) in parts.iter().filter(|p| p.1 > 0) {
        let share = 100.0 * *n as f64 / s.orders.max(1) as f64;
        let _ = write!(
            html,
            "<div style=\"flex:{n} 1 0;background:{color}\" title=\"{}: {} ({share:.1}%)\"></div>",
            esc(label),
            group_digits(*n)
        );
    }
    html.push_str("</div><ul class=\"legend\">");
    for (label, n, color) in parts.iter().filter(|p| p.1 > 0) {
        let _ = write!(
            html,
            "<li><span class=\"dot\" style=\"background:{color}\"></span>{} <b>{}</b></li>",
            esc(label),
            group_digits(*n)
        );
    }
    html.push_str("</ul></section>");

    // Invariants.
    html.push_str("<section><h2>Invariants</h2><ul class=\"checks\">");
    for check in &report.invariants {
        let _ = write!(
            html,
            "<li class=\"{}\"><span class=\"mark\">{}</span><div><b>{}</b><br><span class=\"detail\">{}</span>",
            if check.ok { "ok" } else { "bad" },
            if check.ok { "✓" } else { "✗" },
            esc(check.name),
            esc(&check.detail)
        );
        if !check.ok {
            let _ = write!(
                html,
                "<br>{} violations, e.g.:<ul>",
                group_digits(check.violations)
            );
            for example in &check.examples {
                let _ = write!(html, "<li><code>{}</code></li>", esc(example));
            }
            html.push_str("</ul>");
        }
        html.push_str("</div></li>");
    }
    html.push_str("</ul></section>");

    if let Some(crash) = &report.crash {
        let mut text = String::new();
        crash.write_text(&mut text);
        let _ = write!(
            html,
            "<section><h2>Crash and recovery</h2><pre>{}</pre></section>",
            esc(text.trim())
        );
    }

    // Charts over simulated time.
    let samples = &outcome.samples;
    let mut markers = vec![
        (c.sale_ms as f64 / 1e3, "sale ends"),
        (c.window_ms as f64 / 1e3, "first windows close"),
        ((c.sale_ms + c.window_ms) as f64 / 1e3, "last window closes"),
    ];
    if let Some(crash) = &report.crash {
        markers.push((crash.crash.at_ms as f64 / 1e3, "engine crashed"));
    }
    let pending: Vec<(f64, f64)> = samples
        .iter()
        .map(|x| (x.t_ms as f64 / 1e3, x.pending as f64))
        .collect();
    html.push_str("<section><h2>Pending timers</h2><p class=\"sub\">Timers waiting in the engine, per simulated second: orders arrive front-loaded, payments take timers out, expiries take the rest (snoozed re-checks wait again).</p>");
    let paid: Vec<(f64, f64)> = samples
        .iter()
        .map(|x| (x.t_ms as f64 / 1e3, x.paid as f64))
        .collect();
    html.push_str(&time_chart(
        &[
            Series {
                name: "pending timers",
                color: BLUE,
                area: true,
                points: bucket(&pending, Reduce::Max),
            },
            Series {
                name: "orders paid so far",
                color: GREEN,
                area: false,
                points: bucket(&paid, Reduce::Max),
            },
        ],
        &markers,
        count_label,
    ));
    html.push_str("</section>");

    let expired = per_second(samples, |x| x.expired_total);
    let reminders = per_second(samples, |x| x.reminders_total);
    let snoozed = per_second(samples, |x| x.snoozed_total);
    html.push_str("<section><h2>Expiries per second</h2><p class=\"sub\">Events leaving the wheel per simulated second. Expiries include the re-checks of orders whose payment was still pending.</p>");
    html.push_str(&time_chart(
        &[
            Series {
                name: "expiries",
                color: RED,
                area: true,
                points: bucket(&expired, Reduce::Mean),
            },
            Series {
                name: "reminders",
                color: PURPLE,
                area: false,
                points: bucket(&reminders, Reduce::Mean),
            },
            Series {
                name: "re-checks scheduled",
                color: ORANGE,
                area: false,
                points: bucket(&snoozed, Reduce::Mean),
            },
        ],
        &markers,
        count_label,
    ));
    html.push_str("</section>");

    let buckets = &outcome.orders.receipts.lateness_buckets;
    let _ = write!(
        html,
        "<section><h2>Lateness</h2><p class=\"sub\">From each event's exact due time to its firing, as the order service saw it \
         ({} events). The engine rounds a deadline up to its tick ({} ms) and never fires early; \
         behind the clock: p50 {} ms, p99 {} ms, max {} ms.</p>",
        group_digits(outcome.orders.receipts.total()),
        p.tick_ms,
        p.lateness_p50_ms,
        p.lateness_p99_ms,
        p.lateness_max_ms
    );
    html.push_str(&histogram(buckets));
    html.push_str("</section>");

    let rss: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|x| {
            x.rss
                .map(|r| (x.t_ms as f64 / 1e3, r.now_bytes as f64 / (1024.0 * 1024.0)))
        })
        .collect();
    if !rss.is_empty() {
        let _ = write!(
            html,
            "<section><h2>Resident memory</h2><p class=\"sub\">RSS of the whole process. At the engine's start: {}; at peak pending: {}; \
             that growth over the peak is {} per pending timer.</p>",
            p.rss_engine_start_bytes.map_or("n/a".into(), mib),
            p.rss_at_peak_pending_bytes.map_or("n/a".into(), mib),
            per_timer
        );
        html.push_str(&time_chart(
            &[Series {
                name: "RSS (MiB)",
                color: GREEN,
                area: true,
                points: bucket(&rss, Reduce::Max),
            }],
            &markers,
            mib_label,
        ));
        html.push_str("</section>");
    }

    // Groups and throughput.
    html.push_str("<section class=\"two\"><div><h2>Consumer groups</h2><table><tr><th>group</th><th>events</th><th>max lag</th><th>lag at end</th></tr>");
    for g in &p.groups {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            g.name,
            group_digits(g.events),
            group_digits(g.max_lag),
            group_digits(g.final_lag)
        );
    }
    let _ = write!(
        html,
        "</table><p class=\"sub\">Lag: events queued for the group right after a dispatch.</p></div>\
         <div><h2>Throughput</h2><table>\
         <tr><td>orders scheduled</td><td>{}/s</td></tr>\
         <tr><td>events delivered</td><td>{}/s ({} in all)</td></tr>\
         <tr><td>simulated</td><td>{} in {:.1} s</td></tr>\
         <tr><td>engine totals</td><td>{} scheduled, {} cancelled, {} expired, {} acked, {} snoozed, {} redelivered</td></tr>\
         </table></div></section>",
        rate(p.orders_scheduled_per_s),
        rate(p.events_delivered_per_s),
        group_digits(p.events_delivered),
        show_ms((p.simulated_s * 1e3) as u64),
        p.wall_s,
        group_digits(report.engine.scheduled),
        group_digits(report.engine.cancelled),
        group_digits(report.engine.expired),
        group_digits(report.engine.acked),
        group_digits(report.engine.snoozed),
        group_digits(report.engine.redelivered)
    );

    // Configuration, and how to get this page again.
    html.push_str("<section><h2>Configuration</h2><table class=\"config\">");
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(c) {
        for (key, value) in fields {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&key),
                esc(&value.to_string())
            );
        }
    }
    let _ = write!(
        html,
        "</table><p class=\"sub\">Reproduce: <code>{}</code></p></section>",
        esc(&report.command)
    );
    html.push_str("</main></body></html>\n");
    html
}

/// One line or area on a time chart; `points` are (seconds, value).
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    area: bool,
    points: Vec<(f64, f64)>,
}

#[derive(Clone, Copy)]
enum Reduce {
    Max,
    Mean,
}

/// At most [`MAX_POINTS`] points: each bucket keeps its largest (levels)
/// or its mean (rates) value.
fn bucket(points: &[(f64, f64)], reduce: Reduce) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let size = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(size)
        .map(|chunk| {
            let x = chunk[chunk.len() - 1].0;
            let y = match reduce {
                Reduce::Max => chunk.iter().map(|p| p.1).fold(0.0, f64::max),
                Reduce::Mean => chunk.iter().map(|p| p.1).sum::<f64>() / chunk.len() as f64,
            };
            (x, y)
        })
        .collect()
}

/// Events per second from a cumulative counter.
fn per_second(samples: &[Sample], total: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .map(|w| {
            let dt_s = (w[1].t_ms.saturating_sub(w[0].t_ms)).max(1) as f64 / 1e3;
            let dn = total(&w[1]).saturating_sub(total(&w[0])) as f64;
            (w[1].t_ms as f64 / 1e3, dn / dt_s)
        })
        .collect()
}

const W: f64 = 920.0;
const H: f64 = 250.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// A chart over simulated time, with a legend, axes, markers and hover
/// details.
fn time_chart(
    series: &[Series<'_>],
    markers: &[(f64, &str)],
    y_label: fn(f64) -> String,
) -> String {
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_step = nice_step(y_max.max(1.0) / 4.0);
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |s: f64| LEFT + s / x_max * pw;
    let y = |v: f64| TOP + ph - v / y_top * ph;
    let mut svg = String::new();
    let _ = write!(svg, "<div class=\"legend-row\">");
    for s in series {
        let _ = write!(
            svg,
            "<span><span class=\"dot\" style=\"background:{}\"></span>{}</span>",
            s.color,
            esc(s.name)
        );
    }
    let _ = write!(
        svg,
        "</div><svg viewBox=\"0 0 {W} {H}\" role=\"img\" class=\"chart\">"
    );
    // Grid and y axis.
    let mut v = 0.0;
    while v <= y_top + y_step / 2.0 {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" class=\"grid\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            y(v),
            y(v),
            LEFT - 6.0,
            y(v) + 4.0,
            y_label(v)
        );
        v += y_step;
    }
    // X axis in simulated time.
    let x_step = [
        60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
    ]
    .into_iter()
    .find(|step| x_max / step <= 10.0)
    .unwrap_or(86400.0 * 7.0);
    let mut t = 0.0;
    while t <= x_max {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            x(t),
            H - 10.0,
            if t == 0.0 {
                "0".to_string()
            } else {
                show_ms((t * 1e3) as u64)
            }
        );
        t += x_step;
    }
    // Markers.
    for &(at, label) in markers.iter().filter(|m| m.0 <= x_max) {
        let _ = write!(
            svg,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{1:.1}\" class=\"marker\"/>\
             <text x=\"{2:.1}\" y=\"{3:.1}\" class=\"marker-label\">{4}</text>",
            x(at),
            TOP + ph,
            x(at) + 4.0,
            TOP + 12.0,
            esc(label)
        );
    }
    // Series.
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let mut path = String::new();
        for (i, &(t, v)) in s.points.iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { " L" },
                x(t),
                y(v)
            );
        }
        if s.area {
            let (first, last) = (s.points[0].0, s.points[s.points.len() - 1].0);
            let _ = write!(
                svg,
                "<path d=\"{path} L{:.1},{:.1} L{:.1},{:.1} Z\" fill=\"{}\" fill-opacity=\"0.18\" stroke=\"none\"/>",
                x(last),
                y(0.0),
                x(first),
                y(0.0),
                s.color
            );
        }
        let _ = write!(
            svg,
            "<path d=\"{path}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"/>",
            s.color
        );
    }
    // Hover details: one transparent column per point of the first series.
    if let Some(first) = series.first() {
        let n = first.points.len().max(1) as f64;
        let width = pw / n;
        for (i, &(t, _)) in first.points.iter().enumerate() {
            let mut title = show_ms((t * 1e3) as u64);
            for s in series {
                if let Some(&(_, v)) = s.points.get(i) {
                    let _ = write!(title, "\n{}: {}", s.name, group_digits(v.round() as u64));
                }
            }
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{TOP}\" width=\"{:.2}\" height=\"{ph:.1}\" class=\"hover\"><title>{}</title></rect>",
                x(t) - width,
                width,
                esc(&title)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The lateness histogram: buckets `0`, `1`, `2-3`, `4-7`, ... ms.
fn histogram(buckets: &[u64; BUCKETS]) -> String {
    let last = buckets.iter().rposition(|&n| n > 0).unwrap_or(0);
    let shown = &buckets[..=last.max(3)];
    let max = shown.iter().copied().max().unwrap_or(0).max(1) as f64;
    let total: u64 = shown.iter().sum();
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM - 14.0);
    let slot = pw / shown.len() as f64;
    let mut svg = format!("<svg viewBox=\"0 0 {W} {H}\" role=\"img\" class=\"chart\">");
    for (i, &n) in shown.iter().enumerate() {
        let label = match i {
            0 => "0 ms".to_string(),
            1 => "1 ms".to_string(),
            _ => format!("{}–{} ms", 1u64 << (i - 1), (1u64 << i) - 1),
        };
        let height = n as f64 / max * ph;
        let (bx, by) = (
            LEFT + i as f64 * slot + slot * 0.12,
            TOP + 14.0 + ph - height,
        );
        let share = 100.0 * n as f64 / total.max(1) as f64;
        let _ = write!(
            svg,
            "<rect x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"{BLUE}\" rx=\"2\">\
             <title>{}: {} events ({share:.1}%)</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            slot * 0.76,
            esc(&label),
            group_digits(n),
            bx + slot * 0.38,
            by - 4.0,
            if n > 0 {
                format!("{share:.1}%")
            } else {
                String::new()
            },
            bx + slot * 0.38,
            H - 10.0,
            esc(&label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `rough`.
fn nice_step(rough: f64) -> f64 {
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&step| step >= rough)
        .unwrap_or(10.0 * power)
}

fn count_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn mib_label(v: f64) -> String {
    format!("{v:.0} MiB")
}

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
:root{--ink:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
main{max-width:1000px;margin:0 auto;padding:28px 20px 60px}
h1{font-size:28px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 6px}
.sub{color:var(--muted);margin:0 0 10px;font-size:13.5px}
header{margin-bottom:18px}
.verdict{display:inline-block;margin-top:8px;padding:6px 14px;border-radius:999px;font-weight:600}
.verdict.ok{background:#e3f6ec;color:#17794a}
.verdict.bad{background:#fde8e8;color:#b42318}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px 18px;margin:14px 0}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;background:none;border:none;padding:0}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12.5px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:24px;font-weight:650;margin:2px 0}
.card .note{color:var(--muted);font-size:12.5px}
.stack{display:flex;height:26px;border-radius:7px;overflow:hidden;margin:8px 0}
.legend{list-style:none;padding:0;margin:6px 0 0;display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13.5px}
.legend-row{display:flex;gap:16px;font-size:13px;color:var(--muted);margin-bottom:2px}
.dot{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.checks{list-style:none;padding:0;margin:0}
.checks>li{display:flex;gap:12px;padding:9px 0;border-top:1px solid var(--line)}
.checks>li:first-child{border-top:none}
.mark{font-size:18px;width:24px;text-align:center}
.checks .ok .mark{color:#17794a}.checks .bad .mark{color:#b42318}
.detail{color:var(--muted);font-size:13.5px}
svg.chart{width:100%;height:auto;display:block}
.grid{stroke:var(--line);stroke-width:1}
.tick{fill:var(--muted);font-size:11px}
.marker{stroke:#98a2b3;stroke-dasharray:4 4}
.marker-label{fill:#667085;font-size:11px}
.hover{fill:transparent}.hover:hover{fill:rgba(59,111,216,.08)}
table{border-collapse:collapse;width:100%;font-size:13.5px}
td,th{text-align:left;padding:5px 8px;border-top:1px solid var(--line)}
th{color:var(--muted);font-weight:500;border-top:none}
.two{display:grid;grid-template-columns:1fr 1fr;gap:24px}
.config td:first-child{color:var(--muted);width:40%}
code{font:12.5px ui-monospace,Menlo,Consolas,monospace;background:#f2f4f7;padding:1px 5px;border-radius:4px;word-break:break-all}
@media (max-width:760px){.cards{grid-template-columns:repeat(2,1fr)}.two{grid-template-columns:1fr}}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(130.0), 200.0);
        assert_eq!(nice_step(4_000.0), 5_000.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn long_series_are_bucketed() {
        let points: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (f64::from(i), f64::from(i % 7)))
            .collect();
        let max = bucket(&points, Reduce::Max);
        assert!(max.len() <= MAX_POINTS);
        // Every full bucket of 14 points holds a 6, the peak.
        assert!(max[..max.len() - 1].iter().all(|p| p.1 == 6.0));
    }
}
