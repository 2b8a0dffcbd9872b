//! Error codes of the replies, [`CommandError`], and the WebSocket close codes ([`Disconnect`])
//! of docs/protocol.md.
//!
//! Owns the names and numbers only; which error a command earns is decided by whoever checks it.

use std::borrow::Cow;
use std::fmt;

/// Error codes of docs/protocol.md "Server → client".
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
    /// A `refresh` token that the handshake would refuse (signature, expiry, `iss`/`aud`).
    InvalidToken,
    /// Published data that does not match its room's JSON Schema (`validation.rooms`).
    InvalidData,
    /// The backend's publish hook refused the message (`[hooks]`).
    Rejected,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::InvalidRoom,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::InvalidToken,
        ErrorCode::InvalidData,
        ErrorCode::Rejected,
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
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidData => "invalid_data",
            ErrorCode::Rejected => "rejected",
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
    /// The backend disconnected it and asks it to reconnect (4000).
    Reconnect,
    /// The backend disconnected it and asks it not to reconnect (4403).
    Forbidden,
    /// Its token was revoked (4403).
    Revoked,
}

impl Disconnect {
    pub const ALL: [Disconnect; 13] = [
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
        Disconnect::Reconnect,
        Disconnect::Forbidden,
        Disconnect::Revoked,
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
            Disconnect::Reconnect => Some(4000),
            Disconnect::Forbidden | Disconnect::Revoked => Some(4403),
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
            Disconnect::Reconnect => "reconnect",
            Disconnect::Forbidden => "forbidden",
            Disconnect::Revoked => "token revoked",
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
            Disconnect::Reconnect => "kicked_reconnect",
            Disconnect::Forbidden => "kicked_forbidden",
            Disconnect::Revoked => "revoked",
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

    #[test]
    fn disconnect_round_trips_through_u8() {
        for d in Disconnect::ALL {
            assert_eq!(Disconnect::from_u8(d.to_u8()), Some(d));
        }
        assert_eq!(Disconnect::from_u8(0), None);
    }
}
