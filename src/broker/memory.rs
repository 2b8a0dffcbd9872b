//! The embedded in-process broker, the default when no Redis is configured.
//!
//! It hands every publish straight back to its node as a [`BrokerEvent`], exactly as Redis
//! would, so a single node and a cluster share one delivery path and one ordering rule. It
//! leaves interest tracking to the node: the hub drops publications for rooms with no member.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxFuture, Broker, BrokerError, BrokerEvent, Envelope, Target};

pub struct MemoryBroker {
    events: mpsc::Sender<BrokerEvent>,
    /// A publish waits at most this long for room in the node's event queue, then fails with
    /// `unavailable` rather than hold its publisher forever.
    publish_timeout: Duration,
}

impl MemoryBroker {
    pub fn new(events: mpsc::Sender<BrokerEvent>, publish_timeout: Duration) -> Self {
        MemoryBroker {
            events,
            publish_timeout,
        }
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            match self.events.try_send(BrokerEvent::Publication(envelope)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(event)) => {
                    tokio::time::timeout(self.publish_timeout, self.events.send(event))
                        .await
                        .map_err(|_| BrokerError::Timeout)?
                        .map_err(|_| BrokerError::Unavailable("node is shutting down".into()))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(BrokerError::Unavailable("node is shutting down".into()))
                }
            }
        })
    }

    fn subscribe(&self, _target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, _target: Target) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_up(&self) -> bool {
        !self.events.is_closed()
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::data_from_payload;

    fn envelope(id: &str) -> Envelope {
        Envelope {
            target: Target::Room("r".into()),
            id: id.into(),
            data: data_from_payload(b"1"),
            from: "server".into(),
            ts: 0,
            origin: None,
        }
    }

    #[tokio::test]
    async fn publishes_come_back_in_order() {
        let (tx, mut rx) = mpsc::channel(8);
        let broker = MemoryBroker::new(tx, Duration::from_millis(50));
        for i in 0..5 {
            broker
                .publish(envelope(&i.to_string()))
                .await
                .expect("publish");
        }
        for i in 0..5 {
            match rx.recv().await {
                Some(BrokerEvent::Publication(e)) => assert_eq!(e.id, i.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_full_queue_times_out_instead_of_waiting_forever() {
        let (tx, _rx) = mpsc::channel(1);
        let broker = MemoryBroker::new(tx, Duration::from_millis(20));
        broker.publish(envelope("a")).await.expect("first fits");
        assert_eq!(
            broker.publish(envelope("b")).await,
            Err(BrokerError::Timeout)
        );
    }
}
