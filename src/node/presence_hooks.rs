//! Presence as the node applies it: answering `presence` and the admin API, running the batching
//! writer, and delivering presence events to local members.
//!
//! The local table and the writer are `crate::presence`'s; the cluster-wide state is the
//! broker's.

use std::sync::Arc;

use tracing::warn;

use super::{Node, Session};
use crate::broker::PresenceEvent;
use crate::metrics::DropReason;
use crate::protocol::{self, CommandError, ErrorCode, PresenceList, RoomName};

impl Node {
    /// `presence` from a client: it must have joined the room, its token must allow the room,
    /// and the room must keep presence.
    pub async fn presence(
        &self,
        session: &Session,
        room: &RoomName,
    ) -> Result<PresenceList, CommandError> {
        if let Some(identity) = &session.identity
            && !identity.may_join(room)
        {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "your token does not allow this room",
            ));
        }
        if self.policies.presence(room).is_none() {
            return Err(CommandError::bad_request(
                "presence is not kept for this room",
            ));
        }
        if !session.rooms.contains(room.as_str()) {
            return Err(CommandError::new(
                ErrorCode::NotJoined,
                "join the room before asking who is in it",
            ));
        }
        self.presence_of(room).await
    }

    /// Who is in `room` on every node (admin API and `presence`): `bad_request` for a room
    /// that keeps no presence, `unavailable` when the broker cannot say.
    pub async fn presence_of(&self, room: &RoomName) -> Result<PresenceList, CommandError> {
        let Some(rule) = self.policies.presence(room) else {
            return Err(CommandError::bad_request(
                "presence is not kept for this room",
            ));
        };
        // Read our own writes: this node's changes so far reach the broker first.
        self.presence.written(self.command_timeout).await;
        self.bounded(
            self.broker
                .presence(room.as_arc().clone(), rule.events, rule.max_members),
        )
        .await
        .map_err(|err| {
            CommandError::new(
                ErrorCode::Unavailable,
                format!("cannot read presence: {err}"),
            )
        })
    }

    /// Write presence changes in batches and keep this node live in every room, until
    /// `stop`. Spawned by `run`.
    pub async fn run_presence(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if self.policies.no_presence() {
            return;
        }
        self.presence
            .run(
                &*self.broker,
                &self.node_id,
                self.command_timeout,
                stop,
                &self.metrics,
            )
            .await;
    }

    /// Write what presence changes are pending now (at shutdown, after the clients are gone,
    /// so the others see them leave at once rather than after the ttl).
    pub async fn flush_presence(&self) {
        if self.policies.no_presence() {
            return;
        }
        if let Err(err) = self
            .presence
            .flush(
                &*self.broker,
                &self.node_id,
                false,
                self.command_timeout,
                &self.metrics,
            )
            .await
        {
            warn!(%err, "cannot write the last presence changes");
        }
    }

    pub(super) fn deliver_presence(&self, event: &PresenceEvent) {
        if !self
            .policies
            .presence(&event.room)
            .is_some_and(|rule| rule.events)
        {
            return;
        }
        let frame = protocol::member_event(
            &event.room,
            &event.user,
            event.joined,
            event.ts,
            event.info.as_deref(),
        );
        let delivery = self.hub.deliver_room(&event.room, &frame, None, None, None);
        self.metrics.messages_delivered.inc_by(delivery.delivered);
        self.metrics
            .dropped(DropReason::SlowConsumer, delivery.overflowed);
    }
}
