//! Server subscriptions: the backend joins a user's connections to rooms (`/api/subscribe`,
//! the token's `subs` claim) and takes them out again (`/api/unsubscribe`).
//!
//! The change reaches every node holding the user's connections as a control envelope on the
//! user's channel; each connection applies it in its own task between two commands (its
//! session is the task's), joining as a client join would (history replayed, presence
//! counted) except that the token's `rooms` claim is not asked. The broker keeps the user's
//! rooms for `auth.server_subs_ttl_s`, so a connection opened later joins them too. Joining
//! itself is `interest`'s.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{Node, Session};
use crate::broker::{BrokerError, Control, Target};
use crate::outbox::ServerRoom;
use crate::protocol::{self, CommandError, RoomName};

impl Node {
    /// `POST /api/subscribe` (`join`) or `/api/unsubscribe`: keep the change for connections
    /// opened later, then announce it on the user's channel for the open ones.
    pub async fn server_subscribe(
        &self,
        user: Arc<str>,
        room: RoomName,
        join: bool,
    ) -> Result<(), BrokerError> {
        let ttl = join.then(|| Duration::from_secs(self.config.auth.server_subs_ttl_s));
        self.bounded(
            self.broker
                .set_server_sub(user.clone(), room.as_arc().clone(), ttl),
        )
        .await?;
        let control = if join {
            Control::Subscribe { room }
        } else {
            Control::Unsubscribe { room }
        };
        self.bounded(self.broker.publish_control(Target::User(user), control))
            .await
    }

    /// A subscribe or unsubscribe envelope on a user's channel: hand it to that user's
    /// connections here.
    pub(super) fn server_room_change(&self, target: &Target, change: ServerRoom) {
        if let Target::User(user) = target {
            self.hub.server_room_user(user, &change);
        }
    }

    /// A new connection's server subscriptions: its token's `subs` and the user's rooms kept
    /// by the broker. Queued for the connection's task, which applies them after `welcome`.
    pub(super) async fn queue_server_rooms(&self, session: &Session) {
        let Some(user) = &session.user else {
            return;
        };
        let mut rooms: Vec<RoomName> = session
            .identity
            .as_ref()
            .map(|i| i.subs.clone())
            .unwrap_or_default();
        match self.bounded(self.broker.server_subs(user.clone())).await {
            Ok(kept) => rooms.extend(kept.iter().filter_map(|r| RoomName::new(r).ok())),
            // The connection is still served; the user's later subscribes reach it live.
            Err(err) => warn!(%err, "cannot read the user's server subscriptions"),
        }
        rooms.dedup();
        for room in rooms {
            session.outbox.server_room(ServerRoom::Join(room));
        }
    }

    /// Apply server subscription changes to a connection, in order.
    pub async fn apply_server_rooms(&self, session: &mut Session, changes: Vec<ServerRoom>) {
        for change in changes {
            match change {
                ServerRoom::Join(room) => self.server_join(session, &room).await,
                ServerRoom::Leave(room) => {
                    if self.leave(session, &room).await.is_ok() {
                        session
                            .outbox
                            .offer(protocol::left_because(&room, "unsubscribed"));
                    }
                }
            }
        }
    }

    /// Join as a client join would, replaying every kept message of a history room, and
    /// answer `joined {room, server: true}`, or an `error` naming the room.
    async fn server_join(&self, session: &mut Session, room: &RoomName) {
        let policy = self.policies.for_room(room.as_arc());
        let history = policy.history.map(|_| u64::MAX);
        match self.join_as(session, room, None, history, true).await {
            Ok(outcome) => {
                if !session.server_rooms.iter().any(|r| **r == *room.as_str()) {
                    session.server_rooms.push(room.as_arc().clone());
                }
                session
                    .outbox
                    .offer(protocol::server_joined(room, outcome.history));
                for frame in outcome.replay {
                    session.outbox.offer(frame);
                }
                if let Some((gate, after)) = outcome.gate {
                    self.open_gate(session, gate, after);
                }
            }
            Err(err) => {
                let err = CommandError::new(
                    err.code,
                    format!("server subscription to {room}: {}", err.message),
                );
                session.outbox.offer(protocol::error(&err, None));
            }
        }
    }
}
