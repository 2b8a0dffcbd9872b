//! The SSE transport (docs/protocol.md "SSE transport", issue 21): `GET /sse` and
//! `POST /publish` on the public port, through a plain TCP client that reads the event stream
//! with bounded waits. Each test names the rule it holds; removing the rule fails it.

use std::net::SocketAddr;

use futures_util::StreamExt;
use roomcast::config::{Config, ValidationRule};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::auth::{claims, hs256, jwt_config, status_of, with_token};
use crate::support::*;

/// One event of the stream; a block of comment lines only (a heartbeat) has `comment` set.
#[derive(Debug, Default)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: Option<String>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

/// An open event stream.
struct Sse {
    tcp: TcpStream,
    buf: Vec<u8>,
}

/// A raw HTTP request to the public port.
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: roomcast\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// Send `request` and read the head: the status and the head's text.
async fn send_head(addr: SocketAddr, request: &str) -> (TcpStream, u16, String, Vec<u8>) {
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("head in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    let rest = buf[end + 4..].to_vec();
    (tcp, status, head, rest)
}

/// A whole answer (head and body, read to the close).
async fn answer(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let (mut tcp, status, head, mut body) = send_head(addr, request).await;
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut body))
        .await
        .expect("body in time")
        .expect("read body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

impl Sse {
    /// `GET target` with `headers`; panics unless 200 with an event stream.
    async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let (tcp, status, head, buf) = send_head(addr, &request("GET", target, headers, "")).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("Content-Type: text/event-stream"), "{head}");
        let mut sse = Sse { tcp, buf };
        let welcome = sse.next().await;
        assert_eq!(welcome.event.as_deref(), Some("welcome"), "{welcome:?}");
        sse
    }

    /// The next event or heartbeat.
    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return parse_block(&String::from_utf8_lossy(&block));
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("an event arrives in time")
                .expect("read");
            assert!(
                n > 0,
                "stream ended; left: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event of type `kind`, skipping heartbeats and other events.
    async fn next_of(&mut self, kind: &str) -> Event {
        loop {
            let event = self.next().await;
            if event.event.as_deref() == Some(kind) {
                return event;
            }
        }
    }
}

fn parse_block(block: &str) -> Event {
    let mut event = Event::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_owned());
        } else if let Some(value) = line.strip_prefix("data: ") {
            data.push(value);
        } else if let Some(value) = line.strip_prefix("id: ") {
            event.id = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("event: ") {
            event.event = Some(value.to_owned());
        }
    }
    event.data = data.join("\n");
    event
}

/// Publish through the admin API; the message id.
async fn admin_publish(node: &TestNode, room: &str, data: Value) -> String {
    let response = crate::support::http_client()
        .post(node.admin_url("/api/publish"))
        .json(&json!({"room": room, "data": data}))
        .send()
        .await
        .expect("admin publish");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

/// `POST /publish` on the public port: status and JSON answer.
async fn post_publish(addr: SocketAddr, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let (status, head, text) = answer(addr, &request("POST", "/publish", headers, body)).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{head}\n{text}"));
    (status, value)
}

#[tokio::test]
async fn events_carry_the_frame_type_the_websocket_json_and_kept_ids() {
    let node = TestNode::start(test_config().with_chat_history(50)).await;
    let mut sse = Sse::open(node.ws_addr, "/sse?room=chat:a&room=news", &[]).await;
    let joined = sse.next_of("joined").await;
    assert_eq!(joined.json()["room"], "chat:a");
    assert_eq!(joined.id, None, "only messages carry an id");
    assert_eq!(sse.next_of("joined").await.json()["room"], "news");
    let mut member = node.connect().await;
    member.join("chat:a").await;
    member.join("news").await;

    let id = admin_publish(&node, "chat:a", json!({"text": "hi"})).await;
    let event = sse.next_of("message").await;
    let ws = member.recv_type("message").await;
    assert_eq!(event.json(), ws, "the same JSON a WebSocket member gets");
    assert_eq!(event.id.as_deref(), Some(id.as_str()), "id: the message id");
    assert!(id.starts_with('h'), "a kept message's id: {id}");

    // Not resumable: no `id:`, so the browser's last event id stays on the kept message.
    admin_publish(&node, "news", json!(1)).await;
    let event = sse.next_of("message").await;
    assert_eq!(event.json()["room"], "news");
    assert_eq!(event.id, None);
}

#[tokio::test]
async fn last_event_id_resumes_a_history_room_with_no_gap_and_no_duplicate() {
    let node = TestNode::start(test_config().with_chat_history(50)).await;
    let mut sse = Sse::open(node.ws_addr, "/sse?room=chat:a", &[]).await;
    sse.next_of("joined").await;
    for i in 0..3 {
        admin_publish(&node, "chat:a", json!(i)).await;
    }
    let mut last = None;
    for i in 0..3 {
        let event = sse.next_of("message").await;
        assert_eq!(event.json()["data"], i);
        last = event.id;
    }
    let last = last.expect("a kept message has an id");
    drop(sse);
    for i in 3..6 {
        admin_publish(&node, "chat:a", json!(i)).await;
    }
    // The first request names it in the URL; a browser's reconnect sends the header, which
    // wins over the URL's (stale) one.
    let target = format!("/sse?room=chat:a&last_event_id={last}");
    let mut sse = Sse::open(node.ws_addr, &target, &[]).await;
    let joined = sse.next_of("joined").await.json();
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["history"], 3, "{joined}");
    let mut resumed = None;
    for i in 3..6 {
        let event = sse.next_of("message").await;
        assert_eq!(event.json()["data"], i, "no gap, no duplicate");
        resumed = event.id;
    }
    admin_publish(&node, "chat:a", json!(6)).await;
    assert_eq!(sse.next_of("message").await.json()["data"], 6, "then live");
    drop(sse);

    let resumed = resumed.expect("id");
    let mut sse = Sse::open(node.ws_addr, &target, &[("Last-Event-ID", &resumed)]).await;
    let joined = sse.next_of("joined").await.json();
    assert_eq!(joined["history"], 1, "from the header's id: {joined}");
    assert_eq!(sse.next_of("message").await.json()["data"], 6);
}

#[tokio::test]
async fn a_refused_token_gets_the_websocket_handshake_status() {
    let node = TestNode::start(jwt_config()).await;
    let bad = "not-a-token";
    let ws = status_of(&with_token(&node, bad), None).await.err();
    assert_eq!(ws, Some(401));
    for target in ["/sse?room=a".to_owned(), format!("/sse?room=a&token={bad}")] {
        let page = [("Origin", "https://app.example")];
        let (status, head, _) = answer(node.ws_addr, &request("GET", &target, &page, "")).await;
        assert_eq!(status, 401, "{target}");
        assert!(
            head.contains("Access-Control-Allow-Origin: https://app.example"),
            "the page may read the refusal: {head}"
        );
    }
    let body = r#"{"type":"publish","room":"a","data":1}"#;
    let (status, _, text) = answer(node.ws_addr, &request("POST", "/publish", &[], body)).await;
    assert_eq!(status, 401, "{text}");

    let token = hs256(claims("alice"));
    let mut sse = Sse::open(node.ws_addr, &format!("/sse?room=a&token={token}"), &[]).await;
    assert_eq!(sse.next_of("joined").await.json()["room"], "a");
    let bearer = format!("Bearer {token}");
    let sse = Sse::open(node.ws_addr, "/sse?room=a", &[("Authorization", &bearer)]).await;
    drop(sse);
}

#[tokio::test]
async fn origins_outside_the_list_are_refused_and_allowed_ones_may_read() {
    let mut config = test_config();
    config.server.allowed_origins = vec!["https://app.example".into()];
    let node = TestNode::start(config).await;
    let evil = [("Origin", "https://evil.example")];
    let (status, _, _) = answer(node.ws_addr, &request("GET", "/sse?room=a", &evil, "")).await;
    assert_eq!(status, 403);
    let body = r#"{"type":"publish","room":"a","data":1}"#;
    let (status, _, _) = answer(node.ws_addr, &request("POST", "/publish", &evil, body)).await;
    assert_eq!(status, 403);

    let good = [("Origin", "https://app.example")];
    let (_, status, head, _) = send_head(node.ws_addr, &request("GET", "/sse", &good, "")).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Access-Control-Allow-Origin: https://app.example"),
        "{head}"
    );
}

#[tokio::test]
async fn post_publish_reaches_websocket_and_sse_members_and_answers_like_a_command() {
    let dir = std::env::temp_dir().join(format!("roomcast-sse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let schema = dir.join("chat.json");
    std::fs::write(&schema, r#"{"type":"object","required":["text"]}"#).expect("schema");
    let mut config: Config = test_config().with_rate(1000);
    config.validation.rooms = vec![ValidationRule {
        pattern: "chat:*".into(),
        schema_file: schema,
    }];
    let node = TestNode::start(config).await;
    let mut sse = Sse::open(node.ws_addr, "/sse?room=chat:a", &[]).await;
    sse.next_of("joined").await;
    let mut member = node.connect().await;
    member.join("chat:a").await;

    let body = r#"{"type":"publish","room":"chat:a","data":{"text":"hi"},"id":7}"#;
    let (status, ack) = post_publish(node.ws_addr, body, &[]).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], 7);
    assert_eq!(ack["room"], "chat:a");
    let ws = member.recv_type("message").await;
    assert_eq!(ws["id"], ack["msg_id"]);
    assert_eq!(ws["data"], json!({"text": "hi"}));
    assert_eq!(sse.next_of("message").await.json(), ws);

    let invalid = r#"{"type":"publish","room":"chat:a","data":{"no":"text"},"id":"x"}"#;
    let (status, error) = post_publish(node.ws_addr, invalid, &[]).await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("invalid_data")),
        "{error}"
    );
    assert_eq!(error["type"], "error");
    assert_eq!(error["id"], "x");
    let (status, error) = post_publish(node.ws_addr, "not json", &[]).await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("bad_request")),
        "{error}"
    );
    let join = r#"{"type":"join","room":"chat:a"}"#;
    let (status, error) = post_publish(node.ws_addr, join, &[]).await;
    assert_eq!(
        (status, &error["code"]),
        (400, &json!("bad_request")),
        "{error}"
    );
    // Nothing of the refused ones was delivered: the next message is the next valid one.
    let body = r#"{"type":"publish","room":"chat:a","data":{"text":"two"}}"#;
    assert_eq!(post_publish(node.ws_addr, body, &[]).await.0, 200);
    assert_eq!(member.recv_type("message").await["data"]["text"], "two");
    assert_eq!(sse.next_of("message").await.json()["data"]["text"], "two");
}

#[tokio::test]
async fn post_publish_is_rate_limited_per_publisher() {
    let mut config = test_config().with_rate(2);
    config.limits.rate_limit_window_ms = 60_000;
    let node = TestNode::start(config).await;
    let body = r#"{"type":"publish","room":"a","data":1}"#;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, answer) = post_publish(node.ws_addr, body, &[]).await;
        if status == 429 {
            assert_eq!(answer["code"], "rate_limited", "{answer}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], 200);
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test]
async fn heartbeats_are_comments() {
    let mut config = test_config();
    config.limits.ping_interval_ms = 100;
    let node = TestNode::start(config).await;
    let mut sse = Sse::open(node.ws_addr, "/sse", &[]).await;
    let beat = loop {
        let event = sse.next().await;
        if event.comment.is_some() {
            break event;
        }
    };
    assert_eq!(beat.comment.as_deref(), Some("ping"));
    assert_eq!((beat.event, beat.data.as_str()), (None, ""));
}

#[tokio::test]
async fn a_slow_reader_is_closed_as_a_slow_consumer_with_a_final_close_event() {
    let mut config = test_config();
    config.limits.outbox_messages = 4;
    let node = TestNode::start(config).await;
    // A small receive window, so the node's writes stall soon.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket.connect(node.ws_addr).await.expect("connect");
    tcp.write_all(request("GET", "/sse?room=big", &[], "").as_bytes())
        .await
        .expect("send");
    // Until `joined`, then not another byte read while the room fills.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("event: joined") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .expect("joined in time")
            .expect("read");
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&chunk[..n]);
    }
    let payload = "x".repeat(16 * 1024);
    let mut published = 0;
    loop {
        let metrics = node.metrics().await;
        // Counted when the outbox overflows, before the close event is written (which waits for
        // this reader to read again).
        let dropped = r#"roomcast_messages_dropped_total{reason="slow_consumer"}"#;
        let closed = metrics.contains(dropped) && metric(&metrics, dropped) >= 1.0;
        if closed {
            break;
        }
        assert!(published < 4000, "never closed after {published} messages");
        admin_publish(&node, "big", json!(payload)).await;
        published += 1;
    }
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("the stream ends in time")
        .expect("read");
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    let last = text
        .trim_end()
        .rsplit("\n\n")
        .next()
        .map(parse_block)
        .expect("a last event");
    assert_eq!(last.event.as_deref(), Some("close"), "{last:?}");
    let close = last.json();
    assert_eq!(close["code"], 1013, "{close}");
    assert_eq!(close["reason"], "slow consumer", "{close}");
}

#[tokio::test]
async fn an_sse_member_on_one_node_gets_a_websocket_publish_on_another() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("sse", "cluster");
    let nodes = [
        TestNode::start(test_config().on_redis(&redis, &prefix)).await,
        TestNode::start(test_config().on_redis(&redis, &prefix)).await,
    ];
    wait_ready(&nodes, "both nodes ready").await;
    let mut sse = Sse::open(nodes[0].ws_addr, "/sse?room=lobby", &[]).await;
    sse.next_of("joined").await;
    let mut publisher = nodes[1].connect().await;
    publisher.join("lobby").await;
    let ack = publisher
        .request(
            json!({"type":"publish","room":"lobby","data":"across"}),
            "p",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let event = sse.next_of("message").await.json();
    assert_eq!(event["data"], "across");
    assert_eq!(event["id"], ack["msg_id"]);
}

#[tokio::test]
async fn server_subscriptions_and_revocations_reach_sse_clients() {
    let node = TestNode::start(jwt_config()).await;
    let token = hs256(claims("carol"));
    let mut sse = Sse::open(node.ws_addr, &format!("/sse?token={token}"), &[]).await;
    let admin = crate::support::http_client();
    let response = admin
        .post(node.admin_url("/api/subscribe"))
        .json(&json!({"user": "carol", "room": "team:7"}))
        .send()
        .await
        .expect("subscribe");
    assert!(response.status().is_success(), "{}", response.status());
    let joined = sse.next_of("joined").await.json();
    assert_eq!(
        (&joined["room"], &joined["server"]),
        (&json!("team:7"), &json!(true))
    );
    admin_publish(&node, "team:7", json!("for the team")).await;
    assert_eq!(sse.next_of("message").await.json()["data"], "for the team");

    let response = admin
        .post(node.admin_url("/api/revoke"))
        .json(&json!({"user": "carol", "until": crate::auth::now() + 600}))
        .send()
        .await
        .expect("revoke");
    assert!(response.status().is_success(), "{}", response.status());
    let close = sse.next_of("close").await.json();
    assert_eq!(close["code"], 4403, "{close}");
    assert_eq!(close["reason"], "token revoked", "{close}");
    let target = format!("/sse?token={token}");
    let (status, _, _) = answer(node.ws_addr, &request("GET", &target, &[], "")).await;
    assert_eq!(status, 401, "a revoked token is refused at the request too");
}

#[tokio::test]
async fn a_token_cookie_is_read_when_configured_for_sse_publish_and_websocket() {
    let mut config = jwt_config();
    config.auth.token_cookie = "rc_token".into();
    let node = TestNode::start(config).await;
    let token = hs256(claims("dora"));
    let cookie = format!("theme=dark; rc_token={token}");
    let with_cookie = [("Cookie", cookie.as_str())];
    let mut sse = Sse::open(node.ws_addr, "/sse?room=a", &with_cookie).await;
    assert_eq!(sse.next_of("joined").await.json()["room"], "a");
    let body = r#"{"type":"publish","room":"a","data":"by cookie"}"#;
    let (status, ack) = post_publish(node.ws_addr, body, &with_cookie).await;
    assert_eq!(status, 200, "{ack}");
    let message = sse.next_of("message").await.json();
    assert_eq!(
        (&message["data"], &message["from"]),
        (&json!("by cookie"), &json!("dora"))
    );

    // The WebSocket handshake reads the same cookie.
    let mut ws_request = node.ws_url().into_client_request().expect("request");
    ws_request
        .headers_mut()
        .insert("cookie", cookie.parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request)
        .await
        .expect("a cookie's token opens the WebSocket");
    let welcome = ws.next().await.expect("welcome").expect("frame");
    let welcome: Value = serde_json::from_str(welcome.to_text().expect("text")).expect("json");
    assert_eq!(welcome["user"], "dora");

    // Another cookie name is no token.
    let other = format!("token={token}");
    let request = request("GET", "/sse", &[("Cookie", other.as_str())], "");
    assert_eq!(answer(node.ws_addr, &request).await.0, 401);
}

#[tokio::test]
async fn the_tokens_rooms_and_publish_claims_hold_for_sse_and_post_publish() {
    let node = TestNode::start(jwt_config()).await;
    let token = hs256(json!({
        "sub": "erin", "exp": crate::auth::now() + 3600, "rooms": ["open:*"],
        // "closed" is publishable but not joinable: refused like a member who could not join it
        "publish": ["open:talk", "closed"]
    }));
    let mut sse = Sse::open(
        node.ws_addr,
        &format!("/sse?room=open:a&room=closed&token={token}"),
        &[],
    )
    .await;
    assert_eq!(sse.next_of("joined").await.json()["room"], "open:a");
    let refused = sse.next_of("error").await.json();
    assert_eq!(
        (&refused["code"], &refused["id"]),
        (&json!("forbidden"), &json!("closed")),
        "{refused}"
    );

    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    for (room, status, code) in [("closed", 403, "forbidden"), ("open:a", 403, "forbidden")] {
        let body = json!({"type": "publish", "room": room, "data": 1}).to_string();
        let (got, answer) = post_publish(node.ws_addr, &body, &headers).await;
        assert_eq!(
            (got, &answer["code"]),
            (status, &json!(code)),
            "{room}: {answer}"
        );
    }
    let body = json!({"type": "publish", "room": "open:talk", "data": 1}).to_string();
    let (got, answer) = post_publish(node.ws_addr, &body, &headers).await;
    assert_eq!(got, 200, "{answer}");
}

#[tokio::test]
async fn streams_count_against_the_per_address_and_node_connection_limits() {
    let mut config = test_config();
    config.server.max_connections_per_ip = 1;
    let node = TestNode::start(config).await;
    let held = Sse::open(node.ws_addr, "/sse", &[]).await;
    let (status, _, _) = answer(node.ws_addr, &request("GET", "/sse", &[], "")).await;
    assert_eq!(status, 429, "a second stream from the address");
    let ws = status_of(&node.ws_url(), None).await.err();
    assert_eq!(
        ws,
        Some(429),
        "a WebSocket too: the stream holds the address's slot"
    );
    drop(held);
    // The slot is given back when the stream ends.
    eventually("the slot is free again", || async {
        let (status, _, _) = answer(node.ws_addr, &request("POST", "/publish", &[], "{}")).await;
        status != 429
    })
    .await;

    let mut config = test_config();
    config.server.max_connections = 1;
    let node = TestNode::start(config).await;
    let _held = Sse::open(node.ws_addr, "/sse", &[]).await;
    let (status, _, body) = answer(node.ws_addr, &request("GET", "/sse", &[], "")).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn with_the_connect_hook_the_backend_decides_who_a_stream_is() {
    use crate::support::backend::{Backend, Reply};
    let backend = Backend::start(|seen| match seen.body["headers"]["cookie"].as_str() {
        Some("session=alice") => Reply::json(json!({"user": "alice", "rooms": ["chat:*"]})),
        Some("session=banned") => Reply::status(403),
        _ => Reply::status(401),
    })
    .await;
    let mut config = jwt_config();
    config.hooks.connect_url = backend.url("/connect");
    let node = TestNode::start(config).await;
    let alice = [("Cookie", "session=alice")];
    let (tcp, status, head, buf) = send_head(
        node.ws_addr,
        &request("GET", "/sse?room=chat:a", &alice, ""),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let mut sse = Sse { tcp, buf };
    let welcome = sse.next_of("welcome").await.json();
    assert_eq!(welcome["user"], "alice", "{welcome}");
    assert_eq!(sse.next_of("joined").await.json()["room"], "chat:a");
    for (cookie, want) in [("session=banned", 403), ("session=nobody", 401)] {
        let headers = [("Cookie", cookie)];
        let (status, _, _) = answer(node.ws_addr, &request("GET", "/sse", &headers, "")).await;
        assert_eq!(status, want, "{cookie}");
    }
    let body = r#"{"type":"publish","room":"chat:a","data":"hooked"}"#;
    let (status, ack) = post_publish(node.ws_addr, body, &alice).await;
    assert_eq!(status, 200, "{ack}");
    let message = sse.next_of("message").await.json();
    assert_eq!(
        (&message["data"], &message["from"]),
        (&json!("hooked"), &json!("alice"))
    );
}

/// `server.write_coalesce_ms` holds a stream's writes as a WebSocket's: five messages queued
/// within the window of the `joined` write leave in one segment (counted by the client's
/// kernel), in order; `joined`, a reply, is not held behind a long window.
#[tokio::test]
async fn events_queued_within_the_coalescing_window_leave_in_one_segment() {
    let mut config = test_config();
    config.server.write_coalesce_ms = 10_000;
    let node = TestNode::start(config).await;
    let mut sse = Sse::open(node.ws_addr, "/sse?room=train", &[]).await;
    let joined = tokio::time::timeout(std::time::Duration::from_secs(5), sse.next_of("joined"))
        .await
        .expect("joined is not held");
    assert_eq!(joined.json()["room"], "train");
    let before = tcp_info(&sse.tcp).tcpi_data_segs_in;
    for i in 0..5 {
        admin_publish(&node, "train", json!(i)).await;
    }
    for i in 0..5 {
        assert_eq!(
            sse.next_of("message").await.json()["data"],
            json!(i),
            "in order"
        );
    }
    let segments = tcp_info(&sse.tcp).tcpi_data_segs_in - before;
    assert_eq!(
        segments, 1,
        "five events within the window came as {segments} segments"
    );
}

/// A stream quiet for longer than the window gets the next event at once.
#[tokio::test]
async fn a_lone_event_after_a_quiet_spell_is_not_held() {
    let window = std::time::Duration::from_millis(3_000);
    let mut config = test_config();
    config.server.write_coalesce_ms = window.as_millis() as u64;
    let node = TestNode::start(config).await;
    let mut sse = Sse::open(node.ws_addr, "/sse?room=quiet", &[]).await;
    sse.next_of("joined").await;
    // The precondition, not a race: `joined` was written before it was read here, so once
    // this much time has passed the stream's window is over.
    tokio::time::sleep(window + std::time::Duration::from_millis(100)).await;
    let sent = tokio::time::Instant::now();
    admin_publish(&node, "quiet", json!("hi")).await;
    let event = tokio::time::timeout(window / 2, sse.next_of("message"))
        .await
        .expect("an event after a quiet spell is not held for the window");
    assert_eq!(event.json()["data"], "hi");
    assert!(sent.elapsed() < window / 2, "{:?}", sent.elapsed());
}

/// A node shutting down writes the events a stream's window still holds before its final
/// `close` event (1001), as it does for a WebSocket.
#[tokio::test]
async fn held_events_are_written_before_the_shutdown_close_event() {
    let mut config = test_config();
    config.server.write_coalesce_ms = 10_000;
    let mut node = TestNode::start(config).await;
    let mut sse = Sse::open(node.ws_addr, "/sse?room=closing", &[]).await;
    sse.next_of("joined").await;
    // `joined` opened the window: this one is held.
    admin_publish(&node, "closing", json!("last words")).await;
    node.begin_shutdown();
    assert_eq!(sse.next_of("message").await.json()["data"], "last words");
    assert_eq!(sse.next_of("close").await.json()["code"], 1001);
}
