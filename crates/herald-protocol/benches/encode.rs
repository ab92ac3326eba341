//! Encoding a merged batch into its one PUSH frame (done once per frame, whatever the number of recipients), plain
//! and in the deflate form (compressed once per frame for every connection that negotiated permessage-deflate).
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_protocol::bus::Target;
use herald_protocol::deflate::Compression;
use herald_protocol::forms::WireForm;
use herald_protocol::push::push_frame;

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("push_frame");
    for items in [1usize, 100] {
        let batch: Vec<Bytes> = (0..items)
            .map(|n| Bytes::from(format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(84))))
            .collect();
        group.throughput(Throughput::Elements(items as u64));
        let lobby = Target::Room("lobby".into());
        group.bench_function(format!("{items} items of 100 bytes"), |b| {
            b.iter(|| push_frame(&lobby, std::hint::black_box(&batch)))
        });
    }
    group.finish();
}

/// The deflate form with chat-like items: a frame of one item (the 10 ms window's usual frame, where the fixed cost
/// of resetting the compressor shows) and of 100 (the seed's).
fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_form");
    for items in [1usize, 100] {
        let batch: Vec<Bytes> = (0..items)
            .map(|n| {
                Bytes::from(format!(
                    r#"{{"user":"u{}","name":"carol","text":"see you at the review meeting tomorrow, message {n}","ts":{}}}"#,
                    n % 50,
                    1_765_000_000 + n
                ))
            })
            .collect();
        group.throughput(Throughput::Elements(items as u64));
        let lobby = Target::Room("lobby".into());
        let compression = Compression::default();
        group.bench_function(format!("{items} chat items"), |b| {
            b.iter(|| WireForm::Deflate.encode(&lobby, std::hint::black_box(&batch), None, &compression))
        });
    }
    group.finish();
}

criterion_group!(benches, encode, deflate);
criterion_main!(benches);
