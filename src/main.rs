//! The `roomcast` binary: flags, configuration, logging, binding, signals.
//!
//! `roomcast [--config PATH] [--listen ADDR] [--admin-listen ADDR] [--redis URL]
//! [--redis-cluster URL,URL,…] [--node-id ID]`
//! A bad configuration exits with status 2 and a message naming the key.
//!
//! With a subcommand (`token`, `check-config`, `publish`, `notify`, `broadcast`) it does that
//! chore instead of serving: see `cli`.

use std::process::ExitCode;

use clap::Parser;
use roomcast::config::LogFormat;
use roomcast::{Listeners, run};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

mod cli;

fn main() -> ExitCode {
    roomcast::backend_http::install_default_provider();
    let args = cli::Args::parse();
    match args.command {
        Some(command) => cli::run(command),
        None => serve(&args.node),
    }
}

fn serve(flags: &cli::NodeFlags) -> ExitCode {
    let config = match flags.load() {
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
                error!(err = %with_causes(&err), "stopped with an error");
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

/// SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the future is
/// first polled: `run` polls it only after the listener is up, and a SIGTERM in between would
/// otherwise take the default action and kill the node without closing its clients.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Ok(mut term), Err(_)) => {
                    let _ = term.recv().await;
                }
                (Err(_), _) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// An error and every cause under it, `outer: inner: root`, for the one log line an operator reads.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
