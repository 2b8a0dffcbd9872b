//! The cluster read API: `GET /api/nodes`, `/api/rooms`, `/api/rooms/ROOM`,
//! `/api/history/ROOM` and the stats stream `/api/stats/stream` (Server-Sent Events), every
//! route behind the API key (`Authorization: Bearer KEY`) when one is configured.
//!
//! Owns query parsing, statuses and the SSE framing. The numbers are the node's (`node::read`),
//! the JSON is `protocol`'s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use tokio::time::MissedTickBehavior;

use super::{json_error, key_refusal};
use crate::broker::BrokerError;
use crate::clock::now_ms;
use crate::node::{HistoryQuery, Node, ReadError};
use crate::protocol::{self, RoomName};

/// Rooms per page of `GET /api/rooms` unless `limit` says otherwise, and the most it may say.
const ROOMS_PAGE: usize = 100;
const MAX_ROOMS_PAGE: usize = 1_000;

pub(super) fn routes(node: Arc<Node>) -> Router<Arc<Node>> {
    Router::new()
        .route("/api/nodes", get(nodes))
        .route("/api/rooms", get(rooms))
        .route("/api/rooms/{*room}", get(room))
        .route("/api/history/{*room}", get(history))
        .route("/api/stats/stream", get(stats_stream))
        .route_layer(middleware::from_fn_with_state(node, require_key))
}

/// Every route here shows what the cluster is doing (room names, user counts): the API key.
async fn require_key(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    match key_refusal(&node, request.headers()) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

fn json(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Why a read route answers with an error: a status and `{error: {code, message}}`.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        json_error(self.status, self.code, &self.message)
    }
}

impl From<BrokerError> for Refusal {
    fn from(err: BrokerError) -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: format!("the broker cannot answer: {err}"),
        }
    }
}

fn bad_query(message: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message,
    }
}

/// An optional positive number parameter no larger than `max`.
fn number(
    params: &HashMap<String, String>,
    name: &str,
    max: usize,
) -> Result<Option<usize>, Refusal> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(bad_query(format!(
            "`{name}` must be a number from 1 to {max}; got `{text}`"
        ))),
    }
}

fn room_name(room: &str) -> Result<RoomName, Refusal> {
    RoomName::new(room).map_err(|err| Refusal {
        status: StatusCode::BAD_REQUEST,
        code: err.code.as_str(),
        message: err.message.to_string(),
    })
}

async fn nodes(State(node): State<Arc<Node>>) -> Result<Response, Refusal> {
    let nodes = node.cluster_nodes().await?;
    Ok(json(protocol::admin_nodes_body(&nodes, now_ms())))
}

async fn rooms(
    State(node): State<Arc<Node>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let limit = number(&params, "limit", MAX_ROOMS_PAGE)?.unwrap_or(ROOMS_PAGE);
    let cursor = params.get("cursor").map(String::as_str);
    let page = node.rooms_page(limit, cursor).await?;
    Ok(json(protocol::admin_rooms_body(
        &page.rooms,
        page.next_cursor.as_deref(),
        page.partial,
    )))
}

async fn room(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
) -> Result<Response, Refusal> {
    let detail = node.room_detail(&room_name(&room)?).await?;
    Ok(json(protocol::admin_room_body(&detail)))
}

async fn history(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let room = room_name(&room)?;
    let query = HistoryQuery {
        limit: number(&params, "limit", usize::MAX)?,
        since: params.get("since").cloned(),
    };
    match node.history_body(&room, &query).await {
        Ok(body) => Ok(json(body)),
        Err(err @ ReadError::NoHistory(_)) => Err(Refusal {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: err.to_string(),
        }),
        Err(ReadError::BadQuery(message)) => Err(bad_query(message)),
        Err(ReadError::Broker(err)) => Err(err.into()),
    }
}

/// One `nodes` event (the body of `GET /api/nodes`) at once and then every
/// `admin.stats_interval_ms`, until the client goes or the node stops.
async fn stats_stream(
    State(node): State<Arc<Node>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut ticks =
        tokio::time::interval(Duration::from_millis(node.config().admin.stats_interval_ms));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold((node, ticks), |(node, mut ticks)| async move {
        tokio::select! {
            // The admin server waits for open responses before it stops: end this one.
            _ = node.stopping() => return None,
            _ = ticks.tick() => {}
        }
        let event = match node.cluster_nodes().await {
            Ok(nodes) => Event::default()
                .event("nodes")
                .data(protocol::admin_nodes_body(&nodes, now_ms())),
            Err(err) => Event::default()
                .event("error")
                .data(protocol::admin_error_body("unavailable", &err.to_string())),
        };
        Some((Ok(event), (node, ticks)))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
