//! The control plane in Redis: control envelopes published on the user and broadcast channels,
//! the revocations kept in one sorted set, `{prefix}revocations` (member: the revocation
//! without its end, score: its end in unix seconds), which expires with its last member, and
//! each user's server subscriptions, a set beside the user's channel
//! (`{roomcast:user:USER}:subs`, the channel as hash tag like history keys) with a TTL.
//!
//! Leaves to others: acting on controls and the in-memory mirror of revocations (the node),
//! the wire format (`protocol`).

use std::sync::Arc;
use std::time::Duration;

use super::RedisBroker;
use super::commands::{publish, redis_error, sharded};
use crate::broker::{BoxFuture, BrokerError, Control, ControlStore, Revocation, Target};
use crate::protocol::encode_control;

impl RedisBroker {
    fn revocations_key(&self) -> String {
        format!("{}revocations", self.shared.prefix)
    }

    fn subs_key(&self, user: Arc<str>) -> String {
        format!("{{{}}}:subs", self.channel(&Target::User(user)))
    }
}

impl ControlStore for RedisBroker {
    fn publish_control(
        &self,
        target: Target,
        control: Control,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.ensure_up()?;
            let channel = self.channel(&target);
            publish(
                &self.shared.commands,
                &channel,
                sharded(&target),
                &encode_control(&control),
            )
            .await
        })
    }

    fn store_revocations(
        &self,
        revocations: Vec<Revocation>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(last) = revocations.iter().map(Revocation::until).max() else {
                return Ok(());
            };
            let key = self.revocations_key();
            let now = crate::clock::now_ms() / 1000;
            let mut pipe = redis::pipe();
            let zadd = pipe.cmd("ZADD").arg(&key).arg("GT");
            for revocation in &revocations {
                zadd.arg(revocation.until()).arg(revocation.key());
            }
            pipe.ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .ignore();
            // NX sets the first expiry, GT only ever extends it: the set lives as long as
            // its longest revocation.
            for flag in ["NX", "GT"] {
                pipe.cmd("EXPIREAT").arg(&key).arg(last).arg(flag).ignore();
            }
            self.shared
                .commands
                .send::<(), _>(&pipe)
                .await?
                .map_err(redis_error)
        })
    }

    fn revocations(&self) -> BoxFuture<'_, Result<Vec<Revocation>, BrokerError>> {
        Box::pin(async move {
            let now = crate::clock::now_ms() / 1000;
            let mut cmd = redis::cmd("ZRANGEBYSCORE");
            cmd.arg(self.revocations_key())
                .arg(format!("({now}"))
                .arg("+inf")
                .arg("WITHSCORES");
            let kept: Vec<(Vec<u8>, u64)> = self
                .shared
                .commands
                .send(&cmd)
                .await?
                .map_err(redis_error)?;
            Ok(kept
                .into_iter()
                .filter_map(|(key, until)| Revocation::from_key(&key, until))
                .collect())
        })
    }

    fn set_server_sub(
        &self,
        user: Arc<str>,
        room: Arc<str>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let key = self.subs_key(user);
            let mut pipe = redis::pipe();
            match ttl {
                Some(ttl) => {
                    pipe.cmd("SADD").arg(&key).arg(&*room).ignore();
                    pipe.cmd("EXPIRE")
                        .arg(&key)
                        .arg(ttl.as_secs().max(1))
                        .ignore();
                }
                None => {
                    pipe.cmd("SREM").arg(&key).arg(&*room).ignore();
                }
            }
            self.shared
                .commands
                .send::<(), _>(&pipe)
                .await?
                .map_err(redis_error)
        })
    }

    fn server_subs(&self, user: Arc<str>) -> BoxFuture<'_, Result<Vec<String>, BrokerError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(self.subs_key(user));
            self.shared.commands.send(&cmd).await?.map_err(redis_error)
        })
    }
}
