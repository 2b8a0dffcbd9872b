//! The backend's `info` in presence (issue 19): what a connect hook's answer gives a user, or a
//! join hook's answer gives it in one room, is shown with that user in `presence` replies and
//! in its `member_joined`, on one node and across two nodes on a real `redis-server`; an `info`
//! above `hooks.max_info_bytes` is refused like any answer off the contract.

use std::collections::VecDeque;

use roomcast::config::{AuthMode, Config, PresenceRule};
use serde_json::{Value, json};

use crate::presence::{Peer, connect_as, next_member_event, redis_config};
use crate::support::backend::{Backend, Reply};
use crate::support::*;

/// The backend: `session=alice` is alice with `{"name": "Alice"}`, `session=huge` carries an
/// info of 2 KB; the join hook gives `vip:*` rooms `{"badge": "vip"}`, and `vip:huge` 2 KB.
async fn backend() -> Backend {
    Backend::start(|seen| {
        let huge = json!({"bio": "x".repeat(2_000)});
        match (seen.path.as_str(), &seen.body) {
            ("/connect", body) => match body["headers"]["cookie"].as_str() {
                Some("session=alice") => {
                    Reply::json(json!({"user": "alice", "info": {"name": "Alice"}}))
                }
                Some("session=huge") => Reply::json(json!({"user": "huge", "info": huge})),
                _ => Reply::status(401),
            },
            ("/join", body) if body["room"] == "vip:huge" => {
                Reply::json(json!({"allow": true, "info": huge}))
            }
            ("/join", _) => Reply::json(json!({"allow": true, "info": {"badge": "vip"}})),
            _ => Reply::status(404),
        }
    })
    .await
}

/// Presence with events in `chat:*` and `vip:*`, the connect hook beside JWTs, the join hook
/// for `vip:*`.
fn with_hooks(mut config: Config, backend: &Backend) -> Config {
    config.presence.rooms = ["chat:*", "vip:*"]
        .map(|pattern| PresenceRule {
            pattern: pattern.into(),
            events: true,
            max_members: 100,
        })
        .to_vec();
    config.hooks.connect_url = backend.url("/connect");
    config.hooks.join_url = backend.url("/join");
    config.hooks.join_rooms = vec!["vip:*".into()];
    config
}

async fn alice(url: &str) -> Peer {
    Peer {
        client: open_ws(url, &[("cookie", "session=alice")])
            .await
            .expect("alice is let in"),
        backlog: VecDeque::new(),
    }
}

/// `user → info` of `room`'s presence, asked by `peer` until it lists `users` (bounded).
async fn infos(peer: &mut Peer, room: &str, users: &[&str]) -> Vec<(String, Value)> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reply = peer
            .request(json!({"type": "presence", "room": room}), "p")
            .await;
        let members: Vec<(String, Value)> = reply["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| {
                        (
                            m["user"].as_str().unwrap_or("").to_owned(),
                            m["info"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if members
            .iter()
            .map(|(u, _)| u.as_str())
            .eq(users.iter().copied())
        {
            return members;
        }
        assert!(std::time::Instant::now() < deadline, "presence is {reply}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The next `member_joined` of alice in `room` that `peer` receives, whole.
async fn next_joined(peer: &mut Peer, room: &str) -> Value {
    loop {
        let v = match peer.backlog.pop_front() {
            Some(v) => v,
            None => peer.client.recv_json().await,
        };
        if v["type"] == "member_joined" && v["room"] == room && v["user"] == "alice" {
            return v;
        }
    }
}

/// What both setups check: `watcher` (on one node) sees alice (on `alice_url`) come into
/// `chat:a` and `vip:a` with the backend's info, and lists it in presence.
async fn alice_is_shown_with_her_info(watcher: &mut Peer, alice_url: &str) {
    watcher.join("chat:a").await;
    watcher.join("vip:a").await;
    let mut alice = alice(alice_url).await;
    alice.join("chat:a").await;
    let joined = next_joined(watcher, "chat:a").await;
    assert_eq!(joined["user"], "alice", "{joined}");
    assert_eq!(
        joined["info"],
        json!({"name": "Alice"}),
        "the connect hook's"
    );
    assert_eq!(
        infos(watcher, "chat:a", &["alice", "watcher"]).await,
        [
            ("alice".to_owned(), json!({"name": "Alice"})),
            ("watcher".to_owned(), Value::Null),
        ],
        "a user without info has none"
    );
    // In a room of the join hook, its info is the user's there.
    alice.join("vip:a").await;
    assert_eq!(
        next_joined(watcher, "vip:a").await["info"],
        json!({"badge": "vip"})
    );
    assert_eq!(
        infos(watcher, "vip:a", &["alice", "watcher"]).await[0].1,
        json!({"badge": "vip"})
    );
    // Gone, the info goes too: the watcher's next event is alice's `member_left`.
    drop(alice);
    assert_eq!(
        next_member_event(watcher, "chat:a").await,
        ("member_left".to_owned(), "alice".to_owned())
    );
}

#[tokio::test]
async fn presence_shows_the_backends_info_on_one_node() {
    let backend = backend().await;
    let mut config = with_hooks(test_config(), &backend);
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt_secret = Some(crate::presence::SECRET.into());
    let node = TestNode::start(config).await;
    let mut watcher = connect_as(&node.ws_url(), "watcher").await;
    alice_is_shown_with_her_info(&mut watcher, &node.ws_url()).await;
}

#[tokio::test]
async fn presence_shows_the_backends_info_across_nodes_on_redis() {
    let backend = backend().await;
    let redis = RedisServer::start();
    let prefix = crate::presence::prefix("info");
    let a = TestNode::start(with_hooks(redis_config(&redis, &prefix, "a", 30), &backend)).await;
    let b = TestNode::start(with_hooks(redis_config(&redis, &prefix, "b", 30), &backend)).await;
    let mut watcher = connect_as(&b.ws_url(), "watcher").await;
    alice_is_shown_with_her_info(&mut watcher, &a.ws_url()).await;
    // And the key goes with the user: Redis keeps no info of someone who left.
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let kept: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{{{prefix}room:chat:a}}:presence-info"))
        .query_async(&mut conn)
        .await
        .expect("HKEYS");
    assert!(kept.is_empty(), "{kept:?}");
}

#[tokio::test]
async fn an_info_above_max_info_bytes_is_refused_like_any_bad_answer() {
    let backend = backend().await;
    let node = TestNode::start(with_hooks(test_config(), &backend)).await;
    assert_eq!(
        open_ws(&node.ws_url(), &[("cookie", "session=huge")])
            .await
            .err(),
        Some(503),
        "a connect answer with a 2 KB info (the bound is 1 KB)"
    );
    let mut alice = alice(&node.ws_url()).await;
    let reply = alice
        .request(json!({"type": "join", "room": "vip:huge"}), "j")
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let reply = alice
        .request(json!({"type": "join", "room": "vip:fine"}), "k")
        .await;
    assert_eq!(reply["type"], "joined", "{reply}");
}
