//! The memory broker's control plane state: revocations and server subscriptions kept in
//! process, with the same expiry rules the Redis broker gives them with key TTLs.
//!
//! Publishing control envelopes is the memory broker's; acting on them the node's.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::Revocation;

#[derive(Default)]
pub struct ControlTable {
    revocations: Mutex<Vec<Revocation>>,
    /// user → its server-subscribed rooms, forgotten at the deadline.
    subs: Mutex<HashMap<String, (HashSet<String>, Instant)>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl ControlTable {
    pub fn store_revocations(&self, revocations: Vec<Revocation>, now_s: u64) {
        let mut kept = locked(&self.revocations);
        kept.retain(|r| r.until() > now_s && !revocations.contains(r));
        kept.extend(revocations);
    }

    pub fn revocations(&self, now_s: u64) -> Vec<Revocation> {
        locked(&self.revocations)
            .iter()
            .filter(|r| r.until() > now_s)
            .cloned()
            .collect()
    }

    /// Add (`ttl` given) or remove a server subscription; adding restarts the user's ttl.
    pub fn set_server_sub(&self, user: &str, room: &str, ttl: Option<Duration>) {
        let now = Instant::now();
        let mut subs = locked(&self.subs);
        subs.retain(|_, (_, deadline)| *deadline > now);
        match ttl {
            Some(ttl) => {
                let entry = subs
                    .entry(user.to_owned())
                    .or_insert_with(|| (HashSet::new(), now));
                entry.0.insert(room.to_owned());
                entry.1 = now + ttl;
            }
            None => {
                if let Some((rooms, _)) = subs.get_mut(user) {
                    rooms.remove(room);
                    if rooms.is_empty() {
                        subs.remove(user);
                    }
                }
            }
        }
    }

    pub fn server_subs(&self, user: &str) -> Vec<String> {
        let now = Instant::now();
        locked(&self.subs)
            .get(user)
            .filter(|(_, deadline)| *deadline > now)
            .map(|(rooms, _)| rooms.iter().cloned().collect())
            .unwrap_or_default()
    }
}
