//! Delivery: how a shard's records reach the user's handler (one at a time or one batch at a time), and the
//! [`Progress`] the handler's outcomes make (what to checkpoint, where to resume). A failed handler call goes to the
//! [`FailurePolicy`] (`failure.rs`), which settles the record before the progress moves past it.

use std::future::Future;
use std::sync::Arc;

use kc_checkpoint::Checkpoint;

use crate::error::{BoxError, Error};
use crate::failure::{FailurePolicy, Settled};
use crate::handler::{Batch, BatchFailure, BatchHandler, Outcome, RecordHandler};
use crate::record::{Origin, Record};
use crate::shard::ShardCx;

/// What happened to a batch.
pub(crate) enum Delivered {
    All,
    Cancelled,
}

/// Progress of a shard in this run.
#[derive(Default)]
pub(crate) struct Progress {
    /// The newest checkpoint not yet given to the store, unless it is `last_handled` itself (`pending_is_last`): that
    /// saves cloning a position per record.
    pending: Option<Checkpoint>,
    pending_is_last: bool,
    /// The position of the last handled record: where a refreshed iterator continues.
    last_handled: Option<Checkpoint>,
    /// A record was handled with [`Outcome::SkipCheckpoint`] after the last checkpointed one.
    skipped_since_checkpoint: bool,
}

impl Progress {
    pub(crate) fn handled(&mut self, position: Checkpoint, outcome: Outcome) {
        match outcome {
            Outcome::Checkpoint => {
                self.pending = None;
                self.pending_is_last = true;
                self.skipped_since_checkpoint = false;
                self.last_handled = Some(position);
            }
            Outcome::SkipCheckpoint => {
                let previous = self.last_handled.replace(position);
                if std::mem::take(&mut self.pending_is_last) {
                    self.pending = previous;
                }
                self.skipped_since_checkpoint = true;
            }
        }
    }

    /// The position of the last handled record: where a source that must start over continues.
    pub(crate) fn last_handled(&self) -> Option<&Checkpoint> {
        self.last_handled.as_ref()
    }

    /// Whether a record was handled with [`Outcome::SkipCheckpoint`] after the last checkpointed one.
    pub(crate) fn skipped_since_checkpoint(&self) -> bool {
        self.skipped_since_checkpoint
    }

    /// The newest checkpoint not yet given to the store.
    #[cfg(test)]
    fn pending(&self) -> Option<&Checkpoint> {
        if self.pending_is_last {
            self.last_handled.as_ref()
        } else {
            self.pending.as_ref()
        }
    }

    pub(crate) fn take_pending(&mut self) -> Option<Checkpoint> {
        if std::mem::take(&mut self.pending_is_last) {
            self.last_handled.clone()
        } else {
            self.pending.take()
        }
    }
}

/// How a shard's records reach the user: one at a time, one batch at a time, or through the caller's streams.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// The shard's reader `reader` (unique in the process) starts reading it; `origin`: its stream and id.
    fn shard_started(&self, reader: u64, origin: &Arc<Origin>) {
        let _ = (reader, origin);
    }

    /// The reader `reader` stopped (its shard ended, the scan stopped, a lease was lost, an error).
    fn shard_ended(&self, reader: u64) {
        let _ = reader;
    }

    fn deliver(
        &self,
        shard: &ShardCx<'_>,
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        progress: &mut Progress,
    ) -> impl Future<Output = Result<Delivered, Error>> + Send;
}

/// Records one at a time (or, with `in_flight` > 1, up to that many at once, one per partition key: see
/// [`by_key`](crate::by_key)), with the failure policy for the ones whose handler call fails.
pub(crate) struct PerRecord<H> {
    pub(crate) handler: H,
    pub(crate) failure: Arc<FailurePolicy>,
    /// The most handler calls in flight for one shard (`max_in_flight_per_shard`); 1: in turn.
    pub(crate) in_flight: usize,
}

impl<H: RecordHandler> PerRecord<H> {
    /// One handler call for `record` at `position`, under the handler timeout if there is one.
    pub(crate) async fn call(
        &self,
        shard: &ShardCx<'_>,
        record: Record,
        position: &Checkpoint,
    ) -> Result<Outcome, BoxError> {
        match self.failure.stall {
            None => self.handler.handle(record).await.map_err(Into::into),
            Some(stall) => FailurePolicy::watched(stall, shard, position, self.handler.handle(record)).await,
        }
    }

    /// After the first call for the record at `position` failed with `error`: the failure policy's verdict (`kept` is
    /// the copy of the record, if the policy keeps one).
    pub(crate) async fn settle_one(
        &self,
        shard: &ShardCx<'_>,
        kept: &[Record],
        position: &Checkpoint,
        error: BoxError,
    ) -> Result<Settled<Outcome>, Error> {
        let again = || {
            let record = kept.first().cloned();
            async move {
                match record {
                    Some(record) => self.call(shard, record, position).await,
                    None => Err("the failure policy kept no copy of the record".into()), // not reached
                }
            }
        };
        self.failure.after_failure(shard, kept, position, error, again).await
    }

    /// After the first call for the record at `position` failed with `error`: the failure policy (`kept` is the copy
    /// of the record, if the policy keeps one). `Some(Delivered::Cancelled)` when the shard was cancelled first.
    async fn settle(
        &self,
        shard: &ShardCx<'_>,
        kept: &[Record],
        position: Checkpoint,
        error: BoxError,
        progress: &mut Progress,
    ) -> Result<Option<Delivered>, Error> {
        match self.settle_one(shard, kept, &position, error).await? {
            Settled::Handled(outcome) => progress.handled(position, outcome),
            Settled::Given => progress.handled(position, Outcome::Checkpoint),
            Settled::Cancelled => return Ok(Some(Delivered::Cancelled)),
        }
        Ok(None)
    }
}

impl<H: RecordHandler> Deliver for PerRecord<H> {
    async fn deliver(
        &self,
        shard: &ShardCx<'_>,
        records: Vec<Record>,
        _millis_behind_latest: Option<i64>,
        progress: &mut Progress,
    ) -> Result<Delivered, Error> {
        if self.in_flight > 1 {
            return Box::pin(crate::by_key::deliver(self, shard, records, progress)).await;
        }
        // Decided once per batch. The slow path (`settle`) is awaited boxed: it stays out of the loops' state.
        let keep = self.failure.keeps_records();
        if !keep && self.failure.stall.is_none() {
            // The hot path of the default policy: no copy of a record, no timer, as before there was a policy.
            for record in records {
                // Between records only: the record in hand is always finished.
                if shard.cancel.is_cancelled() {
                    return Ok(Delivered::Cancelled);
                }
                let position = record.checkpoint();
                let error: BoxError = match self.handler.handle(record).await {
                    Ok(outcome) => {
                        progress.handled(position, outcome);
                        continue;
                    }
                    Err(e) => e.into(),
                };
                if let Some(stop) = Box::pin(self.settle(shard, &[], position, error, progress)).await? {
                    return Ok(stop);
                }
            }
            return Ok(Delivered::All);
        }
        for record in records {
            if shard.cancel.is_cancelled() {
                return Ok(Delivered::Cancelled);
            }
            let position = record.checkpoint();
            let kept = keep.then(|| record.clone());
            let result = self.call(shard, record, &position).await;
            match result {
                Ok(outcome) => progress.handled(position, outcome),
                Err(e) => {
                    if let Some(stop) = Box::pin(self.settle(shard, kept.as_slice(), position, e, progress)).await? {
                        return Ok(stop);
                    }
                }
            }
        }
        Ok(Delivered::All)
    }
}

/// One batch at a time, with the failure policy for a batch whose handler call fails (applied to the whole batch).
pub(crate) struct PerBatch<H> {
    pub(crate) handler: H,
    pub(crate) failure: Arc<FailurePolicy>,
}

impl<H: BatchHandler> PerBatch<H> {
    /// One handler call with `records` (never empty), under the handler timeout if there is one.
    async fn call(&self, shard: &ShardCx<'_>, records: Vec<Record>, mbl: Option<i64>) -> Result<Outcome, BoxError> {
        let position = records.last().map(Record::checkpoint).unwrap_or(Checkpoint::ShardEnd);
        let batch = Batch { shard_id: Arc::clone(shard.id), records, millis_behind_latest: mbl };
        match self.failure.stall {
            None => self.handler.handle_batch(batch).await.map_err(Into::into),
            Some(stall) => FailurePolicy::watched(stall, shard, &position, self.handler.handle_batch(batch)).await,
        }
    }

    /// After the batch `rest` failed with `error` (its first call): partial responses, bisection and the policy's
    /// retries, until every record of `rest` is settled, or the shard is cancelled.
    async fn settle(
        &self,
        shard: &ShardCx<'_>,
        mut rest: Vec<Record>,
        mbl: Option<i64>,
        error: BoxError,
        progress: &mut Progress,
    ) -> Result<Delivered, Error> {
        // `rest[..window]` is what the last call had; it failed after handling its first `done` records.
        let mut window = rest.len();
        let (mut done, mut error) = partial(error, window);
        loop {
            if done > 0 {
                progress.handled(rest[done - 1].checkpoint(), Outcome::Checkpoint);
                rest.drain(..done);
                window -= done;
            }
            // The failure is at `rest[0]`, inside `rest[..window]`.
            let failed = if self.failure.bisects() && window > 1 {
                window /= 2;
                match self.call(shard, rest[..window].to_vec(), mbl).await {
                    Ok(outcome) => {
                        progress.handled(rest[window - 1].checkpoint(), outcome);
                        rest.drain(..window);
                        None
                    }
                    Err(e) => Some(partial(e, window)),
                }
            } else {
                let records = &rest[..window];
                let position = records[window - 1].checkpoint();
                let again = || {
                    let records = records.to_vec();
                    async move {
                        let len = records.len();
                        match self.call(shard, records, mbl).await {
                            Ok(outcome) => Ok(Step::Done(outcome)),
                            Err(e) => match partial(e, len) {
                                (0, e) => Err(e),
                                (done, e) => Ok(Step::Partial(done, e)),
                            },
                        }
                    }
                };
                match self.failure.after_failure(shard, records, &position, error, again).await? {
                    Settled::Handled(Step::Done(outcome)) => {
                        progress.handled(position, outcome);
                        rest.drain(..window);
                        None
                    }
                    Settled::Handled(Step::Partial(done, e)) => Some((done, e)),
                    Settled::Given => {
                        progress.handled(position, Outcome::Checkpoint);
                        rest.drain(..window);
                        None
                    }
                    Settled::Cancelled => return Ok(Delivered::Cancelled),
                }
            };
            if let Some(failed) = failed {
                (done, error) = failed;
                continue;
            }
            // What was left before the failure is settled: the rest of the batch in one call again.
            if rest.is_empty() {
                return Ok(Delivered::All);
            }
            if shard.cancel.is_cancelled() {
                return Ok(Delivered::Cancelled);
            }
            window = rest.len();
            match self.call(shard, rest.clone(), mbl).await {
                Ok(outcome) => {
                    progress.handled(rest[window - 1].checkpoint(), outcome);
                    return Ok(Delivered::All);
                }
                Err(e) => (done, error) = partial(e, window),
            }
        }
    }
}

/// A retried call's result: handled, or a partial batch response that got past the first record.
enum Step {
    Done(Outcome),
    Partial(usize, BoxError),
}

/// A failed call of a batch of `len` records: how many of its first records it handled (a [`BatchFailure`] inside the
/// batch), and the error.
fn partial(error: BoxError, len: usize) -> (usize, BoxError) {
    match error.downcast::<BatchFailure>() {
        Ok(failure) if failure.index() < len => (failure.index(), failure),
        Ok(failure) => (0, failure),
        Err(error) => (0, error),
    }
}

impl<H: BatchHandler> Deliver for PerBatch<H> {
    async fn deliver(
        &self,
        shard: &ShardCx<'_>,
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        progress: &mut Progress,
    ) -> Result<Delivered, Error> {
        let Some(position) = records.last().map(Record::checkpoint) else {
            return Ok(Delivered::All);
        };
        let kept = self.failure.keeps_records().then(|| records.clone());
        // Without a kept copy (the default policy) only the positions are kept, so that a partial batch response
        // (`BatchFailure::at(i, e)`) still checkpoints the records before `i` before the policy ends the batch.
        let positions: Vec<Checkpoint> = match kept {
            None if records.len() > 1 => records.iter().map(Record::checkpoint).collect(),
            _ => Vec::new(),
        };
        let batch = Batch { shard_id: Arc::clone(shard.id), records, millis_behind_latest };
        let result = match self.failure.stall {
            None => self.handler.handle_batch(batch).await.map_err(Into::into),
            Some(stall) => FailurePolicy::watched(stall, shard, &position, self.handler.handle_batch(batch)).await,
        };
        let error = match result {
            Ok(outcome) => {
                progress.handled(position, outcome);
                return Ok(Delivered::All);
            }
            Err(e) => e,
        };
        match kept {
            // Boxed: the rare slow path stays out of the hot path's state machine.
            Some(kept) => Box::pin(self.settle(shard, kept, millis_behind_latest, error, progress)).await,
            // Nothing kept (the default policy): no retries, the policy ends what the handler did not handle.
            None => {
                let (done, error) = partial(error, positions.len());
                if let Some(before) = done.checked_sub(1).and_then(|last| positions.get(last)) {
                    progress.handled(before.clone(), Outcome::Checkpoint);
                }
                let never =
                    || async { Err::<Outcome, BoxError>("the failure policy kept no copy of the batch".into()) };
                match Box::pin(self.failure.after_failure(shard, &[], &position, error, never)).await? {
                    Settled::Handled(outcome) => progress.handled(position, outcome),
                    Settled::Given => progress.handled(position, Outcome::Checkpoint),
                    Settled::Cancelled => return Ok(Delivered::Cancelled),
                }
                Ok(Delivered::All)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::SequenceNumber;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).expect("valid")
    }

    #[test]
    fn progress_tracks_checkpoints_and_skips() {
        let mut p = Progress::default();
        p.handled(Checkpoint::at(seq("1")), Outcome::Checkpoint);
        assert_eq!(p.pending(), Some(&Checkpoint::at(seq("1"))));
        p.handled(Checkpoint::at(seq("2")), Outcome::SkipCheckpoint);
        assert_eq!(p.pending(), Some(&Checkpoint::at(seq("1"))), "a skipped record does not move the checkpoint");
        assert!(p.skipped_since_checkpoint);
        assert_eq!(p.last_handled, Some(Checkpoint::at(seq("2"))), "but it was handled");
        p.handled(Checkpoint::at(seq("3")), Outcome::Checkpoint);
        assert!(!p.skipped_since_checkpoint);
        assert_eq!(p.pending(), Some(&Checkpoint::at(seq("3"))));
        assert_eq!(p.take_pending(), Some(Checkpoint::at(seq("3"))));
        assert_eq!(p.take_pending(), None, "given to the store once");
        p.handled(Checkpoint::at(seq("4")), Outcome::SkipCheckpoint);
        assert_eq!(p.take_pending(), None, "a skip after a saved checkpoint leaves nothing pending");
        p.handled(Checkpoint::at(seq("5")), Outcome::Checkpoint);
        p.handled(Checkpoint::at(seq("6")), Outcome::SkipCheckpoint);
        assert_eq!(p.take_pending(), Some(Checkpoint::at(seq("5"))));
    }
}
