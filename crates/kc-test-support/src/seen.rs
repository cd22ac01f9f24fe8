//! What a handler saw, and the checks over it: every record once, per-key and per-shard order.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use kc_core::{Checkpoint, Record};
use tokio::time::Instant;

use crate::check::{lock, number, tally};

/// One handled record.
#[derive(Clone, Debug)]
pub struct SeenRecord {
    /// The worker that handled it ([`Seen::for_worker`]; empty otherwise).
    pub worker: String,
    /// The stream it came from, as the consumer was given it (name or ARN).
    pub stream: String,
    /// The ARN of the stream it came from.
    pub stream_arn: String,
    /// The shard it came from.
    pub shard: String,
    /// Its partition key.
    pub key: String,
    /// Its data, as text.
    pub data: String,
    /// Its sub-sequence number (KPL user records).
    pub sub: Option<u64>,
    /// Its position: what checkpointing it stores.
    pub checkpoint: Checkpoint,
    /// When it was handled, on Tokio's clock (virtual time under a paused clock).
    pub at: Instant,
}

/// What handlers saw, in handling order. Clones share the list.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    records: Arc<Mutex<Vec<SeenRecord>>>,
    worker: Arc<str>,
}

impl Seen {
    /// A handle on the same list whose [`push`](Self::push)es are marked as handled by `worker`.
    #[must_use]
    pub fn for_worker(&self, worker: &str) -> Seen {
        Seen { records: Arc::clone(&self.records), worker: worker.into() }
    }

    /// Records `r`, handled now.
    pub fn push(&self, r: &Record) {
        let rec = SeenRecord {
            worker: self.worker.to_string(),
            stream: r.stream().to_owned(),
            stream_arn: r.stream_arn().to_owned(),
            shard: r.shard_id().to_owned(),
            key: r.partition_key().to_owned(),
            data: String::from_utf8_lossy(r.data()).into_owned(),
            sub: r.sub_sequence_number(),
            checkpoint: r.checkpoint(),
            at: Instant::now(),
        };
        self.lock().push(rec);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SeenRecord>> {
        lock(&self.records)
    }

    /// How many were seen (a record seen twice counts twice).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record seen.
    pub fn all(&self) -> Vec<SeenRecord> {
        self.lock().clone()
    }

    /// The data of every record seen.
    pub fn data(&self) -> Vec<String> {
        self.lock().iter().map(|r| r.data.clone()).collect()
    }

    /// When each record was handled, in handling order.
    pub fn times(&self) -> Vec<Instant> {
        self.lock().iter().map(|r| r.at).collect()
    }

    /// How many different records (by data) were seen.
    pub fn distinct(&self) -> usize {
        self.lock().iter().map(|r| r.data.as_str()).collect::<HashSet<_>>().len()
    }

    /// Handlings beyond the first of a record.
    pub fn duplicates(&self) -> usize {
        tally::<String, String>(&[], &self.data()).1
    }

    /// The position of the last record seen of each shard: what its checkpoint should be.
    pub fn last_checkpoints(&self) -> BTreeMap<String, Checkpoint> {
        self.lock().iter().map(|r| (r.shard.clone(), r.checkpoint.clone())).collect()
    }

    /// Asserts every produced record was seen (at least once).
    pub fn assert_all_handled(&self, produced: &[String]) {
        let data: HashSet<String> = self.data().into_iter().collect();
        let missing: Vec<&String> = produced.iter().filter(|p| !data.contains(*p)).collect();
        assert!(missing.is_empty(), "lost {} of {} records, e.g. {:?}", missing.len(), produced.len(), missing.first());
    }

    /// Asserts every produced record was seen exactly once, and nothing else.
    pub fn assert_exactly_once(&self, produced: &[String]) {
        self.assert_all_handled(produced);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for d in self.data() {
            *counts.entry(d).or_default() += 1;
        }
        let dupes: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "{} records handled twice, e.g. {:?}", dupes.len(), dupes.first());
        assert_eq!(self.len(), produced.len(), "unexpected extra records");
    }

    /// Asserts that for each partition key, records (data `{prefix}{i}`) arrived in increasing `i`.
    pub fn assert_key_order(&self) {
        self.assert_order_within("key", |r| &r.key);
    }

    /// Asserts that within each shard, records arrived in the order they were produced.
    pub fn assert_shard_order(&self) {
        self.assert_order_within("shard", |r| &r.shard);
    }

    /// Asserts that records with the same `group` arrived in increasing `i` (data `{prefix}{i}`).
    fn assert_order_within(&self, what: &str, group: impl Fn(&SeenRecord) -> &String) {
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.all() {
            let i = number(&r.data);
            if let Some(prev) = last.insert(group(&r).clone(), i) {
                assert!(
                    prev < i,
                    "{what} {}: record {i} arrived after {prev} (shard {}, worker {:?})",
                    group(&r),
                    r.shard,
                    r.worker
                );
            }
        }
    }
}
