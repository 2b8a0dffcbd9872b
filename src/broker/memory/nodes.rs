//! The memory broker's node registry: the announcements of the nodes sharing this process's
//! broker (in practice the one node), forgotten once their `live_ms` has passed, as Redis
//! forgets them.
//!
//! Leaves to others: what is announced and when (`node::stats`).

use std::collections::BTreeMap;

use super::MemoryBroker;
use crate::broker::{BoxFuture, BrokerError, NodeRegistry, NodeRooms, NodeStats};
use crate::clock::now_ms;

/// Each node's last announcement, by id.
#[derive(Default)]
pub(super) struct NodeTable {
    nodes: BTreeMap<String, (NodeStats, NodeRooms)>,
}

impl NodeTable {
    /// The live entries, after forgetting the expired ones.
    fn live(&mut self, now_ms: u64) -> impl Iterator<Item = &(NodeStats, NodeRooms)> {
        self.nodes.retain(|_, (stats, _)| stats.is_live(now_ms));
        self.nodes.values()
    }
}

impl MemoryBroker {
    fn node_table(&self) -> std::sync::MutexGuard<'_, NodeTable> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NodeRegistry for MemoryBroker {
    fn announce(
        &self,
        stats: NodeStats,
        rooms: NodeRooms,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.node_table()
            .nodes
            .insert(stats.id.clone(), (stats, rooms));
        Box::pin(async { Ok(()) })
    }

    fn withdraw(&self, id: String) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.node_table().nodes.remove(&id);
        Box::pin(async { Ok(()) })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeStats>, BrokerError>> {
        let nodes = self
            .node_table()
            .live(now_ms())
            .map(|(stats, _)| stats.clone())
            .collect();
        Box::pin(async { Ok(nodes) })
    }

    fn node_rooms(&self) -> BoxFuture<'_, Result<Vec<NodeRooms>, BrokerError>> {
        let rooms = self
            .node_table()
            .live(now_ms())
            .map(|(_, rooms)| rooms.clone())
            .collect();
        Box::pin(async { Ok(rooms) })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    fn stats(id: &str, last_seen: u64) -> NodeStats {
        NodeStats {
            id: id.into(),
            node: "n".into(),
            connections: 0,
            users: 0,
            rooms: 0,
            messages_in_per_s: 0.0,
            messages_out_per_s: 0.0,
            deliveries_per_s: 0.0,
            started_at: 0,
            last_seen,
            live_ms: 3_000,
        }
    }

    #[tokio::test]
    async fn expired_and_withdrawn_nodes_are_not_listed() {
        let (tx, _rx) = mpsc::channel(1);
        let broker = MemoryBroker::new(tx, Duration::from_secs(1));
        let rooms = |id: &str| NodeRooms {
            id: id.into(),
            ..NodeRooms::default()
        };
        for (id, seen) in [("a", now_ms()), ("b", now_ms()), ("old", 1)] {
            broker
                .announce(stats(id, seen), rooms(id))
                .await
                .expect("ok");
        }
        let ids = |nodes: Vec<NodeStats>| nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
        assert_eq!(ids(broker.nodes().await.expect("ok")), ["a", "b"]);
        broker.withdraw("a".into()).await.expect("ok");
        assert_eq!(ids(broker.nodes().await.expect("ok")), ["b"]);
        let listed = broker.node_rooms().await.expect("ok");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, "b");
    }
}
