//! The Redis broker (issue 4) against a real `redis-server`: real nodes with real WebSocket
//! clients where a client can show the behaviour, the broker on its own where none can yet
//! (user channels need authentication; the liveness probe needs a connection that goes silent).
//!
//! Every test starts its own `redis-server` and uses its own channel prefix; every wait is
//! bounded by `support::WAIT`.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use roomcast::broker::redis::{RedisBroker, Timings};
use roomcast::broker::{BrokerError, BrokerEvent, Envelope, Origin, PubSub, Target};
use roomcast::config::{BrokerKind, Config, RedisConfig};
use roomcast::metrics::Metrics;
use roomcast::protocol::data_from_payload;
use serde_json::{Value, json};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn unique_prefix(test: &str) -> String {
    format!("rc-test:{test}:{:08x}:", rand::random::<u32>())
}

/// A node configuration on `redis` with `prefix`, generous rate limits.
fn node_config(redis: &RedisServer, prefix: &str) -> Config {
    let mut config = test_config();
    config.broker.kind = BrokerKind::Redis;
    config.redis.url = redis.url();
    config.redis.prefix = prefix.to_owned();
    config.limits.rate_per_sec = 10_000;
    config.limits.rate_burst = 10_000;
    config
}

async fn redis_conn(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).expect("redis url");
    tokio::time::timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .expect("redis connects in time")
        .expect("redis connection")
}

async fn numsub(conn: &mut MultiplexedConnection, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    n
}

async fn pubsub_channels(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(conn)
        .await
        .expect("PUBSUB CHANNELS")
}

async fn raw_publish(conn: &mut MultiplexedConnection, channel: &str, payload: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(conn)
        .await
        .expect("PUBLISH")
}

/// Wait until `channel` has `n` subscribers.
async fn wait_numsub(conn: &MultiplexedConnection, channel: &str, n: i64, what: &str) {
    eventually(what, || {
        let mut conn = conn.clone();
        let channel = channel.to_owned();
        async move { numsub(&mut conn, &channel).await == n }
    })
    .await;
}

/// Wait until no channel matches `pattern`.
async fn wait_no_channels(conn: &MultiplexedConnection, pattern: &str, what: &str) {
    eventually(what, || {
        let mut conn = conn.clone();
        let pattern = pattern.to_owned();
        async move { pubsub_channels(&mut conn, &pattern).await.is_empty() }
    })
    .await;
}

/// Start `n` nodes on `redis` and wait until each is ready and subscribed to broadcasts.
async fn start_cluster(redis: &RedisServer, prefix: &str, n: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(TestNode::start(node_config(redis, prefix)).await);
    }
    for node in &nodes {
        let url = node.admin_url("/readyz");
        eventually("node ready", || async { http_status(&url).await == 200 }).await;
    }
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
    let response = reqwest::Client::new()
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
    for node in &nodes {
        let url = node.admin_url("/readyz");
        eventually("node ready", || async { http_status(&url).await == 200 }).await;
    }
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
    let response = reqwest::Client::new()
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
    let http = reqwest::Client::new();

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
    let response = reqwest::Client::new()
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

// ---- the broker on its own ----

fn broker_config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig {
        url,
        prefix: prefix.to_owned(),
        ..RedisConfig::default()
    }
}

fn quick_timings() -> Timings {
    Timings {
        unsubscribe_grace: Duration::from_millis(200),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Timings::default()
    }
}

/// The next event, skipping nothing.
async fn next_event(rx: &mut mpsc::Receiver<BrokerEvent>) -> BrokerEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a broker event in time")
        .expect("broker event queue open")
}

async fn next_publication(rx: &mut mpsc::Receiver<BrokerEvent>) -> Envelope {
    match next_event(rx).await {
        BrokerEvent::Publication(envelope) => envelope,
        other => panic!("expected a publication, got {other:?}"),
    }
}

fn envelope(target: Target, id: &str, data: &str) -> Envelope {
    Envelope {
        target,
        id: id.to_owned(),
        data: data_from_payload(data.as_bytes()),
        from: "c1".to_owned(),
        ts: 1,
        origin: Some(Origin {
            node: "n1".to_owned(),
            conn: 7,
            echo: false,
        }),
    }
}

/// The broker on its own: a user channel end to end, and a publish through the broker comes
/// back as it went.
#[tokio::test]
async fn the_broker_alone_delivers_user_channels_and_its_own_publishes() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("user");
    let (tx, mut rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::new());
    let broker = RedisBroker::start_with(
        &broker_config(redis.url(), &prefix),
        tx,
        metrics.clone(),
        quick_timings(),
    )
    .expect("start");
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: false }
    ));
    assert!(broker.is_up());

    let user = Target::User("42".into());
    broker.subscribe(user.clone()).await.expect("subscribe");
    let mut conn = redis_conn(&redis.url()).await;
    let n = raw_publish(
        &mut conn,
        &format!("{prefix}user:42"),
        r#"{"data":{"kind":"invoice-paid"}}"#,
    )
    .await;
    assert_eq!(n, 1);
    let e = next_publication(&mut rx).await;
    assert_eq!(e.target, user);
    assert_eq!(e.data.get(), r#"{"kind":"invoice-paid"}"#);
    assert_eq!(e.from, "server");
    assert!(e.origin.is_none());
    assert!(!e.id.is_empty());
    let second = {
        raw_publish(&mut conn, &format!("{prefix}user:42"), "2").await;
        next_publication(&mut rx).await
    };
    assert_ne!(second.id, e.id, "external payloads get fresh ids");

    // A publish through the broker comes back as it went, origin included.
    broker
        .publish(envelope(user.clone(), "n1-1", r#"{"k":1}"#))
        .await
        .expect("publish");
    let e = next_publication(&mut rx).await;
    assert_eq!((e.id.as_str(), e.from.as_str(), e.ts), ("n1-1", "c1", 1));
    assert_eq!(e.origin, envelope(user.clone(), "", "1").origin);
    assert_eq!(e.data.get(), r#"{"k":1}"#);

    broker.unsubscribe(user).await.expect("unsubscribe");
    let users = format!("{prefix}user:*");
    wait_no_channels(&conn, &users, "the user channel goes after the grace").await;
    assert!(metrics.pubsub_lag.get_sample_count() >= 3);
    assert!(metrics.broker_roundtrip.get_sample_count() >= 1);
}

#[tokio::test]
async fn a_resubscribe_within_the_grace_keeps_the_subscription() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("grace");
    let (tx, mut rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::new());
    let broker = RedisBroker::start_with(
        &broker_config(redis.url(), &prefix),
        tx,
        metrics.clone(),
        quick_timings(),
    )
    .expect("start");
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: false }
    ));
    let mut conn = redis_conn(&redis.url()).await;
    let x = Target::Room("x".into());
    let y = Target::Room("y".into());

    broker.subscribe(x.clone()).await.expect("subscribe x");
    broker.unsubscribe(x.clone()).await.expect("unsubscribe x");
    broker
        .subscribe(x.clone())
        .await
        .expect("subscribe x again");
    // Y's grace ends after X's would have: once Y is gone, X's pending unsubscribe is past.
    broker.subscribe(y.clone()).await.expect("subscribe y");
    broker.unsubscribe(y).await.expect("unsubscribe y");
    let y_channel = format!("{prefix}room:y");
    wait_numsub(&conn, &y_channel, 0, "y unsubscribed after its grace").await;
    assert_eq!(
        numsub(&mut conn, &format!("{prefix}room:x")).await,
        1,
        "x stays subscribed"
    );
    assert_eq!(metrics.broker_subscriptions.get(), 1);
    // And it still delivers.
    raw_publish(&mut conn, &format!("{prefix}room:x"), "still here").await;
    assert_eq!(next_publication(&mut rx).await.target, x);
}

#[tokio::test]
async fn start_does_not_need_redis_and_connects_when_it_comes() {
    let port = free_port();
    let prefix = unique_prefix("late");
    let (tx, mut rx) = mpsc::channel(64);
    let started = Instant::now();
    let broker = RedisBroker::start_with(
        &broker_config(format!("redis://127.0.0.1:{port}"), &prefix),
        tx,
        Arc::new(Metrics::new()),
        quick_timings(),
    )
    .expect("starts without redis");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(!broker.is_up());
    let started = Instant::now();
    let err = broker
        .publish(envelope(Target::Broadcast, "n1-1", "1"))
        .await
        .expect_err("no redis, no publish");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(100), "fails fast");

    let _redis = RedisServer::start_on(port);
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: false }
    ));
    assert!(broker.is_up());
    broker
        .subscribe(Target::Broadcast)
        .await
        .expect("subscribe");
    broker
        .publish(envelope(Target::Broadcast, "n1-2", "2"))
        .await
        .expect("publish");
    assert_eq!(next_publication(&mut rx).await.id, "n1-2");
}

/// A TCP proxy in front of Redis whose connections can be frozen: bytes stop flowing both ways
/// but the sockets stay open, like a network that silently drops everything. Connections made
/// after a freeze flow normally.
struct FreezingProxy {
    port: u16,
    freeze: Arc<Mutex<CancellationToken>>,
    shutdown: CancellationToken,
}

impl FreezingProxy {
    async fn start(upstream: u16) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let freeze = Arc::new(Mutex::new(CancellationToken::new()));
        let shutdown = CancellationToken::new();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, s) = (freeze.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    break;
                };
                let frozen = f.lock().expect("freeze lock").clone();
                let (s, held) = (s.clone(), held.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = s.cancelled() => false,
                        _ = frozen.cancelled() => true,
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                    };
                    if froze {
                        held.lock().expect("held lock").extend([inbound, outbound]);
                        s.cancelled().await;
                    }
                });
            }
        });
        FreezingProxy {
            port,
            freeze,
            shutdown,
        }
    }

    fn freeze_open_connections(&self) {
        let mut token = self.freeze.lock().expect("freeze lock");
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn the_probe_catches_a_subscription_that_went_silent() {
    let redis = RedisServer::start();
    let proxy = FreezingProxy::start(redis.port).await;
    let prefix = unique_prefix("probe");
    let (tx, mut rx) = mpsc::channel(64);
    let mut config = broker_config(format!("redis://127.0.0.1:{}", proxy.port), &prefix);
    config.command_timeout_ms = 300;
    let metrics = Arc::new(Metrics::new());
    let broker = RedisBroker::start_with(
        &config,
        tx,
        metrics.clone(),
        Timings {
            probe_idle: Duration::from_millis(200),
            probe_every: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            ..quick_timings()
        },
    )
    .expect("start");
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: false }
    ));
    let room = Target::Room("x".into());
    broker.subscribe(room.clone()).await.expect("subscribe");
    let mut direct = redis_conn(&redis.url()).await;
    let channel = format!("{prefix}room:x");
    raw_publish(&mut direct, &channel, "1").await;
    assert_eq!(next_publication(&mut rx).await.data.get(), "1");
    eventually("a probe came back", || async {
        metrics.broker_roundtrip.get_sample_count() >= 2
    })
    .await;

    proxy.freeze_open_connections();
    // Published while frozen: lost for this node (at most once), and the link is silent.
    raw_publish(&mut direct, &channel, "2").await;
    assert!(matches!(next_event(&mut rx).await, BrokerEvent::Down));
    assert!(!broker.is_up());
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: true }
    ));
    assert!(broker.is_up());
    raw_publish(&mut direct, &channel, "3").await;
    assert_eq!(next_publication(&mut rx).await.data.get(), "3");
}

/// `rediss://` and a password in the URL, through the redis crate's URL parsing. The server's
/// certificate is signed by a CA made for the test, trusted through `redis.tls_ca_file`.
#[tokio::test]
async fn tls_and_a_password_in_the_url_work() {
    let dir = std::env::temp_dir().join(format!("roomcast-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    make_server_certificate(&dir, &ca, &cert, &key);
    let port = free_port();
    let (ca_s, cert_s, key_s) = (
        ca.to_string_lossy().into_owned(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let port_s = port.to_string();
    let redis = RedisServer::start_with_args(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
        ],
    );
    let prefix = unique_prefix("tls");
    let (tx, mut rx) = mpsc::channel(64);
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/");
    let config = RedisConfig {
        tls_ca_file: ca.to_string_lossy().into_owned(),
        ..broker_config(url, &prefix)
    };
    let broker = RedisBroker::start_with(&config, tx, Arc::new(Metrics::new()), quick_timings())
        .expect("start");
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: false }
    ));
    let room = Target::Room("secure".into());
    broker.subscribe(room.clone()).await.expect("subscribe");
    broker
        .publish(envelope(room.clone(), "n1-1", "\"over tls\""))
        .await
        .expect("publish");
    let e = next_publication(&mut rx).await;
    assert_eq!((e.target, e.data.get()), (room, "\"over tls\""));
    drop(broker);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CA, and a certificate for 127.0.0.1 it signed (with openssl, as redis-server needs files).
fn make_server_certificate(dir: &Path, ca: &Path, cert: &Path, key: &Path) {
    let ca_key = dir.join("ca-key.pem");
    let request = dir.join("server.csr");
    let extensions = dir.join("server.ext");
    std::fs::write(&extensions, "subjectAltName = IP:127.0.0.1\n").expect("write extensions");
    let run = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl on PATH");
        assert!(status.success(), "openssl {args:?}");
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    run(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=roomcast test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    run(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        request.as_os_str(),
    ]);
    run(&[
        os("x509"),
        os("-req"),
        os("-in"),
        request.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-extfile"),
        extensions.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
}
