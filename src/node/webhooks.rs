//! Webhooks as the node runs them: its delivery task, and the parked events the admin API
//! lists and replays.
//!
//! Delivery is `crate::webhooks`'s; the queue is the broker's.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Node;
use crate::broker::{BrokerError, ParkedEvent};
use crate::webhooks::Delivery;

/// Most parked events one admin call lists or replays.
pub const MAX_PARKED_PAGE: usize = 1_000;

impl Node {
    /// Deliver webhook events until `stop` (nothing without `webhooks.url`). Spawned by `run`.
    pub async fn run_webhooks(self: Arc<Self>, stop: CancellationToken) {
        let Some(delivery) = Delivery::new(
            self.config.webhooks.clone(),
            self.node_id.clone(),
            &self.metrics,
        ) else {
            return;
        };
        delivery.run(self.broker.as_ref(), stop).await;
    }

    pub fn webhooks_enabled(&self) -> bool {
        self.config.webhooks.enabled()
    }

    /// The oldest `max` parked webhook events (`GET /api/webhooks/failed`).
    pub async fn webhooks_parked(&self, max: usize) -> Result<Vec<ParkedEvent>, BrokerError> {
        self.bounded(self.broker.webhook_parked(max.min(MAX_PARKED_PAGE)))
            .await
    }

    /// Queue parked events again (`POST /api/webhooks/replay`): those with these ids, or the
    /// oldest [`MAX_PARKED_PAGE`] when none is given.
    pub async fn webhooks_replay(&self, ids: Vec<String>) -> Result<u64, BrokerError> {
        self.bounded(self.broker.webhook_replay(ids, MAX_PARKED_PAGE))
            .await
    }
}
