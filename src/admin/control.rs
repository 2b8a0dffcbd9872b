//! The admin control routes (docs/protocol.md "Admin HTTP API"): `POST /api/disconnect` and
//! `POST /api/revoke`, behind the API key like the publish routes.
//!
//! Decoding bodies is `protocol`'s; what a disconnect or a revocation does is the node's.

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{json_error, key_refusal};
use crate::broker::BrokerError;
use crate::node::{Node, RevokeError};
use crate::protocol::{self, CommandError};

/// The body of a control route, once the API key is checked; the error response otherwise.
async fn body(node: &Node, request: Request) -> Result<axum::body::Bytes, Response> {
    if let Some(refused) = key_refusal(node, request.headers()) {
        return Err(refused);
    }
    let limit = node.config().limits.max_message_bytes;
    to_bytes(request.into_body(), limit).await.map_err(|_| {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("bodies are limited to {limit} bytes"),
        )
    })
}

fn bad_request(err: &CommandError) -> Response {
    json_error(StatusCode::BAD_REQUEST, err.code.as_str(), &err.message)
}

fn unavailable(err: &BrokerError) -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        &format!("not sent: {err}"),
    )
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

/// `POST /api/disconnect {user | conn_id, code?, reason?}`: 202 once published.
pub(super) async fn disconnect(State(node): State<Arc<Node>>, request: Request) -> Response {
    let body = match body(&node, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = match protocol::decode_disconnect_body(&body) {
        Ok(request) => request,
        Err(err) => return bad_request(&err),
    };
    match node.disconnect(request).await {
        Ok(()) => accepted(),
        Err(err) => unavailable(&err),
    }
}

/// `POST /api/revoke {user | jti, until}`: 202 once kept and announced.
pub(super) async fn revoke(State(node): State<Arc<Node>>, request: Request) -> Response {
    let body = match body(&node, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let now = crate::clock::now_ms() / 1000;
    let revocation = match protocol::decode_revoke_body(&body, now) {
        Ok(revocation) => revocation,
        Err(err) => return bad_request(&err),
    };
    match node.revoke(revocation).await {
        Ok(()) => accepted(),
        Err(err @ RevokeError::BadUntil(_)) => {
            bad_request(&CommandError::bad_request(err.to_string()))
        }
        Err(RevokeError::Broker(err)) => unavailable(&err),
    }
}

/// `POST /api/subscribe {user, room}`: 202 once kept and announced.
pub(super) async fn subscribe(State(node): State<Arc<Node>>, request: Request) -> Response {
    server_sub(node, request, true).await
}

/// `POST /api/unsubscribe {user, room}`: 202 once forgotten and announced.
pub(super) async fn unsubscribe(State(node): State<Arc<Node>>, request: Request) -> Response {
    server_sub(node, request, false).await
}

async fn server_sub(node: Arc<Node>, request: Request, join: bool) -> Response {
    let body = match body(&node, request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (user, room) = match protocol::decode_server_sub_body(&body) {
        Ok(decoded) => decoded,
        Err(err) => return bad_request(&err),
    };
    match node.server_subscribe(user.into(), room, join).await {
        Ok(()) => accepted(),
        Err(err) => unavailable(&err),
    }
}
