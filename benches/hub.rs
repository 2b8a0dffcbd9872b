//! Criterion benchmark of the hub fan-out: one encoded frame offered to 10,000 local members
//! of one room (`Hub::deliver_room`). Receivers are drained outside the timed part after every
//! iteration, so no outbox ever fills (a full one would close its member as a slow consumer).
//! The `keyed` variants offer a conflated room's keyed frame: to members that keep up (queued,
//! its key remembered) and to members that are behind (it replaces the queued one).
//!
//! Run with `cargo bench --bench hub`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roomcast::hub::Hub;
use roomcast::outbox::{OutboxReceiver, conflation_key, outbox};
use roomcast::protocol::{Envelope, Target, data_from_payload};

const MEMBERS: u64 = 10_000;

fn deliver(c: &mut Criterion) {
    let hub = Hub::new();
    let mut receivers: Vec<OutboxReceiver> = Vec::with_capacity(MEMBERS as usize);
    for conn in 1..=MEMBERS {
        let (tx, rx) = outbox(conn, 1024);
        hub.join("bench", &tx);
        receivers.push(rx);
    }
    let frame = Envelope {
        target: Target::Room("bench".into()),
        id: "5f3a9c1b2d4e-1".into(),
        data: data_from_payload(br#"{"run":1,"seq":1,"t":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#),
        from: "5f3a9c1b2d4e.1".into(),
        ts: 1,
        origin: None,
        key: None,
    }
    .frame();

    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(MEMBERS));
    g.bench_function("deliver_room_10k_members", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let d = hub.deliver_room(black_box("bench"), &frame, None, None, None);
                timed += started.elapsed();
                assert_eq!(d.delivered, MEMBERS);
                for rx in receivers.iter_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            timed
        })
    });
    let key = conflation_key("bench", "AAPL");
    g.bench_function("deliver_room_10k_members_keyed", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let d = hub.deliver_room(black_box("bench"), &frame, None, None, Some(&key));
                timed += started.elapsed();
                assert_eq!(d.delivered, MEMBERS);
                for rx in receivers.iter_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            timed
        })
    });
    hub.deliver_room("bench", &frame, None, None, Some(&key));
    g.bench_function("deliver_room_10k_members_keyed_behind", |b| {
        b.iter(|| {
            let d = hub.deliver_room(black_box("bench"), &frame, None, None, Some(&key));
            assert_eq!(d.conflated, MEMBERS);
        })
    });
    g.finish();
}

criterion_group!(benches, deliver);
criterion_main!(benches);
