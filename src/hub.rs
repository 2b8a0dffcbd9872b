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

use crate::outbox::{ConflationKey, ConnId, Offer, Outbox, ServerRoom};
use crate::protocol::{Disconnect, Frame, issued_before};

const SHARDS: usize = 64;

type Members = HashMap<ConnId, Outbox>;
/// A user's connections, each with its token's `iat`: a user revocation closes only the
/// connections whose token was issued before it.
type UserMembers = HashMap<ConnId, (Outbox, Option<u64>)>;
type RoomMembers = HashMap<ConnId, RoomMember>;

/// A room member; while `gate` is set and closed, its room traffic is held back (a joining
/// client is being sent history first).
struct RoomMember {
    outbox: Outbox,
    gate: Option<Arc<Mutex<GateState>>>,
}

struct GateState {
    open: bool,
    /// Each held frame with its history offset and conflation key.
    held: Vec<Held>,
    capacity: usize,
    /// Once open: the replay covered offsets up to here. A live frame for one of them can
    /// still be on its way (history was read before the dispatcher delivered it): drop it.
    after: Option<u64>,
}

struct Held {
    offset: Option<u64>,
    frame: Frame,
    key: Option<ConflationKey>,
}

/// Holds back one member's room traffic until [`Gate::open`]: what a joining client receives
/// after `joined` and its history replay, with nothing lost and nothing twice.
pub struct Gate {
    room: Arc<str>,
    conn: ConnId,
    state: Arc<Mutex<GateState>>,
}

impl Gate {
    /// Release held frames newer than `after` (by history offset) into `outbox`, then let
    /// traffic flow directly.
    pub fn open(self, hub: &Hub, outbox: &Outbox, after: Option<u64>) -> Delivery {
        let mut delivery = Delivery::default();
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for held in state.held.drain(..) {
                let newer = match (held.offset, after) {
                    (Some(o), Some(a)) => o > a,
                    _ => true,
                };
                if newer {
                    delivery.count(outbox.offer_with(held.frame, held.key.as_ref()));
                }
            }
            state.open = true;
            state.after = after;
        }
        if after.is_none() {
            let mut shard = hub.rooms.shard(&*self.room);
            if let Some(member) = shard
                .get_mut(&*self.room)
                .and_then(|m| m.get_mut(&self.conn))
            {
                member.gate = None;
            }
        }
        delivery
    }
}

struct Sharded<K, V> {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<K, V>>]>,
}

impl<K: std::hash::Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard<Q: std::hash::Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, HashMap<K, V>> {
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
    /// Members for whom the frame replaced an older one of the same key still waiting
    /// (conflated rooms): the older one is never sent.
    pub conflated: u64,
}

impl Delivery {
    fn count(&mut self, offer: Offer) {
        match offer {
            Offer::Queued => self.delivered += 1,
            Offer::Replaced => self.conflated += 1,
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
    rooms: Sharded<Arc<str>, RoomMembers>,
    users: Sharded<Arc<str>, UserMembers>,
    /// Connections by their token's `jti`, for revoking one token.
    tokens: Sharded<Arc<str>, Members>,
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
            tokens: Sharded::new(),
            conns: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn conn_shard(&self, conn: ConnId) -> MutexGuard<'_, Members> {
        self.conns[(conn as usize) % self.conns.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Register a connection (with its user and its token's `iat`, when it has them); returns
    /// true when it is its user's first on this node.
    pub fn add_connection(&self, outbox: &Outbox, user: Option<(&str, Option<u64>)>) -> bool {
        self.conn_shard(outbox.conn())
            .insert(outbox.conn(), outbox.clone());
        match user {
            Some((user, issued_at)) => {
                let mut shard = self.users.shard(user);
                let members = shard.entry(Arc::from(user)).or_default();
                members.insert(outbox.conn(), (outbox.clone(), issued_at));
                members.len() == 1
            }
            None => false,
        }
    }

    /// A connection of `user` now holds a token issued at `issued_at` (an in-band refresh).
    pub fn retoken(&self, user: &str, conn: ConnId, issued_at: Option<u64>) {
        if let Some((_, iat)) = self
            .users
            .shard(user)
            .get_mut(user)
            .and_then(|members| members.get_mut(&conn))
        {
            *iat = issued_at;
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
        self.join_member(room, outbox, None)
    }

    /// Join with the member's room traffic held back until the returned gate opens; `None`
    /// when it was already a member. At most `capacity` frames are held; one more closes the
    /// member as a slow consumer.
    pub fn join_gated(
        &self,
        room: &str,
        outbox: &Outbox,
        capacity: usize,
    ) -> (Joined, Option<Gate>) {
        let state = Arc::new(Mutex::new(GateState {
            open: false,
            held: Vec::new(),
            capacity,
            after: None,
        }));
        let joined = self.join_member(room, outbox, Some(state.clone()));
        let gate = (!joined.already).then(|| Gate {
            room: Arc::from(room),
            conn: outbox.conn(),
            state,
        });
        (joined, gate)
    }

    fn join_member(
        &self,
        room: &str,
        outbox: &Outbox,
        gate: Option<Arc<Mutex<GateState>>>,
    ) -> Joined {
        let member = || RoomMember {
            outbox: outbox.clone(),
            gate: gate.clone(),
        };
        let mut shard = self.rooms.shard(room);
        match shard.get_mut(room) {
            Some(members) => match members.entry(outbox.conn()) {
                Entry::Occupied(_) => Joined {
                    first: false,
                    already: true,
                },
                Entry::Vacant(v) => {
                    v.insert(member());
                    Joined {
                        first: false,
                        already: false,
                    }
                }
            },
            None => {
                let mut members = RoomMembers::new();
                members.insert(outbox.conn(), member());
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

    /// Every room with a local member and how many it has: one pass over the shards, for the
    /// node's stats once per interval (never per delivery).
    pub fn room_sizes(&self) -> Vec<(Arc<str>, usize)> {
        self.rooms
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(room, members)| (room.clone(), members.len()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Offer `frame` to every local member of `room`, except `skip`. `offset` is the
    /// message's history offset, if it is kept, so gated members can drop what their replay
    /// already covered. `key` (a conflated room's keyed message) replaces the frame of the same
    /// key still waiting for a member, held or queued.
    pub fn deliver_room(
        &self,
        room: &str,
        frame: &Frame,
        skip: Option<ConnId>,
        offset: Option<u64>,
        key: Option<&ConflationKey>,
    ) -> Delivery {
        let mut shard = self.rooms.shard(room);
        let mut delivery = Delivery::default();
        if let Some(members) = shard.get_mut(room) {
            for (conn, member) in members.iter_mut() {
                if Some(*conn) == skip {
                    continue;
                }
                let mut passed_gate = false;
                match &member.gate {
                    None => delivery.count(member.outbox.offer_with(frame.clone(), key)),
                    Some(gate) => {
                        let mut state = gate.lock().unwrap_or_else(|p| p.into_inner());
                        if state.open {
                            let replayed =
                                matches!((offset, state.after), (Some(o), Some(a)) if o <= a);
                            if !replayed {
                                delivery.count(member.outbox.offer_with(frame.clone(), key));
                                // Newer than the replay: everything after it is new too.
                                passed_gate = offset.is_some();
                            }
                        } else if let Some(held) = key
                            .and_then(|k| state.held.iter_mut().find(|h| h.key.as_ref() == Some(k)))
                        {
                            held.offset = offset;
                            held.frame = frame.clone();
                            delivery.conflated += 1;
                        } else if state.held.len() < state.capacity {
                            state.held.push(Held {
                                offset,
                                frame: frame.clone(),
                                key: key.cloned(),
                            });
                        } else {
                            member.outbox.closer().close(Disconnect::SlowConsumer);
                            delivery.overflowed += 1;
                        }
                    }
                }
                if passed_gate {
                    member.gate = None;
                }
            }
        }
        delivery
    }

    pub fn deliver_user(&self, user: &str, frame: &Frame) -> Delivery {
        let shard = self.users.shard(user);
        let mut delivery = Delivery::default();
        if let Some(members) = shard.get(user) {
            for (outbox, _) in members.values() {
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

    /// Close every connection of `user` on this node (only `conn` when given) for `reason`,
    /// with `text` as the close frame's reason; returns how many.
    pub fn close_user(
        &self,
        user: &str,
        conn: Option<ConnId>,
        reason: Disconnect,
        text: Option<&str>,
    ) -> usize {
        let shard = self.users.shard(user);
        let Some(members) = shard.get(user) else {
            return 0;
        };
        let mut closed = 0;
        for (outbox, _) in members
            .values()
            .filter(|(o, _)| conn.is_none_or(|c| o.conn() == c))
        {
            outbox.close_with(reason, text);
            closed += 1;
        }
        closed
    }

    /// Close the connections of `user` whose token was issued before `before` (unix seconds),
    /// or carries no `iat` (it cannot show it is newer), for `reason`.
    pub fn close_user_issued_before(&self, user: &str, before: u64, reason: Disconnect) {
        if let Some(members) = self.users.shard(user).get(user) {
            for (outbox, _) in members
                .values()
                .filter(|(_, iat)| issued_before(*iat, before))
            {
                outbox.close_with(reason, None);
            }
        }
    }

    /// Hand a server subscription change to every connection of `user` on this node.
    pub fn server_room_user(&self, user: &str, change: &ServerRoom) {
        if let Some(members) = self.users.shard(user).get(user) {
            for (outbox, _) in members.values() {
                outbox.server_room(change.clone());
            }
        }
    }

    /// Remember which connections hold the token `jti`.
    pub fn add_token(&self, jti: &str, outbox: &Outbox) {
        let mut shard = self.tokens.shard(jti);
        let members = shard.entry(Arc::from(jti)).or_default();
        members.insert(outbox.conn(), outbox.clone());
    }

    pub fn remove_token(&self, jti: &str, conn: ConnId) {
        let mut shard = self.tokens.shard(jti);
        if let Some(members) = shard.get_mut(jti) {
            members.remove(&conn);
            if members.is_empty() {
                shard.remove(jti);
            }
        }
    }

    /// Close the connections holding the token `jti` for `reason`.
    pub fn close_token(&self, jti: &str, reason: Disconnect) {
        if let Some(members) = self.tokens.shard(jti).get(jti) {
            for outbox in members.values() {
                outbox.close_with(reason, None);
            }
        }
    }

    /// Close one connection of this node; false when it is not here.
    pub fn close_conn(&self, conn: ConnId, reason: Disconnect, text: Option<&str>) -> bool {
        let shard = self.conn_shard(conn);
        let Some(outbox) = shard.get(&conn) else {
            return false;
        };
        outbox.close_with(reason, text);
        true
    }

    /// Ask every registered connection to close for `reason`.
    pub fn close_all(&self, reason: Disconnect) {
        for shard in self.conns.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for outbox in shard.values() {
                outbox.closer().close(reason);
            }
        }
    }
}

impl<V> Sharded<Arc<str>, V> {
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
        let (a, ra) = outbox(1, 8);
        let (b, rb) = outbox(2, 1);
        hub.join("r", &a);
        hub.join("r", &b);
        let d = hub.deliver_room("r", &Frame::plain_pong(), Some(1), None, None);
        assert_eq!((d.delivered, d.overflowed, d.conflated), (1, 0, 0));
        assert!(ra.try_recv().is_err());
        let d = hub.deliver_room("r", &Frame::plain_pong(), None, None, None);
        assert_eq!((d.delivered, d.overflowed, d.conflated), (1, 1, 0));
        assert_eq!(rb.closer().reason(), Some(Disconnect::SlowConsumer));
        assert_eq!(
            ra.try_recv().map(|f| f.text().to_owned()).ok().as_deref(),
            Some("pong")
        );
    }

    #[test]
    fn close_all_closes_every_registered_connection_and_only_those() {
        let hub = Hub::new();
        let (a, ra) = outbox(1, 8);
        let (b, rb) = outbox(2, 8);
        let (_c, rc) = outbox(3, 8);
        hub.add_connection(&a, Some(("u1", None)));
        hub.add_connection(&b, None);
        hub.close_all(Disconnect::Shutdown);
        assert_eq!(ra.closer().reason(), Some(Disconnect::Shutdown));
        assert_eq!(rb.closer().reason(), Some(Disconnect::Shutdown));
        assert_eq!(rc.closer().reason(), None, "never registered");
    }

    #[test]
    fn users_and_broadcast() {
        let hub = Hub::new();
        let (a, ra) = outbox(1, 8);
        let (b, rb) = outbox(2, 8);
        let (c, rc) = outbox(3, 8);
        assert!(hub.add_connection(&a, Some(("u1", None))));
        assert!(!hub.add_connection(&b, Some(("u1", None))));
        assert!(!hub.add_connection(&c, None));
        assert_eq!(hub.deliver_user("u1", &Frame::plain_pong()).delivered, 2);
        assert_eq!(hub.deliver_all(&Frame::plain_pong()).delivered, 3);
        assert!(ra.try_recv().is_ok() && rb.try_recv().is_ok() && rc.try_recv().is_ok());
        assert!(!hub.remove_connection(1, Some("u1")));
        assert!(hub.remove_connection(2, Some("u1")));
        assert_eq!(hub.user_count(), 0);
        assert_eq!(hub.connection_count(), 1);
    }

    #[test]
    fn a_gate_holds_traffic_and_releases_only_what_the_replay_did_not_cover() {
        let hub = Hub::new();
        let (a, ra) = outbox(1, 16);
        let (joined, gate) = hub.join_gated("h", &a, 8);
        assert!(joined.first);
        let gate = gate.expect("gate");
        let frame = |t: &str| Frame::text_for_tests(t);
        hub.deliver_room("h", &frame("m4"), None, Some(4), None);
        hub.deliver_room("h", &frame("m5"), None, Some(5), None);
        hub.deliver_room("h", &frame("ext"), None, None, None);
        assert!(ra.try_recv().is_err(), "held while the gate is closed");
        // The replay covered offsets up to 4.
        let released = gate.open(&hub, &a, Some(4));
        assert_eq!(released.delivered, 2);
        let got: Vec<String> = std::iter::from_fn(|| ra.try_recv().ok())
            .map(|f| f.text().to_owned())
            .collect();
        assert_eq!(got, ["m5", "ext"]);
        hub.deliver_room("h", &frame("m6"), None, Some(6), None);
        assert_eq!(
            ra.try_recv().map(|f| f.text().to_owned()).ok().as_deref(),
            Some("m6")
        );
    }

    #[test]
    fn a_gate_holds_only_the_latest_frame_per_key() {
        let (hub, (a, ra)) = (Hub::new(), outbox(1, 16));
        let gate = hub.join_gated("h", &a, 1).1.expect("gate");
        let key = crate::outbox::conflation_key("h", "k");
        for i in 1..=3 {
            let frame = Frame::text_for_tests(&format!("k{i}"));
            hub.deliver_room("h", &frame, None, Some(i), Some(&key));
        }
        assert_eq!(
            ra.closer().reason(),
            None,
            "one place held, never overflowed"
        );
        assert_eq!(gate.open(&hub, &a, Some(1)).delivered, 1);
        assert_eq!(
            ra.try_recv().map(|f| f.text().to_owned()).ok().as_deref(),
            Some("k3")
        );
    }

    #[test]
    fn a_gate_that_overflows_closes_the_member() {
        let hub = Hub::new();
        let (a, ra) = outbox(1, 16);
        let (_, gate) = hub.join_gated("h", &a, 2);
        for i in 0..3 {
            hub.deliver_room("h", &Frame::plain_pong(), None, Some(i), None);
        }
        assert_eq!(ra.closer().reason(), Some(Disconnect::SlowConsumer));
        drop(gate);
    }

    /// History was read after a message was kept but before the dispatcher delivered it: the
    /// replay includes it, so its live copy must not reach the member a second time.
    #[test]
    fn a_live_copy_of_a_replayed_message_is_dropped_after_the_gate_opens() {
        let hub = Hub::new();
        let (a, ra) = outbox(1, 16);
        let (_, gate) = hub.join_gated("h", &a, 8);
        let gate = gate.expect("gate");
        // The replay covered offsets up to 5; nothing was held.
        gate.open(&hub, &a, Some(5));
        hub.deliver_room("h", &Frame::text_for_tests("m5"), None, Some(5), None);
        hub.deliver_room("h", &Frame::text_for_tests("m6"), None, Some(6), None);
        hub.deliver_room("h", &Frame::text_for_tests("m7"), None, Some(7), None);
        let got: Vec<String> = std::iter::from_fn(|| ra.try_recv().ok())
            .map(|f| f.text().to_owned())
            .collect();
        assert_eq!(got, ["m6", "m7"]);
    }
}
