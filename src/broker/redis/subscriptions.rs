//! What is subscribed on one connected spell of a pub/sub task, as a plain state machine with
//! no I/O: channels being subscribed (and who waits for them), live channels (and where, for
//! the cluster: the link they are on), and channels released but kept through their
//! unsubscribe grace. Both pub/sub tasks drive it and do the talking to Redis themselves.
//!
//! Leaves to others: which channels the node wants across reconnects (`reconnect::Demand`), the
//! grace's length and the clock (callers pass deadlines and `now`).

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

use super::reconnect::{Channel, Reply};

/// The subscriptions of one spell; `L` says where a live channel is (`()` on one Redis).
pub(crate) struct Subscriptions<L> {
    /// Channels confirmed, with their kind and where they are.
    live: HashMap<String, (Channel, L)>,
    /// Channels sent and not yet confirmed, with their kind and who waits for them.
    subscribing: HashMap<String, (Channel, Vec<Reply>)>,
    /// Live channels no longer wanted, with the end of their grace.
    releasing: HashMap<String, Instant>,
    /// The same, in deadline order (the grace is constant, so pushing keeps the order); an
    /// entry whose deadline no longer matches `releasing` is stale and skipped.
    release_queue: VecDeque<(Instant, String)>,
}

impl<L> Default for Subscriptions<L> {
    fn default() -> Self {
        Subscriptions {
            live: HashMap::new(),
            subscribing: HashMap::new(),
            releasing: HashMap::new(),
            release_queue: VecDeque::new(),
        }
    }
}

impl<L> Subscriptions<L> {
    pub(crate) fn is_live(&self, channel: &str) -> bool {
        self.live.contains_key(channel)
    }

    /// The kind and place of a live channel.
    pub(crate) fn live(&self, channel: &str) -> Option<&(Channel, L)> {
        self.live.get(channel)
    }

    pub(crate) fn live_count(&self) -> usize {
        self.live.len()
    }

    pub(crate) fn subscribing_count(&self) -> usize {
        self.subscribing.len()
    }

    /// Mark `channel` live at `place` (a subscription confirmed without a pending entry).
    pub(crate) fn insert_live(&mut self, channel: String, kind: Channel, place: L) {
        self.live.insert(channel, (kind, place));
    }

    /// Forget a live channel (unsubscribed, or dropped by its server): its kind and place.
    pub(crate) fn remove_live(&mut self, channel: &str) -> Option<(Channel, L)> {
        self.live.remove(channel)
    }

    /// A subscription has been sent for `channel`: who waits for it joins with
    /// [`Self::wait_for`]. Returns false when one was already on its way.
    pub(crate) fn start_subscribing(&mut self, channel: &str, kind: &Channel) -> bool {
        if self.subscribing.contains_key(channel) {
            return false;
        }
        self.subscribing
            .insert(channel.to_owned(), (kind.clone(), Vec::new()));
        true
    }

    /// `reply` waits for `channel`'s pending subscription; given back when none is pending.
    pub(crate) fn wait_for(&mut self, channel: &str, reply: Reply) -> Option<Reply> {
        match self.subscribing.get_mut(channel) {
            Some((_, waiting)) => {
                waiting.push(reply);
                None
            }
            None => Some(reply),
        }
    }

    /// The pending subscription of `channel` is confirmed at `place`: it is live, and these
    /// wait for the answer. None: nothing was pending.
    pub(crate) fn confirm(&mut self, channel: &str, place: L) -> Option<Vec<Reply>> {
        let (kind, replies) = self.subscribing.remove(channel)?;
        self.live.insert(channel.to_owned(), (kind, place));
        Some(replies)
    }

    /// The pending subscription of `channel` failed: who waited for it.
    pub(crate) fn fail(&mut self, channel: &str) -> Vec<Reply> {
        self.subscribing
            .remove(channel)
            .map(|(_, replies)| replies)
            .unwrap_or_default()
    }

    /// Start the grace of a live channel no longer wanted; it ends at `deadline`.
    pub(crate) fn release(&mut self, channel: String, deadline: Instant) {
        self.releasing.insert(channel.clone(), deadline);
        self.release_queue.push_back((deadline, channel));
    }

    /// Wanted again within its grace: the channel stays.
    pub(crate) fn keep(&mut self, channel: &str) {
        self.releasing.remove(channel);
    }

    pub(crate) fn is_releasing(&self, channel: &str) -> bool {
        self.releasing.contains_key(channel)
    }

    /// When the next grace ends.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.release_queue.front().map(|(deadline, _)| *deadline)
    }

    /// At most `max` channels whose grace is over at `now` and that are not `wanted` again:
    /// unsubscribe them. They stay live until the caller removes them.
    pub(crate) fn due_releases(
        &mut self,
        now: Instant,
        max: usize,
        wanted: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let mut due = Vec::new();
        while let Some((deadline, _)) = self.release_queue.front() {
            if *deadline > now || due.len() >= max {
                break;
            }
            let Some((deadline, channel)) = self.release_queue.pop_front() else {
                break;
            };
            if self.releasing.get(&channel) != Some(&deadline) {
                continue; // a later release or a resubscribe made this entry stale
            }
            self.releasing.remove(&channel);
            if !wanted(&channel) {
                due.push(channel);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;
    use crate::broker::Target;

    fn room(name: &str) -> Channel {
        Channel::Messages(Target::Room(name.into()))
    }

    #[test]
    fn a_subscription_is_pending_until_confirmed_and_answers_its_waiters() {
        let mut subs: Subscriptions<&str> = Subscriptions::default();
        assert!(subs.start_subscribing("a", &room("a")));
        assert!(
            !subs.start_subscribing("a", &room("a")),
            "already on its way"
        );
        let (reply, mut answer) = oneshot::channel();
        assert!(subs.wait_for("a", reply).is_none());
        assert!(!subs.is_live("a"));
        let (stray, _) = oneshot::channel();
        assert!(subs.wait_for("b", stray).is_some(), "nothing pending for b");

        let replies = subs.confirm("a", "10.0.0.1:7000").expect("pending");
        assert_eq!(replies.len(), 1);
        assert!(
            answer.try_recv().is_err(),
            "the caller answers, not the machine"
        );
        assert!(subs.is_live("a"));
        assert_eq!(subs.live("a").map(|(_, at)| *at), Some("10.0.0.1:7000"));
        assert_eq!((subs.live_count(), subs.subscribing_count()), (1, 0));
        assert!(
            subs.confirm("a", "x").is_none(),
            "a second confirmation is ignored"
        );
    }

    #[test]
    fn a_failed_subscription_hands_back_its_waiters() {
        let mut subs: Subscriptions<()> = Subscriptions::default();
        subs.start_subscribing("a", &room("a"));
        let (reply, _answer) = oneshot::channel();
        assert!(subs.wait_for("a", reply).is_none());
        assert_eq!(subs.fail("a").len(), 1);
        assert!(!subs.is_live("a"));
        assert!(subs.fail("a").is_empty());
    }

    #[test]
    fn a_release_ends_after_its_grace_unless_kept_or_wanted() {
        let mut subs: Subscriptions<()> = Subscriptions::default();
        let start = Instant::now();
        let grace = Duration::from_secs(2);
        for name in ["a", "b", "c"] {
            subs.insert_live(name.into(), room(name), ());
            subs.release(name.into(), start + grace);
        }
        assert_eq!(subs.next_release(), Some(start + grace));
        subs.keep("b");
        assert!(!subs.is_releasing("b"));
        assert!(
            subs.due_releases(start, 10, |_| false).is_empty(),
            "the grace is not over"
        );
        let due = subs.due_releases(start + grace, 10, |ch| ch == "c");
        assert_eq!(due, ["a"], "b was kept, c is wanted again");
        assert!(subs.is_live("a"), "live until the caller unsubscribes it");
        assert_eq!(subs.next_release(), None);
    }

    #[test]
    fn a_second_release_makes_the_first_stale_and_batches_are_bounded() {
        let mut subs: Subscriptions<()> = Subscriptions::default();
        let start = Instant::now();
        subs.insert_live("a".into(), room("a"), ());
        subs.release("a".into(), start);
        subs.keep("a");
        subs.release("a".into(), start + Duration::from_secs(5));
        assert!(
            subs.due_releases(start + Duration::from_secs(1), 10, |_| false)
                .is_empty(),
            "the first grace was cancelled"
        );
        assert_eq!(
            subs.due_releases(start + Duration::from_secs(5), 10, |_| false),
            ["a"]
        );

        for i in 0..5 {
            subs.insert_live(i.to_string(), room("x"), ());
            subs.release(i.to_string(), start);
        }
        assert_eq!(subs.due_releases(start, 2, |_| false).len(), 2);
        assert_eq!(subs.due_releases(start, 10, |_| false).len(), 3);
    }
}
