//! Shards that leave the stream (past its retention) before they were read to their end: they are finished, with a
//! warning, and their children are read; only a missing stream is an error. Against the in-process fake, tokio's
//! paused clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kc_checkpoint::{Checkpoint, SequenceNumber};
use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, Group, InitialPosition, MemoryStore, ShardKey};
use kc_test_support::{checkpoint, spawn_collecting, Seen, Wait};

const STREAM: &str = "s";

/// A stream whose one shard was split: the parent holds `p0..p29`, the children `c0..c19`. Returns the parent's id
/// and the sequence number of `p4`.
fn split_stream(fake: &FakeKinesis) -> (String, String) {
    fake.create_stream(STREAM, 1);
    let parent = fake.shard_ids(STREAM)[0].clone();
    let mut p4 = String::new();
    for i in 0..30 {
        let seq = fake.put_to_shard(STREAM, &parent, &format!("k{i}"), format!("p{i}"));
        if i == 4 {
            p4 = seq;
        }
    }
    fake.split_shard(STREAM, &parent);
    for i in 0..20 {
        fake.put(STREAM, &format!("k{i}"), format!("c{i}"));
    }
    (parent, p4)
}

fn children() -> BTreeSet<String> {
    (0..20).map(|i| format!("c{i}")).collect()
}

fn handled(seen: &Seen) -> BTreeSet<String> {
    seen.data().into_iter().collect()
}

#[tokio::test(start_paused = true)]
async fn a_shard_trimmed_while_it_is_polled_is_finished_and_its_children_are_read() {
    trimmed_while_read(|b| b.max_records(10), |_| {}).await;
}

#[tokio::test(start_paused = true)]
async fn a_shard_trimmed_while_it_is_subscribed_to_is_finished_and_its_children_are_read() {
    // Events of 5 records: the subscription asks for more after the parent left the stream.
    trimmed_while_read(|b| b.fan_out("app"), |fake| fake.event_limit(5)).await;
}

async fn trimmed_while_read(
    source: impl FnOnce(kc_core::ConsumerBuilder) -> kc_core::ConsumerBuilder,
    setup: impl FnOnce(&FakeKinesis),
) {
    let fake = FakeKinesis::new();
    setup(&fake);
    let (parent, _) = split_stream(&fake);
    let store = MemoryStore::new();
    let builder = Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .discovery_interval(Duration::from_secs(1));
    let consumer = source(builder).build().await.expect("build");
    // A handler that takes 1 s a record.
    let scan = spawn_collecting(consumer, Duration::from_secs(1), checkpoint);
    // The parent leaves the stream (its records past the retention) while its first batch is being handled.
    Wait::PAUSED.expect("5 records", || scan.seen.len() >= 5).await;
    fake.trim_shard(STREAM, &parent);
    Wait::PAUSED.until(|| handled(&scan.seen).is_superset(&children()) || scan.task.is_finished()).await;
    let (seen, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("a shard that left the stream does not stop the scan");
    let seen = seen.data();
    assert!(children().iter().all(|c| seen.contains(c)), "every child's record: {seen:?}");
    // The records the parent's task had fetched before the trim are handled, then the children's: parents first.
    let first_child = seen.iter().position(|d| d.starts_with('c')).expect("a child's record");
    assert!(seen[first_child..].iter().all(|d| d.starts_with('c')), "no parent record after a child's: {seen:?}");
    let key = ShardKey::new("kinesis-consumer", STREAM, parent.as_str());
    assert_eq!(store.snapshot().get(&key), Some(&Checkpoint::ShardEnd), "the parent is finished");
}

#[tokio::test(start_paused = true)]
async fn a_group_takes_an_unfinished_lease_of_a_shard_that_left_the_stream_and_reads_its_children() {
    let fake = FakeKinesis::new();
    let (parent, p4) = split_stream(&fake);
    // A group that read the parent up to p4, then was down longer than the retention: the parent left the stream.
    let table = Arc::new(MemoryLeaseTable::new());
    let scope = LeaseScope::new("g", STREAM);
    table.create(&scope, &parent, &[]).await.expect("create");
    for child in fake.shard_ids(STREAM).iter().filter(|id| **id != parent) {
        table.create(&scope, child, std::slice::from_ref(&parent)).await.expect("create child");
    }
    let lease = table.take(&scope, &parent, 0, "old").await.expect("take");
    let p4 = Checkpoint::at(SequenceNumber::parse(p4).expect("sequence"));
    let counter = table.checkpoint(&scope, &parent, "old", lease.counter, &p4).await.expect("checkpoint");
    table.release(&scope, &parent, "old", counter).await.expect("release");
    fake.trim_shard(STREAM, &parent);

    let group = Group::new("g", Arc::clone(&table) as Arc<dyn LeaseTable>).worker_id("w1");
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
        .discovery_interval(Duration::from_secs(1))
        .group(group)
        .build()
        .await
        .expect("build");
    let scan = spawn_collecting(consumer, Duration::from_secs(1), checkpoint);
    Wait::PAUSED.until(|| handled(&scan.seen).is_superset(&children()) || scan.task.is_finished()).await;
    let (seen, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("the worker does not stop on a shard that left the stream");
    assert_eq!(handled(&seen), children(), "every child's record, nothing of the trimmed parent");
    let parent_lease = table.get(&scope, &parent).await.expect("get");
    let finished = parent_lease.as_ref().is_none_or(|l| l.is_finished());
    assert!(finished, "the parent's lease is finished (or deleted): {parent_lease:?}");
}
