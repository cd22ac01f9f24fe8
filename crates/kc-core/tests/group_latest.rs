//! A new consumer group under `Latest` on a stream that was resharded before it started (every on-demand stream):
//! the children of parents the group never read start at `Latest` (from when the group first listed the shards),
//! not at TRIM_HORIZON, which would replay the whole retention; children of parents the group read are read whole.
//! Against the in-process fake and the in-memory lease table, tokio's paused clock. (The fake stamps records with
//! the real clock, as the leases' creation times are: the tests leave real milliseconds between old and new puts.)

use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::lease::{LeaseTable, MemoryLeaseTable};
use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, Group, InitialPosition};
use kc_test_support::{checkpoint, spawn_collecting, Collecting, Wait};

const STREAM: &str = "s";

/// Real time between records put before the group started and the group's start (and after it, the new records).
fn real_gap() {
    std::thread::sleep(Duration::from_millis(20));
}

/// Puts `{prefix}0..{prefix}n` with keys `k0..kn` (spread over the open shards); returns their data.
fn put_keys(fake: &FakeKinesis, prefix: &str, n: usize) -> Vec<String> {
    let mut data = Vec::new();
    for i in 0..n {
        fake.put(STREAM, &format!("k{i}"), format!("{prefix}{i}"));
        data.push(format!("{prefix}{i}"));
    }
    data
}

async fn start_worker(fake: &FakeKinesis, table: Arc<dyn LeaseTable>) -> Collecting {
    let group = Group::new("g", table).worker_id("w1").lease_duration(Duration::from_secs(10));
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::Latest)
        .discovery_interval(Duration::from_secs(1))
        .group(group)
        .build()
        .await
        .expect("build");
    spawn_collecting(consumer, Duration::ZERO, checkpoint)
}

/// Waits (in paused time) until the worker reads every open shard, then puts `new` records and collects them.
async fn new_records_after_start(fake: &FakeKinesis, worker: Collecting) -> (Vec<String>, Vec<String>) {
    let open = fake.open_shard_ids(STREAM).len();
    // Takes, skips of closed parents and the children's starts happen in the first cycles.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(fake.subscriptions().is_empty(), "polling");
    real_gap();
    let new = put_keys(fake, "new-", 20);
    Wait::PAUSED.expect("every new record", || worker.seen.len() >= new.len() || worker.task.is_finished()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (seen, result) = worker.stop(Duration::from_secs(60)).await;
    result.expect("scan");
    assert!(open > 0);
    (new, seen.data())
}

#[tokio::test(start_paused = true)]
async fn children_of_parents_closed_before_the_group_started_start_at_latest() {
    only_new_records_of_children(false).await;
}

#[tokio::test(start_paused = true)]
async fn children_of_parents_past_the_retention_start_at_latest() {
    only_new_records_of_children(true).await;
}

/// A stream split before the group starts (its parent `trimmed` past the retention, or still listed, closed): the
/// group under `Latest` reads only what is put after it started.
async fn only_new_records_of_children(trimmed: bool) {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let parent = fake.shard_ids(STREAM)[0].clone();
    put_keys(&fake, "old-parent-", 10);
    fake.split_shard(STREAM, &parent);
    put_keys(&fake, "old-child-", 20);
    if trimmed {
        fake.trim_shard(STREAM, &parent);
    }
    real_gap();
    let worker = start_worker(&fake, Arc::new(MemoryLeaseTable::new())).await;
    let (new, mut seen) = new_records_after_start(&fake, worker).await;
    seen.sort();
    let mut want = new;
    want.sort();
    assert_eq!(seen, want, "only what was put after the group started");
}

#[tokio::test(start_paused = true)]
async fn children_of_parents_the_group_read_are_read_whole() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let parent = fake.shard_ids(STREAM)[0].clone();
    put_keys(&fake, "old-", 5);
    real_gap();
    let worker = start_worker(&fake, Arc::new(MemoryLeaseTable::new())).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    real_gap();
    let before = put_keys(&fake, "parent-", 10);
    Wait::PAUSED.expect("the parent's records", || worker.seen.len() >= before.len()).await;
    fake.split_shard(STREAM, &parent);
    let after = put_keys(&fake, "child-", 20);
    Wait::PAUSED.expect("every record", || worker.seen.len() >= before.len() + after.len()).await;
    let (seen, result) = worker.stop(Duration::from_secs(60)).await;
    result.expect("scan");
    let mut seen = seen.data();
    seen.sort();
    let mut want: Vec<String> = before.into_iter().chain(after).collect();
    want.sort();
    assert_eq!(seen, want, "everything put after the group started, the children's records whole");
}
