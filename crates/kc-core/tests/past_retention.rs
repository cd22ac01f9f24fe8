//! A checkpoint older than the stream's retention (the consumer was stopped longer than Kinesis keeps records): the
//! shard is read from TRIM_HORIZON, the oldest record left, with a warning and a metric, as the KCL and the Go
//! library do; nothing stops. Against the in-process fake, tokio's paused clock.

use std::time::Duration;

use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber};
use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, ConsumerBuilder, InitialPosition, MemoryStore, ShardKey};
use kc_test_support::{checkpoint, spawn_collecting, Wait};

const STREAM: &str = "s";

async fn resumes_at_the_trim_horizon(source: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder) {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM)[0].clone();
    let sequences: Vec<String> = (0..30).map(|i| fake.put_to_shard(STREAM, &shard, "k", format!("r{i}"))).collect();
    // Handled up to r4 before the stop; then r0..r9 passed the retention.
    let store = MemoryStore::new();
    let key = ShardKey::new("kinesis-consumer", STREAM, shard.as_str());
    let handled = Checkpoint::at(SequenceNumber::parse(sequences[4].clone()).expect("sequence"));
    store.set(&key, handled).await.expect("set");
    fake.trim_records(STREAM, &shard, 10);

    let builder =
        Consumer::builder(STREAM).api(fake.clone()).store(store.clone()).initial_position(InitialPosition::Latest);
    let consumer = source(builder).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.until(|| scan.seen.len() >= 20 || scan.task.is_finished()).await;
    let (seen, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("a checkpoint past the retention does not stop the scan");
    let want: Vec<String> = (10..30).map(|i| format!("r{i}")).collect();
    assert_eq!(seen.data(), want, "from the oldest record left, in order, each once");
    let last = Checkpoint::at(SequenceNumber::parse(sequences[29].clone()).expect("sequence"));
    assert_eq!(store.get(&key).await.expect("get"), Some(last));
}

#[tokio::test(start_paused = true)]
async fn polling_resumes_a_checkpoint_past_the_retention_at_the_trim_horizon() {
    resumes_at_the_trim_horizon(|b| b).await;
}

#[tokio::test(start_paused = true)]
async fn fan_out_resumes_a_checkpoint_past_the_retention_at_the_trim_horizon() {
    resumes_at_the_trim_horizon(|b| b.fan_out("app")).await;
}
