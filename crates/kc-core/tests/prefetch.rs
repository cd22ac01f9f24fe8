//! Prefetch (issue 15), on the in-process fake with a paused clock: the next batch is fetched while the handler works
//! through the current one, never more than one batch ahead and never faster than the per-shard call floor; an
//! iterator that expires with a batch prefetched resumes after that batch; a stop drops the prefetched batch
//! unhandled and uncheckpointed; a batch found invalid while the next is fetched ahead stops the scan with nothing of
//! it checkpointed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_core::api;
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{Batch, Checkpoint, CheckpointStore, Consumer, ConsumerBuilder, InitialPosition, MemoryStore, Outcome};
use kc_core::{Record, ShardKey};
use kc_test_support::fake::{put_many, STREAM};
use kc_test_support::Collect;
use kc_test_support::Wait;
use tokio::time::Instant;

fn builder(fake: &FakeKinesis, store: &MemoryStore) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .app_name("test-app")
        .api(fake.clone())
        .store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
}

fn data(batch: &Batch) -> Vec<String> {
    batch.records().iter().map(|r| String::from_utf8_lossy(r.data()).into_owned()).collect()
}

/// Scans batches with a handler that takes `handling` (paused clock) and notes, for each batch, its records and how
/// many GetRecords calls the fake had answered when the handler finished it. Returns after `want` records.
async fn scan_noting_calls(
    consumer: Consumer,
    fake: &FakeKinesis,
    handling: Duration,
    want: usize,
) -> Vec<(Vec<String>, usize)> {
    let token = consumer.shutdown_token();
    let noted = Arc::new(Mutex::new(Vec::<(Vec<String>, usize)>::new()));
    let (n, f) = (noted.clone(), fake.clone());
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let (n, f) = (n.clone(), f.clone());
                async move {
                    tokio::time::sleep(handling).await;
                    n.lock().expect("lock").push((data(&batch), f.calls(Op::GetRecords)));
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED
        .expect("the records", || noted.lock().expect("lock").iter().map(|(d, _)| d.len()).sum::<usize>() >= want)
        .await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let noted = noted.lock().expect("lock").clone();
    noted
}

#[tokio::test(start_paused = true)]
async fn the_next_batch_is_fetched_while_the_handler_works_and_no_further() {
    for prefetch in [true, false] {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        let produced = put_many(&fake, 0..50, "r");
        let consumer = builder(&fake, &MemoryStore::new()).prefetch(prefetch).build().await.expect("build");
        // A slow handler: 5 s per batch, so that any fetch that can run beside it has.
        let noted = scan_noting_calls(consumer, &fake, Duration::from_secs(5), 50).await;
        let records: Vec<String> = noted.iter().flat_map(|(d, _)| d.clone()).collect();
        assert_eq!(records, produced, "prefetch {prefetch}: each record once, in order");
        for (i, (_, calls)) in noted.iter().enumerate() {
            // Batch i came from call i + 1; with prefetch, call i + 2 (the next batch) is answered while it is
            // handled, and no call after it.
            let want = if prefetch { i + 2 } else { i + 1 };
            assert_eq!(*calls, want, "prefetch {prefetch}: GetRecords calls answered while batch {i} was handled");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fetching_and_handling_overlap_so_the_slower_sets_the_pace() {
    let mut took = Vec::new();
    for prefetch in [true, false] {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        put_many(&fake, 0..200, "r");
        // Each GetRecords takes 300 ms, each batch 300 ms to handle: 20 batches take about 20 × 300 ms when the two
        // overlap, 20 × 600 ms when they alternate.
        fake.latency(Duration::from_millis(300));
        let consumer = builder(&fake, &MemoryStore::new()).prefetch(prefetch).build().await.expect("build");
        let started = Instant::now();
        scan_noting_calls(consumer, &fake, Duration::from_millis(300), 200).await;
        took.push(started.elapsed());
    }
    let (with, without) = (took[0], took[1]);
    assert!(with < Duration::from_millis(20 * 400), "with prefetch: {with:?}");
    assert!(without > Duration::from_millis(20 * 550), "without prefetch: {without:?}");
}

#[tokio::test(start_paused = true)]
async fn prefetching_keeps_to_the_per_shard_call_floor() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    put_many(&fake, 0..100, "r");
    // A batch of one record and a handler that takes no time: the shard is always behind, and only the floor of
    // 200 ms between two GetRecords calls paces it.
    let consumer = builder(&fake, &MemoryStore::new()).max_records(1).build().await.expect("build");
    let started = Instant::now();
    let noted = scan_noting_calls(consumer, &fake, Duration::ZERO, 100).await;
    let elapsed = started.elapsed();
    assert_eq!(noted.len(), 100);
    let calls = fake.calls(Op::GetRecords);
    let allowed = (elapsed.as_millis() / 200) as usize + 1;
    assert!(calls <= allowed, "{calls} GetRecords in {elapsed:?}: over 5 per second");
    assert!(calls >= 100, "{calls} GetRecords for 100 batches");
}

#[tokio::test(start_paused = true)]
async fn an_iterator_that_expires_with_a_batch_prefetched_resumes_after_that_batch() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let produced = put_many(&fake, 0..40, "r");
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let token = consumer.shutdown_token();
    let batches = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let (b, f) = (batches.clone(), fake.clone());
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let (b, f) = (b.clone(), f.clone());
                async move {
                    let first = b.lock().expect("lock").is_empty();
                    if first {
                        // Wait until the second batch is prefetched, then expire the iterator the third call would use.
                        while f.calls(Op::GetRecords) < 2 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        f.expire_iterators();
                    }
                    b.lock().expect("lock").push(data(&batch));
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED.expect("40 records", || batches.lock().expect("lock").iter().map(Vec::len).sum::<usize>() >= 40).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(batches.lock().expect("lock").concat(), produced, "each record once, in order");
    assert!(fake.calls(Op::GetShardIterator) >= 2, "the iterator was replaced");
}

#[tokio::test(start_paused = true)]
async fn a_stop_drops_the_prefetched_batch_without_checkpointing_it() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let produced = put_many(&fake, 0..30, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let token = consumer.shutdown_token();
    let seen = Arc::new(Mutex::new(Vec::<(String, Checkpoint)>::new()));
    let (s, f, t) = (seen.clone(), fake.clone(), token.clone());
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let (s, f, t) = (s.clone(), f.clone(), t.clone());
                async move {
                    let data = String::from_utf8_lossy(r.data()).into_owned();
                    if data == "r4" {
                        // The second batch is in hand (prefetched) when the stop comes, mid-batch.
                        while f.calls(Op::GetRecords) < 2 {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        t.cancel();
                    }
                    s.lock().expect("lock").push((data, r.checkpoint()));
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    task.await.expect("task").expect("a stop is not an error");
    let handled = seen.lock().expect("lock").clone();
    let data: Vec<String> = handled.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(data, produced[..5], "the record in hand is finished, then nothing");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let saved = store.get(&key).await.expect("get").expect("a checkpoint");
    assert_eq!(saved, handled[4].1, "the checkpoint is the last handled record, not the prefetched batch");

    // A restart reads on from there: the prefetched records are delivered then, none lost.
    let consumer = builder(&fake, &store).build().await.expect("build");
    let (seen, result) = Collect::PAUSED.run(consumer, 25).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced[5..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_fetched_even_while_the_handler_keeps_its_thread_busy() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let produced = put_many(&fake, 0..20, "r");
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let token = consumer.shutdown_token();
    let fetched_meanwhile = Arc::new(Mutex::new(Vec::<bool>::new()));
    let (m, f) = (fetched_meanwhile.clone(), fake.clone());
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let (m, f) = (m.clone(), f.clone());
                async move {
                    let mut noted = m.lock().expect("lock");
                    if noted.is_empty() {
                        // Busy without yielding (CPU-bound work): the fetch ahead must run on another thread.
                        let until = std::time::Instant::now() + Duration::from_secs(10);
                        while f.calls(Op::GetRecords) < 2 && std::time::Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        // One entry per record: the first says whether the next batch was fetched meanwhile.
                        noted.push(f.calls(Op::GetRecords) >= 2);
                        noted.extend(std::iter::repeat_n(true, batch.records().len().saturating_sub(1)));
                    } else {
                        noted.extend(std::iter::repeat_n(true, batch.records().len()));
                    }
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::real(Duration::from_secs(30))
        .expect("20 records", || fetched_meanwhile.lock().expect("lock").len() >= produced.len())
        .await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert!(fetched_meanwhile.lock().expect("lock")[0], "the second batch was not fetched while the first was handled");
}

/// The fake, with the first record of the second GetRecords answer given an invalid sequence number.
#[derive(Clone)]
struct CorruptSecondBatch(FakeKinesis, Arc<std::sync::atomic::AtomicUsize>);

#[async_trait::async_trait]
impl kc_core::KinesisApi for CorruptSecondBatch {
    async fn describe_stream_summary(&self, stream: &str) -> Result<api::StreamSummary, api::ApiError> {
        self.0.describe_stream_summary(stream).await
    }

    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<api::ShardPage, api::ApiError> {
        self.0.list_shards(stream, next_token).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &kc_core::StartingPosition,
    ) -> Result<String, api::ApiError> {
        self.0.get_shard_iterator(stream, shard_id, position).await
    }

    async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<api::RecordBatch, api::ApiError> {
        let mut batch = self.0.get_records(shard_iterator, limit).await?;
        if self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            batch.records[0].sequence_number = "49-not-a-number".to_owned();
        }
        Ok(batch)
    }
}

/// A batch with an invalid sequence number is found while the next batch is being fetched ahead: the scan stops
/// with a clear error (no panic), nothing of that batch is handled or checkpointed, and the checkpoint stays at the
/// last record of the batch before. Same without prefetch.
#[tokio::test(start_paused = true)]
async fn an_invalid_sequence_number_stops_the_scan_with_the_fetch_ahead_dropped() {
    for prefetch in [true, false] {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        let produced = put_many(&fake, 0..30, "r");
        let store = MemoryStore::new();
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let api = CorruptSecondBatch(fake.clone(), Arc::clone(&answered));
        // No floor between calls: a fetch ahead goes out at once (else it would wait 200 ms for its turn).
        let builder = builder(&fake, &store).api(api).prefetch(prefetch).min_poll_interval(Duration::ZERO);
        let consumer = builder.build().await.expect("build");
        let seen = Arc::new(Mutex::new(Vec::<(String, Checkpoint)>::new()));
        let s = seen.clone();
        let result = consumer
            .scan(move |r: Record| {
                let s = s.clone();
                async move {
                    s.lock().expect("lock").push((String::from_utf8_lossy(r.data()).into_owned(), r.checkpoint()));
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await;
        let e = result.expect_err("an invalid sequence number is an error");
        assert_eq!(e.kind(), kc_core::ErrorKind::InvalidResponse, "prefetch {prefetch}: {e}");
        assert!(e.to_string().contains("invalid sequence number"), "prefetch {prefetch}: {e}");
        let handled = seen.lock().expect("lock").clone();
        let data: Vec<String> = handled.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(data, produced[..10], "prefetch {prefetch}: the first batch only");
        let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
        let saved = store.get(&key).await.expect("get").expect("a checkpoint");
        assert_eq!(saved, handled[9].1, "prefetch {prefetch}: the checkpoint stays at the first batch's last record");
        // With prefetch the third call went out as soon as the second batch was in hand, before the batch was
        // expanded (and found invalid): the expansion overlaps the fetch ahead.
        let calls = answered.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(calls, if prefetch { 3 } else { 2 }, "prefetch {prefetch}: GetRecords answers");
    }
}
