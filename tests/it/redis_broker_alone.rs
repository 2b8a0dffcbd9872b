//! The Redis broker (issue 4) on its own, without a node around it, against a real
//! `redis-server`, where no client can show the behaviour yet: user channels end to end, the
//! unsubscribe grace, starting before Redis is up, the liveness probe on a silent link, TLS
//! and a password. Nodes with clients on the same broker are in `redis_broker`.
//!
//! Every test starts its own `redis-server` and uses its own channel prefix; every wait is
//! bounded by `support::WAIT`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use roomcast::broker::redis::{RedisBroker, Timings};
use roomcast::broker::{BrokerError, BrokerEvent, Envelope, Origin, PubSub, Target};
use roomcast::config::RedisConfig;
use roomcast::metrics::Metrics;
use roomcast::protocol::data_from_payload;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn unique_prefix(test: &str) -> String {
    crate::support::unique_prefix("rc-test", test)
}

fn broker_config(url: String, prefix: &str) -> RedisConfig {
    RedisConfig {
        url,
        prefix: prefix.to_owned(),
        ..RedisConfig::default()
    }
}

fn quick_timings() -> Timings {
    Timings {
        unsubscribe_grace: Duration::from_millis(200),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Timings::default()
    }
}

/// A broker on its own, no node around it, with a fresh metrics registry: the broker, its
/// event queue and its metrics.
fn start_lone_broker(
    config: &RedisConfig,
    timings: Timings,
) -> (RedisBroker, mpsc::Receiver<BrokerEvent>, Arc<Metrics>) {
    let (tx, rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::new());
    let broker = RedisBroker::start_with(config, tx, metrics.clone(), timings).expect("start");
    (broker, rx, metrics)
}

/// A lone broker on `redis` with a unique prefix and quick timings, once it reports `Up`.
/// Returns it and its prefix.
async fn lone_broker_up(
    redis: &RedisServer,
    test: &str,
) -> (
    RedisBroker,
    mpsc::Receiver<BrokerEvent>,
    Arc<Metrics>,
    String,
) {
    let prefix = unique_prefix(test);
    let (broker, mut rx, metrics) =
        start_lone_broker(&broker_config(redis.url(), &prefix), quick_timings());
    expect_up(&mut rx, false).await;
    (broker, rx, metrics, prefix)
}

/// The next event must be `Up`, `resumed` as given.
async fn expect_up(rx: &mut mpsc::Receiver<BrokerEvent>, resumed: bool) {
    let event = next_event(rx).await;
    assert!(
        matches!(event, BrokerEvent::Up { resumed: r } if r == resumed),
        "expected Up {{ resumed: {resumed} }}, got {event:?}"
    );
}

/// The next event, skipping nothing.
async fn next_event(rx: &mut mpsc::Receiver<BrokerEvent>) -> BrokerEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a broker event in time")
        .expect("broker event queue open")
}

async fn next_publication(rx: &mut mpsc::Receiver<BrokerEvent>) -> Envelope {
    match next_event(rx).await {
        BrokerEvent::Publication(envelope) => envelope,
        other => panic!("expected a publication, got {other:?}"),
    }
}

fn envelope(target: Target, id: &str, data: &str) -> Envelope {
    Envelope {
        target,
        id: id.to_owned(),
        data: data_from_payload(data.as_bytes()),
        from: "c1".to_owned(),
        ts: 1,
        origin: Some(Origin {
            node: "n1".to_owned(),
            conn: 7,
            echo: false,
        }),
        key: None,
    }
}

/// The broker on its own: a user channel end to end, and a publish through the broker comes
/// back as it went.
#[tokio::test]
async fn the_broker_alone_delivers_user_channels_and_its_own_publishes() {
    let redis = RedisServer::start();
    let (broker, mut rx, metrics, prefix) = lone_broker_up(&redis, "user").await;
    assert!(broker.is_up());

    let user = Target::User("42".into());
    broker.subscribe(user.clone()).await.expect("subscribe");
    let mut conn = redis_conn(&redis.url()).await;
    let n = raw_publish(
        &mut conn,
        &format!("{prefix}user:42"),
        r#"{"data":{"kind":"invoice-paid"}}"#,
    )
    .await;
    assert_eq!(n, 1);
    let e = next_publication(&mut rx).await;
    assert_eq!(e.target, user);
    assert_eq!(e.data.get(), r#"{"kind":"invoice-paid"}"#);
    assert_eq!(e.from, "server");
    assert!(e.origin.is_none());
    assert!(!e.id.is_empty());
    let second = {
        raw_publish(&mut conn, &format!("{prefix}user:42"), "2").await;
        next_publication(&mut rx).await
    };
    assert_ne!(second.id, e.id, "external payloads get fresh ids");

    // A publish through the broker comes back as it went, origin included.
    broker
        .publish(envelope(user.clone(), "n1-1", r#"{"k":1}"#))
        .await
        .expect("publish");
    let e = next_publication(&mut rx).await;
    assert_eq!((e.id.as_str(), e.from.as_str(), e.ts), ("n1-1", "c1", 1));
    assert_eq!(e.origin, envelope(user.clone(), "", "1").origin);
    assert_eq!(e.data.get(), r#"{"k":1}"#);

    broker.unsubscribe(user).await.expect("unsubscribe");
    let users = format!("{prefix}user:*");
    wait_no_channels(&conn, &users, "the user channel goes after the grace").await;
    assert!(metrics.pubsub_lag.get_sample_count() >= 3);
    assert!(metrics.broker_roundtrip.get_sample_count() >= 1);
}

#[tokio::test]
async fn a_resubscribe_within_the_grace_keeps_the_subscription() {
    let redis = RedisServer::start();
    let (broker, mut rx, metrics, prefix) = lone_broker_up(&redis, "grace").await;
    let mut conn = redis_conn(&redis.url()).await;
    let x = Target::Room("x".into());
    let y = Target::Room("y".into());

    broker.subscribe(x.clone()).await.expect("subscribe x");
    broker.unsubscribe(x.clone()).await.expect("unsubscribe x");
    broker
        .subscribe(x.clone())
        .await
        .expect("subscribe x again");
    // Y's grace ends after X's would have: once Y is gone, X's pending unsubscribe is past.
    broker.subscribe(y.clone()).await.expect("subscribe y");
    broker.unsubscribe(y).await.expect("unsubscribe y");
    let y_channel = format!("{prefix}room:y");
    wait_numsub(&conn, &y_channel, 0, "y unsubscribed after its grace").await;
    assert_eq!(
        numsub(&mut conn, &format!("{prefix}room:x")).await,
        1,
        "x stays subscribed"
    );
    assert_eq!(metrics.broker_subscriptions.get(), 1);
    // And it still delivers.
    raw_publish(&mut conn, &format!("{prefix}room:x"), "still here").await;
    assert_eq!(next_publication(&mut rx).await.target, x);
}

#[tokio::test]
async fn start_does_not_need_redis_and_connects_when_it_comes() {
    let port = free_port();
    let prefix = unique_prefix("late");
    let started = Instant::now();
    let (broker, mut rx, _) = start_lone_broker(
        &broker_config(format!("redis://127.0.0.1:{port}"), &prefix),
        quick_timings(),
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(!broker.is_up());
    let started = Instant::now();
    let err = broker
        .publish(envelope(Target::Broadcast, "n1-1", "1"))
        .await
        .expect_err("no redis, no publish");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(100), "fails fast");

    let _redis = RedisServer::start_on(port);
    expect_up(&mut rx, false).await;
    assert!(broker.is_up());
    broker
        .subscribe(Target::Broadcast)
        .await
        .expect("subscribe");
    broker
        .publish(envelope(Target::Broadcast, "n1-2", "2"))
        .await
        .expect("publish");
    assert_eq!(next_publication(&mut rx).await.id, "n1-2");
}

/// A TCP proxy in front of Redis whose connections can be frozen: bytes stop flowing both ways
/// but the sockets stay open, like a network that silently drops everything. Connections made
/// after a freeze flow normally.
struct FreezingProxy {
    port: u16,
    freeze: Arc<Mutex<CancellationToken>>,
    shutdown: CancellationToken,
}

impl FreezingProxy {
    async fn start(upstream: u16) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let freeze = Arc::new(Mutex::new(CancellationToken::new()));
        let shutdown = CancellationToken::new();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (f, s) = (freeze.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = s.cancelled() => break,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    break;
                };
                let frozen = f.lock().expect("freeze lock").clone();
                let (s, held) = (s.clone(), held.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = s.cancelled() => false,
                        _ = frozen.cancelled() => true,
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                    };
                    if froze {
                        held.lock().expect("held lock").extend([inbound, outbound]);
                        s.cancelled().await;
                    }
                });
            }
        });
        FreezingProxy {
            port,
            freeze,
            shutdown,
        }
    }

    fn freeze_open_connections(&self) {
        let mut token = self.freeze.lock().expect("freeze lock");
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn the_probe_catches_a_subscription_that_went_silent() {
    let redis = RedisServer::start();
    let proxy = FreezingProxy::start(redis.port).await;
    let prefix = unique_prefix("probe");
    let mut config = broker_config(format!("redis://127.0.0.1:{}", proxy.port), &prefix);
    config.command_timeout_ms = 300;
    let (broker, mut rx, metrics) = start_lone_broker(
        &config,
        Timings {
            probe_idle: Duration::from_millis(200),
            probe_every: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            ..quick_timings()
        },
    );
    expect_up(&mut rx, false).await;
    let room = Target::Room("x".into());
    broker.subscribe(room.clone()).await.expect("subscribe");
    let mut direct = redis_conn(&redis.url()).await;
    let channel = format!("{prefix}room:x");
    raw_publish(&mut direct, &channel, "1").await;
    assert_eq!(next_publication(&mut rx).await.data.get(), "1");
    eventually("a probe came back", || async {
        metrics.broker_roundtrip.get_sample_count() >= 2
    })
    .await;

    proxy.freeze_open_connections();
    // Published while frozen: lost for this node (at most once), and the link is silent.
    raw_publish(&mut direct, &channel, "2").await;
    assert!(matches!(next_event(&mut rx).await, BrokerEvent::Down));
    assert!(!broker.is_up());
    expect_up(&mut rx, true).await;
    assert!(broker.is_up());
    raw_publish(&mut direct, &channel, "3").await;
    assert_eq!(next_publication(&mut rx).await.data.get(), "3");
}

/// `rediss://` and a password in the URL, through the redis crate's URL parsing. The server's
/// certificate is signed by a CA made for the test, trusted through `redis.tls_ca_file`.
#[tokio::test]
async fn tls_and_a_password_in_the_url_work() {
    let dir = std::env::temp_dir().join(format!("roomcast-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    crate::support::tls::make_server_certificate(&dir, &ca, &cert, &key);
    let port = free_port();
    let (ca_s, cert_s, key_s) = (
        ca.to_string_lossy().into_owned(),
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let port_s = port.to_string();
    let redis = RedisServer::start_with_args(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            &cert_s,
            "--tls-key-file",
            &key_s,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "s3cret",
        ],
    );
    let prefix = unique_prefix("tls");
    let (tx, mut rx) = mpsc::channel(64);
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/");
    let config = RedisConfig {
        tls_ca_file: ca.to_string_lossy().into_owned(),
        ..broker_config(url, &prefix)
    };
    let broker = RedisBroker::start_with(&config, tx, Arc::new(Metrics::new()), quick_timings())
        .expect("start");
    assert!(matches!(
        next_event(&mut rx).await,
        BrokerEvent::Up { resumed: false }
    ));
    let room = Target::Room("secure".into());
    broker.subscribe(room.clone()).await.expect("subscribe");
    broker
        .publish(envelope(room.clone(), "n1-1", "\"over tls\""))
        .await
        .expect("publish");
    let e = next_publication(&mut rx).await;
    assert_eq!((e.target, e.data.get()), (room, "\"over tls\""));
    drop(broker);
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
