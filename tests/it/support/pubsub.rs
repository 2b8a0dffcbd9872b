//! Redis pub/sub seen from outside the nodes: subscriber counts, the channels in use, a plain
//! `PUBLISH` as a service would send it, and bounded waits on those counts.

use redis::aio::MultiplexedConnection;

use super::eventually;

pub async fn numsub(conn: &mut MultiplexedConnection, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    n
}

pub async fn pubsub_channels(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(conn)
        .await
        .expect("PUBSUB CHANNELS")
}

pub async fn raw_publish(conn: &mut MultiplexedConnection, channel: &str, payload: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(conn)
        .await
        .expect("PUBLISH")
}

/// Wait until `channel` has `n` subscribers.
pub async fn wait_numsub(conn: &MultiplexedConnection, channel: &str, n: i64, what: &str) {
    eventually(what, || {
        let mut conn = conn.clone();
        let channel = channel.to_owned();
        async move { numsub(&mut conn, &channel).await == n }
    })
    .await;
}

/// Wait until no channel matches `pattern`.
pub async fn wait_no_channels(conn: &MultiplexedConnection, pattern: &str, what: &str) {
    eventually(what, || {
        let mut conn = conn.clone();
        let pattern = pattern.to_owned();
        async move { pubsub_channels(&mut conn, &pattern).await.is_empty() }
    })
    .await;
}
