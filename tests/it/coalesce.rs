//! Adaptive write coalescing (`server.write_coalesce_ms`): frames queued within the window of
//! the last flush leave in one segment, a connection that has been quiet flushes at once, the
//! replies to a client's own commands are never held, and held frames leave when the window
//! ends. Segments are counted by the client's kernel (`TCP_INFO`), never inferred from timing;
//! the only timing in these tests is an upper bound on a wait, far below the window it tells
//! apart.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

fn config(window_ms: u64) -> roomcast::config::Config {
    let mut config = test_config();
    config.server.write_coalesce_ms = window_ms;
    config
}

/// Data segments the client's socket has received so far.
fn data_segments_in(client: &Client) -> u32 {
    match client.ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp_info(tcp).tcpi_data_segs_in,
        _ => panic!("a plain TCP client"),
    }
}

async fn admin_post(node: &TestNode, path: &str, body: Value) {
    let status = crate::support::http_client()
        .post(node.admin_url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("admin request")
        .status();
    assert_eq!(status.as_u16(), 202, "{path}");
}

/// Five messages published while the window of the `joined` flush is open arrive in order,
/// in one segment, and only because the window ends (nothing else flushes them).
#[tokio::test]
async fn frames_queued_within_the_window_leave_in_one_segment() {
    // Long enough that five local publishes surely land within it.
    let node = TestNode::start(config(3_000)).await;
    let mut member = node.connect().await;
    member.join("train").await;
    let before = data_segments_in(&member);
    for i in 0..5 {
        admin_post(&node, "/api/publish", json!({"room": "train", "data": i})).await;
    }
    for i in 0..5 {
        let m = member.recv_type("message").await;
        assert_eq!(m["data"], json!(i), "in order");
    }
    let segments = data_segments_in(&member) - before;
    assert_eq!(
        segments, 1,
        "five frames queued within the window came as {segments} segments"
    );
}

/// A connection that flushed, then stayed quiet longer than the window, sends the next frame
/// at once: it arrives far sooner than the window.
#[tokio::test]
async fn a_lone_message_after_a_quiet_spell_is_not_delayed() {
    let window = Duration::from_millis(3_000);
    let node = TestNode::start(config(window.as_millis() as u64)).await;
    let mut member = node.connect().await;
    member.join("quiet").await;
    // The precondition, not a race: the `joined` flush was written before it was read here,
    // so once this much time has passed the node's window is over.
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let sent = Instant::now();
    admin_post(
        &node,
        "/api/publish",
        json!({"room": "quiet", "data": "hi"}),
    )
    .await;
    let m = timeout(window / 2, member.recv_type("message"))
        .await
        .expect("a message after a quiet spell is not held for the window");
    assert_eq!(m["data"], "hi");
    assert!(sent.elapsed() < window / 2, "{:?}", sent.elapsed());
}

/// With a window far longer than any wait here, every reply comes at once, together with the
/// frames queued before it (in order), even right after a flush.
#[tokio::test]
async fn replies_to_the_clients_own_commands_are_never_held() {
    let node = TestNode::start(config(10_000)).await;
    let mut member = node.connect().await;
    // `joined` is a reply: not held, and its flush opens the window for what follows.
    timeout(Duration::from_secs(5), member.join("replies"))
        .await
        .expect("joined is not held");
    admin_post(
        &node,
        "/api/publish",
        json!({"room": "replies", "data": "queued"}),
    )
    .await;
    let within = Duration::from_secs(5);
    let pong = timeout(within, member.request(json!({"type": "ping"}), "p1"))
        .await
        .expect("pong is not held");
    assert_eq!(pong["type"], "pong");
    let ack = timeout(
        within,
        member.request(
            json!({"type": "publish", "room": "replies", "data": 1, "echo": false}),
            "pub",
        ),
    )
    .await
    .expect("publish ack is not held");
    assert_eq!(ack["type"], "ack", "{ack}");
    let error = timeout(within, member.request(json!({"type": "nope"}), "bad"))
        .await
        .expect("error is not held");
    assert_eq!(error["type"], "error", "{error}");
    member.send_text("ping").await;
    let plain = timeout(within, member.recv())
        .await
        .expect("plain pong is not held");
    assert!(
        matches!(&plain, Received::Text(t) if t == "pong"),
        "{plain:?}"
    );
}

/// The frame queued before a reply leaves with it, ahead of it.
#[tokio::test]
async fn a_reply_takes_the_held_frames_along_in_order() {
    let node = TestNode::start(config(10_000)).await;
    let mut member = node.connect().await;
    member.join("order").await;
    admin_post(
        &node,
        "/api/publish",
        json!({"room": "order", "data": "first"}),
    )
    .await;
    member
        .send_json(json!({"type": "ping", "id": "after"}))
        .await;
    let within = Duration::from_secs(5);
    let first = timeout(within, member.recv_json())
        .await
        .expect("the held message leaves with the reply");
    assert_eq!(first["type"], "message", "{first}");
    assert_eq!(first["data"], "first");
    let pong = timeout(within, member.recv_json()).await.expect("pong");
    assert_eq!(pong["id"], "after");
}

/// Under a steady burst every frame arrives, in order: the window only delays, never keeps.
#[tokio::test]
async fn held_frames_leave_when_the_window_ends_under_load() {
    let mut config = config(20);
    config.limits.rate_per_sec = 100_000;
    config.limits.rate_burst = 100_000;
    let node = TestNode::start(config).await;
    let mut member = node.connect().await;
    member.join("load").await;
    let mut publisher = node.connect().await;
    publisher.join("load").await;
    const N: usize = 300;
    for i in 0..N {
        let publish =
            json!({"type": "publish", "room": "load", "data": i, "echo": false}).to_string();
        publisher
            .ws
            .feed(Message::Text(publish.into()))
            .await
            .expect("feed");
        if i % 50 == 49 {
            publisher.ws.flush().await.expect("flush");
        }
    }
    publisher.ws.flush().await.expect("flush");
    for i in 0..N {
        let m = member.recv_type("message").await;
        assert_eq!(m["data"], json!(i), "in order");
    }
}

/// A node shutting down writes what a connection's window still holds before its 1001: a
/// frame queued within a long window is not lost to the close.
#[tokio::test]
async fn held_frames_are_written_before_the_shutdown_close() {
    let mut node = TestNode::start(config(10_000)).await;
    let mut member = node.connect().await;
    member.join("closing").await;
    // `joined` opened the window: this one is held.
    admin_post(
        &node,
        "/api/publish",
        json!({"room": "closing", "data": "last words"}),
    )
    .await;
    node.begin_shutdown();
    let m = member.recv_type("message").await;
    assert_eq!(m["data"], "last words");
    member.expect_close(1001).await;
}

/// A client that closes gets the close echoed and nothing after it, even with a frame held in
/// its window (RFC 6455 §5.5.1: no data after a close frame): the held frame is dropped with
/// the connection the client ended.
#[tokio::test]
async fn nothing_follows_the_close_echoed_to_a_client_that_closed() {
    let node = TestNode::start(config(10_000)).await;
    let mut member = node.connect().await;
    member.join("leaving").await;
    // `joined` opened the window: this one is held.
    admin_post(
        &node,
        "/api/publish",
        json!({"room": "leaving", "data": "too late"}),
    )
    .await;
    member.ws.close(None).await.expect("send close");
    let mut after_close = Vec::new();
    let mut echoed = false;
    let ended = timeout(WAIT, async {
        while let Some(item) = member.ws.next().await {
            match item {
                Ok(Message::Close(_)) => echoed = true,
                Ok(other) if echoed => after_close.push(format!("{other:?}")),
                Ok(_) => {}
                Err(err) => {
                    after_close.push(format!("{err:?}"));
                    break;
                }
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server ends the connection in time");
    assert!(echoed, "the close is echoed");
    assert!(after_close.is_empty(), "after the close: {after_close:?}");
}
