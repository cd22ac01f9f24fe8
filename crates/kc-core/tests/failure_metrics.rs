//! The failure policy's and the handler timeout's metrics (issue 14), read back through a debugging recorder (a test binary of its own: the
//! recorder is process-global).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use kc_core::fake::FakeKinesis;
use kc_core::metrics::names;
use kc_core::{
    Consumer, DeadLetter, DeadLetterError, FailedRecord, FailurePolicy, HandlerTimeout, InitialPosition, MemoryStore,
    Outcome, Record,
};
use kc_test_support::cancel_after;
use kc_test_support::fake::{labels, record_metrics};
use metrics_util::debugging::DebugValue;

struct Accept;

#[async_trait]
impl DeadLetter for Accept {
    async fn send(&self, _: &FailedRecord) -> Result<(), DeadLetterError> {
        Ok(())
    }
}

async fn scan(app: &str, policy: FailurePolicy, stall: Option<HandlerTimeout>) {
    let fake = FakeKinesis::new();
    fake.create_stream("m", 2);
    let ids = fake.shard_ids("m");
    for (shard, data) in [(&ids[0], "ok"), (&ids[0], "bad"), (&ids[0], "ok"), (&ids[1], "ok")] {
        fake.put_to_shard("m", shard, "k", data);
    }
    let consumer = Consumer::builder("m")
        .api(fake)
        .store(MemoryStore::new())
        .app_name(app)
        .initial_position(InitialPosition::TrimHorizon)
        .on_handler_error(policy);
    let consumer = match stall {
        Some(stall) => consumer.handler_timeout(stall),
        None => consumer,
    };
    let consumer = consumer.build().await.expect("build");
    cancel_after(consumer.shutdown_token(), Duration::from_secs(60));
    consumer
        .scan(|r: Record| async move {
            if r.data() == "bad".as_bytes() {
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Err(std::io::Error::other("bad"));
            }
            Ok(Outcome::Checkpoint)
        })
        .await
        .expect("scan");
}

/// App, metric name, reason: what a counter is counted under, besides the shard.
type Counted = (String, &'static str, Option<String>);

#[test]
fn handler_errors_retries_skips_and_dead_letters_are_counted_on_the_failing_shard() {
    let metrics = record_metrics(|| async {
        scan("skipping", FailurePolicy::skip().max_attempts(3), None).await;
        scan("dead-lettering", FailurePolicy::dead_letter(Accept).max_attempts(2), None).await;
        scan("stalling", FailurePolicy::skip(), Some(HandlerTimeout::log_after(Duration::from_secs(1)))).await;
    });
    let mut seen: HashMap<Counted, Vec<(String, u64)>> = HashMap::new();
    for (key, value) in metrics {
        let name = key.key().name();
        if ![names::HANDLER_ERRORS, names::RETRIES, names::SKIPPED, names::DEAD_LETTERED, names::HANDLER_STALLS]
            .contains(&name)
        {
            continue;
        }
        let DebugValue::Counter(n) = value else { panic!("{name} is a counter") };
        let labels = labels(&key);
        assert_eq!(labels["stream"], "m");
        let name = [names::HANDLER_ERRORS, names::RETRIES, names::SKIPPED, names::DEAD_LETTERED, names::HANDLER_STALLS]
            .into_iter()
            .find(|n| *n == name)
            .expect("known");
        let entry = seen.entry((labels["app"].clone(), name, labels.get("reason").cloned())).or_default();
        entry.push((labels["shard"].clone(), n));
    }
    let shard0 = "shardId-000000000000".to_owned();
    let want = [
        (("skipping", names::HANDLER_ERRORS, None), 3),
        (("skipping", names::RETRIES, Some("handler")), 2),
        (("skipping", names::SKIPPED, None), 1),
        (("dead-lettering", names::HANDLER_ERRORS, None), 2),
        (("dead-lettering", names::RETRIES, Some("handler")), 1),
        (("dead-lettering", names::DEAD_LETTERED, None), 1),
        (("stalling", names::HANDLER_STALLS, None), 1),
        (("stalling", names::HANDLER_ERRORS, None), 1),
        (("stalling", names::SKIPPED, None), 1),
    ];
    for ((app, name, reason), n) in want {
        let key = (app.to_owned(), name, reason.map(str::to_owned));
        assert_eq!(seen.remove(&key), Some(vec![(shard0.clone(), n)]), "{key:?}");
    }
    assert!(seen.is_empty(), "unexpected: {seen:?}");
}
