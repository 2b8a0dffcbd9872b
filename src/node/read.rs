//! The cluster read side the admin API answers from: live nodes, rooms with their members
//! summed over the nodes that announced them, one room's members / history / presence, and
//! a kept room's messages.
//!
//! Member counts are those of the nodes' last announcements (at most one stats interval old,
//! and only each node's `admin.stats_max_rooms` biggest rooms). What nodes announce is
//! `stats`'s; the history itself is the broker's; routes and statuses are `admin`'s.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Node;
use super::history::resumable;
use crate::broker::{BrokerError, Envelope, NodeStats, Position};
use crate::protocol::{self, HistorySummary, RoomDetail, RoomName, RoomSummary};

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The room matches no `history.rooms` rule.
    #[error("room `{0}` keeps no history (history.rooms)")]
    NoHistory(String),
    /// A query parameter out of range or malformed; the message names it.
    #[error("{0}")]
    BadQuery(String),
    #[error("the broker cannot answer: {0}")]
    Broker(#[from] BrokerError),
}

/// `GET /api/history/ROOM?limit=&since=`.
#[derive(Debug, Default)]
pub struct HistoryQuery {
    /// At most this many messages (1 to the room's `size`; default: its `size`).
    pub limit: Option<usize>,
    /// A message id: the messages after it, oldest first (so `since` = the last id pages on).
    pub since: Option<String>,
}

/// One page of rooms in name order, whether more follow, and whether the view is partial.
pub struct RoomsPage {
    pub rooms: Vec<RoomSummary>,
    pub next_cursor: Option<String>,
    pub partial: bool,
}

impl Node {
    /// Every live node of the cluster, with its stats.
    pub async fn cluster_nodes(&self) -> Result<Vec<NodeStats>, BrokerError> {
        self.bounded(self.broker.nodes()).await
    }

    /// Rooms announced by live nodes, members summed, in name order; and whether some node
    /// has more rooms than it announced.
    async fn cluster_rooms(&self) -> Result<(BTreeMap<String, RoomSummary>, bool), BrokerError> {
        let announced = self.bounded(self.broker.node_rooms()).await?;
        let mut rooms: BTreeMap<String, RoomSummary> = BTreeMap::new();
        let mut partial = false;
        for node in announced {
            partial |= node.total > node.rooms.len() as u64;
            for (room, members) in node.rooms {
                let summary = rooms.entry(room).or_insert_with_key(|room| RoomSummary {
                    room: room.clone(),
                    members: 0,
                    nodes: 0,
                    history: self.policies.retention(room).is_some(),
                    presence: self.policies.presence(room).is_some(),
                });
                summary.members += members;
                summary.nodes += 1;
            }
        }
        Ok((rooms, partial))
    }

    /// At most `limit` rooms after `cursor` (a room name, exclusive) in name order.
    pub async fn rooms_page(
        &self,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<RoomsPage, BrokerError> {
        let (rooms, partial) = self.cluster_rooms().await?;
        let from = cursor.map_or(Bound::Unbounded, Bound::Excluded);
        let mut after = rooms.range::<str, _>((from, Bound::Unbounded));
        let page: Vec<RoomSummary> = after.by_ref().take(limit).map(|(_, r)| r.clone()).collect();
        let next_cursor = match (after.next(), page.last()) {
            (Some(_), Some(last)) => Some(last.room.clone()),
            _ => None,
        };
        Ok(RoomsPage {
            rooms: page,
            next_cursor,
            partial,
        })
    }

    /// `GET /api/rooms/ROOM`: members over the cluster, what its history holds, presence.
    pub async fn room_detail(&self, room: &RoomName) -> Result<RoomDetail, BrokerError> {
        let (rooms, _) = self.cluster_rooms().await?;
        let history = match self.policies.retention(room) {
            Some(_) => {
                let page = self.fetch_history(room.as_arc()).await?;
                let last_id = (page.top > 0).then(|| {
                    Position {
                        epoch: page.epoch.clone(),
                        offset: page.top,
                    }
                    .id()
                });
                Some(HistorySummary {
                    length: page.entries.len() as u64,
                    last_id,
                })
            }
            None => None,
        };
        Ok(RoomDetail {
            room: room.as_str().to_owned(),
            members: rooms.get(room.as_str()).map_or(0, |r| r.members),
            history,
            presence: self.policies.presence(room).is_some(),
        })
    }

    /// `GET /api/history/ROOM`: the JSON body, or why not.
    pub async fn history_body(
        &self,
        room: &RoomName,
        query: &HistoryQuery,
    ) -> Result<String, ReadError> {
        let Some(retention) = self.policies.retention(room) else {
            return Err(ReadError::NoHistory(room.as_str().to_owned()));
        };
        let limit = query.limit.unwrap_or(retention.size);
        if limit == 0 || limit > retention.size {
            return Err(ReadError::BadQuery(format!(
                "`limit` must be 1 to {} (the room's history size)",
                retention.size
            )));
        }
        let since = match query.since.as_deref() {
            None => None,
            Some(id) => Some(Position::parse(id).ok_or_else(|| {
                ReadError::BadQuery(format!(
                    "`since` must be a kept message's id, like h1a2b3c4d-42; got `{id}`"
                ))
            })?),
        };
        let page = self.fetch_history(room.as_arc()).await?;
        let recovered = since.as_ref().map(|since| resumable(&page, since));
        let messages: Vec<&Envelope> = match (&since, recovered) {
            (Some(since), Some(true)) => page
                .entries
                .iter()
                .filter(|e| Position::parse(&e.id).is_some_and(|p| p.offset > since.offset))
                .take(limit)
                .collect(),
            _ => {
                let skip = page.entries.len().saturating_sub(limit);
                page.entries.iter().skip(skip).collect()
            }
        };
        let last_id = page.entries.last().map(|e| e.id.as_str());
        Ok(protocol::admin_history_body(
            room.as_str(),
            &messages,
            last_id,
            recovered,
        ))
    }
}
