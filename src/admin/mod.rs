//! The admin HTTP API on its own (internal) address: `/metrics`, `/healthz`, `/readyz`, the
//! service publish routes and `GET /api/presence/ROOM`, with the optional API key; the
//! cluster read routes (`read`) and the console page (`console`) are merged in.
//!
//! [`router`] is testable without a socket. Decoding bodies is `protocol`'s; publishing is the
//! node's.

mod console;
mod read;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::broker::BrokerError;
use crate::node::Node;
use crate::protocol::{self, AdminRoute, ErrorCode, RoomName};

mod control;
mod webhooks;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api/publish", post(publish))
        .route("/api/notify", post(notify))
        .route("/api/broadcast", post(broadcast))
        .route("/api/presence/{*room}", get(presence))
        .merge(read::routes(node.clone()))
        .merge(console::routes())
        .route("/api/disconnect", post(control::disconnect))
        .route("/api/revoke", post(control::revoke))
        .route("/api/subscribe", post(control::subscribe))
        .route("/api/unsubscribe", post(control::unsubscribe))
        .route("/api/webhooks/failed", get(webhooks::failed))
        .route("/api/webhooks/replay", post(webhooks::replay))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
        .into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else if !node.is_accepting() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable").into_response()
    }
}

async fn publish(State(node): State<Arc<Node>>, request: Request) -> Response {
    accept(node, AdminRoute::Publish, request).await
}

async fn notify(State(node): State<Arc<Node>>, request: Request) -> Response {
    accept(node, AdminRoute::Notify, request).await
}

async fn broadcast(State(node): State<Arc<Node>>, request: Request) -> Response {
    accept(node, AdminRoute::Broadcast, request).await
}

/// `GET /api/presence/ROOM`: who is in a room on every node. It names users, so it needs the
/// API key when one is configured, like the POST routes.
async fn presence(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = key_refusal(&node, &headers) {
        return refused;
    }
    let answer = match RoomName::new(&room) {
        Ok(room) => node.presence_of(&room).await,
        Err(err) => Err(err),
    };
    match answer {
        Ok(list) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            protocol::admin_presence_body(&room, &list),
        )
            .into_response(),
        Err(err) => {
            let status = match err.code {
                ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            json_error(status, err.code.as_str(), &err.message)
        }
    }
}

async fn accept(node: Arc<Node>, route: AdminRoute, request: Request) -> Response {
    if let Some(refused) = key_refusal(&node, request.headers()) {
        return refused;
    }
    let limit = node.config().limits.max_message_bytes;
    let body = match to_bytes(request.into_body(), limit).await {
        Ok(body) => body,
        Err(_) => {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("bodies are limited to {limit} bytes"),
            );
        }
    };
    let protocol::AdminPublish { target, data, key } =
        match protocol::decode_admin_body(route, &body) {
            Ok(decoded) => decoded,
            Err(err) => {
                return json_error(StatusCode::BAD_REQUEST, err.code.as_str(), &err.message);
            }
        };
    if let Err(err) = node
        .check_key(key.as_deref())
        .and_then(|()| node.check_service_data(&target, &data))
    {
        return json_error(StatusCode::BAD_REQUEST, err.code.as_str(), &err.message);
    }
    match node.publish_from_service(target, data, key).await {
        Ok(id) => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            protocol::admin_accepted_body(&id),
        )
            .into_response(),
        Err(err @ (BrokerError::Unavailable(_) | BrokerError::Timeout)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!("not published: {err}"),
        ),
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(protocol::admin_error_body(code, message)))
        .unwrap_or_else(|_| status.into_response())
}

/// Every `/api` route asks for `admin.api_key` when one is set: the 401 response when the
/// request does not carry it.
fn key_refusal(node: &Node, headers: &HeaderMap) -> Option<Response> {
    match &node.config().admin.api_key {
        Some(key) if !bearer_matches(headers, key) => Some(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key",
        )),
        _ => None,
    }
}

/// `Authorization: Bearer KEY`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), key.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_comparison() {
        let mut h = HeaderMap::new();
        assert!(!bearer_matches(&h, "k1"));
        h.insert(header::AUTHORIZATION, "Bearer k1".parse().expect("header"));
        assert!(bearer_matches(&h, "k1"));
        assert!(!bearer_matches(&h, "k2"));
        assert!(!bearer_matches(&h, "k1x"));
        h.insert(header::AUTHORIZATION, "Basic k1".parse().expect("header"));
        assert!(!bearer_matches(&h, "k1"));
    }
}
