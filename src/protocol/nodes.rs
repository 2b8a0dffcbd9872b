//! The cluster read side on the wire: what a node announces about itself through the broker
//! (its stats and its rooms, JSON in the `{prefix}nodes` / `{prefix}node-rooms` hashes), and
//! the bodies of `GET /api/nodes`, `/api/rooms`, `/api/rooms/ROOM`, `/api/history/ROOM` and the
//! events of `/api/stats/stream`.
//!
//! Leaves to others: gathering the numbers (`node::stats`), keeping and expiring them (the
//! broker's `NodeRegistry`), routes and statuses (`admin`).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::envelope::Envelope;

/// One node's live stats, as it announces them every `admin.stats_interval_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Unique per process (the registry's key): `server.node_id` may repeat across nodes.
    pub id: String,
    /// `server.node_id`.
    pub node: String,
    pub connections: u64,
    /// Distinct authenticated users with a connection here.
    pub users: u64,
    /// Rooms with a member here.
    pub rooms: u64,
    /// Publishes this node sent to the broker (clients and services), per second.
    pub messages_in_per_s: f64,
    /// Publications the broker handed to this node for its members, per second.
    pub messages_out_per_s: f64,
    /// Frames queued to this node's connections, per second.
    pub deliveries_per_s: f64,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    /// When this announcement was made (ms since the Unix epoch, the node's clock).
    pub last_seen: u64,
    /// The announcement counts until `last_seen + live_ms` (three stats intervals).
    pub live_ms: u64,
}

impl NodeStats {
    /// Whether the node still counts at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms <= self.last_seen.saturating_add(self.live_ms)
    }
}

/// A node's rooms with their local member counts: at most `admin.stats_max_rooms`, biggest
/// first; `total` says how many it has (more than listed: the cluster view is partial).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRooms {
    pub id: String,
    pub total: u64,
    /// `[room, members]` pairs.
    pub rooms: Vec<(String, u64)>,
}

/// The JSON a registry keeps for a node's stats.
pub fn encode_node_stats(stats: &NodeStats) -> String {
    serde_json::to_string(stats).unwrap_or_default()
}

/// A registry entry back; `None` for one that is not ours (a foreign or older writer).
pub fn decode_node_stats(json: &[u8]) -> Option<NodeStats> {
    serde_json::from_slice(json).ok()
}

pub fn encode_node_rooms(rooms: &NodeRooms) -> String {
    serde_json::to_string(rooms).unwrap_or_default()
}

pub fn decode_node_rooms(json: &[u8]) -> Option<NodeRooms> {
    serde_json::from_slice(json).ok()
}

/// `GET /api/nodes`, and each event of `/api/stats/stream`.
pub fn admin_nodes_body(nodes: &[NodeStats], now_ms: u64) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        ts: u64,
        nodes: &'a [NodeStats],
    }
    serde_json::to_string(&Body { ts: now_ms, nodes }).unwrap_or_default()
}

/// One room of `GET /api/rooms`: members summed over the nodes that announced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomSummary {
    pub room: String,
    pub members: u64,
    pub nodes: u64,
    pub history: bool,
    pub presence: bool,
}

/// `GET /api/rooms`: a page in name order; `next_cursor` continues it; `partial` when some
/// node has more rooms than it announces (`admin.stats_max_rooms`).
pub fn admin_rooms_body(rooms: &[RoomSummary], next_cursor: Option<&str>, partial: bool) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        rooms: &'a [RoomSummary],
        next_cursor: Option<&'a str>,
        partial: bool,
    }
    serde_json::to_string(&Body {
        rooms,
        next_cursor,
        partial,
    })
    .unwrap_or_default()
}

/// What a kept room's history holds now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistorySummary {
    pub length: u64,
    pub last_id: Option<String>,
}

/// `GET /api/rooms/ROOM`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomDetail {
    pub room: String,
    pub members: u64,
    /// `null` for a room that keeps no history.
    pub history: Option<HistorySummary>,
    pub presence: bool,
}

pub fn admin_room_body(detail: &RoomDetail) -> String {
    serde_json::to_string(detail).unwrap_or_default()
}

/// `GET /api/history/ROOM`: kept messages oldest first, the history's newest id, and, when
/// `since` was given, whether the history still reached back to it.
pub fn admin_history_body(
    room: &str,
    messages: &[&Envelope],
    last_id: Option<&str>,
    recovered: Option<bool>,
) -> String {
    #[derive(Serialize)]
    struct Message<'a> {
        id: &'a str,
        from: &'a str,
        ts: u64,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        room: &'a str,
        messages: Vec<Message<'a>>,
        last_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    let messages = messages
        .iter()
        .map(|e| Message {
            id: &e.id,
            from: &e.from,
            ts: e.ts,
            data: &e.data,
            key: e.key.as_deref(),
        })
        .collect();
    serde_json::to_string(&Body {
        room,
        messages,
        last_id,
        recovered,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_and_expire() {
        let stats = NodeStats {
            id: "abc".into(),
            node: "n1".into(),
            connections: 3,
            users: 2,
            rooms: 1,
            messages_in_per_s: 1.5,
            messages_out_per_s: 2.0,
            deliveries_per_s: 6.0,
            started_at: 10,
            last_seen: 1_000,
            live_ms: 3_000,
        };
        let back = decode_node_stats(encode_node_stats(&stats).as_bytes()).expect("decodes");
        assert_eq!(back, stats);
        assert!(stats.is_live(4_000));
        assert!(!stats.is_live(4_001));
        assert_eq!(decode_node_stats(b"{\"id\":1}"), None);
        let rooms = NodeRooms {
            id: "abc".into(),
            total: 5,
            rooms: vec![("a".into(), 2)],
        };
        let json = encode_node_rooms(&rooms);
        assert!(json.contains(r#"["a",2]"#), "{json}");
        assert_eq!(decode_node_rooms(json.as_bytes()), Some(rooms));
    }
}
