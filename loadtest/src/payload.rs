//! What the load generator puts on the wire and how it reads frames back (docs/protocol.md).
//!
//! Owns the payload format (`{"run":R,"seq":K,"t":T,"pad":"xxx"}`: run id, global sequence,
//! send time in microseconds on this process's monotonic clock, padding up to the requested
//! size), the client commands it sends, and a classifier for server frames with a fast path for
//! room messages, which are the bulk of the traffic. Leaves sockets to `client` and counting to
//! the scenarios.

use std::borrow::Cow;

use serde::Deserialize;

/// The fields every published payload carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Payload {
    /// Identifies one run, so a message of another run is never counted as a delivery.
    pub run: u64,
    /// Global sequence number of the message in its run, from 0.
    pub seq: u64,
    /// Send time, microseconds on the sender's monotonic clock.
    pub t: u64,
}

/// The `data` of one published message, padded to about `size` bytes.
pub fn encode(p: Payload, size: usize) -> String {
    let mut out = format!(r#"{{"run":{},"seq":{},"t":{},"pad":""#, p.run, p.seq, p.t);
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// `publish` of `data` (a JSON value) to `room`, not echoed to the sender.
pub fn publish_command(room: &str, data: &str) -> String {
    // Room names are validated as `A-Z a-z 0-9 _ - . : /`: nothing to escape.
    format!(r#"{{"type":"publish","room":"{room}","echo":false,"data":{data}}}"#)
}

/// Room names as docs/protocol.md allows them (1 to 128 bytes of `A-Z a-z 0-9 _ - . : /`), so
/// the commands above never need escaping.
pub fn check_room(room: &str) -> Result<(), String> {
    let ok = !room.is_empty()
        && room.len() <= 128
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "room name {room:?}: 1 to 128 bytes of A-Z a-z 0-9 _ - . : /"
        ))
    }
}

/// `join` of `room` with a request id.
pub fn join_command(room: &str, id: &str) -> String {
    format!(r#"{{"type":"join","room":"{room}","id":"{id}"}}"#)
}

/// One server frame, as the load generator cares about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A room message carrying a load generator payload.
    Message(Payload),
    /// A room message whose data is not ours.
    ForeignMessage,
    Welcome,
    Joined {
        id: Option<Cow<'a, str>>,
    },
    Ack,
    /// The JSON `pong` or the plain-text heartbeat reply.
    Pong,
    Error {
        code: Cow<'a, str>,
        id: Option<Cow<'a, str>>,
    },
    /// Anything else: notification, broadcast, left, unknown types, non-JSON text.
    Other,
}

const MESSAGE_PREFIX: &str = r#"{"type":"message","#;
const DATA_MARKER: &str = r#""data":{"run":"#;

/// Classify one text frame from the server.
pub fn classify(text: &str) -> Incoming<'_> {
    if text.starts_with(MESSAGE_PREFIX) {
        if let Some(p) = fast_payload(text) {
            return Incoming::Message(p);
        }
        return slow_message(text);
    }
    if text == "pong" {
        return Incoming::Pong;
    }
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default, borrow)]
        code: Option<Cow<'a, str>>,
        #[serde(default, borrow, deserialize_with = "string_or_number")]
        id: Option<Cow<'a, str>>,
    }
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return Incoming::Other;
    };
    match frame.kind.as_ref() {
        "message" => slow_message(text),
        "welcome" => Incoming::Welcome,
        "joined" => Incoming::Joined { id: frame.id },
        "ack" => Incoming::Ack,
        "pong" => Incoming::Pong,
        "error" => Incoming::Error {
            code: frame.code.unwrap_or(Cow::Borrowed("unknown")),
            id: frame.id,
        },
        _ => Incoming::Other,
    }
}

/// Request ids may be strings or integers; both are compared as text.
fn string_or_number<'de, D>(d: D) -> Result<Option<Cow<'de, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id<'a> {
        #[serde(borrow)]
        S(Cow<'a, str>),
        N(i64),
    }
    Ok(match Option::<Id<'de>>::deserialize(d)? {
        Some(Id::S(s)) => Some(s),
        Some(Id::N(n)) => Some(Cow::Owned(n.to_string())),
        None => None,
    })
}

/// The payload of a `message` frame without a JSON parser: the server writes `type`, `room`,
/// `id` before `data`, and none of those can hold a quote, so the first `"data":{"run":` is the
/// data field. Returns `None` when the frame does not have exactly our layout.
fn fast_payload(text: &str) -> Option<Payload> {
    let at = text.find(DATA_MARKER)? + DATA_MARKER.len();
    let rest = &text[at..];
    let (run, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(r#","seq":"#)?;
    let (seq, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(r#","t":"#)?;
    let (t, rest) = leading_u64(rest)?;
    if !(rest.starts_with(',') || rest.starts_with('}')) {
        return None;
    }
    Some(Payload { run, seq, t })
}

fn leading_u64(s: &str) -> Option<(u64, &str)> {
    let end = s
        .as_bytes()
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if end == 0 || end > 20 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

fn slow_message(text: &str) -> Incoming<'static> {
    #[derive(Deserialize)]
    struct Message {
        data: Option<Payload>,
    }
    match serde_json::from_str::<Message>(text) {
        Ok(Message { data: Some(p) }) => Incoming::Message(p),
        _ => Incoming::ForeignMessage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_requested_size_and_round_trips() {
        let p = Payload {
            run: 77,
            seq: 123_456,
            t: 9_876_543,
        };
        for size in [0, 10, 100, 1000] {
            let data = encode(p, size);
            assert!(data.len() >= size, "{size}: {}", data.len());
            if size > 60 {
                assert_eq!(data.len(), size);
            }
            let v: serde_json::Value = serde_json::from_str(&data).expect("valid JSON");
            assert_eq!(v["seq"], 123_456);
            let frame = format!(
                r#"{{"type":"message","room":"bench","id":"a1-9","data":{data},"from":"c.1","ts":5}}"#
            );
            assert_eq!(classify(&frame), Incoming::Message(p));
        }
    }

    #[test]
    fn commands_are_valid_json() {
        let cmd = publish_command(
            "bench",
            &encode(
                Payload {
                    run: 1,
                    seq: 2,
                    t: 3,
                },
                50,
            ),
        );
        let v: serde_json::Value = serde_json::from_str(&cmd).expect("json");
        assert_eq!(v["type"], "publish");
        assert_eq!(v["echo"], false);
        assert_eq!(v["data"]["run"], 1);
        let v: serde_json::Value = serde_json::from_str(&join_command("r/1", "j")).expect("json");
        assert_eq!(v, serde_json::json!({"type":"join","room":"r/1","id":"j"}));
    }

    #[test]
    fn room_names_are_checked() {
        assert!(check_room("bench").is_ok());
        assert!(check_room("chat-199").is_ok());
        assert!(check_room("").is_err());
        assert!(check_room("a\"b").is_err());
        assert!(check_room(&"r".repeat(129)).is_err());
    }

    #[test]
    fn classifies_server_frames() {
        assert_eq!(
            classify(r#"{"type":"welcome","conn_id":"x","node":"n","user":null,"heartbeat_ms":1}"#),
            Incoming::Welcome
        );
        assert_eq!(
            classify(r#"{"type":"joined","room":"r","id":"j"}"#),
            Incoming::Joined {
                id: Some("j".into())
            }
        );
        assert_eq!(
            classify(r#"{"type":"joined","room":"r","id":7}"#),
            Incoming::Joined {
                id: Some("7".into())
            }
        );
        assert_eq!(
            classify(r#"{"type":"ack","room":"r","msg_id":"m"}"#),
            Incoming::Ack
        );
        assert_eq!(classify("pong"), Incoming::Pong);
        assert_eq!(classify(r#"{"type":"pong","id":1}"#), Incoming::Pong);
        assert_eq!(
            classify(r#"{"type":"error","code":"rate_limited","message":"x"}"#),
            Incoming::Error {
                code: "rate_limited".into(),
                id: None
            }
        );
        assert_eq!(classify("not json"), Incoming::Other);
        assert_eq!(
            classify(r#"{"type":"broadcast","id":"b","data":1,"ts":1}"#),
            Incoming::Other
        );
        assert_eq!(
            classify(r#"{"type":"message","room":"r","id":"m","data":{"hi":1},"from":"s","ts":1}"#),
            Incoming::ForeignMessage
        );
        // Another field order still parses, through the slow path.
        assert_eq!(
            classify(r#"{"type":"message","data":{"t":3,"seq":2,"run":1},"room":"r"}"#),
            Incoming::Message(Payload {
                run: 1,
                seq: 2,
                t: 3
            })
        );
    }
}
