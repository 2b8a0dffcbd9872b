//! Admin API bodies: decoding the service publish routes' JSON, and encoding the admin
//! API's success, error and presence bodies.
//!
//! Routing, the API key and HTTP statuses are `crate::admin`'s.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::codes::CommandError;
use super::command::{optional_key, present, required_room, string_field};
use super::envelope::Target;
use super::frame::PresenceList;

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
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<&'a RawValue>,
}

/// A decoded admin publish body: where to, the data, and (`/api/publish` only) the
/// conflation key.
#[derive(Debug)]
pub struct AdminPublish {
    pub target: Target,
    pub data: Box<RawValue>,
    pub key: Option<String>,
}

/// Decode the JSON body of `POST /api/publish` (`{room, data, key?}`), `/api/notify`
/// (`{user, data}`) or `/api/broadcast` (`{data}`). A `key` is refused on the last two: only
/// room messages are conflated.
pub fn decode_admin_body(route: AdminRoute, body: &[u8]) -> Result<AdminPublish, CommandError> {
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
            Target::Room(room.into_arc())
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
    let key = optional_key(body.key)?;
    if key.is_some() && route != AdminRoute::Publish {
        return Err(CommandError::bad_request(
            "`key` is for room messages only (POST /api/publish)",
        ));
    }
    Ok(AdminPublish { target, data, key })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codes::ErrorCode;

    #[test]
    fn admin_bodies() {
        let p = decode_admin_body(AdminRoute::Publish, br#"{"room":"news","data":{"h":1}}"#)
            .expect("ok");
        assert_eq!(p.target, Target::Room("news".into()));
        assert_eq!(p.data.get(), r#"{"h":1}"#);
        assert_eq!(p.key, None);
        let p = decode_admin_body(
            AdminRoute::Publish,
            br#"{"room":"px","data":1,"key":"AAPL"}"#,
        )
        .expect("ok");
        assert_eq!(p.key.as_deref(), Some("AAPL"));
        let p = decode_admin_body(AdminRoute::Notify, br#"{"user":"42","data":1}"#).expect("ok");
        assert_eq!(p.target, Target::User("42".into()));
        let p = decode_admin_body(AdminRoute::Broadcast, br#"{"data":"x"}"#).expect("ok");
        assert_eq!(p.target, Target::Broadcast);
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
            (
                AdminRoute::Publish,
                br#"{"room":"a","data":1,"key":7}"#,
                ErrorCode::BadRequest,
            ),
            (
                AdminRoute::Publish,
                br#"{"room":"a","data":1,"key":""}"#,
                ErrorCode::BadRequest,
            ),
            (
                AdminRoute::Notify,
                br#"{"user":"u","data":1,"key":"k"}"#,
                ErrorCode::BadRequest,
            ),
            (
                AdminRoute::Broadcast,
                br#"{"data":1,"key":"k"}"#,
                ErrorCode::BadRequest,
            ),
        ] {
            assert_eq!(
                decode_admin_body(route, body).expect_err("invalid").code,
                code
            );
        }
    }
}
