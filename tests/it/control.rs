//! docs/protocol.md "Control envelopes", "Close codes" 4000/4403 and the admin control routes:
//! the backend disconnects users or one connection, and revokes tokens, on every node, through
//! the admin API and through a plain Redis `PUBLISH`.

use crate::support::*;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomcast::config::{AuthMode, Config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "control-test-secret-of-some-length";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token for `sub` issued ten seconds ago (so a revocation made now covers it).
fn token(sub: &str) -> String {
    token_with(json!({"sub": sub, "exp": now() + 3600, "iat": now() - 10}))
}

fn token_with(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

fn jwt(mut config: Config) -> Config {
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt_secret = Some(SECRET.into());
    config.auth.leeway_s = 0;
    config
}

async fn connect_as(node: &TestNode, token: &str) -> Client {
    Client::connect(&format!("{}?token={token}", node.ws_url())).await
}

/// The HTTP status and body of a refused handshake; panics when it is accepted.
async fn refused(node: &TestNode, token: &str) -> (u16, String) {
    let url = format!("{}?token={token}", node.ws_url());
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake in time")
    {
        Ok(_) => panic!("the handshake was accepted"),
        Err(WsError::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into(),
        ),
        Err(other) => panic!("unexpected handshake error {other}"),
    }
}

async fn post(node: &TestNode, path: &str, body: Value) -> (u16, Value) {
    let response = crate::support::http_client()
        .post(node.admin_url(path))
        .json(&body)
        .send()
        .await
        .expect("post");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The close frame's code and reason, skipping data frames.
async fn close_of(client: &mut Client) -> (u16, String) {
    loop {
        let next = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .expect("a close arrives in time");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(Message::Close(None))) | Some(Err(_)) | None => {
                panic!("the socket ended without a close code")
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// A message published to `room` reaches `client` (still connected and subscribed).
async fn still_receives(node: &TestNode, client: &mut Client, room: &str, n: u64) {
    let (status, _) = post(node, "/api/publish", json!({"room": room, "data": n})).await;
    assert_eq!(status, 202);
    let got = client.recv_type("message").await;
    assert_eq!(got["data"], n, "{got}");
}

async fn two_nodes(redis: &RedisServer, test: &str) -> (TestNode, TestNode) {
    let prefix = unique_prefix("control", test);
    two_nodes_with(|| jwt(test_config()).on_redis(redis, &prefix)).await
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_a_user_on_every_node_with_its_code() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "kick-user").await;
    let mut alice_a = connect_as(&a, &token("alice")).await;
    let mut alice_b = connect_as(&b, &token("alice")).await;
    let mut bob = connect_as(&b, &token("bob")).await;
    bob.join("lobby").await;

    let (status, _) = post(
        &a,
        "/api/disconnect",
        json!({"user": "alice", "code": 4403, "reason": "banned"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(close_of(&mut alice_a).await, (4403, "banned".into()));
    assert_eq!(close_of(&mut alice_b).await, (4403, "banned".into()));
    still_receives(&a, &mut bob, "lobby", 1).await;

    // Without a code: 4000, "reconnect".
    let mut again = connect_as(&a, &token("alice")).await;
    let (status, _) = post(&b, "/api/disconnect", json!({"user": "alice"})).await;
    assert_eq!(status, 202);
    assert_eq!(close_of(&mut again).await, (4000, "reconnect".into()));
    let (status, body) = post(&a, "/api/disconnect", json!({"user": "a", "code": 1000})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
}

#[tokio::test]
async fn disconnect_by_conn_id_closes_that_connection_only() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis, "kick-conn").await;
    let mut kept = connect_as(&a, &token("carol")).await;
    let mut kicked = connect_as(&b, &token("carol")).await;
    kept.join("lobby").await;
    let conn_id = kicked.welcome["conn_id"]
        .as_str()
        .expect("conn_id")
        .to_owned();
    let (status, _) = post(&a, "/api/disconnect", json!({"conn_id": conn_id})).await;
    assert_eq!(status, 202);
    assert_eq!(close_of(&mut kicked).await.0, 4000);
    still_receives(&b, &mut kept, "lobby", 7).await;
}

#[tokio::test]
async fn a_control_envelope_published_with_redis_disconnects_and_a_data_envelope_does_not() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("control", "kick-redis");
    let node = TestNode::start(jwt(test_config()).on_redis(&redis, &prefix)).await;
    wait_ready(std::slice::from_ref(&node), "ready").await;
    let mut dave = connect_as(&node, &token("dave")).await;
    let mut conn = redis_conn(&redis.url()).await;
    let channel = format!("{prefix}user:dave");
    raw_publish(&mut conn, &channel, r#"{"data":{"control":"disconnect"}}"#).await;
    let note = dave.recv_type("notification").await;
    assert_eq!(note["data"], json!({"control": "disconnect"}));
    raw_publish(
        &mut conn,
        &channel,
        r#"{"control":"disconnect","code":4403,"reason":"by redis"}"#,
    )
    .await;
    assert_eq!(close_of(&mut dave).await, (4403, "by redis".into()));
}

#[tokio::test]
async fn disconnect_on_a_single_memory_node() {
    let node = TestNode::start(jwt(test_config())).await;
    let mut erin = connect_as(&node, &token("erin")).await;
    let mut frank = connect_as(&node, &token("frank")).await;
    frank.join("lobby").await;
    let (status, _) = post(&node, "/api/disconnect", json!({"user": "erin"})).await;
    assert_eq!(status, 202);
    assert_eq!(close_of(&mut erin).await.0, 4000);
    still_receives(&node, &mut frank, "lobby", 3).await;
}

/// Revoke `user` until an hour from now through `node`'s admin API.
async fn revoke(node: &TestNode, body: Value) {
    let (status, reply) = post(node, "/api/revoke", body).await;
    assert_eq!(status, 202, "{reply}");
}

#[tokio::test]
async fn revoke_closes_live_tokens_with_4403_and_refuses_them_on_every_node() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("control", "revoke");
    let config = || jwt(test_config()).on_redis(&redis, &prefix);
    let (a, b) = two_nodes_with(config).await;
    let old = token("gina");
    let mut on_a = connect_as(&a, &old).await;
    let mut on_b = connect_as(&b, &old).await;
    let mut other = connect_as(&b, &token("hank")).await;
    other.join("lobby").await;

    revoke(&a, json!({"user": "gina", "until": now() + 3600})).await;
    assert_eq!(close_of(&mut on_a).await, (4403, "token revoked".into()));
    assert_eq!(close_of(&mut on_b).await, (4403, "token revoked".into()));
    still_receives(&a, &mut other, "lobby", 1).await;
    for node in [&a, &b] {
        let (status, body) = refused(node, &old).await;
        assert_eq!(status, 401);
        assert!(body.contains("revoked"), "{body}");
    }
    // A token issued after the revocation is let in.
    let fresh = token_with(json!({"sub": "gina", "exp": now() + 3600, "iat": now() + 1}));
    connect_as(&b, &fresh).await;

    // A node started after the revocation loads it before its first handshake.
    let c = TestNode::start(config()).await;
    assert_eq!(refused(&c, &old).await.0, 401);
    for bad in [
        json!({"user": "gina", "until": now() - 1}),
        json!({"user": "gina", "until": now() + 100_000_000}),
        json!({"user": "gina"}),
    ] {
        assert_eq!(post(&a, "/api/revoke", bad).await.0, 400);
    }
}

async fn two_nodes_with(config: impl Fn() -> Config) -> (TestNode, TestNode) {
    let named = |id: &str| {
        let mut config = config();
        // Presence is kept per node id.
        config.server.node_id = id.into();
        config
    };
    let nodes = [
        TestNode::start(named("node-a")).await,
        TestNode::start(named("node-b")).await,
    ];
    wait_ready(&nodes, "both nodes ready").await;
    let [a, b] = nodes;
    (a, b)
}

/// A user revocation reaches only tokens issued before it: a connection whose token is newer
/// (here: opened, or refreshed in band, with a token issued after the revocation's time, as a
/// victim's reconnection on another node may be when the revocation arrives) stays open.
#[tokio::test]
async fn a_user_revocation_spares_connections_with_newer_tokens_also_after_a_refresh() {
    let node = TestNode::start(jwt(test_config())).await;
    let newer = || token_with(json!({"sub": "hal", "exp": now() + 3600, "iat": now() + 60}));
    let mut old = connect_as(&node, &token("hal")).await;
    let mut fresh = connect_as(&node, &newer()).await;
    let mut refreshed = connect_as(&node, &token("hal")).await;
    let reply = refreshed
        .request(json!({"type": "refresh", "token": newer()}), "r")
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    for client in [&mut fresh, &mut refreshed] {
        client.join("lobby").await;
    }
    revoke(&node, json!({"user": "hal", "until": now() + 600})).await;
    assert_eq!(close_of(&mut old).await.0, 4403);
    still_receives(&node, &mut fresh, "lobby", 1).await;
    refreshed.recv_type("message").await;
    still_receives(&node, &mut refreshed, "lobby", 2).await;
    fresh.recv_type("message").await;
}

/// After an in-band refresh, `/api/revoke {jti}` finds the connection by the token it holds
/// now, and the one it gave up no longer reaches it.
#[tokio::test]
async fn a_jti_revocation_follows_a_refreshed_connection_to_its_new_token() {
    let node = TestNode::start(jwt(test_config())).await;
    let claims = |jti: &str| json!({"sub": "ike", "exp": now() + 3600, "iat": now(), "jti": jti});
    let mut ike = connect_as(&node, &token_with(claims("first"))).await;
    let reply = ike
        .request(
            json!({"type": "refresh", "token": token_with(claims("second"))}),
            "r",
        )
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    ike.join("lobby").await;
    revoke(&node, json!({"jti": "first", "until": now() + 600})).await;
    still_receives(&node, &mut ike, "lobby", 1).await;
    revoke(&node, json!({"jti": "second", "until": now() + 600})).await;
    assert_eq!(close_of(&mut ike).await.0, 4403);
}

#[tokio::test]
async fn revoking_one_jti_closes_and_refuses_that_token_only() {
    let node = TestNode::start(jwt(test_config())).await;
    let claims =
        |jti: &str| json!({"sub": "ivy", "exp": now() + 3600, "iat": now() - 5, "jti": jti});
    let (stolen, kept) = (token_with(claims("t1")), token_with(claims("t2")));
    let mut bad = connect_as(&node, &stolen).await;
    let mut good = connect_as(&node, &kept).await;
    good.join("lobby").await;
    revoke(&node, json!({"jti": "t1", "until": now() + 600})).await;
    assert_eq!(close_of(&mut bad).await.0, 4403);
    assert_eq!(refused(&node, &stolen).await.0, 401);
    still_receives(&node, &mut good, "lobby", 2).await;
    connect_as(&node, &kept).await;
}

#[tokio::test]
async fn a_redis_restart_does_not_forget_revocations() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let prefix = unique_prefix("control", "revoke-restart");
    let survivor = TestNode::start(jwt(test_config()).on_redis(&redis, &prefix)).await;
    wait_ready(std::slice::from_ref(&survivor), "ready").await;
    let old = token("jack");
    revoke(&survivor, json!({"user": "jack", "until": now() + 3600})).await;

    // A fresh Redis without persistence on the same port: the set is gone until the node,
    // reconnecting, stores what it mirrors again.
    redis.stop();
    let redis = RedisServer::start_on(port);
    let key = format!("{prefix}revocations");
    let conn = redis_conn(&redis.url()).await;
    eventually("the surviving node stores the revocation again", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move {
            let n: i64 = redis::cmd("ZCARD")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap_or(0);
            n == 1
        }
    })
    .await;
    let late = TestNode::start(jwt(test_config()).on_redis(&redis, &prefix)).await;
    assert_eq!(refused(&late, &old).await.0, 401);
}

/// History for `team:*` (the last 10) and presence for it too.
fn with_team_rooms(mut config: Config) -> Config {
    config.history.rooms = vec![roomcast::config::HistoryRule {
        pattern: "team:*".into(),
        size: 10,
        ttl_s: 600,
    }];
    config.presence.rooms = vec![roomcast::config::PresenceRule {
        pattern: "team:*".into(),
        events: false,
        max_members: 100,
    }];
    config
}

/// A token that may join `lobby` only: server subscriptions must not need `rooms`.
fn lobby_only(sub: &str) -> String {
    token_with(json!({"sub": sub, "exp": now() + 3600, "iat": now() - 10, "rooms": ["lobby"]}))
}

/// The next `joined` with `server: true`, then the `n` replayed messages after it.
async fn server_joined(client: &mut Client, room: &str, replayed: u64) {
    let joined = client.recv_type("joined").await;
    assert_eq!(joined["room"], room, "{joined}");
    assert_eq!(joined["server"], true, "{joined}");
    assert_eq!(joined["history"], replayed, "{joined}");
    for i in 0..replayed {
        let m = client.recv_json().await;
        assert_eq!(
            (m["type"].as_str(), &m["data"]),
            (Some("message"), &json!(i)),
            "{m}"
        );
    }
}

#[tokio::test]
async fn server_subscribe_joins_a_user_on_every_node_now_and_later_with_history_and_presence() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("control", "server-sub");
    let config = || with_team_rooms(jwt(test_config()).on_redis(&redis, &prefix));
    let (a, b) = two_nodes_with(config).await;
    for i in 0..2 {
        let (status, _) = post(&a, "/api/publish", json!({"room": "team:1", "data": i})).await;
        assert_eq!(status, 202);
    }
    let mut on_a = connect_as(&a, &lobby_only("kim")).await;
    let mut on_b = connect_as(&b, &lobby_only("kim")).await;
    let forbidden = on_a
        .request(json!({"type": "join", "room": "team:1"}), "self")
        .await;
    assert_eq!(forbidden["code"], "forbidden", "the client itself may not");

    let sub = json!({"user": "kim", "room": "team:1"});
    assert_eq!(post(&b, "/api/subscribe", sub.clone()).await.0, 202);
    server_joined(&mut on_a, "team:1", 2).await;
    server_joined(&mut on_b, "team:1", 2).await;
    // The other node's presence is as of its last (batched) write.
    eventually("both connections counted in presence", || async {
        let (_, presence) = get_json(&a, "/api/presence/team:1").await;
        presence["members"] == json!([{"user": "kim", "conns": 2}])
    })
    .await;

    // A connection opened later, on either node, joins too.
    let mut later = connect_as(&b, &lobby_only("kim")).await;
    server_joined(&mut later, "team:1", 2).await;
    still_receives(&a, &mut later, "team:1", 2).await;
    still_receives(&a, &mut on_a, "team:1", 2).await;

    assert_eq!(post(&a, "/api/unsubscribe", sub).await.0, 202);
    for client in [&mut on_a, &mut on_b, &mut later] {
        let left = client.recv_type("left").await;
        assert_eq!(
            (left["room"].as_str(), left["reason"].as_str()),
            (Some("team:1"), Some("unsubscribed"))
        );
    }
    let mut after = connect_as(&a, &lobby_only("kim")).await;
    let reply = after.request(json!({"type": "ping"}), "p").await;
    assert_eq!(reply["type"], "pong", "no server join before it: {reply}");
    assert_eq!(
        post(&a, "/api/subscribe", json!({"user": "kim", "room": "a b"}))
            .await
            .0,
        400
    );
}

async fn get_json(node: &TestNode, path: &str) -> (u16, Value) {
    let response = crate::support::http_client()
        .get(node.admin_url(path))
        .send()
        .await
        .expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_subs_claim_joins_at_connect_within_the_room_limit() {
    let mut config = with_team_rooms(jwt(test_config()));
    config.limits.max_rooms_per_connection = 1;
    let node = TestNode::start(config).await;
    let claims = |subs: Value| {
        token_with(json!({"sub": "lee", "exp": now() + 3600, "rooms": ["lobby"], "subs": subs}))
    };
    let mut lee = connect_as(&node, &claims(json!(["team:9", "team:10"]))).await;
    server_joined(&mut lee, "team:9", 0).await;
    let refused_room = lee.recv_type("error").await;
    assert_eq!(refused_room["code"], "too_many_rooms", "{refused_room}");
    assert!(
        refused_room["message"]
            .as_str()
            .is_some_and(|m| m.contains("team:10"))
    );
    still_receives(&node, &mut lee, "team:9", 4).await;
    assert_eq!(refused(&node, &claims(json!(["not a room"]))).await.0, 401);
}

#[tokio::test]
async fn server_subscribe_on_a_single_memory_node() {
    let node = TestNode::start(with_team_rooms(jwt(test_config()))).await;
    let mut max = connect_as(&node, &lobby_only("max")).await;
    let sub = json!({"user": "max", "room": "team:2"});
    assert_eq!(post(&node, "/api/subscribe", sub.clone()).await.0, 202);
    server_joined(&mut max, "team:2", 0).await;
    let mut later = connect_as(&node, &lobby_only("max")).await;
    server_joined(&mut later, "team:2", 0).await;
    assert_eq!(post(&node, "/api/unsubscribe", sub).await.0, 202);
    assert_eq!(max.recv_type("left").await["reason"], "unsubscribed");
    // Rooms named user:… stay reserved, whoever asks.
    let reserved = json!({"user": "max", "room": "user:max"});
    assert_eq!(post(&node, "/api/subscribe", reserved).await.0, 202);
    let refused_room = max.recv_type("error").await;
    assert_eq!(refused_room["code"], "forbidden", "{refused_room}");
}

/// The channel-based parts on a Redis Cluster: user channels are shard channels (a service
/// kicks with `SPUBLISH` on the slot's owner), revocations travel on the classic broadcast
/// channel and live in one sorted set (one slot), server subscriptions in a set hash-tagged
/// with the user's channel.
#[tokio::test]
async fn on_a_redis_cluster_disconnect_revoke_and_server_subscribe_reach_every_node() {
    let cluster = crate::support::cluster::RedisCluster::start(3, 0);
    let prefix = unique_prefix("control", "cluster");
    let config = || with_team_rooms(jwt(test_config()).on_redis_cluster(&cluster, &prefix));
    let (a, b) = two_nodes_with(config).await;

    let mut kim_a = connect_as(&a, &lobby_only("kim")).await;
    let mut kim_b = connect_as(&b, &lobby_only("kim")).await;
    let sub = json!({"user": "kim", "room": "team:5"});
    assert_eq!(post(&a, "/api/subscribe", sub).await.0, 202);
    server_joined(&mut kim_a, "team:5", 0).await;
    server_joined(&mut kim_b, "team:5", 0).await;
    let mut later = connect_as(&a, &lobby_only("kim")).await;
    server_joined(&mut later, "team:5", 0).await;
    still_receives(&b, &mut kim_a, "team:5", 1).await;

    let channel = format!("{prefix}user:kim");
    let owner = cluster.master_port_for_slot(cluster.slot_of(&channel));
    let mut conn = redis_conn(&format!("redis://127.0.0.1:{owner}")).await;
    let _: i64 = redis::cmd("SPUBLISH")
        .arg(&channel)
        .arg(r#"{"control":"disconnect","code":4000,"reason":"shard"}"#)
        .query_async(&mut conn)
        .await
        .expect("SPUBLISH");
    for client in [&mut kim_a, &mut kim_b, &mut later] {
        assert_eq!(close_of(client).await, (4000, "shard".into()));
    }

    let old = token("liz");
    let mut liz_a = connect_as(&a, &old).await;
    let mut liz_b = connect_as(&b, &old).await;
    revoke(&b, json!({"user": "liz", "until": now() + 600})).await;
    assert_eq!(close_of(&mut liz_a).await.0, 4403);
    assert_eq!(close_of(&mut liz_b).await.0, 4403);
    let c = TestNode::start(config()).await;
    for node in [&a, &c] {
        assert_eq!(refused(node, &old).await.0, 401);
    }
}

/// Kicks and revocations under traffic cost the other members nothing: while a publisher sends
/// 300 messages into a room, ten of its members on two nodes are disconnected (admin API, a
/// Redis `PUBLISH`) or revoked; every other member receives every message, in order, once.
#[tokio::test]
async fn kicks_and_revocations_under_traffic_lose_no_other_members_messages() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("control", "under-load");
    let (a, b) = two_nodes_with(|| {
        jwt(test_config())
            .on_redis(&redis, &prefix)
            .with_rate(10_000)
    })
    .await;
    let mut watchers = Vec::new();
    let mut victims = Vec::new();
    for i in 0..10 {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut w = connect_as(node, &token(&format!("w{i}"))).await;
        w.join("lobby").await;
        watchers.push(w);
        let mut v = connect_as(node, &token(&format!("v{i}"))).await;
        v.join("lobby").await;
        victims.push(v);
    }
    let mut publisher = connect_as(&a, &token("pub")).await;
    publisher.join("lobby").await;
    const N: u64 = 300;
    let mut conn = redis_conn(&redis.url()).await;
    // Ten bursts of thirty publishes, a victim kicked after each while they are in flight.
    for i in 0..10u64 {
        for seq in i * 30..(i + 1) * 30 {
            publisher
                .send_json(json!({"type": "publish", "room": "lobby", "data": seq, "echo": false}))
                .await;
        }
        let user = format!("v{i}");
        match i % 3 {
            0 => assert_eq!(
                post(&b, "/api/disconnect", json!({"user": user})).await.0,
                202
            ),
            1 => revoke(&a, json!({"user": user, "until": now() + 600})).await,
            _ => {
                let channel = format!("{prefix}user:{user}");
                raw_publish(
                    &mut conn,
                    &channel,
                    r#"{"control":"disconnect","code":4403}"#,
                )
                .await;
            }
        }
    }
    let mut acks = 0;
    while acks < N {
        if publisher.recv_json().await["type"] == "ack" {
            acks += 1;
        }
    }
    for (i, victim) in victims.iter_mut().enumerate() {
        let expected = if i % 3 == 0 { 4000 } else { 4403 };
        assert_eq!(close_of(victim).await.0, expected, "victim {i}");
    }
    for (i, watcher) in watchers.iter_mut().enumerate() {
        for seq in 0..N {
            let m = watcher.recv_type("message").await;
            assert_eq!(m["data"], seq, "watcher {i}");
        }
    }
}
