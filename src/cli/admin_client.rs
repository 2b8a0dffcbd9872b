//! `roomcast publish`, `notify` and `broadcast`: one POST to a running node's admin API, the
//! body docs/protocol.md "Admin HTTP API" describes, the API key of the configuration.
//!
//! The node decodes and checks the body (`protocol::decode_admin_body`); here the data is only
//! checked to be JSON, so a typo fails before anything is sent.

use std::path::PathBuf;
use std::time::Duration;

use roomcast::config::Config;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Failure, load_config};

/// Longest wait for the node's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to send, and what.
#[derive(clap::Args, Debug)]
pub struct AdminFlags {
    /// The message: any JSON value, e.g. '{"text":"hi"}' or '"hi"'.
    #[arg(long, value_name = "JSON")]
    data: String,
    /// The node's admin API, e.g. http://127.0.0.1:9090 [default: from admin.listen]
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// TOML configuration file of the node: admin.listen, admin.api_key (the environment's
    /// ROOMCAST_ADMIN__API_KEY applies too).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// The room to publish to.
    #[arg(long)]
    room: String,
    /// The message's conflation key (docs/protocol.md "Conflated rooms").
    #[arg(long)]
    key: Option<String>,
    #[command(flatten)]
    send: AdminFlags,
}

#[derive(clap::Args, Debug)]
pub struct NotifyArgs {
    /// The user to notify (the `sub` of its tokens).
    #[arg(long)]
    user: String,
    #[command(flatten)]
    send: AdminFlags,
}

#[derive(clap::Args, Debug)]
pub struct BroadcastArgs {
    #[command(flatten)]
    send: AdminFlags,
}

/// The bodies of the three routes; `data` is passed on as written.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

pub fn publish(args: &PublishArgs) -> Result<(), Failure> {
    let key = args.key.as_deref();
    send(&args.send, "/api/publish", Some(&args.room), None, key)
}

pub fn notify(args: &NotifyArgs) -> Result<(), Failure> {
    send(&args.send, "/api/notify", None, Some(&args.user), None)
}

pub fn broadcast(args: &BroadcastArgs) -> Result<(), Failure> {
    send(&args.send, "/api/broadcast", None, None, None)
}

fn send(
    flags: &AdminFlags,
    path: &str,
    room: Option<&str>,
    user: Option<&str>,
    key: Option<&str>,
) -> Result<(), Failure> {
    let data: &RawValue = serde_json::from_str(&flags.data)
        .map_err(|err| Failure::new(format!("--data is not JSON: {err}")))?;
    let body = serde_json::to_string(&Body {
        room,
        user,
        data,
        key,
    })
    .map_err(|err| Failure::new(format!("cannot encode the body: {err}")))?;
    let config = load_config(flags.config.as_deref())?;
    let base = match &flags.admin {
        Some(url) => base_url(url),
        None => default_base_url(&config),
    };
    let url = format!("{base}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Failure::new(format!("cannot start the runtime: {err}")))?;
    let api_key = config.admin.api_key.as_deref();
    let answer = runtime.block_on(post(&url, body, api_key))?;
    println!("{answer}");
    Ok(())
}

/// The node's answer body when it is a 2xx.
async fn post(url: &str, body: String, api_key: Option<&str>) -> Result<String, Failure> {
    let unreachable = |err: reqwest::Error| Failure::new(format!("{url}: {}", with_causes(&err)));
    roomcast::backend_http::install_default_provider();
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    let answer = response.text().await.map_err(unreachable)?;
    if status.is_success() {
        return Ok(answer);
    }
    let hint = if status == reqwest::StatusCode::UNAUTHORIZED && api_key.is_none() {
        " (no API key configured: set ROOMCAST_ADMIN__API_KEY or admin.api_key)"
    } else {
        ""
    };
    Err(Failure::new(format!(
        "{url} answered {status}: {}{hint}",
        answer.trim()
    )))
}

/// reqwest's message names the request; its causes say what failed (refused, timed out…).
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

/// `--admin` as given, `http://` when it names no scheme, no trailing `/`.
fn base_url(given: &str) -> String {
    let url = given.trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// `admin.listen`, with a wildcard address reached through loopback.
fn default_base_url(config: &Config) -> String {
    let mut addr = config.admin_addr();
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_urls() {
        assert_eq!(base_url("127.0.0.1:9090/"), "http://127.0.0.1:9090");
        assert_eq!(base_url("https://admin.example"), "https://admin.example");
        let mut config = Config::default();
        assert_eq!(default_base_url(&config), "http://127.0.0.1:9090");
        config.admin.listen = ":9191".into();
        assert_eq!(default_base_url(&config), "http://127.0.0.1:9191");
        config.admin.listen = "[::]:9191".into();
        assert_eq!(default_base_url(&config), "http://[::1]:9191");
    }
}
