//! The failure policy (issue 14) against the in-process fake, on tokio's paused clock: retries of one shard while the
//! others go on, skip, dead letters, stop, and what is checkpointed meanwhile. The Kinesis dead-letter destination
//! is tested against kinesalite in the `kc-integration` package (tests/dead_letter.rs).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kc_core::fake::FakeKinesis;
use kc_core::{
    Batch, Checkpoint, CheckpointStore, Consumer, ConsumerBuilder, DeadLetter, DeadLetterError, ErrorKind,
    FailedRecord, FailurePolicy, Group, InitialPosition, MemoryStore, Outcome, Record, SequenceNumber, ShardKey,
};
use kc_test_support::fake::put_to_shard;
use kc_test_support::{Seen, Wait};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const STREAM: &str = "s";
const APP: &str = "app";
const POISON: &str = "poison";

fn builder(fake: &FakeKinesis, store: &MemoryStore, policy: FailurePolicy) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .app_name(APP)
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(100)
        .on_handler_error(policy)
}

/// What the handler saw, and every attempt at the poison record (when it started).
#[derive(Clone, Default)]
struct Log {
    seen: Seen,
    poison_attempts: Arc<Mutex<Vec<Instant>>>,
}

impl Log {
    fn attempts(&self) -> Vec<Instant> {
        self.poison_attempts.lock().expect("lock").clone()
    }
}

/// Scans in a task with a handler that fails on every record whose data is [`POISON`] and records the others.
fn spawn_failing(consumer: Consumer, log: &Log) -> JoinHandle<Result<(), kc_core::Error>> {
    let log = log.clone();
    tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let log = log.clone();
                async move {
                    if r.data() == POISON.as_bytes() {
                        log.poison_attempts.lock().expect("lock").push(Instant::now());
                        return Err(std::io::Error::other("poisoned"));
                    }
                    log.seen.push(&r);
                    Ok(Outcome::Checkpoint)
                }
            })
            .await
    })
}

async fn checkpoint_of(store: &MemoryStore, shard: &str) -> Option<Checkpoint> {
    store.get(&ShardKey::new(APP, STREAM, shard)).await.expect("get")
}

fn at(sequence: &str) -> Checkpoint {
    Checkpoint::at(SequenceNumber::parse(sequence).expect("sequence"))
}

/// Puts `before` records, the poison, then `after` records on `shard`; returns the poison's sequence number and the
/// one before it.
fn put_poisoned(fake: &FakeKinesis, shard: &str, before: usize, after: usize) -> (String, String) {
    put_to_shard(fake, STREAM, shard, "before", before);
    let before_poison = fake.put_to_shard(STREAM, shard, "k", "marker");
    let poison = fake.put_to_shard(STREAM, shard, "k", POISON);
    put_to_shard(fake, STREAM, shard, "after", after);
    (poison, before_poison)
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_holds_its_shard_only_then_is_skipped_and_not_delivered_again() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 4);
    let shards = fake.shard_ids(STREAM);
    let (poison, _) = put_poisoned(&fake, &shards[0], 5, 5);
    for shard in &shards[1..] {
        put_to_shard(&fake, STREAM, shard, shard, 10);
    }
    let store = MemoryStore::new();
    // 5 attempts, 10 s apart (jitter: 5 to 10 s): the retries last at least 20 s.
    let policy = FailurePolicy::skip().max_attempts(5).retry_backoff(Duration::from_secs(10), Duration::from_secs(10));
    let consumer = builder(&fake, &store, policy).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("the first attempt", || !log.attempts().is_empty()).await;
    // While the poison shard retries, the other shards take new records.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for shard in &shards[1..] {
        put_to_shard(&fake, STREAM, shard, &format!("late-{shard}-"), 5);
    }
    Wait::PAUSED.expect("the other shards' records", || log.seen.len() >= 5 + 1 + 3 * 15).await;
    let others_done = Instant::now();
    assert!(log.attempts().len() < 5, "the other shards did not wait for the retries");
    Wait::PAUSED.expect("the shard after the poison", || log.seen.len() >= 5 + 1 + 3 * 15 + 5).await;
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 5, "max_attempts");
    assert!(others_done < attempts[4], "the others went on during the retries");
    for pair in attempts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_secs(5) && gap <= Duration::from_secs(11), "backoff {gap:?}");
    }
    // The poison's shard held: nothing after the poison was handled before its last attempt.
    let after: Vec<_> = log.seen.all().into_iter().filter(|r| r.data.starts_with("after")).collect();
    assert_eq!(after.len(), 5);
    assert!(after.iter().all(|r| r.at >= attempts[4]), "records after the poison waited for its fate");
    token.cancel();
    task.await.expect("task").expect("a skipped record does not stop the scan");
    let last = checkpoint_of(&store, &shards[0]).await.expect("checkpointed");
    assert!(last > at(&poison), "checkpointed past the skipped record: {last:?}");

    // A restart does not deliver it again.
    fake.put_to_shard(STREAM, &shards[0], "k", "new");
    let consumer = builder(&fake, &store, FailurePolicy::stop()).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("the new record", || log.seen.data().contains(&"new".to_owned())).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("second run");
    assert!(log.attempts().is_empty(), "the skipped record came again");
    assert_eq!(log.seen.data(), ["new"]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_succeeds_keeps_the_order_and_checkpoints_normally() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    put_to_shard(&fake, STREAM, &shard, "r", 20);
    let store = MemoryStore::new();
    let consumer =
        builder(&fake, &store, FailurePolicy::stop().max_attempts(4)).max_records(7).build().await.expect("build");
    let token = consumer.shutdown_token();
    let seen = Seen::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let (s, f) = (seen.clone(), Arc::clone(&failures));
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let (s, f) = (s.clone(), Arc::clone(&f));
                async move {
                    // r9 fails three times, then is handled.
                    if r.data() == "r9".as_bytes() && f.fetch_add(1, Ordering::SeqCst) < 3 {
                        return Err(std::io::Error::other("not yet"));
                    }
                    s.push(&r);
                    Ok(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED.expect("every record", || seen.len() >= 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(failures.load(Ordering::SeqCst), 4, "three failures and the success");
    let produced: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    seen.assert_exactly_once(&produced);
    seen.assert_shard_order();
}

#[tokio::test(start_paused = true)]
async fn stop_after_its_attempts_returns_the_handlers_error_and_checkpoints_up_to_the_record_before() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (_, before) = put_poisoned(&fake, &shard, 3, 3);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::stop().max_attempts(3)).build().await.expect("build");
    let log = Log::default();
    let err = spawn_failing(consumer, &log).await.expect("task").expect_err("stopped");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.shard(), Some(shard.as_str()));
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert_eq!(err.into_handler_error().expect("the handler's error").to_string(), "poisoned");
    assert_eq!(log.attempts().len(), 3);
    assert_eq!(checkpoint_of(&store, &shard).await, Some(at(&before)));
    assert!(log.seen.data().iter().all(|d| !d.starts_with("after")));
}

#[tokio::test(start_paused = true)]
async fn the_default_policy_stops_at_the_first_error() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (_, before) = put_poisoned(&fake, &shard, 3, 3);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::default()).build().await.expect("build");
    let log = Log::default();
    let err = spawn_failing(consumer, &log).await.expect("task").expect_err("stopped");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(err.to_string(), format!("stream \"{STREAM}\", shard \"{shard}\": the handler returned an error"));
    assert_eq!(log.attempts().len(), 1);
    assert_eq!(checkpoint_of(&store, &shard).await, Some(at(&before)));
}

/// A dead-letter destination in memory that fails while `down` (transiently, or for good if `permanent`), and
/// checks at each call that the consumer's store has nothing past the record.
#[derive(Clone, Default)]
struct Letters {
    accepted: Arc<Mutex<Vec<FailedRecord>>>,
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    permanent: Arc<AtomicBool>,
    store: Option<MemoryStore>,
}

#[async_trait]
impl DeadLetter for Letters {
    async fn send(&self, failed: &FailedRecord) -> Result<(), DeadLetterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(store) = &self.store {
            let key = ShardKey::new(APP, failed.stream(), failed.shard_id());
            let saved = store.get(&key).await.map_err(DeadLetterError::transient)?;
            let position = Checkpoint::At {
                sequence: failed.sequence_number().clone(),
                sub_sequence: failed.sub_sequence_number(),
            };
            assert!(saved.is_none_or(|c| c < position), "checkpointed past an unsettled record");
        }
        if self.down.load(Ordering::SeqCst) {
            let e = std::io::Error::other("destination down");
            return Err(if self.permanent.load(Ordering::SeqCst) {
                DeadLetterError::permanent(e)
            } else {
                DeadLetterError::transient(e)
            });
        }
        self.accepted.lock().expect("lock").push(failed.clone());
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_is_checkpointed_past_only_once_accepted_and_a_stop_meanwhile_leaves_it_to_the_restart() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let shards = fake.shard_ids(STREAM);
    let (poison, before) = put_poisoned(&fake, &shards[0], 3, 3);
    put_to_shard(&fake, STREAM, &shards[1], "other", 10);
    let store = MemoryStore::new();
    let letters = Letters { store: Some(store.clone()), ..Letters::default() };
    letters.down.store(true, Ordering::SeqCst);
    let policy = FailurePolicy::dead_letter(letters.clone()).max_attempts(2);
    let consumer = builder(&fake, &store, policy.clone()).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    // The destination is down for a minute: it is retried (with the policy's backoff, 100 ms to 10 s).
    Wait::PAUSED
        .expect("the other shard", || log.seen.data().iter().filter(|d| d.starts_with("other")).count() == 10)
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(letters.calls.load(Ordering::SeqCst) >= 5, "retried: {}", letters.calls.load(Ordering::SeqCst));
    assert_eq!(log.attempts().len(), 2);
    // A stop ends the retries at once; the record is not checkpointed.
    let stopping = Instant::now();
    token.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the stop ended the retries");
    stopped.expect("task").expect("a stop while the destination is down is a clean stop");
    assert!(stopping.elapsed() < Duration::from_millis(10), "stopped at once: {:?}", stopping.elapsed());
    assert_eq!(checkpoint_of(&store, &shards[0]).await, Some(at(&before)));
    assert!(letters.accepted.lock().expect("lock").is_empty());

    // After a restart with the destination up, the record fails again and is dead-lettered; the shard goes on.
    letters.down.store(false, Ordering::SeqCst);
    let consumer = builder(&fake, &store, policy).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("the records after the poison", || log.seen.len() >= 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(log.seen.data(), ["after0", "after1", "after2"]);
    let accepted = letters.accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 1);
    let letter = &accepted[0];
    assert_eq!(letter.stream(), STREAM);
    assert_eq!(letter.data().as_ref(), POISON.as_bytes());
    assert_eq!(letter.partition_key(), "k");
    assert_eq!(letter.shard_id(), shards[0]);
    assert_eq!(letter.sequence_number().to_string(), poison);
    assert!(letter.approximate_arrival_timestamp().is_some());
    assert_eq!(letter.error(), "poisoned");
    assert_eq!(letter.attempts(), 2);
    assert!(letter.first_failure() <= SystemTime::now());
    assert!(checkpoint_of(&store, &shards[0]).await.expect("checkpoint") > at(&poison));
}

#[tokio::test(start_paused = true)]
async fn a_destination_that_refuses_for_good_stops_the_scan_before_the_record() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (_, before) = put_poisoned(&fake, &shard, 2, 2);
    let store = MemoryStore::new();
    let letters = Letters::default();
    letters.down.store(true, Ordering::SeqCst);
    letters.permanent.store(true, Ordering::SeqCst);
    let consumer = builder(&fake, &store, FailurePolicy::dead_letter(letters.clone())).build().await.expect("build");
    let log = Log::default();
    let err = spawn_failing(consumer, &log).await.expect("task").expect_err("stopped");
    assert_eq!(err.kind(), ErrorKind::DeadLetter);
    assert_eq!(err.shard(), Some(shard.as_str()));
    assert!(err.to_string().contains("the dead-letter destination refused record"), "{err}");
    assert_eq!(letters.calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(checkpoint_of(&store, &shard).await, Some(at(&before)));
}

#[tokio::test(start_paused = true)]
async fn a_record_older_than_max_record_age_is_not_retried() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, _) = put_poisoned(&fake, &shard, 1, 1);
    // The fake stamps arrival with the wall clock, which the paused clock does not hold.
    std::thread::sleep(Duration::from_millis(30));
    let store = MemoryStore::new();
    let letters = Letters::default();
    let policy = FailurePolicy::dead_letter(letters.clone()).max_attempts(10).max_record_age(Duration::from_millis(20));
    let consumer = builder(&fake, &store, policy).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("the record after", || log.seen.data().contains(&"after0".to_owned())).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(log.attempts().len(), 1, "too old to retry: straight to the destination");
    let accepted = letters.accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].sequence_number().to_string(), poison);
    assert_eq!(accepted[0].attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_is_retried_then_skipped_whole() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, _) = put_poisoned(&fake, &shard, 2, 2); // one batch of 6
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::skip().max_attempts(3)).build().await.expect("build");
    let token = consumer.shutdown_token();
    let calls = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let (c, h) = (Arc::clone(&calls), Arc::clone(&handled));
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let (c, h) = (Arc::clone(&c), Arc::clone(&h));
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if batch.records().iter().any(|r| r.data() == POISON.as_bytes()) {
                        return Err(std::io::Error::other("poisoned batch"));
                    }
                    let data = batch.records().iter().map(|r| String::from_utf8_lossy(r.data()).into_owned());
                    h.lock().expect("lock").extend(data);
                    Ok(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED.expect("three attempts", || calls.load(Ordering::SeqCst) >= 3).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    fake.put_to_shard(STREAM, &shard, "k", "next");
    Wait::PAUSED.expect("the next batch", || !handled.lock().expect("lock").is_empty()).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(calls.load(Ordering::SeqCst), 4, "three attempts at the poisoned batch, one at the next");
    assert_eq!(*handled.lock().expect("lock"), ["next"]);
    assert!(checkpoint_of(&store, &shard).await.expect("checkpoint") > at(&poison));
}

#[tokio::test(start_paused = true)]
async fn a_group_worker_retrying_keeps_its_lease_and_a_lost_lease_ends_the_retries_at_once() {
    const LEASE: Duration = Duration::from_secs(10);
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    put_poisoned(&fake, &shard, 2, 2);
    let table = MemoryLeaseTable::new();
    // Retries for an hour, 1 s apart at most.
    let policy = FailurePolicy::stop()
        .max_record_age(Duration::from_secs(3600))
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(1));
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .on_handler_error(policy)
        .group(Group::new("g", table.clone()).worker_id("w").lease_duration(LEASE))
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("retries", || log.attempts().len() >= 3).await;
    // Retrying for three lease durations: the lease stays this worker's.
    tokio::time::sleep(LEASE * 3).await;
    let scope = LeaseScope::new("g", STREAM);
    let lease = table.get(&scope, &shard).await.expect("get").expect("lease");
    assert_eq!(lease.owner.as_deref(), Some("w"), "renewed while retrying");
    let saved = lease.checkpoint.clone();
    // Another worker takes it: the retries end at the next renewal (a third of the lease duration).
    let taken = table.take(&scope, &shard, lease.counter, "intruder").await.expect("take");
    let taken_at = Instant::now();
    let renewer = tokio::spawn({
        let (table, scope, shard) = (table.clone(), scope.clone(), shard.clone());
        let mut counter = taken.counter;
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                counter = table.renew(&scope, &shard, "intruder", counter).await.expect("intruder renews");
            }
        }
    });
    tokio::time::sleep(LEASE * 2).await;
    renewer.abort();
    let late: Vec<Instant> = log.attempts().into_iter().filter(|t| *t > taken_at + LEASE / 3).collect();
    assert!(late.is_empty(), "attempts after the loss was noticed: {late:?}");
    assert!(log.seen.data().iter().all(|d| !d.starts_with("after")), "nothing after the poison was handled");
    let now = table.get(&scope, &shard).await.expect("get").expect("lease");
    assert_eq!(now.owner.as_deref(), Some("intruder"));
    assert_eq!(now.checkpoint, saved, "the old owner wrote nothing after the take");
    token.cancel();
    task.await.expect("task").expect("a lost lease is not an error of the scan");
}

#[tokio::test(start_paused = true)]
async fn a_skipped_last_record_is_checkpointed_itself() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, _) = put_poisoned(&fake, &shard, 2, 0);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::skip()).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("the poison", || !log.attempts().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(log.attempts().len(), 1, "no retries without a bound");
    assert_eq!(checkpoint_of(&store, &shard).await, Some(at(&poison)), "the skipped record is settled: checkpointed");
}

#[tokio::test(start_paused = true)]
async fn the_kinesis_destination_puts_the_record_with_its_key_and_retries_throttling() {
    use kc_core::api::{ApiErrorKind, KinesisApi, StartingPosition};
    use kc_core::fake::Op;
    use kc_core::KinesisDeadLetter;
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    fake.create_stream("dlq", 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, _) = put_poisoned(&fake, &shard, 1, 1);
    fake.inject(Op::PutRecord, ApiErrorKind::Throttled, 3);
    let store = MemoryStore::new();
    let policy = FailurePolicy::dead_letter(KinesisDeadLetter::new(fake.clone(), "dlq"));
    let consumer = builder(&fake, &store, policy).build().await.expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("the record after", || log.seen.data().contains(&"after0".to_owned())).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(fake.calls(Op::PutRecord), 4, "three throttled, then put");
    let dlq_shard = fake.shard_ids("dlq").remove(0);
    let it = fake.get_shard_iterator("dlq", &dlq_shard, &StartingPosition::TrimHorizon).await.expect("iterator");
    let letters = fake.get_records(&it, 10).await.expect("records").records;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].partition_key, "k");
    let json = String::from_utf8(letters[0].data.to_vec()).expect("text");
    for part in [
        format!("\"sequence_number\":\"{poison}\""),
        "\"attempts\":1".to_owned(),
        "\"error\":\"poisoned\"".to_owned(),
        format!("\"shard\":\"{shard}\""),
        "\"data\":\"cG9pc29u\"".to_owned(), // base64 of "poison"
    ] {
        assert!(json.contains(&part), "{part} not in {json}");
    }

    // A missing dead-letter stream is permanent: the scan stops, the record is not checkpointed.
    let store = MemoryStore::new();
    let policy = FailurePolicy::dead_letter(KinesisDeadLetter::new(fake.clone(), "no-such-stream"));
    let consumer = builder(&fake, &store, policy).build().await.expect("build");
    let err = spawn_failing(consumer, &Log::default()).await.expect("task").expect_err("stopped");
    assert_eq!(err.kind(), ErrorKind::DeadLetter);
    let text = error_chain(&err);
    assert!(text.contains("stream no-such-stream"), "{text}");
    assert!(checkpoint_of(&store, &shard).await.expect("checkpoint") < at(&poison));
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Scans in a task with a handler that takes `slow` on records whose data is [`POISON`] (recorded as attempts).
fn spawn_slow(consumer: Consumer, log: &Log, slow: Duration) -> JoinHandle<Result<(), kc_core::Error>> {
    let log = log.clone();
    tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let log = log.clone();
                async move {
                    if r.data() == POISON.as_bytes() {
                        log.poison_attempts.lock().expect("lock").push(Instant::now());
                        tokio::time::sleep(slow).await;
                    }
                    log.seen.push(&r);
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    })
}

#[tokio::test(start_paused = true)]
async fn a_stalled_handler_is_only_logged_by_default_and_cancelled_then_skipped_when_asked() {
    use kc_core::HandlerTimeout;
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, _) = put_poisoned(&fake, &shard, 1, 1);

    // Logged: the call runs to its end (60 s) and the record is handled once.
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::stop())
        .handler_timeout(HandlerTimeout::log_after(Duration::from_secs(5)))
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let started = Instant::now();
    let task = spawn_slow(consumer, &log, Duration::from_secs(60));
    Wait::PAUSED.expect("the record after", || log.seen.data().contains(&"after0".to_owned())).await;
    assert!(started.elapsed() >= Duration::from_secs(60), "not cut short");
    token.cancel();
    task.await.expect("task").expect("scan");
    assert_eq!(log.attempts().len(), 1);
    assert_eq!(log.seen.data(), ["before0", "marker", POISON, "after0"]);

    // Cancelled after 5 s: a failure, retried once (cancelled again), then skipped.
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::skip().max_attempts(2))
        .handler_timeout(HandlerTimeout::cancel_after(Duration::from_secs(5)))
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_slow(consumer, &log, Duration::from_secs(3600));
    Wait::PAUSED.expect("the record after", || log.seen.data().contains(&"after0".to_owned())).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 2, "two attempts, each cancelled");
    assert!(attempts[1] - attempts[0] >= Duration::from_secs(5), "the first ran its 5 s");
    assert_eq!(log.seen.data(), ["before0", "marker", "after0"], "the poison never returned");
    assert!(checkpoint_of(&store, &shard).await.expect("checkpoint") > at(&poison));

    // Cancelled under the default policy: the scan stops with a handler error.
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::stop())
        .handler_timeout(HandlerTimeout::cancel_after(Duration::from_secs(5)))
        .build()
        .await
        .expect("build");
    let err = spawn_slow(consumer, &Log::default(), Duration::from_secs(3600)).await.expect("task").expect_err("stop");
    assert_eq!(err.kind(), ErrorKind::Handler);
    let source = err.into_handler_error().expect("source").to_string();
    assert!(source.contains("did not return within 5s"), "{source}");
}

/// Scans with a batch handler that handles a batch up to the poison: with `partial`, it answers
/// `BatchFailure::at(index of the poison)` after recording the records before it; without, it fails the whole batch
/// (recording nothing). Returns the handled data (in order) and how many calls had the poison.
fn spawn_batches(consumer: Consumer, partial: bool) -> (Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>, Scan) {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let poisoned = Arc::new(AtomicUsize::new(0));
    let (h, p) = (Arc::clone(&handled), Arc::clone(&poisoned));
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: Batch| {
                let (h, p) = (Arc::clone(&h), Arc::clone(&p));
                async move {
                    let data: Vec<String> =
                        batch.records().iter().map(|r| String::from_utf8_lossy(r.data()).into_owned()).collect();
                    match data.iter().position(|d| d == POISON) {
                        None => {
                            h.lock().expect("lock").extend(data);
                            Ok(Outcome::Checkpoint)
                        }
                        Some(i) => {
                            p.fetch_add(1, Ordering::SeqCst);
                            if partial {
                                h.lock().expect("lock").extend(data[..i].iter().cloned());
                                Err(kc_core::BatchFailure::at(i, "poisoned"))
                            } else {
                                Err(kc_core::BatchFailure::at(usize::MAX, "poisoned"))
                                // a whole-batch failure
                            }
                        }
                    }
                }
            })
            .await
    });
    (handled, poisoned, task)
}

/// A scan running in a task of its own.
type Scan = JoinHandle<Result<(), kc_core::Error>>;

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_response_checkpoints_the_records_before_and_retries_from_the_failed_one() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, before) = put_poisoned(&fake, &shard, 4, 5); // one batch: before0..3, marker, poison, after0..4
    let store = MemoryStore::new();
    let letters = Letters::default();
    let policy = FailurePolicy::dead_letter(letters.clone()).max_attempts(3);
    let consumer = builder(&fake, &store, policy).build().await.expect("build");
    let token = consumer.shutdown_token();
    let (handled, poisoned, task) = spawn_batches(consumer, true);
    Wait::PAUSED.expect("three attempts", || poisoned.load(Ordering::SeqCst) >= 3).await;
    // During the retries the records before the poison are handled once, and checkpointed at the stop.
    tokio::time::sleep(Duration::from_secs(60)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let mut want = numbered("before", 0..4);
    want.push("marker".to_owned());
    assert_eq!(*handled.lock().expect("lock"), want, "the records before the poison, once");
    assert_eq!(poisoned.load(Ordering::SeqCst), 3);
    // Without bisection, what the last call had from the poison on went to the destination: the poison and after.
    let sent: Vec<String> =
        letters.accepted.lock().expect("lock").iter().map(|l| String::from_utf8_lossy(l.data()).into_owned()).collect();
    let mut from_poison = vec![POISON.to_owned()];
    from_poison.extend(numbered("after", 0..5));
    assert_eq!(sent, from_poison);
    assert!(letters.accepted.lock().expect("lock").iter().all(|l| l.attempts() == 3));
    let saved = checkpoint_of(&store, &shard).await.expect("checkpoint");
    assert!(saved > at(&poison), "settled: {saved:?}");
    assert!(saved > at(&before));
}

#[tokio::test(start_paused = true)]
async fn under_the_default_policy_a_partial_batch_response_checkpoints_the_records_before_it_then_stops() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let (poison, before) = put_poisoned(&fake, &shard, 4, 5); // one batch: before0..3, marker, poison, after0..4
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store, FailurePolicy::default()).build().await.expect("build");
    let (handled, poisoned, task) = spawn_batches(consumer, true);
    let err = task.await.expect("task").expect_err("the default policy stops");
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!(poisoned.load(Ordering::SeqCst), 1, "no retries");
    let mut want = numbered("before", 0..4);
    want.push("marker".to_owned());
    assert_eq!(*handled.lock().expect("lock"), want);
    let saved = checkpoint_of(&store, &shard).await;
    assert_eq!(saved, Some(at(&before)), "the records before the failed one are checkpointed, the poison is not");
    assert!(saved < Some(at(&poison)));
    // A restart delivers the poison again, first.
    let consumer = builder(&fake, &store, FailurePolicy::default()).build().await.expect("build");
    let (handled, poisoned, task) = spawn_batches(consumer, true);
    task.await.expect("task").expect_err("stops again");
    assert!(handled.lock().expect("lock").is_empty(), "nothing before the poison again");
    assert_eq!(poisoned.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn bisection_brings_the_failing_record_alone_to_the_policy_and_every_other_record_is_handled_once() {
    for partial in [false, true] {
        let fake = FakeKinesis::new();
        fake.create_stream(STREAM, 1);
        let shard = fake.shard_ids(STREAM).remove(0);
        put_poisoned(&fake, &shard, 10, 9); // 21 records in one batch, the poison 12th
        let store = MemoryStore::new();
        let letters = Letters::default();
        let policy = FailurePolicy::dead_letter(letters.clone()).max_attempts(2).bisect_batches();
        let consumer = builder(&fake, &store, policy).build().await.expect("build");
        let token = consumer.shutdown_token();
        let (handled, _, task) = spawn_batches(consumer, partial);
        Wait::PAUSED.expect("every other record", || handled.lock().expect("lock").len() >= 20).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        token.cancel();
        task.await.expect("task").expect("scan");
        let mut want = numbered("before", 0..10);
        want.push("marker".to_owned());
        want.extend(numbered("after", 0..9));
        assert_eq!(*handled.lock().expect("lock"), want, "partial {partial}: every other record once, in order");
        let sent = letters.accepted.lock().expect("lock").clone();
        assert_eq!(sent.len(), 1, "partial {partial}: the poison alone");
        assert_eq!(sent[0].data().as_ref(), POISON.as_bytes());
        assert_eq!(sent[0].attempts(), 2, "the policy's attempts, for the record alone");
    }
}

#[tokio::test(start_paused = true)]
async fn with_enhanced_fan_out_a_poison_record_is_retried_then_dead_lettered_and_its_shard_goes_on() {
    // 100 to 200 s between attempts: longer than a subscription's 30 s idle limit and than its 5 minutes.
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let shards = fake.shard_ids(STREAM);
    let (poison, _) = put_poisoned(&fake, &shards[0], 3, 3);
    put_to_shard(&fake, STREAM, &shards[1], "other", 5);
    let store = MemoryStore::new();
    let letters = Letters::default();
    let policy = FailurePolicy::dead_letter(letters.clone())
        .max_attempts(3)
        .retry_backoff(Duration::from_secs(200), Duration::from_secs(200));
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .app_name(APP)
        .initial_position(InitialPosition::TrimHorizon)
        .fan_out("efo")
        .on_handler_error(policy)
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let log = Log::default();
    let task = spawn_failing(consumer, &log);
    Wait::PAUSED.expect("every other record", || log.seen.len() >= 3 + 1 + 3 + 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    token.cancel();
    task.await.expect("task").expect("scan");
    assert!(!fake.subscriptions().is_empty(), "read with SubscribeToShard");
    assert_eq!(log.attempts().len(), 3);
    let accepted = letters.accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].sequence_number().to_string(), poison);
    let after: Vec<_> = log.seen.all().into_iter().filter(|r| r.data.starts_with("after")).collect();
    assert!(after.iter().all(|r| r.at >= log.attempts()[2]), "the shard held during the retries");
    assert!(checkpoint_of(&store, &shards[0]).await.expect("checkpoint") > at(&poison));
}
