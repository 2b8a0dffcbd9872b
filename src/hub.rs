//! Local rooms: which connections on this node are members of which room, which belong to which
//! user, and handing one encoded frame to all of them.
//!
//! Architecture invariant: the hub is synchronous. It never awaits, does no I/O and knows
//! nothing of brokers or sockets; it only offers frames to bounded outboxes. Tables are sharded
//! so that publishers fanning out to one room do not contend with joins in another.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::outbox::{ConnId, Offer, Outbox};
use crate::protocol::Frame;

const SHARDS: usize = 64;

type Members = HashMap<ConnId, Outbox>;

struct Sharded<K> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, Members>>]>,
}

impl<K: std::hash::Hash + Eq> Sharded<K> {
    fn new() -> Self {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard<Q: std::hash::Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, Members>> {
        let index = (self.hasher.hash_one(key) as usize) % self.shards.len();
        // A poisoned shard only means another thread panicked mid-update of plain maps; the
        // maps stay structurally valid, so keep serving rather than take the node down.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// What a fan-out did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: u64,
    /// Members whose outbox was full: they are now closing with 1013.
    pub overflowed: u64,
}

impl Delivery {
    fn count(&mut self, offer: Offer) {
        match offer {
            Offer::Queued => self.delivered += 1,
            Offer::Overflowed => self.overflowed += 1,
            Offer::Closed => {}
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Joined {
    /// This is the room's first local member: the node must hold broker interest in it.
    pub first: bool,
    /// The connection was already a member.
    pub already: bool,
}

pub struct Hub {
    rooms: Sharded<Arc<str>>,
    users: Sharded<Arc<str>>,
    /// Every connection, for broadcasts; one pseudo-entry per shard keyed by `()`.
    conns: Box<[Mutex<Members>]>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            rooms: Sharded::new(),
            users: Sharded::new(),
            conns: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn conn_shard(&self, conn: ConnId) -> MutexGuard<'_, Members> {
        self.conns[(conn as usize) % self.conns.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection; returns true when it is its user's first on this node.
    pub fn add_connection(&self, outbox: &Outbox, user: Option<&str>) -> bool {
        self.conn_shard(outbox.conn())
            .insert(outbox.conn(), outbox.clone());
        match user {
            Some(user) => {
                let mut shard = self.users.shard(user);
                let members = shard.entry(Arc::from(user)).or_default();
                members.insert(outbox.conn(), outbox.clone());
                members.len() == 1
            }
            None => false,
        }
    }

    /// Forget a connection; returns true when it was its user's last on this node.
    pub fn remove_connection(&self, conn: ConnId, user: Option<&str>) -> bool {
        self.conn_shard(conn).remove(&conn);
        match user {
            Some(user) => {
                let mut shard = self.users.shard(user);
                match shard.get_mut(user) {
                    Some(members) => {
                        members.remove(&conn);
                        if members.is_empty() {
                            shard.remove(user);
                            true
                        } else {
                            false
                        }
                    }
                    None => false,
                }
            }
            None => false,
        }
    }

    pub fn join(&self, room: &str, outbox: &Outbox) -> Joined {
        let mut shard = self.rooms.shard(room);
        match shard.get_mut(room) {
            Some(members) => match members.entry(outbox.conn()) {
                Entry::Occupied(_) => Joined {
                    first: false,
                    already: true,
                },
                Entry::Vacant(v) => {
                    v.insert(outbox.clone());
                    Joined {
                        first: false,
                        already: false,
                    }
                }
            },
            None => {
                let mut members = Members::new();
                members.insert(outbox.conn(), outbox.clone());
                shard.insert(Arc::from(room), members);
                Joined {
                    first: true,
                    already: false,
                }
            }
        }
    }

    /// Remove a member; returns `Some(now_empty)` when it was one, `None` when it was not.
    pub fn leave(&self, room: &str, conn: ConnId) -> Option<bool> {
        let mut shard = self.rooms.shard(room);
        let members = shard.get_mut(room)?;
        members.remove(&conn)?;
        if members.is_empty() {
            shard.remove(room);
            Some(true)
        } else {
            Some(false)
        }
    }

    pub fn room_members(&self, room: &str) -> usize {
        self.rooms.shard(room).get(room).map_or(0, HashMap::len)
    }

    pub fn is_member(&self, room: &str, conn: ConnId) -> bool {
        self.rooms
            .shard(room)
            .get(room)
            .is_some_and(|m| m.contains_key(&conn))
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    pub fn connection_count(&self) -> usize {
        self.conns
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Every room with a local member, for resubscribing after a broker reconnect.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms.keys()
    }

    pub fn users(&self) -> Vec<Arc<str>> {
        self.users.keys()
    }

    /// Offer `frame` to every local member of `room`, except `skip`.
    pub fn deliver_room(&self, room: &str, frame: &Frame, skip: Option<ConnId>) -> Delivery {
        let shard = self.rooms.shard(room);
        let mut delivery = Delivery::default();
        if let Some(members) = shard.get(room) {
            for (conn, outbox) in members {
                if Some(*conn) != skip {
                    delivery.count(outbox.offer(frame.clone()));
                }
            }
        }
        delivery
    }

    pub fn deliver_user(&self, user: &str, frame: &Frame) -> Delivery {
        let shard = self.users.shard(user);
        let mut delivery = Delivery::default();
        if let Some(members) = shard.get(user) {
            for outbox in members.values() {
                delivery.count(outbox.offer(frame.clone()));
            }
        }
        delivery
    }

    pub fn deliver_all(&self, frame: &Frame) -> Delivery {
        let mut delivery = Delivery::default();
        for shard in self.conns.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for outbox in shard.values() {
                delivery.count(outbox.offer(frame.clone()));
            }
        }
        delivery
    }
}

impl Sharded<Arc<str>> {
    fn keys(&self) -> Vec<Arc<str>> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::outbox;
    use crate::protocol::Disconnect;

    #[test]
    fn first_and_last_member_are_reported() {
        let hub = Hub::new();
        let (a, _ra) = outbox(1, 8);
        let (b, _rb) = outbox(2, 8);
        assert!(hub.join("r", &a).first);
        let again = hub.join("r", &a);
        assert!(again.already && !again.first);
        assert!(!hub.join("r", &b).first);
        assert_eq!(hub.room_members("r"), 2);
        assert_eq!(hub.leave("r", 1), Some(false));
        assert_eq!(hub.leave("r", 1), None);
        assert_eq!(hub.leave("r", 2), Some(true));
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn delivery_skips_the_sender_when_asked_and_counts_overflow() {
        let hub = Hub::new();
        let (a, mut ra) = outbox(1, 8);
        let (b, rb) = outbox(2, 1);
        hub.join("r", &a);
        hub.join("r", &b);
        let d = hub.deliver_room("r", &Frame::plain_pong(), Some(1));
        assert_eq!(
            d,
            Delivery {
                delivered: 1,
                overflowed: 0
            }
        );
        assert!(ra.rx.try_recv().is_err());
        let d = hub.deliver_room("r", &Frame::plain_pong(), None);
        assert_eq!(
            d,
            Delivery {
                delivered: 1,
                overflowed: 1
            }
        );
        assert_eq!(rb.closer.reason(), Some(Disconnect::SlowConsumer));
        assert_eq!(
            ra.rx
                .try_recv()
                .map(|f| f.text().to_owned())
                .ok()
                .as_deref(),
            Some("pong")
        );
    }

    #[test]
    fn users_and_broadcast() {
        let hub = Hub::new();
        let (a, mut ra) = outbox(1, 8);
        let (b, mut rb) = outbox(2, 8);
        let (c, mut rc) = outbox(3, 8);
        assert!(hub.add_connection(&a, Some("u1")));
        assert!(!hub.add_connection(&b, Some("u1")));
        assert!(!hub.add_connection(&c, None));
        assert_eq!(hub.deliver_user("u1", &Frame::plain_pong()).delivered, 2);
        assert_eq!(hub.deliver_all(&Frame::plain_pong()).delivered, 3);
        assert!(ra.rx.try_recv().is_ok() && rb.rx.try_recv().is_ok() && rc.rx.try_recv().is_ok());
        assert!(!hub.remove_connection(1, Some("u1")));
        assert!(hub.remove_connection(2, Some("u1")));
        assert_eq!(hub.user_count(), 0);
        assert_eq!(hub.connection_count(), 1);
    }
}
