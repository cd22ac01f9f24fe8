//! The consumer against kinesalite (started by `cargo xtask integration`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kc_integration::{
    collect_until, consumer_builder, merge_first_adjacent, new_stream, put_numbered, split, unique_stream, wait_for,
};
use kc_test_support::{checkpoint, scan_failing_at, spawn_collecting, Collecting};
use kinesis_consumer::api::{ApiError, KinesisApi, RecordBatch, ShardPage, StartingPosition, StreamSummary};
use kinesis_consumer::{
    Checkpoint, CheckpointStore, ConsumerBuilder, ErrorKind, InitialPosition, MemoryStore, Outcome, Record, ShardKey,
};

const WAIT: Duration = Duration::from_secs(60);

async fn builder(stream: &str, store: &MemoryStore) -> ConsumerBuilder {
    consumer_builder(stream).await.store(store.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_shard_every_record_exactly_once_in_shard_order() {
    let (client, stream) = new_stream("multi", 4).await;
    let produced = put_numbered(&client, &stream, "r", 0..2000, 50).await.expect("put");
    let store = MemoryStore::new();
    let consumer = builder(&stream, &store).await.max_records(300).build().await.expect("build");
    let (seen, result) = collect_until(consumer, produced.len()).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_shard_order();
    seen.assert_key_order();
    let shards: std::collections::HashSet<String> = seen.all().into_iter().map(|r| r.shard).collect();
    assert_eq!(shards.len(), 4, "records came from every shard");
    for shard in shards {
        let cp = store.get(&ShardKey::new("it", stream.as_str(), shard.as_str())).await.expect("get");
        assert!(matches!(cp, Some(Checkpoint::At { .. })), "{shard} checkpointed: {cp:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_after_the_last_checkpoint() {
    let (client, stream) = new_stream("restart", 2).await;
    let first = put_numbered(&client, &stream, "a", 0..300, 10).await.expect("put");
    let store = MemoryStore::new();
    let (seen, result) = collect_until(builder(&stream, &store).await.build().await.expect("build"), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let (seen, result) =
        collect_until(builder(&stream, &store).await.build().await.expect("build"), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_checkpoint_records_are_delivered_again_after_restart() {
    let (client, stream) = new_stream("skip", 1).await;
    put_numbered(&client, &stream, "keep", 0..5, 1).await.expect("put");
    let skipped = put_numbered(&client, &stream, "skip", 5..8, 1).await.expect("put");
    let store = MemoryStore::new();
    let consumer = builder(&stream, &store).await.build().await.expect("build");
    let skip = |r: &Record| if r.data().starts_with(b"skip") { Outcome::SkipCheckpoint } else { Outcome::Checkpoint };
    let Collecting { seen, token, task } = spawn_collecting(consumer, Duration::ZERO, skip);
    wait_for("8 records", WAIT, || seen.len() >= 8).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let (again, result) = collect_until(builder(&stream, &store).await.build().await.expect("build"), 3).await;
    result.expect("scan");
    assert_eq!(again.data(), skipped, "the skipped records, and only they, come again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_stops_every_shard_and_is_returned() {
    let (client, stream) = new_stream("error", 3).await;
    put_numbered(&client, &stream, "r", 0..600, 30).await.expect("put");
    let store = MemoryStore::new();
    let consumer = builder(&stream, &store).await.max_records(50).build().await.expect("build");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let err = consumer
        .scan(move |r: Record| {
            let h = h.clone();
            async move {
                if h.fetch_add(1, Ordering::SeqCst) == 100 {
                    return Err(std::io::Error::other(format!("cannot handle {:?}", r.data())));
                }
                Ok(Outcome::Checkpoint)
            }
        })
        .await
        .expect_err("the handler's error stops the scan");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.stream(), Some(stream.as_str()));
    let source = err.into_handler_error().expect("handler error");
    assert!(source.to_string().starts_with("cannot handle"), "{source}");
    // Every shard task has stopped: nothing is handled any more.
    let after = handled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handled.load(Ordering::SeqCst), after);
    assert!(!store.snapshot().is_empty(), "checkpoints made before the error were kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_is_prompt_finishes_the_record_in_hand_and_flushes() {
    let (client, stream) = new_stream("cancel", 1).await;
    let produced = put_numbered(&client, &stream, "r", 0..50, 1).await.expect("put");
    let store = MemoryStore::new();
    let consumer = builder(&stream, &store).await.build().await.expect("build");
    let token = consumer.shutdown_token();
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, f) = (started.clone(), finished.clone());
    let task = tokio::spawn(async move {
        consumer
            .scan(move |_r: Record| {
                let (s, f) = (s.clone(), f.clone());
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    wait_for("3 records started", WAIT, || started.load(Ordering::SeqCst) >= 3).await;
    let cancelled_at = std::time::Instant::now();
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), task).await.expect("prompt").expect("task");
    result.expect("Ok after cancel");
    assert!(cancelled_at.elapsed() < Duration::from_secs(2), "returned in {:?}", cancelled_at.elapsed());
    let handled = finished.load(Ordering::SeqCst);
    assert_eq!(handled, started.load(Ordering::SeqCst), "the record in hand was finished");
    // The checkpoint is exactly after the last handled record: a restart continues with the next one.
    let (rest, result) =
        collect_until(builder(&stream, &store).await.build().await.expect("build"), produced.len() - handled).await;
    result.expect("scan");
    rest.assert_exactly_once(&produced[handled..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_while_producing_keeps_every_record_and_key_order() {
    let (client, stream) = new_stream("reshard", 2).await;
    let store = MemoryStore::new();
    let closed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let c = closed.clone();
    let consumer = builder(&stream, &store)
        .await
        .max_records(100)
        .on_shard_closed(move |shard| c.lock().expect("lock").push(shard.to_owned()))
        .build()
        .await
        .expect("build");
    let Collecting { seen, token, task } = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let mut produced = Vec::new();
    let mut next = 0;
    let mut produce = async |n: usize| {
        let more = put_numbered(&client, &stream, "r", next..next + n, 20).await.expect("put");
        next += n;
        more
    };
    produced.extend(produce(300).await);
    let shards = client.list_shards().stream_name(&stream).send().await.expect("list");
    let first = shards.shards()[0].shard_id().to_owned();
    split(&client, &stream, &first).await.expect("split");
    produced.extend(produce(300).await);
    let (a, b) = merge_first_adjacent(&client, &stream).await.expect("merge");
    produced.extend(produce(300).await);
    wait_for("every record", WAIT, || seen.len() >= produced.len() || task.is_finished()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    // Parents before children: every record of a closed parent came before any record of its children.
    let listing = client.list_shards().stream_name(&stream).send().await.expect("list");
    let order: Vec<String> = seen.all().into_iter().map(|r| r.shard).collect();
    for shard in listing.shards() {
        let first_of_child = order.iter().position(|s| s == shard.shard_id());
        for parent in shard.parent_shard_id().into_iter().chain(shard.adjacent_parent_shard_id()) {
            let last_of_parent = order.iter().rposition(|s| s == parent);
            if let (Some(lp), Some(fc)) = (last_of_parent, first_of_child) {
                assert!(lp < fc, "{} read before its parent {parent} ended", shard.shard_id());
            }
        }
    }
    let closed = closed.lock().expect("lock").clone();
    for parent in [&first, &a, &b] {
        assert!(closed.contains(parent), "shard-closed hook for {parent}: {closed:?}");
        let cp = store.get(&ShardKey::new("it", stream.as_str(), parent.as_str())).await.expect("get");
        assert_eq!(cp, Some(Checkpoint::ShardEnd), "{parent} recorded as finished");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_only_new_records() {
    let (client, stream) = new_stream("latest", 2).await;
    put_numbered(&client, &stream, "old", 0..20, 5).await.expect("put");
    let store = MemoryStore::new();
    /// Counts the shard iterators the consumer was given: LATEST is fixed when kinesalite answers.
    #[derive(Clone)]
    struct IteratorsTaken(aws_sdk_kinesis::Client, Arc<AtomicUsize>);
    #[async_trait::async_trait]
    impl KinesisApi for IteratorsTaken {
        async fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary, ApiError> {
            KinesisApi::describe_stream_summary(&self.0, stream).await
        }

        async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError> {
            KinesisApi::list_shards(&self.0, stream, next_token).await
        }
        async fn get_shard_iterator(
            &self,
            stream: &str,
            shard_id: &str,
            position: &StartingPosition,
        ) -> Result<String, ApiError> {
            let iterator = KinesisApi::get_shard_iterator(&self.0, stream, shard_id, position).await?;
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(iterator)
        }
        async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<RecordBatch, ApiError> {
            KinesisApi::get_records(&self.0, shard_iterator, limit).await
        }
    }
    let iterators = Arc::new(AtomicUsize::new(0));
    let consumer = builder(&stream, &store)
        .await
        .api(IteratorsTaken(client.clone(), Arc::clone(&iterators)))
        .initial_position(InitialPosition::Latest)
        .build()
        .await
        .expect("build");
    let task = tokio::spawn(collect_until(consumer, 30));
    // Produce only once both shards hold their LATEST iterator (a record put before would rightly be skipped).
    wait_for("both shards' iterators", WAIT, || iterators.load(Ordering::SeqCst) >= 2).await;
    let produced = put_numbered(&client, &stream, "new", 20..50, 5).await.expect("put");
    let (seen, result) = task.await.expect("task");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_stream_is_a_typed_error() {
    let consumer = builder(&unique_stream("missing"), &MemoryStore::new()).await.build().await.expect("build");
    let err = consumer
        .scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) })
        .await
        .expect_err("no such stream");
    assert_eq!(err.kind(), ErrorKind::StreamNotFound, "{err:?}");
    assert!(err.to_string().contains("missing-"), "names the stream: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_are_split_and_a_restart_mid_aggregate_neither_skips_nor_repeats() {
    use kinesis_consumer::deagg::Aggregator;
    let (client, stream) = new_stream("kpl", 1).await;
    let mut produced = Vec::new();
    let mut entries = Vec::new();
    for a in 0..4 {
        let mut agg = Aggregator::new();
        for i in 0..25 {
            let n = a * 25 + i;
            agg.add(&format!("key-{}", n % 7), None, format!("u{n}").as_bytes());
            produced.push(format!("u{n}"));
        }
        entries.push((format!("outer-{a}"), agg.finish()));
    }
    kc_examples::put_all(&client, &stream, entries).await.expect("put");
    let store = MemoryStore::new();
    // First run stops (as a crash would) in the middle of the second aggregate, after u37 was checkpointed.
    let consumer = builder(&stream, &store).await.aggregation(true).build().await.expect("build");
    let (first, err) = scan_failing_at(&consumer, "u38").await;
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(first.data(), produced[..38]);
    assert_eq!(first.all()[37].sub, Some(12), "u37 is user record 12 of the second aggregate");
    let (second, result) =
        collect_until(builder(&stream, &store).await.aggregation(true).build().await.expect("build"), 62).await;
    result.expect("scan");
    second.assert_exactly_once(&produced[38..]);
    second.assert_key_order();
}
