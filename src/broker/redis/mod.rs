//! The Redis broker: roomcast nodes share rooms through Redis pub/sub (docs/protocol.md "Redis
//! channels"), on one Redis or on a Redis Cluster (`redis.cluster`).
//!
//! Owns: the client-facing [`RedisBroker`] (starting it, publish/subscribe, and handing
//! subscription changes to its pub/sub task) and the channel names. Its jobs live apart:
//! `commands` (the pool or cluster connection, PUBLISH/SPUBLISH, the function library
//! `functions.lua`), `history`, `presence` and `nodes` (what they keep in Redis), `reconnect` (what both
//! pub/sub tasks share: wanted channels, Up/Down, reconnect with capped backoff),
//! `subscriptions` (wanted / live / releasing, no I/O), `pubsub` (the single-Redis task) and
//! `cluster` (slot map, RESP reader and the cluster task).
//!
//! Leaves to others: which channels are needed and when (the node: first local member
//! subscribes, last one unsubscribes), delivery to clients and echo suppression (node and hub,
//! from the [`Origin`](crate::protocol::Origin) in the envelope), the up/down gauge and the
//! reconnect counter (the node, from [`BrokerEvent::Up`] / [`BrokerEvent::Down`]), and every
//! wire format (`protocol`).
//!
//! Every node delivers what Redis delivers to it, its own publishes included, so every member
//! of a room sees Redis's one order. Nothing here is unbounded: subscription changes reach the
//! pub/sub task through a bounded queue, and publications reach the node through its bounded
//! event queue, awaited (back-pressure). The redis crate buffers between the socket and the
//! pub/sub stream without a bound of its own; the probe bounds that backlog (see
//! [`Timings::probe_every`]).

mod cluster;
mod commands;
mod control;
mod error;
mod history;
mod nodes;
mod presence;
mod pubsub;
mod reconnect;
mod subscriptions;
mod tls;
mod webhooks;

use self::error::RedisFailure;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::cluster::ClusterClientBuilder;
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span};

use self::cluster::ClusterPubSubTask;
use self::commands::{Commands, publish, sharded};
use self::pubsub::{PubSubTask, redacted_addr};
use self::reconnect::{
    COMMAND_QUEUE, Channel, Demand, Shared, SubscriptionChange, run_reconnecting,
};
use super::{
    BoxFuture, BrokerError, BrokerEvent, Envelope, PubSub, Target, Unavailable, WebhookSettings,
};
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::protocol::encode_envelope;

pub use self::cluster::key_slot;
pub use self::commands::FUNCTIONS;
pub use self::reconnect::Timings;
pub use self::webhooks::{GROUP as WEBHOOK_GROUP, leaves_key, parked_key, stream_key};

pub struct RedisBroker {
    shared: Arc<Shared>,
    subscriptions: mpsc::Sender<SubscriptionChange>,
    /// Stops the pub/sub task when the broker is dropped.
    stop: CancellationToken,
    /// Record webhook events (`[webhooks]` with a url).
    webhooks: Option<WebhookSettings>,
}

impl RedisBroker {
    async fn subscribe_channel(&self, channel: String, target: Channel) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.subscriptions
            .send(SubscriptionChange::Subscribe((channel, target, reply)))
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Start the broker: returns at once, connects in the background, and keeps reconnecting.
    /// Fails only on a configuration that can never work (an unparsable URL) or outside a
    /// tokio runtime; a Redis that is down at start is not an error.
    pub fn start(
        config: &RedisConfig,
        events: mpsc::Sender<BrokerEvent>,
        metrics: Arc<Metrics>,
    ) -> Result<RedisBroker, BrokerError> {
        Self::start_with(config, events, metrics, Timings::default())
    }

    /// [`RedisBroker::start`] with other timings.
    pub fn start_with(
        config: &RedisConfig,
        events: mpsc::Sender<BrokerEvent>,
        metrics: Arc<Metrics>,
        timings: Timings,
    ) -> Result<RedisBroker, BrokerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RedisFailure::NoRuntime)?;
        if config.cluster {
            return Self::start_cluster(config, events, metrics, timings, runtime);
        }
        // The URL may hold a password: errors name the key, never the value.
        let client = tls::client(&config.url, &config.tls_ca_file)?;
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(command_timeout))
            .set_response_timeout(Some(command_timeout));
        // The client's connection info carries its TLS trust to the pool's connections.
        let manager =
            Manager::new_with_config(client.get_connection_info().clone(), connection_config)
                .map_err(|err| bad_setting("redis.url", &err))?;
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(command_timeout))
            .create_timeout(Some(command_timeout))
            .recycle_timeout(Some(command_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(RedisFailure::PoolSetup)?;

        let shared = Arc::new(Shared {
            up: AtomicBool::new(false),
            commands: Commands::Single(pool),
            prefix: config.prefix.clone(),
            metrics,
        });
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let stop = CancellationToken::new();
        let token = rand::random::<u64>() & 0xffff_ffff_ffff;
        let addr = redacted_addr(&client);
        let task = PubSubTask::new(
            Demand::new(
                shared.clone(),
                events,
                commands_rx,
                stop.clone(),
                timings,
                token,
            ),
            client,
            command_timeout,
            format!("{}probe:{token:012x}", config.prefix),
        );
        info!(redis = %addr, prefix = %config.prefix, "starting the redis broker");
        runtime.spawn(run_reconnecting(task, info_span!("pubsub", link = %addr)));
        Ok(RedisBroker {
            shared,
            subscriptions: commands_tx,
            stop,
            webhooks: None,
        })
    }

    /// The broker on a Redis Cluster: commands through the redis crate's cluster connection,
    /// pub/sub through [`ClusterPubSubTask`].
    fn start_cluster(
        config: &RedisConfig,
        events: mpsc::Sender<BrokerEvent>,
        metrics: Arc<Metrics>,
        timings: Timings,
        runtime: tokio::runtime::Handle,
    ) -> Result<RedisBroker, BrokerError> {
        if config.prefix.contains(['{', '}']) {
            // A brace would make the channel's hash tag differ from its keys' (`{channel}:log`).
            return Err(RedisFailure::Unsupported {
                key: "redis.prefix".into(),
                requirement: "must not contain `{` or `}` with redis.cluster",
            }
            .into());
        }
        let seeds = config.seed_urls();
        let command_timeout = Duration::from_millis(config.command_timeout_ms);
        let client = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(command_timeout)
            .response_timeout(command_timeout)
            .build()
            .map_err(|err| bad_setting("redis.urls", &err))?;
        let shared = Arc::new(Shared {
            up: AtomicBool::new(false),
            commands: Commands::Cluster {
                client: Box::new(client),
                connection: tokio::sync::OnceCell::new(),
                timeout: command_timeout,
            },
            prefix: config.prefix.clone(),
            metrics,
        });
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let stop = CancellationToken::new();
        let task = ClusterPubSubTask::new(
            shared.clone(),
            &seeds,
            events,
            commands_rx,
            stop.clone(),
            command_timeout,
            timings,
        )?;
        info!(seeds = seeds.len(), prefix = %config.prefix, "starting the redis cluster broker");
        let span = info_span!("pubsub", link = "cluster");
        runtime.spawn(run_reconnecting(task, span));
        Ok(RedisBroker {
            shared,
            subscriptions: commands_tx,
            stop,
            webhooks: None,
        })
    }

    /// Record webhook events (`[webhooks]` with a url) from now on.
    pub fn with_webhook_events(mut self, settings: WebhookSettings) -> Self {
        self.webhooks = Some(settings);
        self
    }

    fn channel(&self, target: &Target) -> String {
        channel_name(&self.shared.prefix, target)
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.commands.close();
    }
}

impl RedisBroker {
    /// Publishes fail at once while the pub/sub link is down: the node would not hear them.
    fn ensure_up(&self) -> Result<(), BrokerError> {
        if self.shared.up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Unavailable::NotConnected.into())
        }
    }

    async fn unsubscribe_channel(&self, channel: String) -> Result<(), BrokerError> {
        self.subscriptions
            .send(SubscriptionChange::Unsubscribe { channel })
            .await
            .map_err(|_| stopped())
    }
}

impl PubSub for RedisBroker {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.ensure_up()?;
            let channel = self.channel(&envelope.target);
            publish(
                &self.shared.commands,
                &channel,
                sharded(&envelope.target),
                &encode_envelope(&envelope),
            )
            .await
        })
    }

    fn subscribe(&self, target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let channel = self.channel(&target);
            self.subscribe_channel(channel, Channel::Messages(target))
                .await
        })
    }

    fn unsubscribe(&self, target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.unsubscribe_channel(self.channel(&target)))
    }

    fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn stopped() -> BrokerError {
    Unavailable::BrokerStopped.into()
}

fn bad_setting(key: &str, err: &RedisError) -> BrokerError {
    RedisFailure::BadSetting {
        key: key.to_owned(),
        kind: err.kind(),
    }
    .into()
}

/// `{prefix}room:{ROOM}`, `{prefix}user:{USER}`, `{prefix}broadcast`.
pub fn channel_name(prefix: &str, target: &Target) -> String {
    match target {
        Target::Room(room) => format!("{prefix}room:{room}"),
        Target::User(user) => format!("{prefix}user:{user}"),
        Target::Broadcast => format!("{prefix}broadcast"),
    }
}

/// `{prefix}presence:{ROOM}`: where `roomcast_presence` publishes a room's `member_joined` /
/// `member_left` (apart from `{prefix}room:…`, whose payloads are messages).
pub fn presence_channel(prefix: &str, room: &str) -> String {
    format!("{prefix}presence:{room}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_follow_the_protocol() {
        assert_eq!(
            channel_name("roomcast:", &Target::Room("news".into())),
            "roomcast:room:news"
        );
        assert_eq!(channel_name("p:", &Target::User("42".into())), "p:user:42");
        assert_eq!(
            channel_name("roomcast:", &Target::Broadcast),
            "roomcast:broadcast"
        );
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_without_echoing_it() {
        let (tx, _rx) = mpsc::channel(1);
        let config = RedisConfig {
            url: "redis://:secret@[not-a-host".into(),
            ..RedisConfig::default()
        };
        let err = RedisBroker::start(&config, tx, Arc::new(Metrics::new()))
            .err()
            .expect("refused");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
