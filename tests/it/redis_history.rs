//! History with the Redis broker (issue 8): kept messages shared by every node, services
//! keeping history with one `FCALL`, a node whose pub/sub link drops catching up, and clients
//! of a killed node resuming on another without loss.

use crate::support::*;
use roomcast::config::Config;
use serde_json::{Value, json};

fn prefix(test: &str) -> String {
    unique_prefix("rc-hist", test)
}

fn config(redis: &RedisServer, prefix: &str) -> Config {
    test_config()
        .on_redis(redis, prefix)
        .with_rate(100_000)
        .with_chat_history(1_000)
}

/// Publish, retrying (bounded) while the broker answers `unavailable`, as a client would.
async fn publish(client: &mut Client, room: &str, data: Value) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ack = client
            .request(
                json!({"type":"publish","room":room,"data":data,"echo":false}),
                "p",
            )
            .await;
        if ack["type"] == "ack" {
            return ack["msg_id"].as_str().expect("msg_id").to_owned();
        }
        assert_eq!(ack["code"], "unavailable", "{ack}");
        assert!(
            std::time::Instant::now() < deadline,
            "the broker came back in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn history_is_shared_by_every_node() {
    let redis = RedisServer::start();
    let p = prefix("shared");
    let a = TestNode::start(config(&redis, &p)).await;
    let b = TestNode::start(config(&redis, &p)).await;
    let mut publisher = a.connect().await;
    publisher.join("chat:x").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&mut publisher, "chat:x", json!(i)).await);
    }
    let mut late = b.connect().await;
    let joined = late
        .request(json!({"type":"join","room":"chat:x","since":ids[1]}), "j")
        .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["history"], 3);
    for i in 2..5 {
        let m = late.recv_json().await;
        assert_eq!(
            (m["data"].clone(), m["id"].clone()),
            (json!(i), json!(ids[i as usize]))
        );
    }
    publish(&mut publisher, "chat:x", json!("live")).await;
    assert_eq!(late.recv_json().await["data"], "live");
}

#[tokio::test]
async fn services_keep_history_with_fcall_and_plain_publish_is_live_only() {
    let redis = RedisServer::start();
    let p = prefix("fcall");
    let node = TestNode::start(config(&redis, &p)).await;
    let mut member = node.connect().await;
    member.join("chat:news").await;
    let mut conn = redis_conn(&redis.url()).await;
    let channel = format!("{p}room:chat:news");
    let id: String = redis::cmd("FCALL")
        .arg("roomcast_publish")
        .arg(1)
        .arg(&channel)
        .arg(r#"{"data":{"headline":"kept"}}"#)
        .query_async(&mut conn)
        .await
        .expect("FCALL roomcast_publish");
    let m = member.recv_json().await;
    assert_eq!(m["data"], json!({"headline":"kept"}));
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["from"], "server");
    assert!(m["ts"].as_u64().is_some());

    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(r#"{"data":"live only"}"#)
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    assert_eq!(member.recv_json().await["data"], "live only");
    eventually("the unkept message is counted", || async {
        metric(&node.metrics().await, "roomcast_history_unkept_total") == 1.0
    })
    .await;

    let mut late = node.connect().await;
    let joined = late
        .request(json!({"type":"join","room":"chat:news","history":10}), "j")
        .await;
    assert_eq!(
        joined["history"], 1,
        "only the FCALL message is kept: {joined}"
    );
    assert_eq!(late.recv_json().await["id"], id.as_str());
}

/// One node is cut off from Redis while another keeps publishing: members on the cut-off
/// node, who never disconnected, get every message once, in order, from history.
#[tokio::test]
async fn a_node_cut_off_from_redis_catches_its_rooms_up_from_history() {
    let redis = RedisServer::start();
    let proxy = CuttableProxy::start(redis.port).await;
    let p = prefix("catchup");
    let a = TestNode::start(config(&redis, &p)).await;
    let mut b_config = config(&redis, &p);
    b_config.redis.url = proxy.url();
    let b = TestNode::start(b_config).await;
    let mut publisher = a.connect().await;
    publisher.join("chat:c").await;
    let mut member = b.connect().await;
    member.join("chat:c").await;

    let mut expected = Vec::new();
    for i in 0..50 {
        publish(&mut publisher, "chat:c", json!(i)).await;
        expected.push(i);
    }
    proxy.cut();
    // A dropped socket is usually noticed at once; when the EOF is not, the liveness probe
    // (5 s idle + 5 s timeout) catches it, so allow for that rather than WAIT alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let down = crate::support::http_client()
            .get(b.admin_url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 503);
        if down {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b notices it is cut off"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in 50..150 {
        publish(&mut publisher, "chat:c", json!(i)).await;
        expected.push(i);
    }
    proxy.restore();
    for i in 150..200 {
        publish(&mut publisher, "chat:c", json!(i)).await;
        expected.push(i);
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.push(
            member.recv_type("message").await["data"]
                .as_u64()
                .expect("data"),
        );
    }
    assert_eq!(seen, expected, "every message once, in order");
    let metrics = b.metrics().await;
    assert!(
        metric(&metrics, "roomcast_history_caught_up_total") >= 100.0,
        "{metrics}"
    );
    // Nothing more arrives: the next frame is the reply to this ping.
    assert_eq!(
        member.request(json!({"type":"ping"}), "end").await["type"],
        "pong"
    );
}

async fn spawn_node(redis: &RedisServer, prefix: &str) -> (Child, String) {
    let config_toml = "[history]\nrooms = [{ pattern = \"chat:*\", size = 1000, ttl_s = 600 }]\n";
    BinaryOnRedis::new(redis, prefix, config_toml)
        .env("ROOMCAST_LIMITS__RATE_PER_SEC", "100000")
        .env("ROOMCAST_LIMITS__RATE_BURST", "100000")
        .spawn()
        .await
}

/// A gateway node is SIGKILLed mid-stream; its client resumes on another node with `since`
/// and loses nothing.
#[tokio::test]
async fn clients_of_a_killed_node_resume_on_another_without_loss() {
    let redis = RedisServer::start();
    let p = prefix("sigkill");
    let (mut doomed, doomed_url) = spawn_node(&redis, &p).await;
    let survivor = TestNode::start(config(&redis, &p)).await;
    let mut publisher = survivor.connect().await;
    publisher.join("chat:k").await;
    let mut reader = Client::connect(&doomed_url).await;
    reader.join("chat:k").await;

    const TOTAL: u64 = 300;
    let publishing = async {
        for i in 0..TOTAL {
            publish(&mut publisher, "chat:k", json!(i)).await;
        }
    };
    let reading = async {
        let mut seen = Vec::new();
        let mut last_id = String::new();
        while seen.len() < 100 {
            let m = reader.recv_type("message").await;
            seen.push(m["data"].as_u64().expect("data"));
            last_id = m["id"].as_str().expect("id").to_owned();
        }
        doomed.0.kill().expect("SIGKILL the node");
        let _ = doomed.0.wait();
        let mut resumed = survivor.connect().await;
        let joined = resumed
            .request(json!({"type":"join","room":"chat:k","since":last_id}), "j")
            .await;
        assert_eq!(joined["recovered"], true, "{joined}");
        while (seen.len() as u64) < TOTAL {
            let m = resumed.recv_type("message").await;
            seen.push(m["data"].as_u64().expect("data"));
        }
        seen
    };
    let ((), seen) = tokio::join!(publishing, reading);
    assert_eq!(
        seen,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

/// Redis is stopped and restarted while a service keeps publishing through the admin API,
/// retrying what is refused: afterwards every member has every acknowledged message.
#[tokio::test]
async fn acknowledged_messages_survive_a_redis_restart() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let p = prefix("restart");
    let node = TestNode::start(config(&redis, &p)).await;
    let mut member = node.connect().await;
    member.join("chat:r").await;
    let http = crate::support::http_client();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..60u64 {
        if i == 20 {
            redis.stop();
        }
        // A service retries until the gateway accepts (bounded).
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if refused == 5 {
                redis = RedisServer::start_on(port);
                refused += 1;
            }
            let response = http
                .post(node.admin_url("/api/publish"))
                .body(json!({"room":"chat:r","data":i}).to_string())
                .send()
                .await
                .expect("admin api");
            if response.status() == 202 {
                acknowledged.push(i);
                break;
            }
            assert_eq!(response.status(), 503, "refused while redis is away");
            refused += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "redis came back in time"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let mut seen = Vec::new();
    while seen.len() < acknowledged.len() {
        seen.push(
            member.recv_type("message").await["data"]
                .as_u64()
                .expect("data"),
        );
    }
    assert_eq!(seen, acknowledged);
}
