//! A tiny `chaos` run against a roomcast node started in this process on port 0 (memory
//! broker) that keeps history for `chat:*`: subscribers are cut every ~0.4 s while messages are
//! published, rejoin with `since`, and must end up with every acknowledged message.

use std::time::Duration;

use roomcast::config::{Config, HistoryRule};
use roomcast::{Listeners, run};
use roomcast_loadtest::Common;
use roomcast_loadtest::scenario::chaos::{self, ChaosParams, KillDist};
use roomcast_loadtest::schedule::ScheduleParams;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rejoins_with_since_and_misses_nothing_acknowledged() {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".into();
    config.admin.listen = "127.0.0.1:0".into();
    config.server.node_id = "chaos-node".into();
    config.server.connect_rate_per_ip = 100_000;
    config.server.shutdown_grace_ms = 1_000;
    config.history.rooms = vec![HistoryRule {
        pattern: "chat:*".into(),
        size: 10_000,
        ttl_s: 600,
    }];
    let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let url = format!("ws://{}/ws", ws.local_addr().expect("addr"));
    let (tx, rx) = oneshot::channel::<()>();
    let mut node = tokio::spawn(async move {
        let _ = run(Listeners { ws, admin }, config, async move {
            let _ = rx.await;
        })
        .await;
    });

    let common = Common {
        // The same node twice: reconnects pick a URL of the list at random.
        urls: vec![url.clone(), url],
        connect_phase_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(5),
        ..Common::default()
    };
    let params = ChaosParams {
        subscribers: 10,
        schedule: ScheduleParams::new(100.0, 2.0),
        drain_s: 5.0,
        kill_every_s: 0.4,
        kill_dist: KillDist::Uniform,
        ..ChaosParams::default()
    };
    let r = chaos::run(&common, &params).await.expect("chaos runs");
    eprintln!("{}", r.text());
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut node).await;
    node.abort();

    assert_eq!(r.subscribers_joined, 10, "{r:?}");
    assert_eq!(r.sent_msgs, 200, "{r:?}");
    assert_eq!(r.acked_msgs, 200, "every publish is acknowledged: {r:?}");
    assert_eq!(r.expected_deliveries, 2000);
    assert_eq!(r.delivery_ratio, 1.0, "{}", r.text());
    assert_eq!(r.subscribers_with_gaps, 0, "{}", r.text());
    assert!(r.kills >= 10 && r.reconnects >= 1, "{}", r.text());
    assert_eq!(r.not_recovered, 0, "{}", r.text());
    // A rejoin racing a live publish once delivered the replayed message twice (hub gate
    // fix): none may arrive twice.
    assert_eq!(r.duplicates, 0, "{}", r.text());
    assert!(r.replay_joined_ms.count >= 1 && r.replay_first_ms.count >= 1);
    assert!(r.pass, "{}", r.text());
    let line: serde_json::Value = serde_json::from_str(&r.json_line()).expect("json line");
    assert_eq!(line["scenario"], "chaos");
}
