//! docs/protocol.md "Ordering and delivery" with history: `join` with `history` and `since`,
//! `recovered`, and no gap and no duplicate while messages keep coming (embedded broker; the
//! Redis broker runs the same checks in tests/it/redis_history.rs).

use crate::support::*;
use roomcast::config::Config;
use serde_json::{Value, json};

fn history_config() -> Config {
    test_config().with_rate(100_000).with_chat_history(50)
}

async fn publish(client: &mut Client, room: &str, data: Value) -> String {
    let ack = client
        .request(
            json!({"type":"publish","room":room,"data":data,"echo":false}),
            "pub",
        )
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["msg_id"].as_str().expect("msg_id").to_owned()
}

fn offset(id: &str) -> u64 {
    id.rsplit_once('-')
        .and_then(|(_, o)| o.parse().ok())
        .unwrap_or_else(|| panic!("{id} is not a history id"))
}

#[tokio::test]
async fn kept_messages_have_ordered_ids_and_history_replays_the_last_n() {
    let node = TestNode::start(history_config()).await;
    let mut publisher = node.connect().await;
    publisher.join("chat:a").await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish(&mut publisher, "chat:a", json!(i)).await);
    }
    let offsets: Vec<u64> = ids.iter().map(|id| offset(id)).collect();
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");

    let mut late = node.connect().await;
    let joined = late
        .request(json!({"type":"join","room":"chat:a","history":3}), "j")
        .await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["history"], 3);
    for i in 7..10 {
        let m = late.recv_json().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["data"], i);
        assert_eq!(m["id"], ids[i as usize].as_str());
    }
    publish(&mut publisher, "chat:a", json!("live")).await;
    assert_eq!(late.recv_json().await["data"], "live");
}

#[tokio::test]
async fn since_replays_what_was_missed_then_continues_live() {
    let node = TestNode::start(history_config()).await;
    let mut publisher = node.connect().await;
    publisher.join("chat:b").await;
    let mut reader = node.connect().await;
    reader.join("chat:b").await;
    let first = publish(&mut publisher, "chat:b", json!(0)).await;
    assert_eq!(reader.recv_json().await["id"], first.as_str());
    reader.close().await;

    for i in 1..6 {
        publish(&mut publisher, "chat:b", json!(i)).await;
    }
    let mut back = node.connect().await;
    let joined = back
        .request(json!({"type":"join","room":"chat:b","since":first}), "j")
        .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["history"], 5);
    for i in 1..6 {
        assert_eq!(back.recv_json().await["data"], i);
    }
    publish(&mut publisher, "chat:b", json!(6)).await;
    assert_eq!(back.recv_json().await["data"], 6, "live after the replay");
}

#[tokio::test]
async fn since_older_than_what_is_kept_is_not_recovered() {
    let mut config = history_config();
    config.history.rooms[0].size = 5;
    let node = TestNode::start(config).await;
    let mut publisher = node.connect().await;
    publisher.join("chat:c").await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(publish(&mut publisher, "chat:c", json!(i)).await);
    }
    let mut client = node.connect().await;
    for since in [
        ids[2].clone(),
        "h00000000-3".to_owned(),
        "not-an-id".to_owned(),
    ] {
        let joined = client
            .request(json!({"type":"join","room":"chat:c","since":since}), "j")
            .await;
        assert_eq!(joined["recovered"], false, "{since}: {joined}");
        client
            .request(json!({"type":"leave","room":"chat:c"}), "l")
            .await;
    }
    // The newest kept position is still a valid place to resume from, with nothing to replay.
    let joined = client
        .request(json!({"type":"join","room":"chat:c","since":ids[19]}), "j")
        .await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["history"], 0);
    // The oldest kept (the 16th) resumes too: the 17th..20th are replayed.
    client
        .request(json!({"type":"leave","room":"chat:c"}), "l")
        .await;
    let joined = client
        .request(json!({"type":"join","room":"chat:c","since":ids[15]}), "j")
        .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["history"], 4);
}

#[tokio::test]
async fn services_publishing_through_the_admin_api_are_kept_too() {
    let node = TestNode::start(history_config()).await;
    let response = crate::support::http_client()
        .post(node.admin_url("/api/publish"))
        .body(r#"{"room":"chat:d","data":"from a service"}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(offset(&id), 1);
    let mut client = node.connect().await;
    let joined = client
        .request(json!({"type":"join","room":"chat:d","history":10}), "j")
        .await;
    assert_eq!(joined["history"], 1);
    let m = client.recv_json().await;
    assert_eq!(
        (m["data"].clone(), m["from"].clone()),
        (json!("from a service"), json!("server"))
    );
}

/// A client that drops and rejoins with `since` over and over while a publisher never stops
/// gets every message exactly once, in order.
#[tokio::test]
async fn reconnecting_with_since_during_continuous_publishing_misses_nothing() {
    let mut config = history_config();
    // Enough to cover how far the publisher can run ahead of the reconnecting reader.
    config.history.rooms[0].size = 1_000;
    let node = TestNode::start(config).await;
    const TOTAL: u64 = 400;
    let mut publisher = node.connect().await;
    publisher.join("chat:e").await;
    // The reader is in the room before the first message.
    let mut first_client = Some(node.connect().await);
    if let Some(c) = first_client.as_mut() {
        c.join("chat:e").await;
    }
    let publishing = async {
        for i in 0..TOTAL {
            publisher
                .send_json(json!({"type":"publish","room":"chat:e","data":i,"echo":false}))
                .await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut acks = 0;
        while acks < TOTAL {
            if publisher.recv_json().await["type"] == "ack" {
                acks += 1;
            }
        }
    };
    let reading = async {
        let mut seen: Vec<u64> = Vec::new();
        let mut last_id: Option<String> = None;
        let mut rounds = 0;
        while (seen.len() as u64) < TOTAL {
            rounds += 1;
            let mut client = match first_client.take() {
                Some(client) => client,
                None => {
                    let mut client = node.connect().await;
                    let mut join = json!({"type":"join","room":"chat:e","id":"j"});
                    if let Some(id) = &last_id {
                        join["since"] = json!(id);
                    }
                    client.send_json(join).await;
                    let joined = client.recv_json().await;
                    assert_eq!(joined["type"], "joined", "{joined}");
                    if last_id.is_some() {
                        assert_eq!(joined["recovered"], true, "{joined}");
                    }
                    client
                }
            };
            // Read a few, then drop the connection mid-stream.
            for _ in 0..37 {
                if seen.len() as u64 == TOTAL {
                    break;
                }
                let m = client.recv_type("message").await;
                seen.push(m["data"].as_u64().expect("data"));
                last_id = Some(m["id"].as_str().expect("id").to_owned());
            }
            drop(client);
        }
        (seen, rounds)
    };
    let ((), (seen, rounds)) = tokio::join!(publishing, reading);
    assert!(rounds > 5, "the reader reconnected {rounds} times");
    assert_eq!(
        seen,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message once, in order"
    );
}

#[tokio::test]
async fn rooms_outside_the_history_rules_keep_nothing() {
    let node = TestNode::start(history_config()).await;
    let mut a = node.connect().await;
    a.join("plain").await;
    let id = publish(&mut a, "plain", json!(1)).await;
    assert!(!id.starts_with('h'));
    let mut b = node.connect().await;
    let joined = b
        .request(
            json!({"type":"join","room":"plain","history":5,"since":id}),
            "j",
        )
        .await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["history"], 0);
}
