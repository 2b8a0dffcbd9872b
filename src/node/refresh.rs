//! `refresh`: a connection's token replaced in band, with no reconnect.
//!
//! Owns the rules of a refresh: the new token passes the handshake's checks (`auth`), names the
//! connection's own user, and its `rooms` claim takes the connection out of every room it no
//! longer allows (the backend's own rooms excepted); its `publish` claim holds from the next
//! publish on, since the session keeps the new identity; a revoked token is refused. Moving the
//! connection's expiry timer and sending the frames are the connection's; verifying signatures
//! and claims is `auth`'s.

use std::sync::Arc;

use super::{Node, Session};
use crate::auth::AuthFailure;
use crate::protocol::{CommandError, ErrorCode};

/// What a refresh did: the connection's new token and the rooms it had to leave.
#[derive(Debug)]
pub struct Refreshed {
    /// The new token's `exp` (seconds since the Unix epoch).
    pub exp: u64,
    /// Rooms the new token's `rooms` claim no longer allows: the connection is out of them.
    pub left: Vec<Arc<str>>,
}

impl Node {
    /// Check `token` and make it the session's. A refused token changes nothing: the session
    /// keeps its identity, and with it its expiry.
    pub async fn refresh(
        &self,
        session: &mut Session,
        token: &str,
    ) -> Result<Refreshed, CommandError> {
        let Some(authenticator) = &self.authenticator else {
            return Err(CommandError::bad_request(
                "auth.mode is \"none\": a connection has no token to refresh",
            ));
        };
        let identity = authenticator.verify(token).map_err(|failure| {
            CommandError::new(
                ErrorCode::InvalidToken,
                format!("token refused: {}", failure.describe()),
            )
        })?;
        // A refresh renews a connection; it never turns it into someone else's.
        if session.user.as_deref() != Some(&*identity.user) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "the token is for another user than this connection's",
            ));
        }
        if self.is_revoked(&identity) {
            return Err(CommandError::new(
                ErrorCode::InvalidToken,
                format!("token refused: {}", AuthFailure::Revoked.describe()),
            ));
        }
        let who = session.from();
        // The backend's rooms bypass the `rooms` claim, at connect and here alike.
        let left: Vec<Arc<str>> = session
            .rooms
            .iter()
            .filter(|room| !identity.may_join(room) && !session.server_rooms.contains(room))
            .cloned()
            .collect();
        for room in &left {
            session.rooms.remove(room);
            self.leave_room(room, session.conn, &who).await;
        }
        self.hub
            .retoken(&identity.user, session.conn, identity.issued_at);
        let old_jti = session.identity.as_ref().and_then(|old| old.jti.clone());
        if old_jti != identity.jti {
            // `/api/revoke {jti}` must find the connection by the token it holds now.
            if let Some(old) = &old_jti {
                self.hub.remove_token(old, session.conn);
            }
            if let Some(new) = &identity.jti {
                self.hub.add_token(new, &session.outbox);
            }
        }
        let exp = identity.exp;
        session.identity = Some(Arc::new(identity));
        Ok(Refreshed { exp, left })
    }
}
