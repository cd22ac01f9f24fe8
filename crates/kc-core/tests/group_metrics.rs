//! The lease metrics of a group worker, read back through a debugging recorder (a test binary of its own, since the
//! recorder is process-global).

use std::collections::HashMap;
use std::time::Duration;

use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kc_core::fake::FakeKinesis;
use kc_core::metrics::names;
use kc_core::{Consumer, Group, InitialPosition, Outcome, Record};
use kc_test_support::fake::{labels, record_metrics};
use metrics_util::debugging::DebugValue;

#[test]
fn leases_held_taken_lost_and_workers_seen() {
    let metrics = record_metrics(|| async {
        let fake = FakeKinesis::new();
        fake.create_stream("m", 4);
        let table = MemoryLeaseTable::new();
        let consumer = Consumer::builder("m")
            .api(fake.clone())
            .initial_position(InitialPosition::TrimHorizon)
            .group(Group::new("mg", table.clone()).worker_id("w1"))
            .build()
            .await
            .expect("build");
        let token = consumer.shutdown_token();
        let task = tokio::spawn(async move {
            consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another worker takes one lease over (as if it judged it expired): w1 loses it at its next renewal.
        let scope = LeaseScope::new("mg", "m");
        let lease = table.list(&scope).await.expect("list").remove(0);
        assert_eq!(lease.owner.as_deref(), Some("w1"));
        table.take(&scope, &lease.shard_id, lease.counter, "intruder").await.expect("take");
        tokio::time::sleep(Duration::from_secs(5)).await;
        token.cancel();
        task.await.expect("task").expect("scan");
    });

    let mut values: HashMap<String, f64> = HashMap::new();
    for (key, value) in metrics {
        let labels = labels(&key);
        assert!(labels.get("worker").is_some_and(|w| w == "w1") || !key.key().name().contains("lease"));
        let v = match value {
            DebugValue::Counter(c) => c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => continue,
        };
        values.insert(key.key().name().to_owned(), v);
    }
    assert_eq!(values.get(names::LEASES_TAKEN), Some(&4.0), "{values:?}");
    assert_eq!(values.get(names::LEASES_LOST), Some(&1.0), "{values:?}");
    assert_eq!(values.get(names::LEASES_HELD), Some(&0.0), "all released at the stop: {values:?}");
    // The intruder owns a lease it took 5 s ago (lease duration 10 s): a live worker, seen at the check every half
    // lease duration.
    assert_eq!(values.get(names::WORKERS), Some(&2.0), "w1 and the intruder: {values:?}");
}
