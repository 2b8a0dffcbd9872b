//! The client's socket as tungstenite reads it: the TCP stream itself, or, once
//! permessage-deflate is negotiated, the stream with every compressed message inflated into
//! one plain frame (tungstenite knows no extensions and refuses a frame with RSV1 set).
//!
//! Owns the frame parsing that inflating needs (headers, masks, fragments); every other check
//! of a frame (masking, control frames, sizes, UTF-8) stays tungstenite's, on what comes out.
//! Writing: the connection encodes its frames itself (compressed ones as such) into the
//! socket's unsent bytes, which leave before anything tungstenite writes after them (its close
//! frame behind a write the close interrupted), so the stream stays whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{SYNC_TAIL, inflate};

/// Why a client's compressed message was refused; carried to the connection inside the
/// `io::Error` tungstenite reports, to choose the close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates (or arrives compressed) past `limits.max_message_bytes`: 1009.
    #[error("message too large after inflating")]
    TooLarge,
    /// Not DEFLATE data, or frames that break RFC 7692's rules: 1002.
    #[error("invalid compressed message")]
    Corrupt,
}

impl InflateError {
    /// The refusal inside a read error, if the error is one.
    pub fn of(err: &io::Error) -> Option<InflateError> {
        err.get_ref()?.downcast_ref::<InflateError>().copied()
    }
}

impl From<InflateError> for io::Error {
    fn from(err: InflateError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// A client connection's TCP stream, with what permessage-deflate needs once negotiated. A
/// connection that did not negotiate it pays one pointer.
pub struct ClientSocket {
    tcp: TcpStream,
    negotiated: Option<Box<Negotiated>>,
    /// Frames the connection encoded and the kernel has not taken yet; freed once written.
    unsent: Vec<u8>,
}

/// A connection's permessage-deflate state: the inflater of its messages, and the frames
/// written compressed that the metrics have not counted yet (counted once per write, not per
/// frame).
struct Negotiated {
    inflater: Inflater,
    compressed_sent: u64,
}

impl ClientSocket {
    pub fn new(tcp: TcpStream) -> ClientSocket {
        ClientSocket {
            tcp,
            negotiated: None,
            unsent: Vec::new(),
        }
    }

    /// Where the connection encodes frames to write ([`ClientSocket::poll_write_unsent`]).
    pub fn unsent(&mut self) -> &mut Vec<u8> {
        &mut self.unsent
    }

    /// Write the unsent bytes, all of them, then free their buffer: a connection keeps no
    /// write buffer between writes.
    pub fn poll_write_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.unsent.is_empty() {
            let written = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.unsent))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            // A partial write moves the rest to the front: rare (a full socket), and an
            // offset would cost every connection 8 more bytes.
            self.unsent.drain(..written);
        }
        if self.unsent.capacity() > 0 {
            self.unsent = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// From now on, compressed client messages are inflated, at most `max_bytes` each.
    pub fn inflate_from_now(&mut self, max_bytes: usize) {
        self.negotiated = Some(Box::new(Negotiated {
            inflater: Inflater::new(max_bytes),
            compressed_sent: 0,
        }));
    }

    /// Whether permessage-deflate was negotiated on this connection.
    pub fn deflates(&self) -> bool {
        self.negotiated.is_some()
    }

    /// One more frame written compressed.
    pub fn count_compressed(&mut self) {
        if let Some(negotiated) = self.negotiated.as_mut() {
            negotiated.compressed_sent += 1;
        }
    }

    /// The frames written compressed since the last call.
    pub fn take_compressed_sent(&mut self) -> u64 {
        self.negotiated.as_mut().map_or(0, |negotiated| {
            std::mem::take(&mut negotiated.compressed_sent)
        })
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.negotiated.as_mut() {
            None => Pin::new(&mut this.tcp).poll_read(cx, buf),
            Some(negotiated) => negotiated.inflater.poll_read_from(&mut this.tcp, cx, buf),
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_unsent(cx))?;
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_write_unsent(cx))?;
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_unsent(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_unsent(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Bytes read from the socket at a time while inflating.
const READ_CHUNK: usize = 4096;

/// Where the parser is in the client's byte stream.
#[derive(Debug, Clone, Copy)]
enum At {
    /// At a frame header.
    Header,
    /// In a frame tungstenite reads as it is: this many payload bytes still to copy.
    Passing(u64),
    /// In a frame of a compressed message: this many payload bytes still to collect, unmasked
    /// with `mask` from offset `offset`; `last` when the frame ends the message.
    Collecting {
        left: u64,
        mask: [u8; 4],
        offset: usize,
        last: bool,
    },
}

/// Turns the client's frames into what tungstenite reads: plain frames copied, compressed
/// messages collected (all their fragments) and handed on inflated, as one frame.
pub(crate) struct Inflater {
    max_bytes: usize,
    /// Read from the socket, not yet parsed, from `input_at`.
    input: Vec<u8>,
    input_at: usize,
    /// For tungstenite, from `output_at`.
    output: Vec<u8>,
    output_at: usize,
    at: At,
    /// The compressed message being collected: its opcode and its payload so far.
    message: Option<(u8, Vec<u8>)>,
    /// An uncompressed fragmented message is passing through (its continuations are not ours).
    plain_fragments: bool,
    /// A refusal found after frames tungstenite has not read yet: reported once they are read.
    refused: Option<InflateError>,
}

impl Inflater {
    pub(crate) fn new(max_bytes: usize) -> Inflater {
        Inflater {
            max_bytes,
            input: Vec::new(),
            input_at: 0,
            output: Vec::new(),
            output_at: 0,
            at: At::Header,
            message: None,
            plain_fragments: false,
            refused: None,
        }
    }

    /// Compressed bytes one message may take: its inflated bound, plus what DEFLATE adds to
    /// data it cannot shrink (5 bytes per stored block of up to 64 KiB).
    fn compressed_limit(&self) -> u64 {
        let max = self.max_bytes as u64;
        max + max / 1024 + 64
    }

    pub(crate) fn poll_read_from<R: AsyncRead + Unpin>(
        &mut self,
        tcp: &mut R,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.output_at < self.output.len() {
                let ready = &self.output[self.output_at..];
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                self.output_at += n;
                if self.output_at == self.output.len() {
                    // Released, not kept: an idle connection holds no buffers.
                    self.output = Vec::new();
                    self.output_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(refused) = self.refused {
                return Poll::Ready(Err(refused.into()));
            }
            if let Err(refused) = self.parse() {
                // What came before the refused message is still the client's to be read.
                self.refused = Some(refused);
                continue;
            }
            if self.output_at < self.output.len() {
                continue;
            }
            self.input.drain(..self.input_at);
            self.input_at = 0;
            let kept = self.input.len();
            self.input.resize(kept + READ_CHUNK, 0);
            let mut read = ReadBuf::new(&mut self.input[kept..]);
            let polled = Pin::new(&mut *tcp).poll_read(cx, &mut read);
            let filled = read.filled().len();
            self.input.truncate(kept + filled);
            if self.input.is_empty() {
                // Released while the connection waits: an idle one holds no buffers.
                self.input = Vec::new();
            }
            ready!(polled)?;
            if filled == 0 {
                // The end of the stream: tungstenite sees it as such (a partial frame left
                // here is dropped with the connection).
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Parse what input there is, moving plain bytes and inflated messages to the output.
    fn parse(&mut self) -> Result<(), InflateError> {
        loop {
            let available = self.input.len() - self.input_at;
            match self.at {
                At::Header => {
                    let Some(header) = Header::parse(&self.input[self.input_at..]) else {
                        return Ok(());
                    };
                    self.on_header(header)?;
                }
                At::Passing(0) => self.at = At::Header,
                At::Passing(left) => {
                    if available == 0 {
                        return Ok(());
                    }
                    let n = available.min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.output
                        .extend_from_slice(&self.input[self.input_at..self.input_at + n]);
                    self.input_at += n;
                    self.at = At::Passing(left - n as u64);
                }
                At::Collecting {
                    left,
                    mask,
                    offset,
                    last,
                } => {
                    let n = available.min(usize::try_from(left).unwrap_or(usize::MAX));
                    if let Some((_, payload)) = self.message.as_mut() {
                        let bytes = &self.input[self.input_at..self.input_at + n];
                        payload.extend(
                            bytes
                                .iter()
                                .enumerate()
                                .map(|(i, byte)| byte ^ mask[(offset + i) % 4]),
                        );
                    }
                    self.input_at += n;
                    let left = left - n as u64;
                    if left > 0 {
                        self.at = At::Collecting {
                            left,
                            mask,
                            offset: (offset + n) % 4,
                            last,
                        };
                        return Ok(());
                    }
                    self.at = At::Header;
                    if last {
                        self.finish_message()?;
                    }
                }
            }
        }
    }

    fn on_header(&mut self, header: Header) -> Result<(), InflateError> {
        let data = header.opcode < 0x8;
        let starts_compressed = header.rsv1
            && (header.opcode == 0x1 || header.opcode == 0x2)
            && self.message.is_none()
            && !self.plain_fragments;
        let continues_compressed = header.opcode == 0x0 && self.message.is_some();
        if starts_compressed || continues_compressed {
            // RSV1 is the first frame's only (RFC 7692 §6.1); a client frame is masked.
            let (true, Some(mask)) = (!(continues_compressed && header.rsv1), header.mask) else {
                return Err(InflateError::Corrupt);
            };
            let so_far = self.message.as_ref().map_or(0, |(_, p)| p.len() as u64);
            if so_far.saturating_add(header.len) > self.compressed_limit() {
                return Err(InflateError::TooLarge);
            }
            if starts_compressed {
                self.message = Some((header.opcode, Vec::new()));
            }
            self.input_at += header.size;
            self.at = At::Collecting {
                left: header.len,
                mask,
                offset: 0,
                last: header.fin,
            };
            return Ok(());
        }
        if data && self.message.is_some() {
            // A new message before the compressed one ended.
            return Err(InflateError::Corrupt);
        }
        if data {
            self.plain_fragments = !header.fin;
        }
        self.output
            .extend_from_slice(&self.input[self.input_at..self.input_at + header.size]);
        self.input_at += header.size;
        self.at = At::Passing(header.len);
        Ok(())
    }

    /// The compressed message is complete: hand tungstenite its inflated form as one frame.
    fn finish_message(&mut self) -> Result<(), InflateError> {
        let Some((opcode, mut payload)) = self.message.take() else {
            return Ok(());
        };
        payload.extend_from_slice(&SYNC_TAIL);
        let plain = inflate(&payload, self.max_bytes)?;
        drop(payload);
        self.output.reserve(plain.len() + 14);
        self.output.push(0x80 | opcode);
        // Masked (a server must see masked client frames) with the zero key: the payload
        // stays as it is.
        match plain.len() {
            len @ 0..=125 => self.output.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                self.output.push(0x80 | 126);
                self.output.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                self.output.push(0x80 | 127);
                self.output.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        self.output.extend_from_slice(&[0; 4]);
        self.output.extend_from_slice(&plain);
        Ok(())
    }
}

/// A frame header as RFC 6455 §5.2 lays it out.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    /// Bytes the header takes.
    size: usize,
}

impl Header {
    /// The header at the start of `bytes`, or `None` until all of it is there.
    fn parse(bytes: &[u8]) -> Option<Header> {
        let (&first, rest) = bytes.split_first()?;
        let (&second, rest) = rest.split_first()?;
        let (len, rest, extended) = match second & 0x7f {
            126 => {
                let (len, rest) = rest.split_first_chunk::<2>()?;
                (u64::from(u16::from_be_bytes(*len)), rest, 2)
            }
            127 => {
                let (len, rest) = rest.split_first_chunk::<8>()?;
                (u64::from_be_bytes(*len), rest, 8)
            }
            len => (u64::from(len), rest, 0),
        };
        let masked = second & 0x80 != 0;
        let mask = if masked {
            Some(*rest.first_chunk::<4>()?)
        } else {
            None
        };
        Some(Header {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: first & 0x0f,
            mask,
            len,
            size: 2 + extended + if masked { 4 } else { 0 },
        })
    }
}
