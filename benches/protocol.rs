//! Criterion benchmarks of the protocol hot path: decoding and validating one client command,
//! and encoding one outbound `message` frame (`Envelope::frame`), which happens once per
//! publication per node.
//!
//! Run with `cargo bench --bench protocol`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use roomcast::protocol::{Envelope, Origin, Target, data_from_payload, decode_command};

/// A publish as the load generator sends it: ~100 bytes of data.
const PUBLISH: &str = r#"{"type":"publish","room":"bench","echo":false,"id":42,"data":{"run":123456789,"seq":1042,"t":98765432,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
const JOIN: &str = r#"{"type":"join","room":"chat-17","id":"j1"}"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_command");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish_100B", |b| {
        b.iter(|| {
            let d = decode_command(black_box(PUBLISH));
            assert!(d.result.is_ok());
            d
        })
    });
    g.bench_function("join", |b| b.iter(|| decode_command(black_box(JOIN))));
    g.bench_function("invalid_json", |b| {
        b.iter(|| decode_command(black_box(r#"{"type":"publish","room":"#)))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let envelope = Envelope {
        target: Target::Room("bench".into()),
        id: "5f3a9c1b2d4e-1042".into(),
        data: data_from_payload(
            br#"{"run":123456789,"seq":1042,"t":98765432,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ),
        from: "5f3a9c1b2d4e.17".into(),
        ts: 1_763_000_000_000,
        origin: Some(Origin {
            node: "5f3a9c1b2d4e".into(),
            conn: 17,
            echo: false,
        }),
        key: None,
    };
    let mut g = c.benchmark_group("encode_frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("message_100B", |b| b.iter(|| black_box(&envelope).frame()));
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
