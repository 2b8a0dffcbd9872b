//! Webhook delivery (`[webhooks]`): takes the events the broker recorded, POSTs them in
//! batches to `webhooks.url` signed with `webhooks.secret`, retries with capped backoff while
//! the backend fails, acknowledges only on 2xx, and parks a batch after
//! `webhooks.max_attempts` failures. Every node runs one delivery task; on Redis they share the
//! stream through a consumer group, and a batch a node left untouched (it died) is taken over.
//!
//! Owns the request (body, signature, timeout), the retry and park decisions and the webhook
//! metrics. Leaves to others: deciding and recording events, the queue itself and takeover
//! (the broker's [`WebhookStore`]), the admin routes (`admin`).

pub mod sign;

use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use crate::broker::{QueuedEvent, WebhookEvent, WebhookSettings, WebhookStore};
use crate::config::WebhooksConfig;
use crate::metrics::Metrics;

/// How the broker records events for this configuration; `None` without a url.
pub fn settings(config: &WebhooksConfig) -> Option<WebhookSettings> {
    config.enabled().then(|| WebhookSettings {
        leave_delay: Duration::from_millis(config.leave_delay_ms),
    })
}

/// The body of a POST: `{"events": [{"id","type","room","user","ts"}, …]}`.
pub fn body(events: &[WebhookEvent]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        events: &'a [WebhookEvent],
    }
    serde_json::to_vec(&Body { events }).unwrap_or_else(|_| b"{\"events\":[]}".to_vec())
}

/// The webhook metrics, registered when delivery starts.
pub struct WebhookMetrics {
    pub delivered: IntCounter,
    pub failed: IntCounter,
    pub parked: IntCounter,
    pub pending: IntGauge,
}

impl WebhookMetrics {
    fn new(metrics: &Metrics) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            if let Err(err) = metrics.register(Box::new(c.clone())) {
                warn!(%err, name, "webhook metric not registered");
            }
            c
        };
        let pending = IntGauge::new(
            "roomcast_webhook_pending",
            "Webhook events recorded and not yet delivered nor parked (all nodes)",
        )
        .unwrap_or_else(|e| panic!("metric roomcast_webhook_pending: {e}"));
        if let Err(err) = metrics.register(Box::new(pending.clone())) {
            warn!(%err, "webhook metric not registered");
        }
        WebhookMetrics {
            delivered: counter(
                "roomcast_webhook_events_delivered_total",
                "Webhook events acknowledged by the backend (2xx) from this node",
            ),
            failed: counter(
                "roomcast_webhook_attempts_failed_total",
                "Webhook POSTs that failed (not 2xx, timed out, unreachable)",
            ),
            parked: counter(
                "roomcast_webhook_events_parked_total",
                "Webhook events parked after webhooks.max_attempts failures",
            ),
            pending,
        }
    }
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("timed out")]
    Timeout,
    #[error("unreachable: {0}")]
    Unreachable(String),
}

/// One node's delivery task.
pub struct Delivery {
    client: reqwest::Client,
    config: WebhooksConfig,
    consumer: String,
    metrics: WebhookMetrics,
}

impl Delivery {
    /// `consumer` names this node in the consumer group (its node id).
    pub fn new(config: WebhooksConfig, consumer: String, metrics: &Metrics) -> Option<Delivery> {
        if !config.enabled() {
            return None;
        }
        let built = crate::backend_http::client_builder()
            .map_err(|err| err.to_string())
            .and_then(|builder| {
                builder
                    .timeout(Duration::from_millis(config.timeout_ms))
                    .build()
                    .map_err(|err| err.to_string())
            });
        // Events stay recorded (Redis stream or in-process queue) for a node that can deliver.
        let client = built
            .map_err(|err| error!(%err, "cannot build the webhook HTTP client: not delivering"))
            .ok()?;
        Some(Delivery {
            client,
            consumer,
            metrics: WebhookMetrics::new(metrics),
            config,
        })
    }

    fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.config.claim_idle_ms)
    }

    /// Deliver until `stop`: record due departures, take a batch, deliver it; when there is
    /// nothing to take, wait `webhooks.poll_ms`.
    pub async fn run(&self, store: &dyn WebhookStore, stop: CancellationToken) {
        let poll = Duration::from_millis(self.config.poll_ms);
        let max = self.config.batch_size;
        while !stop.is_cancelled() {
            if let Err(err) = store.webhook_due(max).await {
                debug!(%err, "cannot record due webhook departures");
            }
            if let Ok(pending) = store.webhook_pending().await {
                self.metrics.pending.set(pending as i64);
            }
            match store
                .webhook_take(&self.consumer, max, self.claim_idle())
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    self.deliver(store, batch, &stop).await;
                    continue;
                }
                Ok(_) => {}
                Err(err) => debug!(%err, "cannot take webhook events"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// POST one batch until the backend takes it or it has failed `max_attempts` times (then
    /// park it). Returns early on `stop`, leaving the batch to another node.
    async fn deliver(
        &self,
        store: &dyn WebhookStore,
        batch: Vec<QueuedEvent>,
        stop: &CancellationToken,
    ) {
        let events: Vec<WebhookEvent> = batch.iter().map(|e| e.event.clone()).collect();
        let entries: Vec<String> = batch.iter().map(|e| e.entry.clone()).collect();
        let body = body(&events);
        let mut backoff = Duration::from_millis(self.config.retry_initial_ms);
        let max_backoff = Duration::from_millis(self.config.retry_max_ms);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.post(&body).await {
                Ok(()) => {
                    self.metrics.delivered.inc_by(events.len() as u64);
                    if let Err(err) = store.webhook_ack(entries).await {
                        // Still pending: another node (or this one) delivers them again later.
                        warn!(%err, "webhook events delivered but not acknowledged");
                    }
                    return;
                }
                Err(err) => {
                    self.metrics.failed.inc();
                    if attempts >= self.config.max_attempts {
                        warn!(%err, attempts, events = events.len(), "parking webhook events");
                        match store.webhook_park(batch, err.to_string(), attempts).await {
                            Ok(()) => self.metrics.parked.inc_by(events.len() as u64),
                            Err(err) => warn!(%err, "cannot park webhook events; left pending"),
                        }
                        return;
                    }
                    debug!(%err, attempts, "webhook POST failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max_backoff);
            if let Err(err) = store.webhook_hold(&self.consumer, entries.clone()).await {
                debug!(%err, "cannot keep hold of webhook events");
            }
        }
    }

    async fn post(&self, body: &[u8]) -> Result<(), PostError> {
        let t = crate::clock::now_ms() / 1000;
        let signature = sign::signature(self.config.secret.as_bytes(), t, body);
        let response = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::HEADER, signature)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|err| {
                if err.is_timeout() {
                    PostError::Timeout
                } else {
                    PostError::Unreachable(err.to_string())
                }
            })?;
        let status = response.status();
        // Read the (ignored) answer so the connection goes back to the pool.
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status.as_u16()))
        }
    }
}
