//! One roomcast client connection: resolving a node URL (loopback only), binding a chosen
//! loopback source address, the WebSocket handshake, `welcome`, and `join`.
//!
//! Owns what happens before a connection carries traffic and the errors it can end with,
//! sorted into short labels for the reports. What a connection does afterwards is the
//! scenarios' business.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::payload::{self, Incoming};

pub type Ws = WebSocketStream<TcpStream>;

/// tungstenite allocates its whole read buffer per connection up front (128 KiB by default) and
/// zero-fills it before reads; server frames here are a few hundred bytes.
const READ_BUFFER_BYTES: usize = 4096;

/// A node to connect to: its URL and its resolved loopback address.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
}

/// Resolve `url` (`ws://HOST:PORT/PATH`) and refuse anything outside the loopback range: this
/// tool only ever loads servers on this machine.
pub async fn resolve(url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (_, addr) = resolve_loopback(url, authority).await?;
    Ok(Endpoint {
        url: url.to_owned(),
        addr,
    })
}

/// Resolve `authority` (`HOST` or `HOST:PORT`, port 80 when none) of `url` and refuse anything
/// outside the loopback range: this tool only ever talks to servers on this machine. Returns
/// `HOST:PORT` and the address to use (the first IPv4 one, else the first).
pub(crate) async fn resolve_loopback(
    url: &str,
    authority: &str,
) -> Result<(String, SocketAddr), String> {
    let host_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs = tokio::net::lookup_host(host_port.as_str())
        .await
        .map_err(|e| format!("{url}: cannot resolve {host_port}: {e}"))?;
    let mut first = None;
    for addr in addrs {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{url}: {} is not a loopback address; this tool only targets 127.0.0.0/8 or ::1",
                addr.ip()
            ));
        }
        if first.is_none() || addr.is_ipv4() {
            first = Some(addr);
        }
    }
    let addr = first.ok_or_else(|| format!("{url}: {host_port} resolves to nothing"))?;
    Ok((host_port, addr))
}

/// Source address number `i` of `count` (127.0.0.1, 127.0.0.2, ...); `None` lets the kernel
/// choose (one source address).
pub fn source_address(i: usize, count: usize) -> Option<IpAddr> {
    if count <= 1 {
        return None;
    }
    let n = (i % count) as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n)))
}

/// Why a connection did not open; the label is what the reports count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectError(pub String);

impl ConnectError {
    fn from_ws(err: &WsError) -> ConnectError {
        ConnectError(match err {
            WsError::Http(response) => match response.status().as_u16() {
                429 => "HTTP 429 (per-address connect rate: raise server.connect_rate_per_ip)"
                    .to_owned(),
                503 => "HTTP 503 (connection cap or shutting down)".to_owned(),
                code => format!("HTTP {code}"),
            },
            WsError::Io(e) => format!("io: {}", e.kind()),
            other => format!("handshake: {other}"),
        })
    }
}

/// A connection that completed its handshake and received `welcome`.
pub struct Connected {
    pub ws: Ws,
    /// TCP connect + WebSocket handshake + `welcome`, in microseconds.
    pub connect_us: u64,
}

/// Open a WebSocket to `endpoint` from `source` (bound before connecting) and wait for
/// `welcome`, all within `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    let started = Instant::now();
    let attempt = async {
        let socket = if endpoint.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| ConnectError(format!("socket: {}", e.kind())))?;
        if let Some(ip) = source.filter(|_| endpoint.addr.is_ipv4()) {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| ConnectError(format!("bind {ip}: {}", e.kind())))?;
        }
        let tcp = socket
            .connect(endpoint.addr)
            .await
            .map_err(|e| ConnectError(format!("connect: {}", e.kind())))?;
        let _ = tcp.set_nodelay(true);
        let request = endpoint
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError(format!("bad URL: {e}")))?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let (mut ws, _response) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .map_err(|e| ConnectError::from_ws(&e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match payload::classify(text.as_str()) {
                    Incoming::Welcome => break,
                    _ => return Err(ConnectError("first frame is not welcome".into())),
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(0, |f| u16::from(f.code));
                    return Err(ConnectError(format!("closed before welcome ({code})")));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::from_ws(&e)),
                None => return Err(ConnectError("closed before welcome".into())),
            }
        }
        Ok(ws)
    };
    let ws = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError("handshake timed out".into()))??;
    Ok(Connected {
        ws,
        connect_us: started.elapsed().as_micros() as u64,
    })
}

/// Join `room` and wait for `joined`; returns the time it took in microseconds.
pub async fn join(ws: &mut Ws, room: &str, timeout: Duration) -> Result<u64, ConnectError> {
    let started = Instant::now();
    let attempt = async {
        ws.send(Message::Text(payload::join_command(room, "join").into()))
            .await
            .map_err(|e| ConnectError::from_ws(&e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match payload::classify(text.as_str()) {
                    Incoming::Joined { .. } => return Ok(()),
                    Incoming::Error { code, .. } => {
                        return Err(ConnectError(format!("join refused: {code}")));
                    }
                    _ => continue,
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(0, |f| u16::from(f.code));
                    return Err(ConnectError(format!("closed while joining ({code})")));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::from_ws(&e)),
                None => return Err(ConnectError("closed while joining".into())),
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError("join timed out".into()))??;
    Ok(started.elapsed().as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_loopback_targets() {
        assert!(resolve("ws://127.0.0.1:8080/ws").await.is_ok());
        assert!(resolve("ws://localhost:8080/ws").await.is_ok());
        assert!(resolve("ws://127.0.0.2:9/ws").await.is_ok());
        let err = resolve("ws://10.0.0.1:8080/ws").await.expect_err("private");
        assert!(err.contains("not a loopback"), "{err}");
        assert!(resolve("wss://127.0.0.1:8080/ws").await.is_err());
        assert!(resolve("http://127.0.0.1/").await.is_err());
    }

    #[test]
    fn source_addresses_cycle_through_loopback() {
        assert_eq!(source_address(0, 1), None);
        assert_eq!(source_address(0, 3), Some("127.0.0.1".parse().expect("ip")));
        assert_eq!(source_address(4, 3), Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(source_address(2, 3), Some("127.0.0.3".parse().expect("ip")));
    }
}
