//! docs/protocol.md "Tokens" (issue 18): `refresh {token}` replaces a connection's token in
//! band, and `token_expiring {in_ms}` comes `auth.expiry_warning_ms` before the token runs out.
//! Real nodes in JWT mode (HS256), real clients. A connection's survival past its old expiry is
//! shown against a twin connection with the same `exp` that is not refreshed: its close 4001 is
//! the event awaited, never a sleep.

use crate::auth::{SECRET, claims, hs256, jwt_config, now, status_of, with_token};
use crate::support::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use roomcast::config::Config;
use serde_json::{Value, json};

/// A connection of `sub` with a token expiring at `exp`.
async fn connect(node: &TestNode, sub: &str, exp: u64) -> Client {
    let token = hs256(json!({"sub": sub, "exp": exp}));
    status_of(&with_token(node, &token), None)
        .await
        .expect("connect")
}

/// Send `refresh` with an id and return every frame up to and including its reply.
async fn refresh(client: &mut Client, token: &str, id: &str) -> Vec<Value> {
    client
        .send_json(json!({"type": "refresh", "token": token, "id": id}))
        .await;
    let mut frames = Vec::new();
    loop {
        let frame = client.recv_json().await;
        let done = frame["id"] == json!(id);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// The reply to a refresh that must be refused, and nothing before it but room traffic.
async fn refused(client: &mut Client, token: &str, id: &str) -> Value {
    let frames = refresh(client, token, id).await;
    let reply = frames.last().cloned().unwrap_or_default();
    assert_eq!(reply["type"], "error", "refused: {frames:?}");
    for frame in &frames[..frames.len() - 1] {
        assert_ne!(
            frame["type"], "left",
            "a refused refresh leaves no room: {frames:?}"
        );
    }
    reply
}

/// Publish through the admin API (what a service does).
async fn publish(node: &TestNode, room: &str, data: Value) {
    let response = crate::support::http_client()
        .post(node.admin_url("/api/publish"))
        .json(&json!({"room": room, "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
}

/// The warning far enough from these tests' short tokens that it only comes where a test
/// awaits it.
fn quiet_warning(mut config: Config) -> Config {
    config.auth.expiry_warning_ms = 1;
    config
}

#[tokio::test]
async fn a_refresh_moves_the_expiry_and_the_connection_outlives_its_first_token() {
    let node = TestNode::start(quiet_warning(jwt_config())).await;
    let old_exp = now() + 2;
    let mut twin = connect(&node, "ann", old_exp).await;
    let mut ann = connect(&node, "ann", old_exp).await;
    ann.join("news").await;
    let new_exp = now() + 600;
    let frames = refresh(
        &mut ann,
        &hs256(json!({"sub": "ann", "exp": new_exp})),
        "r1",
    )
    .await;
    assert_eq!(
        frames,
        [json!({"type": "refreshed", "exp": new_exp, "id": "r1"})],
        "the reply names the new exp"
    );

    // The twin, with the same first token, is closed at the old expiry...
    twin.expect_close(4001).await;
    // ...while the refreshed connection still gets the room's traffic, and answers.
    publish(&node, "news", json!("after the old exp")).await;
    let message = ann.recv_type("message").await;
    assert_eq!(message["data"], "after the old exp");
    assert_eq!(
        ann.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
    let metrics = node.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"roomcast_disconnects_total{reason="token_expired"}"#
        ),
        1.0,
        "only the twin expired"
    );
}

#[tokio::test]
async fn narrower_claims_leave_forbidden_rooms_and_hold_for_publishing() {
    let node = TestNode::start(jwt_config()).await;
    let exp = now() + 600;
    let first = hs256(json!({
        "sub": "bea", "exp": exp, "rooms": ["team:*", "lobby"], "publish": ["team:*", "lobby"]
    }));
    let mut bea = status_of(&with_token(&node, &first), None)
        .await
        .expect("connect");
    bea.join("team:1").await;
    bea.join("lobby").await;
    let ok = bea
        .request(
            json!({"type":"publish","room":"lobby","data":0,"echo":false}),
            "p0",
        )
        .await;
    assert_eq!(ok["type"], "ack", "allowed before the refresh");

    let narrower = hs256(json!({
        "sub": "bea", "exp": exp, "rooms": ["team:*"], "publish": []
    }));
    let frames = refresh(&mut bea, &narrower, "r").await;
    assert_eq!(
        frames,
        [
            json!({"type": "left", "room": "lobby", "reason": "forbidden"}),
            json!({"type": "refreshed", "exp": exp, "id": "r"}),
        ],
        "the forbidden room is left before the reply"
    );

    // Out of the lobby: its traffic no longer comes, the team room's still does (one
    // publisher, so the lobby message would have been delivered first).
    let mut other = connect(&node, "other", exp).await;
    other.join("lobby").await;
    other.join("team:1").await;
    for (room, id) in [("lobby", "o1"), ("team:1", "o2")] {
        let ack = other
            .request(json!({"type":"publish","room":room,"data":room}), id)
            .await;
        assert_eq!(ack["type"], "ack");
    }
    let next = bea.recv_json().await;
    assert_eq!(
        (next["type"].as_str(), next["room"].as_str()),
        (Some("message"), Some("team:1")),
        "{next}"
    );

    // The new claims hold: no publishing at all, no way back into the lobby.
    let denied = bea
        .request(json!({"type":"publish","room":"team:1","data":1}), "p1")
        .await;
    assert_eq!(
        denied["code"], "forbidden",
        "publish claim applied: {denied}"
    );
    let denied = bea
        .request(json!({"type":"join","room":"lobby"}), "j")
        .await;
    assert_eq!(denied["code"], "forbidden", "rooms claim applied: {denied}");
    let denied = bea
        .request(json!({"type":"publish","room":"lobby","data":1}), "p2")
        .await;
    assert_eq!(denied["code"], "not_joined", "{denied}");
}

#[tokio::test]
async fn another_users_token_is_refused_and_the_connection_stays_its_own() {
    let node = TestNode::start(jwt_config()).await;
    let mut cid = connect(&node, "cid", now() + 600).await;
    cid.join("room").await;
    let reply = refused(&mut cid, &hs256(claims("mallory")), "r").await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("another user")),
        "{reply}"
    );
    // Still open, still cid's, still in its room.
    let ack = cid
        .request(json!({"type":"publish","room":"room","data":"me"}), "p")
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(cid.recv_type("message").await["from"], "cid");
}

#[tokio::test]
async fn tokens_the_handshake_would_refuse_are_refused_and_the_old_expiry_holds() {
    let mut config = quiet_warning(jwt_config());
    config.auth.issuer = Some("https://auth.test".into());
    let node = TestNode::start(config).await;
    let iss = "https://auth.test";
    let token = hs256(json!({"sub": "dee", "exp": now() + 2, "iss": iss}));
    let mut dee = status_of(&with_token(&node, &token), None)
        .await
        .expect("connect");
    let later = now() + 600;
    let other_secret = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "dee", "exp": later, "iss": iss}),
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .expect("encode");
    let hs384 = encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "dee", "exp": later, "iss": iss}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let cases = [
        (
            hs256(json!({"sub": "dee", "exp": now() - 10, "iss": iss})),
            "expired",
        ),
        (other_secret, "signature"),
        (hs384, "algorithm"),
        (
            hs256(json!({"sub": "dee", "exp": later, "iss": "https://elsewhere"})),
            "iss",
        ),
        (hs256(json!({"sub": "dee", "exp": later})), "iss"),
        (
            hs256(json!({"sub": "dee", "exp": later, "nbf": later - 60, "iss": iss})),
            "nbf",
        ),
        ("not.a.jwt".to_owned(), "malformed"),
    ];
    for (i, (token, why)) in cases.iter().enumerate() {
        let reply = refused(&mut dee, token, &format!("r{i}")).await;
        assert_eq!(reply["code"], "invalid_token", "{why}: {reply}");
        assert!(
            reply["message"].as_str().is_some_and(|m| m.contains(why)),
            "the message says why ({why}): {reply}"
        );
    }
    assert_eq!(
        dee.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
    // Nothing was refreshed: the first token's expiry still closes the connection.
    dee.expect_close(4001).await;
}

#[tokio::test]
async fn the_warning_comes_once_per_token_before_expiry_and_a_refresh_needs_no_reconnect() {
    let mut config = jwt_config();
    config.auth.expiry_warning_ms = 1_500;
    let node = TestNode::start(config).await;
    let first_exp = now() + 2;
    let mut twin = connect(&node, "eve", first_exp).await;
    let mut eve = connect(&node, "eve", first_exp).await;

    let warning = eve.recv_json().await;
    assert_eq!(warning["type"], "token_expiring", "{warning}");
    let in_ms = warning["in_ms"].as_u64().expect("in_ms");
    assert!(
        in_ms > 0 && in_ms <= 1_500,
        "sent before the expiry: {warning}"
    );

    // A second token gets a warning of its own.
    let second_exp = first_exp + 1;
    let second = hs256(json!({"sub": "eve", "exp": second_exp}));
    let frames = refresh(&mut eve, &second, "r1").await;
    assert_eq!(
        frames,
        [json!({"type": "refreshed", "exp": second_exp, "id": "r1"})]
    );
    let warning = eve.recv_json().await;
    assert_eq!(warning["type"], "token_expiring", "{warning}");
    let frames = refresh(&mut eve, &hs256(claims("eve")), "r2").await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "refreshed");

    // The twin is warned once, then closed at the first token's expiry.
    let mut warnings = 0;
    loop {
        match twin.recv().await {
            Received::Json(frame) if frame["type"] == "token_expiring" => warnings += 1,
            Received::Close(code) => {
                assert_eq!(code, Some(4001));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(warnings, 1, "one warning per token");

    // Past both earlier expiries eve is on her first connection: same socket, no new welcome.
    eve.join("after").await;
    publish(&node, "after", json!("still here")).await;
    let next = eve.recv_json().await;
    assert_eq!(
        (next["type"].as_str(), &next["data"]),
        (Some("message"), &json!("still here"))
    );
    let metrics = node.metrics().await;
    assert_eq!(
        metric(&metrics, "roomcast_connections_accepted_total"),
        2.0,
        "no reconnect: the twin and eve only"
    );
}

#[tokio::test]
async fn without_authentication_refresh_is_refused_and_nothing_warns() {
    let node = TestNode::start(test_config()).await;
    let mut anon = node.connect().await;
    let reply = refused(&mut anon, &hs256(claims("anyone")), "r").await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("auth.mode")),
        "the message names the setting: {reply}"
    );
    assert_eq!(anon.welcome["user"], Value::Null);
    assert_eq!(
        anon.request(json!({"type": "ping"}), "p").await["type"],
        "pong"
    );
}

/// POST an admin route; 202 expected (the control plane's routes).
async fn post_accepted(node: &TestNode, path: &str, body: Value) {
    let response = crate::support::http_client()
        .post(node.admin_url(path))
        .json(&body)
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status(), 202, "{path} {body}");
}

#[tokio::test]
async fn a_revoked_token_is_refused_as_a_refresh_and_the_connection_keeps_its_own() {
    let node = TestNode::start(jwt_config()).await;
    let exp = now() + 600;
    let token = |jti: &str| hs256(json!({"sub": "ada", "exp": exp, "iat": now(), "jti": jti}));
    let mut ada = status_of(&with_token(&node, &token("live")), None)
        .await
        .expect("connect");
    ada.join("room").await;
    // The revocation names a token no connection uses, so it closes nothing.
    post_accepted(
        &node,
        "/api/revoke",
        json!({"jti": "stolen", "until": now() + 600}),
    )
    .await;
    let reply = refused(&mut ada, &token("stolen"), "r").await;
    assert_eq!(reply["code"], "invalid_token", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{reply}"
    );
    let ack = ada
        .request(json!({"type":"publish","room":"room","data":"mine"}), "p")
        .await;
    assert_eq!(ack["type"], "ack", "still open with its own token: {ack}");
    let frames = refresh(&mut ada, &token("fresh"), "r2").await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "refreshed", "exp": exp, "id": "r2"})),
        "an unrevoked token still refreshes: {frames:?}"
    );
}

#[tokio::test]
async fn a_narrower_refresh_keeps_the_rooms_the_backend_joined() {
    let node = TestNode::start(jwt_config()).await;
    let exp = now() + 600;
    let first = hs256(json!({"sub": "kai", "exp": exp, "rooms": ["lobby"]}));
    let mut kai = status_of(&with_token(&node, &first), None)
        .await
        .expect("connect");
    kai.join("lobby").await;
    post_accepted(
        &node,
        "/api/subscribe",
        json!({"user": "kai", "room": "team:7"}),
    )
    .await;
    let joined = kai.recv_type("joined").await;
    assert_eq!(
        (&joined["room"], &joined["server"]),
        (&json!("team:7"), &json!(true))
    );

    let narrower = hs256(json!({"sub": "kai", "exp": exp, "rooms": []}));
    let frames = refresh(&mut kai, &narrower, "r").await;
    assert_eq!(
        frames,
        [
            json!({"type": "left", "room": "lobby", "reason": "forbidden"}),
            json!({"type": "refreshed", "exp": exp, "id": "r"}),
        ],
        "the client's room is left, the backend's is not"
    );
    publish(&node, "team:7", json!("for the team")).await;
    let message = kai.recv_type("message").await;
    assert_eq!(
        (&message["room"], &message["data"]),
        (&json!("team:7"), &json!("for the team"))
    );
}
