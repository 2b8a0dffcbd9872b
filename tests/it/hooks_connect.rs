//! The backend's connect hook (`hooks.connect_url`, issue 19) against a real HTTP backend on
//! port 0: a session cookie becomes the connection's identity, the backend's 401/403 is the
//! handshake's answer, and a backend that is down or slow is a 503 within `hooks.timeout_ms`
//! while connected clients keep flowing. A slow backend holds its answers until released.

use std::time::Instant;

use roomcast::config::Config;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::auth::{claims, hs256, jwt_config};
use crate::support::backend::{Backend, Reply};
use crate::support::*;

/// The backend: `session=alice` is alice (rooms `chat:*`, subscribed to `news`), `session=slow`
/// is held, `session=banned` is 403, anything else 401.
async fn sessions() -> Backend {
    Backend::start(|seen| match seen.body["headers"]["cookie"].as_str() {
        Some("session=alice") => Reply::json(json!({
            "user": "alice", "rooms": ["chat:*", "news"], "subs": ["news"],
            "info": {"name": "Alice"}
        })),
        Some("session=slow") => Reply::json(json!({"user": "late"})).held(),
        Some("session=banned") => Reply::status(403),
        _ => Reply::status(401),
    })
    .await
}

fn hooked(config: Config, backend: &Backend) -> Config {
    let mut config = config.with_rate(10_000);
    config.hooks.connect_url = backend.url("/connect");
    config
}

async fn calls(node: &TestNode, outcome: &str) -> f64 {
    metric(
        &node.metrics().await,
        &format!("roomcast_hook_calls_total{{hook=\"connect\",outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn a_session_cookie_becomes_the_connections_identity() {
    let backend = sessions().await;
    let node = TestNode::start(hooked(test_config(), &backend)).await;
    let url = format!("{}?room=chat%3Aa&x=1+2", node.ws_url());
    let mut alice = open_ws(&url, &[("cookie", "session=alice"), ("x-other", "no")])
        .await
        .expect("alice is let in");
    assert_eq!(alice.welcome["user"], "alice", "{}", alice.welcome);

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/connect");
    assert_eq!(
        seen[0].body,
        json!({
            "address": "127.0.0.1",
            "headers": {"cookie": "session=alice"},
            "query": {"room": "chat:a", "x": "1 2"},
        }),
        "only the forwarded headers, the query decoded"
    );

    // The backend's `subs` are joined at once, its `rooms` hold.
    let joined = alice.recv_type("joined").await;
    assert_eq!(joined["room"], "news", "{joined}");
    alice.join("chat:a").await;
    let reply = alice
        .request(json!({"type": "join", "room": "private:x"}), "no")
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // Messages carry the backend's user as `from`.
    alice
        .request(
            json!({"type": "publish", "room": "chat:a", "data": 1, "echo": true}),
            "p",
        )
        .await;
    let message = alice.recv_type("message").await;
    assert_eq!(message["from"], "alice");
    assert_eq!(calls(&node, "allowed").await, 1.0);
}

#[tokio::test]
async fn the_backends_401_or_403_is_the_handshakes_answer() {
    let backend = sessions().await;
    let node = TestNode::start(hooked(test_config(), &backend)).await;
    let url = node.ws_url();
    assert_eq!(
        open_ws(&url, &[("cookie", "session=nobody")]).await.err(),
        Some(401)
    );
    assert_eq!(
        open_ws(&url, &[]).await.err(),
        Some(401),
        "no cookie at all"
    );
    assert_eq!(
        open_ws(&url, &[("cookie", "session=banned")]).await.err(),
        Some(403)
    );
    assert_eq!(calls(&node, "refused").await, 3.0);
    let text = node.metrics().await;
    assert_eq!(
        metric(
            &text,
            "roomcast_connections_refused_total{reason=\"unauthorized\"}"
        ),
        3.0
    );
}

#[tokio::test]
async fn a_slow_backend_is_a_503_at_the_timeout_while_connected_clients_flow() {
    let backend = sessions().await;
    let mut config = hooked(test_config(), &backend);
    config.hooks.timeout_ms = 300;
    let node = TestNode::start(config).await;
    let url = node.ws_url();
    let mut a = open_ws(&url, &[("cookie", "session=alice")])
        .await
        .expect("a");
    let mut b = open_ws(&url, &[("cookie", "session=alice")])
        .await
        .expect("b");
    // The backend's `subs` first.
    a.recv_type("joined").await;
    b.recv_type("joined").await;
    a.join("chat:a").await;
    b.join("chat:a").await;

    let started = Instant::now();
    let slow = tokio::spawn({
        let url = url.clone();
        async move { open_ws(&url, &[("cookie", "session=slow")]).await.err() }
    });
    backend
        .wait_for(3, "the slow handshake reached the backend")
        .await;
    // While that handshake waits on the backend, the connected clients publish and receive.
    let reply = a
        .request(
            json!({"type": "publish", "room": "chat:a", "data": "flowing"}),
            "p",
        )
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(b.recv_type("message").await["data"], "flowing");

    let status = slow.await.expect("slow task");
    assert_eq!(status, Some(503));
    assert!(started.elapsed() < WAIT, "answered in bounded time");
    assert_eq!(calls(&node, "timeout").await, 1.0);
    let text = node.metrics().await;
    assert_eq!(
        metric(
            &text,
            "roomcast_connections_refused_total{reason=\"backend_unavailable\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_backend_that_is_down_is_a_503_and_a_valid_token_needs_no_backend() {
    let mut config = jwt_config();
    config.hooks.connect_url = format!("http://127.0.0.1:{}/connect", free_port());
    let node = TestNode::start(config).await;
    // A valid token is the identity: the (dead) backend is not asked.
    let url = format!("{}?token={}", node.ws_url(), hs256(claims("bob")));
    let mut bob = open_ws(&url, &[]).await.expect("a valid token is let in");
    assert_eq!(bob.welcome["user"], "bob");
    assert_eq!(calls(&node, "failed").await, 0.0);

    assert_eq!(
        open_ws(&node.ws_url(), &[("cookie", "session=alice")])
            .await
            .err(),
        Some(503)
    );
    // An invalid token is no identity either: the backend is asked, and it is down.
    let bad = format!("{}?token=not-a-jwt", node.ws_url());
    assert_eq!(open_ws(&bad, &[]).await.err(), Some(503));
    assert_eq!(calls(&node, "failed").await, 2.0);
    // Bob is still connected and served.
    let reply = bob.request(json!({"type": "ping"}), "ping").await;
    assert_eq!(reply["type"], "pong");
}

#[tokio::test]
async fn connect_always_asks_the_backend_even_with_a_valid_token() {
    let backend = sessions().await;
    let mut config = hooked(jwt_config(), &backend);
    config.hooks.connect_always = true;
    let node = TestNode::start(config).await;
    let url = format!("{}?token={}", node.ws_url(), hs256(claims("bob")));
    let alice = open_ws(&url, &[("cookie", "session=alice")])
        .await
        .expect("let in");
    assert_eq!(alice.welcome["user"], "alice", "the backend's answer wins");
    assert_eq!(
        open_ws(&url, &[]).await.err(),
        Some(401),
        "no session: refused"
    );
    assert_eq!(backend.seen().len(), 2);
}

#[tokio::test]
async fn a_backend_answer_off_the_contract_is_a_503() {
    let backend = Backend::start(|seen| match seen.body["query"]["case"].as_str() {
        Some("no-user") => Reply::json(json!({"rooms": []})),
        Some("bad-sub") => Reply::json(json!({"user": "a", "subs": ["no spaces"]})),
        Some("expired") => Reply::json(json!({"user": "a", "exp": 1})),
        _ => Reply::status(500),
    })
    .await;
    let node = TestNode::start(hooked(test_config(), &backend)).await;
    for case in ["no-user", "bad-sub", "expired", "500"] {
        let url = format!("{}?case={case}", node.ws_url());
        assert_eq!(open_ws(&url, &[]).await.err(), Some(503), "{case}");
    }
    assert_eq!(calls(&node, "failed").await, 4.0);
}

#[tokio::test]
async fn an_upgrade_request_above_max_message_bytes_is_dropped_unasked() {
    let backend = sessions().await;
    let mut config = hooked(test_config(), &backend);
    config.limits.max_message_bytes = 1024;
    let node = TestNode::start(config).await;
    let mut request = node.ws_url().into_client_request().expect("request");
    let big = format!("session={}", "x".repeat(2000));
    request
        .headers_mut()
        .insert("cookie", big.parse().expect("header"));
    let result = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("the node answers or closes in time");
    assert!(result.is_err(), "refused");
    assert!(backend.seen().is_empty(), "the backend was not asked");
    // A request that fits is served.
    let alice = open_ws(&node.ws_url(), &[("cookie", "session=alice")])
        .await
        .expect("alice");
    assert_eq!(alice.welcome["user"], "alice");
}
