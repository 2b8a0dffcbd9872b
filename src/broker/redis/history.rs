//! Room history (`history.rooms`) in Redis: a list and a hash beside the room's channel, keyed
//! with the channel as hash tag (`{roomcast:room:news}:log`, `…:meta`) so that channel and
//! keys share one Redis Cluster slot. `roomcast_publish` keeps, numbers and publishes a message
//! in one atomic step, for nodes and for services alike (`FCALL roomcast_publish 1
//! roomcast:room:ROOM '{"data":…}'`); `roomcast_history` reads it back.
//!
//! Leaves to others: which rooms keep history and how much (the node's [`Retention`]), the
//! function library itself (`functions.lua`, loaded by `commands`).

use std::sync::Arc;

use super::RedisBroker;
use super::commands::{publish_command, sharded, with_functions};
use crate::broker::{
    BoxFuture, BrokerError, Envelope, HistoryPage, HistoryStore, Position, Retention, Target,
};
use crate::protocol::{decode_envelope, encode_envelope_unnumbered};

impl HistoryStore for RedisBroker {
    fn publish_retained(
        &self,
        envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'_, Result<String, BrokerError>> {
        Box::pin(async move {
            self.ensure_up()?;
            let channel = self.channel(&envelope.target);
            let payload = encode_envelope_unnumbered(&envelope);
            let verb = publish_command(&self.shared.commands, sharded(&envelope.target));
            let call = || {
                let mut cmd = redis::cmd("FCALL");
                cmd.arg("roomcast_publish")
                    .arg(1)
                    .arg(&channel)
                    .arg(&payload)
                    .arg(retention.size)
                    .arg(retention.ttl.as_secs().max(1))
                    .arg(Position::new_epoch())
                    .arg(1)
                    .arg(verb);
                cmd
            };
            with_functions(&self.shared.commands, call).await
        })
    }

    fn history(&self, room: Arc<str>) -> BoxFuture<'_, Result<HistoryPage, BrokerError>> {
        Box::pin(async move {
            let target = Target::Room(room);
            let channel = self.channel(&target);
            let call = || {
                let mut cmd = redis::cmd("FCALL_RO");
                cmd.arg("roomcast_history").arg(1).arg(&channel);
                cmd
            };
            let (epoch, top, entries): (String, String, Vec<Vec<u8>>) =
                with_functions(&self.shared.commands, call).await?;
            let now = crate::clock::now_ms();
            Ok(HistoryPage {
                epoch,
                top: top.parse().unwrap_or(0),
                entries: entries
                    .iter()
                    .map(|payload| decode_envelope(target.clone(), payload, String::new, now))
                    .collect(),
            })
        })
    }
}
