//! The wire protocol of docs/protocol.md: decoding and validating client commands, encoding
//! server frames, error codes and close codes, the broker envelope and the admin API bodies.
//!
//! Owns every serde derive for wire types. Knows nothing of sockets, rooms or brokers: it turns
//! bytes into a [`Command`] (or a [`CommandError`]) and typed replies into a [`Frame`] that is
//! encoded once and shared by every recipient. One module per job; this one only re-exports
//! them, so callers name everything as `protocol::…`.

mod admin;
mod codes;
mod command;
mod control;
mod envelope;
mod frame;
mod nodes;
mod room;

pub use admin::{
    AdminPublish, AdminRoute, MAX_USER_BYTES, admin_accepted_body, admin_error_body,
    admin_presence_body, decode_admin_body,
};
pub use codes::{CommandError, Disconnect, ErrorCode};
pub use command::{
    Command, CommandKind, Decoded, MAX_REQUEST_ID_CHARS, RequestId, TokenText, decode_command,
};
pub use control::{
    Control, DisconnectRequest, KickCode, MAX_CLOSE_REASON_BYTES, Revocation, decode_control,
    decode_disconnect_body, decode_revoke_body, decode_server_sub_body, encode_control,
    issued_before,
};
pub use envelope::{
    Envelope, Origin, Position, Target, WirePresence, data_from_payload, decode_envelope,
    decode_presence_event, encode_envelope, encode_envelope_unnumbered, null_raw,
};
pub use frame::{
    Frame, PresenceList, PresenceMember, ack, broadcast, error, joined, left, left_because,
    member_event, message, notification, pong, presence, refreshed, server_joined, token_expiring,
    welcome,
};
pub use nodes::{
    HistorySummary, NodeRooms, NodeStats, RoomDetail, RoomSummary, admin_history_body,
    admin_nodes_body, admin_room_body, admin_rooms_body, decode_node_rooms, decode_node_stats,
    encode_node_rooms, encode_node_stats,
};
pub use room::{MAX_ROOM_BYTES, RESERVED_ROOM_PREFIX, RoomName, validate_room};
