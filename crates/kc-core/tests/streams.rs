//! The Stream API (issue 15, `Consumer::into_shards`), on the in-process fake with a paused clock: every record once
//! through the shard streams, checkpoints only after acks, backpressure to the fetch, a dropped batch or stream is an
//! error that loses nothing, parents' streams end before children's start, a stop waits for the batch in hand, and a
//! group hands out the shards it holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{AckBatch, CheckpointStore, Consumer, ConsumerBuilder, ErrorKind, Group, InitialPosition, MemoryStore};
use kc_core::{Outcome, ShardKey};
use kc_test_support::fake::{put_many, STREAM};
use kc_test_support::Wait;

fn builder(fake: &FakeKinesis, store: &MemoryStore) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .app_name("test-app")
        .api(fake.clone())
        .store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
}

fn data(batch: &AckBatch) -> Vec<String> {
    batch.records().iter().map(|r| String::from_utf8_lossy(r.data()).into_owned()).collect()
}

/// (shard, data) of every record taken, in order.
type Taken = Arc<Mutex<Vec<(String, String)>>>;

/// Takes every shard stream and acks every batch, noting what it took.
fn ack_everything(consumer: Consumer) -> (Taken, tokio::task::JoinHandle<Result<(), kc_core::Error>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut shards = consumer.into_shards();
        while let Some(mut shard) = shards.next().await {
            let s = s.clone();
            tokio::spawn(async move {
                while let Some(batch) = shard.next().await {
                    for d in data(&batch) {
                        s.lock().expect("lock").push((shard.shard_id().to_owned(), d));
                    }
                    batch.ack();
                }
            });
        }
        shards.join().await
    });
    (seen, task)
}

#[tokio::test(start_paused = true)]
async fn every_record_comes_once_in_shard_order_and_acks_checkpoint() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 3);
    let produced = put_many(&fake, 0..90, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let token = consumer.shutdown_token();
    let (seen, task) = ack_everything(consumer);
    Wait::PAUSED.expect("every record", || seen.lock().expect("lock").len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("a stop is not an error");
    let seen = seen.lock().expect("lock").clone();
    let mut all: Vec<String> = seen.iter().map(|(_, d)| d.clone()).collect();
    all.sort_by_key(|d| d[1..].parse::<usize>().expect("r{i}"));
    assert_eq!(all, produced, "each record once");
    for shard in fake.shard_ids(STREAM) {
        let numbers: Vec<usize> =
            seen.iter().filter(|(s, _)| *s == shard).map(|(_, d)| d[1..].parse().expect("r{i}")).collect();
        assert!(numbers.windows(2).all(|p| p[0] < p[1]), "{shard} out of order: {numbers:?}");
        let key = ShardKey::new("test-app", STREAM, shard.as_str());
        assert!(store.get(&key).await.expect("get").is_some(), "{shard} checkpointed");
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_checkpointed_when_acked_and_the_next_waits_for_the_ack() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    put_many(&fake, 0..100, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let mut shards = consumer.into_shards();
    let mut shard = shards.next().await.expect("a shard");
    let first = shard.next().await.expect("a batch");
    assert_eq!(data(&first), (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>());
    // Held: no checkpoint, no second batch, and the fetch holds back (backpressure): at most one batch fetched ahead.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(store.get(&key).await.expect("get"), None, "nothing checkpointed before the ack");
    let calls = fake.calls(Op::GetRecords);
    assert!(calls <= 3, "{calls} GetRecords while a batch was held");
    let checkpoint = first.records()[9].checkpoint();
    first.ack();
    let second = shard.next().await.expect("a second batch");
    assert_eq!(data(&second)[0], "r10");
    Wait::PAUSED
        .expect_async("the checkpoint after the ack", || {
            let (store, key, checkpoint) = (store.clone(), key.clone(), checkpoint.clone());
            async move { store.get(&key).await.expect("get") == Some(checkpoint) }
        })
        .await;
    second.ack();
    let token = shards.shutdown_token();
    token.cancel();
    drop(shard);
    shards.join().await.expect("a stop is not an error");
}

#[tokio::test(start_paused = true)]
async fn a_batch_dropped_without_ack_stops_the_scan_and_is_not_checkpointed() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    put_many(&fake, 0..30, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let mut shards = consumer.into_shards();
    let mut shard = shards.next().await.expect("a shard");
    let first = shard.next().await.expect("a batch");
    let checkpoint = first.records()[9].checkpoint();
    first.ack();
    let second = shard.next().await.expect("a batch");
    drop(second);
    // The stream ends (the reader stopped), and the scan's error says why.
    while shard.next().await.is_some() {}
    let err = shards.join().await.expect_err("a dropped batch is an error");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    assert!(err.to_string().contains("not acked"), "{err}");
    assert_eq!(store.get(&key).await.expect("get"), Some(checkpoint), "checkpointed up to the last ack only");
}

#[tokio::test(start_paused = true)]
async fn a_parents_stream_ends_before_its_childrens_start() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let mut produced = put_many(&fake, 0..20, "a");
    let parent = fake.shard_ids(STREAM)[0].clone();
    fake.split_shard(STREAM, &parent);
    produced.extend(put_many(&fake, 0..20, "b"));
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let token = consumer.shutdown_token();
    let events = Arc::new(Mutex::new(Vec::<String>::new()));
    let e = events.clone();
    let task = tokio::spawn(async move {
        let mut shards = consumer.into_shards();
        while let Some(mut shard) = shards.next().await {
            e.lock().expect("lock").push(format!("start {}", shard.shard_id()));
            let e = e.clone();
            tokio::spawn(async move {
                while let Some(batch) = shard.next().await {
                    e.lock().expect("lock").extend(data(&batch));
                    batch.ack();
                }
                e.lock().expect("lock").push(format!("end {}", shard.shard_id()));
            });
        }
        shards.join().await
    });
    Wait::PAUSED
        .expect("every record", || events.lock().expect("lock").iter().filter(|e| !e.contains(' ')).count() >= 40)
        .await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let events = events.lock().expect("lock").clone();
    let ended = events.iter().position(|e| *e == format!("end {parent}")).expect("the parent's stream ended");
    let children: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.starts_with("start ") && !e.ends_with(&parent))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(children.len(), 2, "{events:?}");
    assert!(children.iter().all(|c| *c > ended), "a child's stream started before its parent's ended: {events:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_waits_for_the_batch_in_hand_and_checkpoints_it_when_acked() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    put_many(&fake, 0..30, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let mut shards = consumer.into_shards();
    let mut shard = shards.next().await.expect("a shard");
    let batch = shard.next().await.expect("a batch");
    shards.shutdown_token().cancel();
    // Still being handled after the stop: finished, then acked.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let checkpoint = batch.records()[9].checkpoint();
    batch.ack_with(Outcome::Checkpoint);
    assert!(shard.next().await.is_none(), "nothing more after the stop");
    shards.join().await.expect("a stop is not an error");
    assert_eq!(store.get(&key).await.expect("get"), Some(checkpoint), "the batch in hand was checkpointed");
}

#[tokio::test(start_paused = true)]
async fn a_group_worker_hands_out_the_shards_it_holds() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 4);
    let produced = put_many(&fake, 0..80, "r");
    let group = Group::new("g", kc_checkpoint::lease::MemoryLeaseTable::new()).worker_id("w1");
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
        .group(group)
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let (seen, task) = ack_everything(consumer);
    Wait::PAUSED.expect("every record", || seen.lock().expect("lock").len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(seen.lock().expect("lock").len(), produced.len(), "each record once");
}
