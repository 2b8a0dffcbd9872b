//! The admin webhook routes (docs/protocol.md "Webhooks"): `GET /api/webhooks/failed` lists
//! parked events, `POST /api/webhooks/replay` queues them again; behind the API key like the
//! other `/api` routes.
//!
//! What parking and replaying do is the node's and the broker's.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{bearer_matches, json_error};
use crate::node::{MAX_PARKED_PAGE, Node};

/// Most bytes of a replay body (ids of at most [`MAX_PARKED_PAGE`] events).
const MAX_REPLAY_BODY: usize = 256 * 1024;

fn refused(node: &Node, headers: &axum::http::HeaderMap) -> Option<Response> {
    if let Some(key) = &node.config().admin.api_key
        && !bearer_matches(headers, key)
    {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key",
        ));
    }
    if !node.webhooks_enabled() {
        return Some(json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "webhooks are not configured (webhooks.url)",
        ));
    }
    None
}

fn json(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unavailable(err: &crate::broker::BrokerError) -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        &format!("cannot reach the parked events: {err}"),
    )
}

/// `GET /api/webhooks/failed[?limit=N]`: `{"events": [{id, type, room, user, ts, error,
/// attempts, parked_at}, …]}`, oldest first, at most `limit` (default 100, at most 1000).
pub(super) async fn failed(
    State(node): State<Arc<Node>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    if let Some(response) = refused(&node, request.headers()) {
        return response;
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_PARKED_PAGE).contains(&n) => n,
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("limit must be a number from 1 to {MAX_PARKED_PAGE}"),
            );
        }
    };
    match node.webhooks_parked(limit).await {
        Ok(events) => json(serde_json::json!({ "events": events })),
        Err(err) => unavailable(&err),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Vec<String>,
}

/// `POST /api/webhooks/replay` with `{"ids": [...]}` (those events) or no body / `{}` (the
/// oldest 1000): `{"replayed": N}`.
pub(super) async fn replay(State(node): State<Arc<Node>>, request: Request) -> Response {
    if let Some(response) = refused(&node, request.headers()) {
        return response;
    }
    let Ok(body) = to_bytes(request.into_body(), MAX_REPLAY_BODY).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("bodies are limited to {MAX_REPLAY_BODY} bytes"),
        );
    };
    let parsed: ReplayBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(parsed) => parsed,
            Err(err) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("the body must be {{\"ids\": [\"…\"]}}: {err}"),
                );
            }
        }
    };
    if parsed.ids.len() > MAX_PARKED_PAGE {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("at most {MAX_PARKED_PAGE} ids at a time"),
        );
    }
    match node.webhooks_replay(parsed.ids).await {
        Ok(replayed) => json(serde_json::json!({ "replayed": replayed })),
        Err(err) => unavailable(&err),
    }
}
