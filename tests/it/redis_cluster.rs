//! The Redis broker on a real Redis Cluster (issue 10): `redis-server` processes in cluster
//! mode on free loopback ports, real gateway nodes, real WebSocket clients. Room and user
//! channels are shard channels (`SSUBSCRIBE` on the slot's owner), the broadcast is classic
//! pub/sub; a shard's master failing over, or handing its role to its replica, moves the
//! subscriptions to the new owner without any client reconnecting.
//!
//! Every cluster and node is stopped on drop, also when a test fails; every wait is bounded
//! by `support::WAIT` (the cluster's own start and failover by the harness's bounds).

use std::collections::HashMap;

use crate::support::cluster::RedisCluster;
use crate::support::*;
use redis::aio::MultiplexedConnection;
use roomcast::config::Config;
use serde_json::{Value, json};

fn unique_prefix(test: &str) -> String {
    crate::support::unique_prefix("rc-cluster", test)
}

fn cluster_config(cluster: &RedisCluster, prefix: &str) -> Config {
    test_config()
        .on_redis_cluster(cluster, prefix)
        .with_rate(10_000)
}

async fn start_nodes(cluster: &RedisCluster, prefix: &str, n: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut config = cluster_config(cluster, prefix);
        config.server.node_id = format!("node-{i}");
        nodes.push(TestNode::start(config).await);
    }
    wait_ready(&nodes, "node ready on the cluster").await;
    nodes
}

async fn conn_to(port: u16) -> MultiplexedConnection {
    redis_conn(&format!("redis://127.0.0.1:{port}")).await
}

/// One room name per master: rooms whose channel `{prefix}room:NAME` hashes to a slot of it.
fn one_room_per_master(cluster: &RedisCluster, prefix: &str) -> HashMap<u16, String> {
    let masters = cluster.master_ports();
    let mut rooms = HashMap::new();
    for i in 0.. {
        let room = format!("room-{i}");
        let slot = cluster.slot_of(&format!("{prefix}room:{room}"));
        rooms
            .entry(cluster.master_port_for_slot(slot))
            .or_insert(room);
        if rooms.len() == masters.len() {
            break;
        }
        assert!(i < 10_000, "no room found for every master");
    }
    rooms
}

/// Publish and read until both the ack and the publisher's own copy arrived (the copy may come
/// first: it travels through Redis while the ack waits for Redis's answer).
async fn publish_and_echo(client: &mut Client, mut publish: Value) -> (Value, Value) {
    publish["type"] = json!("publish");
    publish["id"] = json!("own");
    client.send_json(publish.clone()).await;
    let (mut ack, mut echo) = (None, None);
    while ack.is_none() || echo.is_none() {
        let frame = client.recv_json().await;
        if frame["id"] == "own" {
            ack = Some(frame);
        } else if frame["type"] == "message" && frame["room"] == publish["room"] {
            echo = Some(frame);
        }
    }
    (ack.unwrap_or_default(), echo.unwrap_or_default())
}

async fn next_message(client: &mut Client) -> Value {
    client.recv_type("message").await
}

/// Publish until one is acknowledged: right after a failover the node may still answer
/// `unavailable` while it resubscribes. Returns the acknowledged data's marker.
async fn publish_until_acked(client: &mut Client, room: &str) -> u64 {
    for attempt in 0..200u64 {
        let reply = client
            .request(
                json!({"type":"publish","room":room,"data":{"attempt":attempt}}),
                &format!("p{attempt}"),
            )
            .await;
        match reply["type"].as_str() {
            Some("ack") => return attempt,
            Some("error") => {
                assert_eq!(reply["code"], "unavailable", "{reply}");
                // Bounded by the attempts; the node answers within its command timeout.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    panic!("no publish acknowledged after the failover");
}

/// Read messages until the one carrying `attempt` arrives (earlier attempts may have been
/// published before the node heard of the outage and arrive too, or not).
async fn wait_for_attempt(client: &mut Client, room: &str, attempt: impl Into<Value>) {
    let attempt = attempt.into();
    loop {
        let m = next_message(client).await;
        if m["room"] == room && m["data"]["attempt"] == attempt {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rooms_on_every_shard_reach_members_on_other_nodes() {
    let cluster = RedisCluster::start(3, 0);
    let prefix = unique_prefix("spread");
    let nodes = start_nodes(&cluster, &prefix, 2).await;
    let rooms = one_room_per_master(&cluster, &prefix);
    assert_eq!(rooms.len(), 3, "a room on each of the 3 masters");

    let mut on_a = nodes[0].connect().await;
    let mut on_b = nodes[1].connect().await;
    for room in rooms.values() {
        on_a.join(room).await;
        on_b.join(room).await;
    }

    // Each room's channel is a shard channel on its own master only.
    for (&port, room) in &rooms {
        let channel = format!("{prefix}room:{room}");
        for other in cluster.master_ports() {
            let channels = cluster.shard_channels(other);
            assert_eq!(
                channels.contains(&channel),
                other == port,
                "{channel} on {other}: {channels:?} (owner {port})"
            );
        }
    }

    // A publish on one node reaches the members on the other, for every shard.
    for room in rooms.values() {
        let (ack, echo) =
            publish_and_echo(&mut on_a, json!({"room":room,"data":{"in":room}})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let m = next_message(&mut on_b).await;
        for m in [m, echo] {
            assert_eq!(m["room"], room.as_str());
            assert_eq!(m["data"], json!({"in": room}));
        }
    }

    // A service publishes with one SPUBLISH on the room's shard (what `redis-cli -c` does).
    let (&port, room) = rooms.iter().next().expect("a room");
    let mut conn = conn_to(port).await;
    let receivers: i64 = redis::cmd("SPUBLISH")
        .arg(format!("{prefix}room:{room}"))
        .arg(r#"{"data":{"from":"service"}}"#)
        .query_async(&mut conn)
        .await
        .expect("SPUBLISH");
    assert_eq!(receivers, 2, "one subscription per gateway node");
    for client in [&mut on_a, &mut on_b] {
        let m = next_message(client).await;
        assert_eq!(m["from"], "server");
        assert_eq!(m["data"], json!({"from":"service"}));
    }

    // The broadcast is classic pub/sub: a PUBLISH on any node reaches every gateway node.
    let mut any = conn_to(cluster.master_ports()[2]).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}broadcast"))
        .arg(r#"{"data":{"notice":1}}"#)
        .query_async(&mut any)
        .await
        .expect("PUBLISH");
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(
            client.recv_type("broadcast").await["data"],
            json!({"notice":1})
        );
    }

    // Leaving releases the shard subscription (after the unsubscribe grace).
    let channel = format!("{prefix}room:{room}");
    for client in [&mut on_a, &mut on_b] {
        let left = client
            .request(json!({"type":"leave","room":room}), "l")
            .await;
        assert_eq!(left["type"], "left");
    }
    eventually("the shard channel is released", || async {
        !cluster.shard_channels(port).contains(&channel)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn history_rooms_keep_and_publish_on_their_shard() {
    let cluster = RedisCluster::start(3, 0);
    let prefix = unique_prefix("history");
    let mut config = cluster_config(&cluster, &prefix);
    config.history.rooms = vec![roomcast::config::HistoryRule {
        pattern: "*".into(),
        size: 10,
        ttl_s: 60,
    }];
    let node = TestNode::start(config).await;
    let url = node.admin_url("/readyz");
    eventually("node ready", || async { http_status(&url).await == 200 }).await;
    let rooms = one_room_per_master(&cluster, &prefix);

    let mut member = node.connect().await;
    for room in rooms.values() {
        member.join(room).await;
        let (ack, m) = publish_and_echo(&mut member, json!({"room":room,"data":1})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert!(
            m["id"].as_str().is_some_and(|id| id.ends_with("-1")),
            "kept as the first of its room: {m}"
        );
    }
    // A service keeps and publishes with FCALL on the room's shard.
    let (&port, room) = rooms.iter().next().expect("a room");
    let mut conn = conn_to(port).await;
    let id: String = redis::cmd("FCALL")
        .arg("roomcast_publish")
        .arg(1)
        .arg(format!("{prefix}room:{room}"))
        .arg(r#"{"data":"kept"}"#)
        .query_async(&mut conn)
        .await
        .expect("FCALL roomcast_publish");
    assert!(id.ends_with("-2"), "{id}");
    let m = next_message(&mut member).await;
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["data"], "kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_master_fails_over_and_traffic_resumes_without_reconnecting() {
    let mut cluster = RedisCluster::start_with_timeout(3, 1, 1000);
    let prefix = unique_prefix("failover");
    let nodes = start_nodes(&cluster, &prefix, 2).await;
    let rooms = one_room_per_master(&cluster, &prefix);
    let victim = cluster.master_ports()[0];
    let room = rooms[&victim].clone();
    let other_room = rooms
        .iter()
        .find(|(port, _)| **port != victim)
        .map(|(_, room)| room.clone())
        .expect("a room on another master");

    let mut on_a = nodes[0].connect().await;
    let mut on_b = nodes[1].connect().await;
    for client in [&mut on_a, &mut on_b] {
        client.join(&room).await;
        client.join(&other_room).await;
    }
    let (ack, _) =
        publish_and_echo(&mut on_a, json!({"room":room,"data":{"attempt":"before"}})).await;
    assert_eq!(ack["type"], "ack");
    wait_for_attempt(&mut on_b, &room, "before").await;

    cluster.kill(victim);
    let promoted = cluster.wait_for_failover(victim);
    assert_ne!(promoted, victim);

    // The same connections: publishing works again once the node has followed the slot.
    // Each node is back once it resubscribed on the new owner (what it publishes while the
    // other is still away is lost for a room without history, as with a single Redis).
    for node in &nodes {
        eventually("the node is back on the cluster", || async {
            let text = node.metrics().await;
            metric(&text, "roomcast_broker_up") == 1.0
                && metric(&text, "roomcast_broker_reconnects_total") >= 1.0
        })
        .await;
    }
    let attempt = publish_until_acked(&mut on_a, &room).await;
    wait_for_attempt(&mut on_b, &room, attempt).await;
    let attempt = publish_until_acked(&mut on_b, &other_room).await;
    wait_for_attempt(&mut on_a, &other_room, attempt).await;
    let channel = format!("{prefix}room:{room}");
    assert!(
        cluster.shard_channels(promoted).contains(&channel),
        "the room's channel moved to the promoted replica"
    );
    for node in &nodes {
        let text = node.metrics().await;
        assert!(
            metric(
                &text,
                r#"roomcast_broker_resubscribes_total{reason="reconnect"}"#
            ) >= 1.0,
            "the resubscription is counted"
        );
    }
    // Nobody was disconnected: both clients still answer on their first connection.
    for client in [&mut on_a, &mut on_b] {
        let pong = client.request(json!({"type":"ping"}), "still-here").await;
        assert_eq!(pong["type"], "pong");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manual_failover_moves_subscriptions_without_an_outage() {
    let cluster = RedisCluster::start_with_timeout(3, 1, 1000);
    let prefix = unique_prefix("handover");
    let nodes = start_nodes(&cluster, &prefix, 2).await;
    let rooms = one_room_per_master(&cluster, &prefix);
    let old_master = cluster.master_ports()[0];
    let room = rooms[&old_master].clone();
    let mut on_a = nodes[0].connect().await;
    let mut on_b = nodes[1].connect().await;
    on_a.join(&room).await;
    on_b.join(&room).await;

    // The replica takes over in agreement with its master (CLUSTER FAILOVER): the old master
    // becomes a replica and drops its shard subscriptions with SUNSUBSCRIBE.
    let replica = cluster.replica_of(old_master);
    let mut conn = conn_to(replica).await;
    let _: String = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER FAILOVER");
    let channel = format!("{prefix}room:{room}");
    eventually("the subscriptions follow to the new master", || async {
        cluster.master_ports().contains(&replica)
            && cluster.shard_channels(replica).contains(&channel)
    })
    .await;
    let attempt = publish_until_acked(&mut on_a, &room).await;
    wait_for_attempt(&mut on_b, &room, attempt).await;
    for node in &nodes {
        let text = node.metrics().await;
        assert!(
            metric(
                &text,
                r#"roomcast_broker_resubscribes_total{reason="sunsubscribe"}"#
            ) >= 1.0,
            "the move is counted"
        );
        assert_eq!(
            metric(&text, "roomcast_broker_reconnects_total"),
            0.0,
            "no outage: the links stayed up"
        );
    }
}

async fn node_id(port: u16) -> String {
    let mut conn = conn_to(port).await;
    redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER MYID")
}

/// Hand an empty slot from one master to another, the way `redis-cli --cluster reshard`
/// does (importing, migrating, then the new owner on both).
async fn move_slot(slot: u16, from: u16, to: u16) {
    let (from_id, to_id) = (node_id(from).await, node_id(to).await);
    let mut source = conn_to(from).await;
    let mut target = conn_to(to).await;
    let setslot = |state: &str, id: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
        cmd
    };
    let _: () = setslot("IMPORTING", &from_id)
        .query_async(&mut target)
        .await
        .expect("IMPORTING");
    let _: () = setslot("MIGRATING", &to_id)
        .query_async(&mut source)
        .await
        .expect("MIGRATING");
    let _: () = setslot("NODE", &to_id)
        .query_async(&mut target)
        .await
        .expect("NODE on the target");
    let _: () = setslot("NODE", &to_id)
        .query_async(&mut source)
        .await
        .expect("NODE on the source");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrated_slot_is_followed_on_moved_and_on_sunsubscribe() {
    let cluster = RedisCluster::start(3, 0);
    let prefix = unique_prefix("reshard");
    let nodes = start_nodes(&cluster, &prefix, 1).await;
    let masters = cluster.master_ports();
    let (from, to) = (masters[0], masters[1]);
    // Two rooms on `from`, in different slots.
    let mut rooms = Vec::new();
    for i in 0.. {
        let room = format!("room-{i}");
        let slot = cluster.slot_of(&format!("{prefix}room:{room}"));
        if cluster.master_port_for_slot(slot) == from && rooms.iter().all(|(_, s)| *s != slot) {
            rooms.push((room, slot));
        }
        if rooms.len() == 2 {
            break;
        }
        assert!(i < 10_000, "no two rooms on one master");
    }
    let (subscribed, subscribed_slot) = rooms[0].clone();
    let (later, later_slot) = rooms[1].clone();
    let mut client = nodes[0].connect().await;
    client.join(&subscribed).await;

    // The node still believes `from` owns the later room's slot: its SSUBSCRIBE gets MOVED.
    move_slot(later_slot, from, to).await;
    client.join(&later).await;
    let later_channel = format!("{prefix}room:{later}");
    assert!(cluster.shard_channels(to).contains(&later_channel));
    assert!(!cluster.shard_channels(from).contains(&later_channel));

    // A subscribed slot moves: `from` drops the subscription with SUNSUBSCRIBE.
    move_slot(subscribed_slot, from, to).await;
    let channel = format!("{prefix}room:{subscribed}");
    eventually("the subscription follows its slot", || async {
        cluster.shard_channels(to).contains(&channel)
    })
    .await;
    for room in [&subscribed, &later] {
        let (ack, echo) = publish_and_echo(&mut client, json!({"room":room,"data":room})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(echo["data"], room.as_str());
    }
    let text = nodes[0].metrics().await;
    for reason in ["moved", "sunsubscribe"] {
        assert_eq!(
            metric(
                &text,
                &format!(r#"roomcast_broker_resubscribes_total{{reason="{reason}"}}"#)
            ),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(metric(&text, "roomcast_broker_reconnects_total"), 0.0);
}
