//! The wire protocol of PROTOCOL.md: decoding and validating client commands, encoding server
//! frames, error codes and close codes.
//!
//! Owns every serde derive for wire types. Knows nothing of sockets, rooms or brokers: it turns
//! bytes into a [`Command`] (or a [`CommandError`]) and typed replies into a [`Frame`] that is
//! encoded once and shared by every recipient.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Longest `id` string a client may attach to a command, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 64;
/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;
/// Rooms with this prefix are reserved for user channels.
pub const RESERVED_ROOM_PREFIX: &str = "user:";

/// An encoded server frame: JSON text, built once, cloned cheaply (reference counted) for every
/// recipient.
#[derive(Clone, Debug)]
pub struct Frame(Utf8Bytes);

impl Frame {
    pub fn text(&self) -> &str {
        self.0.as_str()
    }

    pub fn into_utf8_bytes(self) -> Utf8Bytes {
        self.0
    }

    fn encode<T: Serialize>(value: &T) -> Frame {
        // Serialising our own types (strings, numbers, already-validated raw JSON) cannot fail.
        let text = serde_json::to_string(value).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encoding failed"}"#.to_owned()
        });
        Frame(Utf8Bytes::from(text))
    }

    /// A frame with arbitrary text, for tests of code that only moves frames.
    #[doc(hidden)]
    pub fn text_for_tests(text: &str) -> Frame {
        Frame(Utf8Bytes::from(text))
    }

    /// The plain-text heartbeat reply.
    pub fn plain_pong() -> Frame {
        Frame(Utf8Bytes::from_static("pong"))
    }
}

/// Error codes of PROTOCOL.md "Server → client".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    TooLarge,
    RateLimited,
    InvalidRoom,
    Forbidden,
    NotJoined,
    TooManyRooms,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::InvalidRoom,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command failed; the connection stays open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        CommandError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

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
        room: String,
        since: Option<String>,
        history: Option<u64>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        data: Box<RawValue>,
        echo: bool,
    },
    Ping,
    /// Who is in a room (`presence.rooms`).
    Presence {
        room: String,
    },
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
    /// The plain text heartbeat `ping`.
    TextPing,
    /// Anything that did not decode into a command.
    Invalid,
}

impl CommandKind {
    pub const ALL: [CommandKind; 7] = [
        CommandKind::Join,
        CommandKind::Leave,
        CommandKind::Publish,
        CommandKind::Ping,
        CommandKind::Presence,
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
}

/// A field that is present is `Some`, even when its value is `null` (serde's `Option` would
/// read `null` as absent, and `"data": null` is a valid message).
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
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
            Ok(Command::Publish { room, data, echo })
        }
        "ping" => Ok(Command::Ping),
        "presence" => Ok(Command::Presence {
            room: required_room(raw.room)?,
        }),
        other => Err(CommandError::bad_request(format!(
            "unknown command type `{}`",
            truncate(other, 32)
        ))),
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn string_field<'a>(raw: &'a RawValue, name: &str) -> Result<Cow<'a, str>, CommandError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| CommandError::bad_request(format!("`{name}` must be a string")))
}

fn required_room(raw: Option<&RawValue>) -> Result<String, CommandError> {
    let raw = raw.ok_or_else(|| CommandError::bad_request("missing field `room`"))?;
    let room = string_field(raw, "room")?;
    validate_room(&room)?;
    Ok(room.into_owned())
}

/// Room names: 1 to 128 bytes of `A-Z a-z 0-9 _ - . : /`.
pub fn validate_room(room: &str) -> Result<(), CommandError> {
    if room.is_empty() || room.len() > MAX_ROOM_BYTES {
        return Err(CommandError::new(
            ErrorCode::InvalidRoom,
            format!("room names are 1 to {MAX_ROOM_BYTES} bytes"),
        ));
    }
    if !room.bytes().all(is_room_byte) {
        return Err(CommandError::new(
            ErrorCode::InvalidRoom,
            "room names may contain only A-Z a-z 0-9 _ - . : /",
        ));
    }
    Ok(())
}

fn is_room_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/')
}

fn truncate(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---- server → client ----

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
    },
    Left {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RequestId>,
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
    },
    MemberLeft {
        room: &'a str,
        user: &'a str,
        ts: u64,
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
    })
}

pub fn left(room: &str, id: Option<&RequestId>) -> Frame {
    Frame::encode(&Outbound::Left { room, id })
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

pub fn message(room: &str, id: &str, data: &RawValue, from: &str, ts: u64) -> Frame {
    Frame::encode(&Outbound::Message {
        room,
        id,
        data,
        from,
        ts,
    })
}

pub fn notification(id: &str, data: &RawValue, ts: u64) -> Frame {
    Frame::encode(&Outbound::Notification { id, data, ts })
}

pub fn broadcast(id: &str, data: &RawValue, ts: u64) -> Frame {
    Frame::encode(&Outbound::Broadcast { id, data, ts })
}

/// One entry of a `presence` reply: a user and how many of its connections are in the room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PresenceMember {
    pub user: String,
    pub conns: u64,
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
pub fn member_event(room: &str, user: &str, joined: bool, ts: u64) -> Frame {
    Frame::encode(&if joined {
        Outbound::MemberJoined { room, user, ts }
    } else {
        Outbound::MemberLeft { room, user, ts }
    })
}

/// The body of `GET /api/presence/ROOM`.
pub fn admin_presence_body(room: &str, list: &PresenceList) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        room: &'a str,
        #[serde(flatten)]
        list: &'a PresenceList,
    }
    serde_json::to_string(&Body { room, list }).unwrap_or_default()
}

/// A presence change as the Redis presence function publishes it on `{prefix}presence:ROOM`:
/// `{"user":…,"event":"joined"|"left","ts":…}`.
#[derive(Deserialize)]
struct WirePresenceEvent<'a> {
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    ts: u64,
}

/// Decode a presence change: `(user, joined, ts)`; `None` for anything else.
pub fn decode_presence_event(payload: &[u8]) -> Option<(String, bool, u64)> {
    let wire: WirePresenceEvent<'_> = serde_json::from_slice(payload).ok()?;
    let joined = match wire.event.as_ref() {
        "joined" => true,
        "left" => false,
        _ => return None,
    };
    Some((wire.user.into_owned(), joined, wire.ts))
}

/// Turn an arbitrary payload into the `data` of a message: JSON as it is when it parses,
/// otherwise the text as a JSON string.
pub fn data_from_payload(payload: &[u8]) -> Box<RawValue> {
    if let Ok(text) = std::str::from_utf8(payload) {
        if let Ok(raw) = serde_json::from_str::<&RawValue>(text) {
            return raw.to_owned();
        }
        return string_as_raw(text);
    }
    string_as_raw(&String::from_utf8_lossy(payload))
}

fn string_as_raw(text: &str) -> Box<RawValue> {
    let quoted = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    RawValue::from_string(quoted).unwrap_or_else(|_| null_raw())
}

pub fn null_raw() -> Box<RawValue> {
    // "null" is valid JSON; from_string only fails on invalid JSON.
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable!())
}

/// A message's place in its room's history: ids of kept messages are `h<epoch>-<offset>`.
///
/// The epoch names one life of a room's history (it changes when the history expired and
/// started over); offsets count up by one per kept message within an epoch, so a gap or a
/// stale position is detected exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

impl Position {
    pub const EPOCH_PREFIX: char = 'h';

    /// A fresh random epoch.
    pub fn new_epoch() -> String {
        format!("{}{:08x}", Self::EPOCH_PREFIX, rand::random::<u32>())
    }

    pub fn id(&self) -> String {
        format!("{}-{}", self.epoch, self.offset)
    }

    /// The position of a kept message's id; `None` for any other id.
    pub fn parse(id: &str) -> Option<Position> {
        let (epoch, offset) = id.rsplit_once('-')?;
        if !epoch.starts_with(Self::EPOCH_PREFIX) || epoch.len() < 2 {
            return None;
        }
        Some(Position {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

/// Where a publication goes: the three kinds of broker channel of PROTOCOL.md.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Room(std::sync::Arc<str>),
    User(std::sync::Arc<str>),
    Broadcast,
}

/// Who published a message from a client connection, so that `echo: false` can skip the
/// sender on whichever node it is connected to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub node: String,
    pub conn: u64,
    pub echo: bool,
}

/// One publication as it travels through a broker: encoded once on the publishing node,
/// decoded once on each receiving node.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub target: Target,
    pub id: String,
    pub data: Box<RawValue>,
    pub from: String,
    /// Milliseconds since the Unix epoch, set where the message entered the system.
    pub ts: u64,
    pub origin: Option<Origin>,
}

impl Envelope {
    /// The client frame for this publication, encoded once for all local recipients.
    pub fn frame(&self) -> Frame {
        match &self.target {
            Target::Room(room) => message(room, &self.id, &self.data, &self.from, self.ts),
            Target::User(_) => notification(&self.id, &self.data, self.ts),
            Target::Broadcast => broadcast(&self.id, &self.data, self.ts),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    node: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    echo: Option<bool>,
}

/// The payload a node PUBLISHes on a broker channel for `envelope` (the channel names the
/// target).
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    encode_wire(envelope, true)
}

/// [`encode_envelope`] without the id, for a broker that assigns the id itself (a kept
/// message's id is its history position).
pub fn encode_envelope_unnumbered(envelope: &Envelope) -> Vec<u8> {
    encode_wire(envelope, false)
}

fn encode_wire(envelope: &Envelope, with_id: bool) -> Vec<u8> {
    let wire = WireEnvelope {
        data: &envelope.data,
        id: with_id.then_some(Cow::Borrowed(envelope.id.as_str())),
        from: Some(Cow::Borrowed(&envelope.from)),
        ts: Some(envelope.ts),
        node: envelope
            .origin
            .as_ref()
            .map(|o| Cow::Borrowed(o.node.as_str())),
        conn: envelope.origin.as_ref().map(|o| o.conn),
        echo: envelope.origin.as_ref().map(|o| o.echo),
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decode a payload received on a broker channel. A JSON object with `data` fills the
/// envelope (missing fields from `fresh_id` and `now_ms`, `from` = "server"); any other payload
/// is the data itself, as JSON when it parses, else as a string.
pub fn decode_envelope(
    target: Target,
    payload: &[u8],
    fresh_id: impl FnOnce() -> String,
    now_ms: u64,
) -> Envelope {
    if let Ok(wire) = serde_json::from_slice::<WireEnvelope<'_>>(payload) {
        let origin = match (wire.node, wire.conn) {
            (Some(node), Some(conn)) => Some(Origin {
                node: node.into_owned(),
                conn,
                echo: wire.echo.unwrap_or(true),
            }),
            _ => None,
        };
        return Envelope {
            target,
            id: wire.id.map_or_else(fresh_id, Cow::into_owned),
            data: wire.data.to_owned(),
            from: wire
                .from
                .map_or_else(|| "server".to_owned(), Cow::into_owned),
            ts: wire.ts.unwrap_or(now_ms),
            origin,
        };
    }
    Envelope {
        target,
        id: fresh_id(),
        data: data_from_payload(payload),
        from: "server".to_owned(),
        ts: now_ms,
        origin: None,
    }
}

/// Longest user id accepted by the admin API, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Which admin publish route a body was posted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRoute {
    Publish,
    Notify,
    Broadcast,
}

#[derive(Deserialize)]
struct AdminBody<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

/// Decode the JSON body of `POST /api/publish` (`{room, data}`), `/api/notify`
/// (`{user, data}`) or `/api/broadcast` (`{data}`).
pub fn decode_admin_body(
    route: AdminRoute,
    body: &[u8],
) -> Result<(Target, Box<RawValue>), CommandError> {
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(CommandError::bad_request("the body must be a JSON object"));
    }
    let body: AdminBody<'_> = serde_json::from_slice(body).map_err(|err| {
        CommandError::bad_request(if err.is_data() {
            "the body must be a JSON object".to_owned()
        } else {
            format!("invalid JSON: {err}")
        })
    })?;
    let data = body
        .data
        .ok_or_else(|| CommandError::bad_request("missing field `data`"))?
        .to_owned();
    let target = match route {
        AdminRoute::Publish => {
            let room = required_room(body.room)?;
            Target::Room(room.into())
        }
        AdminRoute::Notify => {
            let raw = body
                .user
                .ok_or_else(|| CommandError::bad_request("missing field `user`"))?;
            let user = string_field(raw, "user")?;
            if user.is_empty() || user.len() > MAX_USER_BYTES {
                return Err(CommandError::bad_request(format!(
                    "`user` must be 1 to {MAX_USER_BYTES} bytes"
                )));
            }
            Target::User(user.as_ref().into())
        }
        AdminRoute::Broadcast => Target::Broadcast,
    };
    Ok((target, data))
}

#[derive(Serialize)]
struct AdminError<'a> {
    error: AdminErrorBody<'a>,
}

#[derive(Serialize)]
struct AdminErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// `{"error":{"code","message"}}`, the admin API's error body.
pub fn admin_error_body(code: &str, message: &str) -> String {
    serde_json::to_string(&AdminError {
        error: AdminErrorBody { code, message },
    })
    .unwrap_or_default()
}

/// `{"id": ...}`, the admin API's success body.
pub fn admin_accepted_body(id: &str) -> String {
    serde_json::json!({ "id": id }).to_string()
}

/// WebSocket close codes used by roomcast, with the label they carry in metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The peer closed or the socket failed: nothing to send.
    PeerGone,
    /// No frame from the client within the idle timeout (1001).
    Idle,
    /// The node is shutting down (1001).
    Shutdown,
    /// A frame broke the WebSocket protocol (1002).
    ProtocolError,
    /// Invalid UTF-8 in a text frame (1007).
    InvalidUtf8,
    /// The client kept going past its rate limit (1008).
    RateLimited,
    /// A message above `limits.max_message_bytes` (1009).
    TooLarge,
    /// The client did not read fast enough; its outbox filled (1013).
    SlowConsumer,
    /// Our fault (1011).
    Internal,
    /// The connection's token expired (4001): reconnect with a fresh one.
    TokenExpired,
}

impl Disconnect {
    pub const ALL: [Disconnect; 10] = [
        Disconnect::PeerGone,
        Disconnect::Idle,
        Disconnect::Shutdown,
        Disconnect::ProtocolError,
        Disconnect::InvalidUtf8,
        Disconnect::RateLimited,
        Disconnect::TooLarge,
        Disconnect::SlowConsumer,
        Disconnect::Internal,
        Disconnect::TokenExpired,
    ];

    /// The close code to send, or `None` when the socket is already gone.
    pub fn close_code(self) -> Option<u16> {
        match self {
            Disconnect::PeerGone => None,
            Disconnect::Idle | Disconnect::Shutdown => Some(1001),
            Disconnect::ProtocolError => Some(1002),
            Disconnect::InvalidUtf8 => Some(1007),
            Disconnect::RateLimited => Some(1008),
            Disconnect::TooLarge => Some(1009),
            Disconnect::Internal => Some(1011),
            Disconnect::SlowConsumer => Some(1013),
            Disconnect::TokenExpired => Some(4001),
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Disconnect::PeerGone => "peer gone",
            Disconnect::Idle => "idle timeout",
            Disconnect::Shutdown => "server shutting down",
            Disconnect::ProtocolError => "protocol error",
            Disconnect::InvalidUtf8 => "invalid utf-8",
            Disconnect::RateLimited => "rate limit exceeded",
            Disconnect::TooLarge => "message too large",
            Disconnect::SlowConsumer => "slow consumer",
            Disconnect::Internal => "internal error",
            Disconnect::TokenExpired => "token expired",
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::PeerGone => "peer_gone",
            Disconnect::Idle => "idle",
            Disconnect::Shutdown => "shutdown",
            Disconnect::ProtocolError => "protocol_error",
            Disconnect::InvalidUtf8 => "invalid_utf8",
            Disconnect::RateLimited => "rate_limited",
            Disconnect::TooLarge => "too_large",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::Internal => "internal",
            Disconnect::TokenExpired => "token_expired",
        }
    }

    /// Numeric form for storing in an atomic; 0 means "not closing".
    pub fn to_u8(self) -> u8 {
        Disconnect::ALL
            .iter()
            .position(|d| *d == self)
            .map_or(0, |i| i as u8 + 1)
    }

    pub fn from_u8(n: u8) -> Option<Disconnect> {
        n.checked_sub(1)
            .and_then(|i| Disconnect::ALL.get(i as usize).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Ok(Command::Publish { room, data, echo }) => {
                assert_eq!(room, "r");
                assert_eq!(data.get(), r#"{"x":[1,2]}"#);
                assert!(!echo);
            }
            other => panic!("unexpected {other:?}"),
        }
        let d = decode(r#"{"type":"publish","room":"r","data":null}"#);
        assert!(matches!(d.result, Ok(Command::Publish { echo: true, .. })));

        assert!(matches!(
            decode(r#"{"type":"ping"}"#).result,
            Ok(Command::Ping)
        ));
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

    #[test]
    fn room_names() {
        for ok in ["a", "A-z_0.9:/x", &"r".repeat(128)] {
            assert!(validate_room(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "a b", "é", "a*", &"r".repeat(129), "room\n"] {
            assert_eq!(
                validate_room(bad).unwrap_err().code,
                ErrorCode::InvalidRoom,
                "{bad:?}"
            );
        }
        let d = decode(r#"{"type":"join","room":"no spaces","id":1}"#);
        assert_eq!(d.result.unwrap_err().code, ErrorCode::InvalidRoom);
    }

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
        let data = data_from_payload(br#"{"k":1}"#);
        let v: serde_json::Value =
            serde_json::from_str(message("r", "m1", &data, "c1", 5).text()).expect("json");
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
            serde_json::from_str(welcome("c", "n", None, 25).text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"welcome","conn_id":"c","node":"n","user":null,"heartbeat_ms":25})
        );
    }

    #[test]
    fn payloads_become_data() {
        assert_eq!(data_from_payload(b"[1, 2]").get(), "[1, 2]");
        assert_eq!(data_from_payload(b"hello").get(), "\"hello\"");
        assert_eq!(data_from_payload(b"say \"hi\"").get(), r#""say \"hi\"""#);
        assert_eq!(data_from_payload(&[0xff, b'a']).get(), "\"\u{fffd}a\"");
    }

    #[test]
    fn disconnect_round_trips_through_u8() {
        for d in Disconnect::ALL {
            assert_eq!(Disconnect::from_u8(d.to_u8()), Some(d));
        }
        assert_eq!(Disconnect::from_u8(0), None);
    }

    #[test]
    fn envelopes_round_trip_and_accept_external_payloads() {
        let env = Envelope {
            target: Target::Room("r".into()),
            id: "n1-7".into(),
            data: data_from_payload(br#"{"a":1}"#),
            from: "c9".into(),
            ts: 42,
            origin: Some(Origin {
                node: "n1".into(),
                conn: 9,
                echo: false,
            }),
        };
        let bytes = encode_envelope(&env);
        let back = decode_envelope(Target::Room("r".into()), &bytes, || "x".into(), 1);
        assert_eq!(back.id, "n1-7");
        assert_eq!(back.data.get(), r#"{"a":1}"#);
        assert_eq!(back.from, "c9");
        assert_eq!(back.ts, 42);
        assert_eq!(back.origin, env.origin);

        let ext = decode_envelope(
            Target::Broadcast,
            br#"{"data":{"headline":"hi"}}"#,
            || "g1".into(),
            7,
        );
        assert_eq!(
            (ext.id.as_str(), ext.from.as_str(), ext.ts),
            ("g1", "server", 7)
        );
        assert_eq!(ext.data.get(), r#"{"headline":"hi"}"#);
        assert!(ext.origin.is_none());

        let plain = decode_envelope(Target::Broadcast, b"hello world", || "g2".into(), 7);
        assert_eq!(plain.data.get(), r#""hello world""#);
        let other_json =
            decode_envelope(Target::Broadcast, br#"{"headline":"x"}"#, || "g3".into(), 7);
        assert_eq!(other_json.data.get(), r#"{"headline":"x"}"#);
        let number = decode_envelope(Target::Broadcast, b"12", || "g4".into(), 7);
        assert_eq!(number.data.get(), "12");
    }

    #[test]
    fn admin_bodies() {
        let (t, d) = decode_admin_body(AdminRoute::Publish, br#"{"room":"news","data":{"h":1}}"#)
            .expect("ok");
        assert_eq!(t, Target::Room("news".into()));
        assert_eq!(d.get(), r#"{"h":1}"#);
        let (t, _) =
            decode_admin_body(AdminRoute::Notify, br#"{"user":"42","data":1}"#).expect("ok");
        assert_eq!(t, Target::User("42".into()));
        let (t, _) = decode_admin_body(AdminRoute::Broadcast, br#"{"data":"x"}"#).expect("ok");
        assert_eq!(t, Target::Broadcast);
        for (route, body, code) in [
            (AdminRoute::Publish, &b"nope"[..], ErrorCode::BadRequest),
            (
                AdminRoute::Publish,
                br#"{"room":"a"}"#,
                ErrorCode::BadRequest,
            ),
            (AdminRoute::Publish, br#"{"data":1}"#, ErrorCode::BadRequest),
            (
                AdminRoute::Publish,
                br#"{"room":"a b","data":1}"#,
                ErrorCode::InvalidRoom,
            ),
            (AdminRoute::Notify, br#"{"data":1}"#, ErrorCode::BadRequest),
            (
                AdminRoute::Notify,
                br#"{"user":"","data":1}"#,
                ErrorCode::BadRequest,
            ),
            (AdminRoute::Broadcast, br#"[]"#, ErrorCode::BadRequest),
        ] {
            assert_eq!(
                decode_admin_body(route, body).expect_err("invalid").code,
                code
            );
        }
    }

    #[test]
    fn history_positions_parse_only_kept_ids() {
        let p = Position {
            epoch: "h1a2b3c4d".into(),
            offset: 42,
        };
        assert_eq!(Position::parse(&p.id()), Some(p));
        assert!(Position::new_epoch().starts_with('h'));
        for other in ["3fa9c2d1e0b4-7", "h-1", "hx-", "nodash", "habc-x", ""] {
            assert_eq!(Position::parse(other), None, "{other}");
        }
    }
}
