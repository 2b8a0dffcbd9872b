//! History on this node: reading a kept room's history, planning a join's replay, and the
//! per-room cursors that de-duplicate kept messages and catch rooms up after a broker outage.
//!
//! Where history is kept and how positions are numbered is the broker's; which rooms keep it
//! is the room policy's.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use super::{JoinOutcome, Node};
use crate::broker::{BrokerError, Envelope, HistoryPage, Position, Retention};
use crate::hub::Gate;

impl Node {
    pub(super) fn cursors(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, RoomCursor>> {
        self.cursors.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn fetch_history(&self, room: &Arc<str>) -> Result<HistoryPage, BrokerError> {
        self.bounded(self.broker.history(room.clone())).await
    }

    pub(super) fn seed_cursor(&self, room: &Arc<str>, page: &HistoryPage) {
        if page.epoch.is_empty() {
            return;
        }
        self.cursors().entry(room.clone()).or_default().seed = Some(Position {
            epoch: page.epoch.clone(),
            offset: page.top,
        });
    }

    /// After a broker outage, deliver from history what kept rooms missed, before any live
    /// message that arrived after the reconnect (the dispatcher waits for this).
    pub(super) async fn catch_up(&self) {
        let rooms: Vec<(Arc<str>, Retention)> = {
            let cursors = self.cursors();
            cursors
                .keys()
                .filter_map(|room| self.policies.retention(room).map(|r| (room.clone(), r)))
                .collect()
        };
        let pages =
            futures_util::future::join_all(rooms.iter().map(|(room, _)| self.fetch_history(room)))
                .await;
        let mut caught_up = 0u64;
        for ((room, _), page) in rooms.iter().zip(pages) {
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    warn!(%err, "cannot catch a room up from history");
                    continue;
                }
            };
            let from = {
                let cursors = self.cursors();
                cursors
                    .get(room)
                    .and_then(|c| c.delivered.clone().or_else(|| c.seed.clone()))
            };
            for envelope in &page.entries {
                let missed = match (Position::parse(&envelope.id), &from) {
                    (Some(p), Some(from)) => p.epoch != from.epoch || p.offset > from.offset,
                    (Some(_), None) => false,
                    (None, _) => false,
                };
                if missed {
                    caught_up += 1;
                    self.deliver(envelope);
                }
            }
        }
        self.metrics.history_caught_up.inc_by(caught_up);
        if caught_up > 0 {
            warn!(
                messages = caught_up,
                "delivered messages missed during a broker outage"
            );
        }
    }

    /// Whether a kept message was already delivered here (it can come twice: live and from
    /// a catch-up); records it otherwise.
    pub(super) fn already_delivered(&self, room: &Arc<str>, position: Position) -> bool {
        let mut cursors = self.cursors();
        let Some(cursor) = cursors.get_mut(room) else {
            // No local member: nothing to record.
            return false;
        };
        if let Some(last) = &cursor.delivered
            && last.epoch == position.epoch
            && position.offset <= last.offset
        {
            return true;
        }
        cursor.delivered = Some(position);
        false
    }
}

/// What this node knows of a kept room's history, for de-duplication and catching up after
/// a broker outage.
#[derive(Default)]
pub(super) struct RoomCursor {
    /// The newest kept message delivered here.
    delivered: Option<Position>,
    /// The history's top when this node subscribed: messages up to it were either older than
    /// the subscription or delivered live.
    seed: Option<Position>,
}

/// Whether `page` still holds everything after `since`: same epoch, and nothing between it
/// and the oldest kept message was trimmed.
pub(super) fn resumable(page: &HistoryPage, since: &Position) -> bool {
    since.epoch == page.epoch
        && (since.offset >= page.top
            || page
                .entries
                .first()
                .and_then(|e| Position::parse(&e.id))
                .is_some_and(|first| first.offset <= since.offset + 1))
}

/// Which kept messages a gated join replays, and from where its held live traffic resumes.
pub(super) fn plan_replay(
    page: HistoryPage,
    since: Option<&str>,
    history: Option<u64>,
    gate: Gate,
) -> JoinOutcome {
    let resume = since.map(|since| Position::parse(since).filter(|p| resumable(&page, p)));
    let recovered = resume.as_ref().map(Option::is_some);
    let replay: Vec<&Envelope> = match (&resume, history) {
        (Some(Some(from)), _) => page
            .entries
            .iter()
            .filter(|e| Position::parse(&e.id).is_some_and(|p| p.offset > from.offset))
            .collect(),
        (_, Some(n)) => {
            let skip = page.entries.len().saturating_sub(n as usize);
            page.entries.iter().skip(skip).collect()
        }
        _ => Vec::new(),
    };
    let after = replay
        .last()
        .and_then(|e| Position::parse(&e.id))
        .map(|p| p.offset)
        .or_else(|| resume.flatten().map(|p| p.offset));
    JoinOutcome {
        recovered,
        history: Some(replay.len() as u64),
        replay: replay.iter().map(|e| e.frame()).collect(),
        gate: Some((gate, after)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Target;
    use crate::hub::Hub;
    use crate::outbox::outbox;

    /// A page of `epoch` holding offsets `first..=top`.
    fn page(epoch: &str, first: u64, top: u64) -> HistoryPage {
        let entries = (first..=top)
            .map(|offset| Envelope {
                target: Target::Room("r".into()),
                id: format!("{epoch}-{offset}"),
                data: serde_json::value::RawValue::from_string("1".into()).expect("json"),
                from: "server".into(),
                ts: 0,
                origin: None,
                key: None,
            })
            .collect();
        HistoryPage {
            epoch: epoch.into(),
            top,
            entries,
        }
    }

    fn gate(hub: &Hub) -> Gate {
        let (member, _receiver) = outbox(1, 16);
        hub.join_gated("r", &member, 16).1.expect("a gate")
    }

    fn planned(
        since: Option<&str>,
        history: Option<u64>,
    ) -> (Option<bool>, Option<u64>, Option<u64>) {
        let hub = Hub::new();
        let outcome = plan_replay(page("h1", 3, 6), since, history, gate(&hub));
        let after = outcome.gate.and_then(|(_, after)| after);
        (outcome.recovered, outcome.history, after)
    }

    #[test]
    fn a_resume_within_the_kept_window_replays_what_followed() {
        assert_eq!(planned(Some("h1-4"), None), (Some(true), Some(2), Some(6)));
        // Just before the oldest kept message still counts: nothing was lost.
        assert_eq!(planned(Some("h1-2"), None), (Some(true), Some(4), Some(6)));
        // Up to date: nothing to replay, live traffic resumes after the position given.
        assert_eq!(planned(Some("h1-6"), None), (Some(true), Some(0), Some(6)));
    }

    #[test]
    fn a_resume_that_cannot_be_served_falls_back_to_history() {
        assert_eq!(planned(Some("h1-1"), None), (Some(false), Some(0), None));
        assert_eq!(
            planned(Some("h2-4"), Some(2)),
            (Some(false), Some(2), Some(6))
        );
        assert_eq!(planned(Some("junk"), None), (Some(false), Some(0), None));
    }

    #[test]
    fn history_asks_for_the_newest_kept_messages() {
        assert_eq!(planned(None, Some(3)), (None, Some(3), Some(6)));
        assert_eq!(planned(None, Some(100)), (None, Some(4), Some(6)));
        assert_eq!(planned(None, Some(0)), (None, Some(0), None));
    }
}
