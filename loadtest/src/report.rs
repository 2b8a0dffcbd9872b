//! Presenting results: the human summary, the one-line JSON, and a self-contained HTML report
//! (inline SVG charts and tables, no scripts, no external assets).
//!
//! Owns presentation only; every figure comes from the scenario reports as they were measured.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::connections::ConnectionsReport;
use crate::scenario::ramp::RampReport;
use crate::scenario::traffic::TrafficReport;
use crate::stats::Percentiles;

/// The result of any scenario.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    Traffic(Box<TrafficReport>),
    Connections(ConnectionsReport),
    Ramp(RampReport),
}

impl Report {
    pub fn pass(&self) -> bool {
        match self {
            Report::Traffic(r) => r.pass,
            Report::Connections(r) => r.pass,
            Report::Ramp(r) => r.pass,
        }
    }

    /// One JSON object on one line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }

    /// The human summary, several lines.
    pub fn text(&self) -> String {
        match self {
            Report::Traffic(r) => traffic_text(r),
            Report::Connections(r) => connections_text(r),
            Report::Ramp(r) => ramp_text(r),
        }
    }
}

fn pct_line(name: &str, p: &Percentiles) -> String {
    format!(
        "{name:<10} p50 {:>9.3}  p90 {:>9.3}  p99 {:>9.3}  p99.9 {:>9.3}  max {:>9.3}  (n={})",
        p.p50, p.p90, p.p99, p.p999, p.max, p.count
    )
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// One line per traffic run (the ramp prints one per step).
pub fn traffic_line(r: &TrafficReport) -> String {
    format!(
        "{} {} msg/s: ratio {:.6} ({}/{}), {:.0} deliveries/s, p50 {:.2} p99 {:.2} max {:.2} ms, \
         server {} µs/delivery, {}",
        r.scenario,
        r.rate_msgs_per_s,
        r.delivery_ratio,
        r.received_deliveries,
        r.expected_deliveries,
        r.deliveries_per_s,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.max,
        opt(r.cpu.server_us_per_delivery),
        verdict(r.pass)
    )
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

pub fn traffic_text(r: &TrafficReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== {} == {} | {} room(s), {}/{} receivers, {}/{} publishers, {} msg/s for {} s, {} B payload",
        r.scenario,
        verdict(r.pass),
        r.rooms,
        r.receivers_joined,
        r.receivers,
        r.publishers_joined,
        r.publishers,
        r.rate_msgs_per_s,
        r.duration_s,
        r.payload_bytes
    );
    let _ = writeln!(
        s,
        "messages   planned {} sent {} | deliveries expected {} received {} ratio {:.6} | \
         duplicates {} foreign {} misrouted {}",
        r.planned_msgs,
        r.sent_msgs,
        r.expected_deliveries,
        r.received_deliveries,
        r.delivery_ratio,
        r.duplicates,
        r.foreign,
        r.misrouted
    );
    let _ = writeln!(
        s,
        "throughput {:.0} deliveries/s over {:.2} s (target {:.0}/s)",
        r.deliveries_per_s, r.window_s, r.target_deliveries_per_s
    );
    let _ = writeln!(s, "{}", pct_line("latency ms", &r.latency_ms));
    let _ = writeln!(s, "{}", pct_line("send lag", &r.send_lag_ms));
    let _ = writeln!(s, "{}", pct_line("connect", &r.connect_ms));
    let _ = writeln!(s, "{}", pct_line("join", &r.join_ms));
    let _ = writeln!(s, "connect phase {:.2} s", r.connect_phase_s);
    if !r.cpu.watched_s.is_empty() || r.cpu.loadtest_s.is_some() {
        let _ = writeln!(
            s,
            "cpu        server {:?} s = {} µs/delivery | loadtest {} s = {} µs/delivery",
            r.cpu.watched_s,
            opt(r.cpu.server_us_per_delivery),
            opt(r.cpu.loadtest_s),
            opt(r.cpu.loadtest_us_per_delivery)
        );
    }
    for (what, map) in [
        ("connect errors", &r.errors.connect),
        ("server errors", &r.errors.server),
        ("closed early", &r.errors.closed_early),
    ] {
        if !map.is_empty() {
            let _ = writeln!(s, "{what}: {map:?}");
        }
    }
    let _ = write!(
        s,
        "criteria   ratio ≥ {} and p99 < {} ms (also: all joined, all sent, send lag p99 < {} ms)",
        r.min_ratio, r.max_p99_ms, r.max_p99_ms
    );
    s
}

pub fn connections_text(r: &ConnectionsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== connections == {} | {}/{} opened from {} source address(es), {} held to the end, {} dropped",
        verdict(r.pass),
        r.connected,
        r.connections,
        r.sources,
        r.held_to_end,
        r.dropped_during_hold
    );
    let _ = writeln!(
        s,
        "connect phase {:.2} s = {:.0} connects/s | held {} s | heartbeats {} pongs {}",
        r.connect_phase_s, r.connects_per_s, r.hold_s, r.heartbeats_sent, r.pongs_received
    );
    let _ = writeln!(s, "{}", pct_line("handshake", &r.handshake_ms));
    for m in &r.rss {
        let _ = writeln!(
            s,
            "pid {}: VmRSS {} KiB before, {} KiB with {} held = {} bytes per connection",
            m.pid,
            m.before_kib.map_or("-".into(), |v| v.to_string()),
            m.held_kib.map_or("-".into(), |v| v.to_string()),
            m.held_connections,
            m.per_connection_bytes.map_or("-".into(), |v| v.to_string())
        );
    }
    if !r.errors.is_empty() {
        let _ = writeln!(s, "errors: {:?}", r.errors);
    }
    s.trim_end().to_owned()
}

pub fn ramp_text(r: &RampReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== ramp == {} subscribers over {} URL(s); criteria ratio ≥ {}, p99 < {} ms",
        r.subscribers,
        r.urls.len(),
        r.min_ratio,
        r.max_p99_ms
    );
    for step in &r.steps {
        match &step.result {
            Ok(t) => {
                let _ = writeln!(s, "  try {}: {}", step.attempt, traffic_line(t));
            }
            Err(e) => {
                let _ = writeln!(
                    s,
                    "  try {}: {} msg/s: error: {e}",
                    step.attempt, step.rate_msgs_per_s
                );
            }
        }
    }
    let _ = write!(
        s,
        "highest passing: {} msg/s = {} deliveries/s; first failing: {}",
        opt(r.highest_passing_rate),
        opt(r.highest_passing_deliveries_per_s),
        opt(r.first_failing_rate)
    );
    s
}

// ---------------------------------------------------------------- HTML

/// Escape text for HTML and SVG.
pub fn escape(text: &str) -> String {
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

/// The smallest "nice" number (1, 2 or 5 × 10ⁿ) at or above `v`.
pub fn nice_ceil(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * magnitude >= v * (1.0 - 1e-12) {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

/// One line of a chart.
pub struct Line<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// An inline SVG line chart; the y axis starts at 0.
pub fn chart(title: &str, x_label: &str, y_label: &str, lines: &[Line<'_>]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 300.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 34.0;
    const B: f64 = 46.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><rect width="{W}" height="{H}" fill="#fff"/><text x="{L}" y="20" class="title">{t}</text>"##,
        t = escape(title)
    );
    let all: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if all.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" class="empty">no data</text></svg>"#,
            W / 2.0 - 30.0,
            H / 2.0
        );
        return svg;
    }
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    if x1 - x0 < 1e-9 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    let y1 = nice_ceil(all.iter().map(|p| p.1).fold(0.0, f64::max));
    let px = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - y / y1 * (H - T - B);
    // grid and y ticks
    for i in 0..=5 {
        let v = y1 * i as f64 / 5.0;
        let y = py(v);
        let _ = write!(
            svg,
            r##"<line x1="{L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    for i in 0..=5 {
        let v = x0 + (x1 - x0) * i as f64 / 5.0;
        let x = px(v);
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"#,
            H - B + 16.0,
            fmt_tick((v * 100.0).round() / 100.0)
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{L}" x2="{L}" y1="{T}" y2="{}" stroke="#888"/><line x1="{L}" x2="{}" y1="{}" y2="{}" stroke="#888"/>"##,
        H - B,
        W - R,
        H - B,
        H - B
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" class="axis" text-anchor="middle">{}</text><text x="14" y="{}" class="axis" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>"#,
        (L + W - R) / 2.0,
        H - 8.0,
        escape(x_label),
        (T + H - B) / 2.0,
        (T + H - B) / 2.0,
        escape(y_label)
    );
    for (n, line) in lines.iter().enumerate() {
        let pts: Vec<String> = line
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let color = escape(line.color);
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        if pts.len() <= 40 {
            for p in &pts {
                if let Some((x, y)) = p.split_once(',') {
                    let _ = write!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{color}"/>"#);
                }
            }
        }
        let lx = W - R - 150.0;
        let ly = T + 4.0 + n as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="4" fill="{color}"/><text x="{}" y="{:.1}" class="legend">{}</text>"#,
            ly - 4.0,
            lx + 18.0,
            ly + 1.0,
            escape(line.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><thead><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr></thead><tbody>");
    for row in rows {
        s.push_str("<tr>");
        for cell in row {
            let _ = write!(s, "<td>{}</td>", escape(cell));
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

fn pct_row(name: &str, p: &Percentiles) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{:.3}", p.p50),
        format!("{:.3}", p.p90),
        format!("{:.3}", p.p99),
        format!("{:.3}", p.p999),
        format!("{:.3}", p.max),
        format!("{:.3}", p.mean),
        p.count.to_string(),
    ]
}

const PCT_HEAD: [&str; 8] = ["ms", "p50", "p90", "p99", "p99.9", "max", "mean", "count"];

fn traffic_section(r: &TrafficReport) -> String {
    let mut s = String::new();
    let kv = vec![
        vec!["verdict".into(), verdict(r.pass).into()],
        vec!["nodes".into(), r.urls.join(", ")],
        vec![
            "rooms / receivers joined / publishers joined".into(),
            format!(
                "{} / {} of {} / {} of {}",
                r.rooms, r.receivers_joined, r.receivers, r.publishers_joined, r.publishers
            ),
        ],
        vec![
            "rate".into(),
            format!(
                "{} msg/s for {} s, {} B payload (target {:.0} deliveries/s)",
                r.rate_msgs_per_s, r.duration_s, r.payload_bytes, r.target_deliveries_per_s
            ),
        ],
        vec![
            "messages planned / sent".into(),
            format!("{} / {}", r.planned_msgs, r.sent_msgs),
        ],
        vec![
            "deliveries expected / received".into(),
            format!("{} / {}", r.expected_deliveries, r.received_deliveries),
        ],
        vec!["delivery ratio".into(), format!("{:.6}", r.delivery_ratio)],
        vec![
            "duplicates / foreign / misrouted".into(),
            format!("{} / {} / {}", r.duplicates, r.foreign, r.misrouted),
        ],
        vec![
            "deliveries per second".into(),
            format!("{:.0} (over {:.2} s)", r.deliveries_per_s, r.window_s),
        ],
        vec![
            "server CPU per delivery".into(),
            format!(
                "{} µs ({:?} s)",
                opt(r.cpu.server_us_per_delivery),
                r.cpu.watched_s
            ),
        ],
        vec![
            "load generator CPU per delivery".into(),
            format!("{} µs", opt(r.cpu.loadtest_us_per_delivery)),
        ],
        vec![
            "connect phase".into(),
            format!("{:.2} s", r.connect_phase_s),
        ],
        vec![
            "criteria".into(),
            format!(
                "ratio ≥ {}, p99 < {} ms, all joined, all sent, send lag p99 < {} ms",
                r.min_ratio, r.max_p99_ms, r.max_p99_ms
            ),
        ],
    ];
    s.push_str(&table(&["", ""], &kv));
    s.push_str("<h3>Percentiles</h3>");
    s.push_str(&table(
        &PCT_HEAD,
        &[
            pct_row("delivery latency", &r.latency_ms),
            pct_row("publisher send lag", &r.send_lag_ms),
            pct_row("connect", &r.connect_ms),
            pct_row("join", &r.join_ms),
        ],
    ));
    let lat = |f: fn(&crate::stats::SeriesPoint) -> f64| {
        r.series
            .iter()
            .filter(|p| p.delivered > 0)
            .map(|p| (p.t_s, f(p)))
            .collect::<Vec<_>>()
    };
    s.push_str(&chart(
        "Delivery latency per second of receive time",
        "seconds since publishing started",
        "ms",
        &[
            Line {
                name: "p50",
                color: "#2b7bb9",
                points: lat(|p| p.p50_ms),
            },
            Line {
                name: "p99",
                color: "#e08a1e",
                points: lat(|p| p.p99_ms),
            },
            Line {
                name: "max",
                color: "#c0392b",
                points: lat(|p| p.max_ms),
            },
        ],
    ));
    s.push_str(&chart(
        "Deliveries per second",
        "seconds since publishing started",
        "deliveries/s",
        &[Line {
            name: "received",
            color: "#27ae60",
            points: r
                .series
                .iter()
                .map(|p| (p.t_s, p.delivered as f64))
                .collect(),
        }],
    ));
    s.push_str(&chart(
        "Messages sent per second",
        "seconds since publishing started",
        "messages/s",
        &[Line {
            name: "sent",
            color: "#8e44ad",
            points: r.series.iter().map(|p| (p.t_s, p.sent as f64)).collect(),
        }],
    ));
    let mut errs = Vec::new();
    for (what, map) in [
        ("connect", &r.errors.connect),
        ("server error", &r.errors.server),
        ("closed early", &r.errors.closed_early),
    ] {
        for (k, v) in map {
            errs.push(vec![what.to_owned(), k.clone(), v.to_string()]);
        }
    }
    if !errs.is_empty() {
        s.push_str("<h3>Errors</h3>");
        s.push_str(&table(&["kind", "what", "count"], &errs));
    }
    s
}

fn connections_section(r: &ConnectionsReport) -> String {
    let mut s = String::new();
    let mut kv = vec![
        vec!["verdict".into(), verdict(r.pass).into()],
        vec!["nodes".into(), r.urls.join(", ")],
        vec![
            "opened / asked".into(),
            format!("{} / {}", r.connected, r.connections),
        ],
        vec!["source addresses".into(), r.sources.to_string()],
        vec![
            "held to the end / dropped".into(),
            format!("{} / {}", r.held_to_end, r.dropped_during_hold),
        ],
        vec![
            "connect phase".into(),
            format!(
                "{:.2} s = {:.0} connects/s",
                r.connect_phase_s, r.connects_per_s
            ),
        ],
        vec![
            "heartbeats sent / pongs".into(),
            format!("{} / {}", r.heartbeats_sent, r.pongs_received),
        ],
    ];
    for m in &r.rss {
        kv.push(vec![
            format!("pid {} VmRSS before / held", m.pid),
            format!(
                "{} / {} KiB with {} held = {} bytes per connection",
                m.before_kib.map_or("-".into(), |v| v.to_string()),
                m.held_kib.map_or("-".into(), |v| v.to_string()),
                m.held_connections,
                m.per_connection_bytes.map_or("-".into(), |v| v.to_string())
            ),
        ]);
    }
    s.push_str(&table(&["", ""], &kv));
    s.push_str("<h3>Handshake</h3>");
    s.push_str(&table(&PCT_HEAD, &[pct_row("handshake", &r.handshake_ms)]));
    s.push_str(&chart(
        "Open connections",
        "seconds since the start",
        "connections",
        &[Line {
            name: "open",
            color: "#2b7bb9",
            points: r.timeline.iter().map(|&(t, n)| (t, n as f64)).collect(),
        }],
    ));
    if !r.errors.is_empty() {
        let rows: Vec<Vec<String>> = r
            .errors
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        s.push_str("<h3>Errors</h3>");
        s.push_str(&table(&["error", "count"], &rows));
    }
    s
}

fn ramp_section(r: &RampReport) -> String {
    let mut s = String::new();
    s.push_str(&table(
        &["", ""],
        &[
            vec![
                "highest passing step".into(),
                format!(
                    "{} msg/s = {} deliveries/s",
                    opt(r.highest_passing_rate),
                    opt(r.highest_passing_deliveries_per_s)
                ),
            ],
            vec!["first failing step".into(), opt(r.first_failing_rate)],
            vec![
                "subscribers / nodes".into(),
                format!("{} / {}", r.subscribers, r.urls.join(", ")),
            ],
            vec![
                "criteria".into(),
                format!("ratio ≥ {}, p99 < {} ms", r.min_ratio, r.max_p99_ms),
            ],
        ],
    ));
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|st| match &st.result {
            Ok(t) => vec![
                format!("{}", st.rate_msgs_per_s),
                format!("{:.0}", st.target_deliveries_per_s),
                st.attempt.to_string(),
                verdict(st.pass).into(),
                format!("{:.6}", t.delivery_ratio),
                format!("{:.0}", t.deliveries_per_s),
                format!("{:.2}", t.latency_ms.p50),
                format!("{:.2}", t.latency_ms.p99),
                format!("{:.2}", t.latency_ms.max),
                opt(t.cpu.server_us_per_delivery),
            ],
            Err(e) => vec![
                format!("{}", st.rate_msgs_per_s),
                format!("{:.0}", st.target_deliveries_per_s),
                st.attempt.to_string(),
                "ERROR".into(),
                e.clone(),
            ],
        })
        .collect();
    s.push_str("<h3>Steps</h3>");
    s.push_str(&table(
        &[
            "msg/s",
            "target deliveries/s",
            "try",
            "verdict",
            "ratio",
            "deliveries/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server µs/delivery",
        ],
        &rows,
    ));
    let ok: Vec<(f64, &TrafficReport)> = r
        .steps
        .iter()
        .filter_map(|st| {
            st.result
                .as_ref()
                .ok()
                .map(|t| (st.target_deliveries_per_s, t))
        })
        .collect();
    s.push_str(&chart(
        "Latency by step",
        "target deliveries/s",
        "ms",
        &[
            Line {
                name: "p50",
                color: "#2b7bb9",
                points: ok.iter().map(|(x, t)| (*x, t.latency_ms.p50)).collect(),
            },
            Line {
                name: "p99",
                color: "#e08a1e",
                points: ok.iter().map(|(x, t)| (*x, t.latency_ms.p99)).collect(),
            },
        ],
    ));
    s.push_str(&chart(
        "Delivered per second by step",
        "target deliveries/s",
        "deliveries/s",
        &[
            Line {
                name: "delivered",
                color: "#27ae60",
                points: ok.iter().map(|(x, t)| (*x, t.deliveries_per_s)).collect(),
            },
            Line {
                name: "target",
                color: "#999999",
                points: ok.iter().map(|(x, _)| (*x, *x)).collect(),
            },
        ],
    ));
    if let Some((_, last)) = ok.last() {
        let _ = write!(
            s,
            "<h2>Last step: {} msg/s</h2>{}",
            last.rate_msgs_per_s,
            traffic_section(last)
        );
    }
    s
}

/// The whole report as one HTML page with no external assets.
pub fn html(report: &Report, title: &str) -> String {
    let (kind, body) = match report {
        Report::Traffic(r) => (r.scenario, traffic_section(r)),
        Report::Connections(r) => (r.scenario, connections_section(r)),
        Report::Ramp(r) => (r.scenario, ramp_section(r)),
    };
    let json = escape(&report.json_line());
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:800px;color:#222}}
h1{{font-size:1.4em}} h2{{font-size:1.2em;margin-top:2em}} h3{{font-size:1em;margin-top:1.5em}}
table{{border-collapse:collapse;margin:.5em 0;font-size:.9em}}
th,td{{border:1px solid #ddd;padding:.25em .6em;text-align:left}} th{{background:#f4f4f4}}
svg{{display:block;margin:1em 0;max-width:100%;height:auto}}
svg .title{{font-size:14px;font-weight:600}} svg .tick,svg .legend{{font-size:11px}}
svg .axis{{font-size:12px}} svg .empty{{font-size:14px;fill:#999}}
details pre{{white-space:pre-wrap;word-break:break-all;font-size:.8em}}
</style></head><body>
<h1>{t}</h1><p>scenario <b>{k}</b> · verdict <b>{v}</b></p>
{body}
<details><summary>JSON</summary><pre>{json}</pre></details>
</body></html>
"#,
        t = escape(title),
        k = escape(kind),
        v = verdict(report.pass()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::traffic::{CpuReport, ErrorReport};
    use crate::stats::SeriesPoint;

    fn traffic() -> TrafficReport {
        TrafficReport {
            scenario: "fanout",
            urls: vec!["ws://127.0.0.1:1/ws".into()],
            rooms: 1,
            receivers: 10,
            receivers_joined: 10,
            publishers: 1,
            publishers_joined: 1,
            rate_msgs_per_s: 10.0,
            target_deliveries_per_s: 100.0,
            duration_s: 2.0,
            payload_bytes: 100,
            planned_msgs: 20,
            sent_msgs: 20,
            expected_deliveries: 200,
            received_deliveries: 200,
            duplicates: 0,
            foreign: 0,
            misrouted: 0,
            delivery_ratio: 1.0,
            deliveries_per_s: 100.0,
            window_s: 2.0,
            latency_ms: Percentiles {
                count: 200,
                p50: 0.5,
                p90: 0.9,
                p99: 1.5,
                p999: 2.0,
                max: 2.5,
                mean: 0.6,
            },
            send_lag_ms: Percentiles::default(),
            connect_ms: Percentiles::default(),
            join_ms: Percentiles::default(),
            connect_phase_s: 0.1,
            acks: 20,
            errors: ErrorReport {
                server: [("rate_limited <x>".to_owned(), 1)].into_iter().collect(),
                ..ErrorReport::default()
            },
            cpu: CpuReport::default(),
            min_ratio: 0.999,
            max_p99_ms: 100.0,
            pass: true,
            series: vec![
                SeriesPoint {
                    t_s: 0.0,
                    sent: 10,
                    delivered: 100,
                    p50_ms: 0.5,
                    p99_ms: 1.4,
                    max_ms: 2.0,
                },
                SeriesPoint {
                    t_s: 1.0,
                    sent: 10,
                    delivered: 100,
                    p50_ms: 0.6,
                    p99_ms: 1.5,
                    max_ms: 2.5,
                },
            ],
        }
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let page = html(&Report::Traffic(Box::new(traffic())), "run <1>");
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert_eq!(page.matches("<svg").count(), 3);
        assert!(page.contains("<polyline"));
        assert!(page.contains("p99.9"));
        assert!(page.contains("run &lt;1&gt;"));
        assert!(page.contains("rate_limited &lt;x&gt;"));
        assert!(!page.contains("<script"));
        for external in ["http://", "https://", "src=", "@import", "url("] {
            assert!(!page.contains(external), "external reference {external}");
        }
    }

    #[test]
    fn every_report_kind_renders() {
        let ramp = RampReport {
            scenario: "ramp",
            urls: vec![],
            subscribers: 10,
            rates: vec![10.0, 20.0],
            min_ratio: 0.999,
            max_p99_ms: 100.0,
            highest_passing_rate: Some(10.0),
            highest_passing_deliveries_per_s: Some(100.0),
            first_failing_rate: Some(20.0),
            steps: vec![
                crate::scenario::ramp::Step {
                    rate_msgs_per_s: 10.0,
                    target_deliveries_per_s: 100.0,
                    attempt: 1,
                    pass: true,
                    result: Ok(traffic()),
                },
                crate::scenario::ramp::Step {
                    rate_msgs_per_s: 20.0,
                    target_deliveries_per_s: 200.0,
                    attempt: 1,
                    pass: false,
                    result: Err("setup failed".into()),
                },
            ],
            pass: true,
        };
        let r = Report::Ramp(ramp);
        let page = html(&r, "ramp");
        assert!(page.contains("Latency by step") && page.contains("setup failed"));
        assert!(r.text().contains("highest passing: 10.00 msg/s"));
        let json: serde_json::Value = serde_json::from_str(&r.json_line()).expect("json");
        assert_eq!(json["scenario"], "ramp");
        assert!(
            json["steps"][0]["result"]["Ok"]["series"].is_null(),
            "series stay out of JSON"
        );

        let conns = ConnectionsReport {
            scenario: "connections",
            urls: vec![],
            sources: 2,
            connections: 4,
            connected: 4,
            failed: 0,
            held_to_end: 4,
            dropped_during_hold: 0,
            connect_phase_s: 0.1,
            connects_per_s: 40.0,
            handshake_ms: Percentiles::default(),
            hold_s: 1.0,
            heartbeats_sent: 4,
            pongs_received: 4,
            errors: Default::default(),
            rss: vec![crate::scenario::connections::RssReport {
                pid: 1,
                before_kib: Some(1000),
                held_kib: Some(1004),
                held_connections: 4,
                per_connection_bytes: Some(1024),
            }],
            cpu: CpuReport::default(),
            pass: true,
            timeline: vec![(0.0, 0), (0.1, 4)],
        };
        let r = Report::Connections(conns);
        assert!(html(&r, "c").contains("Open connections"));
        assert!(r.text().contains("1024 bytes per connection"));
    }

    #[test]
    fn charts_handle_edge_cases() {
        assert!(chart("t", "x", "y", &[]).contains("no data"));
        let one = chart(
            "t",
            "x",
            "y",
            &[Line {
                name: "a",
                color: "#000",
                points: vec![(1.0, 0.0)],
            }],
        );
        assert!(one.contains("<circle") && !one.contains("NaN"));
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(7.0), 10.0);
        assert_eq!(nice_ceil(1.2), 2.0);
        assert_eq!(nice_ceil(3000.0), 5000.0);
        assert_eq!(nice_ceil(100.0), 100.0);
    }

    #[test]
    fn text_summaries() {
        let t = traffic_text(&traffic());
        assert!(t.contains("ratio 1.000000") && t.contains("PASS") && t.contains("p99.9"));
    }
}
