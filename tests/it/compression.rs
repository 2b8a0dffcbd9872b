//! permessage-deflate (`server.compression`, `server.compression_min_bytes`): the offer's
//! answer, frames compressed once per node for every member that negotiated it, compressed
//! client messages understood, a decompression bomb closed with 1009, and nothing of it with
//! compression off. The client here is written from RFC 6455/7692 by hand (tungstenite has no
//! deflate), so it checks the wire itself; browsers and Python's `websockets` are the e2e's.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::support::*;

const SYNC_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fn compression_config() -> roomcast::config::Config {
    let mut config = test_config();
    config.server.compression = true;
    config
}

/// A frame the client received.
#[derive(Debug)]
enum Got {
    /// A text message, and whether it came compressed.
    Text {
        text: String,
        compressed: bool,
    },
    Close(u16),
}

/// A raw WebSocket client that can offer permessage-deflate.
struct RawClient {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    extensions: Option<String>,
}

impl RawClient {
    async fn connect(node: &TestNode, offer: Option<&str>) -> RawClient {
        let mut tcp = TcpStream::connect(node.ws_addr).await.expect("connect");
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            node.ws_addr
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await.expect("upgrade");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("response in time")
                .expect("read");
            assert!(n > 0, "the server answers the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        buf.drain(..head_end);
        let mut client = RawClient {
            tcp,
            buf,
            extensions,
        };
        match client.recv().await {
            Got::Text { text, .. } => assert!(text.contains(r#""type":"welcome""#), "{text}"),
            other => panic!("expected the welcome, got {other:?}"),
        }
        client
    }

    async fn fill(&mut self, want: usize) -> bool {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap_or(0);
            if n == 0 {
                return false;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        true
    }

    /// The next text or close frame (pings are skipped); server frames are never fragmented.
    async fn recv(&mut self) -> Got {
        loop {
            assert!(self.fill(2).await, "socket ended");
            let rsv1 = self.buf[0] & 0x40 != 0;
            let opcode = self.buf[0] & 0x0f;
            assert!(self.buf[0] & 0x80 != 0, "the server does not fragment");
            assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
            let (len, at) = match self.buf[1] & 0x7f {
                126 => {
                    assert!(self.fill(4).await);
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 => {
                    assert!(self.fill(10).await);
                    let len = u64::from_be_bytes(self.buf[2..10].try_into().unwrap());
                    (len as usize, 10)
                }
                len => (len as usize, 2),
            };
            assert!(self.fill(at + len).await, "whole frame");
            let payload: Vec<u8> = self.buf[at..at + len].to_vec();
            self.buf.drain(..at + len);
            match opcode {
                0x1 => {
                    let bytes = if rsv1 { inflate(&payload) } else { payload };
                    let text = String::from_utf8(bytes).expect("UTF-8");
                    return Got::Text {
                        text,
                        compressed: rsv1,
                    };
                }
                0x8 => {
                    assert!(!rsv1, "control frames are never compressed");
                    return Got::Close(u16::from_be_bytes([payload[0], payload[1]]));
                }
                0x9 | 0xa => continue,
                other => panic!("unexpected opcode {other}"),
            }
        }
    }

    async fn recv_json(&mut self, kind: &str) -> (Value, String, bool) {
        loop {
            match self.recv().await {
                Got::Text { text, compressed } => {
                    let value: Value = serde_json::from_str(&text).expect("JSON");
                    if value["type"] == kind {
                        return (value, text, compressed);
                    }
                }
                Got::Close(code) => panic!("closed with {code} waiting for {kind}"),
            }
        }
    }

    /// Send one text message, compressed (RSV1, as a client that negotiated it) or not.
    async fn send(&mut self, text: &str, compressed: bool) {
        let payload = if compressed {
            deflate(text.as_bytes())
        } else {
            text.as_bytes().to_vec()
        };
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![0x80 | if compressed { 0x40 } else { 0 } | 0x1];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.expect("send");
    }
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(bytes.len() + 1024);
    compressor
        .compress_vec(bytes, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&SYNC_TAIL));
    out.truncate(out.len() - 4);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&SYNC_TAIL);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    inflater
        .decompress_vec(&data, &mut out, FlushDecompress::Sync)
        .expect("valid DEFLATE from the server");
    assert_eq!(inflater.total_in() as usize, data.len(), "all consumed");
    out
}

/// A JSON value of about `len` bytes, as chat traffic looks (repeated field names).
fn chat_data(len: usize) -> Value {
    let mut lines = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < len {
        let line = json!({"user": format!("user-{}", i % 7), "text": format!("message number {i} in the thread"), "n": i});
        size += line.to_string().len() + 1;
        lines.push(line);
        i += 1;
    }
    Value::Array(lines)
}

async fn admin_publish(node: &TestNode, room: &str, data: &Value) {
    let status = http_client()
        .post(node.admin_url("/api/publish"))
        .header("content-type", "application/json")
        .body(json!({"room": room, "data": data}).to_string())
        .send()
        .await
        .expect("admin request")
        .status();
    assert_eq!(status.as_u16(), 202);
}

async fn raw_join(client: &mut RawClient, room: &str) {
    let join = json!({"type": "join", "room": room, "id": "j"}).to_string();
    client.send(&join, false).await;
    client.recv_json("joined").await;
}

async fn counter(node: &TestNode, name: &str) -> f64 {
    metric(&node.metrics().await, name)
}

/// The answer names no context takeover either way; a message over
/// `server.compression_min_bytes` is compressed once for all three members that negotiated
/// it, and reaches them as the same text a member without compression gets; one under it is
/// sent as it is.
#[tokio::test]
async fn members_that_negotiated_get_large_frames_compressed_once_per_node() {
    let node = TestNode::start(compression_config()).await;
    let mut deflating = Vec::new();
    for _ in 0..3 {
        let mut client =
            RawClient::connect(&node, Some("permessage-deflate; client_max_window_bits")).await;
        assert_eq!(client.extensions.as_deref(), Some(ANSWER));
        raw_join(&mut client, "news").await;
        deflating.push(client);
    }
    let mut plain = node.connect().await;
    plain.join("news").await;

    let data = chat_data(4_000);
    admin_publish(&node, "news", &data).await;
    let reference = plain.recv_type("message").await;
    assert_eq!(reference["data"], data);
    for client in &mut deflating {
        let (message, _, compressed) = client.recv_json("message").await;
        assert!(compressed, "a 4 KB message leaves compressed");
        assert_eq!(
            message, reference,
            "the same frame as the uncompressed member's"
        );
    }
    eventually("compressed once, delivered three times", || async {
        counter(&node, "roomcast_frames_compressed_total").await == 1.0
            && counter(&node, "roomcast_compressed_deliveries_total").await == 3.0
    })
    .await;

    admin_publish(&node, "news", &json!("short")).await;
    for client in &mut deflating {
        let (message, _, compressed) = client.recv_json("message").await;
        assert_eq!(message["data"], "short");
        assert!(!compressed, "under compression_min_bytes: as it is");
    }
    node.stop().await.expect("stops");
}

/// `server.compression_min_bytes` is where compression starts.
#[tokio::test]
async fn compression_min_bytes_is_the_threshold() {
    let mut config = compression_config();
    config.server.compression_min_bytes = 6_000;
    let node = TestNode::start(config).await;
    let mut client = RawClient::connect(&node, Some("permessage-deflate")).await;
    raw_join(&mut client, "t").await;
    for (size, expect_compressed) in [(3_000, false), (7_000, true)] {
        admin_publish(&node, "t", &chat_data(size)).await;
        let (_, text, compressed) = client.recv_json("message").await;
        assert_eq!(compressed, expect_compressed, "{} bytes", text.len());
    }
    node.stop().await.expect("stops");
}

/// A client that compresses its own messages is understood: its publish is acknowledged and
/// reaches the room as it meant it, and a compressed `ping` command too.
#[tokio::test]
async fn compressed_client_messages_are_inflated() {
    let node = TestNode::start(compression_config()).await;
    let mut client = RawClient::connect(&node, Some("permessage-deflate")).await;
    raw_join(&mut client, "r").await;
    let mut member = node.connect().await;
    member.join("r").await;
    let data = chat_data(3_000);
    let publish = json!({"type": "publish", "room": "r", "data": data, "id": "p1"});
    client.send(&publish.to_string(), true).await;
    let (ack, _, _) = client.recv_json("ack").await;
    assert_eq!(ack["id"], "p1");
    let got = member.recv_type("message").await;
    assert_eq!(got["data"], data);
    client
        .send(&json!({"type": "ping", "id": "z"}).to_string(), true)
        .await;
    let (pong, _, _) = client.recv_json("pong").await;
    assert_eq!(pong["id"], "z");
    node.stop().await.expect("stops");
}

/// A small compressed frame that inflates past `limits.max_message_bytes` is refused like a
/// large one: 1009, without inflating it all.
#[tokio::test]
async fn a_decompression_bomb_is_closed_with_1009() {
    let mut config = compression_config();
    config.limits.max_message_bytes = 16 * 1024;
    let node = TestNode::start(config).await;
    let mut client = RawClient::connect(&node, Some("permessage-deflate")).await;
    let filler = " ".repeat(4 << 20);
    let bomb = format!(r#"{{"type":"publish","room":"r","data":"x"{filler}}}"#);
    assert!(
        deflate(bomb.as_bytes()).len() < 16 * 1024,
        "small on the wire"
    );
    client.send(&bomb, true).await;
    match client.recv().await {
        Got::Close(code) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    // Just under the limit passes.
    let mut client = RawClient::connect(&node, Some("permessage-deflate")).await;
    let fits = format!(
        r#"{{"type":"ping","id":"ok"{}}}"#,
        " ".repeat(16 * 1024 - 30)
    );
    assert!(fits.len() <= 16 * 1024);
    client.send(&fits, true).await;
    let (pong, _, _) = client.recv_json("pong").await;
    assert_eq!(pong["id"], "ok");
    node.stop().await.expect("stops");
}

/// With `server.compression` off (the default) the offer is not answered, frames go out as
/// they are, and a client that compresses anyway is closed with 1002.
#[tokio::test]
async fn with_compression_off_nothing_is_negotiated() {
    let node = TestNode::start(test_config()).await;
    let mut client = RawClient::connect(&node, Some("permessage-deflate")).await;
    assert_eq!(client.extensions, None);
    raw_join(&mut client, "off").await;
    admin_publish(&node, "off", &chat_data(4_000)).await;
    let (_, _, compressed) = client.recv_json("message").await;
    assert!(!compressed);
    client
        .send(&json!({"type": "ping"}).to_string(), true)
        .await;
    match client.recv().await {
        Got::Close(code) => assert_eq!(code, 1002),
        other => panic!("expected close 1002, got {other:?}"),
    }
    node.stop().await.expect("stops");
}

/// Two nodes on a real redis-server: a message published on one reaches a member of the
/// other compressed, and that member's compressed publish reaches the first node's member.
#[tokio::test]
async fn compression_works_across_a_redis_backed_cluster() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("rc-deflate", "cluster");
    let node_a = TestNode::start(compression_config().on_redis(&redis, &prefix)).await;
    let node_b = TestNode::start(compression_config().on_redis(&redis, &prefix)).await;
    let nodes = [node_a, node_b];
    wait_ready(&nodes, "both nodes ready").await;
    let [node_a, node_b] = nodes;
    let mut on_a = node_a.connect().await;
    on_a.join("x").await;
    let mut on_b = RawClient::connect(&node_b, Some("permessage-deflate")).await;
    raw_join(&mut on_b, "x").await;

    let data = chat_data(2_000);
    admin_publish(&node_a, "x", &data).await;
    let (message, _, compressed) = on_b.recv_json("message").await;
    assert!(compressed);
    assert_eq!(message["data"], data);
    assert_eq!(on_a.recv_type("message").await["data"], data);

    let reply = chat_data(1_000);
    let publish = json!({"type": "publish", "room": "x", "data": reply});
    on_b.send(&publish.to_string(), true).await;
    let got = timeout(Duration::from_secs(10), on_a.recv_type("message"))
        .await
        .expect("crosses the cluster");
    assert_eq!(got["data"], reply);
    node_a.stop().await.expect("a stops");
    node_b.stop().await.expect("b stops");
}

/// The Python interpreter with `websockets` that scripts/test installs
/// (`deploy/.cache/venv`), or `ROOMCAST_TEST_PYTHON`.
fn python_with_websockets() -> std::path::PathBuf {
    let python = std::env::var_os("ROOMCAST_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/.cache/venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} is missing: `scripts/test --install-only` installs Python's websockets into \
         deploy/.cache/venv (or point ROOMCAST_TEST_PYTHON at a Python that has it)",
        python.display()
    );
    python
}

/// A real client that negotiates it: Python's `websockets` with its default offer. Its
/// compressed publish is understood, the member gets it (compressed by the node) intact, and
/// its 4 MB bomb in a small compressed frame is closed with 1009.
#[tokio::test]
async fn python_websockets_negotiates_compression_and_its_bomb_is_refused() {
    let node = TestNode::start(compression_config()).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/deflate_client.py");
    let run = tokio::process::Command::new(python_with_websockets())
        .arg(script)
        .arg(node.ws_url())
        .kill_on_drop(true)
        .output();
    let output = timeout(Duration::from_secs(60), run)
        .await
        .expect("the Python client finishes")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(found["extensions"], ANSWER);
    assert_eq!(found["acked"], true);
    assert_eq!(found["received_intact"], true);
    assert_eq!(found["bomb_close"], 1009);
    assert!(counter(&node, "roomcast_compressed_deliveries_total").await >= 1.0);
    node.stop().await.expect("stops");
}

/// With the connect hook the listener answers the upgrade itself (`listener/hooked.rs`): the
/// offer is answered there too, and the connection inflates and compresses as any other.
#[tokio::test]
async fn the_connect_hooks_handshake_negotiates_compression_too() {
    use crate::support::backend::{Backend, Reply};
    let backend = Backend::start(|_| Reply::json(json!({"user": "hooked"}))).await;
    let mut config = compression_config();
    config.hooks.connect_url = backend.url("/connect");
    let node = TestNode::start(config).await;
    let mut client = RawClient::connect(&node, Some("permessage-deflate")).await;
    assert_eq!(client.extensions.as_deref(), Some(ANSWER));
    backend.wait_for(1, "the hook was asked").await;
    raw_join(&mut client, "h").await;
    let data = chat_data(2_000);
    let publish = json!({"type": "publish", "room": "h", "data": data, "echo": true});
    client.send(&publish.to_string(), true).await;
    let (message, _, compressed) = client.recv_json("message").await;
    assert!(compressed, "its own echo, compressed");
    assert_eq!(message["data"], data);
    assert_eq!(message["from"], "hooked");
    node.stop().await.expect("stops");
}
