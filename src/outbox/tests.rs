//! The outbox's unit tests: queueing, overflow, the coalescing hold, conflation.

use super::*;

#[test]
fn full_outbox_closes_as_slow_consumer() {
    let (tx, rx) = outbox(1, 2);
    assert_eq!(tx.offer(Frame::plain_pong()), Offer::Queued);
    assert_eq!(tx.offer(Frame::plain_pong()), Offer::Queued);
    assert_eq!(tx.offer(Frame::plain_pong()), Offer::Overflowed);
    assert_eq!(rx.closer().reason(), Some(Disconnect::SlowConsumer));
    assert_eq!(tx.offer(Frame::plain_pong()), Offer::Closed);
}

#[tokio::test]
async fn frames_come_out_in_order_and_the_end_is_seen_when_senders_go() {
    let (tx, rx) = outbox(1, 8);
    let other = tx.clone();
    let waiting = tokio::spawn(async move {
        let mut batch = Vec::new();
        let n = rx.recv_many(&mut batch, 8).await;
        (n, batch, rx)
    });
    tx.offer(Frame::plain_pong());
    other.offer(Frame::plain_pong());
    let (n, batch, rx) = waiting.await.expect("receiver");
    assert!(n >= 1 && batch.len() == n, "woken with what was queued");
    let mut rest = Vec::new();
    if n < 2 {
        assert_eq!(rx.recv_many(&mut rest, 8).await, 2 - n);
    }
    assert!(rx.try_recv().is_err());
    drop(tx);
    drop(other);
    assert_eq!(rx.recv_many(&mut rest, 8).await, 0, "every sender gone");
    assert_eq!(
        rx.recv_coalesced(&mut rest, 8, None).await,
        Received::End,
        "every sender gone"
    );
}

/// Poll `recv_coalesced` once, with a waker that records whether it was woken.
fn poll_once(
    rx: &OutboxReceiver,
    batch: &mut Vec<Frame>,
    hold_until: Option<Instant>,
    woken: &Arc<std::sync::atomic::AtomicBool>,
) -> Poll<Received> {
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let waker = Waker::from(Arc::new(Flag(woken.clone())));
    let mut cx = std::task::Context::from_waker(&waker);
    let fut = std::pin::pin!(rx.recv_coalesced(batch, 8, hold_until));
    fut.poll(&mut cx)
}

#[tokio::test]
async fn within_the_window_frames_are_held_without_waking_and_a_reply_takes_them_all() {
    let (tx, rx) = outbox(1, 8);
    let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut batch = Vec::new();
    let later = Some(Instant::now() + std::time::Duration::from_secs(3600));
    tx.offer(Frame::plain_pong());
    assert_eq!(
        poll_once(&rx, &mut batch, later, &woken),
        Poll::Ready(Received::Hold)
    );
    assert_eq!(
        poll_once(&rx, &mut batch, later, &woken),
        Poll::Pending,
        "the hold is said once"
    );
    tx.offer(Frame::plain_pong());
    assert!(
        !woken.load(Ordering::SeqCst),
        "a frame does not wake a holding writer"
    );
    tx.reply(Frame::plain_pong());
    assert!(woken.load(Ordering::SeqCst), "a reply wakes it");
    assert_eq!(
        poll_once(&rx, &mut batch, later, &woken),
        Poll::Ready(Received::Frames(3)),
        "a reply takes everything queued before it, window or not"
    );
    // Half the capacity queued ends the hold, window or not: a burst must not overflow.
    for _ in 0..3 {
        tx.offer(Frame::plain_pong());
    }
    assert_eq!(
        poll_once(&rx, &mut batch, later, &woken),
        Poll::Ready(Received::Hold)
    );
    woken.store(false, Ordering::SeqCst);
    tx.offer(Frame::plain_pong());
    assert!(woken.load(Ordering::SeqCst), "half full wakes the writer");
    assert_eq!(
        poll_once(&rx, &mut batch, later, &woken),
        Poll::Ready(Received::Frames(4))
    );
    // The window over, a plain frame is taken at once again.
    tx.offer(Frame::plain_pong());
    let past = Some(Instant::now());
    assert_eq!(
        poll_once(&rx, &mut batch, past, &woken),
        Poll::Ready(Received::Frames(1))
    );
}

#[test]
fn a_gone_receiver_refuses_frames() {
    let (tx, rx) = outbox(1, 8);
    drop(rx);
    assert_eq!(tx.offer(Frame::plain_pong()), Offer::Closed);
}

#[tokio::test]
async fn closed_resolves_when_another_task_closes() {
    let (tx, rx) = outbox(1, 2);
    let waiting = tokio::spawn(async move {
        rx.closer().closed().await;
        rx
    });
    // Closed whether or not the waiter has registered yet: both orders must wake it.
    tx.closer().close(Disconnect::TooLarge);
    let rx = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("closed() resolved")
        .expect("waiter task");
    assert!(rx.closer().is_closing());
    rx.closer().closed().await;
}

#[test]
fn an_open_closer_is_not_closing() {
    let (tx, _rx) = outbox(1, 2);
    assert!(!tx.closer().is_closing());
    assert_eq!(tx.closer().reason(), None);
}

#[test]
fn a_close_text_goes_with_the_first_reason_only() {
    let (tx, rx) = outbox(1, 2);
    tx.close_with(Disconnect::Forbidden, Some("banned"));
    tx.close_with(Disconnect::Reconnect, Some("later"));
    assert_eq!(rx.closer().reason(), Some(Disconnect::Forbidden));
    assert_eq!(rx.take_close_text().as_deref(), Some("banned"));
    let (tx, rx) = outbox(2, 2);
    tx.closer().close(Disconnect::Idle);
    tx.close_with(Disconnect::Forbidden, Some("banned"));
    assert_eq!(rx.take_close_text(), None);
}

#[tokio::test]
async fn server_room_changes_wake_the_connection_in_order() {
    let (tx, rx) = outbox(1, 2);
    let room = |n: &str| RoomName::new(n).expect("room");
    tx.server_room(ServerRoom::Join(room("a")));
    tx.server_room(ServerRoom::Leave(room("a")));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.server_rooms())
        .await
        .expect("woken");
    assert_eq!(
        got,
        [ServerRoom::Join(room("a")), ServerRoom::Leave(room("a"))]
    );
}

fn texts(rx: &OutboxReceiver) -> Vec<String> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .map(|f| f.text().to_owned())
        .collect()
}

#[test]
fn a_keyed_frame_replaces_the_queued_one_in_its_place_and_never_overflows() {
    let (tx, rx) = outbox(1, 3);
    let (a, b) = (conflation_key("r", "a"), conflation_key("r", "b"));
    let f = Frame::text_for_tests;
    assert_eq!(tx.offer_keyed(f("a1"), &a), Offer::Queued);
    assert_eq!(tx.offer(f("x")), Offer::Queued);
    assert_eq!(tx.offer_keyed(f("b1"), &b), Offer::Queued);
    for i in 2..50 {
        assert_eq!(tx.offer_keyed(f(&format!("a{i}")), &a), Offer::Replaced);
    }
    assert_eq!(tx.offer_keyed(f("b2"), &b), Offer::Replaced);
    assert_eq!(
        rx.closer().reason(),
        None,
        "full, yet never closed for a key"
    );
    assert_eq!(texts(&rx), ["a49", "x", "b2"]);
    // The same key in another room is another key; a new key in a full queue overflows.
    for (i, room) in ["r", "s", "t"].iter().enumerate() {
        assert_eq!(
            tx.offer_keyed(f(&i.to_string()), &conflation_key(room, "a")),
            Offer::Queued
        );
    }
    assert_eq!(tx.offer_keyed(f("b3"), &b), Offer::Overflowed);
}

#[tokio::test]
async fn a_frame_already_taken_is_not_replaced_and_positions_stay_true() {
    let (tx, rx) = outbox(1, 8);
    let (a, b) = (conflation_key("r", "a"), conflation_key("r", "b"));
    let f = Frame::text_for_tests;
    // Queued before the first keyed frame: numbered all the same.
    tx.offer(f("x"));
    tx.offer_keyed(f("a1"), &a);
    tx.offer_keyed(f("b1"), &b);
    let mut batch = Vec::new();
    assert_eq!(
        rx.recv_many(&mut batch, 2).await,
        2,
        "x and a1 are the writer's now"
    );
    assert_eq!(tx.offer_keyed(f("a2"), &a), Offer::Queued);
    assert_eq!(tx.offer_keyed(f("b2"), &b), Offer::Replaced);
    assert_eq!(tx.offer_keyed(f("a3"), &a), Offer::Replaced);
    assert_eq!(texts(&rx), ["b2", "a3"]);
    // Emptied: every number starts over.
    assert_eq!(tx.offer_keyed(f("a4"), &a), Offer::Queued);
    assert_eq!(tx.offer_keyed(f("a5"), &a), Offer::Replaced);
    assert_eq!(texts(&rx), ["a5"]);
}

#[test]
fn the_key_table_stays_within_twice_the_queue_when_it_never_empties() {
    let (tx, rx) = outbox(1, 4);
    tx.offer(Frame::plain_pong());
    for i in 0..1000 {
        tx.offer_keyed(Frame::plain_pong(), &conflation_key("r", &i.to_string()));
        assert!(rx.try_recv().is_ok());
    }
    let state = rx.queue.state();
    let pending = state
        .control
        .as_ref()
        .and_then(|c| c.conflation.as_ref())
        .map_or(0, |c| c.pending.len());
    assert!(pending <= 2 * 4 + 1, "{pending} keys remembered");
}

#[test]
fn first_close_reason_wins() {
    let (tx, _rx) = outbox(1, 2);
    tx.closer().close(Disconnect::TooLarge);
    tx.closer().close(Disconnect::Idle);
    assert_eq!(tx.closer().reason(), Some(Disconnect::TooLarge));
}
