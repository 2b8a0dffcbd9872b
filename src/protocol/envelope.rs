//! The broker envelope codec: how a publication travels between nodes ([`Envelope`]),
//! history positions, presence events, and turning arbitrary payloads into message data.
//!
//! Owns the bytes on broker channels; channels, connections and retries are the broker's.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::frame::{Frame, broadcast, message, notification};

/// A presence change as the Redis presence function publishes it on `{prefix}presence:ROOM`:
/// `{"user":…,"event":"joined"|"left","ts":…}`.
#[derive(Deserialize)]
struct WirePresenceEvent<'a> {
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    ts: u64,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

/// A presence change as the broker publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WirePresence {
    pub user: String,
    pub joined: bool,
    pub ts: u64,
    /// The joining user's `info` (JSON text), when the backend gave one.
    pub info: Option<Arc<str>>,
}

/// Decode a presence change; `None` for anything else.
pub fn decode_presence_event(payload: &[u8]) -> Option<WirePresence> {
    let wire: WirePresenceEvent<'_> = serde_json::from_slice(payload).ok()?;
    let joined = match wire.event.as_ref() {
        "joined" => true,
        "left" => false,
        _ => return None,
    };
    Some(WirePresence {
        user: wire.user.into_owned(),
        joined,
        ts: wire.ts,
        info: wire.info.map(|raw| Arc::from(raw.get())),
    })
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

/// Where a publication goes: the three kinds of broker channel of docs/protocol.md.
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
    /// The conflation key of a room message (docs/protocol.md "Conflated rooms"): in a room
    /// matching `conflate.rooms`, a member that is behind gets only the latest message per key.
    pub key: Option<String>,
}

impl Envelope {
    /// The client frame for this publication, encoded once for all local recipients.
    pub fn frame(&self) -> Frame {
        match &self.target {
            Target::Room(room) => message(
                room,
                &self.id,
                &self.data,
                &self.from,
                self.ts,
                self.key.as_deref(),
            ),
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
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    key: Option<Cow<'a, str>>,
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
        key: envelope.key.as_deref().map(Cow::Borrowed),
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Decode a payload received on a broker channel. A JSON object with `data` fills the
/// envelope (missing fields from `fresh_id` and `now_ms`, `from` = "server", no `key`); any
/// other payload (also an object whose fields have the wrong types, a number as `key`) is the
/// data itself, as JSON when it parses, else as a string. The key's length is the node's to
/// check (`conflate.max_key_bytes`).
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
            key: wire.key.map(Cow::into_owned),
        };
    }
    Envelope {
        target,
        id: fresh_id(),
        data: data_from_payload(payload),
        from: "server".to_owned(),
        ts: now_ms,
        origin: None,
        key: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_data() {
        assert_eq!(data_from_payload(b"[1, 2]").get(), "[1, 2]");
        assert_eq!(data_from_payload(b"hello").get(), "\"hello\"");
        assert_eq!(data_from_payload(b"say \"hi\"").get(), r#""say \"hi\"""#);
        assert_eq!(data_from_payload(&[0xff, b'a']).get(), "\"\u{fffd}a\"");
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
            key: Some("cursor:7".into()),
        };
        let bytes = encode_envelope(&env);
        let back = decode_envelope(Target::Room("r".into()), &bytes, || "x".into(), 1);
        assert_eq!(back.id, "n1-7");
        assert_eq!(back.data.get(), r#"{"a":1}"#);
        assert_eq!(back.from, "c9");
        assert_eq!(back.ts, 42);
        assert_eq!(back.origin, env.origin);
        assert_eq!(back.key.as_deref(), Some("cursor:7"));
        let frame: serde_json::Value = serde_json::from_str(back.frame().text()).expect("json");
        assert_eq!(frame["key"], "cursor:7");

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
        assert!(ext.key.is_none());
        let keyed = decode_envelope(
            Target::Room("r".into()),
            br#"{"data":1,"key":"AAPL"}"#,
            || "g5".into(),
            7,
        );
        assert_eq!(keyed.key.as_deref(), Some("AAPL"));
        // A key of the wrong type makes the whole object the data, as any wrong field does.
        let bad = decode_envelope(
            Target::Room("r".into()),
            br#"{"data":1,"key":5}"#,
            || "g6".into(),
            7,
        );
        assert_eq!((bad.key, bad.data.get()), (None, r#"{"data":1,"key":5}"#));

        let plain = decode_envelope(Target::Broadcast, b"hello world", || "g2".into(), 7);
        assert_eq!(plain.data.get(), r#""hello world""#);
        let other_json =
            decode_envelope(Target::Broadcast, br#"{"headline":"x"}"#, || "g3".into(), 7);
        assert_eq!(other_json.data.get(), r#"{"headline":"x"}"#);
        let number = decode_envelope(Target::Broadcast, b"12", || "g4".into(), 7);
        assert_eq!(number.data.get(), "12");
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
