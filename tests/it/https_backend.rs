//! An `https://` backend (issue 19): the connect hook and the webhooks reach it over TLS,
//! trusting the platform's roots (here `SSL_CERT_FILE`, a CA the test made), and a node that
//! does not trust its certificate fails closed (handshake 503) instead of sending in clear.
//! The real binary (the variable is read at start), a real `redis-server`, a real HTTP backend
//! behind a TLS-terminating proxy.

use serde_json::json;

use crate::support::backend::{Backend, Reply};
use crate::support::tls::{TlsProxy, make_server_certificate};
use crate::support::*;

/// The handshake's HTTP status, or the welcome's `user` and the client, joined to `chat:tls`.
async fn connect_with_cookie(url: &str) -> Result<(String, Client), u16> {
    let mut client = open_ws(url, &[("cookie", "session=alice")]).await?;
    client
        .send_json(json!({"type": "join", "room": "chat:tls"}))
        .await;
    assert_eq!(client.recv_type("joined").await["room"], "chat:tls");
    let user = client.welcome["user"].as_str().unwrap_or("").to_owned();
    Ok((user, client))
}

#[tokio::test]
async fn hooks_and_webhooks_reach_an_https_backend_and_an_untrusted_one_fails_closed() {
    let dir = std::env::temp_dir().join(format!("roomcast-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    make_server_certificate(&dir, &ca, &cert, &key);

    let backend = Backend::start(|seen| match seen.path.as_str() {
        "/connect" if seen.body["headers"]["cookie"] == "session=alice" => {
            Reply::json(json!({"user": "alice"}))
        }
        "/events" => Reply::json(json!({})),
        _ => Reply::status(401),
    })
    .await;
    let proxy = TlsProxy::start(&cert, &key, backend.addr).await;
    let base = format!("https://127.0.0.1:{}", proxy.addr.port());
    let config = format!(
        "[[presence.rooms]]\npattern = \"chat:*\"\nevents = true\n\
         [hooks]\nconnect_url = \"{base}/connect\"\n\
         [webhooks]\nurl = \"{base}/events\"\nsecret = \"https-test\"\npoll_ms = 20\n\
         retry_initial_ms = 20\nretry_max_ms = 100\n"
    );
    let redis = RedisServer::start();
    let prefix = unique_prefix("rc-https", "trusted");
    let ca_path = ca.to_string_lossy().into_owned();
    let (_trusting, url) = BinaryOnRedis::new(&redis, &prefix, &config)
        .env("SSL_CERT_FILE", &ca_path)
        .spawn()
        .await;
    let (user, _alice) = connect_with_cookie(&url).await.expect("let in");
    assert_eq!(user, "alice");
    // The join's webhook event went out over TLS too, signed.
    backend
        .wait_for(2, "the connect hook call and a webhook POST")
        .await;
    let event = backend
        .seen()
        .into_iter()
        .find(|seen| seen.path == "/events")
        .expect("a webhook POST");
    assert_eq!(
        event.body["events"][0]["type"], "room_occupied",
        "{}",
        event.body
    );
    assert!(event.headers.contains_key("x-roomcast-signature"));

    // Without the CA the certificate is not trusted: no identity, a 503, nothing sent in clear.
    let before = backend.seen().len();
    let other = unique_prefix("rc-https", "untrusted");
    let (_untrusting, url) = BinaryOnRedis::new(&redis, &other, &config)
        .env("SSL_CERT_FILE", "/nonexistent")
        .spawn()
        .await;
    assert_eq!(connect_with_cookie(&url).await.err(), Some(503));
    assert_eq!(
        backend.seen().len(),
        before,
        "the backend was never reached"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
