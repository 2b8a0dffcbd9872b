//! A backend for the hook tests: a real HTTP server on a loopback port 0 whose answers the test
//! chooses per request, which records every request, and which can hold answers until the test
//! releases them (a slow backend, deterministically). Stopped on drop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::eventually;

/// One request the backend received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// How the backend answers one request.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Wait for [`Backend::release`] before answering.
    pub held: bool,
}

impl Reply {
    pub fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            body,
            held: false,
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            body: Value::Null,
            held: false,
        }
    }

    pub fn held(mut self) -> Reply {
        self.held = true;
        self
    }
}

type Answer = dyn Fn(&Seen) -> Reply + Send + Sync;

#[derive(Clone)]
struct Shared {
    answer: Arc<Answer>,
    seen: Arc<Mutex<Vec<Seen>>>,
    released: watch::Receiver<bool>,
}

pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Serve until dropped, answering each request with `answer`.
    pub async fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let (release, released) = watch::channel(false);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            answer: Arc::new(answer),
            seen: seen.clone(),
            released,
        };
        let app = Router::new().fallback(handle).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend {
            addr,
            seen,
            release,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Wait until `n` requests have arrived.
    pub async fn wait_for(&self, n: usize, what: &str) {
        eventually(what, || async { self.seen().len() >= n }).await;
    }

    /// Answer every held request, and from now on answer at once.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        path: uri.path().to_owned(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let reply = (shared.answer)(&seen);
    shared.seen.lock().expect("seen").push(seen);
    if reply.held {
        let mut released = shared.released.clone();
        let _ = released.wait_for(|r| *r).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/json")],
        reply.body.to_string(),
    )
        .into_response()
}
