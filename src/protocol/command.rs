//! Client commands (docs/protocol.md "Client → server"): decoding one text frame into a
//! validated [`Command`], or the [`CommandError`] to reply with, keeping the request id
//! whenever it could be read.
//!
//! Owns the raw-field helpers the admin bodies share; acting on a command is the node's.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::CommandError;
use super::room::RoomName;

/// Longest `id` string a client may attach to a command, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 64;

/// The `id` a client attached to a command: a string of at most 64 characters or an integer,
/// copied as it is into the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RequestId {
    Int(i64),
    UInt(u64),
    Str(String),
}

/// A decoded, validated client command.
#[derive(Debug)]
pub enum Command {
    Join {
        room: RoomName,
        since: Option<String>,
        history: Option<u64>,
    },
    Leave {
        room: RoomName,
    },
    Publish {
        room: RoomName,
        data: Box<RawValue>,
        echo: bool,
        /// The conflation key (docs/protocol.md "Conflated rooms"); its length is checked by
        /// the node against `conflate.max_key_bytes`.
        key: Option<String>,
    },
    Ping,
    /// Who is in a room (`presence.rooms`).
    Presence {
        room: RoomName,
    },
    /// Replace the connection's token in band (docs/protocol.md "Tokens").
    Refresh {
        token: TokenText,
    },
}

/// A token as a client sent it: kept out of `Debug` output, so no log line ever carries one.
pub struct TokenText(pub String);

impl std::fmt::Debug for TokenText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenText({} bytes)", self.0.len())
    }
}

impl Command {
    /// Label for metrics.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Join { .. } => CommandKind::Join,
            Command::Leave { .. } => CommandKind::Leave,
            Command::Publish { .. } => CommandKind::Publish,
            Command::Ping => CommandKind::Ping,
            Command::Presence { .. } => CommandKind::Presence,
            Command::Refresh { .. } => CommandKind::Refresh,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    Join,
    Leave,
    Publish,
    Ping,
    Presence,
    Refresh,
    /// The plain text heartbeat `ping`.
    TextPing,
    /// Anything that did not decode into a command.
    Invalid,
}

impl CommandKind {
    pub const ALL: [CommandKind; 8] = [
        CommandKind::Join,
        CommandKind::Leave,
        CommandKind::Publish,
        CommandKind::Ping,
        CommandKind::Presence,
        CommandKind::Refresh,
        CommandKind::TextPing,
        CommandKind::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Join => "join",
            CommandKind::Leave => "leave",
            CommandKind::Publish => "publish",
            CommandKind::Ping => "ping",
            CommandKind::Presence => "presence",
            CommandKind::Refresh => "refresh",
            CommandKind::TextPing => "text_ping",
            CommandKind::Invalid => "invalid",
        }
    }
}

/// Every field as raw JSON, so a wrong type in one field still lets us read (and echo) the `id`.
#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    echo: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    history: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<&'a RawValue>,
}

/// A field that is present is `Some`, even when its value is `null` (serde's `Option` would
/// read `null` as absent, and `"data": null` is a valid message).
pub(super) fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// Outcome of decoding one text frame: the request id (when one could be read) and the command
/// or the error to reply with.
#[derive(Debug)]
pub struct Decoded {
    pub id: Option<RequestId>,
    pub result: Result<Command, CommandError>,
}

/// Decode and validate one client text frame (not the plain `ping`, which the caller handles).
pub fn decode_command(text: &str) -> Decoded {
    // serde also reads a struct from a JSON array; commands are objects only.
    if !text.trim_start().starts_with('{') {
        return Decoded {
            id: None,
            result: Err(CommandError::bad_request("a command must be a JSON object")),
        };
    }
    let raw: RawCommand<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let message = if err.is_data() {
                "a command must be a JSON object".to_owned()
            } else {
                format!("invalid JSON: {err}")
            };
            return Decoded {
                id: None,
                result: Err(CommandError::bad_request(message)),
            };
        }
    };
    let id = match raw
        .id
        .filter(|v| !is_null(v))
        .map(parse_request_id)
        .transpose()
    {
        Ok(id) => id,
        Err(err) => {
            return Decoded {
                id: None,
                result: Err(err),
            };
        }
    };
    Decoded {
        id,
        result: command_from_raw(&raw),
    }
}

fn parse_request_id(raw: &RawValue) -> Result<RequestId, CommandError> {
    let invalid = || {
        CommandError::bad_request(format!(
            "`id` must be an integer or a string of at most {MAX_REQUEST_ID_CHARS} characters"
        ))
    };
    match serde_json::from_str::<serde_json::Value>(raw.get()).map_err(|_| invalid())? {
        serde_json::Value::String(s) if s.chars().count() <= MAX_REQUEST_ID_CHARS => {
            Ok(RequestId::Str(s))
        }
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(RequestId::Int(i))
            } else if let Some(u) = n.as_u64() {
                Ok(RequestId::UInt(u))
            } else {
                Err(invalid())
            }
        }
        _ => Err(invalid()),
    }
}

fn command_from_raw(raw: &RawCommand<'_>) -> Result<Command, CommandError> {
    let kind = match raw.kind {
        None => return Err(CommandError::bad_request("missing field `type`")),
        Some(kind) => string_field(kind, "type")?,
    };
    match kind.as_ref() {
        "join" => {
            let room = required_room(raw.room)?;
            let since = raw
                .since
                .filter(|v| !is_null(v))
                .map(|v| string_field(v, "since").map(Cow::into_owned))
                .transpose()?;
            let history = raw
                .history
                .filter(|v| !is_null(v))
                .map(|v| {
                    serde_json::from_str::<u64>(v.get()).map_err(|_| {
                        CommandError::bad_request("`history` must be a non-negative integer")
                    })
                })
                .transpose()?;
            Ok(Command::Join {
                room,
                since,
                history,
            })
        }
        "leave" => Ok(Command::Leave {
            room: required_room(raw.room)?,
        }),
        "publish" => {
            let room = required_room(raw.room)?;
            let data = raw
                .data
                .ok_or_else(|| CommandError::bad_request("missing field `data`"))?
                .to_owned();
            let echo = match raw.echo {
                None => true,
                Some(v) => serde_json::from_str::<bool>(v.get())
                    .map_err(|_| CommandError::bad_request("`echo` must be a boolean"))?,
            };
            let key = optional_key(raw.key)?;
            Ok(Command::Publish {
                room,
                data,
                echo,
                key,
            })
        }
        "ping" => Ok(Command::Ping),
        "presence" => Ok(Command::Presence {
            room: required_room(raw.room)?,
        }),
        "refresh" => {
            let token = raw
                .token
                .ok_or_else(|| CommandError::bad_request("missing field `token`"))?;
            let token = string_field(token, "token")?;
            if token.is_empty() {
                return Err(CommandError::bad_request("`token` must not be empty"));
            }
            Ok(Command::Refresh {
                token: TokenText(token.into_owned()),
            })
        }
        other => Err(CommandError::bad_request(format!(
            "unknown command type `{}`",
            truncate(other, 32)
        ))),
    }
}

/// The `key` of a publish (client command or admin body): absent or `null` is none, else a
/// non-empty string. Its longest length is configuration, checked by the node.
pub(super) fn optional_key(raw: Option<&RawValue>) -> Result<Option<String>, CommandError> {
    let Some(raw) = raw.filter(|v| !is_null(v)) else {
        return Ok(None);
    };
    let key = string_field(raw, "key")?;
    if key.is_empty() {
        return Err(CommandError::bad_request("`key` must not be empty"));
    }
    Ok(Some(key.into_owned()))
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

pub(super) fn string_field<'a>(
    raw: &'a RawValue,
    name: &str,
) -> Result<Cow<'a, str>, CommandError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| CommandError::bad_request(format!("`{name}` must be a string")))
}

/// The `room` field of a client command or an admin body: the one place a room name from the
/// outside is checked.
pub(super) fn required_room(raw: Option<&RawValue>) -> Result<RoomName, CommandError> {
    let raw = raw.ok_or_else(|| CommandError::bad_request("missing field `room`"))?;
    RoomName::new(&string_field(raw, "room")?)
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codes::ErrorCode;

    fn decode(text: &str) -> Decoded {
        decode_command(text)
    }

    #[test]
    fn decodes_every_command() {
        let d = decode(r#"{"type":"join","room":"a","id":"x1"}"#);
        assert_eq!(d.id, Some(RequestId::Str("x1".into())));
        assert!(
            matches!(d.result, Ok(Command::Join { ref room, since: None, history: None }) if room == "a")
        );

        let d = decode(r#"{"type":"join","room":"a","since":"5-1","history":10}"#);
        assert!(
            matches!(d.result, Ok(Command::Join { since: Some(ref s), history: Some(10), .. }) if s == "5-1")
        );

        let d = decode(r#"{"type":"leave","room":"a/b","id":7}"#);
        assert_eq!(d.id, Some(RequestId::Int(7)));
        assert!(matches!(d.result, Ok(Command::Leave { .. })));

        let d = decode(r#"{"type":"publish","room":"r","data":{"x":[1,2]},"echo":false}"#);
        match d.result {
            Ok(Command::Publish {
                room,
                data,
                echo,
                key,
            }) => {
                assert_eq!(room, "r");
                assert_eq!(data.get(), r#"{"x":[1,2]}"#);
                assert!(!echo);
                assert_eq!(key, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let d = decode(r#"{"type":"publish","room":"r","data":1,"key":"AAPL"}"#);
        assert!(matches!(d.result, Ok(Command::Publish { key: Some(ref k), .. }) if k == "AAPL"));
        let d = decode(r#"{"type":"publish","room":"r","data":1,"key":null}"#);
        assert!(matches!(d.result, Ok(Command::Publish { key: None, .. })));
        let d = decode(r#"{"type":"publish","room":"r","data":null}"#);
        assert!(matches!(d.result, Ok(Command::Publish { echo: true, .. })));

        assert!(matches!(
            decode(r#"{"type":"ping"}"#).result,
            Ok(Command::Ping)
        ));

        let d = decode(r#"{"type":"refresh","token":"a.b.c","id":2}"#);
        match d.result {
            Ok(Command::Refresh { token }) => assert_eq!(token.0, "a.b.c"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let d = decode(r#"{"type":"refresh","token":"secret.jwt.value"}"#);
        let shown = format!("{:?}", d.result);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("16 bytes"), "{shown}");
    }

    #[test]
    fn bad_requests_keep_the_id_when_it_is_valid() {
        for (text, has_id) in [
            ("not json", false),
            ("[1,2]", false),
            ("\"join\"", false),
            (r#"{"id":"a"}"#, true),
            (r#"{"type":"fly","id":"a"}"#, true),
            (r#"{"type":5,"id":"a"}"#, true),
            (r#"{"type":"join","id":"a"}"#, true),
            (r#"{"type":"join","room":5,"id":"a"}"#, true),
            (r#"{"type":"join","room":"r","history":-1,"id":"a"}"#, true),
            (r#"{"type":"join","room":"r","since":3,"id":"a"}"#, true),
            (r#"{"type":"publish","room":"r","id":"a"}"#, true),
            (
                r#"{"type":"publish","room":"r","data":1,"echo":"no","id":"a"}"#,
                true,
            ),
            (
                r#"{"type":"publish","room":"r","data":1,"key":5,"id":"a"}"#,
                true,
            ),
            (
                r#"{"type":"publish","room":"r","data":1,"key":"","id":"a"}"#,
                true,
            ),
            (r#"{"type":"refresh","id":"a"}"#, true),
            (r#"{"type":"refresh","token":5,"id":"a"}"#, true),
            (r#"{"type":"refresh","token":"","id":"a"}"#, true),
            (r#"{"type":"ping","id":1.5}"#, false),
            (r#"{"type":"ping","id":{"a":1}}"#, false),
        ] {
            let d = decode(text);
            let err = d.result.expect_err(text);
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(d.id.is_some(), has_id, "{text}");
        }
    }

    #[test]
    fn request_id_length_is_bounded() {
        let ok = format!(r#"{{"type":"ping","id":"{}"}}"#, "é".repeat(64));
        assert!(decode(&ok).result.is_ok());
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "a".repeat(65));
        let d = decode(&long);
        assert_eq!(d.result.unwrap_err().code, ErrorCode::BadRequest);
        assert!(d.id.is_none());
    }
}
