//! Control envelopes (docs/protocol.md "Control envelopes") and the bodies of the admin
//! control routes (`/api/disconnect`, `/api/revoke`).
//!
//! A control envelope is a JSON object with a `control` field and no `data` field, published on
//! a user channel (every connection of that user) or on the broadcast channel (every node), so
//! it can never be mistaken for a service's `{"data":…}` message. Owns the bytes only: who acts
//! on a control is the node's, where it travels is the broker's.

use serde::{Deserialize, Serialize};

use super::codes::CommandError;
use super::command::string_field;
use super::room::RoomName;

/// The longest close reason a WebSocket close frame carries (125 bytes minus the code).
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// The two close codes a backend may choose (docs/protocol.md "Close codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickCode {
    /// 4000: the client should reconnect.
    Reconnect,
    /// 4403: the client must not reconnect.
    Forbidden,
}

impl KickCode {
    pub fn code(self) -> u16 {
        match self {
            KickCode::Reconnect => 4000,
            KickCode::Forbidden => 4403,
        }
    }

    fn from_code(code: u64) -> Option<KickCode> {
        match code {
            4000 => Some(KickCode::Reconnect),
            4403 => Some(KickCode::Forbidden),
            _ => None,
        }
    }
}

/// What a control envelope asks of the nodes that receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Close connections: every connection on the channel's user, or the one named
    /// `conn_id` (on the broadcast channel, `conn_id` is required).
    Disconnect {
        conn_id: Option<String>,
        code: KickCode,
        reason: Option<String>,
    },
    /// Refuse tokens from now on, and close the live ones with 4403.
    Revoke(Revocation),
    /// Join every connection of the channel's user to `room` (a server subscription).
    Subscribe { room: RoomName },
    /// Take every connection of the channel's user out of `room`.
    Unsubscribe { room: RoomName },
}

/// Tokens refused until `until` (seconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// Every token of `user` issued (`iat`) before `before`.
    User {
        user: String,
        before: u64,
        until: u64,
    },
    /// The token whose `jti` is this.
    Jti { jti: String, until: u64 },
}

/// Whether a user revocation made at `before` (unix seconds) covers a token issued at `iat`:
/// one issued before it, or one without `iat`, which cannot show it is newer. The handshake's
/// check and the closing of live connections both ask this.
pub fn issued_before(iat: Option<u64>, before: u64) -> bool {
    iat.is_none_or(|iat| iat < before)
}

impl Revocation {
    pub fn until(&self) -> u64 {
        match self {
            Revocation::User { until, .. } | Revocation::Jti { until, .. } => *until,
        }
    }

    /// The revocation without its end: the member name the broker stores it under, so the
    /// same revocation stored twice is one entry.
    pub fn key(&self) -> String {
        let wire = match self {
            Revocation::User { user, before, .. } => WireControl {
                user: Some(user.clone()),
                before: Some(*before),
                ..WireControl::default()
            },
            Revocation::Jti { jti, .. } => WireControl {
                jti: Some(jti.clone()),
                ..WireControl::default()
            },
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Back from [`Revocation::key`] and its end.
    pub fn from_key(key: &[u8], until: u64) -> Option<Revocation> {
        let wire: WireControl = serde_json::from_slice(key).ok()?;
        revocation(wire.user, wire.jti, wire.before, Some(until)).ok()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct WireControl {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conn_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    room: Option<String>,
}

/// The payload published for `control`.
pub fn encode_control(control: &Control) -> Vec<u8> {
    let wire = match control {
        Control::Disconnect {
            conn_id,
            code,
            reason,
        } => WireControl {
            control: Some("disconnect".into()),
            conn_id: conn_id.clone(),
            code: Some(code.code().into()),
            reason: reason.clone(),
            ..WireControl::default()
        },
        Control::Revoke(Revocation::User {
            user,
            before,
            until,
        }) => WireControl {
            control: Some("revoke".into()),
            user: Some(user.clone()),
            before: Some(*before),
            until: Some(*until),
            ..WireControl::default()
        },
        Control::Revoke(Revocation::Jti { jti, until }) => WireControl {
            control: Some("revoke".into()),
            jti: Some(jti.clone()),
            until: Some(*until),
            ..WireControl::default()
        },
        Control::Subscribe { room } | Control::Unsubscribe { room } => WireControl {
            control: Some(
                if matches!(control, Control::Subscribe { .. }) {
                    "subscribe"
                } else {
                    "unsubscribe"
                }
                .into(),
            ),
            room: Some(room.to_string()),
            ..WireControl::default()
        },
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// `Some` when `payload` is a control envelope (an object with `control` and no `data`): the
/// control, or why it is malformed. `None` for every other payload (a message).
pub fn decode_control(payload: &[u8]) -> Option<Result<Control, String>> {
    // Most payloads on these channels are messages: a scan is cheaper than a parse.
    if !payload.windows(9).any(|w| w == b"\"control\"") {
        return None;
    }
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
    if !value.contains_key("control") || value.contains_key("data") {
        return None;
    }
    let wire: WireControl = match serde_json::from_value(serde_json::Value::Object(value)) {
        Ok(wire) => wire,
        Err(err) => return Some(Err(format!("malformed control envelope: {err}"))),
    };
    Some(control_from_wire(wire))
}

fn control_from_wire(wire: WireControl) -> Result<Control, String> {
    match wire.control.as_deref() {
        Some("disconnect") => {
            let code = match wire.code {
                None => KickCode::Reconnect,
                Some(code) => KickCode::from_code(code)
                    .ok_or_else(|| format!("`code` must be 4000 or 4403, not {code}"))?,
            };
            let reason = wire.reason.filter(|r| !r.is_empty());
            if reason
                .as_ref()
                .is_some_and(|r| r.len() > MAX_CLOSE_REASON_BYTES)
            {
                return Err(format!(
                    "`reason` must be at most {MAX_CLOSE_REASON_BYTES} bytes"
                ));
            }
            Ok(Control::Disconnect {
                conn_id: wire.conn_id,
                code,
                reason,
            })
        }
        Some("revoke") => revocation(wire.user, wire.jti, wire.before, wire.until)
            .map(Control::Revoke)
            .map_err(|err| err.message.into_owned()),
        Some(verb @ ("subscribe" | "unsubscribe")) => {
            let room = wire.room.ok_or("missing field `room`")?;
            let room = RoomName::new(&room).map_err(|err| err.message.into_owned())?;
            Ok(if verb == "subscribe" {
                Control::Subscribe { room }
            } else {
                Control::Unsubscribe { room }
            })
        }
        Some(other) => Err(format!("unknown control `{other}`")),
        None => Err("`control` must be a string".into()),
    }
}

fn revocation(
    user: Option<String>,
    jti: Option<String>,
    before: Option<u64>,
    until: Option<u64>,
) -> Result<Revocation, CommandError> {
    let until = until.ok_or_else(|| CommandError::bad_request("missing field `until`"))?;
    match (user, jti) {
        (Some(user), None) if !user.is_empty() => Ok(Revocation::User {
            user,
            before: before.ok_or_else(|| CommandError::bad_request("missing field `before`"))?,
            until,
        }),
        (None, Some(jti)) if !jti.is_empty() => Ok(Revocation::Jti { jti, until }),
        _ => Err(CommandError::bad_request(
            "give exactly one of `user` and `jti`, not empty",
        )),
    }
}

/// What `POST /api/disconnect` asks: `{user | conn_id, code?, reason?}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisconnectRequest {
    pub user: Option<String>,
    pub control: Control,
}

/// Decode `POST /api/disconnect`'s body.
pub fn decode_disconnect_body(body: &[u8]) -> Result<DisconnectRequest, CommandError> {
    let mut map = json_object(body)?;
    let user = optional_string(&map, "user")?;
    let conn_id = optional_string(&map, "conn_id")?;
    if user.is_none() && conn_id.is_none() {
        return Err(CommandError::bad_request("give `user` or `conn_id`"));
    }
    map.remove("user");
    map.insert("control".into(), "disconnect".into());
    let wire: WireControl = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|err| CommandError::bad_request(format!("bad field: {err}")))?;
    let control = control_from_wire(wire).map_err(CommandError::bad_request)?;
    Ok(DisconnectRequest { user, control })
}

/// Decode `POST /api/revoke`'s body: `{user | jti, until}`; `before` is `now_secs`.
pub fn decode_revoke_body(body: &[u8], now_secs: u64) -> Result<Revocation, CommandError> {
    let map = json_object(body)?;
    let user = optional_string(&map, "user")?;
    let jti = optional_string(&map, "jti")?;
    let until = match map.get("until") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| CommandError::bad_request("`until` must be unix seconds"))?,
        ),
    };
    revocation(user, jti, Some(now_secs), until)
}

/// Decode `POST /api/subscribe` and `/api/unsubscribe`'s body: `{user, room}`.
pub fn decode_server_sub_body(body: &[u8]) -> Result<(String, RoomName), CommandError> {
    let map = json_object(body)?;
    let user = optional_string(&map, "user")?
        .ok_or_else(|| CommandError::bad_request("missing field `user`"))?;
    let raw = map
        .get("room")
        .and_then(|v| serde_json::value::to_raw_value(v).ok())
        .ok_or_else(|| CommandError::bad_request("missing field `room`"))?;
    let room = RoomName::new(&string_field(&raw, "room")?)?;
    Ok((user, room))
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, CommandError> {
    serde_json::from_slice(body)
        .map_err(|_| CommandError::bad_request("the body must be a JSON object"))
}

fn optional_string(
    map: &serde_json::Map<String, serde_json::Value>,
    field: &'static str,
) -> Result<Option<String>, CommandError> {
    let Some(value) = map.get(field) else {
        return Ok(None);
    };
    let raw = serde_json::value::to_raw_value(value)
        .map_err(|_| CommandError::bad_request(format!("bad `{field}`")))?;
    let text = string_field(&raw, field)?;
    if text.is_empty() || text.len() > super::admin::MAX_USER_BYTES {
        return Err(CommandError::bad_request(format!(
            "`{field}` must be 1 to {} bytes",
            super::admin::MAX_USER_BYTES
        )));
    }
    Ok(Some(text.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_envelopes_round_trip_and_messages_are_not_controls() {
        let kick = Control::Disconnect {
            conn_id: Some("abc.3".into()),
            code: KickCode::Forbidden,
            reason: Some("banned".into()),
        };
        assert_eq!(decode_control(&encode_control(&kick)), Some(Ok(kick)));
        let revoke = Control::Revoke(Revocation::User {
            user: "u".into(),
            before: 10,
            until: 20,
        });
        assert_eq!(decode_control(&encode_control(&revoke)), Some(Ok(revoke)));
        assert_eq!(
            decode_control(br#"{"control":"disconnect"}"#),
            Some(Ok(Control::Disconnect {
                conn_id: None,
                code: KickCode::Reconnect,
                reason: None
            }))
        );
        for message in [
            &br#"{"data":{"control":"disconnect"}}"#[..],
            br#"{"control":"disconnect","data":1}"#,
            br#"{"kind":"x"}"#,
            b"hello",
            b"[1]",
        ] {
            assert_eq!(decode_control(message), None);
        }
        assert!(matches!(
            decode_control(br#"{"control":"disconnect","code":1000}"#),
            Some(Err(_))
        ));
        assert!(matches!(
            decode_control(br#"{"control":"explode"}"#),
            Some(Err(_))
        ));
    }

    #[test]
    fn server_subscriptions_round_trip_and_check_the_room() {
        let sub = Control::Subscribe {
            room: RoomName::new("team:42").expect("room"),
        };
        assert_eq!(decode_control(&encode_control(&sub)), Some(Ok(sub)));
        let unsub = Control::Unsubscribe {
            room: RoomName::new("team:42").expect("room"),
        };
        assert_eq!(decode_control(&encode_control(&unsub)), Some(Ok(unsub)));
        assert!(matches!(
            decode_control(br#"{"control":"subscribe","room":"a b"}"#),
            Some(Err(_))
        ));
        let (user, room) = decode_server_sub_body(br#"{"user":"u","room":"r"}"#).expect("ok");
        assert_eq!((user.as_str(), room.as_str()), ("u", "r"));
        let bad = decode_server_sub_body(br#"{"user":"u","room":"a b"}"#).expect_err("bad");
        assert_eq!(bad.code, crate::protocol::ErrorCode::InvalidRoom);
        assert!(decode_server_sub_body(br#"{"room":"r"}"#).is_err());
    }

    #[test]
    fn revocation_keys_name_it_without_its_end() {
        let r = Revocation::Jti {
            jti: "j1".into(),
            until: 99,
        };
        assert_eq!(Revocation::from_key(r.key().as_bytes(), 99), Some(r));
    }

    #[test]
    fn admin_control_bodies() {
        let d = decode_disconnect_body(br#"{"user":"u1","code":4403,"reason":"bye"}"#).expect("ok");
        assert_eq!(d.user.as_deref(), Some("u1"));
        assert!(matches!(
            d.control,
            Control::Disconnect {
                code: KickCode::Forbidden,
                ..
            }
        ));
        for bad in [
            &br#"{}"#[..],
            br#"{"user":"u","code":4001}"#,
            br#"{"user":""}"#,
            br#"{"user":3}"#,
            br#"[]"#,
        ] {
            assert!(decode_disconnect_body(bad).is_err(), "{bad:?}");
        }
        assert!(decode_revoke_body(br#"{"user":"u","until":5}"#, 1).is_ok());
        for bad in [
            &br#"{"user":"u"}"#[..],
            br#"{"user":"u","jti":"j","until":5}"#,
            br#"{"until":5}"#,
            br#"{"jti":"j","until":"soon"}"#,
        ] {
            assert!(decode_revoke_body(bad, 1).is_err(), "{bad:?}");
        }
    }
}
