//! The Redis broker (issue 4) against a real `redis-server`: real nodes with real WebSocket
//! clients. The broker on its own, where no client can show the behaviour yet, is in
//! `redis_broker_alone`.
//!
//! Every test starts its own `redis-server` and uses its own channel prefix; every wait is
//! bounded by `support::WAIT`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::future::join_all;
use roomcast::config::Config;
use serde_json::{Value, json};

fn unique_prefix(test: &str) -> String {
    crate::support::unique_prefix("rc-test", test)
}

/// A node configuration on `redis` with `prefix`, generous rate limits.
fn node_config(redis: &RedisServer, prefix: &str) -> Config {
    test_config().on_redis(redis, prefix).with_rate(10_000)
}

/// Start `n` nodes on `redis` and wait until each is ready and subscribed to broadcasts.
async fn start_cluster(redis: &RedisServer, prefix: &str, n: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestNode::start(node_config(redis, prefix)).await);
    }
    wait_ready(&nodes, "node ready").await;
    let conn = redis_conn(&redis.url()).await;
    let broadcast = format!("{prefix}broadcast");
    wait_numsub(
        &conn,
        &broadcast,
        n as i64,
        "every node subscribed to broadcasts",
    )
    .await;
    nodes
}

/// Read frames until `n` room messages have arrived and, for a publisher, `acks` acks.
/// Returns the messages as (id, data) and the acked message ids.
async fn collect(
    client: &mut Client,
    n: usize,
    acks: usize,
) -> (Vec<(String, Value)>, Vec<String>) {
    let mut messages = Vec::new();
    let mut acked = Vec::new();
    while messages.len() < n || acked.len() < acks {
        let frame = client.recv_json().await;
        match frame["type"].as_str() {
            Some("message") => messages.push((
                frame["id"].as_str().expect("message id").to_owned(),
                frame["data"].clone(),
            )),
            Some("ack") => acked.push(frame["msg_id"].as_str().expect("msg_id").to_owned()),
            _ => panic!("unexpected frame {frame}"),
        }
    }
    (messages, acked)
}

/// The next room message, skipping replies.
async fn next_message(client: &mut Client) -> Value {
    client.recv_type("message").await
}

#[tokio::test]
async fn a_publish_reaches_every_node_once_in_one_order() {
    const PER_PUBLISHER: usize = 150;
    const TOTAL: usize = 2 * PER_PUBLISHER;
    let redis = RedisServer::start();
    let prefix = unique_prefix("order");
    let nodes = start_cluster(&redis, &prefix, 3).await;
    let mut clients = Vec::new();
    // Two publishers (on A and B) and members on every node.
    for node in [0, 1, 0, 1, 2, 2] {
        let mut client = nodes[node].connect().await;
        client.join("bench").await;
        clients.push(client);
    }

    let runs = clients
        .iter_mut()
        .enumerate()
        .map(|(i, client)| async move {
            let publishing = i < 2;
            if publishing {
                for seq in 0..PER_PUBLISHER {
                    client
                        .send_json(
                            json!({"type":"publish","room":"bench","data":{"p":i,"seq":seq}}),
                        )
                        .await;
                }
            }
            collect(client, TOTAL, if publishing { PER_PUBLISHER } else { 0 }).await
        });
    let results = join_all(runs).await;

    let acked: HashSet<String> = results
        .iter()
        .flat_map(|(_, a)| a.iter().cloned())
        .collect();
    assert_eq!(acked.len(), TOTAL, "every publish acked with its own id");
    let first: Vec<&str> = results[0].0.iter().map(|(id, _)| id.as_str()).collect();
    for (i, (messages, _)) in results.iter().enumerate() {
        let ids: Vec<&str> = messages.iter().map(|(id, _)| id.as_str()).collect();
        let distinct: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), TOTAL, "client {i}: no duplicate");
        assert!(
            distinct.iter().all(|id| acked.contains(*id)),
            "client {i}: only published messages"
        );
        assert_eq!(ids, first, "client {i} saw another order than client 0");
        for publisher in 0..2 {
            let seqs: Vec<u64> = messages
                .iter()
                .filter(|(_, d)| d["p"] == publisher)
                .map(|(_, d)| d["seq"].as_u64().expect("seq"))
                .collect();
            assert_eq!(
                seqs,
                (0..PER_PUBLISHER as u64).collect::<Vec<_>>(),
                "client {i}, publisher {publisher}"
            );
        }
    }

    // Nothing more than once: a last message (from a service, so no client waits for an ack)
    // is the very next frame everywhere.
    let response = crate::support::http_client()
        .post(nodes[2].admin_url("/api/publish"))
        .json(&json!({"room":"bench","data":"end"}))
        .send()
        .await
        .expect("POST /api/publish");
    assert_eq!(response.status().as_u16(), 202);
    for (i, client) in clients.iter_mut().enumerate() {
        let m = next_message(client).await;
        assert_eq!(m["data"], "end", "client {i} got an extra message: {m}");
    }
    drop(nodes);
}

#[tokio::test]
async fn echo_false_skips_only_the_sender_across_nodes() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("echo");
    let nodes = start_cluster(&redis, &prefix, 2).await;
    let mut sender = nodes[0].connect().await;
    let mut same_node = nodes[0].connect().await;
    let mut other_node = nodes[1].connect().await;
    for c in [&mut sender, &mut same_node, &mut other_node] {
        c.join("r").await;
    }
    sender
        .send_json(json!({"type":"publish","room":"r","data":"quiet","echo":false}))
        .await;
    sender
        .send_json(json!({"type":"publish","room":"r","data":"loud"}))
        .await;
    // Both acked, and the first message the sender sees is the second one.
    let (messages, acks) = collect(&mut sender, 1, 2).await;
    assert_eq!(acks.len(), 2);
    assert_eq!(
        messages[0].1, "loud",
        "the sender got its echo: false message back"
    );
    for c in [&mut same_node, &mut other_node] {
        assert_eq!(next_message(c).await["data"], "quiet");
        assert_eq!(next_message(c).await["data"], "loud");
    }
}

#[tokio::test]
async fn a_plain_redis_publish_reaches_rooms_and_broadcast() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("raw");
    let nodes = start_cluster(&redis, &prefix, 2).await;
    let mut on_a = nodes[0].connect().await;
    let mut on_b = nodes[1].connect().await;
    let mut outsider = nodes[1].connect().await;
    on_a.join("news").await;
    on_b.join("news").await;
    let mut conn = redis_conn(&redis.url()).await;
    let room = format!("{prefix}room:news");

    let receivers = raw_publish(&mut conn, &room, r#"{"data":{"headline":"hello"}}"#).await;
    assert_eq!(receivers, 2, "one subscription per node with a member");
    for c in [&mut on_a, &mut on_b] {
        let m = next_message(c).await;
        assert_eq!(m["room"], "news");
        assert_eq!(m["data"], json!({"headline":"hello"}));
        assert_eq!(m["from"], "server");
        assert!(!m["id"].as_str().expect("id").is_empty());
        assert!(m["ts"].as_u64().expect("ts") > 0);
    }
    // Any other payload is the data itself.
    raw_publish(&mut conn, &room, "hello world").await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_message(c).await["data"], "hello world");
    }

    raw_publish(
        &mut conn,
        &format!("{prefix}broadcast"),
        r#"{"data":{"notice":1}}"#,
    )
    .await;
    for c in [&mut on_a, &mut on_b, &mut outsider] {
        let b = c.recv_type("broadcast").await;
        assert_eq!(b["data"], json!({"notice":1}));
    }
}

fn user_token(secret: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

#[tokio::test]
async fn a_plain_redis_publish_to_a_user_reaches_its_connections_on_every_node() {
    const SECRET: &str = "redis-broker-test-secret-0123456789";
    let redis = RedisServer::start();
    let prefix = unique_prefix("users");
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let mut config = node_config(&redis, &prefix);
        config.auth.mode = roomcast::config::AuthMode::Jwt;
        config.auth.jwt_secret = Some(SECRET.into());
        nodes.push(TestNode::start(config).await);
    }
    wait_ready(&nodes, "node ready").await;
    let token = user_token(SECRET, "42");
    let other = user_token(SECRET, "7");
    // The user's channel is subscribed before `welcome`.
    let mut on_a = Client::connect(&format!("{}?token={token}", nodes[0].ws_url())).await;
    let mut on_b = Client::connect(&format!("{}?token={token}", nodes[1].ws_url())).await;
    let mut someone_else = Client::connect(&format!("{}?token={other}", nodes[1].ws_url())).await;
    assert_eq!(on_a.welcome["user"], "42");
    let conn = redis_conn(&redis.url()).await;
    let channel = format!("{prefix}user:42");
    assert_eq!(numsub(&mut conn.clone(), &channel).await, 2);

    let n = raw_publish(
        &mut conn.clone(),
        &channel,
        r#"{"data":{"kind":"invoice-paid"}}"#,
    )
    .await;
    assert_eq!(n, 2);
    for c in [&mut on_a, &mut on_b] {
        let note = c.recv_type("notification").await;
        assert_eq!(note["data"], json!({"kind":"invoice-paid"}));
    }
    // The other user got nothing: its next frame is the reply to a ping.
    let pong = someone_else.request(json!({"type":"ping"}), "p").await;
    assert_eq!(pong["type"], "pong");

    // The admin notify route goes through Redis too.
    let response = crate::support::http_client()
        .post(nodes[1].admin_url("/api/notify"))
        .json(&json!({"user":"42","data":"hi"}))
        .send()
        .await
        .expect("POST /api/notify");
    assert_eq!(response.status().as_u16(), 202);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(c.recv_type("notification").await["data"], "hi");
    }

    on_a.close().await;
    on_b.close().await;
    wait_numsub(
        &conn,
        &channel,
        0,
        "the user channel goes with the user's last connection",
    )
    .await;
}

#[tokio::test]
async fn the_admin_api_on_one_node_reaches_members_on_another() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("admin");
    let nodes = start_cluster(&redis, &prefix, 2).await;
    let mut member = nodes[0].connect().await;
    member.join("ops").await;
    let http = crate::support::http_client();

    let response = http
        .post(nodes[1].admin_url("/api/publish"))
        .json(&json!({"room":"ops","data":{"x":1}}))
        .send()
        .await
        .expect("POST /api/publish");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("json body");
    let m = next_message(&mut member).await;
    assert_eq!(m["id"], body["id"]);
    assert_eq!(m["data"], json!({"x":1}));
    assert_eq!(m["from"], "server");

    let response = http
        .post(nodes[1].admin_url("/api/broadcast"))
        .json(&json!({"data":"all"}))
        .send()
        .await
        .expect("POST /api/broadcast");
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(member.recv_type("broadcast").await["data"], "all");
}

#[tokio::test]
async fn subscriptions_follow_interest() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("interest");
    let nodes = start_cluster(&redis, &prefix, 2).await;
    let mut conn = redis_conn(&redis.url()).await;
    let channel = format!("{prefix}room:lobby");
    let rooms = format!("{prefix}room:*");
    assert!(pubsub_channels(&mut conn, &rooms).await.is_empty());

    let mut a1 = nodes[0].connect().await;
    let mut a2 = nodes[0].connect().await;
    let mut b1 = nodes[1].connect().await;
    // `joined` comes after Redis confirmed the subscription: no waiting needed.
    a1.join("lobby").await;
    assert_eq!(numsub(&mut conn, &channel).await, 1);
    b1.join("lobby").await;
    assert_eq!(numsub(&mut conn, &channel).await, 2);
    a2.join("lobby").await;
    assert_eq!(
        numsub(&mut conn, &channel).await,
        2,
        "one subscription per node"
    );

    let left = b1
        .request(json!({"type":"leave","room":"lobby"}), "bye")
        .await;
    assert_eq!(left["type"], "left");
    wait_numsub(&conn, &channel, 1, "node B unsubscribes after the grace").await;

    a1.close().await;
    let left = a2
        .request(json!({"type":"leave","room":"lobby"}), "bye")
        .await;
    assert_eq!(left["type"], "left");
    wait_no_channels(
        &conn,
        &rooms,
        "no room channel left once the last member is gone",
    )
    .await;
    let metrics = nodes[0].metrics().await;
    assert_eq!(
        metric(&metrics, "roomcast_broker_subscriptions"),
        1.0,
        "broadcast only"
    );
}

#[tokio::test]
async fn redis_down_means_unavailable_and_redis_back_means_traffic_again() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let prefix = unique_prefix("outage");
    let nodes = start_cluster(&redis, &prefix, 2).await;
    let mut a = nodes[0].connect().await;
    let mut b = nodes[1].connect().await;
    a.join("r").await;
    b.join("r").await;
    // `a` publishes with echo: false throughout, so `request` skips none of its messages.
    let ack = a
        .request(
            json!({"type":"publish","room":"r","data":"before","echo":false}),
            "p0",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_message(&mut b).await["data"], "before");

    redis.stop();
    for node in &nodes {
        let url = node.admin_url("/readyz");
        eventually("readyz 503 while redis is down", || async {
            http_status(&url).await == 503
        })
        .await;
    }
    let command_timeout = Duration::from_millis(Config::default().redis.command_timeout_ms);
    let started = Instant::now();
    let reply = a
        .request(
            json!({"type":"publish","room":"r","data":"lost","echo":false}),
            "p1",
        )
        .await;
    assert!(
        started.elapsed() <= command_timeout,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let response = crate::support::http_client()
        .post(nodes[1].admin_url("/api/publish"))
        .json(&json!({"room":"r","data":1}))
        .send()
        .await
        .expect("POST /api/publish");
    assert_eq!(response.status().as_u16(), 503);
    // Clients stay connected.
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.request(json!({"type":"ping"}), "alive").await["type"],
            "pong"
        );
    }
    assert_eq!(metric(&nodes[0].metrics().await, "roomcast_broker_up"), 0.0);

    let _redis = RedisServer::start_on(port);
    let back = Instant::now();
    for node in &nodes {
        let url = node.admin_url("/readyz");
        eventually("readyz 200 once redis is back", || async {
            http_status(&url).await == 200
        })
        .await;
    }
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "took {:?}",
        back.elapsed()
    );
    // The same clients, no reconnect: traffic flows between the nodes again.
    let ack = a
        .request(
            json!({"type":"publish","room":"r","data":"after","echo":false}),
            "p2",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_message(&mut b).await["data"], "after");
    let ack = b
        .request(json!({"type":"publish","room":"r","data":"from b"}), "p3")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(next_message(&mut a).await["data"], "from b");
    for node in &nodes {
        let metrics = node.metrics().await;
        assert!(metric(&metrics, "roomcast_broker_reconnects_total") >= 1.0);
        assert_eq!(metric(&metrics, "roomcast_broker_up"), 1.0);
    }
}
