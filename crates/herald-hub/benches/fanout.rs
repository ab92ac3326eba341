//! The hub's fan-out: one push to a room of 1, 100 and 10,000 members whose `deliver` only takes the frame (a
//! refcount) and counts it, so the figure is the hub's own cost per recipient, without sockets.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_hub::batch::MergePolicy;
use herald_hub::{Hub, HubConfig, HubMetrics, Recipient};
use herald_protocol::bus::Target;
use herald_protocol::forms::WireForm;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Counter {
    id: u64,
    received: Arc<AtomicU64>,
}

impl Recipient for Counter {
    fn id(&self) -> u64 {
        self.id
    }
    fn form(&self) -> WireForm {
        WireForm::WebSocket
    }
    fn deliver(&self, frame: &Bytes) {
        let taken = frame.clone();
        self.received.fetch_add(1, Ordering::Relaxed);
        drop(taken);
    }
    fn user(&self) -> Option<&Arc<str>> {
        None
    }
    fn info(&self) -> Option<&serde_json::value::RawValue> {
        None
    }
    fn disconnect(&self) {}
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    for members in [1u64, 100, 10_000] {
        let config = HubConfig {
            shards: 16,
            merge: MergePolicy {
                window: Duration::ZERO,
                max_items: 100,
            },
            max_rooms: 0,
            history: herald_hub::history::HistoryConfig::OFF,
            queue_items: 100_000,
            queue_bytes: 1 << 30,
            compression: herald_protocol::deflate::Compression::default(),
        };
        let hub = Hub::new(config, HubMetrics::unregistered());
        let received = Arc::new(AtomicU64::new(0));
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        runtime.block_on(async { hub.spawn_workers(&tracker, stop.clone()) });
        for id in 0..members {
            let member = Arc::new(Counter {
                id,
                received: Arc::clone(&received),
            });
            hub.register(&member);
            hub.join("room", &member).unwrap();
        }
        let target = Target::Room(Arc::from("room"));
        let item = vec![Bytes::from_static(
            br#"{"n":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        )];
        group.throughput(Throughput::Elements(members));
        group.bench_function(format!("{members} members"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let expected = received.load(Ordering::Relaxed) + members;
                    hub.push(&target, item.clone()).unwrap();
                    while received.load(Ordering::Relaxed) < expected {
                        tokio::task::yield_now().await;
                    }
                })
            })
        });
        stop.cancel();
        runtime.block_on(async {
            tracker.close();
            tracker.wait().await;
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
