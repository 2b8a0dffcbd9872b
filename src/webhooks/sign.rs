//! `X-Roomcast-Signature`: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with
//! `webhooks.secret` as the key. Signing and checking (the check is what a backend does; the
//! tests and docs/protocol.md use the same rule).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const HEADER: &str = "x-roomcast-signature";

fn mac(secret: &[u8], t: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The header value for `body` sent at `t` (unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let digest = mac(secret, t, body).finalize().into_bytes();
    format!("t={t},v1={}", hex(&digest))
}

/// Whether `header` is a valid signature of `body` with `secret`; returns its `t`.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> Option<u64> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (t, v1) = (t?, v1?);
    if v1.len() != 64 || !v1.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(&v1[2 * i..2 * i + 2], 16).ok())
        .collect();
    // `verify_slice` compares in constant time.
    mac(secret, t, body).verify_slice(&bytes?).ok().map(|()| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let header = signature(b"s3cret", 1_700_000_000, b"{\"events\":[]}");
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(
            verify(b"s3cret", &header, b"{\"events\":[]}"),
            Some(1_700_000_000)
        );
        assert_eq!(verify(b"other", &header, b"{\"events\":[]}"), None);
        assert_eq!(verify(b"s3cret", &header, b"{\"events\":[1]}"), None);
        let shifted = header.replace("t=1700000000", "t=1700000001");
        assert_eq!(verify(b"s3cret", &shifted, b"{\"events\":[]}"), None);
        assert_eq!(verify(b"s3cret", "t=1,v1=zz", b""), None);
    }

    /// The documented vector (docs/protocol.md "Webhooks"), computed independently with
    /// `printf '1700000000.{"events":[]}' | openssl dgst -sha256 -hmac s3cret`.
    #[test]
    fn matches_the_documented_vector() {
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, b"{\"events\":[]}"),
            format!("t=1700000000,v1={}", DOC_VECTOR)
        );
    }

    const DOC_VECTOR: &str = "41b4d3f6c59a79e37d083fb3cbe77f82807c4369fd469fb70cfa75e02d2e2775";
}
