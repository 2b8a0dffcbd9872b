//! docs/protocol.md "Tokens" and the 401 of "Connecting": JWT verification at the handshake, room
//! permissions, user notifications, and a connection that outlives its token.

use std::path::PathBuf;

use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomcast::config::{AuthMode, Config};
use serde_json::{Value, json};

pub(crate) const SECRET: &str = "test-secret-of-reasonable-length";

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys")).join(name)
}

pub(crate) fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode")
}

pub(crate) fn jwt_config() -> Config {
    let mut config = test_config();
    config.auth.mode = AuthMode::Jwt;
    config.auth.jwt_secret = Some(SECRET.into());
    config.auth.leeway_s = 0;
    config
}

pub(crate) fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600})
}

pub(crate) async fn status_of(url: &str, bearer: Option<&str>) -> Result<Client, u16> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    open_ws(url, &headers).await
}

pub(crate) fn with_token(node: &TestNode, token: &str) -> String {
    format!("{}?token={token}", node.ws_url())
}

#[tokio::test]
async fn a_valid_token_in_query_or_header_names_the_user() {
    let node = TestNode::start(jwt_config()).await;
    let token = hs256(claims("alice"));
    let a = status_of(&with_token(&node, &token), None)
        .await
        .expect("query token");
    assert_eq!(a.welcome["user"], "alice");
    let b = status_of(&node.ws_url(), Some(&token))
        .await
        .expect("header token");
    assert_eq!(b.welcome["user"], "alice");
    let numeric = hs256(json!({"sub": 42, "exp": now() + 60}));
    let c = status_of(&with_token(&node, &numeric), None)
        .await
        .expect("numeric sub");
    assert_eq!(c.welcome["user"], "42");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_counted_by_reason() {
    let node = TestNode::start(jwt_config()).await;
    let url = |t: &str| with_token(&node, t);
    let other_secret = encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory"),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .expect("encode");
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &claims("mallory"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let alg_none = unsigned_token(&claims("mallory"));
    let cases = [
        (node.ws_url(), "missing"),
        (url(&hs256(json!({"sub":"a","exp": now() - 10}))), "expired"),
        (
            url(&hs256(
                json!({"sub":"a","exp": now() + 600, "nbf": now() + 300}),
            )),
            "not_yet_valid",
        ),
        (url(&other_secret), "bad_signature"),
        (url(&hs384), "wrong_algorithm"),
        (url(&alg_none), "invalid"),
        (url("not.a.jwt"), "invalid"),
        (url(&hs256(json!({"exp": now() + 60}))), "invalid"),
        (url(&hs256(json!({"sub": "a"}))), "invalid"),
    ];
    for (u, _) in &cases {
        assert_eq!(status_of(u, None).await.err(), Some(401), "{u}");
    }
    let metrics = node.metrics().await;
    for reason in [
        "missing",
        "expired",
        "not_yet_valid",
        "bad_signature",
        "wrong_algorithm",
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!(r#"roomcast_auth_failures_total{{reason="{reason}"}}"#)
            ),
            1.0,
            "{reason}"
        );
    }
    assert!(
        metric(
            &metrics,
            r#"roomcast_auth_failures_total{reason="invalid"}"#
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"roomcast_connections_refused_total{reason="unauthorized"}"#
        ),
        cases.len() as f64
    );
}

/// `alg: none`, no signature.
fn unsigned_token(claims: &Value) -> String {
    use base64_url as b64;
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn rs256_and_es256_public_keys_and_no_algorithm_confusion() {
    for (public, private, alg) in [
        ("rsa_public.pem", "rsa_private.pem", Algorithm::RS256),
        ("ec_public.pem", "ec_private.pem", Algorithm::ES256),
    ] {
        let mut config = test_config();
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwt_public_key_file = Some(key_path(public));
        let node = TestNode::start(config).await;
        let pem = std::fs::read(key_path(private)).expect("private key");
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            _ => EncodingKey::from_ec_pem(&pem),
        }
        .expect("encoding key");
        let token = encode(&Header::new(alg), &claims("bob"), &key).expect("encode");
        let client = status_of(&with_token(&node, &token), None)
            .await
            .expect("valid");
        assert_eq!(client.welcome["user"], "bob");

        // The classic confusion: HS256 signed with the public key as the secret.
        let public_pem = std::fs::read(key_path(public)).expect("public key");
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &claims("mallory"),
            &EncodingKey::from_secret(&public_pem),
        )
        .expect("encode");
        assert_eq!(
            status_of(&with_token(&node, &forged), None).await.err(),
            Some(401)
        );
        assert_eq!(
            status_of(&with_token(&node, &unsigned_token(&claims("m"))), None)
                .await
                .err(),
            Some(401)
        );
    }
}

#[tokio::test]
async fn rooms_and_publish_claims_allow_and_deny() {
    let node = TestNode::start(jwt_config()).await;
    let token = hs256(json!({
        "sub": "carol", "exp": now() + 600,
        "rooms": ["chat:*", "news"], "publish": ["chat:*"]
    }));
    let mut c = status_of(&with_token(&node, &token), None)
        .await
        .expect("connect");
    assert_eq!(c.join("chat:general").await["type"], "joined");
    assert_eq!(c.join("news").await["type"], "joined");
    let denied = c.request(json!({"type":"join","room":"secret"}), "j").await;
    assert_eq!(denied["code"], "forbidden");
    let denied = c
        .request(json!({"type":"join","room":"user:carol"}), "u")
        .await;
    assert_eq!(
        denied["code"], "forbidden",
        "user: rooms are reserved even for their user"
    );

    let ok = c
        .request(
            json!({"type":"publish","room":"chat:general","data":1}),
            "p1",
        )
        .await;
    assert_eq!(ok["type"], "ack");
    let message = c.recv_type("message").await;
    assert_eq!(message["from"], "carol", "from is the user id");
    let denied = c
        .request(json!({"type":"publish","room":"news","data":1}), "p2")
        .await;
    assert_eq!(denied["code"], "forbidden");

    // Without claims: any room, and publish to any joined room.
    let open = hs256(claims("dave"));
    let mut d = status_of(&with_token(&node, &open), None)
        .await
        .expect("connect");
    d.join("anything/at:all").await;
    let ok = d
        .request(
            json!({"type":"publish","room":"anything/at:all","data":1}),
            "p",
        )
        .await;
    assert_eq!(ok["type"], "ack");
}

#[tokio::test]
async fn notifications_reach_every_connection_of_that_user_only() {
    let node = TestNode::start(jwt_config()).await;
    let mut e1 = status_of(&with_token(&node, &hs256(claims("erin"))), None)
        .await
        .expect("e1");
    let mut e2 = status_of(&with_token(&node, &hs256(claims("erin"))), None)
        .await
        .expect("e2");
    let mut f = status_of(&with_token(&node, &hs256(claims("frank"))), None)
        .await
        .expect("f");
    let response = crate::support::http_client()
        .post(node.admin_url("/api/notify"))
        .body(r#"{"user":"erin","data":{"kind":"invoice-paid"}}"#)
        .send()
        .await
        .expect("notify");
    assert_eq!(response.status(), 202);
    for client in [&mut e1, &mut e2] {
        let n = client.recv_type("notification").await;
        assert_eq!(n["data"], json!({"kind":"invoice-paid"}));
        assert!(n["id"].as_str().is_some() && n["ts"].as_u64().is_some());
    }
    // frank's next frame is his own reply, not erin's notification.
    assert_eq!(f.request(json!({"type":"ping"}), "f").await["type"], "pong");
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_when_its_token_expires() {
    let node = TestNode::start(jwt_config()).await;
    let token = hs256(json!({"sub": "gina", "exp": now() + 2}));
    let mut g = status_of(&with_token(&node, &token), None)
        .await
        .expect("connect");
    g.expect_close(4001).await;
}

/// "When `auth.issuer` / `auth.audience` are set, tokens must carry this `iss` / `aud`": a
/// token without the claim is refused like one with another value (found while testing
/// `refresh`, which shares these rules: jsonwebtoken only compared the claims when present).
#[tokio::test]
async fn a_configured_issuer_and_audience_are_required_at_the_handshake() {
    let mut config = jwt_config();
    config.auth.issuer = Some("https://auth.test".into());
    config.auth.audience = Some("roomcast".into());
    let node = TestNode::start(config).await;
    let exp = now() + 600;
    let good =
        hs256(json!({"sub": "ida", "exp": exp, "iss": "https://auth.test", "aud": "roomcast"}));
    let ida = status_of(&with_token(&node, &good), None)
        .await
        .expect("iss and aud as configured");
    assert_eq!(ida.welcome["user"], "ida");
    for claims in [
        json!({"sub": "m", "exp": exp, "aud": "roomcast"}),
        json!({"sub": "m", "exp": exp, "iss": "https://auth.test"}),
        json!({"sub": "m", "exp": exp, "iss": "https://other", "aud": "roomcast"}),
        json!({"sub": "m", "exp": exp, "iss": "https://auth.test", "aud": "other"}),
    ] {
        let url = with_token(&node, &hs256(claims.clone()));
        assert_eq!(status_of(&url, None).await.err(), Some(401), "{claims}");
    }
}
