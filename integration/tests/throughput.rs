//! Issue 15 against real servers (started by `cargo xtask integration`): per-key parallelism inside a shard and the
//! Stream API on kinesalite, per-key parallelism under enhanced fan-out on kinesis-local. (Prefetch is on by default,
//! so every other test here runs with it; tests/kinesalite.rs covers restarts, resharding and KPL with it.)

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kc_integration::{
    consumer_builder, create_stream, fan_out_builder, kinesis_local, new_stream, put_numbered, spawn_collecting,
    unique_stream, wait_for,
};
use kc_test_support::checkpoint;
use kinesis_consumer::{Checkpoint, CheckpointStore, ConsumerBuilder, MemoryStore, Outcome, Record, ShardKey};

/// What the handler saw: per key, the data in the order calls started; the keys with a call running; overlaps.
#[derive(Default)]
struct Watch {
    by_key: BTreeMap<String, Vec<usize>>,
    running: HashSet<String>,
    overlaps: usize,
    now: usize,
    most: usize,
    handled: usize,
}

fn number(data: &str) -> usize {
    data.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().expect("numbered")
}

/// Scans with `n` calls per shard at once and a handler awaiting 2 ms, until `want` records; returns the watch.
async fn scan_by_key(builder: ConsumerBuilder, n: usize, want: usize) -> Watch {
    let consumer = builder.max_in_flight_per_shard(n).build().await.expect("build");
    let token = consumer.shutdown_token();
    let watch = Arc::new(Mutex::new(Watch::default()));
    let w = watch.clone();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let w = w.clone();
                async move {
                    let key = r.partition_key().to_owned();
                    let data = String::from_utf8_lossy(r.data()).into_owned();
                    {
                        let mut w = w.lock().expect("lock");
                        if !w.running.insert(key.clone()) {
                            w.overlaps += 1;
                        }
                        w.now += 1;
                        w.most = w.most.max(w.now);
                        w.by_key.entry(key.clone()).or_default().push(number(&data));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let mut w = w.lock().expect("lock");
                    w.running.remove(&key);
                    w.now -= 1;
                    w.handled += 1;
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    wait_for("every record", Duration::from_secs(120), || watch.lock().expect("lock").handled >= want).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    Arc::try_unwrap(watch).ok().expect("the handler is gone").into_inner().expect("lock")
}

fn assert_per_key(watch: &Watch, produced: &[String], n_shards: usize, n: usize) {
    assert_eq!(watch.overlaps, 0, "two calls of one key at once");
    assert_eq!(watch.handled, produced.len(), "each record once");
    // put_numbered gives key-{i % keys} to record i: within a key, numbers grow in shard order.
    for (key, numbers) in &watch.by_key {
        assert!(numbers.windows(2).all(|p| p[0] < p[1]), "{key} out of order: {numbers:?}");
    }
    assert!(watch.most > n_shards, "calls at once: {} (n = {n} per shard, {n_shards} shards)", watch.most);
    assert!(watch.most <= n * n_shards, "calls at once: {} (n = {n} per shard, {n_shards} shards)", watch.most);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_parallelism_keeps_each_keys_order_on_kinesalite() {
    let (client, stream) = new_stream("by-key", 2).await;
    let produced = put_numbered(&client, &stream, "r", 0..600, 40).await.expect("put");
    let store = MemoryStore::new();
    let watch = scan_by_key(consumer_builder(&stream).await.store(store.clone()), 8, produced.len()).await;
    assert_per_key(&watch, &produced, 2, 8);
    // Everything finished, so each shard's checkpoint is its last record: a restart reads nothing again.
    let consumer = consumer_builder(&stream).await.store(store.clone()).build().await.expect("build");
    let restarted = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (seen, result) = restarted.stop(Duration::from_secs(10)).await;
    result.expect("restart");
    assert!(seen.all().is_empty(), "read again after a restart: {:?}", seen.data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_parallelism_under_fan_out_on_kinesis_local() {
    let client = kinesis_local().await;
    let stream = unique_stream("efo-by-key");
    create_stream(&client, &stream, 2).await.expect("create");
    let produced = put_numbered(&client, &stream, "r", 0..200, 20).await.expect("put");
    let watch = scan_by_key(fan_out_builder(client.clone(), &stream, "efo-by-key"), 4, produced.len()).await;
    assert_per_key(&watch, &produced, 2, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_api_hands_out_every_record_once_and_acks_checkpoint() {
    let (client, stream) = new_stream("streams", 3).await;
    let produced = put_numbered(&client, &stream, "r", 0..900, 30).await.expect("put");
    let store = MemoryStore::new();
    let consumer = consumer_builder(&stream).await.store(store.clone()).max_records(100).build().await.expect("build");
    let taken = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut shards = consumer.into_shards();
    let token = shards.shutdown_token();
    let t = taken.clone();
    let reading = tokio::spawn(async move {
        let mut tasks = Vec::new();
        while let Some(mut shard) = shards.next().await {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(batch) = shard.next().await {
                    for r in batch.records() {
                        t.lock()
                            .expect("lock")
                            .push((r.shard_id().to_owned(), String::from_utf8_lossy(r.data()).into()));
                    }
                    batch.ack();
                }
            }));
        }
        for task in tasks {
            task.await.expect("shard task");
        }
        shards.join().await
    });
    wait_for("every record", Duration::from_secs(60), || taken.lock().expect("lock").len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    reading.await.expect("task").expect("a stop is not an error");
    let taken = taken.lock().expect("lock").clone();
    let mut data: Vec<String> = taken.iter().map(|(_, d)| d.clone()).collect();
    data.sort_by_key(|d| number(d));
    let mut want = produced.clone();
    want.sort_by_key(|d| number(d));
    assert_eq!(data, want, "each record once");
    let shards: HashSet<&String> = taken.iter().map(|(s, _)| s).collect();
    assert_eq!(shards.len(), 3);
    for shard in shards {
        let numbers: Vec<usize> = taken.iter().filter(|(s, _)| s == shard).map(|(_, d)| number(d)).collect();
        assert!(numbers.windows(2).all(|p| p[0] < p[1]), "{shard} out of order");
        let cp = store.get(&ShardKey::new("it", stream.as_str(), shard.as_str())).await.expect("get");
        assert!(matches!(cp, Some(Checkpoint::At { .. })), "{shard} checkpointed after its acks: {cp:?}");
    }
}
