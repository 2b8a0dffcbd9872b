//! The revocations in force, mirrored in memory so a handshake checks them without a broker
//! round trip: by user (tokens issued before a time) and by `jti`, each until its end.
//!
//! Where they are kept (Redis, with a TTL) and how they reach every node (a control envelope
//! on the broadcast channel) is the broker's and the node's; this only answers "is this token
//! revoked now".

use std::collections::HashMap;
use std::sync::RwLock;

use crate::auth::Identity;
use crate::protocol::{Revocation, issued_before};

#[derive(Default)]
pub struct RevocationMirror {
    inner: RwLock<Mirror>,
}

#[derive(Default)]
struct Mirror {
    /// user → (tokens issued before, until) pairs.
    users: HashMap<String, Vec<(u64, u64)>>,
    /// jti → until.
    jtis: HashMap<String, u64>,
}

impl RevocationMirror {
    /// Add one (again: harmless), forgetting those whose end has passed.
    pub fn insert(&self, revocation: &Revocation, now: u64) {
        let mut mirror = self.inner.write().unwrap_or_else(|p| p.into_inner());
        mirror.users.retain(|_, entries| {
            entries.retain(|(_, until)| *until > now);
            !entries.is_empty()
        });
        mirror.jtis.retain(|_, until| *until > now);
        match revocation {
            Revocation::User {
                user,
                before,
                until,
            } => {
                let entries = mirror.users.entry(user.clone()).or_default();
                if !entries.contains(&(*before, *until)) {
                    entries.push((*before, *until));
                }
            }
            Revocation::Jti { jti, until } => {
                let end = mirror.jtis.entry(jti.clone()).or_insert(*until);
                *end = (*end).max(*until);
            }
        }
    }

    /// Whether `identity`'s token is refused at `now` (seconds). A token without `iat`
    /// cannot show it was issued after a user's revocation, so it is refused too.
    pub fn is_revoked(&self, identity: &Identity, now: u64) -> bool {
        let mirror = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if let Some(jti) = &identity.jti
            && mirror.jtis.get(jti).is_some_and(|until| *until > now)
        {
            return true;
        }
        mirror.users.get(&*identity.user).is_some_and(|entries| {
            entries
                .iter()
                .any(|(before, until)| *until > now && issued_before(identity.issued_at, *before))
        })
    }

    /// Every revocation in force at `now`.
    pub fn all(&self, now: u64) -> Vec<Revocation> {
        let mirror = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let users = mirror.users.iter().flat_map(|(user, entries)| {
            entries
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(before, until)| Revocation::User {
                    user: user.clone(),
                    before: *before,
                    until: *until,
                })
        });
        let jtis = mirror
            .jtis
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(jti, until)| Revocation::Jti {
                jti: jti.clone(),
                until: *until,
            });
        users.chain(jtis).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(iat: Option<u64>, jti: Option<&str>) -> Identity {
        Identity {
            user: "u".into(),
            rooms: None,
            publish: None,
            exp: 1_000,
            expires_at: 1_000,
            issued_at: iat,
            jti: jti.map(str::to_owned),
            subs: Vec::new(),
            info: None,
        }
    }

    #[test]
    fn tokens_issued_before_a_user_revocation_are_refused_until_its_end() {
        let mirror = RevocationMirror::default();
        mirror.insert(
            &Revocation::User {
                user: "u".into(),
                before: 100,
                until: 200,
            },
            50,
        );
        assert!(mirror.is_revoked(&identity(Some(99), None), 150));
        assert!(mirror.is_revoked(&identity(None, None), 150));
        assert!(
            !mirror.is_revoked(&identity(Some(100), None), 150),
            "issued after"
        );
        assert!(!mirror.is_revoked(&identity(Some(99), None), 200), "ended");
        assert_eq!(mirror.all(150).len(), 1);
        assert!(mirror.all(200).is_empty());
    }

    #[test]
    fn a_jti_revocation_refuses_that_token_only() {
        let mirror = RevocationMirror::default();
        mirror.insert(
            &Revocation::Jti {
                jti: "j1".into(),
                until: 200,
            },
            50,
        );
        assert!(mirror.is_revoked(&identity(Some(10), Some("j1")), 150));
        assert!(!mirror.is_revoked(&identity(Some(10), Some("j2")), 150));
        assert!(!mirror.is_revoked(&identity(Some(10), None), 150));
    }
}
