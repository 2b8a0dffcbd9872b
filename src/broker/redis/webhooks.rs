//! Webhooks (`[webhooks]`) in Redis: every event is an entry of the stream `{prefix}webhooks`,
//! XADDed by `roomcast_presence` in the call that decides it; departures waiting for their
//! leave delay are in the sorted set `{prefix}webhooks:leaves`, and `roomcast_webhook_due`
//! records them when it is over. Nodes read the stream through the consumer group `roomcast`
//! (`roomcast_webhook_take`: first XAUTOCLAIM of entries another node left untouched, then
//! XREADGROUP), acknowledge and delete delivered entries (`roomcast_webhook_ack`), and move
//! entries that failed too often to the stream `{prefix}webhooks:parked`
//! (`roomcast_webhook_park`), from where `roomcast_webhook_replay` queues them again.
//!
//! Leaves to others: the functions themselves (`functions.lua`), delivery (`webhooks`).
//! A single Redis only (the stream and the rooms' keys are in different slots on a cluster;
//! configuration refuses webhooks with `redis.cluster`).

use std::time::Duration;

use super::RedisBroker;
use super::commands::{redis_error, with_functions};
use crate::broker::{BoxFuture, BrokerError, ParkedEvent, QueuedEvent, WebhookEvent, WebhookStore};

/// The consumer group every node reads the stream through.
pub const GROUP: &str = "roomcast";

/// A stream entry as the functions return it.
type Entry = (String, Vec<(String, String)>);

/// `{prefix}webhooks`: the events waiting for delivery.
pub fn stream_key(prefix: &str) -> String {
    format!("{prefix}webhooks")
}

/// `{prefix}webhooks:leaves`: departures waiting for their leave delay.
pub fn leaves_key(prefix: &str) -> String {
    format!("{prefix}webhooks:leaves")
}

/// `{prefix}webhooks:parked`: events that failed `webhooks.max_attempts` times.
pub fn parked_key(prefix: &str) -> String {
    format!("{prefix}webhooks:parked")
}

fn event_of(entry: &str, fields: Vec<(String, String)>) -> (WebhookEvent, Vec<(String, String)>) {
    let mut event = WebhookEvent {
        id: entry.to_owned(),
        kind: String::new(),
        room: String::new(),
        user: None,
        ts: 0,
    };
    let mut rest = Vec::new();
    for (field, value) in fields {
        match field.as_str() {
            "id" => event.id = value,
            "type" => event.kind = value,
            "room" => event.room = value,
            "user" => event.user = Some(value),
            "ts" => event.ts = value.parse().unwrap_or(0),
            _ => rest.push((field, value)),
        }
    }
    (event, rest)
}

impl RedisBroker {
    fn webhook_call(&self, function: &str, keys: &[String], args: &[String]) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(function).arg(keys.len()).arg(keys).arg(args);
        cmd
    }
}

impl WebhookStore for RedisBroker {
    fn webhook_due(&self, max: usize) -> BoxFuture<'_, Result<u64, BrokerError>> {
        Box::pin(async move {
            if self.webhooks.is_none() {
                return Ok(0);
            }
            let prefix = &self.shared.prefix;
            let keys = [leaves_key(prefix), stream_key(prefix)];
            let args = [prefix.clone(), max.to_string()];
            with_functions(&self.shared.commands, || {
                self.webhook_call("roomcast_webhook_due", &keys, &args)
            })
            .await
        })
    }

    fn webhook_take(
        &self,
        consumer: &str,
        max: usize,
        claim_idle: Duration,
    ) -> BoxFuture<'_, Result<Vec<QueuedEvent>, BrokerError>> {
        let consumer = consumer.to_owned();
        Box::pin(async move {
            if self.webhooks.is_none() {
                return Ok(Vec::new());
            }
            let keys = [stream_key(&self.shared.prefix)];
            let args = [
                GROUP.to_owned(),
                consumer,
                max.to_string(),
                claim_idle.as_millis().to_string(),
            ];
            let entries: Vec<Entry> = with_functions(&self.shared.commands, || {
                self.webhook_call("roomcast_webhook_take", &keys, &args)
            })
            .await?;
            Ok(entries
                .into_iter()
                .map(|(entry, fields)| QueuedEvent {
                    event: event_of(&entry, fields).0,
                    entry,
                })
                .collect())
        })
    }

    fn webhook_hold(
        &self,
        consumer: &str,
        entries: Vec<String>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        let consumer = consumer.to_owned();
        Box::pin(async move {
            if entries.is_empty() {
                return Ok(());
            }
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(stream_key(&self.shared.prefix))
                .arg(GROUP)
                .arg(consumer)
                .arg(0)
                .arg(&entries)
                .arg("JUSTID");
            self.shared
                .commands
                .send::<redis::Value, _>(&cmd)
                .await?
                .map(|_| ())
                .map_err(redis_error)
        })
    }

    fn webhook_ack(&self, entries: Vec<String>) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let keys = [stream_key(&self.shared.prefix)];
            let mut args = vec![GROUP.to_owned()];
            args.extend(entries);
            let _: u64 = with_functions(&self.shared.commands, || {
                self.webhook_call("roomcast_webhook_ack", &keys, &args)
            })
            .await?;
            Ok(())
        })
    }

    fn webhook_park(
        &self,
        events: Vec<QueuedEvent>,
        error: String,
        attempts: u32,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let prefix = &self.shared.prefix;
            let keys = [stream_key(prefix), parked_key(prefix)];
            let mut args = vec![GROUP.to_owned(), error, attempts.to_string()];
            args.extend(events.into_iter().map(|e| e.entry));
            let _: u64 = with_functions(&self.shared.commands, || {
                self.webhook_call("roomcast_webhook_park", &keys, &args)
            })
            .await?;
            Ok(())
        })
    }

    fn webhook_parked(&self, max: usize) -> BoxFuture<'_, Result<Vec<ParkedEvent>, BrokerError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(parked_key(&self.shared.prefix))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(max);
            let entries: Vec<Entry> = self
                .shared
                .commands
                .send(&cmd)
                .await?
                .map_err(redis_error)?;
            Ok(entries
                .into_iter()
                .map(|(entry, fields)| {
                    let (event, rest) = event_of(&entry, fields);
                    let mut parked = ParkedEvent {
                        event,
                        error: String::new(),
                        attempts: 0,
                        parked_at: 0,
                    };
                    for (field, value) in rest {
                        match field.as_str() {
                            "error" => parked.error = value,
                            "attempts" => parked.attempts = value.parse().unwrap_or(0),
                            "parked_at" => parked.parked_at = value.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    parked
                })
                .collect())
        })
    }

    fn webhook_replay(
        &self,
        ids: Vec<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<u64, BrokerError>> {
        Box::pin(async move {
            let prefix = &self.shared.prefix;
            let keys = [parked_key(prefix), stream_key(prefix)];
            let mut args = vec![max.to_string()];
            args.extend(ids);
            with_functions(&self.shared.commands, || {
                self.webhook_call("roomcast_webhook_replay", &keys, &args)
            })
            .await
        })
    }

    fn webhook_pending(&self) -> BoxFuture<'_, Result<u64, BrokerError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("XLEN");
            cmd.arg(stream_key(&self.shared.prefix));
            self.shared.commands.send(&cmd).await?.map_err(redis_error)
        })
    }
}
