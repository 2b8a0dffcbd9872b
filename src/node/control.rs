//! The backend's control plane on this node: control envelopes from the broker (disconnect,
//! revoke) acted on for the connections held here, and the admin routes that publish them.
//!
//! Control travels on channels that already exist: a user's channel reaches exactly the nodes
//! holding that user's connections, the broadcast channel every node. The wire format is
//! `protocol`'s; closing a socket is the connection's, once its outbox's closer fires.

use super::Node;
use crate::auth::Identity;
use crate::broker::{BrokerError, Control, Revocation, Target};
use crate::outbox::{ConnId, ServerRoom};
use crate::protocol::{Disconnect, DisconnectRequest, KickCode};

impl Node {
    /// A control envelope arrived on `target`'s channel.
    pub(super) fn apply_control(&self, target: &Target, control: Control) {
        match control {
            Control::Disconnect {
                conn_id,
                code,
                reason,
            } => self.kick(target, conn_id.as_deref(), code, reason.as_deref()),
            Control::Revoke(revocation) => self.apply_revocation(revocation),
            Control::Subscribe { room } => self.server_room_change(target, ServerRoom::Join(room)),
            Control::Unsubscribe { room } => {
                self.server_room_change(target, ServerRoom::Leave(room))
            }
        }
    }

    fn kick(&self, target: &Target, conn_id: Option<&str>, code: KickCode, reason: Option<&str>) {
        let why = match code {
            KickCode::Reconnect => Disconnect::Reconnect,
            KickCode::Forbidden => Disconnect::Forbidden,
        };
        let conn = match conn_id.map(|id| self.local_conn(id)) {
            // Another node's connection: not ours to close.
            Some(None) => return,
            Some(Some(conn)) => Some(conn),
            None => None,
        };
        match (target, conn) {
            (Target::User(user), conn) => {
                self.hub.close_user(user, conn, why, reason);
            }
            (Target::Broadcast, Some(conn)) => {
                self.hub.close_conn(conn, why, reason);
            }
            (Target::Broadcast, None) => {
                tracing::warn!("ignoring a disconnect on the broadcast channel without conn_id");
            }
            (Target::Room(_), _) => {}
        }
    }

    /// This node's connection number of a `conn_id` (`<instance>.<n>`), if it is one of ours.
    fn local_conn(&self, conn_id: &str) -> Option<ConnId> {
        let (instance, conn) = conn_id.rsplit_once('.')?;
        if instance != self.instance {
            return None;
        }
        conn.parse().ok()
    }

    /// `POST /api/disconnect`: on the user's channel, or with only a `conn_id` on the
    /// broadcast channel (every node looks, the one holding it acts).
    pub async fn disconnect(&self, request: DisconnectRequest) -> Result<(), BrokerError> {
        let target = match request.user {
            Some(user) => Target::User(user.into()),
            None => Target::Broadcast,
        };
        self.bounded(self.broker.publish_control(target, request.control))
            .await
    }
}

/// Why `POST /api/revoke` was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("`until` must be after now and at most auth.max_revocation_s ({0} s) away")]
    BadUntil(u64),
    #[error("not revoked: {0}")]
    Broker(#[from] BrokerError),
}

impl Node {
    /// A revocation announced on the broadcast channel: mirror it, close the live tokens.
    fn apply_revocation(&self, revocation: Revocation) {
        self.revocations.insert(&revocation, now_secs());
        match &revocation {
            Revocation::User { user, before, .. } => {
                self.hub
                    .close_user_issued_before(user, *before, Disconnect::Revoked);
            }
            Revocation::Jti { jti, .. } => self.hub.close_token(jti, Disconnect::Revoked),
        }
    }

    /// Whether a verified token has been revoked (the handshake's check, from memory).
    pub fn is_revoked(&self, identity: &Identity) -> bool {
        self.revocations.is_revoked(identity, now_secs())
    }

    /// `POST /api/revoke`: keep it in the broker (which outlives this node), then announce it
    /// on the broadcast channel so every node mirrors it and closes the live tokens.
    pub async fn revoke(&self, revocation: Revocation) -> Result<(), RevokeError> {
        let now = now_secs();
        let max = self.config.auth.max_revocation_s;
        if revocation.until() <= now || revocation.until() > now.saturating_add(max) {
            return Err(RevokeError::BadUntil(max));
        }
        self.bounded(self.broker.store_revocations(vec![revocation.clone()]))
            .await?;
        self.bounded(
            self.broker
                .publish_control(Target::Broadcast, Control::Revoke(revocation)),
        )
        .await?;
        Ok(())
    }

    /// Mirror what the broker keeps, and give back what it lost (a Redis restarted without
    /// persistence forgets; the nodes remember). At start and every time the broker comes up.
    pub async fn reload_revocations(&self) {
        let now = now_secs();
        let stored = match self.bounded(self.broker.revocations()).await {
            Ok(stored) => stored,
            Err(err) => {
                tracing::warn!(%err, "cannot load revocations yet");
                return;
            }
        };
        for revocation in &stored {
            self.revocations.insert(revocation, now);
        }
        let lost: Vec<Revocation> = self
            .revocations
            .all(now)
            .into_iter()
            .filter(|r| !stored.contains(r))
            .collect();
        if lost.is_empty() {
            return;
        }
        tracing::info!(
            count = lost.len(),
            "the broker lost revocations: storing them again"
        );
        if let Err(err) = self.bounded(self.broker.store_revocations(lost)).await {
            tracing::warn!(%err, "cannot store revocations again");
        }
    }
}

fn now_secs() -> u64 {
    super::now_ms() / 1000
}
