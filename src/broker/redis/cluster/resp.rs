//! The RESP2 reader of the cluster's subscriber links: as much of the protocol as pub/sub
//! needs (scalars, and arrays of scalars), with bounds on every length, and the error replies
//! the cluster task acts on. Leaves everything else to the cluster task.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest bulk reply a link accepts (Redis's own limit for a value is 512 MiB).
const MAX_BULK_BYTES: usize = 64 << 20;
/// Longest header line of a reply (`*3`, `$1234`, an error message).
const MAX_LINE_BYTES: u64 = 64 << 10;

/// A RESP2 reply, as much of it as pub/sub needs (arrays of scalars).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Resp>),
}

pub(crate) fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// One line without its CRLF.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    (&mut *reader)
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)
        .await?;
    if line.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(invalid("a reply line without CRLF (or too long)"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn parse_number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("a malformed number"))
}

async fn read_scalar<R: AsyncBufRead + Unpin>(reader: &mut R, line: Vec<u8>) -> io::Result<Resp> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match line.first() {
        Some(b'+') => Ok(Resp::Simple(text(&line[1..]))),
        Some(b'-') => Ok(Resp::Error(text(&line[1..]))),
        Some(b':') => Ok(Resp::Int(parse_number(&line[1..])?)),
        Some(b'$') => {
            let len = parse_number(&line[1..])?;
            if len < 0 {
                return Ok(Resp::Nil);
            }
            let len = usize::try_from(len).map_err(|_| invalid("a bulk length"))?;
            if len > MAX_BULK_BYTES {
                return Err(invalid("a bulk reply over the size limit"));
            }
            let mut bulk = vec![0; len + 2];
            reader.read_exact(&mut bulk).await?;
            if !bulk.ends_with(b"\r\n") {
                return Err(invalid("a bulk reply without CRLF"));
            }
            bulk.truncate(len);
            Ok(Resp::Bulk(bulk))
        }
        _ => Err(invalid("an unexpected reply type")),
    }
}

/// Read one reply: a scalar, or an array of scalars (every pub/sub reply is one).
pub(crate) async fn read_reply<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Resp> {
    let line = read_line(reader).await?;
    if line.first() != Some(&b'*') {
        return read_scalar(reader, line).await;
    }
    let len = parse_number(&line[1..])?;
    if len < 0 {
        return Ok(Resp::Nil);
    }
    if len > 16 {
        return Err(invalid("an array longer than any pub/sub reply"));
    }
    let mut items = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let line = read_line(reader).await?;
        if line.first() == Some(&b'*') {
            return Err(invalid("a nested array"));
        }
        items.push(read_scalar(reader, line).await?);
    }
    Ok(Resp::Array(items))
}

/// An error reply, by its code (the first word, as RESP defines it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ErrorReply {
    /// `MOVED <slot> <addr>`: the slot lives on `addr` now.
    Moved { addr: String },
    /// `CLUSTERDOWN` or `TRYAGAIN`: the cluster cannot serve now.
    ClusterBusy,
    /// Any other refusal (an ACL, say).
    Refused,
}

impl ErrorReply {
    pub(crate) fn classify(reply: &str) -> ErrorReply {
        let mut words = reply.split_whitespace();
        match words.next() {
            Some("MOVED") => match words.nth(1) {
                Some(addr) => ErrorReply::Moved {
                    addr: addr.to_owned(),
                },
                None => ErrorReply::Refused,
            },
            Some("CLUSTERDOWN" | "TRYAGAIN") => ErrorReply::ClusterBusy,
            _ => ErrorReply::Refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn replies_parse_and_bad_ones_are_errors() {
        let wire: &[u8] = b"*3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$5\r\nhe\r\nl\r\n\
            +PONG\r\n-MOVED 3999 127.0.0.1:7002\r\n:7\r\n$-1\r\n";
        let mut reader = BufReader::new(wire);
        assert_eq!(
            read_reply(&mut reader).await.expect("array"),
            Resp::Array(vec![
                Resp::Bulk(b"smessage".to_vec()),
                Resp::Bulk(b"ch".to_vec()),
                Resp::Bulk(b"he\r\nl".to_vec()),
            ])
        );
        assert_eq!(
            read_reply(&mut reader).await.expect("simple"),
            Resp::Simple("PONG".into())
        );
        assert_eq!(
            read_reply(&mut reader).await.expect("error"),
            Resp::Error("MOVED 3999 127.0.0.1:7002".into())
        );
        assert_eq!(read_reply(&mut reader).await.expect("int"), Resp::Int(7));
        assert_eq!(read_reply(&mut reader).await.expect("nil"), Resp::Nil);
        assert_eq!(
            read_reply(&mut reader).await.expect_err("eof").kind(),
            io::ErrorKind::UnexpectedEof
        );
        for bad in [
            &b"*1\r\n*1\r\n:1\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"?\r\n",
            b":x\r\n",
            b"+no crlf\n",
            b"$99999999999\r\n",
        ] {
            let mut reader = BufReader::new(bad);
            assert!(read_reply(&mut reader).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_replies_are_classified_by_their_code() {
        assert_eq!(
            ErrorReply::classify("MOVED 3999 127.0.0.1:7002"),
            ErrorReply::Moved {
                addr: "127.0.0.1:7002".into()
            }
        );
        assert_eq!(
            ErrorReply::classify("CLUSTERDOWN The cluster is down"),
            ErrorReply::ClusterBusy
        );
        assert_eq!(ErrorReply::classify("TRYAGAIN"), ErrorReply::ClusterBusy);
        assert_eq!(ErrorReply::classify("MOVED"), ErrorReply::Refused);
        assert_eq!(
            ErrorReply::classify("NOPERM no permissions"),
            ErrorReply::Refused
        );
        assert_eq!(ErrorReply::classify(""), ErrorReply::Refused);
    }
}
