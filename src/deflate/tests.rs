use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue};

use super::socket::Inflater;
use super::*;

fn offered(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(EXTENSIONS_HEADER, HeaderValue::from_str(value).unwrap());
    }
    headers
}

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn the_offers_of_browsers_and_python_websockets_are_answered_without_context_takeover() {
    // Chromium's and Firefox's offer, then Python websockets' default.
    for offer in [
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate",
        "permessage-deflate; client_max_window_bits=12",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    ] {
        assert_eq!(
            negotiate(&offered(&[offer])).as_deref(),
            Some(ANSWER),
            "{offer}"
        );
    }
    assert_eq!(
        negotiate(&offered(&["permessage-deflate; server_max_window_bits=15"])).as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"
        ),
    );
}

#[test]
fn offers_we_cannot_honour_are_declined_and_the_next_one_is_taken() {
    for offer in [
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=010",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; mystery",
        "permessage-deflate; server_no_context_takeover=1",
    ] {
        assert_eq!(negotiate(&offered(&[offer])), None, "{offer}");
    }
    // A list in one header, then a second header: the first acceptable offer wins.
    let headers = offered(&[
        "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits",
    ]);
    assert_eq!(negotiate(&headers).as_deref(), Some(ANSWER));
    let headers = offered(&["foo", "permessage-deflate"]);
    assert_eq!(negotiate(&headers).as_deref(), Some(ANSWER));
    assert_eq!(negotiate(&HeaderMap::new()), None);
}

fn json(len: usize) -> String {
    let mut text = String::from("[");
    while text.len() < len {
        text.push_str(r#"{"user":"alice","text":"hello there","n":1},"#);
    }
    text.truncate(len - 1);
    text.push(']');
    text
}

fn inflated(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&SYNC_TAIL);
    inflate(&data, max)
}

#[test]
fn a_compressed_message_inflates_back_and_only_a_smaller_form_is_offered() {
    let text = json(2000);
    let compressed = compress(text.as_bytes()).expect("repetitive JSON shrinks");
    assert!(compressed.len() < text.len() / 4, "{}", compressed.len());
    assert!(!compressed.ends_with(&SYNC_TAIL), "the tail is left off");
    assert_eq!(inflated(&compressed, 2000).unwrap(), text.as_bytes());
    // Twice the same bytes: no context carried from one message to the next.
    assert_eq!(compress(text.as_bytes()).unwrap(), compressed);
    // Short or random text does not shrink: sent as it is.
    assert_eq!(compress(b"hi"), None);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..600)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert_eq!(compress(&noise), None);
}

#[test]
fn inflating_stops_one_byte_past_the_bound_however_small_the_input() {
    let bomb = vec![b'a'; 10 << 20];
    let compressed = compress(&bomb).unwrap();
    assert!(compressed.len() < 64 * 1024);
    assert_eq!(inflated(&compressed, 1 << 20), Err(InflateError::TooLarge));
    assert_eq!(inflated(&compressed, 10 << 20).unwrap().len(), 10 << 20);
    assert_eq!(
        inflated(&compressed, (10 << 20) - 1),
        Err(InflateError::TooLarge)
    );
    assert_eq!(
        inflated(b"\xff\xff\xff\xff", 1000),
        Err(InflateError::Corrupt)
    );
}

/// A masked client frame.
fn client_frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A frame as tungstenite would parse it: (fin, rsv1, opcode, unmasked payload).
fn parse_frames(mut bytes: &[u8]) -> Vec<(bool, bool, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let fin = bytes[0] & 0x80 != 0;
        let rsv1 = bytes[0] & 0x40 != 0;
        let opcode = bytes[0] & 0x0f;
        assert!(bytes[1] & 0x80 != 0, "still masked");
        let (len, mut at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            len => (len as usize, 2),
        };
        let mask = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        at += 4;
        let payload = bytes[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        frames.push((fin, rsv1, opcode, payload));
        bytes = &bytes[at + len..];
    }
    frames
}

/// A source that hands out its bytes `step` at a time, as a slow network would.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this
            .step
            .min(this.bytes.len() - this.at)
            .min(buf.remaining());
        buf.put_slice(&this.bytes[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Everything an inflater hands tungstenite from `input`, read `step` bytes at a time.
async fn through_inflater(input: Vec<u8>, step: usize, max: usize) -> io::Result<Vec<u8>> {
    struct Reader(Inflater, Trickle);
    impl AsyncRead for Reader {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            this.0.poll_read_from(&mut this.1, cx, buf)
        }
    }
    let mut reader = Reader(
        Inflater::new(max),
        Trickle {
            bytes: input,
            at: 0,
            step,
        },
    );
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn compressed_messages_reach_tungstenite_inflated_and_plain_frames_unchanged() {
    let text = json(3000);
    let compressed = compress(text.as_bytes()).unwrap();
    let (first, rest) = compressed.split_at(compressed.len() / 3);
    let mut input = Vec::new();
    input.extend(client_frame(true, false, 0x1, b"plain before"));
    // A compressed message in two fragments, a ping between them.
    input.extend(client_frame(false, true, 0x1, first));
    input.extend(client_frame(true, false, 0x9, b"ping"));
    input.extend(client_frame(true, false, 0x0, rest));
    // An uncompressed fragmented message passes as it is.
    input.extend(client_frame(false, false, 0x1, b"plain "));
    input.extend(client_frame(true, false, 0x0, b"fragments"));
    input.extend(client_frame(
        true,
        true,
        0x1,
        &compress(text.as_bytes()).unwrap(),
    ));
    for step in [1, 7, 4096] {
        let out = through_inflater(input.clone(), step, 4000).await.unwrap();
        let frames = parse_frames(&out);
        let expected: Vec<(bool, bool, u8, Vec<u8>)> = vec![
            (true, false, 0x1, b"plain before".to_vec()),
            (true, false, 0x9, b"ping".to_vec()),
            (true, false, 0x1, text.as_bytes().to_vec()),
            (false, false, 0x1, b"plain ".to_vec()),
            (true, false, 0x0, b"fragments".to_vec()),
            (true, false, 0x1, text.as_bytes().to_vec()),
        ];
        assert_eq!(frames, expected, "read {step} bytes at a time");
    }
}

#[tokio::test]
async fn a_message_inflating_past_the_bound_or_breaking_the_rules_is_an_error() {
    let bomb = compress(&vec![b' '; 1 << 20]).unwrap();
    let err = through_inflater(client_frame(true, true, 0x1, &bomb), 4096, 64 * 1024)
        .await
        .unwrap_err();
    assert_eq!(InflateError::of(&err), Some(InflateError::TooLarge));
    // Compressed bytes alone past the bound: refused from the header, before collecting them.
    let big = vec![0u8; 70_000];
    let err = through_inflater(client_frame(true, true, 0x1, &big), 4096, 64 * 1024)
        .await
        .unwrap_err();
    assert_eq!(InflateError::of(&err), Some(InflateError::TooLarge));
    // RSV1 on a continuation, a new message inside a compressed one, garbage.
    let half = compress(json(500).as_bytes()).unwrap();
    for input in [
        [
            client_frame(false, true, 0x1, &half),
            client_frame(true, true, 0x0, &half),
        ]
        .concat(),
        [
            client_frame(false, true, 0x1, &half),
            client_frame(true, false, 0x1, b"x"),
        ]
        .concat(),
        client_frame(true, true, 0x1, b"\xff\xff\xff\xff"),
    ] {
        let err = through_inflater(input, 4096, 64 * 1024).await.unwrap_err();
        assert_eq!(InflateError::of(&err), Some(InflateError::Corrupt));
    }
}

#[tokio::test]
async fn frames_before_a_refused_message_are_still_read_first() {
    let bomb = compress(&vec![b' '; 1 << 20]).unwrap();
    let input = [
        client_frame(true, false, 0x1, b"before"),
        client_frame(true, true, 0x1, &bomb),
    ]
    .concat();
    let mut inflater = Inflater::new(1024);
    let mut source = Trickle {
        bytes: input,
        at: 0,
        step: 4096,
    };
    let mut out = Vec::new();
    let err = std::future::poll_fn(|cx| {
        loop {
            let mut space = [0u8; 64];
            let mut buf = ReadBuf::new(&mut space);
            match inflater.poll_read_from(&mut source, cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(None),
                Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
                Poll::Ready(Err(err)) => return Poll::Ready(Some(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
    .expect("refused");
    assert_eq!(InflateError::of(&err), Some(InflateError::TooLarge));
    assert_eq!(
        parse_frames(&out),
        vec![(true, false, 0x1, b"before".to_vec())]
    );
}
