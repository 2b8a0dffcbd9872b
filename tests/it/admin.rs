//! docs/protocol.md "Admin HTTP API": health, readiness, metrics, the publish routes, the API key
//! and JSON errors, against a real node over real HTTP.

use crate::support::*;
use serde_json::{Value, json};

async fn post(node: &TestNode, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = crate::support::http_client()
        .post(node.admin_url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send().await.expect("post");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let node = TestNode::start(test_config()).await;
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/nope", 404)] {
        let r = crate::support::http_client()
            .get(node.admin_url(path))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), status, "{path}");
    }
}

#[tokio::test]
async fn publish_notify_and_broadcast_reach_clients() {
    let node = TestNode::start(test_config()).await;
    let mut member = node.connect().await;
    let mut bystander = node.connect().await;
    member.join("news").await;

    let (status, body) = post(
        &node,
        "/api/publish",
        r#"{"room":"news","data":{"headline":"hello"}}"#,
        None,
    )
    .await;
    assert_eq!(status, 202);
    let id = body["id"].as_str().expect("id").to_owned();
    let m = member.recv_type("message").await;
    assert_eq!(m["data"], json!({"headline":"hello"}));
    assert_eq!(m["from"], "server");
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["room"], "news");

    let (status, body) = post(&node, "/api/broadcast", r#"{"data":"all hands"}"#, None).await;
    assert_eq!(status, 202);
    for client in [&mut member, &mut bystander] {
        let b = client.recv_type("broadcast").await;
        assert_eq!(b["data"], "all hands");
        assert_eq!(b["id"], body["id"]);
        assert!(b["ts"].as_u64().is_some());
    }

    // Without authentication no connection has a user; the route still accepts and answers.
    let (status, body) = post(&node, "/api/notify", r#"{"user":"42","data":1}"#, None).await;
    assert_eq!(status, 202);
    assert!(body["id"].as_str().is_some());
}

#[tokio::test]
async fn bad_bodies_get_400_or_413_with_json_errors() {
    let mut config = test_config();
    config.limits.max_message_bytes = 256;
    let node = TestNode::start(config).await;
    for (path, body, status, code) in [
        ("/api/publish", "not json", 400, "bad_request"),
        ("/api/publish", r#"{"data":1}"#, 400, "bad_request"),
        ("/api/publish", r#"{"room":"ok"}"#, 400, "bad_request"),
        (
            "/api/publish",
            r#"{"room":"bad room","data":1}"#,
            400,
            "invalid_room",
        ),
        ("/api/notify", r#"{"data":1}"#, 400, "bad_request"),
        ("/api/broadcast", r#"[1]"#, 400, "bad_request"),
    ] {
        let (got, json) = post(&node, path, body, None).await;
        assert_eq!(got, status, "{path} {body}");
        assert_eq!(json["error"]["code"], code, "{path} {body}: {json}");
        assert!(json["error"]["message"].as_str().is_some());
    }
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(1000));
    let (status, json) = post(&node, "/api/broadcast", &big, None).await;
    assert_eq!(status, 413);
    assert_eq!(json["error"]["code"], "too_large");
}

#[tokio::test]
async fn api_key_guards_the_post_routes_only() {
    let mut config = test_config();
    config.admin.api_key = Some("s3cret".into());
    let node = TestNode::start(config).await;
    let body = r#"{"data":1}"#;
    let (status, json) = post(&node, "/api/broadcast", body, None).await;
    assert_eq!(status, 401);
    assert_eq!(json["error"]["code"], "unauthorized");
    assert_eq!(
        post(&node, "/api/broadcast", body, Some("wrong")).await.0,
        401
    );
    assert_eq!(
        post(
            &node,
            "/api/publish",
            r#"{"room":"a","data":1}"#,
            Some("s3cret!")
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(&node, "/api/broadcast", body, Some("s3cret")).await.0,
        202
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = crate::support::http_client()
            .get(node.admin_url(path))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "{path} needs no key");
    }
}

#[tokio::test]
async fn metrics_move_when_traffic_flows() {
    let node = TestNode::start(test_config()).await;
    let before = node.metrics().await;
    assert_eq!(metric(&before, "roomcast_connections_open"), 0.0);
    assert!(before.contains("roomcast_delivery_latency_seconds_bucket"));
    assert!(before.contains("roomcast_broker_publish_seconds_bucket"));

    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("m").await;
    b.join("m").await;
    a.request(json!({"type":"publish","room":"m","data":1}), "p")
        .await;
    b.recv_type("message").await;
    a.request(json!({"type":"bogus"}), "bad").await;

    let after = node.metrics().await;
    assert_eq!(metric(&after, "roomcast_connections_open"), 2.0);
    assert_eq!(metric(&after, "roomcast_connections_accepted_total"), 2.0);
    assert_eq!(metric(&after, "roomcast_rooms"), 1.0);
    assert_eq!(
        metric(
            &after,
            r#"roomcast_messages_received_total{command="join"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            r#"roomcast_messages_received_total{command="publish"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            r#"roomcast_invalid_messages_total{code="bad_request"}"#
        ),
        1.0
    );
    // One publish, echo on: delivered to both members.
    assert_eq!(metric(&after, "roomcast_messages_delivered_total"), 2.0);
    assert_eq!(
        metric(&after, "roomcast_delivery_latency_seconds_count"),
        1.0
    );
    assert_eq!(metric(&after, "roomcast_broker_publish_seconds_count"), 1.0);
    assert_eq!(metric(&after, "roomcast_broker_up"), 1.0);

    b.close().await;
    eventually("the closed connection is counted", || async {
        let m = node.metrics().await;
        metric(&m, "roomcast_connections_open") == 1.0
            && metric(&m, r#"roomcast_disconnects_total{reason="peer_gone"}"#) == 1.0
    })
    .await;
}
