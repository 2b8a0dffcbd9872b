//! Per-room policy: how a room's traffic is kept (`history.rooms`) and whether and how its
//! presence is kept (`presence.rooms`), resolved together, once per join; and whether a room's
//! keyed messages are conflated (`conflate.rooms`), asked once per keyed delivery.
//!
//! Owns the parsed patterns of the three lists (first matching rule wins in each). Token
//! permissions are the identity's (`auth`); what the policy is used for is the node's.

use std::time::Duration;

use crate::auth::Glob;
use crate::broker::Retention;
use crate::config::{Config, PresenceRule};
use crate::presence::PresenceRules;

/// What the configuration says of one room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomPolicy {
    /// `Some` when the room's messages are kept for replay.
    pub history: Option<Retention>,
    /// `Some` when presence is kept for the room.
    pub presence: Option<RoomPresence>,
}

/// The presence rule of a room, as the node uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomPresence {
    /// Members get `member_joined` / `member_left`.
    pub events: bool,
    /// Most members a presence reply lists.
    pub max_members: usize,
}

impl From<&PresenceRule> for RoomPresence {
    fn from(rule: &PresenceRule) -> Self {
        RoomPresence {
            events: rule.events,
            max_members: rule.max_members,
        }
    }
}

impl RoomPolicy {
    /// Presence events are delivered to the room's members.
    pub fn presence_events(&self) -> bool {
        self.presence.is_some_and(|p| p.events)
    }
}

/// The `history.rooms` and `presence.rooms` rules, patterns parsed once.
pub struct RoomPolicies {
    history: Vec<(Glob, Retention)>,
    presence: PresenceRules,
    conflate: Vec<Glob>,
}

impl RoomPolicies {
    pub fn new(config: &Config) -> Self {
        let history = config
            .history
            .rooms
            .iter()
            .map(|rule| {
                let retention = Retention {
                    size: rule.size,
                    ttl: Duration::from_secs(rule.ttl_s),
                };
                (Glob::new(&rule.pattern), retention)
            })
            .collect();
        RoomPolicies {
            history,
            presence: PresenceRules::new(&config.presence),
            conflate: config
                .conflate
                .rooms
                .iter()
                .map(|rule| Glob::new(&rule.pattern))
                .collect(),
        }
    }

    /// Both rules of `room`, in one pass over each list.
    pub fn for_room(&self, room: &str) -> RoomPolicy {
        RoomPolicy {
            history: self.retention(room),
            presence: self.presence(room),
        }
    }

    /// How `room`'s traffic is kept: the first `history.rooms` rule whose pattern matches.
    pub fn retention(&self, room: &str) -> Option<Retention> {
        if self.history.is_empty() {
            return None;
        }
        self.history
            .iter()
            .find(|(glob, _)| glob.matches(room))
            .map(|(_, retention)| *retention)
    }

    /// `room`'s presence rule: the first `presence.rooms` rule whose pattern matches.
    pub fn presence(&self, room: &str) -> Option<RoomPresence> {
        self.presence.rule(room).map(RoomPresence::from)
    }

    /// `room` matches a `conflate.rooms` pattern: its keyed messages replace the older ones
    /// still queued for a member.
    pub fn conflated(&self, room: &str) -> bool {
        self.conflate.iter().any(|glob| glob.matches(room))
    }

    /// No room keeps presence: the presence writer has nothing to do.
    pub fn no_presence(&self) -> bool {
        self.presence.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryRule;

    fn policies() -> RoomPolicies {
        let mut config = Config::default();
        config.history.rooms = vec![
            HistoryRule {
                pattern: "chat:*".into(),
                size: 10,
                ttl_s: 60,
            },
            HistoryRule {
                pattern: "*".into(),
                size: 1,
                ttl_s: 1,
            },
        ];
        config.presence.rooms = vec![PresenceRule {
            pattern: "chat:?".into(),
            events: true,
            max_members: 7,
        }];
        RoomPolicies::new(&config)
    }

    #[test]
    fn the_first_matching_rule_of_each_list_wins() {
        let policy = policies().for_room("chat:a");
        assert_eq!(policy.history.map(|r| r.size), Some(10));
        assert_eq!(
            policy.presence,
            Some(RoomPresence {
                events: true,
                max_members: 7
            })
        );
        assert!(policy.presence_events());
        let other = policies().for_room("chat:ab");
        assert_eq!(other.history.map(|r| r.size), Some(10));
        assert_eq!(other.presence, None);
        assert!(!other.presence_events());
        assert_eq!(policies().for_room("news").history.map(|r| r.size), Some(1));
    }

    #[test]
    fn without_rules_nothing_is_kept() {
        let policies = RoomPolicies::new(&Config::default());
        assert_eq!(policies.for_room("anything"), RoomPolicy::default());
        assert!(policies.no_presence());
        assert!(!policies.conflated("anything"));
    }

    #[test]
    fn conflated_rooms_are_those_matching_a_pattern() {
        let mut config = Config::default();
        config.conflate.rooms = vec![crate::config::ConflateRule {
            pattern: "px:*".into(),
        }];
        let policies = RoomPolicies::new(&config);
        assert!(policies.conflated("px:AAPL"));
        assert!(!policies.conflated("chat:a"));
    }
}
