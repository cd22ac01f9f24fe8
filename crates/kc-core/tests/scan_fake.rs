//! The scan loop against the in-process fake: fast, deterministic (tokio's paused clock), fault-injecting.
//! The same behaviours are tested against kinesalite in the `kc-integration` package.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_core::api::ApiErrorKind;
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{
    Batch, Checkpoint, CheckpointStore, Consumer, ConsumerBuilder, ErrorKind, InitialPosition, Lifecycle, MemoryStore,
    Outcome, Record, ShardKey, StartingPosition,
};
use kc_test_support::fake::{put_many, STREAM};
use kc_test_support::{checkpoint, scan_failing_at, spawn_collecting, Collect, Collecting, Seen, Wait};

fn builder(fake: &FakeKinesis, store: &MemoryStore) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .app_name("test-app")
        .initial_position(InitialPosition::TrimHorizon)
        .discovery_interval(Duration::from_secs(1))
        .max_records(7)
}

/// Runs `consumer.scan` with a collecting handler until `want` records were seen (or 10 minutes of paused time),
/// lets a duplicate arrive for 2 s, then cancels and returns what was seen and the scan's result.
async fn scan_until(consumer: Consumer, want: usize) -> (Seen, Result<(), kc_core::Error>) {
    Collect::PAUSED.run(consumer, want).await
}

#[tokio::test(start_paused = true)]
async fn multi_shard_every_record_once_in_order() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 4);
    let produced = put_many(&fake, 0..500, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let (seen, result) = scan_until(consumer, produced.len()).await;
    result.expect("scan ok after cancel");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    // Every shard's checkpoint is its last record.
    for shard in fake.shard_ids(STREAM) {
        let key = ShardKey::new("test-app", STREAM, shard.as_str());
        let cp = store.get(&key).await.expect("get");
        assert!(matches!(cp, Some(Checkpoint::At { sub_sequence: None, .. })), "{shard}: {cp:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn restart_resumes_after_checkpoint() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let first = put_many(&fake, 0..100, "a");
    let store = MemoryStore::new();
    let (seen1, r1) = scan_until(builder(&fake, &store).build().await.expect("build"), first.len()).await;
    r1.expect("first run");
    seen1.assert_exactly_once(&first);
    let second = put_many(&fake, 0..50, "b");
    let (seen2, r2) = scan_until(builder(&fake, &store).build().await.expect("build"), second.len()).await;
    r2.expect("second run");
    seen2.assert_exactly_once(&second);
}

#[tokio::test(start_paused = true)]
async fn latest_skips_old_records() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    put_many(&fake, 0..20, "old");
    let store = MemoryStore::new();
    let started = Arc::new(AtomicUsize::new(0));
    struct Count(Arc<AtomicUsize>);
    impl Lifecycle for Count {
        fn shard_started(&self, _: &str, position: &StartingPosition) {
            assert_eq!(*position, StartingPosition::Latest);
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .lifecycle(Count(started.clone()))
        .build()
        .await
        .expect("build");
    let f2 = fake.clone();
    let s2 = started.clone();
    let producer = tokio::spawn(async move {
        Wait::PAUSED.expect("both shards started", || s2.load(Ordering::SeqCst) == 2).await;
        // Give the first GetRecords (with the LATEST iterator) a chance to run.
        tokio::time::sleep(Duration::from_secs(1)).await;
        put_many(&f2, 0..30, "new")
    });
    let consumer_task = tokio::spawn(scan_until(consumer, 30));
    let produced = producer.await.expect("producer");
    let (seen, result) = consumer_task.await.expect("consumer");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
}

#[tokio::test(start_paused = true)]
async fn skip_checkpoint_records_are_delivered_again() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    for d in ["keep-1", "skip-2", "skip-3"] {
        fake.put(STREAM, "k", d);
    }
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let skip = |r: &Record| if r.data().starts_with(b"skip") { Outcome::SkipCheckpoint } else { Outcome::Checkpoint };
    let Collecting { seen, token, task } = spawn_collecting(consumer, Duration::ZERO, skip);
    Wait::PAUSED.expect("3 records", || seen.len() == 3).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let (again, result) = scan_until(builder(&fake, &store).build().await.expect("build"), 2).await;
    result.expect("scan");
    assert_eq!(again.data(), ["skip-2", "skip-3"]);
}

/// A graceful stop stops each shard once: a shard task that returned because of the stop is not started again
/// (the supervisor could see the task's exit before the stop, and found the shard ready to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_stops_each_shard_once() {
    struct Stops(Arc<AtomicUsize>);
    impl Lifecycle for Stops {
        fn shard_stopped(&self, _: &str) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    // The supervisor's select picks among ready branches at random: several rounds.
    for round in 0..12 {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 4);
        let produced = put_many(&fake, 0..40, "r");
        let stopped = Arc::new(AtomicUsize::new(0));
        let consumer =
            builder(&fake, &MemoryStore::new()).lifecycle(Stops(stopped.clone())).build().await.expect("build");
        // Real time on two threads: the shard tasks end while the supervisor runs, as in a process.
        let (seen, result) = Collect::REAL.settle(Duration::ZERO).run(consumer, produced.len()).await;
        result.expect("scan");
        seen.assert_exactly_once(&produced);
        assert_eq!(stopped.load(Ordering::SeqCst), 4, "round {round}: each of the 4 shards stopped once");
    }
}

#[tokio::test(start_paused = true)]
async fn handler_error_stops_every_shard_and_is_returned() {
    #[derive(Debug, thiserror::Error)]
    #[error("boom at {0}")]
    struct Boom(String);

    struct Stops(Arc<AtomicUsize>);
    impl Lifecycle for Stops {
        fn shard_stopped(&self, _: &str) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 3);
    put_many(&fake, 0..90, "r");
    let stopped = Arc::new(AtomicUsize::new(0));
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).lifecycle(Stops(stopped.clone())).build().await.expect("build");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let err = consumer
        .scan(move |r: Record| {
            let h = h.clone();
            async move {
                if r.data() == "r42" {
                    return Err(Boom("r42".into()));
                }
                h.fetch_add(1, Ordering::SeqCst);
                // Slow, so other shards are mid-stream when the error comes.
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(Outcome::Checkpoint)
            }
        })
        .await
        .expect_err("the handler's error stops the scan");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.stream(), Some(STREAM));
    assert!(err.shard().is_some());
    let boom = err.into_handler_error().expect("handler error").downcast::<Boom>().expect("our error type");
    assert_eq!(boom.0, "r42");
    assert_eq!(stopped.load(Ordering::SeqCst), 3, "every shard task stopped");
    let after = handled.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(handled.load(Ordering::SeqCst), after, "nothing handled after scan returned");
    assert!(after < 90);
    // The records handled before the error were checkpointed.
    let checkpointed = store.snapshot().len();
    assert!(checkpointed >= 1, "checkpoints flushed: {checkpointed}");
}

#[tokio::test(start_paused = true)]
async fn cancellation_finishes_the_record_in_hand_and_checkpoints_it() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let (_, last_seq) = {
        let mut last = (String::new(), String::new());
        for i in 0..5 {
            last = fake.put(STREAM, "k", format!("r{i}"));
        }
        last
    };
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let token = consumer.shutdown_token();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s, f) = (started.clone(), finished.clone());
    let task = tokio::spawn(async move {
        consumer
            .scan(move |_r: Record| {
                let (s, f) = (s.clone(), f.clone());
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED.expect("3 records started", || started.load(Ordering::SeqCst) == 3).await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(5), task).await.expect("prompt").expect("task");
    result.expect("Ok on cancel");
    assert_eq!(finished.load(Ordering::SeqCst), 3, "the in-flight record finished, no new one started");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let cp = store.get(&key).await.expect("get").expect("checkpointed");
    // r2 (the third record) is the last handled: its checkpoint is before the last record.
    let Checkpoint::At { sequence, .. } = cp else { panic!("not a position: {cp:?}") };
    assert!(sequence.as_str() < last_seq.as_str());
    let (rest, r) = scan_until(builder(&fake, &store).build().await.expect("build"), 2).await;
    r.expect("scan");
    assert_eq!(rest.data(), ["r3", "r4"]);
}

async fn reshard_test(hide_child_shards: bool) {
    let fake = FakeKinesis::new();
    fake.hide_child_shards(hide_child_shards);
    fake.create_stream(STREAM, 2);
    let store = MemoryStore::new();
    let closed = Arc::new(Mutex::new(Vec::<String>::new()));
    let c = closed.clone();
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(5)
        .discovery_interval(Duration::from_secs(3))
        .on_shard_closed(move |shard| c.lock().expect("lock").push(shard.to_owned()))
        .build()
        .await
        .expect("build");
    let f = fake.clone();
    let producer = tokio::spawn(async move {
        let mut produced = Vec::new();
        let mut n = 0;
        let mut batch = |f: &FakeKinesis, produced: &mut Vec<String>| {
            for _ in 0..40 {
                let d = format!("r{n}");
                f.put(STREAM, &format!("key-{}", n % 7), d.clone());
                produced.push(d);
                n += 1;
            }
        };
        batch(&f, &mut produced);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shards = f.open_shard_ids(STREAM);
        let (c1, _c2) = f.split_shard(STREAM, &shards[0]);
        batch(&f, &mut produced);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let open = f.open_shard_ids(STREAM);
        let other = open.iter().find(|s| **s != c1 && **s != shards[1]).expect("second child").clone();
        f.merge_shards(STREAM, &c1, &other);
        batch(&f, &mut produced);
        produced
    });
    let consumer_task = tokio::spawn(scan_until(consumer, 120));
    let produced = producer.await.expect("producer");
    let (seen, result) = consumer_task.await.expect("consumer");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    // Parents before children: no record of a child before the last record of its parent.
    let order: Vec<String> = seen.all().into_iter().map(|r| r.shard).collect();
    let ids = fake.shard_ids(STREAM);
    let last_of = |s: &str| order.iter().rposition(|x| x == s);
    let first_of = |s: &str| order.iter().position(|x| x == s);
    let (p0, c1, c2, m) = (&ids[0], &ids[2], &ids[3], &ids[4]);
    for (parent, child) in [(p0, c1), (p0, c2), (c1, m), (c2, m)] {
        if let (Some(lp), Some(fc)) = (last_of(parent), first_of(child)) {
            assert!(lp < fc, "{child} started before {parent} ended");
        }
    }
    let closed = closed.lock().expect("lock").clone();
    assert!(closed.contains(p0) && closed.contains(c1) && closed.contains(c2), "closed hook: {closed:?}");
    for s in [p0, c1, c2] {
        let cp = store.get(&ShardKey::new("kinesis-consumer", STREAM, s.as_str())).await.expect("get");
        assert_eq!(cp, Some(Checkpoint::ShardEnd), "{s} marked finished");
    }
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_parents_before_children_with_child_shards() {
    reshard_test(false).await;
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_parents_before_children_from_listing_only() {
    reshard_test(true).await;
}

#[tokio::test(start_paused = true)]
async fn expired_iterators_lose_and_repeat_nothing() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let mut produced = put_many(&fake, 0..60, "a");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let f = fake.clone();
    let chaos = tokio::spawn(async move {
        let mut more = Vec::new();
        for round in 0..5 {
            tokio::time::sleep(Duration::from_millis(450)).await;
            f.expire_iterators();
            more.extend(put_many(&f, 0..10, &format!("x{round}-")));
        }
        more
    });
    let task = tokio::spawn(scan_until(consumer, 110));
    produced.extend(chaos.await.expect("chaos"));
    let (seen, result) = task.await.expect("task");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert!(fake.calls(Op::GetShardIterator) > 2, "iterators were refreshed");
}

#[tokio::test(start_paused = true)]
async fn throttling_and_transient_errors_are_retried() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let produced = put_many(&fake, 0..80, "r");
    fake.inject(Op::ListShards, ApiErrorKind::Throttled, 2);
    fake.inject(Op::GetShardIterator, ApiErrorKind::Transient, 2);
    fake.inject(Op::GetRecords, ApiErrorKind::Throttled, 6);
    fake.inject(Op::GetRecords, ApiErrorKind::Transient, 4);
    let store = MemoryStore::new();
    let (seen, result) = scan_until(builder(&fake, &store).build().await.expect("build"), produced.len()).await;
    result.expect("transient faults never end the scan");
    seen.assert_exactly_once(&produced);
    assert!(fake.calls(Op::GetRecords) >= 10);
}

#[tokio::test(start_paused = true)]
async fn missing_stream_is_a_clear_error() {
    let fake = FakeKinesis::new();
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let err = consumer
        .scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) })
        .await
        .expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::StreamNotFound);
    assert!(err.to_string().contains("stream \"s\""), "{err}");
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_name_stream_and_shard() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    fake.inject(Op::GetRecords, ApiErrorKind::Permanent, 1);
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let err = consumer
        .scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) })
        .await
        .expect_err("permanent");
    assert_eq!(err.kind(), ErrorKind::Kinesis);
    assert_eq!(err.shard(), Some(fake.shard_ids(STREAM)[0].as_str()));
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test(start_paused = true)]
async fn stream_deleted_while_scanning_is_an_error() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let f = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.delete_stream(STREAM);
    });
    let err =
        consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await.expect_err("deleted");
    assert_eq!(err.kind(), ErrorKind::StreamNotFound);
}

#[tokio::test(start_paused = true)]
async fn list_shards_follows_next_token() {
    let fake = FakeKinesis::new();
    fake.list_page_size(2);
    fake.create_stream(STREAM, 5);
    let produced = put_many(&fake, 0..100, "r");
    let (seen, result) = scan_until(builder(&fake, &MemoryStore::new()).build().await.expect("build"), 100).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    let shards: std::collections::HashSet<_> = seen.all().into_iter().map(|r| r.shard).collect();
    assert_eq!(shards.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn batch_handler_checkpoints_batches_and_never_rewinds() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let produced = put_many(&fake, 0..30, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let token = consumer.shutdown_token();
    let batches = Arc::new(Mutex::new(Vec::<Vec<String>>::new()));
    let b = batches.clone();
    let f = fake.clone();
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let (b, f) = (b.clone(), f.clone());
                async move {
                    let data: Vec<String> =
                        batch.records().iter().map(|r| String::from_utf8_lossy(r.data()).into_owned()).collect();
                    let first = b.lock().expect("lock").is_empty();
                    b.lock().expect("lock").push(data);
                    if first {
                        // The next GetRecords fails: the retry must continue after this batch.
                        f.expire_iterators();
                        f.inject(Op::GetRecords, ApiErrorKind::Throttled, 2);
                    }
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED.expect("30 records", || batches.lock().expect("lock").iter().map(Vec::len).sum::<usize>() >= 30).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let batches = batches.lock().expect("lock").clone();
    assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= 7), "{batches:?}");
    assert_eq!(batches.concat(), produced, "each record once, in order");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    assert!(store.get(&key).await.expect("get").is_some());
}

#[tokio::test(start_paused = true)]
async fn handler_panic_is_an_error_not_a_crash() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    fake.put(STREAM, "k", "x");
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let err = consumer
        .scan(|_r: Record| async {
            #[allow(clippy::panic)]
            if true {
                panic!("handler bug");
            }
            Ok::<_, std::io::Error>(Outcome::Checkpoint)
        })
        .await
        .expect_err("panic becomes an error");
    assert_eq!(err.kind(), ErrorKind::Handler);
}

#[tokio::test(start_paused = true)]
async fn scan_shard_reads_one_shard_to_its_end() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let ids = fake.shard_ids(STREAM);
    for i in 0..10 {
        fake.put_to_shard(STREAM, &ids[0], "k", format!("a{i}"));
        fake.put_to_shard(STREAM, &ids[1], "k", format!("b{i}"));
    }
    fake.split_shard(STREAM, &ids[0]);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let seen = Seen::default();
    let s = seen.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        consumer.scan_shard(&ids[0], move |r: Record| {
            let s = s.clone();
            async move {
                s.push(&r);
                Ok::<_, std::io::Error>(Outcome::Checkpoint)
            }
        }),
    )
    .await
    .expect("returns at the shard's end")
    .expect("scan_shard");
    assert_eq!(seen.data(), (0..10).map(|i| format!("a{i}")).collect::<Vec<_>>());
    let key = ShardKey::new("test-app", STREAM, ids[0].as_str());
    assert_eq!(store.get(&key).await.expect("get"), Some(Checkpoint::ShardEnd));
}

mod kpl {
    use super::*;
    use kc_deagg::Aggregator;

    fn aggregate(prefix: &str, n: usize) -> bytes::Bytes {
        let mut agg = Aggregator::new();
        for i in 0..n {
            agg.add(&format!("user-key-{i}"), None, format!("{prefix}{i}").as_bytes());
        }
        agg.finish()
    }

    #[tokio::test(start_paused = true)]
    async fn user_records_with_sub_sequence_numbers_and_restart_mid_aggregate() {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        fake.put(STREAM, "outer", aggregate("a", 5));
        fake.put(STREAM, "plain", "plain-record");
        fake.put(STREAM, "outer", aggregate("b", 3));
        let store = MemoryStore::new();
        let consumer = builder(&fake, &store).aggregation(true).build().await.expect("build");
        // First run: stop with an error at user record a3 (after a0..a2 were handled and checkpointed).
        let (seen, err) = scan_failing_at(&consumer, "a3").await;
        assert_eq!(err.kind(), ErrorKind::Handler);
        assert_eq!(seen.data(), ["a0", "a1", "a2"]);
        let subs: Vec<_> = seen.all().into_iter().map(|r| (r.key, r.sub)).collect();
        assert_eq!(subs[2], ("user-key-2".to_owned(), Some(2)));
        let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
        let cp = store.get(&key).await.expect("get").expect("checkpoint");
        assert!(matches!(cp, Checkpoint::At { sub_sequence: Some(2), .. }), "{cp:?}");

        // Restart: the rest of aggregate a, then the plain record, then aggregate b. Nothing twice.
        let (rest, r) = scan_until(builder(&fake, &store).aggregation(true).build().await.expect("build"), 6).await;
        r.expect("scan");
        assert_eq!(rest.data(), ["a3", "a4", "plain-record", "b0", "b1", "b2"]);
        let last = store.get(&key).await.expect("get").expect("checkpoint");
        assert!(matches!(last, Checkpoint::At { sub_sequence: None, .. }), "a finished aggregate: {last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn corrupt_aggregates_pass_through_or_fail_when_strict() {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        let mut bad = aggregate("a", 3).to_vec();
        let n = bad.len();
        bad[n - 1] ^= 0xff; // break the MD5
        fake.put(STREAM, "outer", bad.clone());
        fake.put(STREAM, "outer", aggregate("b", 2));
        let store = MemoryStore::new();
        let (seen, r) = scan_until(builder(&fake, &store).aggregation(true).build().await.expect("build"), 3).await;
        r.expect("lenient by default");
        let all = seen.all();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].sub, None, "the corrupt aggregate comes as one ordinary record");
        assert_eq!(all[0].key, "outer");
        assert_eq!(seen.data()[1..], ["b0", "b1"]);

        let strict = builder(&fake, &MemoryStore::new()).aggregation(true).strict_deaggregation(true).build().await;
        let err = strict
            .expect("build")
            .scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) })
            .await
            .expect_err("strict");
        assert_eq!(err.kind(), ErrorKind::Deaggregation);
    }

    #[tokio::test(start_paused = true)]
    async fn aggregation_off_delivers_aggregates_whole() {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        let agg = aggregate("a", 4);
        fake.put(STREAM, "outer", agg.clone());
        let (seen, r) = scan_until(builder(&fake, &MemoryStore::new()).build().await.expect("build"), 1).await;
        r.expect("scan");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.all()[0].data.as_bytes(), String::from_utf8_lossy(&agg).as_bytes());
    }
}

#[tokio::test(start_paused = true)]
async fn polls_at_once_when_behind_but_within_the_rate_limit() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let produced = put_many(&fake, 0..70, "r");
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
        .scan_interval(Duration::from_secs(30))
        .build()
        .await
        .expect("build");
    let Collecting { seen, token, task } = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.expect("every record", || seen.len() >= produced.len()).await;
    token.cancel();
    task.await.expect("scan task").expect("scan");
    seen.assert_exactly_once(&produced);
    // When the records were handled (paused time): the batches' spacing, without the scan's start and stop.
    let times = seen.times();
    let spread = times[times.len() - 1] - times[0];
    // 7 full batches: behind, so no 30 s scan interval between them, but each call at least 200 ms after the
    // previous one (5 calls/s): the 7th batch is handled at least 6 × 200 ms after the first.
    let calls = fake.calls(Op::GetRecords);
    assert!(calls >= 7, "{calls} GetRecords calls");
    assert!(spread < Duration::from_secs(30), "took {spread:?}: waited the scan interval while behind");
    assert!(spread >= Duration::from_millis(200 * 6), "took {spread:?}: faster than 5 calls/s");
}

#[tokio::test(start_paused = true)]
async fn handler_error_stops_the_scan_even_while_list_shards_fails() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let consumer = builder(&fake, &MemoryStore::new()).build().await.expect("build");
    let f = fake.clone();
    tokio::spawn(async move {
        Wait::PAUSED.expect("a listing", || f.calls(Op::ListShards) >= 1).await;
        // From now on every ListShards fails (a long Kinesis control-plane outage)...
        f.inject(Op::ListShards, ApiErrorKind::Transient, 1_000_000);
        tokio::time::sleep(Duration::from_secs(5)).await;
        // ...and then a record comes that the handler refuses.
        f.put(STREAM, "k", "poison");
    });
    let start = tokio::time::Instant::now();
    let err = consumer
        .scan(|r: Record| async move {
            match r.data().as_ref() {
                b"poison" => Err(std::io::Error::other("poison")),
                _ => Ok(Outcome::Checkpoint),
            }
        })
        .await
        .expect_err("handler error");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

/// A store whose writes fail for good (its table was dropped): every write, or (`marker_too` false) every write but
/// the stream's creation marker's, written at the start.
struct Broken {
    marker_too: bool,
}

#[async_trait::async_trait]
impl CheckpointStore for Broken {
    async fn get(&self, _key: &ShardKey) -> Result<Option<Checkpoint>, kc_checkpoint::Error> {
        Ok(None)
    }
    async fn set(&self, key: &ShardKey, _cp: Checkpoint) -> Result<(), kc_checkpoint::Error> {
        if key.shard() == "#created" && !self.marker_too {
            return Ok(());
        }
        Err(kc_checkpoint::Error::new(kc_checkpoint::ErrorKind::Permanent, "table dropped"))
    }
    async fn flush(&self) -> Result<(), kc_checkpoint::Error> {
        Ok(())
    }
}

/// A store whose writes fail for good (say its table was dropped): the scan stops with a checkpoint error naming
/// the shard, instead of running on while nothing is saved.
#[tokio::test(start_paused = true)]
async fn a_failing_checkpoint_store_stops_the_scan() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    put_many(&fake, 0..5, "r");
    let consumer =
        builder(&fake, &MemoryStore::new()).store(Broken { marker_too: false }).build().await.expect("build");
    let err = consumer
        .scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) })
        .await
        .expect_err("the store's error stops the scan");
    assert_eq!(err.kind(), ErrorKind::Checkpoint);
    assert_eq!(err.shard(), Some(fake.shard_ids(STREAM)[0].as_str()));
    assert!(std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("table dropped")));
}

/// A store that cannot be written at all stops the scan at its start, when the stream's creation marker is written,
/// with a checkpoint error that says so.
#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_every_write_stops_the_scan_at_its_start() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    put_many(&fake, 0..5, "r");
    let consumer = builder(&fake, &MemoryStore::new()).store(Broken { marker_too: true }).build().await.expect("build");
    let handled = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&handled);
    let err = consumer
        .scan(move |_r: Record| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }
        })
        .await
        .expect_err("the store's error stops the scan");
    assert_eq!(err.kind(), ErrorKind::Checkpoint);
    assert!(err.to_string().contains("creation marker"), "{err}");
    assert_eq!(handled.load(Ordering::SeqCst), 0, "nothing read");
}
