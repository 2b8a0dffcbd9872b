//! The embedded in-process broker, the default when no Redis is configured.
//!
//! It hands every publish straight back to its node as a [`BrokerEvent`], exactly as Redis
//! would, so a single node and a cluster share one delivery path and one ordering rule. It
//! leaves interest tracking to the node: the hub drops publications for rooms with no member.
//! Room history is kept in process, with the same ids and expiry rules as the Redis broker.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use super::{
    BoxFuture, Broker, BrokerError, BrokerEvent, Envelope, HistoryPage, Position, Retention, Target,
};

/// One room's kept messages.
struct RoomHistory {
    epoch: String,
    top: u64,
    entries: VecDeque<Envelope>,
    /// The whole history is forgotten once the room has been quiet for its ttl.
    expires: Instant,
}

pub struct MemoryBroker {
    events: mpsc::Sender<BrokerEvent>,
    /// Held across the send of a retained publish, so offsets and delivery order agree.
    histories: Mutex<HashMap<Arc<str>, RoomHistory>>,
    /// A publish waits at most this long for room in the node's event queue, then fails with
    /// `unavailable` rather than hold its publisher forever.
    publish_timeout: Duration,
}

impl MemoryBroker {
    pub fn new(events: mpsc::Sender<BrokerEvent>, publish_timeout: Duration) -> Self {
        MemoryBroker {
            events,
            histories: Mutex::new(HashMap::new()),
            publish_timeout,
        }
    }

    async fn send(&self, envelope: Envelope) -> Result<(), BrokerError> {
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
    }
}

fn live_history(
    histories: &mut HashMap<Arc<str>, RoomHistory>,
    room: &Arc<str>,
    now: Instant,
) -> Option<()> {
    if histories.get(room).is_some_and(|h| h.expires <= now) {
        histories.remove(room);
    }
    histories.get(room).map(|_| ())
}

impl Broker for MemoryBroker {
    fn publish(&self, envelope: Envelope) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.send(envelope))
    }

    fn publish_retained(
        &self,
        mut envelope: Envelope,
        retention: Retention,
    ) -> BoxFuture<'_, Result<String, BrokerError>> {
        Box::pin(async move {
            let Target::Room(room) = envelope.target.clone() else {
                return Err(BrokerError::Unavailable("only rooms keep history".into()));
            };
            let mut histories = self.histories.lock().await;
            let now = Instant::now();
            if live_history(&mut histories, &room, now).is_none() {
                histories.insert(
                    room.clone(),
                    RoomHistory {
                        epoch: Position::new_epoch(),
                        top: 0,
                        entries: VecDeque::new(),
                        expires: now,
                    },
                );
            }
            let Some(history) = histories.get_mut(&room) else {
                return Err(BrokerError::Unavailable("history vanished".into()));
            };
            let position = Position {
                epoch: history.epoch.clone(),
                offset: history.top + 1,
            };
            envelope.id = position.id();
            // Deliver first: a publish that cannot be delivered is not kept either.
            self.send(envelope.clone()).await?;
            history.top = position.offset;
            history.expires = now + retention.ttl;
            history.entries.push_back(envelope);
            while history.entries.len() > retention.size {
                history.entries.pop_front();
            }
            Ok(position.id())
        })
    }

    fn history(
        &self,
        room: Arc<str>,
        _retention: Retention,
    ) -> BoxFuture<'_, Result<HistoryPage, BrokerError>> {
        Box::pin(async move {
            let mut histories = self.histories.lock().await;
            if live_history(&mut histories, &room, Instant::now()).is_none() {
                return Ok(HistoryPage::default());
            }
            Ok(histories
                .get(&room)
                .map(|h| HistoryPage {
                    epoch: h.epoch.clone(),
                    top: h.top,
                    entries: h.entries.iter().cloned().collect(),
                })
                .unwrap_or_default())
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

    #[tokio::test(start_paused = true)]
    async fn retained_publishes_get_consecutive_positions_bounded_by_size_and_ttl() {
        let (tx, mut rx) = mpsc::channel(64);
        let broker = MemoryBroker::new(tx, Duration::from_millis(50));
        let retention = Retention {
            size: 3,
            ttl: Duration::from_secs(10),
        };
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                broker
                    .publish_retained(envelope(&i.to_string()), retention)
                    .await
                    .expect("publish"),
            );
        }
        let positions: Vec<Position> = ids.iter().filter_map(|id| Position::parse(id)).collect();
        assert_eq!(
            positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert!(positions.iter().all(|p| p.epoch == positions[0].epoch));
        for id in &ids {
            match rx.recv().await {
                Some(BrokerEvent::Publication(e)) => assert_eq!(&e.id, id),
                other => panic!("unexpected {other:?}"),
            }
        }
        let page = broker
            .history("r".into(), retention)
            .await
            .expect("history");
        assert_eq!(page.top, 5);
        assert_eq!(
            page.entries
                .iter()
                .map(|e| e.id.clone())
                .collect::<Vec<_>>(),
            ids[2..]
        );

        tokio::time::advance(Duration::from_secs(11)).await;
        let page = broker
            .history("r".into(), retention)
            .await
            .expect("history");
        assert!(
            page.entries.is_empty() && page.top == 0,
            "expired after ttl"
        );
        let id = broker
            .publish_retained(envelope("new"), retention)
            .await
            .expect("publish");
        let p = Position::parse(&id).expect("position");
        assert_eq!(p.offset, 1);
        assert_ne!(p.epoch, positions[0].epoch, "a new life of the history");
    }
}
