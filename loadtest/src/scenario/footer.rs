//! The closing lines that `chaos` and `kick` reports share in their text form: the connect and
//! server errors (when any) and the CPU window (when processes were watched).
//!
//! Owns only that formatting; what goes into the counts is each scenario's business.

use std::collections::BTreeMap;

use crate::scenario::traffic::CpuReport;

/// The `errors` and `cpu` lines, each left out when it has nothing to say; labels padded to
/// `width` columns so they line up with the report's other lines.
pub(crate) fn error_and_cpu_lines(
    width: usize,
    connect_errors: &BTreeMap<String, u64>,
    server_errors: &BTreeMap<String, u64>,
    cpu: &CpuReport,
) -> Vec<String> {
    let mut lines = Vec::new();
    if !connect_errors.is_empty() || !server_errors.is_empty() {
        lines.push(format!(
            "{:<width$} connect {connect_errors:?}  server {server_errors:?}",
            "errors"
        ));
    }
    if !cpu.watched_s.is_empty() {
        lines.push(format!(
            "{:<width$} watched {:?} s, loadtest {:?} s over {} s",
            "cpu", cpu.watched_s, cpu.loadtest_s, cpu.window_s
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_appear_only_with_something_to_say_and_line_up() {
        let mut cpu = CpuReport {
            watched_s: BTreeMap::new(),
            loadtest_s: Some(1.5),
            window_s: 10.0,
            server_us_per_delivery: None,
            loadtest_us_per_delivery: None,
        };
        let none = BTreeMap::new();
        assert!(error_and_cpu_lines(14, &none, &none, &cpu).is_empty());
        let server = BTreeMap::from([("rate_limited".to_owned(), 2)]);
        cpu.watched_s.insert(7, Some(0.25));
        assert_eq!(
            error_and_cpu_lines(14, &none, &server, &cpu),
            vec![
                r#"errors         connect {}  server {"rate_limited": 2}"#.to_owned(),
                "cpu            watched {7: Some(0.25)} s, loadtest Some(1.5) s over 10 s"
                    .to_owned(),
            ]
        );
        assert!(
            error_and_cpu_lines(15, &server, &none, &cpu)[0]
                .starts_with("errors          connect {\"rate")
        );
    }
}
