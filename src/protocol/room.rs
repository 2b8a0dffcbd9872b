//! Room names: [`RoomName`], a name that passed the one check of docs/protocol.md, so that
//! whoever holds one need not check it again.
//!
//! Owns the naming rules; what a room may be used for (reserved prefixes, tokens) is the node's.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use super::codes::{CommandError, ErrorCode};

/// Longest room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 128;
/// Rooms with this prefix are reserved for user channels.
pub const RESERVED_ROOM_PREFIX: &str = "user:";

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

/// A room name that passed [`validate_room`]: the only way to make one is [`RoomName::new`],
/// so holding one is the proof. Clones share the name (reference counted).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Check `name` against the rules of docs/protocol.md: `invalid_room` when it breaks one.
    pub fn new(name: &str) -> Result<RoomName, CommandError> {
        validate_room(name)?;
        Ok(RoomName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared name, for the broker and the hub, which key rooms by `Arc<str>`.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    pub fn into_arc(self) -> Arc<str> {
        self.0
    }
}

impl Deref for RoomName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for RoomName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for RoomName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for RoomName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::decode_command;

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
        let d = decode_command(r#"{"type":"join","room":"no spaces","id":1}"#);
        assert_eq!(d.result.unwrap_err().code, ErrorCode::InvalidRoom);
    }

    #[test]
    fn a_bad_name_never_becomes_a_room_name() {
        for (bad, rule) in [
            ("", "empty"),
            (&*"r".repeat(MAX_ROOM_BYTES + 1), "too long"),
            ("a b", "space"),
            ("é", "non-ASCII"),
            ("a*", "punctuation outside _ - . : /"),
            ("room\n", "control character"),
            ("a\0", "NUL"),
        ] {
            let err = RoomName::new(bad).expect_err(rule);
            assert_eq!(err.code, ErrorCode::InvalidRoom, "{rule}: {bad:?}");
        }
    }

    #[test]
    fn a_good_name_round_trips() {
        for good in ["a", "A-z_0.9:/x", "user:42", &*"r".repeat(MAX_ROOM_BYTES)] {
            let room = RoomName::new(good).expect(good);
            assert_eq!(room.as_str(), good);
            assert_eq!(&*room, good);
            assert_eq!(room.to_string(), good);
            assert_eq!(&**room.as_arc(), good);
            let shared = room.clone();
            assert!(Arc::ptr_eq(room.as_arc(), shared.as_arc()), "clones share");
            assert_eq!(RoomName::new(&room).expect("again"), room);
            assert_eq!(&*room.into_arc(), good);
        }
    }

    #[test]
    fn decoding_yields_the_checked_name() {
        let d = decode_command(r#"{"type":"leave","room":"news/eu"}"#);
        match d.result {
            Ok(crate::protocol::Command::Leave { room }) => assert_eq!(room, "news/eu"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
