//! A shard's lag gauge is cleared when this process stops reading the shard (a test binary of its own: the metrics
//! recorder is process-global).

use kc_core::fake::FakeKinesis;
use kc_core::metrics::names;
use kc_core::{Consumer, InitialPosition, MemoryStore, Outcome, Record};
use kc_test_support::fake::{labels, put_to_shard};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// The MillisBehindLatest gauge of `shard`, as the recorder holds it now.
fn lag(snapshotter: &Snapshotter, shard: &str) -> Option<f64> {
    snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
        let is_it = key.key().name() == names::MILLIS_BEHIND_LATEST && labels(&key)["shard"] == shard;
        match value {
            DebugValue::Gauge(v) if is_it => Some(v.into_inner()),
            _ => None,
        }
    })
}

#[test]
fn the_lag_gauge_is_cleared_when_the_shard_is_no_longer_read() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("first recorder");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    rt.block_on(async {
        let fake = FakeKinesis::new();
        fake.create_stream("lag", 1);
        let shard = fake.shard_ids("lag")[0].clone();
        put_to_shard(&fake, "lag", &shard, "r", 20);
        let consumer = Consumer::builder("lag")
            .api(fake.clone())
            .store(MemoryStore::new())
            .app_name("gauges")
            .initial_position(InitialPosition::TrimHorizon)
            .max_records(5)
            .build()
            .await
            .expect("build");
        // Stop at the first record: 15 records are still behind it, and the last fetch said so (1 s behind).
        let shutdown = consumer.shutdown_token();
        consumer
            .scan(move |_: Record| {
                shutdown.cancel();
                async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }
            })
            .await
            .expect("scan");
        // One snapshot only: the debugging recorder's snapshot resets what it reads.
        assert_eq!(lag(&snapshotter, &shard), Some(0.0), "cleared once the shard is no longer read");
    });
}
