//! The scenarios against a real roomcast node started in this process on port 0 (memory
//! broker), small enough for every `cargo test`. Each test bounds itself: the node is stopped
//! when the test ends, and every scenario has its own time limits.

use std::time::Duration;

use roomcast::config::Config;
use roomcast::{Listeners, run};
use roomcast_loadtest::Common;
use roomcast_loadtest::scenario::connections::{self, ConnectionsParams};
use roomcast_loadtest::scenario::fanout::{self, FanoutParams};
use roomcast_loadtest::scenario::ramp::{self, RampParams};
use roomcast_loadtest::scenario::rooms::{self, RoomsParams};
use roomcast_loadtest::schedule::ScheduleParams;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A node on 127.0.0.1:0; shut down when dropped.
struct Node {
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start() -> Node {
        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".into();
        config.admin.listen = "127.0.0.1:0".into();
        config.server.node_id = "loadtest-node".into();
        // All test connections come from one address, faster than the production default.
        config.server.connect_rate_per_ip = 100_000;
        config.server.shutdown_grace_ms = 1_000;
        let ws = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let url = format!("ws://{}/ws", ws.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let _ = run(Listeners { ws, admin }, config, async move {
                let _ = rx.await;
            })
            .await;
        });
        Node {
            url,
            shutdown: Some(tx),
            handle,
        }
    }

    fn common(&self) -> Common {
        Common {
            urls: vec![self.url.clone()],
            connect_phase_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(5),
            ..Common::default()
        }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_fanout_delivers_everything() {
    let node = Node::start().await;
    let params = FanoutParams {
        subscribers: 20,
        schedule: ScheduleParams::new(100.0, 1.0),
        drain_s: 5.0,
        ..FanoutParams::default()
    };
    let r = fanout::run(&node.common(), &params)
        .await
        .expect("fanout runs");
    assert_eq!(r.receivers_joined, 20);
    assert_eq!(r.publishers, 5, "100 msg/s at ≤ 20 msg/s per publisher");
    assert_eq!(r.sent_msgs, 100);
    assert_eq!(r.expected_deliveries, 2000);
    assert_eq!(r.received_deliveries, 2000);
    assert_eq!(r.delivery_ratio, 1.0);
    assert_eq!((r.duplicates, r.foreign, r.misrouted), (0, 0, 0));
    assert!(r.errors.server.is_empty(), "{:?}", r.errors);
    assert_eq!(r.acks, 100, "every publish is acknowledged");
    assert_eq!(r.latency_ms.count, 2000);
    assert!(r.latency_ms.p50 > 0.0 && r.latency_ms.max >= r.latency_ms.p99);
    assert!(!r.series.is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_keep_messages_in_their_room() {
    let node = Node::start().await;
    let params = RoomsParams {
        rooms: 6,
        members: 3,
        rate: 90.0,
        duration_s: 1.0,
        drain_s: 5.0,
        ..RoomsParams::default()
    };
    let r = rooms::run(&node.common(), &params)
        .await
        .expect("rooms runs");
    assert_eq!(r.receivers_joined, 18);
    assert_eq!(r.sent_msgs, 90);
    // Each message reaches the other two members of its room.
    assert_eq!(r.expected_deliveries, 180);
    assert_eq!(r.received_deliveries, 180);
    assert_eq!((r.duplicates, r.misrouted), (0, 0));
    assert!(r.pass, "{r:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_held_from_several_sources() {
    let node = Node::start().await;
    let common = Common {
        sources: 3,
        heartbeat: Duration::from_millis(200),
        pids: vec![std::process::id()],
        ..node.common()
    };
    let params = ConnectionsParams {
        connections: 60,
        hold_s: 1.0,
    };
    let r = connections::run(&common, &params)
        .await
        .expect("connections runs");
    assert_eq!(r.connected, 60);
    assert_eq!(r.held_to_end, 60);
    assert!(r.pass);
    assert!(r.heartbeats_sent >= 60, "{r:?}");
    assert!(r.pongs_received > 0);
    assert_eq!(r.rss.len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_reports_the_highest_passing_step() {
    let node = Node::start().await;
    let params = RampParams {
        fanout: FanoutParams {
            subscribers: 10,
            schedule: ScheduleParams::new(100.0, 0.5),
            drain_s: 3.0,
            ..FanoutParams::default()
        },
        rates: vec![20.0, 40.0],
        retry: false,
        pause: Duration::from_millis(100),
    };
    let r = ramp::run(&node.common(), &params).await.expect("ramp runs");
    assert_eq!(r.steps.len(), 2);
    assert_eq!(r.highest_passing_rate, Some(40.0));
    assert!(r.pass);
    node.stop().await;
}
