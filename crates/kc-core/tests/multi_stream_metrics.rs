//! A consumer of several streams counts each stream's records under its own `stream` label (a test binary of its
//! own, since the debugging recorder is process-global).

use std::collections::BTreeMap;
use std::time::Duration;

use kc_core::fake::FakeKinesis;
use kc_core::metrics::names;
use kc_core::{Consumer, InitialPosition, MemoryStore, Outcome, Record};
use kc_test_support::cancel_after;
use kc_test_support::fake::{labels, put_to_shard, record_metrics};
use metrics_util::debugging::DebugValue;
use metrics_util::MetricKind;

#[test]
fn records_are_counted_per_stream_and_shard() {
    let metrics = record_metrics(|| async {
        let fake = FakeKinesis::new();
        fake.create_stream("m1", 1);
        fake.create_stream("m2", 2);
        put_to_shard(&fake, "m1", &fake.shard_ids("m1")[0], "a", 7);
        for (i, shard) in fake.shard_ids("m2").iter().enumerate() {
            put_to_shard(&fake, "m2", shard, "b", 10 + i);
        }
        let consumer = Consumer::builder_for_streams(["m1", "m2"])
            .api(fake.clone())
            .store(MemoryStore::new())
            .app_name("metrics-app")
            .initial_position(InitialPosition::TrimHorizon)
            .build()
            .await
            .expect("build");
        cancel_after(consumer.shutdown_token(), Duration::from_secs(10));
        consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await.expect("scan");
    });
    let mut records = BTreeMap::new();
    for (key, value) in metrics {
        if let (MetricKind::Counter, names::RECORDS, DebugValue::Counter(n)) = (key.kind(), key.key().name(), value) {
            let labels = labels(&key);
            let stream = labels.get("stream").cloned().expect("stream label");
            *records.entry(stream).or_insert(0) += n;
        }
    }
    assert_eq!(records, BTreeMap::from([("m1".to_owned(), 7), ("m2".to_owned(), 21)]));
}
