//! `GET /console`: the operator's page, one static HTML file embedded in the binary
//! (`console.html`, inline script and style, nothing fetched from elsewhere).
//!
//! The page holds no data, so it is served without the API key; it asks for the key and
//! sends it (`Authorization: Bearer`) on every call to the admin API, the stats stream
//! included (read with `fetch`, not `EventSource`, which cannot send a header). What it shows
//! comes from the routes of `read` and the existing `/api/presence` and `/api/publish`.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::node::Node;

const PAGE: &str = include_str!("console.html");

/// The browser may load nothing but this page's own inline code and call nothing but this
/// origin: a page that holds the API key must not run or reach anything else.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new().route("/console", get(page))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
}
