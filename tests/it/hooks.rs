//! The backend's join and publish hooks (`[hooks]`, issue 19) against a real HTTP backend on
//! port 0: allow, refuse with the backend's reason, rewrite, fail closed (down, 5xx, slow) within
//! `hooks.timeout_ms` without stalling other connections, and the bound on requests in flight.
//! Every wait is bounded; a slow backend is one that holds its answers until the test releases
//! them, never a sleep.

use std::time::Instant;

use roomcast::config::Config;
use serde_json::{Value, json};

use crate::support::backend::{Backend, Reply};
use crate::support::*;

fn hooked(backend: &Backend) -> Config {
    let mut config = test_config().with_rate(10_000);
    config.hooks.join_url = backend.url("/join");
    config.hooks.join_rooms = vec!["private:*".into()];
    config.hooks.publish_url = backend.url("/publish");
    config.hooks.publish_rooms = vec!["chat:*".into()];
    config
}

fn join(room: &str) -> Value {
    json!({"type": "join", "room": room})
}

fn publish(room: &str, data: Value) -> Value {
    json!({"type": "publish", "room": room, "data": data})
}

/// `roomcast_hook_calls_total{hook, outcome}`.
async fn calls(node: &TestNode, hook: &str, outcome: &str) -> f64 {
    metric(
        &node.metrics().await,
        &format!("roomcast_hook_calls_total{{hook=\"{hook}\",outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn the_join_hook_allows_or_refuses_with_the_backends_reason() {
    let backend = Backend::start(|seen| match seen.body["room"].as_str() {
        Some("private:team") => Reply::json(json!({"allow": true, "info": {"role": "admin"}})),
        _ => Reply::json(json!({"allow": false, "reason": "members only"})),
    })
    .await;
    let node = TestNode::start(hooked(&backend)).await;
    let mut client = node.connect().await;
    let welcome = client.welcome.clone();

    let reply = client.request(join("private:team"), "ok").await;
    assert_eq!(reply["type"], "joined", "{reply}");
    let reply = client.request(join("private:other"), "no").await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert_eq!(reply["message"], "members only", "{reply}");
    // A room no pattern matches is not asked.
    client.join("lobby").await;

    let seen = backend.seen();
    assert_eq!(seen.len(), 2, "only the private rooms were asked: {seen:?}");
    assert_eq!(seen[0].path, "/join");
    assert_eq!(
        seen[0].body,
        json!({"user": null, "conn_id": welcome["conn_id"], "room": "private:team"})
    );
    assert_eq!(
        seen[0].headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert_eq!(calls(&node, "join", "allowed").await, 1.0);
    assert_eq!(calls(&node, "join", "refused").await, 1.0);
}

#[tokio::test]
async fn the_publish_hook_rewrites_or_rejects() {
    let backend = Backend::start(|seen| match seen.body["data"]["text"].as_str() {
        Some("buy now") => Reply::json(json!({"allow": false, "reason": "spam"})),
        Some("darn") => Reply::json(json!({"allow": true, "data": {"text": "d**n"}})),
        _ => Reply::json(json!({"allow": true})),
    })
    .await;
    let node = TestNode::start(hooked(&backend)).await;
    let mut publisher = node.connect().await;
    let mut member = node.connect().await;
    publisher.join("chat:a").await;
    member.join("chat:a").await;

    let reply = publisher
        .request(publish("chat:a", json!({"text": "buy now"})), "spam")
        .await;
    assert_eq!(reply["code"], "rejected", "{reply}");
    assert_eq!(reply["message"], "spam", "{reply}");

    let reply = publisher
        .request(publish("chat:a", json!({"text": "darn"})), "rewrite")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let message = member.recv_type("message").await;
    assert_eq!(
        message["data"],
        json!({"text": "d**n"}),
        "the backend's data"
    );

    let reply = publisher
        .request(publish("chat:a", json!({"text": "hello"})), "as-is")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let message = member.recv_type("message").await;
    assert_eq!(message["data"], json!({"text": "hello"}));

    let seen = backend.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].path, "/publish");
    assert_eq!(seen[0].body["room"], "chat:a");
    assert_eq!(seen[0].body["data"], json!({"text": "buy now"}));
    assert!(seen[0].body["conn_id"].is_string());
    assert_eq!(calls(&node, "publish", "refused").await, 1.0);
    assert_eq!(calls(&node, "publish", "allowed").await, 2.0);
}

#[tokio::test]
async fn a_backend_that_is_down_or_answers_5xx_fails_closed() {
    // Nothing listens on a port that was free a moment ago: connection refused.
    let mut config = test_config();
    config.hooks.join_url = format!("http://127.0.0.1:{}/join", free_port());
    config.hooks.join_rooms = vec!["private:*".into()];
    let node = TestNode::start(config).await;
    let mut client = node.connect().await;
    let reply = client.request(join("private:a"), "down").await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert_eq!(calls(&node, "join", "failed").await, 1.0);

    let backend = Backend::start(|_| Reply::status(502)).await;
    let node = TestNode::start(hooked(&backend)).await;
    let mut client = node.connect().await;
    let reply = client.request(join("private:a"), "5xx").await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(
        reply["message"].as_str().is_some_and(|m| m.contains("502")),
        "{reply}"
    );
    client.join("chat:a").await;
    let reply = client
        .request(publish("chat:a", json!({"text": "x"})), "5xx-publish")
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
}

#[tokio::test]
async fn a_slow_backend_fails_closed_at_the_timeout_and_stalls_no_one_else() {
    let backend = Backend::start(|_| Reply::json(json!({"allow": true})).held()).await;
    let mut config = hooked(&backend);
    config.hooks.timeout_ms = 300;
    let node = TestNode::start(config).await;
    let mut waiting = node.connect().await;
    waiting.join("chat:a").await;
    let mut other = node.connect().await;
    let mut member = node.connect().await;
    other.join("news").await;
    member.join("news").await;

    let started = Instant::now();
    waiting
        .send_json(json!({"type": "publish", "room": "chat:a", "data": 1, "id": "slow"}))
        .await;
    backend.wait_for(1, "the publish hook was asked").await;
    // While that publish waits on the backend, other connections publish and receive.
    let reply = other
        .request(publish("news", json!("still flowing")), "n")
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(member.recv_type("message").await["data"], "still flowing");

    let reply = waiting.recv_type("error").await;
    assert_eq!(reply["id"], "slow");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let elapsed = started.elapsed();
    assert!(elapsed < WAIT, "failed closed in bounded time: {elapsed:?}");
    assert_eq!(calls(&node, "publish", "timeout").await, 1.0);
    let text = node.metrics().await;
    assert_eq!(
        metric(&text, "roomcast_hook_seconds_count{hook=\"publish\"}"),
        1.0
    );
}

#[tokio::test]
async fn requests_above_max_in_flight_fail_at_once_without_reaching_the_backend() {
    let backend = Backend::start(|_| Reply::json(json!({"allow": true})).held()).await;
    let mut config = hooked(&backend);
    config.hooks.max_in_flight = 2;
    config.hooks.timeout_ms = 60_000;
    let node = TestNode::start(config).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut client = node.connect().await;
        client.join("chat:a").await;
        client
            .send_json(json!({"type": "publish", "room": "chat:a", "data": i, "id": "held"}))
            .await;
        held.push(client);
    }
    backend
        .wait_for(2, "two publishes held by the backend")
        .await;

    let mut third = node.connect().await;
    third.join("chat:a").await;
    let reply = third.request(publish("chat:a", json!(3)), "over").await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("in flight")),
        "{reply}"
    );
    assert_eq!(backend.seen().len(), 2, "the third was never sent");
    assert_eq!(calls(&node, "publish", "overloaded").await, 1.0);

    backend.release();
    for client in &mut held {
        let reply = client.recv_type("ack").await;
        assert_eq!(reply["id"], "held", "{reply}");
    }
    // The permits are back: the next one is asked.
    let reply = third.request(publish("chat:a", json!(4)), "after").await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

#[tokio::test]
async fn the_backends_data_is_held_to_the_rooms_schema() {
    let dir = std::env::temp_dir().join(format!("roomcast-hook-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let schema = dir.join("chat.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","required":["text"],"properties":{"text":{"type":"string"}}}"#,
    )
    .expect("schema");
    let backend =
        Backend::start(|_| Reply::json(json!({"allow": true, "data": {"text": 7}}))).await;
    let mut config = hooked(&backend);
    config.validation.rooms = vec![roomcast::config::ValidationRule {
        pattern: "chat:*".into(),
        schema_file: schema,
    }];
    let node = TestNode::start(config).await;
    let mut client = node.connect().await;
    client.join("chat:a").await;
    // The client's invalid data is refused before the backend is asked.
    let reply = client
        .request(publish("chat:a", json!({"nope": 1})), "c")
        .await;
    assert_eq!(reply["code"], "invalid_data", "{reply}");
    assert!(backend.seen().is_empty(), "no round trip for invalid data");
    // The backend's invalid replacement is refused too, naming whose data it was.
    let reply = client
        .request(publish("chat:a", json!({"text": "x"})), "b")
        .await;
    assert_eq!(reply["code"], "invalid_data", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the backend's data: data at \"/text\"")),
        "{reply}"
    );
}

#[test]
fn hook_keys_have_their_defaults_and_bad_values_are_named() {
    let hooks = Config::default().hooks;
    assert_eq!(hooks.connect_url, "");
    assert!(!hooks.connect_always);
    assert_eq!(hooks.forward_headers, vec!["cookie", "authorization"]);
    assert_eq!(hooks.join_url, "");
    assert_eq!(hooks.publish_url, "");
    assert_eq!(hooks.timeout_ms, 1_000);
    assert_eq!(hooks.max_in_flight, 256);
    assert_eq!(hooks.max_info_bytes, 1_024);

    type Edit = fn(&mut Config);
    let cases: [(Edit, &str); 13] = [
        (|c| c.hooks.max_info_bytes = 1, "hooks.max_info_bytes"),
        (|c| c.hooks.max_info_bytes = 65_537, "hooks.max_info_bytes"),
        (|c| c.hooks.max_in_flight = 100_001, "hooks.max_in_flight"),
        (
            |c| {
                c.hooks.connect_url = "http://backend/connect".into();
                c.hooks.timeout_ms = c.server.handshake_timeout_ms;
            },
            "hooks.timeout_ms",
        ),
        (|c| c.hooks.timeout_ms = 0, "hooks.timeout_ms"),
        (|c| c.hooks.max_in_flight = 0, "hooks.max_in_flight"),
        (
            |c| c.hooks.join_url = "backend/join".into(),
            "hooks.join_url",
        ),
        (
            |c| c.hooks.publish_url = "https://".into(),
            "hooks.publish_url",
        ),
        (
            |c| c.hooks.connect_url = "http://".into(),
            "hooks.connect_url",
        ),
        (
            |c| c.hooks.join_url = "http://backend/join".into(),
            "hooks.join_url",
        ),
        (
            |c| {
                c.hooks.publish_url = "http://backend/p".into();
                c.hooks.publish_rooms = vec![String::new()];
            },
            "hooks.publish_rooms[0]",
        ),
        (
            |c| c.hooks.forward_headers = vec!["cookie".into(), "bad header".into()],
            "hooks.forward_headers[1]",
        ),
        (|c| c.hooks.connect_always = true, "hooks.connect_always"),
    ];
    for (edit, key) in cases {
        let mut config = test_config();
        edit(&mut config);
        let err = config.validate().expect_err(key).to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
    let mut config = test_config();
    config.hooks.join_url = "http://127.0.0.1:1/join".into();
    config.hooks.join_rooms = vec!["private:*".into()];
    config.validate().expect("a valid hook");
}
