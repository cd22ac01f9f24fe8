//! Per-key parallelism inside a shard (issue 15, `max_in_flight_per_shard`), on the in-process fake with a paused clock:
//! each key's records in order and never two at once, up to n calls at once, the checkpoint never past an unfinished
//! record, the failure policy holding only the failing record's key, and a stop that starts nothing more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_core::fake::FakeKinesis;
use kc_core::{Checkpoint, CheckpointStore, Consumer, ConsumerBuilder, FailurePolicy, InitialPosition, MemoryStore};
use kc_core::{ErrorKind, Outcome, Record, ShardKey};
use kc_test_support::fake::STREAM;
use kc_test_support::Wait;
use tokio::time::Instant;

fn builder(fake: &FakeKinesis, store: &MemoryStore, n: usize) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .app_name("test-app")
        .api(fake.clone())
        .store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_in_flight_per_shard(n)
}

/// One shard; record `r{i}` has key `k{i % keys}`. Returns the data in order.
fn one_shard(fake: &FakeKinesis, records: usize, keys: usize) -> Vec<String> {
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM)[0].clone();
    (0..records)
        .map(|i| {
            let data = format!("r{i}");
            fake.put_to_shard(STREAM, &shard, &format!("k{}", i % keys), data.clone());
            data
        })
        .collect()
}

fn number(data: &str) -> usize {
    data[1..].parse().expect("r{i}")
}

/// What a watching handler saw.
#[derive(Default)]
struct Watch {
    /// Keys with a call running.
    running: HashSet<String>,
    /// Calls running at once: now and the most.
    now: usize,
    most: usize,
    /// Records in the order their calls started and ended.
    started: Vec<String>,
    ended: Vec<String>,
    /// A call started for a key that had one running.
    overlaps: Vec<String>,
    /// When the last call ended.
    last_end: Option<Instant>,
}

type Shared = Arc<Mutex<Watch>>;

/// A scan whose handler notes calls in `watch`, takes `took(data)` (paused clock), and answers `result(data)`.
fn spawn_watching(
    consumer: Consumer,
    watch: &Shared,
    took: fn(&str) -> Duration,
    fail: fn(&str) -> bool,
) -> tokio::task::JoinHandle<Result<(), kc_core::Error>> {
    let w = watch.clone();
    tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let w = w.clone();
                async move {
                    let data = String::from_utf8_lossy(r.data()).into_owned();
                    let key = r.partition_key().to_owned();
                    {
                        let mut w = w.lock().expect("lock");
                        if !w.running.insert(key.clone()) {
                            w.overlaps.push(data.clone());
                        }
                        w.now += 1;
                        w.most = w.most.max(w.now);
                        w.started.push(data.clone());
                    }
                    tokio::time::sleep(took(&data)).await;
                    let mut w = w.lock().expect("lock");
                    w.running.remove(&key);
                    w.now -= 1;
                    w.ended.push(data.clone());
                    w.last_end = Some(Instant::now());
                    if fail(&data) {
                        return Err(std::io::Error::other(format!("{data} is poison")));
                    }
                    Ok(Outcome::Checkpoint)
                }
            })
            .await
    })
}

/// 1 to 5 ms, varying by record.
fn varied(data: &str) -> Duration {
    Duration::from_millis(1 + (number(data) * 7 % 5) as u64)
}

fn never(_: &str) -> bool {
    false
}

#[tokio::test(start_paused = true)]
async fn each_keys_records_are_handled_in_order_and_never_two_at_once() {
    let fake = FakeKinesis::new();
    // Fewer keys than calls allowed: without the rule per key, calls of one key would overlap at once.
    let produced = one_shard(&fake, 1_000, 10);
    let consumer = builder(&fake, &MemoryStore::new(), 16).build().await.expect("build");
    let token = consumer.shutdown_token();
    let watch = Shared::default();
    let task = spawn_watching(consumer, &watch, varied, never);
    Wait::PAUSED.expect("every record", || watch.lock().expect("lock").ended.len() >= produced.len()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let w = watch.lock().expect("lock");
    assert!(w.overlaps.is_empty(), "two calls at once for the keys of {:?}", w.overlaps);
    assert_eq!(w.most, 10, "calls at once: one per key");
    let mut sorted = w.ended.clone();
    sorted.sort_by_key(|d| number(d));
    assert_eq!(sorted, produced, "each record once");
    // Per key, in the shard's order.
    let mut by_key: HashMap<usize, Vec<usize>> = HashMap::new();
    for d in &w.started {
        by_key.entry(number(d) % 10).or_default().push(number(d));
    }
    for (key, numbers) in by_key {
        assert!(numbers.windows(2).all(|p| p[0] < p[1]), "key k{key} out of order: {numbers:?}");
    }
    assert!(w.ended != produced, "with varied handling times, records of different keys overtake each other");
}

#[tokio::test(start_paused = true)]
async fn the_rate_grows_with_n_when_the_handler_awaits() {
    let mut took = Vec::new();
    for n in [1, 4, 16, 64] {
        let fake = FakeKinesis::new();
        let produced = one_shard(&fake, 1_000, 1_000);
        let consumer = builder(&fake, &MemoryStore::new(), n).build().await.expect("build");
        let token = consumer.shutdown_token();
        let watch = Shared::default();
        let started = Instant::now();
        let task = spawn_watching(consumer, &watch, |_| Duration::from_millis(1), never);
        Wait::PAUSED.expect("every record", || watch.lock().expect("lock").ended.len() >= produced.len()).await;
        let (last_end, most) = {
            let w = watch.lock().expect("lock");
            (w.last_end.expect("calls ended"), w.most)
        };
        assert_eq!(most, n, "calls at once");
        took.push((n, last_end - started));
        token.cancel();
        task.await.expect("task").expect("scan");
    }
    let one = took[0].1;
    for (n, t) in &took[1..] {
        // Paused clock: handling is the only time that passes (1 ms a record, rounded up to the timer's tick), so n
        // calls at once take about 1/n of it. (The bench measures the rates on the real clock.)
        let bound = one * 2 / *n as u32;
        assert!(*t <= bound, "n = {n}: {t:?}, against {one:?} at n = 1: {took:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_checkpoints_the_finished_records_before_the_first_unfinished_one_only() {
    let fake = FakeKinesis::new();
    let produced = one_shard(&fake, 30, 30);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, 4).build().await.expect("build");
    let watch = Shared::default();
    // r2 fails after 1 s; every other record takes 1 ms, so r3, r4, ... finish before it.
    let task = spawn_watching(
        consumer,
        &watch,
        |d| if d == "r2" { Duration::from_secs(1) } else { Duration::from_millis(1) },
        |d| d == "r2",
    );
    let err = task.await.expect("task").expect_err("the stop policy stops the scan");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    let ended = watch.lock().expect("lock").ended.clone();
    assert!(ended.iter().any(|d| number(d) > 5), "records after r2 finished meanwhile: {ended:?}");
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let saved = store.get(&key).await.expect("get").expect("a checkpoint");

    // The checkpoint is r1's: a restart delivers r2 again (and what came after it), never r0 or r1.
    let consumer = builder(&fake, &store, 4).build().await.expect("build");
    let (seen, result) = kc_test_support::Collect::PAUSED.run(consumer, 28).await;
    result.expect("scan");
    let mut again: Vec<String> = seen.all().into_iter().map(|r| r.data).collect();
    again.sort_by_key(|d| number(d));
    assert_eq!(again, produced[2..], "from r2 on, each once");
    assert!(matches!(saved, Checkpoint::At { .. }));
}

#[tokio::test(start_paused = true)]
async fn a_retried_record_holds_its_key_while_the_other_keys_go_on() {
    let fake = FakeKinesis::new();
    // Four keys: r{i} has key k{i % 4}; r5 (key k1) fails every time.
    let produced = one_shard(&fake, 40, 4);
    let consumer = builder(&fake, &MemoryStore::new(), 4)
        .on_handler_error(
            FailurePolicy::skip().max_attempts(4).retry_backoff(Duration::from_secs(1), Duration::from_secs(1)),
        )
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let watch = Shared::default();
    let task = spawn_watching(consumer, &watch, |_| Duration::from_millis(1), |d| d == "r5");
    Wait::PAUSED
        .expect("every record and r5's attempts", || watch.lock().expect("lock").ended.len() >= produced.len() + 3)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("skip: the scan goes on");
    let w = watch.lock().expect("lock");
    let attempts: Vec<usize> = w.ended.iter().enumerate().filter(|(_, d)| *d == "r5").map(|(i, _)| i).collect();
    assert_eq!(attempts.len(), 4, "r5 was tried 4 times");
    let last_attempt = attempts[3];
    let at = |data: &str| w.ended.iter().position(|d| d == data).expect("handled");
    // The other keys' records finished during r5's retries (3 s of backoff); k1's next record waited for r5.
    for other in ["r6", "r7", "r8", "r10", "r39"] {
        assert!(at(other) < last_attempt, "{other} waited for r5's retries");
    }
    assert!(at("r9") > last_attempt, "r9 (key k1) was handled before r5 was settled");
}

#[tokio::test(start_paused = true)]
async fn a_stop_starts_no_more_calls_and_waits_for_the_running_ones() {
    let fake = FakeKinesis::new();
    let produced = one_shard(&fake, 100, 100);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, 8).build().await.expect("build");
    let token = consumer.shutdown_token();
    let watch = Shared::default();
    let task = spawn_watching(consumer, &watch, |_| Duration::from_millis(100), never);
    Wait::PAUSED.expect("some records", || watch.lock().expect("lock").ended.len() >= 20).await;
    token.cancel();
    let started_at_stop = watch.lock().expect("lock").started.len();
    task.await.expect("task").expect("a stop is not an error");
    let (started, ended) = {
        let w = watch.lock().expect("lock");
        (w.started.clone(), w.ended.clone())
    };
    assert_eq!(started.len(), started_at_stop, "no call started after the stop");
    assert_eq!(ended.len(), started.len(), "every running call was waited for");
    assert!(ended.len() < produced.len());
    // Every call ended, all of them in order from r0 (n calls start in order): the checkpoint is the last one.
    let key = ShardKey::new("test-app", STREAM, fake.shard_ids(STREAM)[0].as_str());
    let saved = store.get(&key).await.expect("get").expect("a checkpoint");
    let last = ended.iter().map(|d| number(d)).max().expect("some");
    assert_eq!(ended.len(), last + 1, "the calls that ran are r0..r{last}");
    let consumer = builder(&fake, &store, 8).build().await.expect("build");
    let (seen, result) = kc_test_support::Collect::PAUSED.run(consumer, produced.len() - last - 1).await;
    result.expect("scan");
    let mut again: Vec<String> = seen.all().into_iter().map(|r| r.data).collect();
    again.sort_by_key(|d| number(d));
    assert_eq!(again, produced[last + 1..], "a restart goes on after r{last}: {saved:?}");
}
