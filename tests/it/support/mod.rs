//! Test support: real nodes on port 0, real WebSocket clients, a real `redis-server` on a free
//! loopback port. Everything started here is stopped on drop, also when a test fails.
//! Every wait is bounded by [`WAIT`].

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast::config::Config;
use roomcast::{Listeners, RunError, run};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub mod backend;
mod builders;
pub mod cluster;
mod pubsub;
pub mod tls;

pub use builders::*;
pub use pubsub::*;

/// An HTTP client for the tests' own requests. reqwest here has rustls without a provider
/// (the node brings its own): the process's default provider is set first, as `main` does.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("client")
}

pub fn http_client_builder() -> reqwest::ClientBuilder {
    roomcast::backend_http::install_default_provider();
    reqwest::Client::builder()
}

/// The kernel's `TCP_INFO` for a socket (Linux): segment counts of a connection, or the
/// backlog of a listener (`tcpi_sacked`).
pub fn tcp_info(socket: &impl std::os::fd::AsRawFd) -> libc::tcp_info {
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a plain C struct.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info
    }
}

/// The longest any test waits for one event.
pub const WAIT: Duration = Duration::from_secs(10);

/// A configuration for tests: loopback, port 0, defaults otherwise.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.server.node_id = "test-node".into();
    config
}

/// A node running in this process on port 0.
pub struct TestNode {
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let ws_addr = ws.local_addr().expect("ws addr");
        let admin_addr = admin.local_addr().expect("admin addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(run(Listeners { ws, admin }, config, async move {
            let _ = rx.await;
        }));
        TestNode {
            ws_addr,
            admin_addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Begin shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shut down and wait for `run` to return.
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.begin_shutdown();
        let handle = self.handle.take().expect("handle");
        tokio::time::timeout(WAIT * 3, handle)
            .await
            .expect("node stops in time")
            .expect("node task")
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    pub async fn metrics(&self) -> String {
        http_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Value of one un-labelled or labelled sample in a Prometheus text page.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name_and_labels)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {name_and_labels} not found"))
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client speaking docs/protocol.md.
pub struct Client {
    pub ws: Ws,
    pub welcome: Value,
}

/// What the server sent, as the tests care about it.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Text(String),
    Close(Option<u16>),
    /// The socket ended without a close frame.
    Ended,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut client = Client {
            ws,
            welcome: Value::Null,
        };
        let welcome = client.recv_json().await;
        assert_eq!(welcome["type"], "welcome", "first frame is welcome");
        client.welcome = welcome;
        client
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next data frame or close, skipping WebSocket pings and pongs.
    pub async fn recv(&mut self) -> Received {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame arrives in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return match serde_json::from_str::<Value>(t.as_str()) {
                        Ok(v) if v.is_object() => Received::Json(v),
                        _ => Received::Text(t.to_string()),
                    };
                }
                Some(Ok(Message::Close(frame))) => {
                    return Received::Close(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(Message::Binary(_))) => panic!("server sent a binary frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Received::Ended,
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Received::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame must be a close with this code.
    pub async fn expect_close(&mut self, code: u16) {
        loop {
            match self.recv().await {
                Received::Close(got) => {
                    assert_eq!(got, Some(code), "close code");
                    // Keep reading, as a real client does: that sends our close reply and
                    // sees the server drop the socket.
                    let _ = tokio::time::timeout(WAIT, async {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    })
                    .await;
                    return;
                }
                Received::Json(_) | Received::Text(_) => continue,
                Received::Ended => panic!("socket ended without a close frame (wanted {code})"),
            }
        }
    }

    /// Send a command with an id and return its reply.
    pub async fn request(&mut self, mut command: Value, id: &str) -> Value {
        command["id"] = json!(id);
        self.send_json(command).await;
        loop {
            let reply = self.recv_json().await;
            if reply["id"] == json!(id) {
                return reply;
            }
            assert!(
                matches!(
                    reply["type"].as_str(),
                    Some("message" | "notification" | "broadcast")
                ),
                "unexpected frame while waiting for reply {id}: {reply}"
            );
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let reply = self
            .request(
                json!({"type": "join", "room": room}),
                &format!("join-{room}"),
            )
            .await;
        assert_eq!(reply["type"], "joined", "join {room}: {reply}");
        reply
    }

    /// Skip frames until one of `type`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// Poll `check` until it returns true, at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (bound and released; the caller binds it next).
/// The HTTP status of a GET (0 when nothing answers).
pub async fn http_status(url: &str) -> u16 {
    http_client()
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `redis-server` of our own on a free loopback port, no persistence; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    /// Start (or restart) on a given port.
    pub fn start_on(port: u16) -> RedisServer {
        Self::start_with_args(port, &["--port", &port.to_string()])
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the server (SIGKILL) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RedisServer {
    /// Start a `redis-server` on loopback with extra arguments (a password, TLS ports, ...),
    /// no persistence, and wait until `port` accepts connections.
    pub fn start_with_args(port: u16, args: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }
}

/// A TCP proxy in front of a loopback port that a test can cut (every open connection dropped,
/// new ones refused) and restore: a network partition between one node and Redis.
pub struct CuttableProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start(upstream: u16) -> CuttableProxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = {
            let cut = cut.clone();
            let links = links.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::Acquire) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(task.abort_handle());
                }
            })
        };
        CuttableProxy {
            port,
            cut,
            links,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Release);
        for link in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A child process, killed (SIGKILL) and reaped on drop, so a failing test leaves none behind.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the built `roomcast` binary with `args` and `envs` (JSON logs at info on stdout) and
/// wait for the WebSocket address it logs once bound. Returns the process and `ws://ADDR/ws`.
pub async fn spawn_binary(args: &[&std::ffi::OsStr], envs: &[(&str, &str)]) -> (Child, String) {
    use std::io::{BufRead, BufReader};
    let mut command = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    command
        .args(args)
        .env("ROOMCAST_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = Child(command.spawn().expect("spawn roomcast"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "websocket listening"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_owned());
            }
        }
    });
    let addr = tokio::time::timeout(WAIT, rx)
        .await
        .expect("the node logs its address in time")
        .expect("address");
    (child, format!("ws://{addr}/ws"))
}

/// Open a WebSocket to `url` with `headers`: the client, or the handshake's HTTP status.
pub async fn open_ws(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .expect("header name");
        request
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")
    {
        Ok((ws, _)) => {
            let mut client = Client {
                ws,
                welcome: Value::Null,
            };
            client.welcome = client.recv_json().await;
            assert_eq!(client.welcome["type"], "welcome");
            Ok(client)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("unexpected handshake error {other}"),
    }
}
