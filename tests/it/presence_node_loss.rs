//! Presence (issue 11) when a node goes away or Redis forgets: a killed node drops out within
//! `presence.ttl_s` and its users are announced, a node restarted with the same id leaves no
//! ghosts, a node that shuts down announces its users at once, nodes write their members again
//! after Redis loses its data. The real binary where a node must be SIGKILLed; the clients and
//! configurations are `presence`'s.

use std::time::{Duration, Instant};

use super::presence::{
    SECRET, connect_as, ev, next_member_event, prefix, presence_becomes, redis_config,
};
use crate::support::*;
use serde_json::json;

/// The real binary as a node of the cluster, with `presence.rooms` from a file.
async fn spawn_node(
    redis: &RedisServer,
    prefix: &str,
    node_id: &str,
    ttl_s: u64,
) -> (Child, String) {
    let config_toml = format!(
        "[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n[presence]\nttl_s = {ttl_s}\n\
         rooms = [{{ pattern = \"chat:*\", events = true }}]\n"
    );
    BinaryOnRedis::new(redis, prefix, &config_toml)
        .flag("--node-id", node_id)
        .spawn()
        .await
}

#[tokio::test]
async fn a_killed_node_drops_out_within_the_ttl_and_its_users_are_announced() {
    const TTL: Duration = Duration::from_secs(2);
    let redis = RedisServer::start();
    let p = prefix("kill");
    let (mut doomed, doomed_url) = spawn_node(&redis, &p, "doomed", TTL.as_secs()).await;
    let survivor = TestNode::start(redis_config(&redis, &p, "survivor", TTL.as_secs())).await;
    let mut watcher = connect_as(&survivor.ws_url(), "watcher").await;
    watcher.join("chat:k").await;
    let mut both_here = connect_as(&survivor.ws_url(), "both").await;
    both_here.join("chat:k").await;
    let mut doomed_clients = Vec::new();
    for user in ["both", "x", "y"] {
        let mut c = connect_as(&doomed_url, user).await;
        c.join("chat:k").await;
        doomed_clients.push(c);
    }
    presence_becomes(
        &mut watcher,
        "chat:k",
        &[("both", 2), ("watcher", 1), ("x", 1), ("y", 1)],
    )
    .await;
    let mut joined = Vec::new();
    while joined.len() < 4 {
        joined.push(next_member_event(&mut watcher, "chat:k").await);
    }
    joined.sort();
    assert_eq!(
        joined,
        [
            ev("member_joined", "both"),
            ev("member_joined", "watcher"),
            ev("member_joined", "x"),
            ev("member_joined", "y"),
        ]
    );

    doomed.0.kill().expect("SIGKILL the node");
    let _ = doomed.0.wait();
    let killed = Instant::now();
    let mut left = vec![
        next_member_event(&mut watcher, "chat:k").await,
        next_member_event(&mut watcher, "chat:k").await,
    ];
    let elapsed = killed.elapsed();
    left.sort();
    assert_eq!(
        left,
        [ev("member_left", "x"), ev("member_left", "y")],
        "`both` is still on the survivor"
    );
    // By construction within 3/4 of the ttl plus one write (docs/protocol.md "Presence").
    eprintln!("member_left {elapsed:?} after the SIGKILL (ttl {TTL:?})");
    assert!(elapsed <= TTL, "member_left within the ttl: {elapsed:?}");
    presence_becomes(&mut watcher, "chat:k", &[("both", 1), ("watcher", 1)]).await;
    // Nothing more: the next frame is the reply to this ping.
    assert_eq!(
        watcher.request(json!({"type": "ping"}), "end").await["type"],
        "pong"
    );
    assert!(watcher.backlog.is_empty(), "{:?}", watcher.backlog);
}

#[tokio::test]
async fn a_node_restarted_with_the_same_id_leaves_no_ghosts() {
    // A long ttl: what removes the ghost is the restart, not the ttl.
    const TTL_S: u64 = 60;
    let redis = RedisServer::start();
    let p = prefix("restart");
    let survivor = TestNode::start(redis_config(&redis, &p, "survivor", TTL_S)).await;
    let mut watcher = connect_as(&survivor.ws_url(), "watcher").await;
    watcher.join("chat:g").await;
    let (mut first, url) = spawn_node(&redis, &p, "phoenix", TTL_S).await;
    let mut ghost = connect_as(&url, "ghost").await;
    ghost.join("chat:g").await;
    presence_becomes(&mut watcher, "chat:g", &[("ghost", 1), ("watcher", 1)]).await;
    first.0.kill().expect("SIGKILL the node");
    let _ = first.0.wait();

    let started = Instant::now();
    let (_second, url) = spawn_node(&redis, &p, "phoenix", TTL_S).await;
    let mut fresh = connect_as(&url, "fresh").await;
    fresh.join("chat:g").await;
    presence_becomes(&mut watcher, "chat:g", &[("fresh", 1), ("watcher", 1)]).await;
    assert!(started.elapsed() < Duration::from_secs(TTL_S / 3));
    let mut events = Vec::new();
    while !events.contains(&ev("member_left", "ghost")) {
        events.push(next_member_event(&mut watcher, "chat:g").await);
    }
    assert!(events.contains(&ev("member_joined", "fresh")), "{events:?}");
}

#[tokio::test]
async fn a_node_that_shuts_down_announces_its_users_at_once() {
    // A long ttl: member_left comes from the shutdown, not from the ttl.
    const TTL_S: u64 = 60;
    let redis = RedisServer::start();
    let p = prefix("stop");
    let a = TestNode::start(redis_config(&redis, &p, "a", TTL_S)).await;
    let b = TestNode::start(redis_config(&redis, &p, "b", TTL_S)).await;
    let mut watcher = connect_as(&a.ws_url(), "watcher").await;
    watcher.join("chat:s").await;
    let mut leaving = connect_as(&b.ws_url(), "leaving").await;
    leaving.join("chat:s").await;
    presence_becomes(&mut watcher, "chat:s", &[("leaving", 1), ("watcher", 1)]).await;
    let stopping = tokio::spawn(b.stop());
    leaving.client.expect_close(1001).await;
    let started = Instant::now();
    let mut events = Vec::new();
    while !events.contains(&ev("member_left", "leaving")) {
        events.push(next_member_event(&mut watcher, "chat:s").await);
    }
    assert!(started.elapsed() < Duration::from_secs(TTL_S / 3));
    presence_becomes(&mut watcher, "chat:s", &[("watcher", 1)]).await;
    stopping.await.expect("join").expect("stops cleanly");
}

#[tokio::test]
async fn nodes_write_their_members_again_after_redis_loses_its_data() {
    const TTL_S: u64 = 2;
    let mut redis = RedisServer::start();
    let port = redis.port;
    let p = prefix("lost");
    let a = TestNode::start(redis_config(&redis, &p, "a", TTL_S)).await;
    let b = TestNode::start(redis_config(&redis, &p, "b", TTL_S)).await;
    let mut watcher = connect_as(&a.ws_url(), "watcher").await;
    watcher.join("quiet:l").await;
    let mut member = connect_as(&b.ws_url(), "member").await;
    member.join("quiet:l").await;
    presence_becomes(&mut watcher, "quiet:l", &[("member", 1), ("watcher", 1)]).await;

    // A restart without persistence: every presence key is gone.
    redis.stop();
    redis = RedisServer::start_on(port);
    presence_becomes(&mut watcher, "quiet:l", &[("member", 1), ("watcher", 1)]).await;
    let mut conn = redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = format!("{{{p}room:quiet:l}}:presence");
    let deadline = Instant::now() + WAIT;
    loop {
        let mut nodes: Vec<String> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .expect("ZRANGE");
        nodes.sort();
        if nodes == ["a", "b"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both nodes write their members again: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
