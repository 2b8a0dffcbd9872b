//! Token verification and room permissions (docs/protocol.md "Tokens").
//!
//! Owns the JWT rules (HS256 with a shared secret, or RS256/ES256 with a PEM public key; `exp`
//! and `sub` required, `nbf` honoured, optional `iss`/`aud`, a small leeway) and the glob
//! patterns of the `rooms` and `publish` claims. The same rules serve the handshake and the
//! in-band `refresh` command. Where the token comes from (query, header or `refresh`) and what a
//! refusal costs on the wire are the listener's and the node's; applying permissions is the
//! node's.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::config::{AuthConfig, AuthMode};
use crate::protocol::RoomName;

/// Who a connection belongs to and what it may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: Arc<str>,
    /// Patterns of rooms the user may join; `None` means any room.
    pub rooms: Option<Vec<String>>,
    /// Patterns of rooms the user may publish to; `None` means any joined room.
    pub publish: Option<Vec<String>>,
    /// The token's `exp` claim, seconds since the Unix epoch.
    pub exp: u64,
    /// When the connection must end: `exp` plus `auth.leeway_s`, seconds since the Unix epoch.
    pub expires_at: u64,
    /// `iat`, seconds since the Unix epoch: checked against a user's revocation.
    pub issued_at: Option<u64>,
    /// `jti`: the token's own id, which `/api/revoke` can name.
    pub jti: Option<String>,
    /// `subs`: rooms the connection joins at connect, with no client command (server
    /// subscriptions; they bypass `rooms`).
    pub subs: Vec<RoomName>,
    /// What presence shows of the user (JSON object text): the connect hook's `info`.
    pub info: Option<Arc<str>>,
}

impl Identity {
    pub fn may_join(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob_match(p, room)))
    }

    pub fn may_publish(&self, room: &str) -> bool {
        self.publish
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob_match(p, room)))
    }
}

/// Why a token was refused (a metric label; the client only sees HTTP 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Expired,
    NotYetValid,
    BadSignature,
    WrongAlgorithm,
    Invalid,
    /// Valid, but revoked (`/api/revoke`).
    Revoked,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::Missing,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::BadSignature,
        AuthFailure::WrongAlgorithm,
        AuthFailure::Invalid,
        AuthFailure::Revoked,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::WrongAlgorithm => "wrong_algorithm",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Revoked => "revoked",
        }
    }

    /// Why, in words, for the `error` frame of a refused `refresh`.
    pub fn describe(self) -> &'static str {
        match self {
            AuthFailure::Missing => "no token",
            AuthFailure::Expired => "the token has expired",
            AuthFailure::NotYetValid => "the token is not valid yet (nbf)",
            AuthFailure::BadSignature => "the token's signature does not verify",
            AuthFailure::WrongAlgorithm => "the token is signed with another algorithm",
            AuthFailure::Invalid => {
                "the token is malformed, or its sub, exp, iss or aud is missing or wrong"
            }
            AuthFailure::Revoked => "the token has been revoked",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: serde_json::Value,
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    subs: Vec<String>,
}

/// Verifies tokens; built once from configuration.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

/// Why `auth` settings cannot verify tokens; each names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.jwt_public_key_file: cannot read {}: {source}", path.display())]
    ReadKey {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "auth.jwt_public_key_file: {} is not an RSA or EC public key in PEM",
        path.display()
    )]
    NotAPublicKey { path: std::path::PathBuf },
    #[error("auth.mode: `jwt` needs auth.jwt_secret or auth.jwt_public_key_file")]
    NoKey,
}

impl Authenticator {
    /// `None` when `auth.mode = "none"`.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Authenticator>, AuthConfigError> {
        if config.mode == AuthMode::None {
            return Ok(None);
        }
        let (key, algorithms) = if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
                path: path.clone(),
                source,
            })?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (key, vec![Algorithm::RS256])
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (key, vec![Algorithm::ES256])
            } else {
                return Err(AuthConfigError::NotAPublicKey { path: path.clone() });
            }
        } else if let Some(secret) = &config.jwt_secret {
            (
                DecodingKey::from_secret(secret.as_bytes()),
                vec![Algorithm::HS256],
            )
        } else {
            return Err(AuthConfigError::NoKey);
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = config.leeway_s;
        validation.validate_nbf = true;
        // `sub` is checked below: numeric user ids are accepted as their decimal text. A
        // configured `iss`/`aud` is required, not only compared when present: jsonwebtoken
        // lets a token without the claim through unless it is in this list.
        let mut required = vec!["exp"];
        if config.issuer.is_some() {
            required.push("iss");
        }
        if config.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Some(Authenticator { key, validation }))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthFailure> {
        // The algorithm is pinned by configuration: a header naming another (or `none`) is
        // refused before any signature check, which closes the algorithm-confusion hole.
        let header = decode_header(token).map_err(|_| AuthFailure::Invalid)?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthFailure::WrongAlgorithm);
        }
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm => AuthFailure::WrongAlgorithm,
                _ => AuthFailure::Invalid,
            })?;
        let claims = data.claims;
        let user = match claims.sub {
            serde_json::Value::String(s) if !s.is_empty() => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(AuthFailure::Invalid),
        };
        // A bad room name in `subs` is the backend's mistake: refuse rather than drop it.
        let subs = claims
            .subs
            .iter()
            .map(|room| RoomName::new(room))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| AuthFailure::Invalid)?;
        Ok(Identity {
            user: user.into(),
            rooms: claims.rooms,
            publish: claims.publish,
            exp: claims.exp,
            expires_at: claims.exp.saturating_add(self.validation.leeway),
            issued_at: claims.iat,
            jti: claims.jti,
            subs,
            info: None,
        })
    }
}

/// The token of a handshake: `?token=…` (what browsers can send) or `Authorization: Bearer …`.
pub fn token_from_request(query: Option<&str>, authorization: Option<&str>) -> Option<String> {
    if let Some(query) = query {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("token=")
                && !value.is_empty()
            {
                return Some(form_value_decode(value));
            }
        }
    }
    authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name` in the request's `Cookie` headers (`a=1; b=2`), without the
/// quotes RFC 6265 allows around it; `None` when `name` is empty or absent.
pub fn token_from_cookies<'a>(
    cookies: impl Iterator<Item = &'a str>,
    name: &str,
) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    cookies
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
        .filter(|value| !value.is_empty())
}

/// `application/x-www-form-urlencoded` value decoding: `+` is a space, `%` and two hex digits
/// a byte (anything else stays as it is), invalid UTF-8 replaced.
pub fn form_value_decode(value: &str) -> String {
    let spaced = value.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Glob match: `*` is any run of characters (including none), `?` exactly one; no escapes,
/// every other character is itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

/// A glob pattern parsed once, for patterns matched on every join (`history.rooms`,
/// `presence.rooms`); the same rules as [`glob_match`].
#[derive(Clone, Debug)]
pub struct Glob(WildMatch);

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Glob(WildMatch::new(pattern))
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.matches(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("chat:*", "chat:general"));
        assert!(glob_match("chat:*", "chat:"));
        assert!(!glob_match("chat:*", "chatter"));
        assert!(glob_match("*", "anything/at:all"));
        assert!(glob_match("team-?/news", "team-a/news"));
        assert!(!glob_match("team-?/news", "team-ab/news"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    /// Found by the `auth_inputs` fuzz target (fuzz/regressions/auth_inputs/percent-plus-sign):
    /// `%` and a sign was read as an escape, so `token=%+3` gave the token "\u{3}".
    #[test]
    fn only_two_hex_digits_make_a_percent_escape() {
        assert_eq!(
            token_from_request(Some("token=%+3"), None).as_deref(),
            Some("% 3")
        );
        assert_eq!(
            token_from_request(Some("token=%-1a"), None).as_deref(),
            Some("%-1a")
        );
        assert_eq!(
            token_from_request(Some("token=%4a%4A"), None).as_deref(),
            Some("JJ")
        );
    }

    /// Found by the `auth_inputs` fuzz target (fuzz/regressions/auth_inputs/star-in-text):
    /// a `*` in the pattern was matched literally against a `*` in the text, with no way back,
    /// so `*` did not match `**`.
    #[test]
    fn a_star_stays_a_wildcard_where_the_text_has_a_star() {
        assert!(glob_match("*", "**"));
        assert!(glob_match("*", "*a"));
        assert!(glob_match("a*", "a*b"));
        assert!(glob_match("*b", "**b"));
        assert!(!glob_match("*b", "**c"));
    }

    #[test]
    fn tokens_come_from_query_or_header() {
        assert_eq!(
            token_from_request(Some("a=1&token=abc.def"), None).as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            token_from_request(Some("token=a%2Eb"), None).as_deref(),
            Some("a.b")
        );
        assert_eq!(
            token_from_request(None, Some("Bearer xyz")).as_deref(),
            Some("xyz")
        );
        assert_eq!(token_from_request(Some("token="), Some("Basic xyz")), None);
        assert_eq!(token_from_request(None, None), None);
        let cookies = ["theme=dark; rc=abc.def", "other=1"];
        assert_eq!(
            token_from_cookies(cookies.into_iter(), "rc").as_deref(),
            Some("abc.def")
        );
        assert_eq!(
            token_from_cookies(["rc=\"q\""].into_iter(), "rc").as_deref(),
            Some("q")
        );
        assert_eq!(token_from_cookies(cookies.into_iter(), "nope"), None);
        assert_eq!(token_from_cookies(cookies.into_iter(), ""), None);
        assert_eq!(
            token_from_request(Some("token=%zz"), None).as_deref(),
            Some("%zz")
        );
        assert_eq!(
            token_from_request(Some("token=ab%"), None).as_deref(),
            Some("ab%")
        );
    }
}
