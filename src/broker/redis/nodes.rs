//! The node registry in Redis: two hashes keyed by node id, `{prefix}nodes` (id → the node's
//! stats, JSON) and `{prefix}node-rooms` (id → its rooms with local member counts, JSON).
//! Each announcement rewrites the node's fields and pushes both hashes' expiry out, so the
//! hashes vanish once every node is gone; a single dead node's fields are dropped by the first
//! read that finds its `last_seen + live_ms` passed (a node that stops cleanly withdraws them).
//!
//! `last_seen` is the announcing node's clock and the reader's clock decides: nodes' clocks
//! must agree to well within `live_ms` (three stats intervals), as NTP keeps them.
//!
//! Leaves to others: what is announced and when (`node::stats`), the JSON (`protocol`).

use super::RedisBroker;
use super::commands::{send_calls, with_functions};
use crate::broker::{BoxFuture, BrokerError, NodeRegistry, NodeRooms, NodeStats};
use crate::clock::now_ms;
use crate::protocol::{decode_node_rooms, decode_node_stats, encode_node_rooms, encode_node_stats};

impl RedisBroker {
    fn nodes_key(&self) -> String {
        format!("{}nodes", self.shared.prefix)
    }

    fn node_rooms_key(&self) -> String {
        format!("{}node-rooms", self.shared.prefix)
    }

    /// `HDEL` of `ids` from both hashes.
    async fn forget_nodes(&self, ids: &[String]) -> Result<(), BrokerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let calls: Vec<redis::Cmd> = [self.nodes_key(), self.node_rooms_key()]
            .into_iter()
            .map(|key| {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(key).arg(ids);
                cmd
            })
            .collect();
        send_calls::<i64>(&self.shared.commands, &calls)
            .await
            .map(|_| ())
    }

    /// Every live node's stats; the expired ones are forgotten.
    async fn live_nodes(&self) -> Result<Vec<NodeStats>, BrokerError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.nodes_key());
        let entries: Vec<(String, Vec<u8>)> =
            with_functions(&self.shared.commands, || cmd.clone()).await?;
        let now = now_ms();
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (id, json) in entries {
            match decode_node_stats(&json) {
                Some(stats) if stats.is_live(now) && stats.id == id => live.push(stats),
                _ => dead.push(id),
            }
        }
        // Another reader may drop them at the same time: HDEL of a missing field is harmless.
        self.forget_nodes(&dead).await?;
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}

impl NodeRegistry for RedisBroker {
    fn announce(
        &self,
        stats: NodeStats,
        rooms: NodeRooms,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            // Both hashes outlive every node's announcement by one more life.
            let expire_ms = stats.live_ms.saturating_mul(2).max(1);
            let mut calls = Vec::with_capacity(4);
            for (key, value) in [
                (self.nodes_key(), encode_node_stats(&stats)),
                (self.node_rooms_key(), encode_node_rooms(&rooms)),
            ] {
                let mut set = redis::cmd("HSET");
                set.arg(&key).arg(&stats.id).arg(value);
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&key).arg(expire_ms);
                calls.extend([set, expire]);
            }
            send_calls::<i64>(&self.shared.commands, &calls)
                .await
                .map(|_| ())
        })
    }

    fn withdraw(&self, id: String) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.forget_nodes(&[id]).await })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStats>, BrokerError>> {
        Box::pin(self.live_nodes())
    }

    fn node_rooms(&self) -> BoxFuture<'_, Result<Vec<NodeRooms>, BrokerError>> {
        Box::pin(async move {
            let live = self.live_nodes().await?;
            if live.is_empty() {
                return Ok(Vec::new());
            }
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.node_rooms_key());
            for node in &live {
                cmd.arg(&node.id);
            }
            let found: Vec<Option<Vec<u8>>> =
                with_functions(&self.shared.commands, || cmd.clone()).await?;
            Ok(found
                .iter()
                .flatten()
                .filter_map(|json| decode_node_rooms(json))
                .collect())
        })
    }
}
