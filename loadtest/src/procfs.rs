//! Reading a local process's CPU time and memory from /proc (Linux), and raising this
//! process's open-files limit.
//!
//! Owns parsing /proc/PID/stat and /proc/PID/status. Which processes to watch is the caller's
//! choice (`--pid`); on a system without /proc every reading is `None`.

/// Clock ticks per second of /proc/PID/stat (`USER_HZ`, 100 on every Linux architecture that
/// runs this tool).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds (user + system, all threads) used by `pid` so far; `None` for this process
/// when `pid` is `None`.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?)
}

/// utime + stime of a /proc/PID/stat line, in seconds.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: count fields after the last
    // ')'; there field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

/// A `Vm*` line of /proc/PID/status (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Raise the soft open-files limit to at least `wanted` when the hard limit allows it (and
/// the hard limit too when we may, as root); returns the soft limit now in force.
pub fn raise_nofile_limit(wanted: u64) -> u64 {
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return 0;
    };
    if soft >= wanted {
        return soft;
    }
    if hard < wanted && rlimit::Resource::NOFILE.set(wanted, wanted).is_ok() {
        return wanted;
    }
    let target = wanted.min(hard);
    if rlimit::Resource::NOFILE.set(target, hard).is_ok() {
        target
    } else {
        soft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (my (odd) cmd) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0 100";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn parses_status_lines() {
        let status = "Name:\troomcast\nVmHWM:\t  20480 kB\nVmRSS:\t  10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_this_process() {
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(cpu_seconds(None).is_some());
            assert!(status_kib(std::process::id(), "VmRSS").is_some_and(|k| k > 0));
        }
    }
}
