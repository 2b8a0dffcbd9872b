//! The handshake when the backend's connect hook is on (`hooks.connect_url`).
//!
//! tungstenite asks its handshake callback for an answer synchronously, and the connect hook is
//! an HTTP call: so here the request is read and answered by the listener itself, with
//! tungstenite's own request parser and response builder (the same checks of the upgrade
//! request, the same `101`), and the socket then becomes a WebSocket without a second
//! handshake. The other checks are the listener's, in the same order as without the hook; the
//! identity comes from a valid token or, without one (or always, `hooks.connect_always`), from
//! the backend. Asking the backend is `hooks`'s.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::handshake::server::{Request, create_response, write_response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;

use super::{Admission, Listener, Refused, error_response};
use crate::deflate::ClientSocket;
use crate::hooks::ConnectRefused;
use crate::metrics::Refusal;

impl Listener {
    /// Read the upgrade request, decide, answer; on success the WebSocket and the admission.
    /// The caller bounds the whole by `server.handshake_timeout_ms`.
    pub(super) async fn hooked_handshake(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(WebSocketStream<ClientSocket>, Admission), Refusal> {
        let max = self.node.config().limits.max_message_bytes;
        let request = read_request(&mut tcp, max).await?;
        // As tungstenite does before its callback: not an upgrade request, no answer.
        let mut response = create_response(&request).map_err(|err| {
            debug!(%err, "not a WebSocket upgrade");
            Refusal::HandshakeFailed
        })?;
        let deflates = self.answer_compression(&request, &mut response);
        let mut out = Vec::new();
        let path = self.node.config().server.path.clone();
        let admission = match self.admit_hooked(&request, peer, &path).await {
            Ok(admission) => {
                write_response(&mut out, &response).map_err(|_| Refusal::HandshakeFailed)?;
                admission
            }
            Err((reason, status, message)) => {
                let refusal = error_response(status, message);
                if write_response(&mut out, &refusal).is_ok() {
                    out.extend_from_slice(message.as_bytes());
                    // Best effort, as tungstenite's own refusals: the socket closes next.
                    let _ = tcp.write_all(&out).await;
                }
                return Err(reason);
            }
        };
        tcp.write_all(&out)
            .await
            .map_err(|_| Refusal::HandshakeFailed)?;
        let mut socket = ClientSocket::new(tcp);
        if deflates {
            socket.inflate_from_now(max);
        }
        let ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(self.ws_config)).await;
        Ok((ws, admission))
    }

    /// [`Listener::admit`] with the connect hook: the identity of a valid token, unless
    /// `hooks.connect_always`; otherwise the backend's answer.
    pub(super) async fn admit_hooked(
        &self,
        request: &Request,
        peer: SocketAddr,
        path: &str,
    ) -> Result<Admission, Refused> {
        let client = self.screen(request, peer, path)?;
        let hooks = self.node.hooks();
        let has_token = self.request_token(request).is_some();
        let by_token = match (hooks.config().connect_always, has_token) {
            // A bad token is counted (`roomcast_auth_failures_total`), then the backend asked.
            (false, true) => self.authenticate(request).ok().flatten(),
            _ => None,
        };
        let identity = match by_token {
            Some(identity) => identity,
            None => {
                let identity = hooks
                    .connect(client, request.headers(), request.uri().query())
                    .await
                    .map_err(|refused| match refused {
                        ConnectRefused::Refused(403) => (
                            Refusal::Unauthorized,
                            StatusCode::FORBIDDEN,
                            "refused by the backend",
                        ),
                        ConnectRefused::Refused(_) => (
                            Refusal::Unauthorized,
                            StatusCode::UNAUTHORIZED,
                            "refused by the backend",
                        ),
                        ConnectRefused::Unavailable(failure) => {
                            debug!(%failure, "connect hook failed");
                            (
                                Refusal::BackendUnavailable,
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the backend cannot be asked who you are",
                            )
                        }
                    })?;
                // A user revocation in force (`/api/revoke {user}`) holds whoever vouches.
                self.refuse_if_revoked(&identity, "user revoked")?;
                identity
            }
        };
        self.admission(client, Some(identity))
    }
}

/// The upgrade request, read up to its end; at most `max` bytes. Nothing may follow it (a
/// client sends no frame before the `101`), as tungstenite has it.
async fn read_request(tcp: &mut TcpStream, max: usize) -> Result<Request, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= max {
            return Err(Refusal::HandshakeFailed);
        }
        // Never past `max`: reserve what is left (at most 4 KiB at a time) and read into it.
        buf.reserve((max - buf.len()).min(4096));
        let room = (max - buf.len()).min(buf.capacity() - buf.len());
        let n = (&mut *tcp)
            .take(room as u64)
            .read_buf(&mut buf)
            .await
            .map_err(|_| Refusal::HandshakeFailed)?;
        if n == 0 {
            return Err(Refusal::HandshakeFailed);
        }
        match Request::try_parse(&buf) {
            Ok(None) => continue,
            Ok(Some((size, request))) if size == buf.len() => return Ok(request),
            Ok(Some(_)) | Err(_) => return Err(Refusal::HandshakeFailed),
        }
    }
}
