//! The Redis Cluster test support itself: a real cluster forms, routes keys by slot, and fails
//! over when a master dies.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::time::Instant;

use crate::support::WAIT;
use crate::support::cluster::RedisCluster;

fn connect(port: u16) -> redis::Connection {
    let con = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("client")
        .get_connection_with_timeout(WAIT)
        .expect("connect");
    con.set_read_timeout(Some(WAIT)).expect("read timeout");
    con
}

/// `SSUBSCRIBE channel` on a raw connection (the sync `redis` API has no sharded pub/sub);
/// returns once the server confirmed. Keep the stream open to stay subscribed.
fn ssubscribe(port: u16, channel: &str) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    write!(
        stream,
        "*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    )
    .expect("send SSUBSCRIBE");
    // Reply: *3 $10 ssubscribe $N channel :1, six lines.
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut reply = Vec::new();
    for _ in 0..6 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("SSUBSCRIBE reply");
        reply.push(line.trim_end().to_owned());
    }
    assert_eq!(reply[0], "*3", "SSUBSCRIBE reply {reply:?}");
    assert_eq!(reply[2], "ssubscribe", "SSUBSCRIBE reply {reply:?}");
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_cluster_forms_routes_by_slot_and_fails_over() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start_with_timeout(3, 1, 1000);
    eprintln!("cluster of 6 up in {:?}", started.elapsed());

    assert_eq!(cluster.ports().len(), 6);
    assert_eq!(cluster.seed_urls().len(), 6);
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3, "masters {masters:?}");

    // One key per master.
    let mut key_of_master = BTreeMap::new();
    for i in 0..1000 {
        let key = format!("room-{i}");
        let master = cluster.master_port_for_slot(cluster.slot_of(&key));
        key_of_master.entry(master).or_insert(key);
        if key_of_master.len() == 3 {
            break;
        }
    }
    assert_eq!(
        key_of_master.keys().copied().collect::<Vec<_>>(),
        masters,
        "three keys on three different masters"
    );

    // Each key is served by its master, and MOVED elsewhere; the replica has the write.
    for (&master, key) in &key_of_master {
        let mut con = connect(master);
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(format!("value-of-{key}"))
            .query(&mut con)
            .expect("SET on the slot's master");
        let got: String = redis::cmd("GET").arg(key).query(&mut con).expect("GET");
        assert_eq!(got, format!("value-of-{key}"));
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(WAIT.as_millis() as u64)
            .query(&mut con)
            .expect("WAIT");
        assert_eq!(acked, 1, "the replica of {master} acknowledged the write");
        let other = masters
            .iter()
            .copied()
            .find(|&m| m != master)
            .expect("other");
        let moved = redis::cmd("GET")
            .arg(key)
            .query::<Option<String>>(&mut connect(other))
            .expect_err("another master redirects");
        assert!(
            moved.to_string().to_uppercase().contains("MOVED"),
            "GET {key} on {other}: {moved}"
        );
    }

    // Sharded pub/sub: a subscription lives on the slot's master.
    let (&first_master, first_key) = key_of_master.iter().next().expect("a key");
    let _subscriber = ssubscribe(first_master, first_key);
    assert_eq!(
        cluster.shard_channels(first_master),
        vec![first_key.clone()]
    );

    // Kill that master: its replica takes over its slots.
    let slot = cluster.slot_of(first_key);
    let started = Instant::now();
    cluster.kill(first_master);
    let new_master = cluster.wait_for_failover(first_master);
    eprintln!(
        "failover from {first_master} to {new_master} in {:?}",
        started.elapsed()
    );
    assert_ne!(new_master, first_master);
    assert_eq!(cluster.master_port_for_slot(slot), new_master);
    let masters_now = cluster.master_ports();
    assert_eq!(
        masters_now.len(),
        3,
        "masters after failover {masters_now:?}"
    );
    assert!(!masters_now.contains(&first_master));
    assert!(masters_now.contains(&new_master));
    let got: String = redis::cmd("GET")
        .arg(first_key)
        .query(&mut connect(new_master))
        .expect("GET on the new master");
    assert_eq!(got, format!("value-of-{first_key}"));
}
