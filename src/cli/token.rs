//! `roomcast token`: a JWT for trying a node out, with the claims `auth` reads (`sub`, `exp`,
//! `rooms`, `publish`, and `iss`/`aud` when the node requires them).
//!
//! The node's configuration decides how it is signed: HS256 with `auth.jwt_secret`, or, for a
//! node holding a public key, RS256/ES256 with the private key given by `--key`. Verifying is
//! the library's (`roomcast::auth`).

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomcast::config::{AuthConfig, AuthMode};
use serde::Serialize;

use super::{Failure, load_config};

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Room patterns the user may join (`rooms`, globs with `*` and `?`); repeat the flag for
    /// more. Without it the user may join any room.
    #[arg(long, value_name = "PATTERN", num_args = 1..)]
    rooms: Vec<String>,
    /// Room patterns the user may publish to (`publish`); repeat for more. Without it the user
    /// may publish to any room it joined.
    #[arg(long, value_name = "PATTERN", num_args = 1..)]
    publish: Vec<String>,
    /// Lifetime: seconds (3600) or with a unit (90s, 15m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: u64,
    /// TOML configuration file of the node (auth.jwt_secret, auth.issuer, auth.audience; the
    /// environment's ROOMCAST_AUTH__* apply too).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Private key in PEM (RSA for RS256, EC P-256 for ES256), for a node configured with
    /// auth.jwt_public_key_file.
    #[arg(long, value_name = "PRIVATE_PEM")]
    key: Option<PathBuf>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rooms: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    publish: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

pub fn mint(args: &TokenArgs) -> Result<(), Failure> {
    if args.user.is_empty() {
        return Err(Failure::new("--user must not be empty"));
    }
    let config = load_config(args.config.as_deref())?;
    let auth = &config.auth;
    if auth.mode == AuthMode::None {
        eprintln!("roomcast: note: auth.mode is `none` here: such a node does not check tokens");
    }
    let (algorithm, key) = signing_key(auth, args.key.as_deref())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: &args.user,
        iat: now,
        exp: now.saturating_add(args.ttl),
        rooms: Some(args.rooms.as_slice()).filter(|r| !r.is_empty()),
        publish: Some(args.publish.as_slice()).filter(|p| !p.is_empty()),
        iss: auth.issuer.as_deref(),
        aud: auth.audience.as_deref(),
    };
    let token = encode(&Header::new(algorithm), &claims, &key)
        .map_err(|err| Failure::new(format!("cannot sign the token: {err}")))?;
    println!("{token}");
    Ok(())
}

/// The key the node's verifier expects: its public key's private half when it has one (which
/// is what the node checks first), else its shared secret.
fn signing_key(auth: &AuthConfig, key: Option<&Path>) -> Result<(Algorithm, EncodingKey), Failure> {
    if let Some(path) = key {
        if auth.jwt_public_key_file.is_none() {
            eprintln!(
                "roomcast: note: this configuration has no auth.jwt_public_key_file: its node \
                 verifies HS256 tokens and will refuse this one"
            );
        }
        return private_key(path);
    }
    if let Some(public) = &auth.jwt_public_key_file {
        return Err(Failure::new(format!(
            "the node verifies tokens with the public key {} (auth.jwt_public_key_file): \
             give its private key with --key PRIVATE_PEM",
            public.display()
        )));
    }
    match &auth.jwt_secret {
        Some(secret) => Ok((
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()),
        )),
        None => Err(Failure::new(
            "no signing key: the configuration has no auth.jwt_secret (file or \
             ROOMCAST_AUTH__JWT_SECRET) and no --key PRIVATE_PEM was given",
        )),
    }
}

fn private_key(path: &Path) -> Result<(Algorithm, EncodingKey), Failure> {
    let pem = std::fs::read(path)
        .map_err(|err| Failure::new(format!("--key: cannot read {}: {err}", path.display())))?;
    if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
        Ok((Algorithm::RS256, key))
    } else if let Ok(key) = EncodingKey::from_ec_pem(&pem) {
        Ok((Algorithm::ES256, key))
    } else {
        Err(Failure::new(format!(
            "--key: {} is not an RSA or EC private key in PEM",
            path.display()
        )))
    }
}

/// `3600`, `90s`, `15m`, `1h`, `7d`: seconds, more than 0.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let invalid = || format!("`{text}` is not a duration like 3600, 90s, 15m, 1h or 7d");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    count
        .checked_mul(scale)
        .filter(|&seconds| seconds > 0)
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_take_seconds_or_a_unit() {
        assert_eq!(parse_ttl("3600"), Ok(3600));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        for bad in ["", "0", "h", "1w", "-5", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
