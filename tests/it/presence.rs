//! Presence (issue 11): who is in a room across every node, `member_joined` / `member_left`
//! once per user, batching and churn; with the Redis broker (real `redis-server`, real nodes,
//! a Redis Cluster) and with the memory broker. Nodes going away and Redis forgetting are in
//! `presence_node_loss`, which shares this module's clients and configurations.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomcast::config::{AuthMode, Config, PresenceRule};
use serde_json::{Value, json};

pub(super) const SECRET: &str = "presence-test-secret-of-some-length";

fn token(user: &str, rooms: Option<&[&str]>) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let mut claims = json!({"sub": user, "exp": exp});
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn rules() -> Vec<PresenceRule> {
    vec![
        PresenceRule {
            pattern: "quiet:*".into(),
            events: false,
            max_members: 1000,
        },
        PresenceRule {
            pattern: "big:*".into(),
            events: false,
            max_members: 4,
        },
        PresenceRule {
            pattern: "chat:*".into(),
            events: true,
            max_members: 1000,
        },
    ]
}

fn memory_config(jwt: bool) -> Config {
    let mut config = test_config();
    config.presence.rooms = rules();
    if jwt {
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwt_secret = Some(SECRET.into());
    }
    config
}

pub(super) fn redis_config(redis: &RedisServer, prefix: &str, node_id: &str, ttl_s: u64) -> Config {
    let mut config = memory_config(true);
    config.server.node_id = node_id.into();
    config.presence.ttl_s = ttl_s;
    config.on_redis(redis, prefix)
}

pub(super) fn prefix(test: &str) -> String {
    unique_prefix("rc-pres", test)
}

/// A client that keeps the frames it skips while waiting for a reply, so that no member event
/// goes unseen.
pub(super) struct Peer {
    pub(super) client: Client,
    pub(super) backlog: VecDeque<Value>,
}

impl Peer {
    async fn connect(url: &str) -> Peer {
        Peer {
            client: Client::connect(url).await,
            backlog: VecDeque::new(),
        }
    }

    pub(super) async fn request(&mut self, mut command: Value, id: &str) -> Value {
        command["id"] = json!(id);
        self.client.send_json(command).await;
        loop {
            let v = self.client.recv_json().await;
            if v["id"] == id {
                return v;
            }
            self.backlog.push_back(v);
        }
    }

    pub(super) async fn join(&mut self, room: &str) {
        let reply = self
            .request(json!({"type": "join", "room": room}), "join")
            .await;
        assert_eq!(reply["type"], "joined", "{reply}");
    }

    async fn next(&mut self) -> Value {
        match self.backlog.pop_front() {
            Some(v) => v,
            None => self.client.recv_json().await,
        }
    }

    fn conn_id(&self) -> String {
        self.client.welcome["conn_id"]
            .as_str()
            .expect("conn_id")
            .to_owned()
    }
}

pub(super) async fn connect_as(url: &str, user: &str) -> Peer {
    Peer::connect(&format!("{url}?token={}", token(user, None))).await
}

async fn presence(client: &mut Peer, room: &str) -> Value {
    client
        .request(json!({"type": "presence", "room": room}), "presence")
        .await
}

/// `user → conns` of a presence reply, and its count.
fn roster(reply: &Value) -> (u64, Vec<(String, u64)>) {
    assert_eq!(reply["type"], "presence", "{reply}");
    let members = reply["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user"].as_str().expect("user").to_owned(),
                m["conns"].as_u64().expect("conns"),
            )
        })
        .collect();
    (reply["count"].as_u64().expect("count"), members)
}

fn users(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(u, c)| (u.to_string(), *c)).collect()
}

/// Ask `client` for `room`'s presence until it is `expected` (bounded).
pub(super) async fn presence_becomes(client: &mut Peer, room: &str, expected: &[(&str, u64)]) {
    let expected = users(expected);
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = presence(client, room).await;
        // While Redis restarts a read may fail; a client asks again.
        if reply["code"] != "unavailable" {
            let (count, members) = roster(&reply);
            if members == expected && count == expected.len() as u64 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "presence of {room} is {reply}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `member_joined` / `member_left` for `room`: `(event, user)`.
pub(super) async fn next_member_event(client: &mut Peer, room: &str) -> (String, String) {
    loop {
        let v = client.next().await;
        let kind = v["type"].as_str().unwrap_or("").to_owned();
        if kind == "member_joined" || kind == "member_left" {
            assert!(v["ts"].as_u64().is_some(), "{v}");
            if v["room"] == room {
                return (kind, v["user"].as_str().expect("user").to_owned());
            }
        }
    }
}

pub(super) fn ev(kind: &str, user: &str) -> (String, String) {
    (kind.to_owned(), user.to_owned())
}

#[tokio::test]
async fn memory_broker_counts_tabs_once_and_announces_each_user_once() {
    let node = TestNode::start(memory_config(true)).await;
    let url = node.ws_url();
    let mut watcher = connect_as(&url, "watcher").await;
    watcher.join("chat:m").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:m").await,
        ev("member_joined", "watcher"),
        "a member hears its own arrival"
    );
    let mut alice1 = connect_as(&url, "alice").await;
    alice1.join("chat:m").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:m").await,
        ev("member_joined", "alice")
    );
    let mut alice2 = connect_as(&url, "alice").await;
    alice2.join("chat:m").await;
    let mut bob = connect_as(&url, "bob").await;
    bob.join("chat:m").await;
    // alice's second tab sent nothing: the next event is bob's.
    assert_eq!(
        next_member_event(&mut watcher, "chat:m").await,
        ev("member_joined", "bob")
    );
    let reply = presence(&mut watcher, "chat:m").await;
    assert_eq!(reply["room"], "chat:m");
    assert_eq!(reply["truncated"], false);
    assert_eq!(
        roster(&reply),
        (3, users(&[("alice", 2), ("bob", 1), ("watcher", 1)]))
    );

    // One of alice's tabs goes: still there, nothing sent; her last one: member_left.
    alice1.client.close().await;
    presence_becomes(
        &mut watcher,
        "chat:m",
        &[("alice", 1), ("bob", 1), ("watcher", 1)],
    )
    .await;
    let mut carol = connect_as(&url, "carol").await;
    carol.join("chat:m").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:m").await,
        ev("member_joined", "carol")
    );
    let left = alice2
        .request(json!({"type": "leave", "room": "chat:m"}), "l")
        .await;
    assert_eq!(left["type"], "left");
    assert_eq!(
        next_member_event(&mut watcher, "chat:m").await,
        ev("member_left", "alice")
    );
    presence_becomes(
        &mut watcher,
        "chat:m",
        &[("bob", 1), ("carol", 1), ("watcher", 1)],
    )
    .await;
}

#[tokio::test]
async fn presence_errors_and_rooms_without_events() {
    let node = TestNode::start(memory_config(true)).await;
    let url = node.ws_url();
    let mut limited = Peer::connect(&format!(
        "{url}?token={}",
        token("lim", Some(&["chat:open", "news"]))
    ))
    .await;
    let reply = presence(&mut limited, "chat:closed").await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("forbidden")),
        "{reply}"
    );
    assert_eq!(reply["id"], "presence");
    let reply = presence(&mut limited, "chat:open").await;
    assert_eq!(reply["code"], "not_joined", "{reply}");
    limited.join("news").await;
    let reply = presence(&mut limited, "news").await;
    assert_eq!(
        reply["code"], "bad_request",
        "no presence.rooms rule: {reply}"
    );
    let reply = presence(&mut limited, "bad room").await;
    assert_eq!(reply["code"], "invalid_room", "{reply}");
    let reply = limited
        .request(json!({"type": "presence"}), "no-room")
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");

    // A room with events = false keeps presence and sends no member events.
    let mut a = connect_as(&url, "a").await;
    a.join("quiet:1").await;
    a.join("chat:marker").await;
    assert_eq!(
        next_member_event(&mut a, "chat:marker").await,
        ev("member_joined", "a")
    );
    let mut b = connect_as(&url, "b").await;
    b.join("quiet:1").await;
    b.join("chat:marker").await;
    loop {
        let v = a.next().await;
        assert_ne!(v["room"], "quiet:1", "no event in a quiet room: {v}");
        if v["type"] == "member_joined" && v["user"] == "b" {
            break;
        }
    }
    assert_eq!(
        a.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
    presence_becomes(&mut a, "quiet:1", &[("a", 1), ("b", 1)]).await;
}

#[tokio::test]
async fn anonymous_members_are_their_conn_ids_and_lists_are_capped() {
    let mut config = memory_config(false);
    config.admin.api_key = Some("k".into());
    let node = TestNode::start(config).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut c = Peer::connect(&node.ws_url()).await;
        c.join("big:room").await;
        clients.push(c);
    }
    let mut ids: Vec<String> = clients.iter().map(Peer::conn_id).collect();
    ids.sort();
    let reply = presence(&mut clients[0], "big:room").await;
    let (count, members) = roster(&reply);
    assert_eq!(count, 6, "the count stays exact");
    assert_eq!(reply["truncated"], true);
    let names: Vec<String> = members.iter().map(|(u, _)| u.clone()).collect();
    assert_eq!(names, ids[..4], "the first max_members conn ids, in order");

    let http = crate::support::http_client();
    let url = node.admin_url("/api/presence/big:room");
    let refused = http.get(&url).send().await.expect("admin");
    assert_eq!(refused.status(), 401, "the API key guards presence");
    let body: Value = http
        .get(&url)
        .bearer_auth("k")
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(body["room"], "big:room");
    assert_eq!(body["count"], 6);
    assert_eq!(body["truncated"], true);
    assert_eq!(body["members"].as_array().map(Vec::len), Some(4));
    let unknown = http
        .get(node.admin_url("/api/presence/news"))
        .bearer_auth("k")
        .send()
        .await
        .expect("admin");
    assert_eq!(unknown.status(), 400);
}

#[tokio::test]
async fn two_nodes_share_presence_and_announce_each_user_once() {
    let redis = RedisServer::start();
    let p = prefix("two");
    let a = TestNode::start(redis_config(&redis, &p, "node-a", 30)).await;
    let b = TestNode::start(redis_config(&redis, &p, "node-b", 30)).await;
    let (ua, ub) = (a.ws_url(), b.ws_url());
    let mut watcher = connect_as(&ua, "watcher").await;
    watcher.join("chat:x").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:x").await,
        ev("member_joined", "watcher")
    );
    let mut alice_b = connect_as(&ub, "alice").await;
    alice_b.join("chat:x").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:x").await,
        ev("member_joined", "alice"),
        "a join on node b reaches a member on node a"
    );
    let mut alice_a = connect_as(&ua, "alice").await;
    alice_a.join("chat:x").await;
    let mut bob_b = connect_as(&ub, "bob").await;
    bob_b.join("chat:x").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:x").await,
        ev("member_joined", "bob"),
        "alice's tab on another node sent nothing"
    );
    let everyone = [("alice", 2), ("bob", 1), ("watcher", 1)];
    presence_becomes(&mut watcher, "chat:x", &everyone).await;
    presence_becomes(&mut bob_b, "chat:x", &everyone).await;
    let admin: Value = crate::support::http_client()
        .get(b.admin_url("/api/presence/chat:x"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(admin["count"], 3, "{admin}");

    // alice's tab on b goes: nothing; her last (on a): member_left, once, on both nodes.
    alice_b.client.close().await;
    presence_becomes(
        &mut bob_b,
        "chat:x",
        &[("alice", 1), ("bob", 1), ("watcher", 1)],
    )
    .await;
    let mut carol = connect_as(&ub, "carol").await;
    carol.join("chat:x").await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:x").await,
        ev("member_joined", "carol")
    );
    alice_a.client.close().await;
    assert_eq!(
        next_member_event(&mut watcher, "chat:x").await,
        ev("member_left", "alice")
    );
    for expected in [
        ev("member_joined", "bob"),
        ev("member_joined", "carol"),
        ev("member_left", "alice"),
    ] {
        assert_eq!(next_member_event(&mut bob_b, "chat:x").await, expected);
    }
    presence_becomes(
        &mut watcher,
        "chat:x",
        &[("bob", 1), ("carol", 1), ("watcher", 1)],
    )
    .await;

    // max_members across nodes: the list is capped, the count exact.
    let mut big = Vec::new();
    for i in 0..6 {
        let url = if i % 2 == 0 { &ua } else { &ub };
        let mut c = connect_as(url, &format!("u{i}")).await;
        c.join("big:r").await;
        big.push(c);
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = presence(&mut big[0], "big:r").await;
        let (count, members) = roster(&reply);
        if count == 6 {
            assert_eq!(reply["truncated"], true);
            let names: Vec<&str> = members.iter().map(|(u, _)| u.as_str()).collect();
            assert_eq!(names, ["u0", "u1", "u2", "u3"]);
            break;
        }
        assert!(Instant::now() < deadline, "{reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What joins cost: a burst of joins in a room without events is written in a few batches,
/// not one round trip per join, and publishes nothing at all.
#[tokio::test]
async fn a_burst_of_joins_without_events_is_batched_and_publishes_nothing() {
    use futures_util::StreamExt;
    const MEMBERS: usize = 100;
    let redis = RedisServer::start();
    let p = prefix("cost");
    let node = TestNode::start(redis_config(&redis, &p, "n", 30)).await;
    let client = redis::Client::open(redis.url()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .psubscribe(format!("{p}presence:*"))
        .await
        .expect("psubscribe");
    pubsub
        .psubscribe(format!("{p}room:*"))
        .await
        .expect("psubscribe");

    let mut members = Vec::new();
    for i in 0..MEMBERS {
        members.push(connect_as(&node.ws_url(), &format!("m{i:03}")).await);
    }
    let joins = members
        .iter_mut()
        .map(|m| m.request(json!({"type": "join", "room": "quiet:crowd"}), "j"));
    for reply in futures_util::future::join_all(joins).await {
        assert_eq!(reply["type"], "joined", "{reply}");
    }
    let mut other = TestNode::start(redis_config(&redis, &p, "other", 30)).await;
    let mut watcher = connect_as(&other.ws_url(), "watcher").await;
    watcher.join("quiet:crowd").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = presence(&mut watcher, "quiet:crowd").await;
        if reply["count"] == MEMBERS as u64 + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{reply}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = node.metrics().await;
    let writes = metric(&metrics, "roomcast_presence_writes_total");
    eprintln!("{MEMBERS} joins written in {writes} batches");
    assert!(
        writes <= (MEMBERS / 4) as f64,
        "{MEMBERS} joins took {writes} writes"
    );

    // Nothing was published for those joins: the first message on the subscription is ours.
    let mut conn = redis_conn(&redis.url()).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{p}presence:marker"))
        .arg("marker")
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    let mut messages = pubsub.on_message();
    let first = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("marker in time")
        .expect("a message");
    assert_eq!(first.get_channel_name(), format!("{p}presence:marker"));
    drop(messages);
    other.begin_shutdown();
}

/// Many tabs of many users join and leave on two nodes at once: afterwards presence is exact,
/// and each user's events alternate joined/left, ending where the user ended.
#[tokio::test]
async fn churn_on_two_nodes_leaves_presence_exact_and_events_consistent() {
    const USERS: usize = 12;
    const ROUNDS: usize = 6;
    let redis = RedisServer::start();
    let p = prefix("churn");
    let a = TestNode::start(redis_config(&redis, &p, "a", 30)).await;
    let b = TestNode::start(redis_config(&redis, &p, "b", 30)).await;
    let mut watcher = connect_as(&a.ws_url(), "watcher").await;
    watcher.join("chat:churn").await;
    // Every user has a tab on each node; user i stays in the room at the end when i is even.
    let mut tabs = Vec::new();
    for i in 0..USERS {
        for url in [a.ws_url(), b.ws_url()] {
            tabs.push((i, connect_as(&url, &format!("c{i:02}")).await));
        }
    }
    let churn = tabs.iter_mut().enumerate().map(|(k, (i, tab))| {
        let i = *i;
        async move {
            for round in 0..ROUNDS {
                tab.join("chat:churn").await;
                let stay = round + 1 == ROUNDS && i % 2 == 0 && k % 2 == 0;
                if !stay {
                    let left = tab
                        .request(json!({"type": "leave", "room": "chat:churn"}), "l")
                        .await;
                    assert_eq!(left["type"], "left", "{left}");
                }
            }
        }
    });
    futures_util::future::join_all(churn).await;
    let mut expected: Vec<(String, u64)> = (0..USERS)
        .filter(|i| i % 2 == 0)
        .map(|i| (format!("c{i:02}"), 1))
        .collect();
    expected.push(("watcher".into(), 1));
    let expected: Vec<(&str, u64)> = expected.iter().map(|(u, c)| (u.as_str(), *c)).collect();
    presence_becomes(&mut watcher, "chat:churn", &expected).await;

    // Drain the events up to a marker user's arrival, then check each user's sequence.
    let mut marker = connect_as(&b.ws_url(), "zz-marker").await;
    marker.join("chat:churn").await;
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    loop {
        let (kind, user) = next_member_event(&mut watcher, "chat:churn").await;
        if user == "zz-marker" {
            break;
        }
        seen.entry(user).or_default().push(kind);
    }
    for i in 0..USERS {
        let user = format!("c{i:02}");
        let events = seen.get(&user).cloned().unwrap_or_default();
        for (n, kind) in events.iter().enumerate() {
            let want = if n % 2 == 0 {
                "member_joined"
            } else {
                "member_left"
            };
            assert_eq!(kind, want, "{user}: {events:?}");
        }
        let present = events.len() % 2 == 1;
        assert_eq!(
            present,
            i % 2 == 0,
            "{user} ends where it ended: {events:?}"
        );
    }
}

/// Read member events until `room → (event, user)` has arrived for every room, whatever
/// their order across rooms (on a cluster, rooms on different shards are written in parallel).
async fn member_events_in(client: &mut Peer, rooms: &[String], expected: (String, String)) {
    let mut missing: std::collections::HashSet<&String> = rooms.iter().collect();
    while !missing.is_empty() {
        let v = client.next().await;
        let kind = v["type"].as_str().unwrap_or("");
        if (kind == "member_joined" || kind == "member_left")
            && let Some(room) = rooms.iter().find(|r| v["room"] == r.as_str())
        {
            assert_eq!(
                (kind.to_owned(), v["user"].as_str().unwrap_or("").to_owned()),
                expected,
                "{v}"
            );
            assert!(missing.remove(room), "a second {kind} in {room}: {v}");
        }
    }
}

/// Presence and user channels on a Redis Cluster (`redis.cluster`): rooms on every shard,
/// one `roomcast_presence` call per room (a pipeline may not cross slots), events on classic
/// pub/sub, a user's notifications on its shard channel.
#[tokio::test(flavor = "multi_thread")]
async fn presence_and_notifications_work_on_a_redis_cluster() {
    let cluster = crate::support::cluster::RedisCluster::start(3, 0);
    let p = prefix("cluster");
    let config = |node_id: &str| {
        let mut config = memory_config(true);
        config.server.node_id = node_id.into();
        config.on_redis_cluster(&cluster, &p)
    };
    let a = TestNode::start(config("node-a")).await;
    let b = TestNode::start(config("node-b")).await;
    // Rooms on all three masters.
    let mut rooms: Vec<String> = Vec::new();
    let mut masters = std::collections::HashSet::new();
    for i in 0..10_000 {
        let room = format!("chat:{i}");
        let slot = cluster.slot_of(&format!("{p}room:{room}"));
        if masters.insert(cluster.master_port_for_slot(slot)) {
            rooms.push(room);
        }
        if rooms.len() == 3 {
            break;
        }
    }
    assert_eq!(rooms.len(), 3, "a room on each master");

    let mut watcher = connect_as(&a.ws_url(), "watcher").await;
    let mut alice = connect_as(&b.ws_url(), "alice").await;
    for room in &rooms {
        watcher.join(room).await;
    }
    member_events_in(&mut watcher, &rooms, ev("member_joined", "watcher")).await;
    // One batch of alice's joins spans three shards.
    for room in &rooms {
        alice.join(room).await;
    }
    member_events_in(&mut watcher, &rooms, ev("member_joined", "alice")).await;
    for room in &rooms {
        presence_becomes(&mut watcher, room, &[("alice", 1), ("watcher", 1)]).await;
    }

    // A notification for alice, sent to node a, reaches her connection on node b.
    let status = crate::support::http_client()
        .post(a.admin_url("/api/notify"))
        .body(r#"{"user":"alice","data":{"ping":1}}"#)
        .send()
        .await
        .expect("notify")
        .status();
    assert_eq!(status, 202);
    loop {
        let v = alice.next().await;
        if v["type"] == "notification" {
            assert_eq!(v["data"], json!({"ping":1}));
            break;
        }
    }

    alice.client.close().await;
    member_events_in(&mut watcher, &rooms, ev("member_left", "alice")).await;
}
