//! Streams named by ARN (issue 17: cross-account streams are named this way), alone or mixed with streams named by
//! name: every record comes once with its stream as given and its ARN, checkpoints are keyed by the stream as given,
//! a tracker adds a stream by ARN while the scan runs, a group balances ARN-named streams, and a malformed ARN is a
//! clear error. Against the in-process fake (which takes a stream by name or by `FakeKinesis::stream_arn`), tokio's
//! paused clock; against kinesis-local and kinesalite in the `kc-integration` package (tests/arn_streams.rs).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{
    Checkpoint, Consumer, ConsumerBuilder, ErrorKind, Group, InitialPosition, MemoryStore, Record, ShardKey, StreamId,
};
use kc_test_support::{checkpoint, spawn_collecting, spawn_recording, Collect, Seen, Tracker, Wait};
use tokio_util::sync::CancellationToken;

const APP: &str = "test-app";

fn arn(name: &str) -> String {
    FakeKinesis::stream_arn(name)
}

fn put(fake: &FakeKinesis, name: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    kc_test_support::fake::put_on_stream(fake, name, prefix, range)
}

fn settings(builder: ConsumerBuilder, fake: &FakeKinesis, store: &MemoryStore) -> ConsumerBuilder {
    kc_test_support::fake::several_streams(builder, fake, store, APP)
}

/// Asserts that every record came with the stream its data names, as `given` names that stream (its name or its
/// ARN), and with that stream's ARN.
fn assert_streams(seen: &Seen, given: &HashMap<&str, String>) {
    for r in seen.all() {
        let name = r.data.split('-').next().unwrap_or_default();
        assert_eq!(Some(&r.stream), given.get(name), "record {} came as one of {}", r.data, r.stream);
        assert_eq!(r.stream_arn, arn(name), "record {}", r.data);
    }
}

#[tokio::test(start_paused = true)]
async fn streams_named_by_arn_and_by_name_deliver_every_record_with_their_stream_and_arn() {
    let fake = FakeKinesis::new();
    for (name, shards) in [("a", 2), ("b", 3), ("c", 1)] {
        fake.create_stream(name, shards);
    }
    let produced: Vec<String> =
        [put(&fake, "a", "r", 0..70), put(&fake, "b", "r", 0..90), put(&fake, "c", "r", 0..30)].concat();
    let given: HashMap<&str, String> = [("a", arn("a")), ("b", arn("b")), ("c", "c".to_owned())].into();
    let store = MemoryStore::new();
    let streams = [given["a"].clone(), given["b"].clone(), given["c"].clone()];
    let consumer = settings(Consumer::builder_for_streams(streams), &fake, &store).build().await.expect("build");
    let (seen, result) = Collect::PAUSED.run(consumer, produced.len()).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    assert_streams(&seen, &given);
    // One DescribeStreamSummary per stream, at its start: the ARN and the creation time from the same answer.
    assert_eq!(fake.calls(Op::DescribeStreamSummary), 3);
    // Checkpoints (and the creation marker) keyed by the stream as given.
    let snapshot = store.snapshot();
    for name in ["a", "b", "c"] {
        for shard in fake.shard_ids(name) {
            let cp = snapshot.get(&ShardKey::new(APP, given[name].as_str(), shard.as_str()));
            assert!(matches!(cp, Some(Checkpoint::At { .. })), "{name}/{shard}: {cp:?}");
        }
        assert!(snapshot.contains_key(&ShardKey::new(APP, given[name].as_str(), "#created")), "{name}'s marker");
    }
    assert!(!snapshot.keys().any(|k| k.stream() == "a" || k.stream() == "b"), "no key by name: {snapshot:?}");
}

#[tokio::test(start_paused = true)]
async fn a_consumer_of_a_stream_named_by_arn_resumes_from_its_checkpoints_after_a_restart() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 3);
    let store = MemoryStore::new();
    let consumer = || settings(Consumer::builder(arn("a")), &fake, &store);
    let first = put(&fake, "a", "r", 0..60);
    let (seen, result) = Collect::PAUSED.run(consumer().build().await.expect("build"), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    assert!(seen.all().iter().all(|r| r.stream == arn("a") && r.stream_arn == arn("a")));

    let second = put(&fake, "a", "s", 0..40);
    let (seen, result) = Collect::PAUSED.run(consumer().build().await.expect("build"), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);

    // The same stream by name is another key (documented: not detected): it starts at its initial position.
    let by_name = settings(Consumer::builder("a"), &fake, &store).build().await.expect("build");
    let (seen, result) = Collect::PAUSED.run(by_name, first.len() + second.len()).await;
    result.expect("by name");
    seen.assert_exactly_once(&[first, second].concat());
    assert!(seen.all().iter().all(|r| r.stream == "a" && r.stream_arn == arn("a")));
}

#[tokio::test(start_paused = true)]
async fn a_tracker_adds_a_stream_by_arn_while_the_scan_runs() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 2);
    fake.create_stream("b", 2);
    let tracker = Tracker::default();
    tracker.set(&[arn("a")]);
    let store = MemoryStore::new();
    let mut produced = put(&fake, "a", "r", 0..50);
    let consumer = settings(Consumer::builder_tracking(tracker.clone()), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = collecting.seen.clone();
    Wait::PAUSED.expect("a's records", || seen.len() >= produced.len()).await;
    // b had records before it was added: it starts at the initial position (TRIM_HORIZON) and reads them.
    produced.extend(put(&fake, "b", "r", 0..40));
    tracker.set(&[arn("a"), arn("b")]);
    produced.extend(put(&fake, "a", "s", 0..20));
    Wait::PAUSED.expect("every record", || seen.len() >= produced.len()).await;
    let (seen, result) = collecting.stop(Duration::from_secs(600)).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert_streams(&seen, &[("a", arn("a")), ("b", arn("b"))].into());
    for shard in fake.shard_ids("b") {
        let cp = store.snapshot().get(&ShardKey::new(APP, arn("b").as_str(), shard.as_str())).cloned();
        assert!(matches!(cp, Some(Checkpoint::At { .. })), "b/{shard}: {cp:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_group_of_three_workers_balances_three_streams_named_by_arn() {
    const GROUP: &str = "g";
    const LEASE: Duration = Duration::from_secs(10);
    let fake = FakeKinesis::new();
    for name in ["x", "y", "z"] {
        fake.create_stream(name, 2);
    }
    let streams: Vec<String> = ["x", "y", "z"].map(arn).to_vec();
    let table = MemoryLeaseTable::new();
    let seen = Seen::default();
    let mut workers = Vec::new();
    for id in ["w1", "w2", "w3"] {
        let token = CancellationToken::new();
        let builder = Consumer::builder_for_streams(streams.clone())
            .api(fake.clone())
            .initial_position(InitialPosition::TrimHorizon)
            .discovery_interval(Duration::from_secs(1))
            .max_records(10)
            .shutdown(token.clone())
            .group(Group::new(GROUP, table.clone()).worker_id(id).lease_duration(LEASE));
        let task = spawn_recording(builder, seen.for_worker(id));
        workers.push((token, task));
    }
    // Leases held per worker over every stream's scope, which is the stream as given: its ARN.
    let spread = || async {
        let mut per: HashMap<String, usize> = HashMap::new();
        for stream in &streams {
            for l in table.list(&LeaseScope::new(GROUP, stream.as_str())).await.expect("list") {
                *per.entry(l.owner.unwrap_or_default()).or_default() += 1;
            }
        }
        let mut counts: Vec<usize> = per.into_values().collect();
        counts.sort_unstable();
        counts
    };
    Wait::PAUSED.expect_async("2/2/2 over the three streams", || async { spread().await == [2, 2, 2] }).await;
    let produced: Vec<String> = ["x", "y", "z"].iter().flat_map(|name| put(&fake, name, "r", 0..40)).collect();
    Wait::PAUSED.expect("every record", || seen.distinct() >= produced.len()).await;
    seen.assert_all_handled(&produced);
    seen.assert_key_order();
    assert_streams(&seen, &[("x", arn("x")), ("y", arn("y")), ("z", arn("z"))].into());
    for (token, task) in workers {
        token.cancel();
        task.await.expect("worker task").expect("worker scan");
    }
}

#[tokio::test(start_paused = true)]
async fn fan_out_and_the_stream_api_name_a_stream_by_its_arn() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 2);
    let produced = put(&fake, "a", "r", 0..50);
    let consumer = Consumer::builder(arn("a"))
        .api(fake.clone())
        .store(MemoryStore::new())
        .app_name(APP)
        .initial_position(InitialPosition::TrimHorizon)
        .fan_out("efo")
        .build()
        .await
        .expect("build");
    let (seen, result) = Collect::PAUSED.run(consumer, produced.len()).await;
    result.expect("fan-out scan");
    seen.assert_exactly_once(&produced);
    assert!(seen.all().iter().all(|r| r.stream == arn("a") && r.stream_arn == arn("a")));
    assert_eq!(fake.consumers("a"), ["efo"], "registered on the stream the ARN names");

    let consumer = settings(Consumer::builder(arn("a")), &fake, &MemoryStore::new()).build().await.expect("build");
    let shutdown = consumer.shutdown_token();
    let mut shards = consumer.into_shards();
    let shard = tokio::time::timeout(Duration::from_secs(60), shards.next()).await.expect("a shard").expect("open");
    assert_eq!((shard.stream(), shard.stream_arn()), (arn("a").as_str(), arn("a").as_str()));
    drop(shard);
    shutdown.cancel();
    // The dropped stream is an error unless the scan stopped first; either way no panic.
    let _ = shards.join().await;
}

#[tokio::test(start_paused = true)]
async fn a_malformed_or_unknown_arn_is_a_clear_error() {
    let fake = FakeKinesis::new();
    fake.create_stream("a", 1);
    let store = MemoryStore::new();
    let consumer_arn = format!("{}/consumer/efo:1", arn("a"));
    let cases = [
        (consumer_arn.as_str(), "ARN of a stream consumer"),
        ("arn:aws:sqs:us-east-1:000000000000:stream/a", "the service \"sqs\""),
        ("arn:aws:kinesis:us-east-1:0:stream/a", "not 12 digits"),
        ("arn:aws:kinesis:us-east-1:000000000000:stream/", "must not be empty"),
    ];
    for (stream, want) in cases {
        let e = settings(Consumer::builder(stream), &fake, &store).build().await.expect_err(want);
        assert_eq!(e.kind(), ErrorKind::Config, "{stream}");
        assert!(e.to_string().contains(want), "{stream}: {e}");
        let e = settings(Consumer::builder_for_streams(["a", stream]), &fake, &store).build().await.expect_err(want);
        assert!(e.kind() == ErrorKind::Config && e.to_string().contains(want), "{stream}: {e}");
        assert!(StreamId::parse(stream).is_err());
    }

    // A tracker's malformed ARN stops the scan with a configuration error.
    let tracker = Tracker::default();
    tracker.set(&["a".to_owned(), consumer_arn.clone()]);
    let consumer = settings(Consumer::builder_tracking(tracker), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let result = tokio::time::timeout(Duration::from_secs(600), collecting.task).await.expect("stops").expect("join");
    let e = result.expect_err("bad ARN");
    assert!(e.kind() == ErrorKind::Config && e.to_string().contains("stream consumer"), "{e}");

    // A well-formed ARN of a stream that does not exist (another account here) is the scan's error.
    let elsewhere = "arn:aws:kinesis:eu-west-1:123456789012:stream/a";
    let consumer = settings(Consumer::builder(elsewhere), &fake, &store).build().await.expect("build");
    let collecting = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let result = tokio::time::timeout(Duration::from_secs(600), collecting.task).await.expect("stops").expect("join");
    let e = result.expect_err("missing stream");
    assert_eq!(e.kind(), ErrorKind::StreamNotFound, "{e}");
    assert_eq!(e.stream(), Some(elsewhere));
    assert!(e.to_string().contains("DescribeStreamSummary failed"), "{e}");

    // Records built for handler tests carry the stream and ARN they are given.
    let record = Record::new("shardId-000000000000", kc_core::SequenceNumber::parse("1").expect("seq"), "k", "d");
    assert_eq!((record.stream(), record.stream_arn()), ("", ""));
    let record = record.with_stream("a").with_stream_arn(&arn("a"));
    assert_eq!((record.stream(), record.stream_arn()), ("a", arn("a").as_str()));
}
