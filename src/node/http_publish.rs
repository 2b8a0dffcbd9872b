//! `POST /publish` (docs/protocol.md "SSE transport"): a client's publish without a WebSocket.
//!
//! An HTTP publisher is no member of any room, so the membership a WebSocket `publish` needs is
//! replaced by what a join would check: the reserved prefix, the token's `rooms` claim and the
//! join hook; then the token's `publish` claim, the room's schema and the publish hook, exactly
//! as for a member. Reading the request, the handshake checks and the rate limit are the
//! listener's.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::value::RawValue;

use super::{Node, Sender};
use crate::auth::Identity;
use crate::hooks::Asker;
use crate::protocol::{CommandError, ErrorCode, RESERVED_ROOM_PREFIX, RoomName};

impl Node {
    /// Publish `data` to `room` for the holder of `identity` (`None` without authentication);
    /// returns the message id. `from` is the user, or a fresh `conn_id` for an anonymous
    /// publisher (it has no connection to be named by).
    pub async fn publish_over_http(
        &self,
        identity: Option<&Identity>,
        room: &RoomName,
        data: Box<RawValue>,
        key: Option<String>,
    ) -> Result<String, CommandError> {
        self.check_key(key.as_deref())?;
        if room.starts_with(RESERVED_ROOM_PREFIX) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "rooms named user:… are reserved",
            ));
        }
        if let Some(identity) = identity {
            if !identity.may_join(room) {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "your token does not allow joining this room",
                ));
            }
            if !identity.may_publish(room) {
                return Err(CommandError::new(
                    ErrorCode::Forbidden,
                    "your token does not allow publishing to this room",
                ));
            }
        }
        // A number of its own, never registered: nothing is delivered to it, so `echo` is moot.
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn_id = format!("{}.{conn}", self.instance);
        let user = identity.map(|i| i.user.clone());
        let asker = Asker {
            user: user.as_deref(),
            conn_id: &conn_id,
        };
        self.hooks.join(asker, room).await?;
        let sender = Sender {
            asker,
            from: user
                .as_deref()
                .map_or_else(|| conn_id.clone(), str::to_owned),
            conn,
            echo: true,
            key,
        };
        let room: Arc<str> = room.as_arc().clone();
        self.publish_checked(sender, &room, data).await
    }
}
