//! The failure policy (issue 14) against real servers, for what crates/kc-core/tests/failure_policy.rs tests on the
//! in-process fake: partial batch responses and bisection, the max record age and the handler timeout on kinesalite
//! (dead letters put on a kinesalite stream, through the tests' `Observed` client), enhanced fan-out on kinesis-local,
//! and a consumer group with its leases in PostgreSQL. `cargo xtask integration -- --test failure_policy` runs them.
//!
//! What stays on the fake: a lost lease ending the retries at once (a real-server version would have to time the
//! lease's loss against the retries).
//!
//! No test here compares durations: where a test needs "the other shards went on during the retries" or "the lease was
//! renewed during the retries", a retry of the poison waits (bounded) until it happened, and the test checks it did.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use kc_integration::{
    consumer_builder, create_stream, fan_out_builder, kinesis_local, new_stream, postgres_url, put_numbered,
    read_all_records, unique_stream, unique_table, wait_for, Observed, Seen,
};
use kinesis_consumer::checkpoint::lease::{LeaseScope, LeaseTable};
use kinesis_consumer::metrics::names;
use kinesis_consumer::postgres::PostgresLeaseTable;
use kinesis_consumer::{
    Batch, BatchFailure, Checkpoint, CheckpointStore, Consumer, DeadLetter, DeadLetterError, FailedRecord,
    FailurePolicy, Group, HandlerTimeout, KinesisDeadLetter, MemoryStore, Outcome, Record, SequenceNumber, ShardKey,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const WAIT: Duration = Duration::from_secs(90);
const POISON: &str = "poison";

// --- What the consumer counted and logged: one recorder and one subscriber for this test binary ---

/// The debugging recorder (a snapshot resets its counters: they are added up here, as tests run concurrently) and
/// the warnings logged.
struct Observe {
    snapshotter: Snapshotter,
    counted: Mutex<HashMap<(String, String, String), u64>>,
    logs: Arc<Mutex<Vec<u8>>>,
}

/// Writes the log lines into memory.
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn observe() -> &'static Observe {
    static OBSERVE: OnceLock<Observe> = OnceLock::new();
    OBSERVE.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the first metrics recorder of this test binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&logs);
        tracing_subscriber::fmt()
            .with_writer(move || Logs(Arc::clone(&writer)))
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .try_init()
            .expect("the first subscriber of this test binary");
        Observe { snapshotter, counted: Mutex::default(), logs }
    })
}

/// The counter `name` of `stream` so far (every shard), of every reason or only of `reason`.
fn counter_of(name: &str, stream: &str, reason: Option<&str>) -> u64 {
    let o = observe();
    let mut counted = o.counted.lock().expect("lock");
    for (key, _, _, value) in o.snapshotter.snapshot().into_vec() {
        let DebugValue::Counter(n) = value else { continue };
        let labels: HashMap<&str, &str> = key.key().labels().map(|l| (l.key(), l.value())).collect();
        let Some(s) = labels.get("stream") else { continue };
        let r = labels.get("reason").copied().unwrap_or_default();
        *counted.entry((key.key().name().to_owned(), (*s).to_owned(), r.to_owned())).or_default() += n;
    }
    counted
        .iter()
        .filter(|((n, s, r), _)| n == name && s == stream && reason.is_none_or(|want| want == r))
        .map(|(_, v)| v)
        .sum()
}

/// The counter `name` of `stream` so far (every shard, every reason).
fn counter(name: &str, stream: &str) -> u64 {
    counter_of(name, stream, None)
}

/// The lines logged that contain every one of `parts`.
fn logged(parts: &[&str]) -> Vec<String> {
    let logs = observe().logs.lock().expect("lock");
    String::from_utf8_lossy(&logs).lines().filter(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned).collect()
}

// --- Streams, destinations, handlers ---

/// A stream of one shard on kinesalite: `before0..n`, the poison (key "the-poisoned-key"), `after0..m`. Returns the
/// client, the stream and the data of the other records, in order.
async fn poisoned_stream(prefix: &str, before: usize, after: usize) -> (aws_sdk_kinesis::Client, String, Vec<String>) {
    let (client, stream) = new_stream(prefix, 1).await;
    let mut others = put_numbered(&client, &stream, "before", 0..before, 5).await.expect("put");
    put_poison(&client, &stream).await;
    others.extend(put_numbered(&client, &stream, "after", 0..after, 5).await.expect("put"));
    (client, stream, others)
}

async fn put_poison(client: &aws_sdk_kinesis::Client, stream: &str) -> String {
    let put = client
        .put_record()
        .stream_name(stream)
        .partition_key("the-poisoned-key")
        .data(Blob::new(POISON))
        .send()
        .await
        .expect("put the poison");
    put.shard_id
}

/// A dead-letter stream on kinesalite and its destination, writing through [`Observed`] (which must forward
/// PutRecord: its trait's default is a permanent error, which would stop the scan).
async fn kinesis_dead_letters(prefix: &str) -> (String, KinesisDeadLetter) {
    let (client, dead_letters) = new_stream(prefix, 1).await;
    let destination = KinesisDeadLetter::new(Observed::new(client), dead_letters.clone());
    (dead_letters, destination)
}

/// The dead letters on `stream`, as JSON.
async fn dead_letters(stream: &str) -> Vec<serde_json::Value> {
    let client = kc_integration::kinesis().await;
    let records = read_all_records(&client, stream).await;
    records.iter().map(|r| serde_json::from_slice(r.data().as_ref()).expect("JSON")).collect()
}

fn payload(letter: &serde_json::Value) -> String {
    let data = aws_smithy_types::base64::decode(letter["data"].as_str().expect("data")).expect("base64");
    String::from_utf8(data).expect("UTF-8")
}

/// A dead-letter destination in memory.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<FailedRecord>>>);

#[async_trait]
impl DeadLetter for Collected {
    async fn send(&self, failed: &FailedRecord) -> Result<(), DeadLetterError> {
        self.0.lock().expect("lock").push(failed.clone());
        Ok(())
    }
}

impl Collected {
    fn all(&self) -> Vec<FailedRecord> {
        self.0.lock().expect("lock").clone()
    }
}

/// A scan in a task of its own, and its shutdown token.
struct Running {
    token: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<(), kinesis_consumer::Error>>,
}

impl Running {
    /// Waits (at most [`WAIT`]) until `done`, or until the scan returned (then [`stop`](Self::stop) shows its error).
    async fn until(&self, what: &str, mut done: impl FnMut() -> bool) {
        wait_for(what, WAIT, || done() || self.task.is_finished()).await;
    }

    /// Stops the scan gracefully; it must return `Ok` within 30 s.
    async fn stop(self) {
        self.token.cancel();
        let joined = tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("stopped within 30 s");
        joined.expect("scan task").expect("scan");
    }
}

/// What a batch handler saw: the records handled, and the first record of each call that had the poison.
#[derive(Clone, Default)]
struct Batches {
    handled: Seen,
    poisoned_calls: Arc<Mutex<Vec<String>>>,
}

/// Scans with a batch handler that handles every record before the poison; at the poison it answers
/// `BatchFailure::at(index of the poison)` (`partial`) or fails the whole call (recording nothing).
fn spawn_batches(consumer: Consumer, partial: bool) -> (Batches, Running) {
    let batches = Batches::default();
    let b = batches.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let b = b.clone();
                async move {
                    let records = batch.records();
                    match records.iter().position(|r| r.data() == POISON.as_bytes()) {
                        None => {
                            records.iter().for_each(|r| b.handled.push(r));
                            Ok(Outcome::Checkpoint)
                        }
                        Some(i) => {
                            let first = String::from_utf8_lossy(records[0].data()).into_owned();
                            b.poisoned_calls.lock().expect("lock").push(first);
                            if partial {
                                records[..i].iter().for_each(|r| b.handled.push(r));
                                Err(BatchFailure::at(i, "poisoned"))
                            } else {
                                Err(BatchFailure::at(usize::MAX, "poisoned")) // the whole batch
                            }
                        }
                    }
                }
            })
            .await
    });
    (batches, Running { token, task })
}

/// What a record handler saw: the records handled, and each attempt at the poison (when, on which shard, sequence).
#[derive(Clone, Default)]
struct Log {
    seen: Seen,
    poison: Arc<Mutex<Vec<(Instant, String, String)>>>,
}

impl Log {
    fn attempts(&self) -> Vec<(Instant, String, String)> {
        self.poison.lock().expect("lock").clone()
    }
}

/// Scans with a handler that records every record but the poison; at the poison it records the attempt, then runs
/// `at_poison(attempt)` (1 for the first) and returns its error.
fn spawn_failing<F, Fut>(consumer: Consumer, log: &Log, at_poison: F) -> Running
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Error> + Send,
{
    let log = log.clone();
    let at_poison = Arc::new(at_poison);
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let (log, at_poison) = (log.clone(), Arc::clone(&at_poison));
                async move {
                    if r.data() == POISON.as_bytes() {
                        let attempt = {
                            let mut attempts = log.poison.lock().expect("lock");
                            attempts.push((Instant::now(), r.shard_id().to_owned(), r.sequence_number().to_string()));
                            attempts.len()
                        };
                        return Err(at_poison(attempt).await);
                    }
                    log.seen.push(&r);
                    Ok(Outcome::Checkpoint)
                }
            })
            .await
    });
    Running { token, task }
}

/// Each shard's records were handled in shard order (by position: the data of these tests is not one numbering).
fn assert_in_shard_order(seen: &Seen) {
    let mut last: HashMap<String, Checkpoint> = HashMap::new();
    for r in seen.all() {
        if let Some(before) = last.insert(r.shard.clone(), r.checkpoint.clone()) {
            assert!(before < r.checkpoint, "shard {}: {} handled after a later record", r.shard, r.data);
        }
    }
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("poisoned")
}

fn at(sequence: &str) -> Checkpoint {
    Checkpoint::at(SequenceNumber::parse(sequence).expect("sequence"))
}

// --- Partial batch responses and bisection ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_batch_response_checkpoints_the_records_before_and_retries_from_the_failed_one() {
    let _ = observe();
    let (client, stream, others) = poisoned_stream("fp-partial", 10, 9).await;
    let (dlq, destination) = kinesis_dead_letters("fp-partial-dlq").await;
    let store = MemoryStore::new();
    let policy = FailurePolicy::dead_letter(destination)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(200));
    let consumer = consumer_builder(&stream).await.store(store.clone()).on_handler_error(policy);
    let (batches, running) = spawn_batches(consumer.build().await.expect("build"), true);
    running.until("three calls with the poison", || batches.poisoned_calls.lock().expect("lock").len() >= 3).await;
    let later = put_numbered(&client, &stream, "later", 0..1, 1).await.expect("put");
    running.until("the record put later", || batches.handled.data().contains(&later[0])).await;
    running.stop().await;

    let calls = batches.poisoned_calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 3, "max_attempts: {calls:?}");
    assert!(calls[1..].iter().all(|first| first == POISON), "the retries start at the failed record: {calls:?}");
    // Without bisection, what the last call had from the poison on is dead-lettered; everything else was handled,
    // each record once (the records before the poison were not handed again).
    let letters = dead_letters(&dlq).await;
    let sent: Vec<String> = letters.iter().map(payload).collect();
    assert_eq!(sent.first().map(String::as_str), Some(POISON), "{sent:?}");
    assert!(letters.iter().all(|l| l["attempts"] == 3 && l["error"] == "the batch failed at its record 0: poisoned"));
    let mut handled = batches.handled.data();
    handled.extend(sent.iter().filter(|d| *d != POISON).cloned());
    handled.sort();
    let mut want = others.clone();
    want.extend(later);
    want.sort();
    assert_eq!(handled, want, "every other record handled or dead-lettered, once");
    assert_in_shard_order(&batches.handled);
    let shard = batches.handled.all()[0].shard.clone();
    let saved = store.get(&ShardKey::new("it", stream.as_str(), shard.as_str())).await.expect("get");
    let poison_at = at(letters[0]["sequence_number"].as_str().expect("sequence"));
    assert!(saved.is_some_and(|c| c > poison_at), "checkpointed past the poison once dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisection_brings_the_poison_alone_to_the_dead_letter_stream_and_every_other_record_is_handled_once() {
    let _ = observe();
    for partial in [false, true] {
        let (_, stream, others) = poisoned_stream("fp-bisect", 10, 9).await;
        let (dlq, destination) = kinesis_dead_letters("fp-bisect-dlq").await;
        let store = MemoryStore::new();
        let policy = FailurePolicy::dead_letter(destination)
            .max_attempts(2)
            .retry_backoff(Duration::from_millis(100), Duration::from_millis(200))
            .bisect_batches();
        let consumer = consumer_builder(&stream).await.store(store.clone()).on_handler_error(policy);
        let (batches, running) = spawn_batches(consumer.build().await.expect("build"), partial);
        running.until("every other record", || batches.handled.len() >= others.len()).await;
        running.stop().await;
        batches.handled.assert_exactly_once(&others);
        assert_in_shard_order(&batches.handled);
        let letters = dead_letters(&dlq).await;
        assert_eq!(letters.len(), 1, "partial {partial}: the poison alone is dead-lettered");
        assert_eq!(payload(&letters[0]), POISON);
        assert_eq!(letters[0]["attempts"], 2, "partial {partial}: the policy's attempts, for the record alone");
        assert_eq!(letters[0]["partition_key"], "the-poisoned-key");
        let shard = batches.handled.all()[0].shard.clone();
        let saved = store.get(&ShardKey::new("it", stream.as_str(), shard.as_str())).await.expect("get");
        let poison_at = at(letters[0]["sequence_number"].as_str().expect("sequence"));
        assert!(saved.is_some_and(|c| c > poison_at), "partial {partial}: checkpointed past the poison");
    }
}

// --- Max record age ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_older_than_max_record_age_goes_to_the_dead_letter_stream_without_a_retry() {
    let _ = observe();
    let (_, stream, others) = poisoned_stream("fp-age", 2, 2).await;
    let (dlq, destination) = kinesis_dead_letters("fp-age-dlq").await;
    // kinesalite's arrival times are this machine's clock: the poison is surely older than 1 s after this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Three attempts a minute apart for a younger record: were the age not applied, the test would time out.
    let policy = FailurePolicy::dead_letter(destination)
        .max_attempts(3)
        .max_record_age(Duration::from_secs(1))
        .retry_backoff(Duration::from_secs(60), Duration::from_secs(60));
    let consumer = consumer_builder(&stream).await.on_handler_error(policy);
    let log = Log::default();
    let running = spawn_failing(consumer.build().await.expect("build"), &log, |_| async { poisoned() });
    running.until("the records after the poison", || log.seen.len() >= others.len()).await;
    running.stop().await;
    log.seen.assert_exactly_once(&others);
    assert_eq!(log.attempts().len(), 1, "no retry of a record past its age");
    assert_eq!(counter_of(names::RETRIES, &stream, Some("handler")), 0, "no retry counted");
    let letters = dead_letters(&dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(payload(&letters[0]), POISON);
    assert_eq!(letters[0]["attempts"], 1);
    assert_eq!(letters[0]["error"], "poisoned");
    assert_eq!(counter(names::DEAD_LETTERED, &stream), 1);
}

// --- Handler stalls ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handler_call_is_logged_and_counted_and_let_run() {
    let _ = observe();
    let (_, stream, others) = poisoned_stream("fp-stall", 2, 2).await;
    let consumer = consumer_builder(&stream)
        .await
        .handler_timeout(HandlerTimeout::log_after(Duration::from_millis(300)))
        .build()
        .await
        .expect("build");
    let log = Log::default();
    let stall_seen = Arc::new(AtomicBool::new(false));
    let token = consumer.shutdown_token();
    let (l, flag, s) = (log.clone(), Arc::clone(&stall_seen), stream.clone());
    // The slow call (the "poison" record here) returns once its stall was counted and logged, and succeeds.
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let (l, flag, s) = (l.clone(), Arc::clone(&flag), s.clone());
                async move {
                    if r.data() == POISON.as_bytes() {
                        let seen = tokio::time::timeout(WAIT, async {
                            while counter(names::HANDLER_STALLS, &s) == 0
                                || logged(&["the handler has not returned yet", &s]).is_empty()
                            {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        })
                        .await;
                        flag.store(seen.is_ok(), Ordering::SeqCst);
                    }
                    l.seen.push(&r);
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    let running = Running { token, task };
    running.until("every record", || log.seen.len() > others.len()).await;
    running.stop().await;
    assert!(stall_seen.load(Ordering::SeqCst), "the stall was counted and logged while the call ran");
    let data = log.seen.data();
    assert_eq!(data.iter().filter(|d| *d == POISON).count(), 1, "the slow record handled once: {data:?}");
    let mut got: Vec<String> = data.into_iter().filter(|d| d != POISON).collect();
    let mut want = others.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every other record once");
    assert_in_shard_order(&log.seen);
    let slow = log.seen.all().into_iter().find(|r| r.data == POISON).expect("the slow record");
    let Checkpoint::At { sequence, .. } = &slow.checkpoint else { panic!("a record's position") };
    let lines = logged(&["the handler has not returned yet", &stream]);
    assert_eq!(lines.len(), 1, "one stall logged: {lines:?}");
    for part in [slow.shard.as_str(), &sequence.to_string(), "elapsed="] {
        assert!(lines[0].contains(part), "{part} in {}", lines[0]);
    }
    assert_eq!(logged(&["the stalled handler call returned", &sequence.to_string()]).len(), 1, "its end logged");
    assert_eq!(counter(names::HANDLER_STALLS, &stream), 1, "one stall counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_call_cancelled_at_its_timeout_is_a_failure_the_policy_applies_to() {
    let _ = observe();
    let (_, stream, others) = poisoned_stream("fp-cancel", 2, 2).await;
    let (dlq, destination) = kinesis_dead_letters("fp-cancel-dlq").await;
    let policy = FailurePolicy::dead_letter(destination)
        .max_attempts(2)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(200));
    let consumer = consumer_builder(&stream)
        .await
        .on_handler_error(policy)
        .handler_timeout(HandlerTimeout::cancel_after(Duration::from_millis(300)));
    let log = Log::default();
    // The call with the poison never returns: only its cancellation ends it.
    let running = spawn_failing(consumer.build().await.expect("build"), &log, |_| std::future::pending());
    running.until("the records after the poison", || log.seen.len() >= others.len()).await;
    running.stop().await;
    log.seen.assert_exactly_once(&others);
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 2, "cancelled, then retried once (max_attempts 2)");
    assert_eq!(counter(names::HANDLER_STALLS, &stream), 2, "each cancelled call counted as a stall");
    assert_eq!(counter(names::HANDLER_ERRORS, &stream), 2, "every failed call counted");
    let cancelled = logged(&["the handler did not return in time; cancelled", &stream, &attempts[0].2]);
    assert_eq!(cancelled.len(), 2, "{cancelled:?}");
    let letters = dead_letters(&dlq).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(payload(&letters[0]), POISON);
    assert_eq!(letters[0]["attempts"], 2);
    assert_eq!(letters[0]["error"], "the handler did not return within 300ms (cancelled)");
}

// --- Enhanced fan-out (kinesis-local) and a consumer group (kinesalite, leases in PostgreSQL) ---

/// Fails the poison: the first attempt at once; the second once `went_on()` is true (at most [`WAIT`]: `held` tells
/// whether it was), so the retries of the poison's shard overlap what the other shards do; later ones at once.
fn hold_second_attempt(
    went_on: impl Fn() -> bool + Send + Sync + 'static,
    held: Arc<AtomicBool>,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Error> + Send>> + Send + Sync {
    let went_on = Arc::new(went_on);
    move |attempt| {
        let (went_on, held) = (Arc::clone(&went_on), Arc::clone(&held));
        Box::pin(async move {
            if attempt == 2 {
                let waited = tokio::time::timeout(WAIT, async {
                    while !went_on() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                held.store(waited.is_ok(), Ordering::SeqCst);
            }
            poisoned()
        })
    }
}

/// Whether `seen` has a record whose data starts with `prefix` on a shard other than the one of the poison's first
/// attempt.
fn elsewhere(log: &Log, prefix: &str) -> bool {
    let Some((_, poison_shard, _)) = log.attempts().first().cloned() else { return false };
    log.seen.all().iter().any(|r| r.data.starts_with(prefix) && r.shard != poison_shard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fan_out_a_poison_record_is_retried_then_dead_lettered_while_the_other_shard_goes_on() {
    let _ = observe();
    let client = kinesis_local().await;
    let stream = unique_stream("fp-efo");
    create_stream(&client, &stream, 2).await.expect("create");
    let mut produced = put_numbered(&client, &stream, "before", 0..20, 10).await.expect("put");
    put_poison(&client, &stream).await;
    let letters = Collected::default();
    let policy = FailurePolicy::dead_letter(letters.clone())
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(200), Duration::from_millis(400));
    let consumer = fan_out_builder(client.clone(), &stream, "fp-efo").on_handler_error(policy);
    let log = Log::default();
    let held = Arc::new(AtomicBool::new(false));
    let l = log.clone();
    let at_poison = hold_second_attempt(move || elsewhere(&l, "during"), Arc::clone(&held));
    let running = spawn_failing(consumer.build().await.expect("build"), &log, at_poison);
    running.until("the first attempt at the poison", || !log.attempts().is_empty()).await;
    produced.extend(put_numbered(&client, &stream, "during", 0..20, 10).await.expect("put"));
    running.until("every other record", || log.seen.len() >= produced.len()).await;
    running.stop().await;
    assert!(held.load(Ordering::SeqCst), "the other shard was handled during the retries of the poison");
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 3, "max_attempts");
    log.seen.assert_exactly_once(&produced);
    assert_in_shard_order(&log.seen);
    let last_attempt = attempts[2].0;
    for r in log.seen.all().iter().filter(|r| r.shard == attempts[0].1 && r.data.starts_with("during")) {
        assert!(r.at.into_std() >= last_attempt, "{} was handled before the poison was settled", r.data);
    }
    let sent = letters.all();
    assert_eq!(sent.len(), 1, "dead-lettered once");
    assert_eq!(sent[0].data().as_ref(), POISON.as_bytes());
    assert_eq!((sent[0].attempts(), sent[0].sequence_number().to_string()), (3, attempts[0].2.clone()));
    assert_eq!(counter_of(names::RETRIES, &stream, Some("handler")), 2, "two retries counted");
}

/// A lease's counter and owner.
type LeaseSeen = (u64, Option<String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_worker_retrying_a_poison_record_keeps_renewing_its_lease_while_the_other_shard_goes_on() {
    let _ = observe();
    let (client, stream) = new_stream("fp-group", 2).await;
    let mut produced = put_numbered(&client, &stream, "before", 0..20, 10).await.expect("put");
    let poison_shard = put_poison(&client, &stream).await;
    let table = unique_table("kc_fp_group");
    let leases = PostgresLeaseTable::connect(&postgres_url(), &table).await.expect("lease table");
    leases.create_table_if_missing().await.expect("create");
    let leases: Arc<dyn LeaseTable> = Arc::new(leases);
    let scope = LeaseScope::new("g", stream.as_str());
    let group = Group::new("g", Arc::clone(&leases)).worker_id("w").lease_duration(Duration::from_secs(3));
    let letters = Collected::default();
    let policy = FailurePolicy::dead_letter(letters.clone())
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(200), Duration::from_millis(400));
    let consumer = consumer_builder(&stream).await.on_handler_error(policy).group(group);
    let log = Log::default();
    // The second attempt waits until the other shard handled a record put after the first one, and until the
    // poison's lease was renewed (its counter moved) three times since the first attempt.
    let renewals = Arc::new(AtomicUsize::new(0));
    // The poison's lease as the watcher saw it change: counter, owner.
    let owners: Arc<Mutex<Vec<LeaseSeen>>> = Arc::default();
    let watcher = {
        let (leases, scope, shard, owners, renewals) =
            (Arc::clone(&leases), scope.clone(), poison_shard.clone(), Arc::clone(&owners), Arc::clone(&renewals));
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                let retrying = (1..3).contains(&log.attempts().len());
                if let (true, Ok(Some(lease))) = (retrying, leases.get(&scope, &shard).await) {
                    let mut seen = owners.lock().expect("lock");
                    if seen.last().map(|(counter, _)| *counter) != Some(lease.counter) {
                        seen.push((lease.counter, lease.owner));
                        renewals.store(seen.len() - 1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let held = Arc::new(AtomicBool::new(false));
    let (l, r) = (log.clone(), Arc::clone(&renewals));
    let went_on = move || elsewhere(&l, "during") && r.load(Ordering::SeqCst) >= 3;
    let running =
        spawn_failing(consumer.build().await.expect("build"), &log, hold_second_attempt(went_on, Arc::clone(&held)));
    running.until("the first attempt at the poison", || !log.attempts().is_empty()).await;
    produced.extend(put_numbered(&client, &stream, "during", 0..20, 10).await.expect("put"));
    running.until("every other record", || log.seen.len() >= produced.len()).await;
    running.stop().await;
    watcher.abort();
    let owners = owners.lock().expect("lock").clone();
    assert!(
        held.load(Ordering::SeqCst),
        "during the retries the lease was renewed ({owners:?}) and the other shard went on"
    );
    assert!(owners.iter().all(|(_, owner)| owner.as_deref() == Some("w")), "the lease stayed the worker's: {owners:?}");
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 3, "max_attempts");
    assert_eq!(attempts[0].1, poison_shard);
    log.seen.assert_exactly_once(&produced);
    assert_in_shard_order(&log.seen);
    let sent = letters.all();
    assert_eq!(sent.len(), 1, "dead-lettered once");
    assert_eq!((sent[0].attempts(), sent[0].sequence_number().to_string()), (3, attempts[0].2.clone()));
    let lease = leases.get(&scope, &poison_shard).await.expect("get").expect("lease");
    assert!(lease.checkpoint.is_some_and(|c| c > at(&attempts[0].2)), "checkpointed past the dead-lettered poison");
}

// --- The tests' own Kinesis wrapper ---

/// `Observed` forwards PutRecord (it took the trait's default, a permanent error, before): what a dead-letter
/// destination made with it puts lands on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_forwards_put_record() {
    use kinesis_consumer::api::KinesisApi;
    let (client, stream) = new_stream("fp-observed", 1).await;
    let observed = Observed::new(client.clone());
    let sequence =
        KinesisApi::put_record(&observed, &stream, "k", bytes::Bytes::from_static(b"through")).await.expect("put");
    assert_eq!(observed.total(), 0, "no error counted");
    let records = read_all_records(&client, &stream).await;
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].data().as_ref(), records[0].sequence_number()), (&b"through"[..], sequence.as_str()));
}
