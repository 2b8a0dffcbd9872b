//! Declarative validation (`[[validation.rooms]]`, issue 19): a publish whose data does not
//! match its room's JSON Schema gets `error invalid_data` naming the failing path and reaches
//! no one — not the broker, not Redis, not a member on another node; a bad schema stops the
//! node naming the file.

use std::path::PathBuf;
use std::process::Command;

use futures_util::StreamExt;
use roomcast::config::{Config, Overrides, ValidationRule};
use serde_json::{Value, json};

use crate::support::*;

const CHAT_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["text"],
  "properties": {
    "text": {"type": "string", "minLength": 1, "maxLength": 500},
    "reply_to": {"type": "string"}
  },
  "additionalProperties": false
}"#;

/// A fresh directory for this test's schema files.
fn schema_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomcast-schemas-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("schema dir");
    dir
}

/// `schema` written as `DIR/name`.
fn schema_file(dir: &std::path::Path, name: &str, schema: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, schema).expect("write schema");
    path
}

fn with_chat_schema(mut config: Config, test: &str) -> Config {
    let file = schema_file(&schema_dir(test), "chat.json", CHAT_SCHEMA);
    config.validation.rooms = vec![ValidationRule {
        pattern: "chat:*".into(),
        schema_file: file,
    }];
    config.with_rate(10_000)
}

fn publish(room: &str, data: Value) -> Value {
    json!({"type": "publish", "room": room, "data": data})
}

#[test]
fn no_rules_by_default_and_a_rule_loads_from_toml() {
    assert!(Config::default().validation.rooms.is_empty());
    let dir = schema_dir("toml");
    let schema = schema_file(&dir, "chat.json", CHAT_SCHEMA);
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        format!(
            "[[validation.rooms]]\npattern = \"chat:*\"\nschema_file = \"{}\"\n",
            schema.display()
        ),
    )
    .expect("write config");
    let config = Config::load(Some(&file), Vec::new(), &Overrides::default()).expect("loads");
    assert_eq!(config.validation.rooms.len(), 1);
    assert_eq!(config.validation.rooms[0].pattern, "chat:*");
    assert_eq!(config.validation.rooms[0].schema_file, schema);
}

#[test]
fn a_bad_schema_is_refused_naming_the_key_and_the_file() {
    let dir = schema_dir("bad");
    let cases = [
        (dir.join("missing.json"), "cannot be read"),
        (
            schema_file(&dir, "not-json.json", "{\"type\": "),
            "is not JSON",
        ),
        (
            schema_file(&dir, "not-schema.json", r#"{"type": "strnig"}"#),
            "is not a valid JSON Schema",
        ),
        (
            schema_file(
                &dir,
                "remote.json",
                r#"{"$ref": "http://127.0.0.1:9/s.json"}"#,
            ),
            "is not a valid JSON Schema",
        ),
    ];
    for (path, problem) in cases {
        let mut config = test_config();
        config.validation.rooms = vec![
            ValidationRule {
                pattern: "ok:*".into(),
                schema_file: schema_file(&dir, "ok.json", CHAT_SCHEMA),
            },
            ValidationRule {
                pattern: "chat:*".into(),
                schema_file: path.clone(),
            },
        ];
        let err = config.validate().expect_err("refused").to_string();
        assert!(
            err.contains("validation.rooms[1].schema_file"),
            "names the key: {err}"
        );
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(err.contains(problem), "says why ({problem}): {err}");
    }
    let mut config = test_config();
    config.validation.rooms = vec![ValidationRule {
        pattern: String::new(),
        schema_file: schema_file(&dir, "ok.json", CHAT_SCHEMA),
    }];
    let err = config.validate().expect_err("refused").to_string();
    assert!(err.contains("validation.rooms[0].pattern"), "{err}");
}

#[test]
fn the_binary_stops_on_a_bad_schema_naming_the_file() {
    let dir = schema_dir("binary");
    let bad = schema_file(&dir, "chat.json", "[not json");
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[validation.rooms]]\npattern = \"chat:*\"\nschema_file = \"{}\"\n",
            bad.display()
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run roomcast");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn a_publish_is_checked_against_its_rooms_schema() {
    let node = TestNode::start(with_chat_schema(test_config(), "one-node")).await;
    let mut publisher = node.connect().await;
    let mut member = node.connect().await;
    publisher.join("chat:a").await;
    member.join("chat:a").await;
    publisher.join("news:a").await;

    let reply = publisher
        .request(publish("chat:a", json!({"text": 42})), "bad-type")
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "invalid_data", "{reply}");
    let message = reply["message"].as_str().expect("message");
    assert!(message.contains("\"/text\""), "names the path: {message}");

    let reply = publisher
        .request(
            publish("chat:a", json!({"text": "hi", "extra": 1})),
            "extra",
        )
        .await;
    assert_eq!(reply["code"], "invalid_data", "{reply}");
    let reply = publisher
        .request(publish("chat:a", json!("hi")), "whole")
        .await;
    assert_eq!(reply["code"], "invalid_data", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("data at \"\"")),
        "the whole value's path is \"\": {reply}"
    );

    // A room no rule matches is not checked.
    let reply = publisher
        .request(publish("news:a", json!(42)), "other")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");

    let reply = publisher
        .request(publish("chat:a", json!({"text": "hello"})), "good")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    // The member's first message is the valid one: none of the refused ones reached it.
    let message = member.recv_type("message").await;
    assert_eq!(message["data"], json!({"text": "hello"}));
}

#[tokio::test]
async fn the_admin_publish_answers_400_invalid_data() {
    let node = TestNode::start(with_chat_schema(test_config(), "admin")).await;
    let mut member = node.connect().await;
    member.join("chat:a").await;
    let http = crate::support::http_client();
    let post = |body: Value| {
        http.post(node.admin_url("/api/publish"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let response = post(json!({"room": "chat:a", "data": {"text": ""}}))
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json body");
    assert_eq!(body["error"]["code"], "invalid_data", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"/text\"")),
        "{body}"
    );
    let response = post(json!({"room": "chat:a", "data": {"text": "ok"}}))
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 202);
    let message = member.recv_type("message").await;
    assert_eq!(message["data"], json!({"text": "ok"}));
}

#[tokio::test]
async fn a_refused_publish_never_reaches_redis_or_another_node() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rc-validation", "two-nodes");
    let config = with_chat_schema(test_config().on_redis(&redis, &prefix), "two-nodes");
    let a = TestNode::start(config.clone()).await;
    let b = TestNode::start(config).await;
    let nodes = [a, b];
    wait_ready(&nodes, "nodes ready").await;

    // A raw subscriber on the room's channel sees everything that reaches Redis.
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    let channel = format!("{prefix}room:chat:x");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let mut raw = pubsub.into_on_message();

    let mut member = nodes[1].connect().await;
    member.join("chat:x").await;
    let mut publisher = nodes[0].connect().await;
    publisher.join("chat:x").await;

    let reply = publisher
        .request(publish("chat:x", json!({"text": ["no"]})), "bad")
        .await;
    assert_eq!(reply["code"], "invalid_data", "{reply}");
    let reply = publisher
        .request(publish("chat:x", json!({"text": "valid"})), "good")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");

    let message = member.recv_type("message").await;
    assert_eq!(message["data"], json!({"text": "valid"}), "other node");
    let first = tokio::time::timeout(WAIT, raw.next())
        .await
        .expect("a message on the channel in time")
        .expect("pubsub open");
    let payload: String = first.get_payload().expect("payload");
    let envelope: Value = serde_json::from_str(&payload).expect("envelope is JSON");
    assert_eq!(
        envelope["data"],
        json!({"text": "valid"}),
        "the first message on Redis is the valid one: the refused one never got there"
    );
}
