//! The server's frames as they leave for a client: encoded (RFC 6455 §5.2: final, unmasked)
//! into the socket's unsent bytes, which live only until the kernel has taken them, and
//! written straight to the socket.
//!
//! tungstenite's writer copies every frame into a buffer it keeps, at its largest size, for the
//! connection's life: every connection would hold its welcome's size, and one that once took a
//! burst its `server.write_buffer_bytes` and more, long after. So data frames and pings are
//! written here; tungstenite keeps the reading and the close handshake (its close frame, and
//! its replies to a client's ping or close). Its pending replies are flushed before a write
//! starts here, and [`ClientSocket`] writes our unsent bytes before anything tungstenite
//! writes after them, so frames never interleave. What to send, and when, is the connection
//! loop's.

use std::future::poll_fn;

use futures_util::SinkExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::deflate::ClientSocket;

/// First byte of a final text frame.
pub(super) const TEXT: u8 = 0x81;
/// First byte of a final text frame compressed with permessage-deflate (RSV1 set).
pub(super) const TEXT_COMPRESSED: u8 = 0xC1;
/// First byte of a ping.
pub(super) const PING: u8 = 0x89;

/// Add one frame to the socket's unsent bytes, and write them once they reach `write_at`
/// bytes (`server.write_buffer_bytes`); [`write_unsent`] writes the rest.
pub(super) async fn push(
    ws: &mut WebSocketStream<ClientSocket>,
    first_byte: u8,
    payload: &[u8],
    write_at: usize,
) -> Result<(), WsError> {
    if ws.get_mut().unsent().is_empty() {
        // What tungstenite still has to send (a pong, a close reply) goes first.
        SinkExt::<Message>::flush(ws).await?;
    }
    let unsent = ws.get_mut().unsent();
    encode(unsent, first_byte, payload);
    if unsent.len() >= write_at {
        write_unsent(ws).await?;
    }
    Ok(())
}

/// Write everything the socket has unsent.
pub(super) async fn write_unsent(ws: &mut WebSocketStream<ClientSocket>) -> Result<(), WsError> {
    let socket = ws.get_mut();
    poll_fn(|cx| socket.poll_write_unsent(cx))
        .await
        .map_err(WsError::Io)
}

/// Write one frame now.
pub(super) async fn write_one(
    ws: &mut WebSocketStream<ClientSocket>,
    first_byte: u8,
    payload: &[u8],
) -> Result<(), WsError> {
    push(ws, first_byte, payload, usize::MAX).await?;
    write_unsent(ws).await
}

/// Append a final, unmasked frame (a server's frames are never masked).
fn encode(buf: &mut Vec<u8>, first_byte: u8, payload: &[u8]) {
    let len = payload.len();
    buf.reserve(len + 10);
    buf.push(first_byte);
    match u16::try_from(len) {
        Ok(short) if short < 126 => buf.push(short as u8),
        Ok(medium) => {
            buf.push(126);
            buf.extend_from_slice(&medium.to_be_bytes());
        }
        Err(_) => {
            buf.push(127);
            buf.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    use super::*;

    /// tungstenite's own encoding of the same frame: the reference.
    fn reference(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let header = FrameHeader {
            is_final: true,
            rsv1,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
        };
        let mut out = Vec::new();
        Frame::from_payload(header, Bytes::copy_from_slice(payload))
            .format(&mut out)
            .expect("a frame formats into a Vec");
        out
    }

    #[test]
    fn frames_encode_as_tungstenite_encodes_them_at_every_length_boundary() {
        let text = OpCode::Data(Data::Text);
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|n| (n % 251) as u8).collect();
            for (first_byte, opcode, rsv1) in [
                (TEXT, text, false),
                (TEXT_COMPRESSED, text, true),
                (
                    PING,
                    OpCode::Control(
                        tokio_tungstenite::tungstenite::protocol::frame::coding::Control::Ping,
                    ),
                    false,
                ),
            ] {
                if first_byte == PING && len > 125 {
                    continue;
                }
                let mut ours = Vec::new();
                encode(&mut ours, first_byte, &payload);
                assert_eq!(
                    ours,
                    reference(opcode, rsv1, &payload),
                    "first byte {first_byte:#x}, {len} bytes"
                );
            }
        }
    }

    #[test]
    fn frames_follow_each_other_in_one_buffer() {
        let mut ours = Vec::new();
        encode(&mut ours, TEXT, b"one");
        encode(&mut ours, TEXT, b"two");
        let mut expected = reference(OpCode::Data(Data::Text), false, b"one");
        expected.extend(reference(OpCode::Data(Data::Text), false, b"two"));
        assert_eq!(ours, expected);
    }
}
