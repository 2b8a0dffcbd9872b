//! `roomcast check-config`: the configuration a node would start with (defaults, file,
//! environment, flags), validated as the node validates it, nothing bound.
//!
//! `Config::validate` stops at the first bad key; to name every one, this asks again after
//! giving each named key a valid stand-in. Loading and the rules themselves are `config`'s and
//! `auth`'s. An unknown key or a value of the wrong type stops parsing, so it is named alone.

use roomcast::auth::Authenticator;
use roomcast::config::Config;
use serde_json::{Value, json};

use super::{Failure, NodeFlags};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    node: NodeFlags,
}

/// More rounds than the configuration has keys: a stand-in that does not satisfy validation
/// cannot loop for ever.
const MAX_ROUNDS: usize = 100;

/// Valid values for keys whose default is missing (list items) or not valid everywhere (an
/// API key is required off loopback); `[]` stands for any index.
const STAND_INS: &[(&str, &str)] = &[
    ("admin.api_key", "stand-in"),
    ("server.trusted_proxies[]", "127.0.0.1"),
    ("redis.urls[]", "redis://127.0.0.1:6379"),
    ("history.rooms[].pattern", "*"),
    ("presence.rooms[].pattern", "*"),
    ("validation.rooms[].pattern", "*"),
    ("conflate.rooms[].pattern", "*"),
    ("hooks.join_rooms[]", "*"),
    ("hooks.publish_rooms[]", "*"),
    ("hooks.forward_headers[]", "cookie"),
];

pub fn check_config(args: &CheckArgs) -> Result<(), Failure> {
    let config = Config::load_unvalidated(
        args.node.config.as_deref(),
        std::env::vars(),
        &args.node.overrides(),
    )?;
    let (mut problems, checked) = every_problem(&config);
    // As `run` does at start: the public key file must be readable and a key.
    if let Err(err) = Authenticator::from_config(&checked.auth) {
        problems.push(err.to_string());
    }
    if !problems.is_empty() {
        return Err(Failure::bad_config(problems));
    }
    println!("ok");
    println!("{}", summary(&config));
    Ok(())
}

fn summary(config: &Config) -> String {
    format!(
        "websocket {}{}, admin {}, broker {:?}, auth {:?}, node id {}",
        config.listen_addr(),
        config.server.path,
        config.admin_addr(),
        config.broker.kind,
        config.auth.mode,
        config.node_id(),
    )
    .to_lowercase()
}

/// Every message of `validate`, and the configuration with all the named keys stood in for.
fn every_problem(config: &Config) -> (Vec<String>, Config) {
    let mut current = config.clone();
    let mut problems = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let Err(err) = current.validate() else { break };
        let message = err.to_string();
        if problems.contains(&message) {
            break;
        }
        let next = named_key(&message).and_then(|key| with_stand_in(&current, key));
        problems.push(message);
        match next {
            Some(next) if next != current => current = next,
            _ => break,
        }
    }
    (problems, current)
}

fn named_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("invalid configuration key `")?;
    rest.split('`').next()
}

/// `config` with `key` set to its stand-in, its default, or 1 for a number without either.
fn with_stand_in(config: &Config, key: &str) -> Option<Config> {
    let path = key_path(key)?;
    let mut value = serde_json::to_value(config).ok()?;
    let defaults = serde_json::to_value(Config::default()).ok()?;
    let generic: String = path
        .iter()
        .map(|step| match step {
            Step::Field(name) => format!(".{name}"),
            Step::Index(_) => "[]".to_owned(),
        })
        .collect();
    let slot = pointer_mut(&mut value, &path)?;
    let stand_in = STAND_INS
        .iter()
        .find(|(pattern, _)| generic.strip_prefix('.') == Some(pattern))
        .map(|(_, v)| json!(v))
        .or_else(|| pointer(&defaults, &path).cloned())
        .or_else(|| slot.is_number().then(|| json!(1)))?;
    *slot = stand_in;
    serde_json::from_value(value).ok()
}

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
}

/// `history.rooms[1].size` → rooms, history, 1, size.
fn key_path(key: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in key.split('.') {
        let mut pieces = part.split('[');
        steps.push(Step::Field(pieces.next()?.to_owned()));
        for index in pieces {
            steps.push(Step::Index(index.strip_suffix(']')?.parse().ok()?));
        }
    }
    Some(steps)
}

fn pointer<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Field(name) => v.get(name),
        Step::Index(i) => v.get(i),
    })
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Field(name) => v.get_mut(name),
        Step::Index(i) => v.get_mut(i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast::config::{AuthMode, HistoryRule};

    #[test]
    fn every_bad_key_is_named_once() {
        let mut config = Config::default();
        config.server.path = "ws".into();
        config.limits.rate_per_sec = 0;
        config.admin.listen = "0.0.0.0:9090".into();
        config.server.trusted_proxies = vec!["10.0.0.1".into(), "proxy".into()];
        config.history.rooms = vec![HistoryRule {
            pattern: String::new(),
            size: 0,
            ttl_s: 5,
        }];
        config.auth.mode = AuthMode::Jwt;
        let (problems, stood_in) = every_problem(&config);
        let named: Vec<_> = problems.iter().filter_map(|p| named_key(p)).collect();
        assert_eq!(
            named,
            [
                "server.path",
                "admin.api_key",
                "server.trusted_proxies[1]",
                "limits.rate_per_sec",
                "auth.mode",
                "history.rooms[0].pattern",
                "history.rooms[0].size",
            ],
            "{problems:#?}"
        );
        stood_in.validate().expect("every key stood in for");
    }

    #[test]
    fn hook_keys_are_named_and_a_bad_schema_file_last() {
        let mut config = Config::default();
        config.validation.rooms = vec![roomcast::config::ValidationRule {
            pattern: "chat:*".into(),
            schema_file: "/nonexistent/chat.json".into(),
        }];
        config.hooks.join_url = "http://backend/join".into();
        config.hooks.publish_url = "ftp://backend/publish".into();
        config.hooks.forward_headers = vec!["bad header".into()];
        config.hooks.timeout_ms = 0;
        let (problems, _) = every_problem(&config);
        let named: Vec<_> = problems.iter().filter_map(|p| named_key(p)).collect();
        assert_eq!(
            named,
            [
                "hooks.publish_url",
                "hooks.join_url",
                "hooks.forward_headers[0]",
                "hooks.timeout_ms",
                "validation.rooms[0].schema_file",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn keys_become_paths() {
        assert_eq!(
            key_path("history.rooms[1].size"),
            Some(vec![
                Step::Field("history".into()),
                Step::Field("rooms".into()),
                Step::Index(1),
                Step::Field("size".into()),
            ])
        );
        assert_eq!(key_path("a[x]"), None);
    }
}
