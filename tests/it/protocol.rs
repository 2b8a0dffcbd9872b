//! docs/protocol.md "Frames", "Client → server", "Server → client" and "Ordering and delivery",
//! checked against a real node over real WebSockets.

use crate::support::*;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn node() -> TestNode {
    TestNode::start(test_config()).await
}

#[tokio::test]
async fn welcome_comes_first_with_its_fields() {
    let node = node().await;
    let a = node.connect().await;
    let b = node.connect().await;
    let w = &a.welcome;
    assert_eq!(w["node"], "test-node");
    assert_eq!(w["user"], Value::Null);
    assert_eq!(w["heartbeat_ms"], 25_000);
    assert!(w["conn_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_ne!(w["conn_id"], b.welcome["conn_id"], "conn ids are unique");
}

#[tokio::test]
async fn join_leave_publish_and_their_replies_with_and_without_id() {
    let node = node().await;
    let mut a = node.connect().await;

    a.send_json(json!({"type":"join","room":"r1"})).await;
    assert_eq!(a.recv_json().await, json!({"type":"joined","room":"r1"}));
    a.send_json(json!({"type":"join","room":"r2","id":7})).await;
    assert_eq!(
        a.recv_json().await,
        json!({"type":"joined","room":"r2","id":7})
    );

    a.send_json(json!({"type":"publish","room":"r1","data":[1],"echo":false,"id":"p"}))
        .await;
    let ack = a.recv_json().await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["room"], "r1");
    assert_eq!(ack["id"], "p");
    assert!(ack["msg_id"].as_str().is_some_and(|s| !s.is_empty()));
    a.send_json(json!({"type":"publish","room":"r1","data":[2],"echo":false}))
        .await;
    let ack2 = a.recv_json().await;
    assert_eq!(ack2["type"], "ack");
    assert!(ack2.get("id").is_none());
    assert_ne!(ack["msg_id"], ack2["msg_id"]);

    a.send_json(json!({"type":"leave","room":"r1","id":"l"}))
        .await;
    assert_eq!(
        a.recv_json().await,
        json!({"type":"left","room":"r1","id":"l"})
    );
    a.send_json(json!({"type":"leave","room":"r2"})).await;
    assert_eq!(a.recv_json().await, json!({"type":"left","room":"r2"}));
}

#[tokio::test]
async fn messages_reach_members_with_room_id_data_from_ts() {
    let node = node().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    let mut outsider = node.connect().await;
    a.join("news").await;
    b.join("news").await;
    outsider.join("other").await;
    let before = now_ms();
    let ack = a
        .request(
            json!({"type":"publish","room":"news","data":{"headline":"hi","n":[1,2.5,null]}}),
            "p1",
        )
        .await;
    let m = b.recv_json().await;
    assert_eq!(m["type"], "message");
    assert_eq!(m["room"], "news");
    assert_eq!(m["data"], json!({"headline":"hi","n":[1,2.5,null]}));
    assert_eq!(
        m["from"], a.welcome["conn_id"],
        "from is the sender's conn_id"
    );
    assert_eq!(m["id"], ack["msg_id"], "the ack names the message id");
    let ts = m["ts"].as_u64().expect("ts");
    assert!(
        ts >= before.saturating_sub(5) && ts <= now_ms() + 5,
        "ts is now"
    );

    // The outsider is in another room: the next thing it gets is its own reply.
    let pong = outsider.request(json!({"type":"ping"}), "o").await;
    assert_eq!(pong, json!({"type":"pong","id":"o"}));
}

#[tokio::test]
async fn echo_defaults_to_true_and_false_skips_the_sender() {
    let node = node().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("e").await;
    b.join("e").await;
    a.request(
        json!({"type":"publish","room":"e","data":"quiet","echo":false}),
        "1",
    )
    .await;
    a.request(json!({"type":"publish","room":"e","data":"loud"}), "2")
        .await;
    // The sender's first message is "loud": "quiet" was not echoed.
    assert_eq!(a.recv_type("message").await["data"], "loud");
    assert_eq!(b.recv_type("message").await["data"], "quiet");
    assert_eq!(b.recv_type("message").await["data"], "loud");
}

#[tokio::test]
async fn json_ping_text_ping_and_websocket_ping() {
    let node = node().await;
    let mut a = node.connect().await;
    a.send_json(json!({"type":"ping"})).await;
    assert_eq!(a.recv_json().await, json!({"type":"pong"}));
    a.send_json(json!({"type":"ping","id":12})).await;
    assert_eq!(a.recv_json().await, json!({"type":"pong","id":12}));
    a.send_text("ping").await;
    match a.recv().await {
        Received::Text(t) => assert_eq!(t, "pong"),
        other => panic!("expected text pong, got {other:?}"),
    }
    a.ws.send(Message::Ping(Bytes::from_static(b"hb")))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match futures_util::StreamExt::next(&mut a.ws).await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"hb");
}

/// Each error code the core can produce, with and without `id`.
#[tokio::test]
async fn every_error_code_with_and_without_id() {
    let mut config = test_config();
    config.limits.max_rooms_per_connection = 1;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;

    let cases: Vec<(Value, &str)> = vec![
        (json!({"type":"fly"}), "bad_request"),
        (json!({"room":"x"}), "bad_request"),
        (json!({"type":"join"}), "bad_request"),
        (json!({"type":"join","room":7}), "bad_request"),
        (json!({"type":"publish","room":"x"}), "bad_request"),
        (
            json!({"type":"publish","room":"x","data":1,"echo":"yes"}),
            "bad_request",
        ),
        (json!({"type":"join","room":"has space"}), "invalid_room"),
        (json!({"type":"join","room":""}), "invalid_room"),
        (
            json!({"type":"join","room":"r".repeat(129)}),
            "invalid_room",
        ),
        (json!({"type":"join","room":"user:42"}), "forbidden"),
        (
            json!({"type":"publish","room":"nojoin","data":1}),
            "not_joined",
        ),
        (json!({"type":"leave","room":"nojoin"}), "not_joined"),
    ];
    for (i, (command, code)) in cases.iter().enumerate() {
        a.send_json(command.clone()).await;
        let err = a.recv_json().await;
        assert_eq!(err["type"], "error", "{command}");
        assert_eq!(err["code"], *code, "{command}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(err.get("id").is_none(), "{command}");

        let mut with_id = command.clone();
        with_id["id"] = json!(format!("e{i}"));
        a.send_json(with_id).await;
        let err = a.recv_json().await;
        assert_eq!(err["code"], *code, "{command}");
        assert_eq!(err["id"], json!(format!("e{i}")), "{command}");
    }

    a.join("first").await;
    let err = a
        .request(json!({"type":"join","room":"second"}), "tm")
        .await;
    assert_eq!(err["code"], "too_many_rooms");
    a.send_json(json!({"type":"join","room":"second"})).await;
    let err = a.recv_json().await;
    assert_eq!(err["code"], "too_many_rooms");
    assert!(err.get("id").is_none());
    // Joining a room one is already in is not a new room.
    assert_eq!(a.join("first").await["type"], "joined");

    // Not JSON, not an object, and binary frames: bad_request without id.
    for text in ["{nope", "[1,2]", "42", "\"join\""] {
        a.send_text(text).await;
        let err = a.recv_json().await;
        assert_eq!(err["code"], "bad_request", "{text}");
        assert!(err.get("id").is_none());
    }
    a.ws.send(Message::Binary(Bytes::from_static(b"\x01\x02")))
        .await
        .expect("binary");
    assert_eq!(a.recv_json().await["code"], "bad_request");

    // An invalid id cannot be copied back.
    a.send_json(json!({"type":"ping","id":"x".repeat(65)}))
        .await;
    let err = a.recv_json().await;
    assert_eq!(err["code"], "bad_request");
    assert!(err.get("id").is_none());

    // After all that the connection is still open and well.
    assert_eq!(
        a.request(json!({"type":"ping"}), "alive").await["type"],
        "pong"
    );
}

#[tokio::test]
async fn every_command_gets_one_reply_in_order() {
    let node = node().await;
    let mut a = node.connect().await;
    let commands = [
        json!({"type":"join","room":"o","id":0}),
        json!({"type":"publish","room":"o","data":1,"echo":false,"id":1}),
        json!({"type":"bogus","id":2}),
        json!({"type":"ping","id":3}),
        json!({"type":"leave","room":"zz","id":4}),
        json!({"type":"join","room":"o2","id":5}),
        json!({"type":"leave","room":"o","id":6}),
        json!({"type":"publish","room":"o","data":1,"id":7}),
    ];
    for c in &commands {
        a.send_json(c.clone()).await;
    }
    let expected = [
        "joined", "ack", "error", "pong", "error", "joined", "left", "error",
    ];
    for (i, kind) in expected.iter().enumerate() {
        let reply = a.recv_json().await;
        assert_eq!(reply["id"], i, "reply {i} in order: {reply}");
        assert_eq!(reply["type"], *kind, "{reply}");
    }
}

#[tokio::test]
async fn one_publishers_messages_arrive_in_order() {
    let mut config = test_config();
    config.limits.rate_per_sec = 1_000_000;
    config.limits.rate_burst = 1_000_000;
    let node = TestNode::start(config).await;
    let mut publisher = node.connect().await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let mut m = node.connect().await;
        m.join("seq").await;
        members.push(m);
    }
    publisher.join("seq").await;
    const N: u64 = 3000;
    let send = async {
        for i in 0..N {
            publisher
                .send_json(json!({"type":"publish","room":"seq","data":i,"echo":false}))
                .await;
        }
        let mut acks = 0;
        while acks < N {
            if publisher.recv_json().await["type"] == "ack" {
                acks += 1;
            }
        }
    };
    let receive = futures_util::future::join_all(members.iter_mut().map(|m| async move {
        for i in 0..N {
            assert_eq!(m.recv_type("message").await["data"], i);
        }
    }));
    tokio::join!(send, receive);
}

#[tokio::test]
async fn join_with_since_reports_not_recovered_without_history() {
    let node = node().await;
    let mut a = node.connect().await;
    let reply = a
        .request(json!({"type":"join","room":"h","since":"abc-1"}), "s")
        .await;
    assert_eq!(
        reply,
        json!({"type":"joined","room":"h","id":"s","recovered":false})
    );
}

#[tokio::test]
async fn leaving_stops_delivery() {
    let node = node().await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("l").await;
    b.join("l").await;
    b.request(json!({"type":"leave","room":"l"}), "bye").await;
    a.request(json!({"type":"publish","room":"l","data":"after"}), "p")
        .await;
    // b's next frame is the reply to this ping, not the message.
    assert_eq!(b.request(json!({"type":"ping"}), "q").await["type"], "pong");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The listener corks a new socket until the welcome is written, so the 101 response and the
/// welcome reach the client as one TCP segment (TCP_INFO's data segment count, Linux).
#[tokio::test]
async fn the_upgrade_response_and_the_welcome_arrive_in_one_segment() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let node = node().await;
    let mut tcp = tokio::net::TcpStream::connect(node.ws_addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.ws_addr
    );
    tcp.write_all(request.as_bytes()).await.expect("request");

    // Read until the response head and one whole (unmasked, short) text frame are in.
    let mut got = Vec::new();
    let welcome = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
            let Some(head) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let frame = &got[head + 4..];
            if frame.len() < 4 {
                continue;
            }
            assert_eq!(frame[0], 0x81, "a final text frame");
            let (len, start) = match frame[1] {
                126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
                n if n < 126 => (usize::from(n), 2),
                n => panic!("unexpected length byte {n}"),
            };
            if frame.len() >= start + len {
                break serde_json::from_slice::<Value>(&frame[start..start + len])
                    .expect("welcome json");
            }
        }
    })
    .await
    .expect("101 and welcome within 5 s");
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(welcome["type"], "welcome");

    let info = tcp_info(&tcp);
    assert_eq!(
        info.tcpi_data_segs_in, 1,
        "the 101 response and the welcome came as {} segments",
        info.tcpi_data_segs_in
    );
}
