//! Per-key parallelism inside a shard ([`max_in_flight_per_shard`](crate::ConsumerBuilder::max_in_flight_per_shard)):
//! a batch's records go to up to `n` handler calls at once, never two of the same partition key, so that each key's
//! records are handled in their order (a KPL user record by its own key).
//!
//! - Dispatch: records start in the shard's order. A record whose key has a call running (or records waiting) waits
//!   behind them in its key's queue; the others go by. When a call ends, the next record of its key is ready, and
//!   ready records start before records further on.
//! - Progress: the checkpoint is the position of the last record of the longest run of finished records from the
//!   batch's start (sub-sequence aware, through [`Progress`] in order), so it never passes a record not finished: a
//!   crash delivers again the unfinished records and those after them, and skips none.
//! - Failures: a failed call goes to the failure policy inside its own slot, so a record being retried holds its key
//!   (and one of the `n` slots), not the shard. A verdict that stops the scan (the `stop` policy, a dead-letter
//!   destination failing for good) or a stop of the shard (a stop, a lost lease) starts nothing more; the calls
//!   running are waited for, what finished in order is checkpointed, then the error (or the stop) is returned.
//! - Batches: the next batch starts when every record of this one is settled (with prefetch it is already fetched),
//!   so parallelism is within a batch: at most one GetRecords batch of records (10,000) is in memory per shard.
//!
//! Keys are compared by a 64-bit hash: two keys with the same hash are only kept apart less (handled one after the
//! other), never mixed up in their order.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use futures_util::stream::{FuturesUnordered, StreamExt};
use kc_checkpoint::Checkpoint;

use crate::deliver::{Delivered, PerRecord, Progress};
use crate::error::Error;
use crate::failure::Settled;
use crate::handler::{Outcome, RecordHandler};
use crate::record::Record;
use crate::shard::ShardCx;

fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// Delivers `records` with up to `per_record.in_flight` handler calls at once, one per key.
pub(crate) async fn deliver<H: RecordHandler>(
    per_record: &PerRecord<H>,
    shard: &ShardCx<'_>,
    records: Vec<Record>,
    progress: &mut Progress,
) -> Result<Delivered, Error> {
    let n = per_record.in_flight.max(1);
    let total = records.len();
    let keep = per_record.failure.keeps_records();
    let keys: Vec<u64> = records.iter().map(|r| key_hash(r.partition_key())).collect();
    let positions: Vec<Checkpoint> = records.iter().map(Record::checkpoint).collect();
    let mut records: Vec<Option<Record>> = records.into_iter().map(Some).collect();
    let mut finished: Vec<Option<Outcome>> = vec![None; total];
    // A key is busy while it is in this map: its value holds the records waiting for it, in order.
    let mut busy: HashMap<u64, VecDeque<usize>> = HashMap::new();
    // Records whose key became free for them, in the order that happened.
    let mut ready: VecDeque<usize> = VecDeque::new();
    // The next record not yet started or queued, and the first one not yet given to `progress`.
    let (mut next, mut low) = (0, 0);
    let mut running = FuturesUnordered::new();
    let mut failed: Option<Error> = None;
    let mut cancelled = false;

    loop {
        // Start what may start, unless stopping.
        while failed.is_none() && !cancelled && running.len() < n {
            if shard.cancel.is_cancelled() {
                cancelled = true;
                break;
            }
            let i = match ready.pop_front() {
                Some(i) => i,
                None if next < total => {
                    let i = next;
                    next += 1;
                    match busy.entry(keys[i]) {
                        Entry::Occupied(mut waiting) => {
                            waiting.get_mut().push_back(i);
                            continue;
                        }
                        Entry::Vacant(free) => {
                            free.insert(VecDeque::new());
                            i
                        }
                    }
                }
                None => break,
            };
            let Some(record) = records[i].take() else { continue }; // not reached: each record starts once
            let position = &positions[i];
            running.push(async move {
                let kept = keep.then(|| record.clone());
                let settled = match per_record.call(shard, record, position).await {
                    Ok(outcome) => Ok(Settled::Handled(outcome)),
                    Err(e) => Box::pin(per_record.settle_one(shard, kept.as_slice(), position, e)).await,
                };
                (i, settled)
            });
        }
        let Some((i, settled)) = running.next().await else {
            break; // nothing running, nothing more to start
        };
        match settled {
            Ok(Settled::Handled(outcome)) => finished[i] = Some(outcome),
            Ok(Settled::Given) => finished[i] = Some(Outcome::Checkpoint),
            Ok(Settled::Cancelled) => cancelled = true,
            Err(e) => {
                if failed.is_none() {
                    failed = Some(e);
                }
            }
        }
        // The key's next record is ready; or the key is free.
        if let Entry::Occupied(mut waiting) = busy.entry(keys[i]) {
            match waiting.get_mut().pop_front() {
                Some(j) => ready.push_back(j),
                None => {
                    waiting.remove();
                }
            }
        }
        while low < total {
            let Some(outcome) = finished[low] else { break };
            progress.handled(positions[low].clone(), outcome);
            low += 1;
        }
    }
    match (failed, cancelled) {
        (Some(e), _) => Err(e),
        (None, true) => Ok(Delivered::Cancelled),
        (None, false) => Ok(Delivered::All),
    }
}
