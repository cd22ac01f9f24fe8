//! What the scan tests against the in-process fake share (`scan_fake.rs`, `fan_out_fake.rs`): a collecting handler,
//! waiting in paused time, numbered records, and the exactly-once and per-key order checks.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, Outcome, Record};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) const STREAM: &str = "s";

/// What a handler saw: (shard, partition key, data, sub-sequence number) in handling order.
pub(crate) type SeenRecord = (String, String, String, Option<u64>);

/// The records a handler saw, each with the (paused) time it was handled.
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<Mutex<Vec<(SeenRecord, Instant)>>>);

impl Seen {
    pub(crate) fn push(&self, r: &Record) {
        let data = String::from_utf8_lossy(r.data()).into_owned();
        let rec = (r.shard_id().to_owned(), r.partition_key().to_owned(), data, r.sub_sequence_number());
        self.0.lock().expect("lock").push((rec, Instant::now()));
    }
    pub(crate) fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }
    pub(crate) fn data(&self) -> Vec<String> {
        self.0.lock().expect("lock").iter().map(|((_, _, d, _), _)| d.clone()).collect()
    }
    pub(crate) fn all(&self) -> Vec<SeenRecord> {
        self.0.lock().expect("lock").iter().map(|(r, _)| r.clone()).collect()
    }
    /// When each record was handled, in handling order.
    pub(crate) fn times(&self) -> Vec<Instant> {
        self.0.lock().expect("lock").iter().map(|(_, at)| *at).collect()
    }
}

/// Waits until `done` holds, checking every 100 ms of (paused) time; panics after 10 minutes.
pub(crate) async fn wait_for(mut done: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached in 10 minutes of (paused) time");
}

/// A running scan with a collecting handler: what it saw, its shutdown token and its task.
pub(crate) struct Collecting {
    pub(crate) seen: Seen,
    pub(crate) token: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), kc_core::Error>>,
}

/// Spawns `consumer.scan` with a handler that sleeps `pace` (if not zero), records the record in [`Seen`] and
/// answers `outcome(record)`.
pub(crate) fn spawn_collecting(consumer: Consumer, pace: Duration, outcome: fn(&Record) -> Outcome) -> Collecting {
    let seen = Seen::default();
    let s = seen.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let s = s.clone();
                async move {
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                    s.push(&r);
                    Ok::<_, std::io::Error>(outcome(&r))
                }
            })
            .await
    });
    Collecting { seen, token, task }
}

/// Every record checkpointed.
pub(crate) fn checkpoint(_: &Record) -> Outcome {
    Outcome::Checkpoint
}

/// Runs a [`spawn_collecting`] scan (checkpointing every record) until `want` records were seen, lets anything
/// extra (a duplicate) arrive for `settle`, then cancels; returns what was seen and the scan's result.
pub(crate) async fn scan_until_paced(
    consumer: Consumer,
    want: usize,
    pace: Duration,
    settle: Duration,
) -> (Seen, Result<(), kc_core::Error>) {
    let Collecting { seen, token, task } = spawn_collecting(consumer, pace, checkpoint);
    wait_for(|| seen.len() >= want).await;
    tokio::time::sleep(settle).await;
    token.cancel();
    let result = task.await.expect("scan task");
    (seen, result)
}

/// Puts `{prefix}{i}` for i in `range` on [`STREAM`], with partition key `key-{i % 10}`; returns the data.
pub(crate) fn put_many(fake: &FakeKinesis, range: std::ops::Range<usize>, prefix: &str) -> Vec<String> {
    range
        .map(|i| {
            let data = format!("{prefix}{i}");
            fake.put(STREAM, &format!("key-{}", i % 10), data.clone());
            data
        })
        .collect()
}

/// Every record of `produced` was handled, once.
pub(crate) fn assert_exactly_once(seen: &Seen, produced: &[String]) {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in seen.data() {
        *counts.entry(d).or_default() += 1;
    }
    let missing: Vec<_> = produced.iter().filter(|p| !counts.contains_key(*p)).collect();
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "lost {} records, e.g. {:?}", missing.len(), missing.first());
    assert!(dupes.is_empty(), "duplicates: {dupes:?}");
    assert_eq!(seen.len(), produced.len());
}

/// For each partition key, the records arrive in the order they were produced (`prefix{i}` with increasing i).
pub(crate) fn assert_key_order(seen: &Seen) {
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (_, key, data, _) in seen.all() {
        let i: usize = data.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().expect("numbered data");
        if let Some(prev) = last.insert(key.clone(), i) {
            assert!(prev < i, "key {key}: record {i} after {prev}");
        }
    }
}
