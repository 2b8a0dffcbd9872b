//! The smallest end-to-end check: two clients on one node share a room.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn two_clients_share_a_room() {
    let node = TestNode::start(test_config()).await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("lobby").await;
    b.join("lobby").await;
    let ack = a
        .request(
            json!({"type":"publish","room":"lobby","data":{"hi":1}}),
            "p1",
        )
        .await;
    assert_eq!(ack["type"], "ack");
    let m = b.recv_type("message").await;
    assert_eq!(m["data"], json!({"hi":1}));
    node.stop().await.expect("clean stop");
}
