//! A stream deleted and created again under the same name (issue 12, defect 9): its shards have the old ids, and the
//! old stream's checkpoints (a finished parent's `ShardEnd`, sequence numbers of records that are gone) must not
//! apply to it. Against the in-process fake, tokio's paused clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kc_checkpoint::{Checkpoint, CheckpointStore};
use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, ConsumerBuilder, Group, InitialPosition, MemoryStore, ShardKey};
use kc_test_support::{checkpoint, spawn_collecting, Wait};

const STREAM: &str = "s";

fn builder(fake: &FakeKinesis) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
        .discovery_interval(Duration::from_secs(1))
}

/// Reads `want` with `builder`, then stops; what was handled.
async fn read(builder: ConsumerBuilder, want: &BTreeSet<String>) -> BTreeSet<String> {
    let consumer = builder.build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.until(|| scan.seen.data().into_iter().collect::<BTreeSet<_>>().is_superset(want)).await;
    // Anything more (a record read twice) arrives now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (seen, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("scan");
    seen.data().into_iter().collect()
}

/// The old stream: shard 0 split (`shardId-000000000000` finished, its children read), `old0..old29` in all.
fn old_stream(fake: &FakeKinesis) -> BTreeSet<String> {
    fake.create_stream(STREAM, 1);
    let parent = fake.shard_ids(STREAM)[0].clone();
    for i in 0..10 {
        fake.put_to_shard(STREAM, &parent, &format!("k{i}"), format!("old{i}"));
    }
    fake.split_shard(STREAM, &parent);
    for i in 10..30 {
        fake.put(STREAM, &format!("k{i}"), format!("old{i}"));
    }
    (0..30).map(|i| format!("old{i}")).collect()
}

/// The new stream under the same name: one open shard `shardId-000000000000` again, `new0..new9`.
fn new_stream(fake: &FakeKinesis) -> BTreeSet<String> {
    fake.recreate_stream(STREAM, 1);
    assert_eq!(fake.shard_ids(STREAM), ["shardId-000000000000"], "the old stream's first shard id");
    for i in 0..10 {
        fake.put(STREAM, &format!("k{i}"), format!("new{i}"));
    }
    (0..10).map(|i| format!("new{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_stream_created_again_is_read_from_its_start_not_from_the_old_streams_checkpoints() {
    let fake = FakeKinesis::new();
    let store = MemoryStore::new();
    let old = old_stream(&fake);
    assert_eq!(read(builder(&fake).store(store.clone()), &old).await, old);
    let old_parent = ShardKey::new("kinesis-consumer", STREAM, "shardId-000000000000");
    assert_eq!(store.snapshot().get(&old_parent), Some(&Checkpoint::ShardEnd), "the old stream's split parent");

    let new = new_stream(&fake);
    // Before the fix the new shard 0 was skipped as finished (its id's checkpoint is the old parent's ShardEnd).
    assert_eq!(read(builder(&fake).store(store.clone()), &new).await, new, "every record of the new stream, once");
    let snapshot = store.snapshot();
    assert_eq!(snapshot.get(&old_parent), Some(&Checkpoint::ShardEnd), "the old stream's checkpoints are left alone");
    let new_keys: Vec<&ShardKey> = snapshot.keys().filter(|k| k.stream().starts_with("s@")).collect();
    assert_eq!(new_keys.len(), 1, "the new stream's checkpoints under their own key: {snapshot:?}");

    // A restart on the same new stream resumes from the new stream's checkpoints: nothing is read again.
    fake.put(STREAM, "k", "new10");
    let more = BTreeSet::from(["new10".to_owned()]);
    assert_eq!(read(builder(&fake).store(store.clone()), &more).await, more, "only what came since");
}

#[tokio::test(start_paused = true)]
async fn a_group_on_a_stream_created_again_reads_it_from_its_start() {
    let fake = FakeKinesis::new();
    let table = Arc::new(MemoryLeaseTable::new());
    let group = || Group::new("g", Arc::clone(&table) as Arc<dyn LeaseTable>).worker_id("w1");
    let old = old_stream(&fake);
    assert_eq!(read(builder(&fake).group(group()), &old).await, old);

    let new = new_stream(&fake);
    assert_eq!(read(builder(&fake).group(group()), &new).await, new, "every record of the new stream, once");
    let old_leases = table.list(&LeaseScope::new("g", STREAM)).await.expect("list");
    assert!(old_leases.iter().all(|l| l.owner.is_none()), "the old stream's leases are left alone: {old_leases:?}");

    fake.put(STREAM, "k", "new10");
    let more = BTreeSet::from(["new10".to_owned()]);
    assert_eq!(read(builder(&fake).group(group()), &more).await, more, "only what came since");
}

#[tokio::test(start_paused = true)]
async fn checkpoints_written_before_the_marker_existed_are_the_streams() {
    // A store written by an earlier version: checkpoints, no marker. They are taken as this stream's.
    let fake = FakeKinesis::new();
    let store = MemoryStore::new();
    let old = old_stream(&fake);
    assert_eq!(read(builder(&fake).store(store.clone()), &old).await, old);
    let marker = ShardKey::new("kinesis-consumer", STREAM, "#created");
    let without_marker = MemoryStore::new();
    for (key, value) in store.snapshot().into_iter().filter(|(k, _)| *k != marker) {
        without_marker.set(&key, value).await.expect("set");
    }
    without_marker.flush().await.expect("flush");
    fake.put(STREAM, "k", "more0");
    let more = BTreeSet::from(["more0".to_owned()]);
    assert_eq!(read(builder(&fake).store(without_marker.clone()), &more).await, more, "resumed, nothing again");
    assert!(without_marker.snapshot().contains_key(&marker), "the marker is written then");
}
