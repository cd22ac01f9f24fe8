//! The metrics of a fan-out scan, read back through a debugging recorder (a test binary of its own, since the
//! recorder is process-global): the same names and labels as polling.

use std::collections::HashMap;
use std::time::Duration;

use kc_core::fake::{FakeKinesis, Op};
use kc_core::metrics::names;
use kc_core::{Consumer, InitialPosition, MemoryStore, Outcome, Record};
use kc_test_support::cancel_after;
use kc_test_support::fake::{labels, put_to_shard, record_metrics};
use metrics_util::debugging::DebugValue;
use metrics_util::MetricKind;

#[test]
fn records_checkpoints_lag_and_resubscriptions_are_counted_per_shard() {
    let metrics = record_metrics(|| async {
        let fake = FakeKinesis::new();
        fake.create_stream("m", 2);
        fake.event_limit(10);
        let ids = fake.shard_ids("m");
        put_to_shard(&fake, "m", &ids[0], "a", 30);
        put_to_shard(&fake, "m", &ids[1], "b", 12);
        fake.inject(Op::SubscribeEvent, kc_core::api::ApiErrorKind::Transient, 1);
        let consumer = Consumer::builder("m")
            .api(fake.clone())
            .store(MemoryStore::new())
            .app_name("metrics-app")
            .initial_position(InitialPosition::TrimHorizon)
            .fan_out("metrics")
            .build()
            .await
            .expect("build");
        cancel_after(consumer.shutdown_token(), Duration::from_secs(20));
        consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await.expect("scan");
    });

    let mut records = HashMap::new();
    let mut lag_gauges = 0;
    let mut retries: HashMap<String, u64> = HashMap::new();
    let mut checkpoints = 0;
    for (key, value) in metrics {
        let labels = labels(&key);
        assert_eq!(labels.get("app").map(String::as_str), Some("metrics-app"));
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
                *retries.entry(labels.get("reason").cloned().unwrap_or_default()).or_default() += n;
            }
            _ => {}
        }
    }
    assert_eq!(records.get("shardId-000000000000"), Some(&30));
    assert_eq!(records.get("shardId-000000000001"), Some(&12));
    assert_eq!(lag_gauges, 2, "MillisBehindLatest per shard");
    // One checkpoint per non-empty event: 3 + 2.
    assert_eq!(checkpoints, 5);
    assert_eq!(retries.get("subscription_failed"), Some(&1), "{retries:?}");
}
