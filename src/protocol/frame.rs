//! Server frames (docs/protocol.md "Server → client"): each encoded once as JSON text and
//! shared by every recipient.
//!
//! Owns the serde shape of every outbound frame; what to send and to whom is the caller's.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::codes::CommandError;
use super::command::RequestId;

/// An encoded server frame: JSON text, built once, cloned cheaply (reference counted) for every
/// recipient.
#[derive(Clone, Debug)]
pub struct Frame {
    text: Utf8Bytes,
    /// Its permessage-deflate form, when it is to be shared ([`Frame::sharing_compressed`]):
    /// filled by the first writer that needs it, then taken by every other one.
    compressed: Option<Arc<OnceLock<Option<Bytes>>>>,
}

impl Frame {
    fn new(text: Utf8Bytes) -> Frame {
        Frame {
            text,
            compressed: None,
        }
    }

    pub fn text(&self) -> &str {
        self.text.as_str()
    }

    pub fn into_utf8_bytes(self) -> Utf8Bytes {
        self.text
    }

    /// This frame, its compressed form to be computed at most once for all its clones (for a
    /// frame fanned out to many members).
    pub fn sharing_compressed(mut self) -> Frame {
        self.compressed = Some(Arc::default());
        self
    }

    /// The frame's permessage-deflate payload, `None` when compressing does not shrink it;
    /// and whether this call compressed it. Computed once for a frame
    /// [sharing](Frame::sharing_compressed) it, else per call.
    pub fn compressed(&self) -> (Option<Bytes>, bool) {
        let mut computed = false;
        let mut compress = || {
            computed = true;
            crate::deflate::compress(self.text.as_bytes())
        };
        let payload = match &self.compressed {
            Some(shared) => shared.get_or_init(compress).clone(),
            None => compress(),
        };
        (payload, computed)
    }

    fn encode<T: Serialize>(value: &T) -> Frame {
        // Serialising our own types (strings, numbers, already-validated raw JSON) cannot fail.
        let text = serde_json::to_string(value).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
        });
        Frame::new(Utf8Bytes::from(text))
    }

    /// A frame with arbitrary text, for tests of code that only moves frames.
    #[doc(hidden)]
    pub fn text_for_tests(text: &str) -> Frame {
        Frame::new(Utf8Bytes::from(text))
    }

    /// The plain-text heartbeat reply.
    pub fn plain_pong() -> Frame {
        Frame::new(Utf8Bytes::from_static("pong"))
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outbound<'a> {
    Welcome {
        conn_id: &'a str,
        node: &'a str,
        user: Option<&'a str>,
        heartbeat_ms: u64,
    },
    Joined {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        history: Option<u64>,
        /// `true` when the backend joined the connection (a server subscription).
        #[serde(skip_serializing_if = "Option::is_none")]
        server: Option<bool>,
    },
    Left {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
        /// Why the server took the connection out (no `reason`: the client asked).
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    Ack {
        room: &'a str,
        msg_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Error {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    Message {
        room: &'a str,
        id: &'a str,
        data: &'a RawValue,
        from: &'a str,
        ts: u64,
        /// The conflation key the publisher gave, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
    },
    Notification {
        id: &'a str,
        data: &'a RawValue,
        ts: u64,
    },
    Broadcast {
        id: &'a str,
        data: &'a RawValue,
        ts: u64,
    },
    Presence {
        room: &'a str,
        count: u64,
        members: &'a [PresenceMember],
        truncated: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    MemberJoined {
        room: &'a str,
        user: &'a str,
        ts: u64,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "raw_info")]
        info: Option<&'a str>,
    },
    MemberLeft {
        room: &'a str,
        user: &'a str,
        ts: u64,
    },
    Refreshed {
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
    },
    TokenExpiring {
        in_ms: u64,
    },
}

pub fn welcome(conn_id: &str, node: &str, user: Option<&str>, heartbeat_ms: u64) -> Frame {
    Frame::encode(&Outbound::Welcome {
        conn_id,
        node,
        user,
        heartbeat_ms,
    })
}

pub fn joined(
    room: &str,
    id: Option<&RequestId>,
    recovered: Option<bool>,
    history: Option<u64>,
) -> Frame {
    Frame::encode(&Outbound::Joined {
        room,
        id,
        recovered,
        history,
        server: None,
    })
}

/// `joined {room, server: true, history?}`: the backend joined this connection.
pub fn server_joined(room: &str, history: Option<u64>) -> Frame {
    Frame::encode(&Outbound::Joined {
        room,
        id: None,
        recovered: None,
        history,
        server: Some(true),
    })
}

pub fn left(room: &str, id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Left {
        room,
        id,
        reason: None,
    })
}

/// `left {room, reason}`: the server took the connection out of the room.
pub fn left_because(room: &str, reason: &str) -> Frame {
    Frame::encode(&Outbound::Left {
        room,
        id: None,
        reason: Some(reason),
    })
}

/// The reply to `refresh`: the new token's `exp`.
pub fn refreshed(exp: u64, id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Refreshed { exp, id })
}

/// The connection's token runs out in `in_ms` (then close 4001), unless it is refreshed.
pub fn token_expiring(in_ms: u64) -> Frame {
    Frame::encode(&Outbound::TokenExpiring { in_ms })
}

pub fn ack(room: &str, msg_id: &str, id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Ack { room, msg_id, id })
}

pub fn pong(id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Pong { id })
}

pub fn error(err: &CommandError, id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Error {
        code: err.code.as_str(),
        message: &err.message,
        id,
    })
}

/// A room `message`; `key` (the publisher's conflation key) is sent when given.
pub fn message(
    room: &str,
    id: &str,
    data: &RawValue,
    from: &str,
    ts: u64,
    key: Option<&str>,
) -> Frame {
    Frame::encode(&Outbound::Message {
        room,
        id,
        data,
        from,
        ts,
        key,
    })
}

pub fn notification(id: &str, data: &RawValue, ts: u64) -> Frame {
    Frame::encode(&Outbound::Notification { id, data, ts })
}

pub fn broadcast(id: &str, data: &RawValue, ts: u64) -> Frame {
    Frame::encode(&Outbound::Broadcast { id, data, ts })
}

/// One entry of a `presence` reply: a user, how many of its connections are in the room, and
/// the `info` the backend gave it (the connect or join hook's answer), if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceMember {
    pub user: String,
    pub conns: u64,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "raw_info")]
    pub info: Option<Arc<str>>,
}

/// A member's `info`: JSON text (checked when the backend's answer was read), written as the
/// JSON it is.
fn raw_info<S, T>(info: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    T: AsRef<str>,
{
    match info
        .as_ref()
        .map(|text| serde_json::from_str::<&RawValue>(text.as_ref()))
    {
        Some(Ok(raw)) => raw.serialize(serializer),
        // Only JSON is ever kept; anything else is not the member's info.
        Some(Err(_)) | None => serializer.serialize_none(),
    }
}

/// Who is in a room: the exact number of users, and at most `max_members` of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PresenceList {
    pub count: u64,
    pub members: Vec<PresenceMember>,
    pub truncated: bool,
}

/// The reply to `presence`.
pub fn presence(room: &str, list: &PresenceList, id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Presence {
        room,
        count: list.count,
        members: &list.members,
        truncated: list.truncated,
        id,
    })
}

/// `member_joined` (a user's first connection in the room, on any node) or `member_left`
/// (its last one gone).
/// `info` is the joining user's (the backend's, see [`PresenceMember`]).
pub fn member_event(room: &str, user: &str, joined: bool, ts: u64, info: Option<&str>) -> Frame {
    Frame::encode(&if joined {
        Outbound::MemberJoined {
            room,
            user,
            ts,
            info,
        }
    } else {
        Outbound::MemberLeft { room, user, ts }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codes::ErrorCode;

    #[test]
    fn frames_encode_as_protocol_says() {
        let id = RequestId::Str("q".into());
        let v: serde_json::Value =
            serde_json::from_str(joined("r", Some(&id), None, None).text()).expect("json");
        assert_eq!(v, serde_json::json!({"type":"joined","room":"r","id":"q"}));
        let v: serde_json::Value = serde_json::from_str(ack("r", "m1", None).text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"ack","room":"r","msg_id":"m1"})
        );
        let data = RawValue::from_string(r#"{"k":1}"#.to_owned()).expect("json");
        let v: serde_json::Value =
            serde_json::from_str(message("r", "m1", &data, "c1", 5, None).text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"message","room":"r","id":"m1","data":{"k":1},"from":"c1","ts":5})
        );
        let err = CommandError::new(ErrorCode::NotJoined, "join first");
        let v: serde_json::Value =
            serde_json::from_str(error(&err, Some(&RequestId::Int(3))).text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"error","code":"not_joined","message":"join first","id":3})
        );
        let v: serde_json::Value =
            serde_json::from_str(left_because("r", "forbidden").text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"left","room":"r","reason":"forbidden"})
        );
        let v: serde_json::Value =
            serde_json::from_str(refreshed(1_900_000_000, Some(&RequestId::Int(4))).text())
                .expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"refreshed","exp":1_900_000_000u64,"id":4})
        );
        let v: serde_json::Value =
            serde_json::from_str(token_expiring(29_500).text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"token_expiring","in_ms":29_500})
        );
        let v: serde_json::Value =
            serde_json::from_str(welcome("c", "n", None, 25).text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"welcome","conn_id":"c","node":"n","user":null,"heartbeat_ms":25})
        );
    }
}
