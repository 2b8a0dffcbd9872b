//! roomcast-loadtest: a load generator that speaks roomcast's docs/protocol.md.
//!
//! # Layout
//!
//! - `schedule`: the fixed-rate publish plan and the room layout (pure).
//! - `payload`: what goes on the wire and how server frames are read back (pure).
//! - `stats`: delivery bitsets, HDR latency histograms, per-second series (pure).
//! - `procfs`: CPU time and memory of local processes from /proc.
//! - `client`: one connection: loopback-only resolve, source-address bind, handshake, join.
//! - `admin`: the admin API calls of `kick` (loopback only); `token`: HS256 tokens it mints.
//! - `scenario`: `fanout`, `rooms`, `connections`, `ramp`, over the `traffic` engine; `chaos`
//!   (history rejoins under cuts) and `kick` (admin kicks and revocations under load).
//! - `report`: the human summary, the JSON line and the self-contained HTML report.
//!
//! The binary (`src/main.rs`) owns the command line, the runtime and the watchdog; everything
//! here is a library so that tests run scenarios in-process against a real node.
//!
//! Every loop is bounded in count and time (connect-phase timeout, publish deadline, drain,
//! collection grace), and traffic only goes to loopback addresses (`client::resolve` refuses
//! anything else).

pub mod admin;
pub mod client;
pub mod payload;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod token;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget};

/// Settings every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// Node URLs (`ws://127.0.0.1:PORT/ws`); connections are spread round-robin over them.
    pub urls: Vec<String>,
    /// Loopback source addresses to spread connections over (127.0.0.1 .. 127.0.0.N); 1 lets
    /// the kernel choose.
    pub sources: usize,
    /// Connections allowed in their handshake (and join) at once.
    pub connect_concurrency: usize,
    /// Bound on one connection's handshake + `welcome`, and separately on its join.
    pub handshake_timeout: Duration,
    /// Bound on the whole connect phase.
    pub connect_phase_timeout: Duration,
    /// How often each connection sends the text `ping` heartbeat.
    pub heartbeat: Duration,
    /// Processes whose CPU time (and, for `connections`, memory) to report.
    pub pids: Vec<u32>,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            urls: vec!["ws://127.0.0.1:8080/ws".into()],
            sources: 1,
            connect_concurrency: 64,
            handshake_timeout: Duration::from_secs(10),
            connect_phase_timeout: Duration::from_secs(120),
            heartbeat: Duration::from_secs(20),
            pids: Vec::new(),
            progress: false,
        }
    }
}

/// A progress bar of `len` steps, hidden unless `show` (indicatif also hides it when stderr
/// is not a terminal).
pub fn progress_bar(show: bool, len: u64, prefix: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(scenario::traffic::bar_style(
        "{prefix:>11} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
    ));
    bar.set_prefix(prefix);
    bar
}

/// A progress note on stderr (silent when progress is off, as in tests).
pub fn note(common: &Common, text: &str) {
    if common.progress {
        eprintln!("{text}");
    }
}
