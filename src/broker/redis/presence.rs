//! Presence (`presence.rooms`) in Redis, beside the room's channel: per room, a hash per node
//! (`{roomcast:room:ROOM}:presence:NODE`, user → its connections on that node), a sorted set of
//! the nodes scored by when each stops counting (`{roomcast:room:ROOM}:presence`), and the sum
//! over nodes (`…:presence-conns`, `…:presence-users`). The function `roomcast_presence`
//! applies one node's changes to one room atomically: it first drops the other nodes whose
//! time is up, then sets the node's users, and publishes `{"user","event":"joined"|"left","ts"}`
//! on `{prefix}presence:ROOM` for users whose sum leaves or reaches 0 (rooms with events only),
//! a joining user's `info` with it (kept in `…:presence-info` while the user is present).
//! A node sends all its rooms' changes in one pipeline (one call per room on a cluster, where
//! rooms spread over shards); `roomcast_presence_read` returns the count and the first users
//! in name order without reading the whole room.
//!
//! Leaves to others: when a node writes and what (the node's presence module), the function
//! library itself (`functions.lua`), the subscription of the event channels (the pub/sub task).

use std::sync::Arc;
use std::time::Duration;

use super::commands::{send_calls, with_functions};
use super::reconnect::Channel;
use super::{RedisBroker, leaves_key, presence_channel, stream_key};
use crate::broker::{
    BoxFuture, BrokerError, PresenceList, PresenceStore, PresenceUpdate, Target, presence_live_for,
};
use crate::protocol::PresenceMember;

/// At most this many rooms' presence in one pipeline.
const PRESENCE_PIPELINE: usize = 256;

impl RedisBroker {
    /// `FCALL roomcast_presence` for one room's update.
    fn presence_call(&self, node: &str, ttl: Duration, update: &PresenceUpdate) -> redis::Cmd {
        let live_ms = presence_live_for(ttl).as_millis().max(1) as u64;
        let expire_ms = (ttl * 2).as_millis().max(1) as u64;
        let events = if update.events {
            presence_channel(&self.shared.prefix, &update.room)
        } else {
            String::new()
        };
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("roomcast_presence")
            .arg(1)
            .arg(self.channel(&Target::Room(update.room.clone())))
            .arg(node)
            .arg(live_ms)
            .arg(expire_ms)
            .arg(events)
            .arg(if update.full { "1" } else { "0" });
        self.webhook_args(&mut cmd, &update.room);
        cmd.arg(update.info.len());
        for (user, info) in &update.info {
            cmd.arg(user.as_ref()).arg(info.as_ref());
        }
        for (user, conns) in &update.users {
            cmd.arg(user.as_ref()).arg(*conns);
        }
        cmd
    }
}

impl RedisBroker {
    /// `WH_STREAM WH_LEAVES WH_DELAY_MS ROOM` of the presence functions (an empty stream:
    /// no webhooks).
    fn webhook_args(&self, cmd: &mut redis::Cmd, room: &str) {
        match &self.webhooks {
            Some(settings) => cmd
                .arg(stream_key(&self.shared.prefix))
                .arg(leaves_key(&self.shared.prefix))
                .arg(settings.leave_delay.as_millis() as u64)
                .arg(room),
            None => cmd.arg("").arg("").arg(0).arg(room),
        };
    }
}

impl PresenceStore for RedisBroker {
    fn presence_update(
        &self,
        node: &str,
        ttl: Duration,
        updates: Vec<PresenceUpdate>,
    ) -> BoxFuture<'_, Result<Vec<Arc<str>>, BrokerError>> {
        let node = node.to_owned();
        Box::pin(async move {
            self.ensure_up()?;
            let mut lost = Vec::new();
            for chunk in updates.chunks(PRESENCE_PIPELINE) {
                let calls: Vec<redis::Cmd> = chunk
                    .iter()
                    .map(|update| self.presence_call(&node, ttl, update))
                    .collect();
                let answers: Vec<i64> = send_calls(&self.shared.commands, &calls).await?;
                for (update, answer) in chunk.iter().zip(answers) {
                    if answer == 1 {
                        lost.push(update.room.clone());
                    }
                }
            }
            Ok(lost)
        })
    }

    fn presence(
        &self,
        room: Arc<str>,
        events: bool,
        max: usize,
    ) -> BoxFuture<'_, Result<PresenceList, BrokerError>> {
        Box::pin(async move {
            let events = if events {
                presence_channel(&self.shared.prefix, &room)
            } else {
                String::new()
            };
            let channel = self.channel(&Target::Room(room.clone()));
            let call = || {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("roomcast_presence_read")
                    .arg(1)
                    .arg(&channel)
                    .arg(&events)
                    .arg(max);
                self.webhook_args(&mut cmd, &room);
                cmd
            };
            let (count, members): (u64, Vec<(String, u64, String)>) =
                with_functions(&self.shared.commands, call).await?;
            Ok(PresenceList {
                count,
                truncated: count > members.len() as u64,
                members: members
                    .into_iter()
                    .map(|(user, conns, info)| PresenceMember {
                        user,
                        conns,
                        info: (!info.is_empty()).then(|| Arc::from(info)),
                    })
                    .collect(),
            })
        })
    }

    fn subscribe_presence(&self, room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let channel = presence_channel(&self.shared.prefix, &room);
            self.subscribe_channel(channel, Channel::Presence(room))
                .await
        })
    }

    fn unsubscribe_presence(&self, room: Arc<str>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.unsubscribe_channel(presence_channel(&self.shared.prefix, &room)))
    }
}
