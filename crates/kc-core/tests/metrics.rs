//! The metrics the consumer records, read back through a debugging recorder (a test binary of its own, since the
//! recorder is process-global).

use std::time::Duration;

use kc_core::fake::{FakeKinesis, Op};
use kc_core::metrics::names;
use kc_core::{Consumer, InitialPosition, MemoryStore, Outcome, Record};
use kc_test_support::cancel_after;
use kc_test_support::fake::{labels, put_to_shard, record_metrics};
use metrics_util::debugging::DebugValue;
use metrics_util::MetricKind;

#[test]
fn records_checkpoints_lag_and_retries_are_counted_per_shard() {
    let metrics = record_metrics(|| async {
        let fake = FakeKinesis::new();
        fake.create_stream("m", 2);
        let ids = fake.shard_ids("m");
        put_to_shard(&fake, "m", &ids[0], "a", 30);
        put_to_shard(&fake, "m", &ids[1], "b", 12);
        fake.inject(Op::GetRecords, kc_core::api::ApiErrorKind::Throttled, 1);
        let consumer = Consumer::builder("m")
            .api(fake.clone())
            .store(MemoryStore::new())
            .app_name("metrics-app")
            .initial_position(InitialPosition::TrimHorizon)
            .max_records(10)
            .build()
            .await
            .expect("build");
        cancel_after(consumer.shutdown_token(), Duration::from_secs(10));
        consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await.expect("scan");
    });

    let mut records = std::collections::HashMap::new();
    let mut checkpoints = 0;
    let mut lag_gauges = 0;
    let mut retries = 0;
    for (key, value) in metrics {
        let labels = labels(&key);
        assert_eq!(labels.get("app").map(String::as_str), Some("metrics-app"));
        assert_eq!(labels.get("stream").map(String::as_str), Some("m"));
        let shard = labels.get("shard").cloned().expect("shard label");
        match (key.kind(), key.key().name(), value) {
            (MetricKind::Counter, names::RECORDS, DebugValue::Counter(n)) => {
                records.insert(shard, n);
            }
            (MetricKind::Counter, names::CHECKPOINTS, DebugValue::Counter(n)) => checkpoints += n,
            (MetricKind::Gauge, names::MILLIS_BEHIND_LATEST, DebugValue::Gauge(v)) => {
                assert_eq!(v.into_inner(), 0.0, "caught up at the end");
                lag_gauges += 1;
            }
            (MetricKind::Counter, names::RETRIES, DebugValue::Counter(n)) => {
                assert_eq!(labels.get("reason").map(String::as_str), Some("throttled"));
                retries += n;
            }
            _ => {}
        }
    }
    let ids = ["shardId-000000000000", "shardId-000000000001"];
    assert_eq!(records.get(ids[0]), Some(&30));
    assert_eq!(records.get(ids[1]), Some(&12));
    // One checkpoint per non-empty batch: 3 + 2.
    assert_eq!(checkpoints, 5);
    assert_eq!(lag_gauges, 2);
    assert_eq!(retries, 1);
}
