//! One consumer over several streams of kinesalite (issue 17): three streams tracked, one added and one removed while
//! the scan runs; and the figures of 100 streams of 4 shards in one process.

#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kc_integration::{kinesis, new_stream, put_numbered, spawn_collecting, Observed, Seen, Wait};
use kc_test_support::check::number;
use kc_test_support::{checkpoint, Tracker};
use kinesis_consumer::{Consumer, InitialPosition, MemoryStore, ShardKey};

const WAIT: Duration = Duration::from_secs(60);

/// Asserts each record came with the stream it was put on (`stream_of` its data's prefix) and that, within each
/// stream, each key's records came in order.
fn assert_streams_and_key_order(seen: &Seen, stream_of: &BTreeMap<char, String>) {
    let mut last: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in seen.all() {
        let tag = r.data.chars().next().expect("data");
        assert_eq!(Some(&r.stream), stream_of.get(&tag), "record {} came as one of {}", r.data, r.stream);
        let i = number(&r.data);
        if let Some(prev) = last.insert((r.stream.clone(), r.key.clone()), i) {
            assert!(prev < i, "{}/{}: {i} after {prev}", r.stream, r.key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tracked_streams_one_added_one_removed() {
    let (client, x) = new_stream("multix", 1).await;
    let (_, y) = new_stream("multiy", 2).await;
    let (_, z) = new_stream("multiz", 3).await;
    let stream_of = BTreeMap::from([('x', x.clone()), ('y', y.clone()), ('z', z.clone())]);
    let tracker = Tracker::default();
    tracker.set(&[&x, &y]);
    let store = MemoryStore::new();
    let consumer = Consumer::builder_tracking(tracker.clone())
        .client(kinesis().await)
        .store(store.clone())
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .scan_interval(Duration::from_millis(50))
        .discovery_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = scan.seen.clone();
    let mut produced = put_numbered(&client, &x, "x", 0..300, 20).await.expect("put");
    produced.extend(put_numbered(&client, &y, "y", 0..300, 20).await.expect("put"));
    // On `z` before it is tracked: read from its start when it is added.
    produced.extend(put_numbered(&client, &z, "z", 0..300, 20).await.expect("put"));
    assert!(Wait::real(WAIT).until(|| seen.len() >= 600).await, "x and y: {} of 600", seen.len());
    assert!(seen.all().iter().all(|r| r.stream != z), "z read before it was tracked");

    tracker.set(&[&y, &z]);
    assert!(Wait::real(WAIT).until(|| seen.len() >= produced.len()).await, "z: {} of {}", seen.len(), produced.len());
    // The next discovery (1 s) stopped x; what comes to it now is not read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late_x = put_numbered(&client, &x, "x", 300..350, 20).await.expect("put");
    produced.extend(put_numbered(&client, &y, "y", 300..400, 20).await.expect("put"));
    produced.extend(put_numbered(&client, &z, "z", 300..400, 20).await.expect("put"));
    assert!(Wait::real(WAIT).until(|| seen.len() >= produced.len()).await, "{} of {}", seen.len(), produced.len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (seen, result) = scan.stop(Duration::from_secs(10)).await;
    result.expect("scan");

    let data: BTreeSet<String> = seen.data().into_iter().collect();
    assert!(late_x.iter().all(|d| !data.contains(d)), "nothing of x after its removal");
    seen.assert_exactly_once(&produced);
    assert_streams_and_key_order(&seen, &stream_of);
    // x's checkpoints: its last records handled.
    let snapshot = store.snapshot();
    let last_x: BTreeMap<String, _> =
        seen.all().into_iter().filter(|r| r.stream == x).map(|r| (r.shard, r.checkpoint)).collect();
    assert!(!last_x.is_empty());
    for (shard, position) in last_x {
        assert_eq!(snapshot.get(&ShardKey::new("it", x.as_str(), shard.as_str())), Some(&position), "x/{shard}");
    }
    for stream in [&x, &y, &z] {
        client.delete_stream().stream_name(stream).send().await.expect("delete");
    }
}

/// The figures of issue 17: one consumer of 100 streams of 4 shards each (time until every shard read its first
/// record, the process's resident memory, ListShards calls per discovery interval). Prints them; asserts only that
/// every record came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_of_four_shards_figures() {
    const STREAMS: usize = 100;
    const SHARDS: i32 = 4;
    const INTERVAL: Duration = Duration::from_secs(5);
    let client = kinesis().await;
    let mut streams = Vec::with_capacity(STREAMS);
    let mut produced = Vec::new();
    for i in 0..STREAMS {
        let (_, stream) = new_stream(&format!("hundred{i}x"), SHARDS).await;
        // 8 records per stream over 8 keys: every shard gets some, most likely.
        produced.extend(put_numbered(&client, &stream, "r", i * 8..i * 8 + 8, 8).await.expect("put"));
        streams.push(stream);
    }
    let rss_before = rss_kib();
    let api = Observed::new(kinesis().await);
    let consumer = Consumer::builder_for_streams(streams.clone())
        .api(api.clone())
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .discovery_interval(INTERVAL)
        .build()
        .await
        .expect("build");
    let started = Instant::now();
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let seen = scan.seen.clone();
    let all = Wait::real(Duration::from_secs(120)).until(|| seen.len() >= produced.len()).await;
    let took = started.elapsed();
    let listed_at_start = api.list_shards();
    // Three discovery intervals of steady state.
    tokio::time::sleep(INTERVAL * 3).await;
    let per_interval = (api.list_shards() - listed_at_start) as f64 / 3.0;
    let rss_after = rss_kib();
    api.stopping();
    let (seen, result) = scan.stop(Duration::from_secs(30)).await;
    for stream in &streams {
        client.delete_stream().stream_name(stream).send().await.expect("delete");
    }
    println!(
        "{STREAMS} streams x {SHARDS} shards: all {} records handled {took:?} after the scan started; \
         ListShards calls {listed_at_start} at start, {per_interval:.1} per {INTERVAL:?} discovery interval; \
         RSS {rss_before} KiB before the consumer, {rss_after} KiB while it runs",
        produced.len()
    );
    assert!(all, "{} of {} records", seen.len(), produced.len());
    result.expect("scan");
    seen.assert_exactly_once(&produced);
}

/// The process's resident set size in KiB (Linux), 0 elsewhere.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Enhanced fan-out over two streams of kinesis-local: the stream consumer is registered on each, every record of
/// both comes once, each with its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_over_two_streams_on_kinesis_local() {
    let client = kc_integration::kinesis_local().await;
    let streams = [kc_integration::unique_stream("efo-m1"), kc_integration::unique_stream("efo-m2")];
    let mut produced = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        kc_integration::create_stream(&client, stream, 2).await.expect("create");
        let prefix = ["a", "b"][i];
        produced.extend(put_numbered(&client, stream, prefix, 0..100, 10).await.expect("put"));
    }
    let consumer = Consumer::builder_for_streams(streams.iter().map(String::as_str))
        .client(client.clone())
        .store(MemoryStore::new())
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .fan_out("efo-multi")
        .build()
        .await
        .expect("build");
    let (seen, result) = kc_integration::collect_until(consumer, produced.len()).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    let stream_of: BTreeMap<char, String> = [('a', streams[0].clone()), ('b', streams[1].clone())].into();
    assert_streams_and_key_order(&seen, &stream_of);
    for stream in &streams {
        let arn = client.describe_stream_summary().stream_name(stream).send().await.expect("describe");
        let arn = arn.stream_description_summary().map(|d| d.stream_arn().to_owned()).unwrap_or_default();
        let consumers = client.list_stream_consumers().stream_arn(&arn).send().await.expect("list consumers");
        let names: Vec<&str> = consumers.consumers().iter().map(|c| c.consumer_name()).collect();
        assert_eq!(names, ["efo-multi"], "{stream}");
    }
}
