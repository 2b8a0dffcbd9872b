//! Webhooks (issue 19): `room_occupied`, `member_joined`, `member_left`, `room_vacated` POSTed
//! to a real HTTP backend on port 0 in the test: one event per change on a memory node and
//! across two nodes on Redis, the leave delay cancelled by a quick rejoin, a backend that
//! refuses for a while and then gets every event (signatures checked, no id missing), a node
//! SIGKILLed while holding events whose batch another node delivers, a dead node's users
//! announced as leaving, and parked events listed and replayed through the admin API.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use redis::AsyncCommands;
use roomcast::config::Config;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::presence::{SECRET as JWT_SECRET, connect_as, prefix, redis_config};
use crate::support::*;

const HOOK_SECRET: &str = "webhook-test-secret";

/// One POST the backend answered.
#[derive(Clone, Debug)]
struct Delivery {
    status: u16,
    signature: String,
    body: Vec<u8>,
}

impl Delivery {
    fn events(&self) -> Vec<Value> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["events"].as_array().cloned())
            .unwrap_or_default()
    }
}

#[derive(Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Vec<Delivery>>>,
    /// Answer this many of the next requests with 503; negative: every request.
    refuse: Arc<AtomicI64>,
}

/// The backend: a real HTTP server on port 0 that records every POST.
struct Backend {
    url: String,
    shared: Shared,
    task: JoinHandle<()>,
}

async fn receive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let refused = shared
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n > 0).then(|| n - 1)
        })
        .is_ok()
        || shared.refuse.load(Ordering::SeqCst) < 0;
    let status = if refused {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let signature = headers
        .get("x-roomcast-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push(Delivery {
            status: status.as_u16(),
            signature,
            body: body.to_vec(),
        });
    }
    status
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let shared = Shared::default();
        let app = axum::Router::new()
            .route("/events", axum::routing::post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            url: format!("http://{addr}/events"),
            shared,
            task,
        }
    }

    /// Refuse the next `n` requests with 503 (negative: all, until told otherwise).
    fn refuse(&self, n: i64) {
        self.shared.refuse.store(n, Ordering::SeqCst);
    }

    fn seen(&self) -> Vec<Delivery> {
        self.shared
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Events of the requests answered 2xx, in arrival order.
    fn accepted(&self) -> Vec<Value> {
        self.seen()
            .iter()
            .filter(|d| d.status == 200)
            .flat_map(Delivery::events)
            .collect()
    }

    fn refused(&self) -> Vec<Value> {
        self.seen()
            .iter()
            .filter(|d| d.status != 200)
            .flat_map(Delivery::events)
            .collect()
    }

    /// Wait until the accepted events number `n`.
    async fn accepted_count(&self, n: usize, what: &str) {
        eventually(what, || async { self.accepted().len() >= n }).await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(type, user)` of events, for comparing sequences.
fn kinds(events: &[Value]) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["user"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn k(kind: &str, user: Option<&str>) -> (String, Option<String>) {
    (kind.to_owned(), user.map(str::to_owned))
}

/// The signature rule of docs/protocol.md, computed here independently of the node's code.
fn signature_valid(d: &Delivery) -> bool {
    let Some((t, v1)) = d
        .signature
        .split_once(",v1=")
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1)))
    else {
        return false;
    };
    let Ok(seconds) = t.parse::<u64>() else {
        return false;
    };
    let now = roomcast::clock::now_ms() / 1000;
    if seconds.abs_diff(now) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&d.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == v1
}

/// Webhooks to `backend` on `config`, fast retries.
fn with_webhooks(mut config: Config, backend: &Backend) -> Config {
    config.webhooks.url = backend.url.clone();
    config.webhooks.secret = HOOK_SECRET.into();
    config.webhooks.retry_initial_ms = 20;
    config.webhooks.retry_max_ms = 100;
    config.webhooks.timeout_ms = 2_000;
    config.webhooks.claim_idle_ms = 3_000;
    config.webhooks.poll_ms = 20;
    config.webhooks.max_attempts = 1_000;
    config
}

fn memory_config(backend: &Backend) -> Config {
    let mut config = test_config();
    config.presence.rooms = vec![roomcast::config::PresenceRule {
        pattern: "chat:*".into(),
        events: false,
        max_members: 1000,
    }];
    config.auth.mode = roomcast::config::AuthMode::Jwt;
    config.auth.jwt_secret = Some(JWT_SECRET.into());
    with_webhooks(config, backend)
}

fn redis_node(redis: &RedisServer, p: &str, id: &str, backend: &Backend) -> Config {
    with_webhooks(redis_config(redis, p, id, 30), backend)
}

async fn leave(peer: &mut super::presence::Peer, room: &str) {
    let reply = peer
        .request(json!({"type": "leave", "room": room}), "leave")
        .await;
    assert_eq!(reply["type"], "left", "{reply}");
}

/// Events of the stream not yet acknowledged nor parked (0: every POST is done).
async fn stream_len(redis: &RedisServer, p: &str) -> u64 {
    let mut conn = redis_conn(&redis.url()).await;
    redis::cmd("XLEN")
        .arg(format!("{p}webhooks"))
        .query_async(&mut conn)
        .await
        .unwrap_or(u64::MAX)
}

#[tokio::test]
async fn one_event_per_change_on_a_memory_node_signed() {
    let backend = Backend::start().await;
    let node = TestNode::start(memory_config(&backend)).await;
    let url = node.ws_url();
    let mut alice1 = connect_as(&url, "alice").await;
    let mut alice2 = connect_as(&url, "alice").await;
    alice1.join("chat:a").await;
    alice2.join("chat:a").await;
    backend.accepted_count(2, "occupied, alice joined").await;
    let mut bob = connect_as(&url, "bob").await;
    bob.join("chat:a").await;
    backend.accepted_count(3, "bob joined").await;
    leave(&mut alice1, "chat:a").await;
    leave(&mut alice2, "chat:a").await;
    backend.accepted_count(4, "alice left").await;
    bob.client.close().await;
    backend.accepted_count(6, "bob left, vacated").await;
    eventually("nothing pending", || async {
        metric(&node.metrics().await, "roomcast_webhook_pending") == 0.0
    })
    .await;
    let events = backend.accepted();
    assert_eq!(
        kinds(&events),
        [
            k("room_occupied", None),
            k("member_joined", Some("alice")),
            k("member_joined", Some("bob")),
            k("member_left", Some("alice")),
            k("member_left", Some("bob")),
            k("room_vacated", None),
        ]
    );
    for e in &events {
        assert_eq!(e["room"], "chat:a", "{e}");
        assert!(e["ts"].as_u64().is_some_and(|ts| ts > 0), "{e}");
        assert!(e["id"].as_str().is_some_and(|id| !id.is_empty()), "{e}");
    }
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "ids are unique");
    for d in backend.seen() {
        assert!(signature_valid(&d), "signature of {d:?}");
    }
    let metrics = node.metrics().await;
    assert_eq!(
        metric(&metrics, "roomcast_webhook_events_delivered_total"),
        6.0
    );
    assert_eq!(
        metric(&metrics, "roomcast_webhook_events_parked_total"),
        0.0
    );
}

/// Sort events by their id (`<ms>-<seq>` of the Redis stream): the order they were decided.
fn by_id(mut events: Vec<Value>) -> Vec<Value> {
    let key = |e: &Value| -> (u64, u64) {
        let id = e["id"].as_str().unwrap_or("");
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    events.sort_by_key(key);
    events
}

#[tokio::test]
async fn across_two_nodes_on_redis_one_event_per_change() {
    let redis = RedisServer::start();
    let p = prefix("wh-two");
    let backend = Backend::start().await;
    let nodes = [
        TestNode::start(redis_node(&redis, &p, "a", &backend)).await,
        TestNode::start(redis_node(&redis, &p, "b", &backend)).await,
    ];
    wait_ready(&nodes, "nodes ready").await;
    let (a, b) = (nodes[0].ws_url(), nodes[1].ws_url());
    // One user with a tab on each node: one member_joined.
    let mut alice_a = connect_as(&a, "alice").await;
    let mut alice_b = connect_as(&b, "alice").await;
    alice_a.join("chat:x").await;
    alice_b.join("chat:x").await;
    backend.accepted_count(2, "occupied, alice joined").await;
    let mut bob_b = connect_as(&b, "bob").await;
    bob_b.join("chat:x").await;
    backend.accepted_count(3, "bob joined").await;
    // Alice's tab on a leaves: she is still in through b, nothing is sent.
    leave(&mut alice_a, "chat:x").await;
    leave(&mut bob_b, "chat:x").await;
    backend.accepted_count(4, "bob left").await;
    alice_b.client.close().await;
    backend.accepted_count(6, "alice left, vacated").await;
    eventually("every event acknowledged", || async {
        stream_len(&redis, &p).await == 0
    })
    .await;
    let events = by_id(backend.accepted());
    assert_eq!(
        kinds(&events),
        [
            k("room_occupied", None),
            k("member_joined", Some("alice")),
            k("member_joined", Some("bob")),
            k("member_left", Some("bob")),
            k("member_left", Some("alice")),
            k("room_vacated", None),
        ],
        "{events:?}"
    );
    assert!(backend.seen().iter().all(signature_valid));
}

#[tokio::test]
async fn a_quick_rejoin_cancels_the_delayed_leave() {
    const DELAY_MS: u64 = 5_000;
    let redis = RedisServer::start();
    let p = prefix("wh-delay");
    let backend = Backend::start().await;
    let config = |id: &str| {
        let mut config = redis_node(&redis, &p, id, &backend);
        config.webhooks.leave_delay_ms = DELAY_MS;
        config
    };
    let nodes = [
        TestNode::start(config("a")).await,
        TestNode::start(config("b")).await,
    ];
    wait_ready(&nodes, "nodes ready").await;
    let conn = redis_conn(&redis.url()).await;
    let leaves = format!("{p}webhooks:leaves");
    let mut alice = connect_as(&nodes[0].ws_url(), "alice").await;
    alice.join("chat:d").await;
    backend.accepted_count(2, "occupied, alice joined").await;
    // Alice drops off node a and comes back through node b (a reconnect to another node).
    alice.client.close().await;
    eventually("alice's departure waits for its delay", || {
        let mut conn = conn.clone();
        let leaves = leaves.clone();
        async move { conn.zcard::<_, u64>(&leaves).await.unwrap_or(0) == 1 }
    })
    .await;
    let mut again = connect_as(&nodes[1].ws_url(), "alice").await;
    again.join("chat:d").await;
    eventually("the rejoin cancels it", || {
        let mut conn = conn.clone();
        let leaves = leaves.clone();
        async move { conn.zcard::<_, u64>(&leaves).await.unwrap_or(1) == 0 }
    })
    .await;
    // Now she leaves for good: member_left once the delay is over, then room_vacated.
    let final_leave = roomcast::clock::now_ms();
    leave(&mut again, "chat:d").await;
    let deadline = tokio::time::Instant::now() + WAIT + Duration::from_millis(DELAY_MS);
    while backend.accepted().len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member_left in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("every event acknowledged", || async {
        stream_len(&redis, &p).await == 0
    })
    .await;
    let events = by_id(backend.accepted());
    assert_eq!(
        kinds(&events),
        [
            k("room_occupied", None),
            k("member_joined", Some("alice")),
            k("member_left", Some("alice")),
            k("room_vacated", None),
        ],
        "the cancelled departure sent nothing: {events:?}"
    );
    // The member_left is the final departure's, a delay after it (the cancelled one would
    // have come a delay after the first departure, before this one).
    let left = events[2]["ts"].as_u64().unwrap_or(0);
    assert!(
        left >= final_leave + DELAY_MS,
        "member_left {left} waited for the delay after {final_leave}: {events:?}"
    );
}

/// Webhook members of `room` recorded in Redis (`{channel}:webhook-members`).
async fn members(redis: &RedisServer, p: &str, room: &str) -> u64 {
    let mut conn = redis_conn(&redis.url()).await;
    redis::cmd("HLEN")
        .arg(format!("{{{p}room:{room}}}:webhook-members"))
        .query_async(&mut conn)
        .await
        .unwrap_or(u64::MAX)
}

/// `n` users join `room` on alternate nodes, then, once every join is recorded (a join and a
/// leave written in one presence batch are no change at all), leave: 2n + 2 events.
async fn churn(redis: &RedisServer, p: &str, urls: &[String], room: &str, n: usize) {
    let mut peers = Vec::new();
    for i in 0..n {
        let mut peer = connect_as(&urls[i % urls.len()], &format!("u{i:02}")).await;
        peer.join(room).await;
        peers.push(peer);
    }
    eventually("every join recorded", || async {
        members(redis, p, room).await == n as u64
    })
    .await;
    for mut peer in peers {
        leave(&mut peer, room).await;
    }
    eventually("every leave recorded", || async {
        members(redis, p, room).await == 0
    })
    .await;
}

#[tokio::test]
async fn a_backend_down_then_up_gets_every_event_signed() {
    const USERS: usize = 10;
    let redis = RedisServer::start();
    let p = prefix("wh-down");
    let backend = Backend::start().await;
    backend.refuse(-1);
    let nodes = [
        TestNode::start(redis_node(&redis, &p, "a", &backend)).await,
        TestNode::start(redis_node(&redis, &p, "b", &backend)).await,
    ];
    wait_ready(&nodes, "nodes ready").await;
    let urls = [nodes[0].ws_url(), nodes[1].ws_url()];
    churn(&redis, &p, &urls, "chat:down", USERS).await;
    eventually(
        "the backend refused retries from both nodes' batches",
        || async { backend.seen().len() >= 6 },
    )
    .await;
    assert!(backend.accepted().is_empty());
    backend.refuse(0);
    let total = 2 * USERS + 2;
    backend.accepted_count(total, "every event delivered").await;
    eventually("every event acknowledged", || async {
        stream_len(&redis, &p).await == 0
    })
    .await;
    let accepted = backend.accepted();
    let mut ids: Vec<String> = accepted
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "every event, once each: {accepted:?}");
    for refused in backend.refused() {
        let id = refused["id"].as_str().unwrap_or("");
        assert!(ids.iter().any(|i| i == id), "refused {id} delivered later");
    }
    let counts = |kind: &str| accepted.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(counts("member_joined"), USERS);
    assert_eq!(counts("member_left"), USERS);
    assert!(backend.seen().iter().all(signature_valid), "signatures");
    let failed: f64 = {
        let mut sum = 0.0;
        for node in &nodes {
            sum += metric(
                &node.metrics().await,
                "roomcast_webhook_attempts_failed_total",
            );
        }
        sum
    };
    assert!(failed >= 6.0, "failed attempts counted: {failed}");
}

#[tokio::test]
async fn a_killed_nodes_pending_events_are_delivered_by_another() {
    let redis = RedisServer::start();
    let p = prefix("wh-kill");
    let backend = Backend::start().await;
    backend.refuse(-1);
    let toml = format!(
        "[auth]\nmode = \"jwt\"\njwt_secret = \"{JWT_SECRET}\"\n\
         [presence]\nrooms = [{{ pattern = \"chat:*\" }}]\n\
         [webhooks]\nurl = \"{}\"\nsecret = \"{HOOK_SECRET}\"\nretry_initial_ms = 20\n\
         retry_max_ms = 100\ntimeout_ms = 2000\nclaim_idle_ms = 3000\npoll_ms = 20\n\
         max_attempts = 1000\n",
        backend.url
    );
    let (mut doomed, doomed_url) = BinaryOnRedis::new(&redis, &p, &toml)
        .flag("--node-id", "doomed")
        .spawn()
        .await;
    let mut alice = connect_as(&doomed_url, "alice").await;
    alice.join("chat:k").await;
    eventually("the doomed node holds the events, refused", || async {
        backend.refused().len() >= 2
    })
    .await;
    let held: Vec<String> = backend
        .refused()
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect();
    doomed.0.kill().expect("SIGKILL the node");
    let _ = doomed.0.wait();
    drop(alice);
    // The events are pending for the dead node in the consumer group.
    let mut conn = redis_conn(&redis.url()).await;
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(format!("{p}webhooks"))
        .arg("roomcast")
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert!(format!("{pending:?}").contains("doomed"), "{pending:?}");
    backend.refuse(0);
    let survivor = TestNode::start(redis_node(&redis, &p, "survivor", &backend)).await;
    eventually("the survivor takes the batch over", || async {
        let accepted = backend.accepted();
        held.iter().all(|id| {
            accepted
                .iter()
                .any(|e| e["id"].as_str() == Some(id.as_str()))
        })
    })
    .await;
    let kinds = kinds(&by_id(backend.accepted()));
    assert_eq!(
        &kinds[..2],
        [k("room_occupied", None), k("member_joined", Some("alice"))]
    );
    let delivered = metric(
        &survivor.metrics().await,
        "roomcast_webhook_events_delivered_total",
    );
    assert!(delivered >= 2.0, "the survivor delivered them: {delivered}");
}

#[tokio::test]
async fn a_dead_nodes_users_leave_by_webhook_within_the_ttl() {
    let redis = RedisServer::start();
    let p = prefix("wh-dead");
    let backend = Backend::start().await;
    let toml = format!(
        "[auth]\nmode = \"jwt\"\njwt_secret = \"{JWT_SECRET}\"\n\
         [presence]\nttl_s = 2\nrooms = [{{ pattern = \"chat:*\" }}]\n\
         [webhooks]\nurl = \"{}\"\nsecret = \"{HOOK_SECRET}\"\npoll_ms = 20\n",
        backend.url
    );
    let (mut doomed, doomed_url) = BinaryOnRedis::new(&redis, &p, &toml)
        .flag("--node-id", "doomed")
        .spawn()
        .await;
    let survivor = TestNode::start(with_webhooks(
        redis_config(&redis, &p, "survivor", 2),
        &backend,
    ))
    .await;
    let mut watcher = connect_as(&survivor.ws_url(), "watcher").await;
    watcher.join("chat:z").await;
    backend.accepted_count(2, "occupied, watcher joined").await;
    let mut ghost = connect_as(&doomed_url, "ghost").await;
    ghost.join("chat:z").await;
    backend.accepted_count(3, "ghost joined").await;
    doomed.0.kill().expect("SIGKILL the node");
    let _ = doomed.0.wait();
    drop(ghost);
    // The survivor's next refresh of the room drops the dead node and records the departure.
    backend.accepted_count(4, "ghost left with its node").await;
    let events = by_id(backend.accepted());
    assert_eq!(
        kinds(&events),
        [
            k("room_occupied", None),
            k("member_joined", Some("watcher")),
            k("member_joined", Some("ghost")),
            k("member_left", Some("ghost")),
        ]
    );
}

/// Events failing `max_attempts` times are parked, listed and replayed with their ids.
async fn parks_and_replays(config: Config, backend: &Backend, api_key: &str) {
    let node = TestNode::start(config).await;
    wait_ready(std::slice::from_ref(&node), "node ready").await;
    let mut alice = connect_as(&node.ws_url(), "alice").await;
    alice.join("chat:p").await;
    let client = crate::support::http_client();
    let failed_url = node.admin_url("/api/webhooks/failed");
    let parked = || async {
        let response = client
            .get(&failed_url)
            .bearer_auth(api_key)
            .send()
            .await
            .expect("GET failed");
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.expect("json")
    };
    eventually("both events parked", || async {
        parked().await["events"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
    let listed = parked().await;
    let events = listed["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        kinds(&events),
        [k("room_occupied", None), k("member_joined", Some("alice"))]
    );
    for e in &events {
        assert_eq!(e["error"], "HTTP 503", "{e}");
        assert_eq!(e["attempts"], 2, "{e}");
    }
    let metrics = node.metrics().await;
    assert_eq!(
        metric(&metrics, "roomcast_webhook_events_parked_total"),
        2.0
    );
    assert_eq!(
        metric(&metrics, "roomcast_webhook_attempts_failed_total"),
        2.0
    );
    let unauthorized = client.get(&failed_url).send().await.expect("GET");
    assert_eq!(unauthorized.status(), 401, "behind the API key");

    backend.refuse(0);
    let replay_url = node.admin_url("/api/webhooks/replay");
    let answer: Value = client
        .post(&replay_url)
        .bearer_auth(api_key)
        .json(&json!({"ids": [events[1]["id"]]}))
        .send()
        .await
        .expect("replay one")
        .json()
        .await
        .expect("json");
    assert_eq!(answer, json!({"replayed": 1}));
    backend.accepted_count(1, "the replayed event").await;
    assert_eq!(backend.accepted()[0]["id"], events[1]["id"], "same id");
    let answer: Value = client
        .post(&replay_url)
        .bearer_auth(api_key)
        .send()
        .await
        .expect("replay the rest")
        .json()
        .await
        .expect("json");
    assert_eq!(answer, json!({"replayed": 1}));
    backend.accepted_count(2, "the other one").await;
    assert_eq!(backend.accepted()[1]["id"], events[0]["id"]);
    assert_eq!(parked().await, json!({"events": []}));
    let bad = client
        .post(&replay_url)
        .bearer_auth(api_key)
        .body("{\"idz\": []}")
        .send()
        .await
        .expect("bad body");
    assert_eq!(bad.status(), 400);
}

fn parking(mut config: Config) -> Config {
    config.webhooks.max_attempts = 2;
    config.admin.api_key = Some("admin-key".into());
    config
}

#[tokio::test]
async fn failed_events_are_parked_and_replayed_on_redis() {
    let redis = RedisServer::start();
    let p = prefix("wh-park");
    let backend = Backend::start().await;
    backend.refuse(-1);
    let config = parking(redis_node(&redis, &p, "a", &backend));
    parks_and_replays(config, &backend, "admin-key").await;
}

#[tokio::test]
async fn failed_events_are_parked_and_replayed_on_memory() {
    let backend = Backend::start().await;
    backend.refuse(-1);
    let config = parking(memory_config(&backend));
    parks_and_replays(config, &backend, "admin-key").await;
}
