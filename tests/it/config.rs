//! Configuration: the example file matches the defaults, precedence file < env < flags, and a
//! bad key or value is refused naming the key — in the library and in the real binary.

use std::path::Path;
use std::process::Command;

use roomcast::config::{BrokerKind, Config, Overrides, PresenceRule};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn example() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/roomcast.example.toml"
    ))
}

#[test]
fn example_file_lists_every_key_with_its_default() {
    let loaded =
        Config::load(Some(example()), env(&[]), &Overrides::default()).expect("example loads");
    assert_eq!(loaded, Config::default());
    // Every key of the defaults appears in the example (commented-out optional keys too).
    let text = std::fs::read_to_string(example()).expect("read example");
    let defaults = toml_keys(&Config::default());
    for key in defaults {
        let leaf = key.rsplit('.').next().unwrap_or(&key);
        assert!(
            text.lines().any(|l| l
                .trim_start_matches(['#', ' '])
                .starts_with(&format!("{leaf} ="))),
            "roomcast.example.toml lacks `{key}`"
        );
    }
    for optional in [
        "api_key",
        "jwt_secret",
        "jwt_public_key_file",
        "issuer",
        "audience",
    ] {
        assert!(
            text.contains(&format!("# {optional} =")),
            "{optional} documented"
        );
    }
}

/// Dotted keys of a config, from its serde form.
fn toml_keys(config: &Config) -> Vec<String> {
    let value = serde_json::to_value(config).expect("serialize");
    let mut keys = Vec::new();
    if let serde_json::Value::Object(sections) = value {
        for (section, fields) in sections {
            if let serde_json::Value::Object(fields) = fields {
                for (field, v) in fields {
                    if !v.is_null() {
                        keys.push(format!("{section}.{field}"));
                    }
                }
            }
        }
    }
    keys
}

#[test]
fn precedence_is_file_then_env_then_flags() {
    let dir = std::env::temp_dir().join(format!("roomcast-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "[limits]\nrate_per_sec = 10\nrate_burst = 11\n[server]\nlisten = \"127.0.0.1:1111\"\nallowed_origins = [\"https://a\"]\n",
    )
    .expect("write");
    let config = Config::load(
        Some(&file),
        env(&[
            ("ROOMCAST_LIMITS__RATE_PER_SEC", "20"),
            ("ROOMCAST_SERVER__LISTEN", "127.0.0.1:2222"),
            ("ROOMCAST_SERVER__ALLOWED_ORIGINS", "https://x,https://y"),
            ("UNRELATED", "1"),
            ("ROOMCAST_BIN", "/usr/local/bin/roomcast"),
        ]),
        &Overrides {
            listen: Some("127.0.0.1:3333".into()),
            redis_url: Some("redis://127.0.0.1:7777".into()),
            ..Overrides::default()
        },
    )
    .expect("loads");
    assert_eq!(config.limits.rate_per_sec, 20, "env beats file");
    assert_eq!(config.limits.rate_burst, 11, "file beats default");
    assert_eq!(config.server.listen, "127.0.0.1:3333", "flag beats env");
    assert_eq!(
        config.server.allowed_origins,
        vec!["https://x", "https://y"]
    );
    assert_eq!(
        config.broker.kind,
        BrokerKind::Redis,
        "--redis selects redis"
    );
    assert_eq!(config.redis.url, "redis://127.0.0.1:7777");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_values_and_unknown_keys_name_the_key() {
    for (pairs, key) in [
        (
            vec![("ROOMCAST_LIMITS__RATE_PER_SEC", "abc")],
            "limits.rate_per_sec",
        ),
        (
            vec![("ROOMCAST_LIMITS__RATE_PER_SEC", "0")],
            "limits.rate_per_sec",
        ),
        (vec![("ROOMCAST_LIMITS__BOGUS", "1")], "limits.bogus"),
        (
            vec![("ROOMCAST_SERVER__LISTEN", "nowhere")],
            "server.listen",
        ),
        (vec![("ROOMCAST_BROKER__KIND", "kafka")], "broker.kind"),
        (vec![("ROOMCAST_SERVER__PATH", "/sse")], "server.path"),
        (
            vec![("ROOMCAST_AUTH__TOKEN_COOKIE", "a;b")],
            "auth.token_cookie",
        ),
        (vec![("ROOMCAST_SERVER__PATH", "/publish")], "server.path"),
        (vec![("ROOMCAST_REDIS__URL", "http://x")], "redis.url"),
        (
            vec![("ROOMCAST_REDIS__TLS_CA_FILE", "/nonexistent/ca.pem")],
            "redis.tls_ca_file",
        ),
        (
            vec![("ROOMCAST_REDIS__TLS_CA_FILE", "Cargo.toml")],
            "redis.tls_ca_file",
        ),
        (
            vec![("ROOMCAST_LIMITS__OUTBOX_MESSAGES", "0")],
            "limits.outbox_messages",
        ),
        (
            vec![("ROOMCAST_LIMITS__CLOSE_TIMEOUT_MS", "0")],
            "limits.close_timeout_ms",
        ),
        (vec![("ROOMCAST_AUTH__MODE", "jwt")], "auth.mode"),
        (
            vec![("ROOMCAST_ADMIN__LISTEN", "0.0.0.0:9090")],
            "admin.api_key",
        ),
        (
            vec![("ROOMCAST_SERVER__TRUSTED_PROXIES", "10.0.0.1,nope")],
            "server.trusted_proxies[1]",
        ),
        (
            vec![("ROOMCAST_SERVER__MAX_CONNECTIONS_PER_IP", "0")],
            "server.max_connections_per_ip",
        ),
        (
            vec![("ROOMCAST_REDIS__URLS", "redis://a:1,redis://b:2")],
            "redis.urls",
        ),
        (
            vec![("ROOMCAST_SERVER__READ_BUFFER_BYTES", "0")],
            "server.read_buffer_bytes",
        ),
        (
            vec![("ROOMCAST_SERVER__WRITE_BUFFER_BYTES", "0")],
            "server.write_buffer_bytes",
        ),
        (
            vec![("ROOMCAST_SERVER__LISTEN_BACKLOG", "0")],
            "server.listen_backlog",
        ),
        (
            vec![("ROOMCAST_SERVER__WRITE_COALESCE_MS", "10001")],
            "server.write_coalesce_ms",
        ),
        (
            vec![("ROOMCAST_SERVER__COMPRESSION_MIN_BYTES", "1048577")],
            "server.compression_min_bytes",
        ),
        (
            vec![("ROOMCAST_LIMITS__RATE_LIMIT_WINDOW_MS", "0")],
            "limits.rate_limit_window_ms",
        ),
        (
            vec![("ROOMCAST_LIMITS__RATE_LIMIT_STRIKES", "0")],
            "limits.rate_limit_strikes",
        ),
        (
            vec![("ROOMCAST_SERVER__REQUIRE_ORIGIN", "sometimes")],
            "server.require_origin",
        ),
        (
            vec![("ROOMCAST_AUTH__MAX_REVOCATION_S", "0")],
            "auth.max_revocation_s",
        ),
        (
            vec![("ROOMCAST_AUTH__SERVER_SUBS_TTL_S", "0")],
            "auth.server_subs_ttl_s",
        ),
        (
            vec![("ROOMCAST_AUTH__EXPIRY_WARNING_MS", "0")],
            "auth.expiry_warning_ms",
        ),
        (
            vec![("ROOMCAST_AUTH__EXPIRY_WARNING_MS", "soon")],
            "auth.expiry_warning_ms",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__CLUSTER", "true"),
                ("ROOMCAST_REDIS__URLS", "redis://a:1,rediss://b:2"),
            ],
            "redis.urls[1]",
        ),
        (
            vec![
                ("ROOMCAST_REDIS__CLUSTER", "true"),
                ("ROOMCAST_REDIS__URL", "rediss://a:1"),
            ],
            "redis.url",
        ),
    ] {
        let err = Config::load(None, env(&pairs), &Overrides::default())
            .expect_err(&format!("{pairs:?} must be refused"));
        assert!(err.to_string().contains(key), "`{err}` names {key}");
    }
}

#[test]
fn a_cluster_is_configured_by_env_or_by_one_flag() {
    let config = Config::load(
        None,
        env(&[
            ("ROOMCAST_BROKER__KIND", "redis"),
            ("ROOMCAST_REDIS__CLUSTER", "true"),
            (
                "ROOMCAST_REDIS__URLS",
                "redis://10.0.0.1:7000,redis://10.0.0.2:7000",
            ),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert!(config.redis.cluster);
    assert_eq!(
        config.redis.seed_urls(),
        vec!["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]
    );

    let config = Config::load(
        None,
        env(&[]),
        &Overrides {
            redis_cluster: Some(vec!["redis://h1:7000".into(), "redis://h2:7001".into()]),
            ..Overrides::default()
        },
    )
    .expect("loads");
    assert_eq!(config.broker.kind, BrokerKind::Redis);
    assert!(config.redis.cluster);
    assert_eq!(
        config.redis.urls,
        vec!["redis://h1:7000", "redis://h2:7001"]
    );

    // Without seeds, redis.url is the one seed.
    let config = Config::load(
        None,
        env(&[("ROOMCAST_REDIS__CLUSTER", "true")]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(config.redis.seed_urls(), vec![config.redis.url.clone()]);
}

#[test]
fn binary_exits_2_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .env("ROOMCAST_LIMITS__MAX_MESSAGE_BYTES", "lots")
        .output()
        .expect("run roomcast");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.max_message_bytes"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["--config", "/nonexistent/roomcast.toml"])
        .output()
        .expect("run roomcast");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm_closing_clients_with_1001() {
    let (child, url) = crate::support::spawn_binary(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--node-id",
            "bin-node",
        ]
        .map(std::ffi::OsStr::new),
        &[],
    )
    .await;
    let mut child = child;
    let mut client = crate::support::Client::connect(&url).await;
    assert_eq!(client.welcome["node"], "bin-node");

    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    client.expect_close(1001).await;
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    let code = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status.code();
        }
        assert!(std::time::Instant::now() < deadline, "exits in time");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(code, Some(0));
}

#[test]
fn presence_keys_are_validated_by_name() {
    let mut config = Config::default();
    config.presence.ttl_s = 0;
    let err = config.validate().expect_err("ttl 0");
    assert!(err.to_string().contains("presence.ttl_s"), "{err}");
    let rule = |pattern: &str, max_members| PresenceRule {
        pattern: pattern.into(),
        events: false,
        max_members,
    };
    for (rules, key) in [
        (vec![rule("", 10)], "presence.rooms[0].pattern"),
        (
            vec![rule("a", 10), rule("b", 0)],
            "presence.rooms[1].max_members",
        ),
    ] {
        let mut config = Config::default();
        config.presence.rooms = rules;
        let err = config.validate().expect_err(key);
        assert!(err.to_string().contains(key), "{err}");
    }
    let toml = r#"
        [presence]
        rooms = [{ pattern = "chat:*" }]
    "#;
    let dir = std::env::temp_dir().join(format!("roomcast-pres-{}.toml", std::process::id()));
    std::fs::write(&dir, toml).expect("write");
    let loaded = Config::load(Some(&dir), Vec::new(), &Overrides::default()).expect("loads");
    let _ = std::fs::remove_file(&dir);
    assert_eq!(loaded.presence.rooms, [rule("chat:*", 1000)], "defaults");
    assert_eq!(loaded.presence.ttl_s, 30);
}

/// The Origin and rate-limit close rules (issue 18): defaults let an Origin-less client in and
/// close only a sustained flood; both are set from file or environment.
#[test]
fn origin_and_rate_limit_window_keys_have_defaults_and_load() {
    let defaults = Config::default();
    assert!(!defaults.server.require_origin);
    assert_eq!(defaults.limits.rate_limit_window_ms, 10_000);
    assert_eq!(defaults.limits.rate_limit_strikes, 50);
    let config = Config::load(
        None,
        env(&[
            ("ROOMCAST_SERVER__REQUIRE_ORIGIN", "true"),
            ("ROOMCAST_LIMITS__RATE_LIMIT_WINDOW_MS", "2500"),
            ("ROOMCAST_LIMITS__RATE_LIMIT_STRIKES", "7"),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert!(config.server.require_origin);
    assert_eq!(config.limits.rate_limit_window_ms, 2_500);
    assert_eq!(config.limits.rate_limit_strikes, 7);
}

/// The node registry's keys (console, `GET /api/nodes|rooms`): defaults, environment, and 0
/// refused naming the key.
#[test]
fn stats_keys_have_defaults_load_from_env_and_refuse_zero() {
    let defaults = Config::default();
    assert_eq!(defaults.admin.stats_interval_ms, 1_000);
    assert_eq!(defaults.admin.stats_max_rooms, 1_000);
    let config = Config::load(
        None,
        env(&[
            ("ROOMCAST_ADMIN__STATS_INTERVAL_MS", "250"),
            ("ROOMCAST_ADMIN__STATS_MAX_ROOMS", "20"),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(config.admin.stats_interval_ms, 250);
    assert_eq!(config.admin.stats_max_rooms, 20);
    for key in ["STATS_INTERVAL_MS", "STATS_MAX_ROOMS"] {
        let err = Config::load(
            None,
            env(&[(&format!("ROOMCAST_ADMIN__{key}"), "0")]),
            &Overrides::default(),
        )
        .expect_err("0 refused");
        let name = format!("admin.{}", key.to_lowercase());
        assert!(err.to_string().contains(&name), "{err}");
    }
}

/// The control plane's keys (issue 18): how far a revocation may reach, how long server
/// subscriptions are kept.
#[test]
fn control_keys_have_defaults_and_load_from_the_environment() {
    let defaults = Config::default();
    assert_eq!(defaults.auth.max_revocation_s, 2_592_000);
    assert_eq!(defaults.auth.server_subs_ttl_s, 86_400);
    let config = Config::load(
        None,
        env(&[
            ("ROOMCAST_AUTH__MAX_REVOCATION_S", "60"),
            ("ROOMCAST_AUTH__SERVER_SUBS_TTL_S", "120"),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(config.auth.max_revocation_s, 60);
    assert_eq!(config.auth.server_subs_ttl_s, 120);
}

/// `auth.expiry_warning_ms` (issue 18): `token_expiring` 30 s before a token runs out by
/// default, set from file or environment, never 0.
#[test]
fn expiry_warning_key_has_a_default_and_loads() {
    assert_eq!(Config::default().auth.expiry_warning_ms, 30_000);
    let config = Config::load(
        None,
        env(&[("ROOMCAST_AUTH__EXPIRY_WARNING_MS", "5000")]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(config.auth.expiry_warning_ms, 5_000);
    let dir = std::env::temp_dir().join(format!("roomcast-warn-{}.toml", std::process::id()));
    std::fs::write(&dir, "[auth]\nexpiry_warning_ms = 750\n").expect("write");
    let loaded = Config::load(Some(&dir), env(&[]), &Overrides::default());
    let _ = std::fs::remove_file(&dir);
    assert_eq!(loaded.expect("loads").auth.expiry_warning_ms, 750);
}

/// `[webhooks]` (issue 19): off by default, loads from the environment, and every bound is
/// refused naming its key.
#[test]
fn webhook_keys_have_defaults_load_and_are_validated_by_name() {
    let defaults = Config::default();
    assert!(defaults.webhooks.url.is_empty(), "off by default");
    assert_eq!(defaults.webhooks.leave_delay_ms, 0);
    assert_eq!(defaults.webhooks.batch_size, 100);
    assert_eq!(defaults.webhooks.max_attempts, 10);
    let config = Config::load(
        None,
        env(&[
            ("ROOMCAST_WEBHOOKS__URL", "http://127.0.0.1:1/events"),
            ("ROOMCAST_WEBHOOKS__SECRET", "s"),
            ("ROOMCAST_WEBHOOKS__LEAVE_DELAY_MS", "2500"),
            ("ROOMCAST_WEBHOOKS__BATCH_SIZE", "7"),
        ]),
        &Overrides::default(),
    )
    .expect("loads");
    assert_eq!(config.webhooks.leave_delay_ms, 2_500);
    assert_eq!(config.webhooks.batch_size, 7);

    let on = || {
        let mut config = Config::default();
        config.webhooks.url = "http://backend/events".into();
        config.webhooks.secret = "s".into();
        config
    };
    on().validate().expect("a url and a secret are enough");
    type Change = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|c| c.webhooks.secret.clear()), "webhooks.secret"),
        (
            Box::new(|c| c.webhooks.url = "ftp://x".into()),
            "webhooks.url",
        ),
        (
            Box::new(|c| c.webhooks.url = "https://".into()),
            "webhooks.url",
        ),
        (
            Box::new(|c| c.webhooks.batch_size = 0),
            "webhooks.batch_size",
        ),
        (
            Box::new(|c| c.webhooks.batch_size = 10_001),
            "webhooks.batch_size",
        ),
        (
            Box::new(|c| c.webhooks.timeout_ms = 0),
            "webhooks.timeout_ms",
        ),
        (
            Box::new(|c| c.webhooks.retry_initial_ms = 0),
            "webhooks.retry_initial_ms",
        ),
        (
            Box::new(|c| c.webhooks.retry_max_ms = 100),
            "webhooks.retry_max_ms",
        ),
        (
            Box::new(|c| c.webhooks.max_attempts = 0),
            "webhooks.max_attempts",
        ),
        (
            Box::new(|c| c.webhooks.claim_idle_ms = 35_000),
            "webhooks.claim_idle_ms",
        ),
        (Box::new(|c| c.webhooks.poll_ms = 0), "webhooks.poll_ms"),
        (
            Box::new(|c| {
                c.broker.kind = BrokerKind::Redis;
                c.redis.cluster = true;
            }),
            "webhooks.url",
        ),
    ];
    for (change, key) in cases {
        let mut config = on();
        change(&mut config);
        let err = config.validate().expect_err(key);
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let mut off = on();
    off.webhooks.url.clear();
    off.webhooks.secret.clear();
    off.webhooks.batch_size = 0;
    off.validate()
        .expect("bounds are not checked while webhooks are off");
}

/// `server.write_coalesce_ms` (issue 20): 0 (off) and the bound load, one past it is refused
/// naming the key.
#[test]
fn write_coalesce_key_loads_from_0_to_its_bound_and_refuses_above() {
    use roomcast::config::MAX_WRITE_COALESCE_MS;
    for ok in [0, 5, MAX_WRITE_COALESCE_MS] {
        let value = ok.to_string();
        let config = Config::load(
            None,
            env(&[("ROOMCAST_SERVER__WRITE_COALESCE_MS", &value)]),
            &Overrides::default(),
        )
        .unwrap_or_else(|err| panic!("{ok} loads: {err}"));
        assert_eq!(config.server.write_coalesce_ms, ok);
    }
    let above = (MAX_WRITE_COALESCE_MS + 1).to_string();
    let err = Config::load(
        None,
        env(&[("ROOMCAST_SERVER__WRITE_COALESCE_MS", &above)]),
        &Overrides::default(),
    )
    .expect_err("above the bound is refused");
    assert!(
        err.to_string().contains("server.write_coalesce_ms"),
        "`{err}` names the key"
    );
}

/// `server.compression` (off unless asked) and `server.compression_min_bytes` (0 and its bound
/// load; one past it is in the refusal table above).
#[test]
fn compression_keys_load_and_default_to_off() {
    use roomcast::config::MAX_COMPRESSION_MIN_BYTES;
    let defaults = Config::load(None, env(&[]), &Overrides::default()).expect("defaults");
    assert!(!defaults.server.compression);
    assert_eq!(defaults.server.compression_min_bytes, 256);
    for min in [0, MAX_COMPRESSION_MIN_BYTES] {
        let value = min.to_string();
        let config = Config::load(
            None,
            env(&[
                ("ROOMCAST_SERVER__COMPRESSION", "true"),
                ("ROOMCAST_SERVER__COMPRESSION_MIN_BYTES", &value),
            ]),
            &Overrides::default(),
        )
        .unwrap_or_else(|err| panic!("{min} loads: {err}"));
        assert!(config.server.compression);
        assert_eq!(config.server.compression_min_bytes, min);
    }
}
