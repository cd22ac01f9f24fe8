//! One consumer over several streams (issue 17): given up front, or tracked and changed while the scan runs.
//! Against the in-process fake, tokio's paused clock.

use std::collections::BTreeSet;
use std::time::Duration;

use kc_core::fake::FakeKinesis;
use kc_core::{
    Checkpoint, Consumer, ConsumerBuilder, ErrorKind, InitialPosition, MemoryStore, ShardKey, TrackedStream,
};
use kc_test_support::{checkpoint, spawn_collecting, Collect, Seen, Tracker, Wait};

const APP: &str = "test-app";

fn put(fake: &FakeKinesis, name: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    kc_test_support::fake::put_on_stream(fake, name, prefix, range)
}

fn settings(builder: ConsumerBuilder, fake: &FakeKinesis, store: &MemoryStore) -> ConsumerBuilder {
    kc_test_support::fake::several_streams(builder, fake, store, APP)
}

/// Asserts every record was handled as a record of the stream its data names.
fn assert_right_stream(seen: &Seen) {
    for r in seen.all() {
        let stream = r.data.split('-').next().unwrap_or_default();
        assert_eq!(r.stream, stream, "record {} came as one of {}", r.data, r.stream);
    }
}

#[tokio::test(start_paused = true)]
async fn three_streams_every_record_once_in_key_order_with_its_stream() {
    let fake = FakeKinesis::new();
    for (stream, shards) in [("a", 1), ("b", 3), ("c", 5), ("d", 2)] {
        fake.create_stream(stream, shards);
    }
    let mut produced = Vec::new();
    for stream in ["a", "b", "c"] {
        produced.extend(put(&fake, stream, "r", 0..150));
    }
    // `d` starts at LATEST, unlike the others: what it had before the scan is not read.
    put(&fake, "d", "old", 0..20);
    let store = MemoryStore::new();
    let streams =
        ["a".into(), "b".into(), "c".into(), TrackedStream::new("d").initial_position(InitialPosition::Latest)];
    let consumer = settings(Consumer::builder_for_streams(streams), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = collecting.seen.clone();
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    produced.extend(put(&fake, "d", "new", 0..20));
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, result) = collecting.stop(Duration::from_secs(600)).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    assert_right_stream(&seen);
    // Each stream's checkpoints under its own key, as a consumer of that stream alone keeps them.
    let snapshot = store.snapshot();
    for stream in ["a", "b", "c"] {
        for shard in fake.shard_ids(stream) {
            let cp = snapshot.get(&ShardKey::new(APP, stream, shard.as_str()));
            assert!(matches!(cp, Some(Checkpoint::At { .. })), "{stream}/{shard}: {cp:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_consumer_of_one_stream_resumes_from_the_checkpoints_of_several() {
    // The checkpoints of a consumer of several streams are those of a consumer of each stream alone, and back.
    let fake = FakeKinesis::new();
    fake.create_stream("a", 2);
    fake.create_stream("b", 3);
    let store = MemoryStore::new();
    let first: Vec<String> = [put(&fake, "a", "r", 0..40), put(&fake, "b", "r", 0..40)].concat();
    let several = || settings(Consumer::builder_for_streams(["a", "b"]), &fake, &store);
    let (seen, result) = Collect::PAUSED.run(several().build().await.expect("build"), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);

    let second = put(&fake, "a", "s", 0..30);
    let alone = settings(Consumer::builder("a"), &fake, &store).build().await.expect("build");
    let (seen, result) = Collect::PAUSED.run(alone, second.len()).await;
    result.expect("a alone");
    seen.assert_exactly_once(&second);

    let third: Vec<String> = [put(&fake, "a", "t", 0..20), put(&fake, "b", "t", 0..20)].concat();
    let (seen, result) = Collect::PAUSED.run(several().build().await.expect("build"), third.len()).await;
    result.expect("third run");
    seen.assert_exactly_once(&third);
    assert_right_stream(&seen);
}

#[tokio::test(start_paused = true)]
async fn a_tracked_stream_added_starts_and_one_removed_stops_with_its_checkpoints() {
    let fake = FakeKinesis::new();
    for (stream, shards) in [("a", 2), ("b", 1), ("c", 3)] {
        fake.create_stream(stream, shards);
    }
    let tracker = Tracker::default();
    tracker.set(&["a", "b"]);
    let store = MemoryStore::new();
    let consumer = settings(Consumer::builder_tracking(tracker.clone()), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = collecting.seen.clone();
    let mut produced: Vec<String> = [put(&fake, "a", "r", 0..50), put(&fake, "b", "r", 0..50)].concat();
    // Records put on `c` before it is tracked: read from its start (TRIM_HORIZON) when it is added.
    produced.extend(put(&fake, "c", "r", 0..30));
    Wait::PAUSED.until(|| seen.len() >= 100).await;
    assert!(seen.all().iter().all(|r| r.stream != "c"), "c is read before it is tracked");

    tracker.set(&["b", "c"]);
    // The next discovery tick (1 s) stops `a` and starts `c`.
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late_a = put(&fake, "a", "late", 0..20);
    let more: Vec<String> = [put(&fake, "b", "s", 50..70), put(&fake, "c", "s", 30..50)].concat();
    produced.extend(more);
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let (seen, result) = collecting.stop(Duration::from_secs(600)).await;
    result.expect("scan");
    let data: BTreeSet<String> = seen.data().into_iter().collect();
    assert!(late_a.iter().all(|d| !data.contains(d)), "nothing of `a` after its removal");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    assert_right_stream(&seen);
    // The removed stream's checkpoints are those of the last records handled.
    let snapshot = store.snapshot();
    let last_a = seen.all().into_iter().filter(|r| r.stream == "a").map(|r| (r.shard, r.checkpoint));
    for (shard, position) in last_a.collect::<std::collections::BTreeMap<_, _>>() {
        assert_eq!(snapshot.get(&ShardKey::new(APP, "a", shard.as_str())), Some(&position), "a/{shard}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_tracked_stream_created_again_under_its_name_is_read_from_its_start() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 1);
    fake.create_stream("b", 1);
    let tracker = Tracker::default();
    tracker.set(&["a", "b"]);
    let store = MemoryStore::new();
    let consumer = settings(Consumer::builder_tracking(tracker.clone()), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = collecting.seen.clone();
    // `a`'s shard 0 split: finished (`ShardEnd`), its children read.
    let parent = fake.shard_ids("a")[0].clone();
    let mut produced = put(&fake, "a", "old", 0..10);
    fake.split_shard("a", &parent);
    produced.extend(put(&fake, "a", "old", 10..30));
    produced.extend(put(&fake, "b", "r", 0..10));
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.snapshot().get(&ShardKey::new(APP, "a", parent.as_str())), Some(&Checkpoint::ShardEnd));

    // Deleted (its scan stops, the others go on) and created again: shard 0 has the old parent's id.
    fake.delete_stream("a");
    tokio::time::sleep(Duration::from_secs(5)).await;
    fake.recreate_stream("a", 1);
    produced.extend(put(&fake, "a", "new", 0..10));
    produced.extend(put(&fake, "b", "s", 0..10));
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, result) = collecting.stop(Duration::from_secs(600)).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert_right_stream(&seen);
    let snapshot = store.snapshot();
    assert_eq!(snapshot.get(&ShardKey::new(APP, "a", parent.as_str())), Some(&Checkpoint::ShardEnd), "old, left");
    assert!(snapshot.keys().any(|k| k.stream().starts_with("a@")), "the new stream's own key: {snapshot:?}");
}

#[tokio::test(start_paused = true)]
async fn the_first_error_of_one_stream_stops_all_and_bad_names_are_refused() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 2);
    let store = MemoryStore::new();
    // `missing` does not exist: given up front, that is the scan's error.
    let consumer =
        settings(Consumer::builder_for_streams(["a", "missing"]), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let result = tokio::time::timeout(Duration::from_secs(600), collecting.task).await.expect("stops").expect("join");
    assert_eq!(result.expect_err("missing stream").kind(), ErrorKind::StreamNotFound);

    for (streams, want) in [
        (vec!["a", "a"], "named twice"),
        (vec!["a", "b c"], "invalid stream name"),
        (vec!["a", ""], "must not be empty"),
    ] {
        let e = settings(Consumer::builder_for_streams(streams), &fake, &store).build().await.expect_err(want);
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains(want), "{e}");
    }
    let arn = fake.register_consumer("a", "c");
    let e = Consumer::builder_for_streams(["a"]).api(fake.clone()).fan_out_consumer_arn(arn).build().await;
    let e = e.expect_err("fan-out by ARN");
    assert!(e.kind() == ErrorKind::Config && e.to_string().contains("several streams"), "{e}");
    // A group of several streams is built (tests/group_streams.rs reads with it).
    let group = kc_core::Group::new("g", kc_checkpoint::lease::MemoryLeaseTable::new());
    Consumer::builder_for_streams(["a"]).api(fake.clone()).group(group).build().await.expect("a group of streams");

    // A tracker naming a bad stream stops the scan with a configuration error.
    let tracker = Tracker::default();
    tracker.set(&["a", "no/slash"]);
    let consumer = settings(Consumer::builder_tracking(tracker), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let result = tokio::time::timeout(Duration::from_secs(600), collecting.task).await.expect("stops").expect("join");
    assert_eq!(result.expect_err("bad name").kind(), ErrorKind::Config);
}

#[tokio::test(start_paused = true)]
async fn with_fan_out_each_stream_gets_its_stream_consumer_and_every_record_comes_once() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 2);
    fake.create_stream("b", 3);
    let mut produced = put(&fake, "a", "r", 0..60);
    produced.extend(put(&fake, "b", "r", 0..90));
    let consumer = Consumer::builder_for_streams(["a", "b"])
        .api(fake.clone())
        .store(MemoryStore::new())
        .app_name(APP)
        .initial_position(InitialPosition::TrimHorizon)
        .fan_out("efo")
        .build()
        .await
        .expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = collecting.seen.clone();
    Wait::PAUSED.until(|| seen.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, result) = collecting.stop(Duration::from_secs(600)).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    assert_right_stream(&seen);
    for stream in ["a", "b"] {
        assert_eq!(fake.consumers(stream), ["efo"], "the stream consumer registered on {stream}");
    }
    let subscriptions = fake.subscriptions().len();
    assert!(subscriptions >= 5, "{subscriptions} subscriptions for the 5 shards of both streams");
}
