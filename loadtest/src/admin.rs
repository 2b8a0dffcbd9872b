//! The few admin API calls the `kick` scenario makes (`POST /api/disconnect`, `/api/revoke`,
//! docs/protocol.md "Admin HTTP API"): a minimal HTTP/1.1 client over one TCP connection per
//! call, to loopback addresses only, bounded by a timeout.
//!
//! Owns parsing an admin URL (`http://HOST:PORT`; `client::resolve_loopback` resolves it)
//! and reading the status line back. What to send and when is the scenario's business.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client;

/// The most of a reply that is read: the admin routes answer `{}` or a short error.
const MAX_REPLY_BYTES: u64 = 16 * 1024;

/// An admin port to call.
#[derive(Clone, Debug)]
pub struct AdminEndpoint {
    pub url: String,
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header.
    host: String,
}

/// Resolve `url` (`http://HOST:PORT`, an optional trailing `/`) and refuse anything outside
/// the loopback range.
pub async fn resolve(url: &str) -> Result<AdminEndpoint, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// admin URLs are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "{url}: give the admin address only (http://HOST:PORT)"
        ));
    }
    let (host, addr) = client::resolve_loopback(url, authority).await?;
    Ok(AdminEndpoint {
        url: url.to_owned(),
        addr,
        host,
    })
}

/// `POST path` with a JSON `body` (and `Authorization: Bearer key` when given); the reply's
/// status code, or why there is none.
pub async fn post(
    endpoint: &AdminEndpoint,
    path: &str,
    body: &str,
    key: Option<&str>,
    timeout: Duration,
) -> Result<u16, String> {
    let call = async {
        let mut tcp = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| format!("admin connect: {}", e.kind()))?;
        let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
            endpoint.host,
            body.len()
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("admin write: {}", e.kind()))?;
        let mut reply = Vec::new();
        tcp.take(MAX_REPLY_BYTES)
            .read_to_end(&mut reply)
            .await
            .map_err(|e| format!("admin read: {}", e.kind()))?;
        status_of(&reply).ok_or_else(|| "admin: no HTTP status line in the reply".to_string())
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| "admin call timed out".to_string())?
}

/// The status code of an HTTP/1.x reply (`HTTP/1.1 202 Accepted`).
pub fn status_of(reply: &[u8]) -> Option<u16> {
    let line = reply.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admin_urls_are_loopback_only() {
        let e = resolve("http://127.0.0.1:9090").await.expect("loopback");
        assert_eq!(e.addr, "127.0.0.1:9090".parse().expect("addr"));
        assert!(resolve("http://127.0.0.1:9090/").await.is_ok());
        let err = resolve("http://10.0.0.1:9090").await.expect_err("private");
        assert!(err.contains("not a loopback"), "{err}");
        assert!(resolve("https://127.0.0.1:9090").await.is_err());
        assert!(resolve("http://127.0.0.1:9090/api").await.is_err());
    }

    #[test]
    fn status_lines_are_read() {
        assert_eq!(status_of(b"HTTP/1.1 202 Accepted\r\n\r\n{}"), Some(202));
        assert_eq!(status_of(b"HTTP/1.0 400 Bad Request\r\n"), Some(400));
        assert_eq!(status_of(b"SSH-2.0\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1 2020 x\r\n"), None);
        assert_eq!(status_of(b""), None);
    }
}
