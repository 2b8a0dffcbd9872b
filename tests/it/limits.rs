//! docs/protocol.md "Limits and what breaking them costs" and the handshake checks of "Connecting":
//! each limit, set small in configuration, and its close code or HTTP status.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let mut config = test_config();
    config.limits.max_message_bytes = 1024;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;
    let fits = json!({"type":"ping","id":"x".repeat(10)}).to_string();
    a.send_text(&fits).await;
    assert_eq!(a.recv_json().await["type"], "pong");
    a.send_text(&"x".repeat(2000)).await;
    a.expect_close(1009).await;
    // Other connections are untouched.
    let mut b = node.connect().await;
    assert_eq!(b.request(json!({"type":"ping"}), "b").await["type"], "pong");
}

/// `server.read_buffer_bytes` and `server.write_buffer_bytes` only size the socket buffers:
/// with tiny ones a frame many times their size still travels whole, both ways.
#[tokio::test]
async fn tiny_socket_buffers_still_carry_large_frames() {
    let mut config = test_config();
    config.server.read_buffer_bytes = 16;
    config.server.write_buffer_bytes = 1;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("big").await;
    b.join("big").await;
    let big = "y".repeat(40_000);
    let ack = a
        .request(json!({"type":"publish","room":"big","data":big}), "p")
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let m = b.recv_type("message").await;
    assert_eq!(m["data"].as_str().map(str::len), Some(40_000));
    assert_eq!(b.request(json!({"type":"ping"}), "b").await["type"], "pong");
}

/// `server.tcp_nodelay = false` (Nagle) changes when segments leave, never what arrives: a
/// burst published back to back reaches a member whole and in order.
#[tokio::test]
async fn without_tcp_nodelay_a_burst_arrives_whole_and_in_order() {
    let mut config = test_config();
    config.server.tcp_nodelay = false;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("burst").await;
    b.join("burst").await;
    for n in 0..20 {
        a.send_json(json!({"type":"publish","room":"burst","data":n,"echo":false}))
            .await;
    }
    for n in 0..20 {
        assert_eq!(b.recv_type("message").await["data"], n);
    }
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let node = TestNode::start(test_config()).await;
    let mut a = node.connect().await;
    let frame = Frame::message(
        Bytes::from_static(b"{\"type\":\"ping\xff\"}"),
        OpCode::Data(Data::Text),
        true,
    );
    a.ws.send(Message::Frame(frame))
        .await
        .expect("send raw frame");
    a.expect_close(1007).await;
}

/// Two well-behaved members of one room: whatever another client does, the one's
/// publications reach the other whole and in order.
async fn calm_room(node: &TestNode) -> (Client, Client) {
    let mut reader = node.connect().await;
    let mut publisher = node.connect().await;
    reader.join("calm").await;
    publisher.join("calm").await;
    (reader, publisher)
}

async fn delivery_intact(reader: &mut Client, publisher: &mut Client) {
    for i in 0..5 {
        let publish = json!({"type":"publish","room":"calm","data":i,"echo":false});
        assert_eq!(publisher.request(publish, "p").await["type"], "ack");
    }
    for i in 0..5 {
        assert_eq!(reader.recv_type("message").await["data"], i);
    }
}

/// A client far over its rate for longer than `limits.rate_limit_window_ms` is closed with
/// 1008; until then it is still served at its limit, between its refusals.
#[tokio::test]
async fn a_sustained_flood_is_closed_with_1008_within_the_window() {
    let mut config = test_config();
    // Refilled in 1 s: a round trip slowed down to 50 ms by a busy machine still floods.
    config.limits.rate_per_sec = 20;
    config.limits.rate_burst = 20;
    config.limits.rate_limit_window_ms = 500;
    config.limits.rate_limit_strikes = 20;
    let node = TestNode::start(config).await;
    let (mut reader, mut publisher) = calm_room(&node).await;
    let mut flooder = node.connect().await;
    // As fast as the round trip allows, far above 20/s, until the node closes it.
    let flooding = async {
        let (mut pongs, mut limited) = (0u32, 0u32);
        loop {
            flooder.send_json(json!({"type":"ping"})).await;
            match flooder.recv().await {
                Received::Json(reply) if reply["type"] == "pong" => pongs += 1,
                Received::Json(reply) if reply["code"] == "rate_limited" => limited += 1,
                Received::Close(code) => return (code, pongs, limited),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let flooding = async {
        tokio::time::timeout(WAIT, flooding)
            .await
            .expect("the flooder is closed in time")
    };
    let ((code, pongs, limited), ()) =
        tokio::join!(flooding, delivery_intact(&mut reader, &mut publisher));
    assert_eq!(code, Some(1008));
    assert!(
        pongs >= 20,
        "the burst, then the limit, accepted meanwhile: {pongs}"
    );
    assert!(limited >= 19, "refused before the close: {limited}");
    delivery_intact(&mut reader, &mut publisher).await;
    eventually("the close is counted", || async {
        let metrics = node.metrics().await;
        metric(&metrics, "roomcast_rate_limited_total") >= 20.0
            && metric(
                &metrics,
                r#"roomcast_disconnects_total{reason="rate_limited"}"#,
            ) == 1.0
    })
    .await;
}

/// One burst well over the burst size (the defaults: 50/s, burst 100) only costs its refused
/// messages: `rate_limited` for each, and the connection stays open.
#[tokio::test]
async fn a_one_off_burst_gets_rate_limited_and_stays_open() {
    let node = TestNode::start(test_config()).await;
    let (mut reader, mut publisher) = calm_room(&node).await;
    let mut burster = node.connect().await;
    for i in 0..300 {
        burster.send_json(json!({"type":"ping","id":i})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..300 {
        let reply = burster.recv_json().await;
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    assert!(pongs >= 100, "the burst is accepted: {pongs}");
    assert!(limited >= 150, "the rest is refused: {limited}");
    delivery_intact(&mut reader, &mut publisher).await;
    // Still open: a WebSocket ping, which the rate limit does not count, is answered.
    burster
        .ws
        .send(Message::Ping(Bytes::from_static(b"open?")))
        .await
        .expect("send ping");
    loop {
        match tokio::time::timeout(WAIT, burster.ws.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) if payload == "open?" => break,
            Ok(Some(Ok(Message::Close(frame)))) => panic!("closed after one burst: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no pong: {other:?}"),
        }
    }
    let metrics = node.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"roomcast_disconnects_total{reason="rate_limited"}"#
        ),
        0.0
    );
}

#[tokio::test]
async fn slow_consumer_is_closed_with_1013_while_readers_get_everything() {
    let mut config = test_config();
    config.limits.rate_per_sec = 1_000_000;
    config.limits.rate_burst = 1_000_000;
    config.limits.outbox_messages = 8;
    // Long enough that the close frame is still queued when the slow client starts reading.
    config.limits.close_timeout_ms = 60_000;
    let node = TestNode::start(config).await;
    let mut publisher = node.connect().await;
    let mut reader = node.connect().await;
    let mut sleeper = node.connect().await;
    reader.join("flood").await;
    sleeper.join("flood").await;
    publisher.join("flood").await;

    // Big messages fill the socket buffers quickly; then the sleeper's outbox fills.
    let payload = "x".repeat(32 * 1024);
    let mut sent = 0u64;
    let reading = async {
        let mut next = 0u64;
        loop {
            let m = reader.recv_type("message").await;
            assert_eq!(m["data"]["seq"], next, "reader gets every message in order");
            next += 1;
            if m["data"]["last"] == true {
                return next;
            }
        }
    };
    let publishing = async {
        let mut closed = false;
        while !closed {
            publisher
                .request(
                    json!({"type":"publish","room":"flood","echo":false,"data":{"seq":sent,"pad":payload}}),
                    "p",
                )
                .await;
            sent += 1;
            // Counted the moment the sleeper's outbox overflows (the close itself waits for
            // its close frame to be written).
            closed = metric(
                &node.metrics().await,
                r#"roomcast_messages_dropped_total{reason="slow_consumer"}"#,
            ) >= 1.0;
            assert!(sent < 10_000, "the sleeper was never closed");
        }
        publisher
            .request(
                json!({"type":"publish","room":"flood","echo":false,"data":{"seq":sent,"last":true}}),
                "p",
            )
            .await;
        sent += 1;
    };
    let (received, ()) = tokio::join!(reading, publishing);
    assert_eq!(received, sent);
    sleeper.expect_close(1013).await;
    eventually("the slow-consumer close is counted", || async {
        metric(&node.metrics().await, "roomcast_slow_consumer_closes_total") == 1.0
    })
    .await;
}

#[tokio::test]
async fn idle_client_is_closed_with_1001() {
    let mut config = test_config();
    config.limits.idle_timeout_ms = 300;
    config.limits.ping_interval_ms = 600_000;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;
    a.expect_close(1001).await;
    eventually("the idle close is counted", || async {
        metric(
            &node.metrics().await,
            r#"roomcast_disconnects_total{reason="idle"}"#,
        ) == 1.0
    })
    .await;
}

#[tokio::test]
async fn server_pings_and_the_pongs_keep_a_quiet_client_alive() {
    let mut config = test_config();
    config.limits.idle_timeout_ms = 400;
    config.limits.ping_interval_ms = 100;
    let node = TestNode::start(config).await;
    let mut a = node.connect().await;
    assert_eq!(a.welcome["heartbeat_ms"], 100);
    // Six pings span longer than the idle timeout; tungstenite answers each with a pong.
    let mut pings = 0;
    while pings < 6 {
        match tokio::time::timeout(WAIT, a.ws.next())
            .await
            .expect("frame")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(f))) => panic!("closed while answering pings: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
    assert_eq!(
        a.request(json!({"type":"ping"}), "alive").await["type"],
        "pong"
    );
}

async fn handshake_status(url: &str, origin: Option<&str>) -> Result<(), u16> {
    let mut request = url.into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("header"));
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
    {
        Ok(_) => Ok(()),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected handshake error {other}"),
    }
}

#[tokio::test]
async fn connection_cap_answers_503() {
    let mut config = test_config();
    config.server.max_connections = 2;
    let node = TestNode::start(config).await;
    let a = node.connect().await;
    let _b = node.connect().await;
    assert_eq!(handshake_status(&node.ws_url(), None).await, Err(503));
    a.close().await;
    // The slot comes back once the first client is gone.
    eventually("a slot frees up", || async {
        handshake_status(&node.ws_url(), None).await.is_ok()
    })
    .await;
    let metrics = node.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"roomcast_connections_refused_total{reason="capacity"}"#
        ) >= 1.0
    );
}

#[tokio::test]
async fn handshakes_too_fast_from_one_address_get_429() {
    let mut config = test_config();
    config.server.connect_rate_per_ip = 1; // burst 2
    let node = TestNode::start(config).await;
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(handshake_status(&node.ws_url(), None).await);
    }
    assert_eq!(results[0], Ok(()));
    assert!(results.contains(&Err(429)), "{results:?}");
}

/// With `server.allowed_origins` set, a foreign `Origin` gets 403, and a request without one
/// (not a browser: websocat, an app, another server) is let through.
#[tokio::test]
async fn origins_outside_the_list_get_403_and_no_origin_is_let_through() {
    let mut config = test_config();
    config.server.allowed_origins = vec!["https://app.example".into()];
    let node = TestNode::start(config).await;
    assert_eq!(
        handshake_status(&node.ws_url(), Some("https://app.example")).await,
        Ok(())
    );
    assert_eq!(
        handshake_status(&node.ws_url(), Some("https://evil.example")).await,
        Err(403)
    );
    assert_eq!(handshake_status(&node.ws_url(), None).await, Ok(()));
}

/// `server.require_origin`: browsers only, with or without a list.
#[tokio::test]
async fn require_origin_refuses_a_request_without_origin_with_403() {
    for allowed in [vec![], vec!["https://app.example".to_owned()]] {
        let mut config = test_config();
        config.server.allowed_origins = allowed.clone();
        config.server.require_origin = true;
        let node = TestNode::start(config).await;
        assert_eq!(
            handshake_status(&node.ws_url(), None).await,
            Err(403),
            "{allowed:?}"
        );
        assert_eq!(
            handshake_status(&node.ws_url(), Some("https://app.example")).await,
            Ok(()),
            "{allowed:?}"
        );
        eventually("the refusal is counted", || async {
            let metrics = node.metrics().await;
            metric(
                &metrics,
                r#"roomcast_connections_refused_total{reason="origin"}"#,
            ) == 1.0
        })
        .await;
    }
}

#[tokio::test]
async fn other_paths_get_404() {
    let node = TestNode::start(test_config()).await;
    let url = format!("ws://{}/elsewhere", node.ws_addr);
    assert_eq!(handshake_status(&url, None).await, Err(404));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped() {
    let mut config = test_config();
    config.server.handshake_timeout_ms = 200;
    let node = TestNode::start(config).await;
    let mut tcp = tokio::net::TcpStream::connect(node.ws_addr)
        .await
        .expect("tcp");
    // Half a request line, then silence.
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /ws HTTP/1.1\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("server drops the socket in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = node.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"roomcast_connections_refused_total{reason="handshake_timeout"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_readyz_turns_503() {
    let mut config = test_config();
    config.server.shutdown_grace_ms = 5_000;
    let mut node = TestNode::start(config).await;
    let mut a = node.connect().await;
    let ready = crate::support::http_client()
        .get(node.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    node.begin_shutdown();
    a.expect_close(1001).await;
    node.stop().await.expect("clean stop");
}

#[tokio::test]
async fn limits_never_take_down_other_connections() {
    let mut config = test_config();
    config.limits.max_message_bytes = 512;
    let node = TestNode::start(config).await;
    let mut good = node.connect().await;
    good.join("calm").await;
    for _ in 0..5 {
        let mut bad = node.connect().await;
        bad.send_text("{\"type\":").await;
        assert_eq!(bad.recv_json().await["code"], "bad_request");
        bad.send_text(&"y".repeat(4096)).await;
        bad.expect_close(1009).await;
    }
    let mut publisher = node.connect().await;
    publisher.join("calm").await;
    publisher
        .request(
            json!({"type":"publish","room":"calm","data":"still here"}),
            "p",
        )
        .await;
    assert_eq!(good.recv_type("message").await["data"], "still here");
    let _ = Duration::ZERO;
}

async fn handshake_from(url: &str, forwarded_for: &str) -> Result<Ws, u16> {
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("x-forwarded-for", forwarded_for.parse().expect("header"));
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected handshake error {other}"),
    }
}

#[tokio::test]
async fn open_connections_per_address_are_capped_with_429() {
    let mut config = test_config();
    config.server.max_connections_per_ip = 2;
    let node = TestNode::start(config).await;
    let a = node.connect().await;
    let _b = node.connect().await;
    assert_eq!(handshake_status(&node.ws_url(), None).await, Err(429));
    a.close().await;
    eventually("the address gets its slot back", || async {
        handshake_status(&node.ws_url(), None).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn the_client_address_header_is_believed_only_from_trusted_proxies() {
    // Trusted: each forwarded client has its own budget of 1 open connection.
    let mut config = test_config();
    config.server.max_connections_per_ip = 1;
    config.server.trusted_proxies = vec!["127.0.0.1".into()];
    let node = TestNode::start(config).await;
    let mut held = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "198.51.100.7, 203.0.113.3"] {
        held.push(handshake_from(&node.ws_url(), client).await.expect(client));
    }
    // The rightmost untrusted entry counts: a client cannot dodge the cap by prepending.
    assert_eq!(
        handshake_from(&node.ws_url(), "10.9.9.9, 203.0.113.1")
            .await
            .err(),
        Some(429)
    );

    // Untrusted peer: the header is ignored, so all share 127.0.0.1's single slot.
    let mut config = test_config();
    config.server.max_connections_per_ip = 1;
    let node = TestNode::start(config).await;
    let _first = handshake_from(&node.ws_url(), "203.0.113.1")
        .await
        .expect("first");
    assert_eq!(
        handshake_from(&node.ws_url(), "203.0.113.2").await.err(),
        Some(429)
    );
}

#[tokio::test]
async fn a_flood_of_malformed_frames_leaves_other_clients_delivery_intact() {
    let mut config = test_config();
    config.limits.rate_per_sec = 1_000;
    config.limits.rate_burst = 1_000;
    let node = TestNode::start(config).await;
    let mut reader = node.connect().await;
    let mut publisher = node.connect().await;
    reader.join("steady").await;
    publisher.join("steady").await;
    let mut flooder = node.connect().await;
    let flood = async {
        for i in 0..3_000u32 {
            let garbage = match i % 4 {
                0 => "{not json".to_owned(),
                1 => json!({"type":"publish","room":"steady"}).to_string(),
                2 => json!({"type":"join","room":"bad room!"}).to_string(),
                _ => "x".repeat(200),
            };
            if flooder
                .ws
                .send(Message::Text(garbage.into()))
                .await
                .is_err()
            {
                break; // closed for its behaviour: fine
            }
        }
    };
    let traffic = async {
        for i in 0..300u32 {
            publisher
                .send_json(json!({"type":"publish","room":"steady","data":i,"echo":false}))
                .await;
        }
        for i in 0..300u32 {
            assert_eq!(reader.recv_type("message").await["data"], i);
        }
    };
    tokio::join!(flood, traffic);
}

/// `server.listen_backlog` reaches the kernel: a listening socket reports its backlog in
/// TCP_INFO's `tcpi_sacked` (Linux), capped by `net.core.somaxconn`.
#[tokio::test]
async fn the_websocket_listener_gets_the_configured_backlog() {
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    for backlog in [7, 777] {
        let mut config = test_config();
        config.server.listen = "127.0.0.1:0".into();
        config.admin.listen = "127.0.0.1:0".into();
        config.server.listen_backlog = backlog;
        let listeners = roomcast::Listeners::bind(&config).await.expect("bind");
        let info = tcp_info(&listeners.ws);
        assert_eq!(
            info.tcpi_sacked,
            backlog.min(somaxconn),
            "backlog {backlog}"
        );
    }
}
