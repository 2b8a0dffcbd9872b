//! permessage-deflate (RFC 7692), the server's side: answering a client's offer, compressing a
//! message once for every member that negotiated it, and inflating the client's compressed
//! messages, bounded, before tungstenite reads them.
//!
//! Both directions run without context takeover (`server_no_context_takeover`,
//! `client_no_context_takeover`): each message is compressed on its own, so one compressed form
//! serves every recipient, and a connection keeps no zlib state between messages (an idle one
//! none at all). Whether a node offers it (`server.compression`) and which frames are worth
//! compressing (`server.compression_min_bytes`) is the listener's and the connection's;
//! tungstenite frames and checks everything else.

mod socket;

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_tungstenite::tungstenite::http::HeaderMap;

pub use socket::{ClientSocket, InflateError};

/// The request and response header that carries extension offers and the answer.
pub const EXTENSIONS_HEADER: &str = "sec-websocket-extensions";

/// The tail every sync-flushed DEFLATE block ends with; RFC 7692 §7.2.1 leaves it off the wire.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The answer to the first acceptable `permessage-deflate` offer among the request's
/// `Sec-WebSocket-Extensions` headers, or `None` (the connection goes on uncompressed).
///
/// Accepted: the offer's parameters are each given once and are ones we can honour:
/// `server_no_context_takeover`, `client_no_context_takeover`, `client_max_window_bits` (any:
/// inflating keeps a full window) and `server_max_window_bits=15` (our compressor's window is
/// fixed; an offer asking for less is declined, and the client falls back to no compression).
pub fn negotiate(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(EXTENSIONS_HEADER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(answer)
}

/// The answer to one offer (`permessage-deflate; param; param=value`), if acceptable.
fn answer(offer: &str) -> Option<String> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_window = false;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) if window_bits(bits).is_some() => {}
            ("server_max_window_bits", Some(bits)) if window_bits(bits) == Some(15) => {
                server_window = true;
            }
            _ => return None,
        }
    }
    let mut answer =
        String::from("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    if server_window {
        answer.push_str("; server_max_window_bits=15");
    }
    Some(answer)
}

/// A window size parameter's value, 8 to 15 (RFC 7692 §7.1.2), written without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

thread_local! {
    /// One compressor per worker thread, reset for every message: its state is a few hundred
    /// KB, far too much to build per message or to keep per connection.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
}

/// `text` compressed as one permessage-deflate message payload (without the sync tail), or
/// `None` when it does not come out smaller.
pub fn compress(text: &[u8]) -> Option<Bytes> {
    COMPRESSOR.with(|compressor| {
        let mut compressor = compressor.borrow_mut();
        compressor.reset();
        // Anything that does not fit here is not worth sending compressed.
        let mut out = Vec::with_capacity(text.len() + SYNC_TAIL.len());
        let status = compressor
            .compress_vec(text, &mut out, FlushCompress::Sync)
            .ok()?;
        let complete = status == Status::Ok
            && compressor.total_in() == text.len() as u64
            && out.len() < out.capacity()
            && out.ends_with(&SYNC_TAIL);
        if !complete {
            return None;
        }
        out.truncate(out.len() - SYNC_TAIL.len());
        (out.len() < text.len()).then(|| Bytes::from(out))
    })
}

/// Inflate one message's compressed payload (the sync tail already appended). At most
/// `max_bytes` come out: past that it is [`InflateError::TooLarge`], however small the input
/// (no decompression bomb gets further than `max_bytes + 1` bytes of memory).
pub fn inflate(compressed: &[u8], max_bytes: usize) -> Result<Vec<u8>, InflateError> {
    let mut inflater = Decompress::new(false);
    let limit = max_bytes.saturating_add(1);
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).clamp(64, limit));
    loop {
        let consumed = inflater.total_in() as usize;
        let produced = out.len();
        let status = inflater
            .decompress_vec(&compressed[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > max_bytes {
            return Err(InflateError::TooLarge);
        }
        let all_in = inflater.total_in() as usize == compressed.len();
        if status == Status::StreamEnd || (all_in && out.len() < out.capacity()) {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            let grow = out.capacity().min(limit - out.len()).max(1);
            out.reserve_exact(grow);
        } else if inflater.total_in() as usize == consumed && out.len() == produced {
            // Input left, room left, nothing moved: the data ends mid-block.
            return Err(InflateError::Corrupt);
        }
    }
}

#[cfg(test)]
mod tests;
