//! Interest: a join (authorize, enter, replay) and a leave. The first local member of a room
//! subscribes the node to its channel (and its presence events), the last one unsubscribes it,
//! under a per-channel lock so a join never answers before the subscription is live.
//!
//! What is replayed is `history`'s; delivering is the hub's.

use std::sync::Arc;

use tracing::debug;

use super::history::plan_replay;
use super::policy::RoomPolicy;
use super::{JoinOutcome, Node, Session};
use crate::broker::{BrokerError, Target};
use crate::hub::Gate;
use crate::outbox::ConnId;
use crate::protocol::{CommandError, ErrorCode, RESERVED_ROOM_PREFIX, RoomName};

/// What entering a room found and left to do.
#[derive(Default)]
struct Entered {
    /// This session is the room's first local member: the node just subscribed.
    first: bool,
    /// The member's live traffic, held until its replay is queued.
    gate: Option<Gate>,
}

impl Node {
    /// `join`: authorize, enter (subscribing when first), then plan the replay.
    pub async fn join(
        &self,
        session: &mut Session,
        room: &RoomName,
        since: Option<&str>,
        history: Option<u64>,
    ) -> Result<JoinOutcome, CommandError> {
        self.join_as(session, room, since, history, false).await
    }

    /// A join by the client, or by the backend (`by_server`: the token's `rooms` claim is
    /// not asked, the backend decided).
    pub(super) async fn join_as(
        &self,
        session: &mut Session,
        room: &RoomName,
        since: Option<&str>,
        history: Option<u64>,
        by_server: bool,
    ) -> Result<JoinOutcome, CommandError> {
        self.authorize_join(session, room, by_server)?;
        if session.rooms.contains(room.as_str()) {
            // Already live in the room: there is nothing to replay that it has not been sent.
            return Ok(JoinOutcome::default());
        }
        // The backend's own joins (server subscriptions) are not asked again.
        let hook_info = match by_server {
            false => self.hooks.join(session.asker(), room).await?,
            true => None,
        };
        let info = hook_info.or_else(|| session.identity.as_ref().and_then(|i| i.info.clone()));
        let room = room.as_arc();
        let policy = self.policies.for_room(room);
        let wants_replay = since.is_some() || history.is_some_and(|n| n > 0);
        let entered = self
            .enter(session, room, policy, wants_replay, info)
            .await?;
        if policy.history.is_none() {
            // Nothing is kept for this room: a client resuming must reload its state.
            return Ok(JoinOutcome {
                recovered: since.map(|_| false),
                history: history.map(|_| 0),
                ..JoinOutcome::default()
            });
        }
        if !entered.first && entered.gate.is_none() {
            return Ok(JoinOutcome::default());
        }
        self.replay(session, room, entered, since, history).await
    }

    /// The checks of a join that need no broker: the reserved prefix, the token, and the
    /// per-connection room limit (the name was checked when it became a [`RoomName`]).
    fn authorize_join(
        &self,
        session: &Session,
        room: &RoomName,
        by_server: bool,
    ) -> Result<(), CommandError> {
        if room.starts_with(RESERVED_ROOM_PREFIX) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "rooms named user:… are reserved",
            ));
        }
        if let Some(identity) = &session.identity
            && !by_server
            && !identity.may_join(room)
        {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "your token does not allow joining this room",
            ));
        }
        let max = self.config.limits.max_rooms_per_connection;
        if !session.rooms.contains(room.as_str()) && session.rooms.len() >= max {
            return Err(CommandError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {max} rooms"),
            ));
        }
        Ok(())
    }

    /// Make the session a member of `room`, subscribing the node when it is the first local
    /// member. A replay-wanting member of a kept room enters gated: its live traffic is held
    /// until the replay is out.
    async fn enter(
        &self,
        session: &mut Session,
        room: &Arc<str>,
        policy: RoomPolicy,
        wants_replay: bool,
        info: Option<Arc<str>>,
    ) -> Result<Entered, CommandError> {
        let target = Target::Room(room.clone());
        let mut entered = Entered::default();
        {
            let _guard = self.interest_lock(&target).await;
            entered.first = self.hub.room_members(room) == 0;
            if entered.first {
                self.subscribe_room(room, policy.presence_events())
                    .await
                    .map_err(|err| {
                        CommandError::new(ErrorCode::Unavailable, format!("cannot join: {err}"))
                    })?;
            }
            if policy.history.is_some() && wants_replay {
                let capacity = self.config.limits.outbox_messages;
                entered.gate = self.hub.join_gated(room, &session.outbox, capacity).1;
            } else {
                self.hub.join(room, &session.outbox);
            }
            if let Some(presence) = policy.presence {
                self.presence
                    .add(room, presence.events, &Arc::from(session.from()), info);
            }
        }
        session.rooms.insert(room.clone());
        self.metrics.rooms.set(self.hub.room_count() as i64);
        Ok(entered)
    }

    /// Read the kept history of a room just entered: seed the cursor when this node just
    /// subscribed, and plan what a gated member is sent. A failed read undoes the join.
    async fn replay(
        &self,
        session: &mut Session,
        room: &Arc<str>,
        entered: Entered,
        since: Option<&str>,
        history: Option<u64>,
    ) -> Result<JoinOutcome, CommandError> {
        let page = match self.fetch_history(room).await {
            Ok(page) => page,
            Err(err) => {
                if let Some(gate) = entered.gate {
                    gate.open(&self.hub, &session.outbox, None);
                }
                session.rooms.remove(room);
                self.leave_room(room, session.conn, &session.from()).await;
                return Err(CommandError::new(
                    ErrorCode::Unavailable,
                    format!("cannot read the room's history: {err}"),
                ));
            }
        };
        if entered.first {
            self.seed_cursor(room, &page);
        }
        let Some(gate) = entered.gate else {
            return Ok(JoinOutcome::default());
        };
        Ok(plan_replay(page, since, history, gate))
    }

    /// Queue what a gated join held back, after `joined` and the replay.
    pub fn open_gate(&self, session: &Session, gate: Gate, after: Option<u64>) {
        let delivery = gate.open(&self.hub, &session.outbox, after);
        self.metrics.messages_delivered.inc_by(delivery.delivered);
    }
    pub async fn leave(&self, session: &mut Session, room: &RoomName) -> Result<(), CommandError> {
        if !session.rooms.remove(room.as_str()) {
            return Err(CommandError::new(
                ErrorCode::NotJoined,
                "not a member of this room",
            ));
        }
        session.server_rooms.retain(|r| **r != *room.as_str());
        self.leave_room(room, session.conn, &session.from()).await;
        Ok(())
    }

    /// `who` is the member's name in presence ([`Session::from`]).
    pub(super) async fn leave_room(&self, room: &str, conn: ConnId, who: &str) {
        let target = Target::Room(Arc::from(room));
        let _guard = self.interest_lock(&target).await;
        let left = self.hub.leave(room, conn);
        if left.is_some() && self.policies.presence(room).is_some() {
            self.presence.remove(room, who);
        }
        if left == Some(true) {
            self.cursors().remove(room);
            if self.policies.presence(room).is_some_and(|p| p.events) {
                let unsubscribing = self.broker.unsubscribe_presence(Arc::from(room));
                if let Err(err) = self.bounded(unsubscribing).await {
                    debug!(%err, "presence unsubscribe failed");
                }
            }
            self.unsubscribe(target).await;
        }
        self.metrics.rooms.set(self.hub.room_count() as i64);
    }

    /// Subscribe a room's channel, and its presence events when `events`, together (one
    /// round trip for both with Redis).
    async fn subscribe_room(&self, room: &Arc<str>, events: bool) -> Result<(), BrokerError> {
        if !events {
            return self.subscribe(Target::Room(room.clone())).await;
        }
        let presence = self.bounded(self.broker.subscribe_presence(room.clone()));
        let (messages, events) = tokio::join!(self.subscribe(Target::Room(room.clone())), presence);
        if let Err(err) = messages.and(events) {
            // The hub drops what arrives for rooms without members: a half-made subscription
            // costs traffic, not correctness; give it back anyway.
            let _ = self
                .bounded(self.broker.unsubscribe_presence(room.clone()))
                .await;
            self.unsubscribe(Target::Room(room.clone())).await;
            return Err(err);
        }
        Ok(())
    }
}
