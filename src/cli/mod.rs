//! The command line of the `roomcast` binary: the node's flags, and the subcommands for the
//! everyday chores (mint a token, check a configuration, publish through a node's admin API).
//!
//! Serving is `main.rs`'s; configuration loading, token rules and the admin API's bodies stay
//! in the library, which these subcommands only call.

mod admin_client;
mod check;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roomcast::config::{Config, ConfigError, Overrides};

/// Exit status of a configuration the node would refuse (as when it starts).
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "roomcast",
    version,
    about = "WebSocket broadcast gateway",
    long_about = "WebSocket broadcast gateway. Without a subcommand, serve.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(flatten)]
    pub node: NodeFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The flags a node starts with; `check-config` takes the same.
#[derive(clap::Args, Debug, Default)]
pub struct NodeFlags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// WebSocket address (server.listen), e.g. 0.0.0.0:8080 or :0.
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin HTTP address (admin.listen).
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Use the Redis broker at this URL (broker.kind = "redis", redis.url).
    #[arg(long)]
    pub redis: Option<String>,
    /// Use a Redis Cluster through these seed nodes, comma-separated (broker.kind = "redis",
    /// redis.cluster = true, redis.urls).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub redis_cluster: Option<Vec<String>>,
    /// Node id sent in `welcome` (server.node_id).
    #[arg(long)]
    pub node_id: Option<String>,
}

impl NodeFlags {
    /// Defaults, file, environment, then these flags: what the node serves with.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.config.as_deref(), std::env::vars(), &self.overrides())
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            redis_url: self.redis.clone(),
            redis_cluster: self.redis_cluster.clone(),
            node_id: self.node_id.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mint a JWT for trying things out, signed as the configured node verifies it; prints it.
    Token(token::TokenArgs),
    /// Load and validate the configuration as the node would at start, without binding.
    /// Prints "ok" and exits 0, or names every bad key and exits 2.
    CheckConfig(check::CheckArgs),
    /// Publish to a room through a running node's admin API (POST /api/publish).
    Publish(admin_client::PublishArgs),
    /// Notify every connection of a user through a running node's admin API (POST /api/notify).
    Notify(admin_client::NotifyArgs),
    /// Send to every client through a running node's admin API (POST /api/broadcast).
    Broadcast(admin_client::BroadcastArgs),
}

pub fn run(command: Command) -> ExitCode {
    let outcome = match command {
        Command::Token(args) => token::mint(&args),
        Command::CheckConfig(args) => check::check_config(&args),
        Command::Publish(args) => admin_client::publish(&args),
        Command::Notify(args) => admin_client::notify(&args),
        Command::Broadcast(args) => admin_client::broadcast(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            for line in &failure.messages {
                eprintln!("roomcast: {line}");
            }
            ExitCode::from(failure.status)
        }
    }
}

/// Why a subcommand stopped: what to tell the user, and the exit status.
#[derive(Debug)]
pub struct Failure {
    status: u8,
    messages: Vec<String>,
}

impl Failure {
    /// Exit 1: the chore could not be done.
    fn new(message: impl Into<String>) -> Failure {
        Failure {
            status: 1,
            messages: vec![message.into()],
        }
    }

    /// Exit 2 naming every bad key, as a node refusing its configuration.
    fn bad_config(messages: Vec<String>) -> Failure {
        Failure {
            status: EXIT_BAD_CONFIG,
            messages,
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Failure {
        Failure::bad_config(vec![err.to_string()])
    }
}

/// The configuration a subcommand other than `check-config` reads: file and environment.
fn load_config(file: Option<&std::path::Path>) -> Result<Config, Failure> {
    Ok(Config::load(file, std::env::vars(), &Overrides::default())?)
}
