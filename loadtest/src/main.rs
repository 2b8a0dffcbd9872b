//! `roomcast-loadtest`: load a roomcast node (or several) over loopback and report.
//!
//! Owns the command line, the runtime, the watchdog that ends the process whatever happens,
//! and where output goes: progress bars and the human summary on stderr, one JSON line on
//! stdout, `--report PATH.html` for a self-contained HTML page. Exit status: 0 when the run's
//! criteria passed, 1 when they did not, 2 when it could not run.
//!
//! Run a node first (`cargo run --release -- --listen 127.0.0.1:8080 --admin-listen
//! 127.0.0.1:9090`, with `ROOMCAST_SERVER__CONNECT_RATE_PER_IP=100000` so the per-address
//! handshake limit does not refuse the load), then for example:
//!
//! ```text
//! cargo run --release -p roomcast-loadtest -- --url ws://127.0.0.1:8080/ws \
//!     fanout --subscribers 1000 --rate 100 --duration 10 --report /tmp/fanout.html
//! cargo run --release -p roomcast-loadtest -- --url ws://127.0.0.1:8080/ws rooms --rooms 200 --members 5
//! cargo run --release -p roomcast-loadtest -- --url ws://127.0.0.1:8080/ws --pid $(pgrep -n roomcast) \
//!     --sources 4 connections --connections 50000 --hold 30
//! cargo run --release -p roomcast-loadtest -- --url ws://127.0.0.1:8080/ws \
//!     ramp --subscribers 1000 --rates 10,20,50,100,200
//! # with `[history]\nrooms = [{ pattern = "chat:*", size = 10000, ttl_s = 600 }]` in --config:
//! cargo run --release -p roomcast-loadtest -- --url ws://127.0.0.1:8080/ws \
//!     chaos --subscribers 200 --rate 50 --duration 30 --kill-every 5
//! # nodes in auth.mode = "jwt" with this secret, their admin ports given with --admin:
//! cargo run --release -p roomcast-loadtest -- --url ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws \
//!     kick --admin http://127.0.0.1:9090,http://127.0.0.1:9091 --jwt-secret "$SECRET" \
//!     --rooms 4 --members 20 --victims 2 --rate 100 --duration 20 --kick-every 0.5
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use roomcast_loadtest::Common;
use roomcast_loadtest::report::{self, Report};
use roomcast_loadtest::scenario::chaos::{self, ChaosParams, KillDist};
use roomcast_loadtest::scenario::connections::{self, ConnectionsParams};
use roomcast_loadtest::scenario::fanout::{self, FanoutParams};
use roomcast_loadtest::scenario::kick::{self, Action, KickParams};
use roomcast_loadtest::scenario::ramp::{self, RampParams};
use roomcast_loadtest::scenario::rooms::{self, RoomsParams};
use roomcast_loadtest::schedule::ScheduleParams;

#[derive(Parser, Debug)]
#[command(
    name = "roomcast-loadtest",
    version,
    about = "Load generator for roomcast (docs/protocol.md), loopback targets only"
)]
struct Cli {
    /// Node URL; repeat (or separate with commas) for several nodes.
    #[arg(
        long = "url",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws",
        global = true
    )]
    urls: Vec<String>,
    /// Spread connections over this many loopback source addresses (127.0.0.1, .2, ...).
    #[arg(long, default_value_t = 1, global = true)]
    sources: usize,
    /// Connections in their handshake at once.
    #[arg(long, default_value_t = 64, global = true)]
    connect_concurrency: usize,
    /// Seconds one handshake (and, separately, one join) may take.
    #[arg(long, default_value_t = 10.0, global = true)]
    handshake_timeout: f64,
    /// Seconds the whole connect phase may take.
    #[arg(long, default_value_t = 120.0, global = true)]
    connect_timeout: f64,
    /// Seconds between text `ping` heartbeats on every connection.
    #[arg(long, default_value_t = 20.0, global = true)]
    heartbeat: f64,
    /// A gateway process to measure (CPU; memory for `connections`); repeatable.
    #[arg(long = "pid", global = true)]
    pids: Vec<u32>,
    /// Write a self-contained HTML report here.
    #[arg(long, global = true)]
    report: Option<PathBuf>,
    /// Runtime worker threads (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// No progress bars or notes.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// S subscribers in one room, P publishers at a total rate R on a fixed schedule.
    Fanout(FanoutArgs),
    /// Many rooms with a few members each; every member publishes and receives (chat).
    Rooms(RoomsArgs),
    /// Open C connections, hold them with heartbeats, report survivors and memory.
    Connections(ConnectionsArgs),
    /// Fanout at rising rates; reports the highest passing rate.
    Ramp(RampArgs),
    /// Fanout into a history room while subscribers are cut at random and rejoin with `since`
    /// (publishers on the first URL).
    Chaos(ChaosArgs),
    /// Kick and revoke victims through the admin API under load; no other member may lose,
    /// repeat or reorder a message (nodes in auth.mode = "jwt").
    Kick(KickArgs),
}

#[derive(Args, Debug, Clone)]
struct KickArgs {
    /// Rooms; message k goes to room k % rooms.
    #[arg(long, default_value_t = 4)]
    rooms: u64,
    /// Members per room that must receive every message (spread over the URLs).
    #[arg(long, default_value_t = 20)]
    members: u64,
    /// Victims per room: kicked or revoked, then back with a fresh token.
    #[arg(long, default_value_t = 2)]
    victims: u64,
    #[command(flatten)]
    publishers: PublisherArgs,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing (and of actions).
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds to wait for deliveries and victims' closes in flight after the last reply.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Rooms are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "kick:")]
    room_prefix: String,
    /// Seconds between two actions (all victims together).
    #[arg(long, default_value_t = 0.5)]
    kick_every: f64,
    /// The cycle of actions: kick (disconnect, 4000), forbid (disconnect 4403), revoke.
    #[arg(long, value_delimiter = ',', default_value = "kick,forbid,revoke")]
    actions: Vec<Action>,
    /// Admin URL of a node (http://127.0.0.1:PORT); repeat or separate with commas, used in
    /// turn.
    #[arg(
        long = "admin",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9090"
    )]
    admin_urls: Vec<String>,
    /// The admin API key, when the nodes have one (default: $ROOMCAST_ADMIN__API_KEY).
    #[arg(long)]
    admin_key: Option<String>,
    /// The nodes' auth.jwt_secret, to mint HS256 tokens (default: $ROOMCAST_AUTH__JWT_SECRET,
    /// which keeps it out of the process list).
    #[arg(long)]
    jwt_secret: Option<String>,
    /// A revocation's `until`, seconds from now.
    #[arg(long, default_value_t = 60)]
    revoke_for: u64,
    /// Users are PREFIX-w<i> (members), PREFIX-v<i> (victims), PREFIX-p<j> (publishers);
    /// default: lt and the run id.
    #[arg(long)]
    user_prefix: Option<String>,
}

#[derive(Args, Debug, Clone)]
struct ChaosArgs {
    #[arg(long, default_value_t = 200)]
    subscribers: u64,
    #[command(flatten)]
    publishers: PublisherArgs,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Seconds of publishing (and of cuts).
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds to wait for deliveries and replays in flight after the last ack.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// A room the server keeps history for (history.rooms).
    #[arg(long, default_value = "chat:chaos")]
    room: String,
    /// Mean seconds between two cuts of one subscriber; 0 = no cuts.
    #[arg(long, default_value_t = 15.0)]
    kill_every: f64,
    /// How cut times are drawn: uniform (0.5 to 1.5 x --kill-every) or exp.
    #[arg(long, default_value = "uniform")]
    kill_dist: KillDist,
    /// Lowest delivery ratio of acknowledged messages that passes.
    #[arg(long, default_value_t = 1.0)]
    min_ratio: f64,
}

/// The publishing connections of `fanout`, `chaos` and `kick`.
#[derive(Args, Debug, Clone)]
struct PublisherArgs {
    /// Publishing connections; 0 = as few as keep each under --max-rate-per-pub.
    #[arg(long, default_value_t = 0)]
    publishers: u64,
    /// Upper bound of one publisher's rate, msg/s (roomcast allows 50 per connection).
    #[arg(long, default_value_t = 20.0)]
    max_rate_per_pub: f64,
}

impl PublisherArgs {
    /// The schedule of `rate` msg/s for `duration_s` seconds from these publishers.
    fn schedule(&self, rate: f64, duration_s: f64) -> ScheduleParams {
        ScheduleParams {
            publishers: self.publishers,
            max_rate_per_pub: self.max_rate_per_pub,
            rate,
            duration_s,
        }
    }
}

#[derive(Args, Debug, Clone)]
struct Criteria {
    /// Lowest delivery ratio that passes.
    #[arg(long, default_value_t = 0.999)]
    min_ratio: f64,
    /// p99 latency (ms) must be below this to pass.
    #[arg(long, default_value_t = 100.0)]
    max_p99_ms: f64,
}

#[derive(Args, Debug, Clone)]
struct FanoutArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    #[command(flatten)]
    publishers: PublisherArgs,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds to wait for deliveries in flight after the last send.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    #[arg(long, default_value = "bench")]
    room: String,
    #[command(flatten)]
    criteria: Criteria,
}

impl FanoutArgs {
    fn params(&self) -> FanoutParams {
        FanoutParams {
            subscribers: self.subscribers,
            schedule: self.publishers.schedule(self.rate, self.duration),
            drain_s: self.drain,
            payload_bytes: self.payload_bytes,
            room: self.room.clone(),
            min_ratio: self.criteria.min_ratio,
            max_p99_ms: self.criteria.max_p99_ms,
        }
    }
}

#[derive(Args, Debug, Clone)]
struct RoomsArgs {
    #[arg(long, default_value_t = 200)]
    rooms: u64,
    /// Members per room.
    #[arg(long, default_value_t = 5)]
    members: u64,
    /// Messages per second, all members together.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    #[arg(long, default_value_t = 20.0)]
    max_rate_per_member: f64,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    #[arg(long, default_value = "chat")]
    room_prefix: String,
    #[command(flatten)]
    criteria: Criteria,
}

#[derive(Args, Debug, Clone)]
struct ConnectionsArgs {
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
}

#[derive(Args, Debug, Clone)]
struct RampArgs {
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Step rates in msg/s (comma-separated); default: --start × --factor^n up to --max.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Step rates as deliveries/s (rate = deliveries / subscribers), like the peers harness.
    #[arg(long, value_delimiter = ',', conflicts_with = "rates")]
    deliveries: Vec<f64>,
    #[arg(long, default_value_t = 10.0)]
    start: f64,
    #[arg(long, default_value_t = 2.0)]
    factor: f64,
    #[arg(long, default_value_t = 1280.0)]
    max: f64,
    /// Do not retry a failing step.
    #[arg(long)]
    no_retry: bool,
}

impl Cli {
    fn common(&self) -> Common {
        Common {
            urls: self.urls.clone(),
            sources: self.sources.clamp(1, 254),
            connect_concurrency: self.connect_concurrency.max(1),
            handshake_timeout: secs(self.handshake_timeout, 10.0),
            connect_phase_timeout: secs(self.connect_timeout, 120.0),
            heartbeat: secs(self.heartbeat, 20.0).max(Duration::from_millis(100)),
            pids: self.pids.clone(),
            progress: !self.quiet,
        }
    }

    /// An upper bound of the whole run, for the watchdog.
    fn time_limit(&self) -> Duration {
        let connect = self.connect_timeout.max(0.0) + 30.0;
        let run = |f: &FanoutArgs| f.duration.max(0.0) + f.drain.max(0.0) + 40.0 + connect;
        let s = match &self.scenario {
            Scenario::Fanout(f) => run(f),
            Scenario::Rooms(r) => r.duration.max(0.0) + r.drain.max(0.0) + 40.0 + connect,
            Scenario::Connections(c) => c.hold.max(0.0) + connect + 30.0,
            Scenario::Ramp(r) => (run(&r.fanout) + 2.0) * 2.0 * ramp_rates(r).len() as f64,
            Scenario::Chaos(c) => c.duration.max(0.0) + c.drain.max(0.0) + 60.0 + connect,
            Scenario::Kick(k) => k.duration.max(0.0) + k.drain.max(0.0) + 60.0 + connect,
        };
        secs(s, 600.0)
    }
}

fn secs(s: f64, default: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or_else(|_| Duration::from_secs_f64(default))
}

fn ramp_rates(r: &RampArgs) -> Vec<f64> {
    if !r.rates.is_empty() {
        r.rates.clone()
    } else if !r.deliveries.is_empty() {
        let subs = r.fanout.subscribers.max(1) as f64;
        r.deliveries.iter().map(|d| d / subs).collect()
    } else {
        ramp::geometric_rates(r.start, r.factor, r.max)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common();
    roomcast_loadtest::scenario::traffic::now_us(); // start the shared clock

    let wanted_fds = match &cli.scenario {
        Scenario::Connections(c) => c.connections + 1024,
        Scenario::Fanout(f) => f.subscribers + 1024,
        Scenario::Ramp(r) => r.fanout.subscribers + 1024,
        Scenario::Rooms(r) => r.rooms * r.members + 1024,
        Scenario::Chaos(c) => c.subscribers * 2 + 1024,
        Scenario::Kick(k) => k.rooms * (k.members + k.victims * 2) + 1024,
    };
    let fds = roomcast_loadtest::procfs::raise_nofile_limit(wanted_fds);
    if fds < wanted_fds {
        eprintln!(
            "roomcast-loadtest: open-files limit is {fds}, fewer than the {wanted_fds} this run may need"
        );
    }

    // Whatever happens, the process ends.
    let limit = cli.time_limit();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("roomcast-loadtest: watchdog: the run exceeded {limit:?}, exiting");
        std::process::exit(3);
    });

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    if let Scenario::Chaos(a) = &cli.scenario {
        return run_chaos(runtime, &common, a, cli.report.is_some());
    }
    if let Scenario::Kick(a) = &cli.scenario {
        return run_kick(runtime, &common, a, cli.report.is_some());
    }
    let result: Result<Report, String> = runtime.block_on(async {
        match &cli.scenario {
            Scenario::Fanout(a) => fanout::run(&common, &a.params())
                .await
                .map(|r| Report::Traffic(Box::new(r))),
            Scenario::Rooms(a) => {
                let params = RoomsParams {
                    rooms: a.rooms,
                    members: a.members,
                    rate: a.rate,
                    max_rate_per_member: a.max_rate_per_member,
                    duration_s: a.duration,
                    drain_s: a.drain,
                    payload_bytes: a.payload_bytes,
                    room_prefix: a.room_prefix.clone(),
                    min_ratio: a.criteria.min_ratio,
                    max_p99_ms: a.criteria.max_p99_ms,
                };
                rooms::run(&common, &params)
                    .await
                    .map(|r| Report::Traffic(Box::new(r)))
            }
            Scenario::Connections(a) => {
                let params = ConnectionsParams {
                    connections: a.connections,
                    hold_s: a.hold,
                };
                connections::run(&common, &params)
                    .await
                    .map(Report::Connections)
            }
            Scenario::Chaos(_) | Scenario::Kick(_) => Err("chaos and kick run apart".into()),
            Scenario::Ramp(a) => {
                let params = RampParams {
                    fanout: a.fanout.params(),
                    rates: ramp_rates(a),
                    retry: !a.no_retry,
                    pause: Duration::from_secs(1),
                };
                ramp::run(&common, &params).await.map(Report::Ramp)
            }
        }
    });
    // Do not wait for connections the runtime may still be closing.
    runtime.shutdown_timeout(Duration::from_secs(1));

    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roomcast-loadtest: {e}");
            println!("{}", serde_json::json!({ "error": e }));
            return ExitCode::from(2);
        }
    };
    eprintln!("{}", report.text());
    println!("{}", report.json_line());
    if let Some(path) = &cli.report {
        let title = format!(
            "roomcast-loadtest {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        match std::fs::write(path, report::html(&report, &title)) {
            Ok(()) => eprintln!("report written to {}", path.display()),
            Err(e) => {
                eprintln!("roomcast-loadtest: cannot write {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if report.pass() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `chaos` prints its own report (see `self_reported`).
fn run_chaos(
    runtime: tokio::runtime::Runtime,
    common: &roomcast_loadtest::Common,
    a: &ChaosArgs,
    html: bool,
) -> ExitCode {
    let params = ChaosParams {
        subscribers: a.subscribers,
        schedule: a.publishers.schedule(a.rate, a.duration),
        drain_s: a.drain,
        payload_bytes: a.payload_bytes,
        room: a.room.clone(),
        kill_every_s: a.kill_every,
        kill_dist: a.kill_dist,
        min_ratio: a.min_ratio,
    };
    let run = chaos::run(common, &params);
    self_reported(runtime, "chaos", html, run, |r| {
        (r.text(), r.json_line(), r.pass)
    })
}

/// `kick` prints its own report (see `self_reported`).
fn run_kick(
    runtime: tokio::runtime::Runtime,
    common: &roomcast_loadtest::Common,
    a: &KickArgs,
    html: bool,
) -> ExitCode {
    let params = KickParams {
        rooms: a.rooms,
        members: a.members,
        victims: a.victims,
        schedule: a.publishers.schedule(a.rate, a.duration),
        drain_s: a.drain,
        payload_bytes: a.payload_bytes,
        room_prefix: a.room_prefix.clone(),
        kick_every_s: a.kick_every,
        actions: a.actions.clone(),
        admin_urls: a.admin_urls.clone(),
        admin_key: a
            .admin_key
            .clone()
            .or_else(|| std::env::var("ROOMCAST_ADMIN__API_KEY").ok()),
        jwt_secret: a
            .jwt_secret
            .clone()
            .or_else(|| std::env::var("ROOMCAST_AUTH__JWT_SECRET").ok())
            .unwrap_or_default(),
        revoke_for_s: a.revoke_for,
        user_prefix: a.user_prefix.clone(),
    };
    let run = kick::run(common, &params);
    self_reported(runtime, "kick", html, run, |r| {
        (r.text(), r.json_line(), r.pass)
    })
}

/// Run a scenario that prints its own report: its text on stderr and one JSON line on stdout
/// (no HTML page, so `--report` is only warned about). `show` gives the text, the JSON line
/// and whether it passed. Exit 0 on a pass, 1 on a fail, 2 when the run could not be made.
fn self_reported<R>(
    runtime: tokio::runtime::Runtime,
    name: &str,
    html: bool,
    run: impl std::future::Future<Output = Result<R, String>>,
    show: impl FnOnce(&R) -> (String, String, bool),
) -> ExitCode {
    if html {
        eprintln!("roomcast-loadtest: {name} writes no HTML report; --report is ignored");
    }
    let result = runtime.block_on(run);
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(r) => {
            let (text, json_line, pass) = show(&r);
            eprintln!("{text}");
            println!("{json_line}");
            if pass {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("roomcast-loadtest: {e}");
            println!("{}", serde_json::json!({ "error": e }));
            ExitCode::from(2)
        }
    }
}
