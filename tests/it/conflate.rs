//! Conflated rooms (docs/protocol.md "Conflated rooms"): in a room matching `conflate.rooms`, a
//! member whose outbox is behind gets only the latest message per `key`, is not closed with
//! 1013 for it, and fast members get every message; the same slow member elsewhere is closed
//! with 1013; keys are validated, carried in the `message` frame, and arrive by client
//! command, admin API and a service's plain Redis PUBLISH alike (two nodes on Redis); a
//! conflated history room keeps every message.
//!
//! A slow member is a real client that stops reading: big messages fill the socket buffers,
//! then its outbox (8 frames here). Fast members read in lockstep with the publisher (the next
//! message is published once every fast member has the last one), so nothing ever waits for
//! them and nothing of theirs can be conflated. How far to flood is read off the slow member's
//! node metrics, never off a clock.

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;
use roomcast::config::{Config, ConflateRule, HistoryRule, Overrides};
use serde_json::{Value, json};

use crate::support::*;

const KEYS: [&str; 3] = ["AAPL", "MSFT", "TSLA"];
const CONFLATED: &str = r#"roomcast_messages_conflated_total"#;
const OVERFLOWED: &str = r#"roomcast_messages_dropped_total{reason="slow_consumer"}"#;
/// The most messages a flood may take before the test gives up on its condition.
const MAX_FLOOD: u64 = 3_000;

fn conflate_config() -> Config {
    let mut config = test_config().with_rate(1_000_000);
    config.conflate.rooms = vec![ConflateRule {
        pattern: "px:*".into(),
    }];
    config.limits.outbox_messages = 8;
    // The close frame of a contrast member stays queued until it reads again.
    config.limits.close_timeout_ms = 60_000;
    config
}

/// Who publishes the flood.
enum Via<'a> {
    Client(&'a mut Client),
    Admin(&'a TestNode),
    Redis(MultiplexedConnection, String),
}

impl Via<'_> {
    async fn publish(&mut self, room: &str, data: Value, key: &str) {
        match self {
            Via::Client(client) => {
                let reply = client
                    .request(
                        json!({"type":"publish","room":room,"data":data,"key":key,"echo":false}),
                        "p",
                    )
                    .await;
                assert_eq!(reply["type"], "ack", "{reply}");
            }
            Via::Admin(node) => {
                let (status, body) = post(node, json!({"room":room,"data":data,"key":key})).await;
                assert_eq!(status, 202, "{body}");
            }
            Via::Redis(conn, channel) => {
                let payload = json!({"data":data,"key":key}).to_string();
                raw_publish(conn, channel, &payload).await;
            }
        }
    }
}

async fn post(node: &TestNode, body: Value) -> (u16, Value) {
    post_to(node, "/api/publish", body).await
}

async fn post_to(node: &TestNode, path: &str, body: Value) -> (u16, Value) {
    let response = http_client()
        .post(node.admin_url(path))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What a flood published: how many, and the last `seq` of each key.
struct Flood {
    sent: u64,
    last: HashMap<String, u64>,
}

/// Publish keyed messages of 32 KiB to `room`, round robin over [`KEYS`], each received by
/// every `fast` member before the next, until `metric_name` on `watched` reaches `until`.
async fn flood(
    via: &mut Via<'_>,
    room: &str,
    fast: &mut [&mut Client],
    watched: &TestNode,
    metric_name: &str,
    until: f64,
) -> Flood {
    let pad = "x".repeat(32 * 1024);
    let mut flood = Flood {
        sent: 0,
        last: HashMap::new(),
    };
    loop {
        let metrics = watched.metrics().await;
        // An overflow ends every flood: the contrast waits for it, elsewhere it is the failure
        // the next read reports (a close 1013).
        if metric(&metrics, metric_name) >= until || metric(&metrics, OVERFLOWED) >= 1.0 {
            break;
        }
        assert!(
            flood.sent < MAX_FLOOD,
            "{metric_name} never reached {until}"
        );
        let seq = flood.sent;
        let key = KEYS[(seq % KEYS.len() as u64) as usize];
        via.publish(room, json!({"seq":seq,"key":key,"pad":pad}), key)
            .await;
        for client in fast.iter_mut() {
            let m = client.recv_type("message").await;
            assert_eq!(m["data"]["seq"], seq, "a fast member gets every message");
            assert_eq!(m["key"], key, "the key is in the frame");
        }
        flood.last.insert(key.to_owned(), seq);
        flood.sent += 1;
    }
    eprintln!("flood of {room}: {} messages", flood.sent);
    flood
}

/// Read the slow member until it has the last value of every key: `(key, seq)` in the order
/// received. Any close on the way fails the test.
async fn drain(slow: &mut Client, flood: &Flood) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    let mut latest: HashMap<String, u64> = HashMap::new();
    while flood
        .last
        .iter()
        .any(|(k, last)| latest.get(k) != Some(last))
    {
        let m = slow.recv_type("message").await;
        let key = m["key"].as_str().expect("a keyed frame").to_owned();
        assert_eq!(m["data"]["key"], key.as_str());
        let seq = m["data"]["seq"].as_u64().expect("seq");
        if let Some(before) = latest.insert(key.clone(), seq) {
            assert!(
                seq > before,
                "{key}: {seq} after {before}: never an older value"
            );
        }
        got.push((key, seq));
    }
    got
}

/// The slow member got exactly what was not replaced, the last value of each key, and is
/// still open.
async fn assert_conflated(slow: &mut Client, flood: &Flood, node: &TestNode) {
    let got = drain(slow, flood).await;
    let conflated = metric(&node.metrics().await, CONFLATED) as u64;
    assert!(conflated >= 10, "conflated {conflated}");
    assert_eq!(
        got.len() as u64 + conflated,
        flood.sent,
        "each message was either sent to the slow member or replaced by a newer one"
    );
    assert_eq!(metric(&node.metrics().await, OVERFLOWED), 0.0);
    let pong = slow.request(json!({"type":"ping"}), "still-open").await;
    assert_eq!(pong["type"], "pong", "not closed: {pong}");
}

#[tokio::test]
async fn a_slow_member_of_a_conflated_room_gets_the_latest_per_key_and_stays_open() {
    let node = TestNode::start(conflate_config()).await;
    let mut publisher = node.connect().await;
    let mut fast = node.connect().await;
    let mut slow = node.connect().await;
    for c in [&mut publisher, &mut fast, &mut slow] {
        c.join("px:a").await;
    }
    let mut via = Via::Client(&mut publisher);
    let flood = flood(&mut via, "px:a", &mut [&mut fast], &node, CONFLATED, 10.0).await;
    assert_conflated(&mut slow, &flood, &node).await;
}

/// The contrast: the same slow member in a room no `conflate.rooms` pattern matches is
/// closed with 1013, keys or not.
#[tokio::test]
async fn the_same_slow_member_outside_a_conflated_room_is_closed_with_1013() {
    let node = TestNode::start(conflate_config()).await;
    let mut publisher = node.connect().await;
    let mut fast = node.connect().await;
    let mut slow = node.connect().await;
    for c in [&mut publisher, &mut fast, &mut slow] {
        c.join("plain:a").await;
    }
    let mut via = Via::Client(&mut publisher);
    flood(
        &mut via,
        "plain:a",
        &mut [&mut fast],
        &node,
        OVERFLOWED,
        1.0,
    )
    .await;
    slow.expect_close(1013).await;
    assert_eq!(metric(&node.metrics().await, CONFLATED), 0.0);
}

/// A history room that is conflated keeps every message: only live delivery skips.
#[tokio::test]
async fn a_conflated_history_room_keeps_every_message() {
    let mut config = conflate_config();
    config.history.rooms = vec![HistoryRule {
        pattern: "px:*".into(),
        size: 64,
        ttl_s: 600,
    }];
    let node = TestNode::start(config).await;
    let mut publisher = node.connect().await;
    let mut fast = node.connect().await;
    let mut slow = node.connect().await;
    for c in [&mut publisher, &mut fast, &mut slow] {
        c.join("px:h").await;
    }
    let mut via = Via::Client(&mut publisher);
    let flood = flood(&mut via, "px:h", &mut [&mut fast], &node, CONFLATED, 10.0).await;
    let got = drain(&mut slow, &flood).await;
    let kept: Value = http_client()
        .get(node.admin_url("/api/history/px:h?limit=64"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("history body");
    let kept: Vec<(String, u64)> = kept["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(m["key"], m["data"]["key"], "kept with its key");
            let key = m["key"].as_str().expect("key").to_owned();
            (key, m["data"]["seq"].as_u64().expect("seq"))
        })
        .collect();
    let newest: Vec<u64> = (flood.sent.saturating_sub(64)..flood.sent).collect();
    assert_eq!(
        kept.iter().map(|(_, seq)| *seq).collect::<Vec<_>>(),
        newest,
        "the newest 64, none skipped"
    );
    let skipped = kept.iter().filter(|k| !got.contains(k)).count();
    assert!(skipped > 0, "the slow member skipped some of them live");
}

#[tokio::test]
async fn keys_are_validated_and_carried_in_the_message_frame() {
    let mut config = conflate_config();
    config.conflate.max_key_bytes = 8;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;
    a.join("px:v").await;
    a.join("plain:v").await;
    for (key, wanted) in [
        (json!(5), "`key` must be a string"),
        (json!(""), "`key` must not be empty"),
        (
            json!("123456789"),
            "at most 8 bytes (conflate.max_key_bytes)",
        ),
    ] {
        let reply = a
            .request(
                json!({"type":"publish","room":"px:v","data":1,"key":key}),
                "bad",
            )
            .await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request");
        let message = reply["message"].as_str().expect("message");
        assert!(message.contains(wanted), "{message}");
    }
    // At the bound, in any room: the frame carries it; without one, no `key` field.
    for room in ["px:v", "plain:v"] {
        let body = json!({"type":"publish","room":room,"data":1,"key":"12345678"});
        let m = publish_echoed(&mut a, body).await;
        assert_eq!((&m["room"], &m["key"]), (&json!(room), &json!("12345678")));
    }
    let m = publish_echoed(&mut a, json!({"type":"publish","room":"px:v","data":2})).await;
    assert_eq!(m["data"], 2);
    assert!(m.get("key").is_none(), "{m}");

    // The admin API: the same rules, and a key only on room messages.
    for (path, body) in [
        (
            "/api/publish",
            json!({"room":"px:v","data":1,"key":"123456789"}),
        ),
        ("/api/publish", json!({"room":"px:v","data":1,"key":[1]})),
        ("/api/notify", json!({"user":"u","data":1,"key":"k"})),
        ("/api/broadcast", json!({"data":1,"key":"k"})),
    ] {
        let (status, reply) = post_to(&node, path, body).await;
        assert_eq!(status, 400, "{path}: {reply}");
        assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    }
    let (status, reply) = post(&node, json!({"room":"px:v","data":3,"key":"k"})).await;
    assert_eq!(status, 202, "{reply}");
    let m = a.recv_type("message").await;
    assert_eq!((&m["data"], &m["key"]), (&json!(3), &json!("k")));

    // POST /publish on the public port (the SSE transport's publish): the same key rules.
    let url = format!("http://{}/publish", node.ws_addr);
    for (key, code) in [("123456789", "bad_request"), ("k2", "")] {
        let body = json!({"type":"publish","room":"px:v","data":4,"key":key});
        let response = http_client()
            .post(&url)
            .body(body.to_string())
            .send()
            .await
            .expect("POST /publish");
        let reply: Value = response.json().await.expect("json answer");
        if code.is_empty() {
            assert_eq!(reply["type"], "ack", "{reply}");
        } else {
            assert_eq!(reply["code"], code, "{reply}");
        }
    }
    let m = a.recv_type("message").await;
    assert_eq!((&m["data"], &m["key"]), (&json!(4), &json!("k2")));
}

/// Publish with echo and return the echoed message, whether it comes before or after the ack.
async fn publish_echoed(client: &mut Client, mut body: Value) -> Value {
    body["id"] = json!("echoed");
    client.send_json(body).await;
    let (mut acked, mut message) = (false, None);
    while !acked || message.is_none() {
        let frame = client.recv_json().await;
        match frame["type"].as_str() {
            Some("ack") => acked = true,
            Some("message") => message = Some(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    message.unwrap_or_default()
}

#[test]
fn conflate_keys_are_validated_by_name_and_load_from_toml() {
    for (change, key) in [
        (
            (|c: &mut Config| c.conflate.max_key_bytes = 0) as fn(&mut Config),
            "conflate.max_key_bytes",
        ),
        (
            |c: &mut Config| c.conflate.max_key_bytes = 4097,
            "conflate.max_key_bytes",
        ),
        (
            |c: &mut Config| {
                c.conflate.rooms = vec![ConflateRule { pattern: "".into() }];
            },
            "conflate.rooms[0].pattern",
        ),
    ] {
        let mut config = Config::default();
        change(&mut config);
        let err = config.validate().expect_err(key);
        assert!(err.to_string().contains(key), "{err}");
    }
    assert_eq!(Config::default().conflate.max_key_bytes, 256);
    let toml = r#"
        [conflate]
        max_key_bytes = 64
        [[conflate.rooms]]
        pattern = "px:*"
    "#;
    let file = std::env::temp_dir().join(format!("roomcast-conflate-{}.toml", std::process::id()));
    std::fs::write(&file, toml).expect("write");
    let loaded = Config::load(Some(&file), Vec::new(), &Overrides::default());
    let _ = std::fs::remove_file(&file);
    let loaded = loaded.expect("loads");
    assert_eq!(loaded.conflate.max_key_bytes, 64);
    assert_eq!(
        loaded.conflate.rooms,
        [ConflateRule {
            pattern: "px:*".into()
        }]
    );
}

/// Two nodes on Redis with a fast member on each and the slow member on the second: a plain
/// Redis PUBLISH carrying `key` is conflated there, and so is an admin API publish on the
/// first node (its key travels in the envelope).
#[tokio::test]
async fn keys_from_a_plain_redis_publish_and_the_admin_api_conflate_on_another_node() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rc-conflate", "cluster");
    let node_a = TestNode::start(conflate_config().on_redis(&redis, &prefix)).await;
    let node_b = TestNode::start(conflate_config().on_redis(&redis, &prefix)).await;
    let nodes = [node_a, node_b];
    wait_ready(&nodes, "both nodes ready").await;
    let [node_a, node_b] = nodes;
    let conn = redis_conn(&redis.url()).await;
    let channel = format!("{prefix}room:px:c");

    for (round, room) in ["px:c", "px:d"].into_iter().enumerate() {
        let mut fast_a = node_a.connect().await;
        let mut fast_b = node_b.connect().await;
        let mut slow = node_b.connect().await;
        for c in [&mut fast_a, &mut fast_b, &mut slow] {
            c.join(room).await;
        }
        wait_numsub(
            &conn,
            &format!("{prefix}room:{room}"),
            2,
            "both nodes subscribed",
        )
        .await;
        let before = metric(&node_b.metrics().await, CONFLATED);
        let mut via = match round {
            0 => Via::Redis(conn.clone(), channel.clone()),
            _ => Via::Admin(&node_a),
        };
        let flood = flood(
            &mut via,
            room,
            &mut [&mut fast_a, &mut fast_b],
            &node_b,
            CONFLATED,
            before + 10.0,
        )
        .await;
        let got = drain(&mut slow, &flood).await;
        let conflated = metric(&node_b.metrics().await, CONFLATED) - before;
        assert_eq!(got.len() as u64 + conflated as u64, flood.sent);
        let pong = slow.request(json!({"type":"ping"}), "open").await;
        assert_eq!(pong["type"], "pong");
        assert_eq!(metric(&node_a.metrics().await, CONFLATED), 0.0);
    }
    assert_eq!(metric(&node_b.metrics().await, OVERFLOWED), 0.0);

    // A service's key over `conflate.max_key_bytes` cannot be refused: delivered, with its
    // key, unconflated, and counted on each node.
    let mut members = [node_a.connect().await, node_b.connect().await];
    for m in members.iter_mut() {
        m.join("px:long").await;
    }
    let channel = format!("{prefix}room:px:long");
    wait_numsub(&conn, &channel, 2, "both nodes subscribed").await;
    let long = "k".repeat(257);
    let mut raw = conn.clone();
    raw_publish(
        &mut raw,
        &channel,
        &json!({"data":1,"key":long}).to_string(),
    )
    .await;
    for (m, node) in members.iter_mut().zip([&node_a, &node_b]) {
        let frame = m.recv_type("message").await;
        assert_eq!(frame["key"], long.as_str());
        let metrics = node.metrics().await;
        assert_eq!(
            metric(&metrics, "roomcast_conflation_keys_too_long_total"),
            1.0
        );
    }
}
