//! The cluster read API and the console page (issues 17 and 18, read side): `GET /api/nodes`,
//! `/api/rooms`, `/api/rooms/ROOM`, `/api/history/ROOM`, the SSE stats stream and `/console`,
//! on one node with the memory broker and on two nodes sharing a real `redis-server`.

use std::time::Duration;

use redis::AsyncCommands;
use roomcast::config::{Config, PresenceRule};
use serde_json::{Value, json};

use crate::support::*;

/// Stats every 100 ms, so that announcements follow the test quickly.
fn fast_stats(mut config: Config) -> Config {
    config.admin.stats_interval_ms = 100;
    config
}

async fn get(node: &TestNode, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = crate::support::http_client().get(node.admin_url(path));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let response = request.send().await.expect("get");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn publish(node: &TestNode, room: &str, data: Value) -> String {
    let response = crate::support::http_client()
        .post(node.admin_url("/api/publish"))
        .json(&json!({"room": room, "data": data}))
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.expect("json");
    body["id"].as_str().expect("id").to_owned()
}

/// The `node` field of every node `GET /api/nodes` lists, sorted.
async fn listed_nodes(node: &TestNode) -> Vec<Value> {
    let (status, body) = get(node, "/api/nodes", None).await;
    assert_eq!(status, 200, "{body}");
    body["nodes"].as_array().expect("nodes").clone()
}

async fn wait_for_nodes(node: &TestNode, what: &str, check: impl Fn(&[Value]) -> bool) {
    eventually(what, || async { check(&listed_nodes(node).await) }).await;
}

#[tokio::test]
async fn a_node_alone_lists_itself_with_its_live_numbers() {
    let node = TestNode::start(fast_stats(test_config())).await;
    wait_for_nodes(&node, "the node lists itself", |n| n.len() == 1).await;
    let me = listed_nodes(&node).await.remove(0);
    assert_eq!(me["node"], "test-node");
    assert!(me["started_at"].as_u64().expect("started_at") > 0);
    assert_eq!(me["live_ms"], 300, "three stats intervals");

    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("lobby").await;
    b.join("lobby").await;
    wait_for_nodes(&node, "two connections in one room", |n| {
        n[0]["connections"] == 2 && n[0]["rooms"] == 1
    })
    .await;
    // Rates cover one interval: keep publishing until an announcement has seen some.
    eventually("message and delivery rates above 0", || async {
        publish(&node, "lobby", json!("tick")).await;
        let n = listed_nodes(&node).await;
        n[0]["messages_in_per_s"].as_f64() > Some(0.0)
            && n[0]["messages_out_per_s"].as_f64() > Some(0.0)
            && n[0]["deliveries_per_s"].as_f64() > Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn nodes_on_redis_list_each_other_and_drop_a_stopped_or_silent_one() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("console", "nodes");
    let config = |id: &str| {
        let mut c = fast_stats(test_config().on_redis(&redis, &prefix));
        c.server.node_id = id.into();
        c
    };
    let n1 = TestNode::start(config("n1")).await;
    let n2 = TestNode::start(config("n2")).await;
    let names = |nodes: &[Value]| {
        let mut names: Vec<String> = nodes
            .iter()
            .map(|n| n["node"].as_str().unwrap_or_default().to_owned())
            .collect();
        names.sort();
        names
    };
    wait_for_nodes(&n1, "node 1 lists both nodes", |n| names(n) == ["n1", "n2"]).await;
    let _client = n2.connect().await;
    wait_for_nodes(&n1, "node 1 sees node 2's connection", |n| {
        n.iter().any(|n| n["node"] == "n2" && n["connections"] == 1)
    })
    .await;

    // A node that died without withdrawing: its entry is older than its live_ms.
    let mut conn = redis_conn(&redis.url()).await;
    let ghost = json!({"id": "ghost", "node": "ghost", "connections": 0, "users": 0,
        "rooms": 0, "messages_in_per_s": 0.0, "messages_out_per_s": 0.0,
        "deliveries_per_s": 0.0, "started_at": 1, "last_seen": 1, "live_ms": 300});
    let key = format!("{prefix}nodes");
    let _: () = conn
        .hset(&key, "ghost", ghost.to_string())
        .await
        .expect("hset");
    assert_eq!(names(&listed_nodes(&n1).await), ["n1", "n2"]);
    let kept: bool = conn.hexists(&key, "ghost").await.expect("hexists");
    assert!(!kept, "a reader forgets an expired node");

    n2.stop().await.expect("node 2 stops");
    wait_for_nodes(&n1, "node 2 is gone", |n| names(n) == ["n1"]).await;
}

#[tokio::test]
async fn rooms_are_summed_across_two_nodes_and_paged() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("console", "rooms");
    let config = || fast_stats(test_config().on_redis(&redis, &prefix));
    let n1 = TestNode::start(config()).await;
    let n2 = TestNode::start(config()).await;
    let mut clients = Vec::new();
    for (node, rooms) in [
        (&n1, &["r1", "r2", "r3"][..]),
        (&n2, &["r2", "r3"][..]),
        (&n2, &["r3"][..]),
    ] {
        let mut client = node.connect().await;
        for room in rooms {
            client.join(room).await;
        }
        clients.push(client);
    }
    let expected = json!([
        {"room": "r1", "members": 1, "nodes": 1, "history": false, "presence": false},
        {"room": "r2", "members": 2, "nodes": 2, "history": false, "presence": false},
        {"room": "r3", "members": 3, "nodes": 2, "history": false, "presence": false},
    ]);
    eventually("both nodes' rooms summed", || async {
        get(&n1, "/api/rooms", None).await.1["rooms"] == expected
    })
    .await;

    let (_, first) = get(&n2, "/api/rooms?limit=2", None).await;
    assert_eq!(
        first["rooms"],
        json!(expected.as_array().expect("rooms")[..2])
    );
    assert_eq!(first["next_cursor"], "r2");
    assert_eq!(first["partial"], false);
    let (_, second) = get(&n2, "/api/rooms?limit=2&cursor=r2", None).await;
    assert_eq!(second["rooms"], json!([expected[2]]));
    assert_eq!(second["next_cursor"], Value::Null);

    for bad in ["limit=0", "limit=1001", "limit=ten"] {
        let (status, body) = get(&n1, &format!("/api/rooms?{bad}"), None).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains("limit")
        );
    }

    // A node announces at most admin.stats_max_rooms rooms, and says the view is partial.
    let mut capped = fast_stats(test_config().on_redis(&redis, &prefix));
    capped.admin.stats_max_rooms = 1;
    let n3 = TestNode::start(capped).await;
    let mut c3 = n3.connect().await;
    c3.join("r3").await;
    c3.join("r4").await;
    eventually("the capped node's biggest room, and partial", || async {
        let (_, page) = get(&n1, "/api/rooms", None).await;
        page["partial"] == true && page["rooms"][2]["members"] == 4
    })
    .await;
    let (_, page) = get(&n1, "/api/rooms", None).await;
    assert_eq!(
        page["rooms"].as_array().expect("rooms").len(),
        3,
        "r4 not announced"
    );
}

fn history_and_presence(config: Config) -> Config {
    let mut config = config.with_chat_history(5);
    config.presence.rooms = vec![PresenceRule {
        pattern: "chat:*".into(),
        events: false,
        max_members: 100,
    }];
    config
}

#[tokio::test]
async fn room_detail_and_history_with_limit_since_and_errors() {
    let node = TestNode::start(fast_stats(history_and_presence(test_config()))).await;
    let mut member = node.connect().await;
    member.join("chat:a").await;
    let mut ids = Vec::new();
    for i in 1..=7 {
        ids.push(publish(&node, "chat:a", json!({"n": i})).await);
    }

    eventually("the member is counted", || async {
        get(&node, "/api/rooms/chat:a", None).await.1["members"] == 1
    })
    .await;
    let (status, detail) = get(&node, "/api/rooms/chat:a", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        detail,
        json!({"room": "chat:a", "members": 1, "presence": true,
            "history": {"length": 5, "last_id": ids[6]}})
    );
    let (_, plain) = get(&node, "/api/rooms/plain", None).await;
    assert_eq!(
        plain,
        json!({"room": "plain", "members": 0, "history": null, "presence": false})
    );

    let numbers = |body: &Value| -> Vec<u64> {
        body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["data"]["n"].as_u64().expect("n"))
            .collect()
    };
    let (status, all) = get(&node, "/api/history/chat:a", None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(numbers(&all), [3, 4, 5, 6, 7]);
    assert_eq!(all["last_id"], ids[6]);
    assert_eq!(all["messages"][0]["from"], "server");
    assert_eq!(all["messages"][0]["id"], ids[2]);
    assert!(all.get("recovered").is_none());
    let (_, newest) = get(&node, "/api/history/chat:a?limit=2", None).await;
    assert_eq!(numbers(&newest), [6, 7]);
    // `since` pages forward from a kept id ...
    let (_, after) = get(
        &node,
        &format!("/api/history/chat:a?since={}&limit=2", ids[2]),
        None,
    )
    .await;
    assert_eq!(numbers(&after), [4, 5]);
    assert_eq!(after["recovered"], true);
    // ... and says when the history no longer reaches back to it.
    let (_, lost) = get(
        &node,
        &format!("/api/history/chat:a?since={}", ids[0]),
        None,
    )
    .await;
    assert_eq!(numbers(&lost), [3, 4, 5, 6, 7]);
    assert_eq!(lost["recovered"], false);

    for (path, status, code) in [
        ("/api/history/chat:a?limit=6", 400, "bad_request"),
        ("/api/history/chat:a?limit=0", 400, "bad_request"),
        ("/api/history/chat:a?since=junk", 400, "bad_request"),
        ("/api/history/plain", 404, "not_found"),
        ("/api/history/a%20b", 400, "invalid_room"),
        ("/api/rooms/a%20b", 400, "invalid_room"),
    ] {
        let (got, body) = get(&node, path, None).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn the_redis_read_side_answers_room_detail_with_history() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("console", "detail");
    let config = || {
        fast_stats(history_and_presence(
            test_config().on_redis(&redis, &prefix),
        ))
    };
    let n1 = TestNode::start(config()).await;
    let n2 = TestNode::start(config()).await;
    for node in [&n1, &n2] {
        let url = node.admin_url("/readyz");
        eventually("the nodes reach redis", || async {
            http_status(&url).await == 200
        })
        .await;
    }
    let mut a = n1.connect().await;
    let mut b = n2.connect().await;
    a.join("chat:x").await;
    b.join("chat:x").await;
    let id = publish(&n2, "chat:x", json!("hi")).await;
    eventually("both nodes' members summed", || async {
        get(&n1, "/api/rooms/chat:x", None).await.1["members"] == 2
    })
    .await;
    let (_, detail) = get(&n1, "/api/rooms/chat:x", None).await;
    assert_eq!(detail["history"], json!({"length": 1, "last_id": id}));
    let (_, history) = get(&n1, "/api/history/chat:x", None).await;
    assert_eq!(history["messages"][0]["data"], "hi");
}

/// Read `/api/stats/stream` until a `nodes` event matches `done`; every `nodes` event read.
async fn stream_until(
    response: &mut reqwest::Response,
    mut done: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let chunk = response.chunk().await.expect("chunk").expect("stream open");
            buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                if !block.contains("event: nodes") {
                    continue;
                }
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data line");
                let event: Value = serde_json::from_str(data).expect("json");
                let finished = done(&event);
                events.push(event);
                if finished {
                    return;
                }
            }
        }
    })
    .await
    .expect("the events arrive in time");
    events
}

#[tokio::test]
async fn the_stats_stream_sends_an_event_per_interval_that_follows_connections() {
    let mut config = fast_stats(test_config());
    config.admin.api_key = Some("k".into());
    let node = TestNode::start(config).await;
    let mut response = crate::support::http_client()
        .get(node.admin_url("/api/stats/stream"))
        .header("authorization", "Bearer k")
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert_eq!(content_type, "text/event-stream");
    let connections = |e: &Value| e["nodes"][0]["connections"].as_u64();
    let before = stream_until(&mut response, |e| connections(e) == Some(0)).await;
    let _a = node.connect().await;
    let _b = node.connect().await;
    let after = stream_until(&mut response, |e| connections(e) == Some(2)).await;
    assert!(before.len() + after.len() >= 2);
    let stamps: Vec<u64> = before
        .iter()
        .chain(&after)
        .map(|e| e["ts"].as_u64().expect("ts"))
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    // A stopping node ends the stream (its admin server waits for open responses).
    tokio::time::timeout(Duration::from_secs(5), node.stop())
        .await
        .expect("stops with a stream open")
        .expect("stops");
    let rest = tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = response.chunk().await {}
    });
    rest.await.expect("the stream ends");
}

#[tokio::test]
async fn every_read_route_needs_the_key_and_the_console_page_does_not() {
    let mut config = history_and_presence(test_config());
    config.admin.api_key = Some("secret".into());
    let node = TestNode::start(config).await;
    for path in [
        "/api/nodes",
        "/api/rooms",
        "/api/rooms/chat:a",
        "/api/history/chat:a",
        "/api/stats/stream",
    ] {
        for key in [None, Some("wrong")] {
            let (status, body) = get(&node, path, key).await;
            assert_eq!(status, 401, "{path} with {key:?}");
            assert_eq!(body["error"]["code"], "unauthorized", "{path}");
        }
        let response = crate::support::http_client()
            .get(node.admin_url(path))
            .header("authorization", "Bearer secret")
            .send()
            .await
            .expect("get");
        assert_eq!(response.status().as_u16(), 200, "{path} with the key");
    }

    let page = crate::support::http_client()
        .get(node.admin_url("/console"))
        .send()
        .await
        .expect("console");
    assert_eq!(page.status().as_u16(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    let html = page.text().await.expect("html");
    assert!(html.contains("Authorization: Bearer") && html.contains("/api/stats/stream"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "nothing is fetched from elsewhere"
    );
}

/// On a Redis Cluster the registry's two hashes live on different shards: announcements,
/// reads and withdrawal still work.
#[tokio::test(flavor = "multi_thread")]
async fn the_registry_works_on_a_redis_cluster() {
    let cluster = cluster::RedisCluster::start(3, 0);
    let prefix = unique_prefix("console", "cluster");
    let config = || fast_stats(test_config().on_redis_cluster(&cluster, &prefix));
    let n1 = TestNode::start(config()).await;
    let n2 = TestNode::start(config()).await;
    let mut a = n1.connect().await;
    let mut b = n2.connect().await;
    a.join("lobby").await;
    b.join("lobby").await;
    eventually("both nodes' members summed over the cluster", || async {
        let (_, page) = get(&n2, "/api/rooms", None).await;
        listed_nodes(&n2).await.len() == 2
            && page["rooms"]
                == json!([{"room": "lobby", "members": 2, "nodes": 2,
                "history": false, "presence": false}])
    })
    .await;
    n1.stop().await.expect("node 1 stops");
    wait_for_nodes(&n2, "node 1 withdrawn", |n| n.len() == 1).await;
}
