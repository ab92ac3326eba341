//! Encoding a merged batch into its one PUSH frame (done once per frame, whatever the number of recipients).
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_protocol::bus::Target;
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

criterion_group!(benches, encode);
criterion_main!(benches);
