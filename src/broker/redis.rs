//! The Redis broker (issue 4): not written yet; `broker.kind = "redis"` is refused at start.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{BoxFuture, Broker, BrokerError, BrokerEvent, Envelope, Target};
use crate::config::RedisConfig;
use crate::metrics::Metrics;

pub struct RedisBroker;

impl RedisBroker {
    pub fn start(
        _config: &RedisConfig,
        _events: mpsc::Sender<BrokerEvent>,
        _metrics: Arc<Metrics>,
    ) -> Result<RedisBroker, BrokerError> {
        Err(BrokerError::Unavailable("the redis broker is not built yet".into()))
    }
}

impl Broker for RedisBroker {
    fn publish(&self, _envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Err(BrokerError::Unavailable("not built".into())) })
    }
    fn subscribe(&self, _target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Err(BrokerError::Unavailable("not built".into())) })
    }
    fn unsubscribe(&self, _target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Err(BrokerError::Unavailable("not built".into())) })
    }
    fn is_up(&self) -> bool {
        false
    }
    fn kind(&self) -> &'static str {
        "redis"
    }
}
