//! The `roomcast` binary: flags, configuration, logging, binding, signals.
//!
//! `roomcast [--config PATH] [--listen ADDR] [--admin-listen ADDR] [--redis URL]
//! [--redis-cluster URL,URL,…] [--node-id ID]`
//! A bad configuration exits with status 2 and a message naming the key.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use roomcast::config::{Config, LogFormat, Overrides};
use roomcast::{Listeners, run};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "roomcast", version, about = "WebSocket broadcast gateway")]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// WebSocket address (server.listen), e.g. 0.0.0.0:8080 or :0.
    #[arg(long)]
    listen: Option<String>,
    /// Admin HTTP address (admin.listen).
    #[arg(long)]
    admin_listen: Option<String>,
    /// Use the Redis broker at this URL (broker.kind = "redis", redis.url).
    #[arg(long)]
    redis: Option<String>,
    /// Use a Redis Cluster through these seed nodes, comma-separated (broker.kind = "redis",
    /// redis.cluster = true, redis.urls).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    redis_cluster: Option<Vec<String>>,
    /// Node id sent in `welcome` (server.node_id).
    #[arg(long)]
    node_id: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        listen: args.listen,
        admin_listen: args.admin_listen,
        redis_url: args.redis,
        redis_cluster: args.redis_cluster,
        node_id: args.node_id,
    };
    let config = match Config::load(args.config.as_deref(), std::env::vars(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("roomcast: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log.format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("roomcast: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listeners = match Listeners::bind(&config).await {
            Ok(l) => l,
            Err(err) => {
                error!(%err, "cannot bind");
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = listeners.admin.local_addr() {
            info!(%addr, "admin listening");
        }
        match run(listeners, config, shutdown_signal()).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(err) => {
                error!(%err, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: escape codes in files and log collectors are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
