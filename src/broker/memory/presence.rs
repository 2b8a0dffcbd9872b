//! The memory broker's presence: per room, each node's users and their sum over nodes, and
//! the members' `info`. The in-process model of the Redis function `roomcast_presence`, which
//! keeps the same steps in the same order.
//!
//! Leaves to others: when a node writes and what (the node's presence module), webhook events
//! (the [`WebhookTable`] it feeds), emitting the events it decides (the memory broker).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::WebhookTable;
use crate::broker::{PresenceList, PresenceUpdate};
use crate::protocol::PresenceMember;

/// A user who appeared in a room (`joined`, with its info if it has one) or vanished from it.
#[derive(Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: String,
    pub joined: bool,
    pub info: Option<Arc<str>>,
}

#[cfg(test)]
impl PartialEq<(String, bool)> for PresenceChange {
    /// Who and which way (tests that are not about `info`).
    fn eq(&self, (user, joined): &(String, bool)) -> bool {
        self.user == *user && self.joined == *joined
    }
}

/// One node's users of a room, and until when they count.
struct NodeEntry {
    users: HashMap<String, u64>,
    deadline: Instant,
}

/// One room's presence: each node's users, and their sum over nodes in name order.
#[derive(Default)]
struct RoomPresence {
    nodes: HashMap<String, NodeEntry>,
    totals: BTreeMap<String, u64>,
    /// The `info` of present users that have one (the latest written by any node).
    info: HashMap<String, Arc<str>>,
}

impl RoomPresence {
    /// Add `delta` to `user`'s connections over every node: before and after.
    fn adjust(&mut self, user: &str, delta: i64) -> (u64, u64) {
        let before = self.totals.get(user).copied().unwrap_or(0);
        let after = (before as i64 + delta).max(0) as u64;
        if after == 0 {
            self.totals.remove(user);
            self.info.remove(user);
        } else {
            self.totals.insert(user.to_owned(), after);
        }
        (before, after)
    }

    /// Drop every node but `except` whose time is up: the users that vanish with them.
    fn reap(&mut self, except: Option<&str>, now: Instant) -> Vec<String> {
        let mut dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(n, e)| Some(n.as_str()) != except && e.deadline < now)
            .map(|(n, _)| n.clone())
            .collect();
        dead.sort();
        let mut gone = Vec::new();
        for n in dead {
            let Some(entry) = self.nodes.remove(&n) else {
                continue;
            };
            let mut users: Vec<(String, u64)> = entry.users.into_iter().collect();
            users.sort();
            for (user, conns) in users {
                if let (1.., 0) = self.adjust(&user, -(conns as i64)) {
                    gone.push(user);
                }
            }
        }
        gone
    }
}

/// Presence of every room, per node: the in-process model of the Redis function
/// `roomcast_presence`, which keeps the same steps in the same order.
#[derive(Default)]
pub struct PresenceTable {
    rooms: HashMap<Arc<str>, RoomPresence>,
    /// Webhook events, decided with the presence they follow (`[webhooks]` on).
    pub(super) webhooks: Option<WebhookTable>,
}

impl PresenceTable {
    /// Apply `node`'s update at `now`: drop other nodes whose time is up, then set this node's
    /// users. Returns the users that appeared (`true`) or vanished (`false`) in the room across
    /// every node (empty unless the room has events), and whether this node's earlier state
    /// had been lost (dropped or expired) and must be sent whole again.
    pub fn apply(
        &mut self,
        node: &str,
        update: &PresenceUpdate,
        now: Instant,
        live_for: Duration,
    ) -> (Vec<PresenceChange>, bool) {
        let room = self.rooms.entry(update.room.clone()).or_default();
        let mut events: Vec<(String, bool)> = room
            .reap(Some(node), now)
            .into_iter()
            .map(|user| (user, false))
            .collect();

        let lost = !update.full && !room.nodes.contains_key(node);
        // Before the counts, so a user who appears is announced with its info.
        for (user, info) in &update.info {
            room.info.insert(user.to_string(), info.clone());
        }
        let mut counts: Vec<(String, u64)> = update
            .users
            .iter()
            .map(|(u, c)| (u.to_string(), *c))
            .collect();
        if update.full
            && let Some(own) = room.nodes.get(node)
        {
            let mut stale: Vec<String> = own
                .users
                .keys()
                .filter(|u| !update.users.iter().any(|(v, _)| v.as_ref() == u.as_str()))
                .cloned()
                .collect();
            stale.sort();
            counts.extend(stale.into_iter().map(|u| (u, 0)));
        }
        for (user, conns) in counts {
            let own = room
                .nodes
                .entry(node.to_owned())
                .or_insert_with(|| NodeEntry {
                    users: HashMap::new(),
                    deadline: now + live_for,
                });
            let had = if conns > 0 {
                own.users.insert(user.clone(), conns)
            } else {
                own.users.remove(&user)
            }
            .unwrap_or(0);
            match room.adjust(&user, conns as i64 - had as i64) {
                (0, 1..) => events.push((user, true)),
                (1.., 0) => events.push((user, false)),
                _ => {}
            }
        }
        match room.nodes.get_mut(node) {
            Some(own) if own.users.is_empty() => {
                room.nodes.remove(node);
            }
            Some(own) => own.deadline = now + live_for,
            None => {}
        }
        let mut changes: Vec<PresenceChange> = events
            .into_iter()
            .map(|(user, joined)| PresenceChange {
                info: joined.then(|| room.info.get(&user).cloned()).flatten(),
                user,
                joined,
            })
            .collect();
        if room.nodes.is_empty() {
            self.rooms.remove(&update.room);
        }
        if let Some(webhooks) = &mut self.webhooks {
            for change in &changes {
                match change.joined {
                    true => webhooks.appear(&update.room, &change.user),
                    false => webhooks.vanish(&update.room, &change.user, now),
                }
            }
        }
        if !update.events {
            changes.clear();
        }
        (changes, lost)
    }

    /// Who is in `room` at `now`, after dropping the nodes whose time is up (the users that
    /// vanish with them are returned): the count and the first `max` users in name order.
    pub fn read(&mut self, room: &str, now: Instant, max: usize) -> (PresenceList, Vec<String>) {
        let Some(presence) = self.rooms.get_mut(room) else {
            return (PresenceList::default(), Vec::new());
        };
        let gone = presence.reap(None, now);
        if let Some(webhooks) = &mut self.webhooks {
            let room: Arc<str> = Arc::from(room);
            for user in &gone {
                webhooks.vanish(&room, user, now);
            }
        }
        let list = PresenceList {
            count: presence.totals.len() as u64,
            members: presence
                .totals
                .iter()
                .take(max)
                .map(|(user, conns)| PresenceMember {
                    user: user.clone(),
                    conns: *conns,
                    info: presence.info.get(user).cloned(),
                })
                .collect(),
            truncated: presence.totals.len() > max,
        };
        if presence.nodes.is_empty() {
            self.rooms.remove(room);
        }
        (list, gone)
    }
}
