//! Dispatch: broker events (publications, presence events, broker up and down) turned into
//! hub deliveries and metrics, one at a time in the order the broker sent them.
//!
//! Catching up after an outage is `history`'s; fan-out to outboxes is the hub's.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::{Node, now_ms};
use crate::broker::{BrokerEvent, Envelope, Position, Target};
use crate::metrics::DropReason;
use crate::outbox::{ConflationKey, conflation_key};
use crate::protocol::Frame;

impl Node {
    /// Hand one broker event to the hub.
    pub async fn handle_event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Publication(envelope) => self.deliver(&envelope),
            BrokerEvent::Presence(event) => self.deliver_presence(&event),
            BrokerEvent::Control { target, control } => self.apply_control(&target, control),
            BrokerEvent::Up { resumed } => {
                self.metrics.broker_up.set(1);
                self.reload_revocations().await;
                if resumed {
                    self.metrics.broker_reconnects.inc();
                    self.catch_up().await;
                }
            }
            BrokerEvent::Down => {
                self.metrics.broker_up.set(0);
                warn!("broker down: publishes fail with `unavailable` until it returns");
            }
        }
    }

    pub(super) fn deliver(&self, envelope: &Envelope) {
        let mut offset = None;
        if let Target::Room(room) = &envelope.target {
            match Position::parse(&envelope.id) {
                Some(position) => {
                    offset = Some(position.offset);
                    if self.hub.room_members(room) > 0 {
                        self.cursors().entry(room.clone()).or_default();
                    }
                    if self.already_delivered(room, position) {
                        return;
                    }
                }
                None if self.policies.retention(room).is_some() => {
                    self.metrics.history_unkept.inc();
                }
                None => {}
            }
        }
        let age_ms = now_ms().saturating_sub(envelope.ts);
        self.metrics
            .delivery_latency
            .observe(age_ms as f64 / 1000.0);
        let frame = self.compressible(envelope.frame());
        let delivery = match &envelope.target {
            Target::Room(room) => {
                let skip = envelope
                    .origin
                    .as_ref()
                    .filter(|o| !o.echo && o.node == self.instance)
                    .map(|o| o.conn);
                let key = self.conflation_key(room, envelope.key.as_deref());
                self.hub
                    .deliver_room(room, &frame, skip, offset, key.as_ref())
            }
            Target::User(user) => self.hub.deliver_user(user, &frame),
            Target::Broadcast => self.hub.deliver_all(&frame),
        };
        self.metrics.messages_delivered.inc_by(delivery.delivered);
        self.metrics
            .dropped(DropReason::SlowConsumer, delivery.overflowed);
        self.metrics.messages_conflated.inc_by(delivery.conflated);
    }

    /// A frame for many members: with `server.compression` on and the frame long enough, its
    /// compressed form is computed once, by the first writer of a member that negotiated it.
    fn compressible(&self, frame: Frame) -> Frame {
        let server = &self.config.server;
        if server.compression && frame.text().len() >= server.compression_min_bytes {
            frame.sharing_compressed()
        } else {
            frame
        }
    }

    /// The key under which a room message replaces older ones still queued: only in a
    /// `conflate.rooms` room, and only for a key within `conflate.max_key_bytes` (publishes
    /// through this node were refused above it; a service's own Redis PUBLISH cannot be, so
    /// its message is delivered unconflated and counted).
    fn conflation_key(&self, room: &str, key: Option<&str>) -> Option<ConflationKey> {
        let key = key?;
        if !self.policies.conflated(room) {
            return None;
        }
        if key.len() > self.config.conflate.max_key_bytes {
            self.metrics.conflation_keys_too_long.inc();
            return None;
        }
        Some(conflation_key(room, key))
    }

    /// Feed broker events to the hub until the broker's queue closes.
    pub async fn dispatch(self: Arc<Self>, mut events: mpsc::Receiver<BrokerEvent>) {
        let mut batch = Vec::with_capacity(64);
        while events.recv_many(&mut batch, 64).await > 0 {
            for event in batch.drain(..) {
                self.handle_event(event).await;
            }
        }
    }
}
