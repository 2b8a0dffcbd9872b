//! A small `kick` run against two roomcast nodes started in this process on port 0, on one
//! `redis-server` of the test's own (auth.mode = "jwt"): victims are kicked, forbidden and
//! revoked through both admin ports while publishers run, and every other member must receive
//! every message of its room, in order, once; and when the backend kicks one of those members
//! instead, the run fails. The Redis server is killed and the nodes stopped when a test ends,
//! also on failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roomcast::config::{AuthMode, BrokerKind, Config};
use roomcast::{Listeners, run};
use roomcast_loadtest::Common;
use roomcast_loadtest::scenario::kick::{self, Action, KickParams};
use roomcast_loadtest::schedule::ScheduleParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const SECRET: &str = "kick-test-secret";

/// A `redis-server` on a free loopback port, no persistence; killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        let redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node on 127.0.0.1:0 on `redis`; shut down when dropped.
struct Node {
    url: String,
    admin: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(redis: &Redis, name: &str) -> Node {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.admin.listen = "127.0.0.1:0".into();
        config.server.node_id = name.into();
        config.server.connect_rate_per_ip = 100_000;
        config.server.shutdown_grace_ms = 1_000;
        config.broker.kind = BrokerKind::Redis;
        config.redis.url = format!("redis://127.0.0.1:{}", redis.port);
        config.redis.prefix = "kicktest:".into();
        config.auth.mode = AuthMode::Jwt;
        config.auth.jwt_secret = Some(SECRET.into());
        // Room member counts (`GET /api/rooms/ROOM`) a tenth of a second old at most.
        config.admin.stats_interval_ms = 100;
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let url = format!("ws://{}/ws", ws.local_addr().expect("addr"));
        let admin_addr = admin.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = run(Listeners { ws, admin }, config, async move {
                let _ = rx.await;
            })
            .await;
        });
        let node = Node {
            url,
            admin: format!("http://{admin_addr}"),
            shutdown: Some(tx),
            handle,
        };
        // Ready = accepting clients and subscribed to the broker.
        let deadline = Instant::now() + Duration::from_secs(10);
        while get_status(admin_addr, "/readyz").await != Some(200) {
            assert!(Instant::now() < deadline, "{name} never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.handle).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.abort();
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut reply))
        .await
        .ok()?
        .ok()?;
    let status = roomcast_loadtest::admin::status_of(&reply)?;
    let text = String::from_utf8_lossy(&reply);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

async fn get_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    get(addr, path).await.map(|(status, _)| status)
}

fn common(a: &Node, b: &Node) -> Common {
    Common {
        urls: vec![a.url.clone(), b.url.clone()],
        connect_phase_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(5),
        ..Common::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_and_revocations_under_load_lose_no_other_members_messages() {
    let redis = Redis::start();
    let a = Node::start(&redis, "kick-a").await;
    let b = Node::start(&redis, "kick-b").await;
    let common = common(&a, &b);
    let params = KickParams {
        rooms: 2,
        members: 4,
        victims: 2,
        schedule: ScheduleParams::new(60.0, 3.0),
        drain_s: 5.0,
        kick_every_s: 0.1,
        admin_urls: vec![a.admin.clone(), b.admin.clone()],
        jwt_secret: SECRET.into(),
        ..KickParams::default()
    };
    let r = kick::run(&common, &params).await.expect("kick runs");
    eprintln!("{}", r.text());
    a.stop().await;
    b.stop().await;
    drop(redis);

    assert_eq!((r.watchers_joined, r.victims_joined), (8, 4), "{r:?}");
    assert_eq!(r.sent_msgs, 180, "{}", r.text());
    assert_eq!(
        r.acked_msgs,
        180,
        "every publish is acknowledged: {}",
        r.text()
    );
    // Every kind of action was done, through both nodes, and each closed its victim with
    // the code it promises.
    for action in [Action::Kick, Action::Forbid, Action::Revoke] {
        let done = r.actions_done.get(&action).copied().unwrap_or(0);
        assert!(done >= 1, "{action:?} never done: {}", r.text());
        assert_eq!(
            r.victims_closed_expected.get(&action).copied().unwrap_or(0),
            done,
            "{action:?}: {}",
            r.text()
        );
    }
    assert!(r.actions_done.values().sum::<u64>() >= 10, "{}", r.text());
    assert!(r.action_errors.is_empty(), "{}", r.text());
    assert!(r.victims_closed_wrong.is_empty(), "{}", r.text());
    assert_eq!(r.victims_not_closed, 0, "{}", r.text());
    assert!(r.victim_reconnects >= 1, "{}", r.text());
    // The rule: the other members lost, repeated and reordered nothing, and stayed.
    assert_eq!(r.expected_deliveries, 180 * 4, "{}", r.text());
    assert_eq!(r.received_acked, r.expected_deliveries, "{}", r.text());
    assert_eq!(
        (
            r.lost,
            r.duplicates,
            r.out_of_order,
            r.order_disagreements,
            r.misrouted
        ),
        (0, 0, 0, 0, 0),
        "{}",
        r.text()
    );
    assert!(r.watchers_closed.is_empty(), "{}", r.text());
    assert!(r.pass, "{}", r.text());
    let line: serde_json::Value = serde_json::from_str(&r.json_line()).expect("json line");
    assert_eq!(line["scenario"], "kick");
    assert_eq!(line["lost"], 0);
}

/// The backend kicking a member that is not a victim makes it lose messages: the scenario
/// must see that and fail. The test plays that backend: once the room's member count over
/// the cluster says everyone joined, it kicks member `w0` through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_member_that_is_no_victim_fails_the_run() {
    let redis = Redis::start();
    let a = Node::start(&redis, "kick-c").await;
    let b = Node::start(&redis, "kick-d").await;
    let common = common(&a, &b);
    let params = KickParams {
        rooms: 1,
        members: 3,
        victims: 1,
        schedule: ScheduleParams::new(40.0, 2.0),
        drain_s: 3.0,
        kick_every_s: 0.2,
        actions: vec![Action::Kick],
        admin_urls: vec![a.admin.clone()],
        jwt_secret: SECRET.into(),
        user_prefix: Some("wrong".into()),
        ..KickParams::default()
    };
    let admin = roomcast_loadtest::admin::resolve(&b.admin)
        .await
        .expect("admin url");
    let rogue = tokio::spawn(async move {
        // 3 members + 1 victim + 2 publishers (40 msg/s at 20 each).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = get(admin.addr, "/api/rooms/kick:0").await;
            let members = reply
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v["members"].as_u64());
            if members == Some(6) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never saw 6 members: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        roomcast_loadtest::admin::post(
            &admin,
            "/api/disconnect",
            r#"{"user":"wrong-w0"}"#,
            None,
            Duration::from_secs(5),
        )
        .await
    });
    let r = kick::run(&common, &params).await.expect("kick runs");
    eprintln!("{}", r.text());
    let kicked = tokio::time::timeout(Duration::from_secs(10), rogue)
        .await
        .expect("the rogue kick is done")
        .expect("the rogue kicker did not panic");
    a.stop().await;
    b.stop().await;
    drop(redis);

    assert_eq!(kicked, Ok(202));
    assert!(!r.pass, "{}", r.text());
    assert_eq!(r.watchers_joined, 3, "{}", r.text());
    assert_eq!(
        r.watchers_closed.get("4000"),
        Some(&1),
        "w0 was closed by the kick: {}",
        r.text()
    );
    assert!(
        r.failures
            .iter()
            .any(|f| f.contains("non-victim members closed")),
        "{:?}",
        r.failures
    );
    // The victim's own kicks still closed it as promised.
    assert_eq!(
        r.victims_closed_expected.get(&Action::Kick),
        r.actions_done.get(&Action::Kick),
        "{}",
        r.text()
    );
}
