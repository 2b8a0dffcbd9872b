//! Tokens for nodes that run `auth.mode = "jwt"` with an HS256 shared secret (docs/protocol.md
//! "Tokens"): the load generator plays the app's backend and mints one per connection.
//!
//! Owns the claims (`sub`, `exp`, `iat`, `jti`) and where a token goes on the URL (`?token=`).
//! Which users exist and when they reconnect is the scenarios' business.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::client::Endpoint;

/// Unix seconds on this machine's clock (the nodes', since every target is on loopback).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    jti: &'a str,
}

/// Mints HS256 tokens with one secret.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    /// Seconds a token lives after it is issued.
    pub lifetime_s: u64,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("lifetime_s", &self.lifetime_s)
            .finish_non_exhaustive()
    }
}

impl Minter {
    pub fn new(secret: &str, lifetime_s: u64) -> Minter {
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
            lifetime_s,
        }
    }

    /// A token of `user` issued at `iat` (unix seconds) with id `jti`.
    pub fn mint(&self, user: &str, iat: u64, jti: &str) -> Result<String, String> {
        let claims = Claims {
            sub: user,
            exp: iat + self.lifetime_s,
            iat,
            jti,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| format!("cannot mint a token: {e}"))
    }
}

/// `endpoint` with `token` in its query string. Tokens are base64url and dots: nothing to
/// escape.
pub fn with_token(endpoint: &Endpoint, token: &str) -> Endpoint {
    let sep = if endpoint.url.contains('?') { '&' } else { '?' };
    Endpoint {
        url: format!("{}{sep}token={token}", endpoint.url),
        addr: endpoint.addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_the_claims_revocations_need() {
        let m = Minter::new("s3cret", 600);
        let t = m.mint("v1", 1_000, "v1.3").expect("mint");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .expect("valid");
        assert_eq!(
            data.claims,
            serde_json::json!({"sub": "v1", "exp": 1_600, "iat": 1_000, "jti": "v1.3"})
        );
        let e = Endpoint {
            url: "ws://127.0.0.1:1/ws".into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
        };
        assert_eq!(
            with_token(&e, "a.b.c").url,
            "ws://127.0.0.1:1/ws?token=a.b.c"
        );
        let e = Endpoint {
            url: "ws://127.0.0.1:1/ws?x=1".into(),
            ..e
        };
        assert_eq!(with_token(&e, "t").url, "ws://127.0.0.1:1/ws?x=1&token=t");
    }
}
