//! Reading one shard: iterator, GetRecords loop, deaggregation, handler calls, checkpoints.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
// Tokio's clock, which the pacing sleeps on: the same instant in production, paused time in the tests.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::api::{ApiError, ApiErrorKind, KinesisApi, RawRecord, RecordBatch, ShardInfo, StartingPosition};
use crate::backoff::Backoff;
use crate::consumer::{Config, InitialPosition};
use crate::error::{Error, ErrorKind};
use crate::fan_out::Subscriber;
use crate::handler::{Batch, BatchHandler, Outcome, RecordHandler};
use crate::lifecycle::Lifecycle;
use crate::metrics::ShardMetrics;
use crate::record::Record;

/// What the consumer shares with every shard task.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) api: Arc<dyn KinesisApi>,
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) lifecycle: Arc<dyn Lifecycle>,
    /// The fan-out consumer's ARN when records come by SubscribeToShard; `None` for polling.
    pub(crate) consumer_arn: Option<Arc<str>>,
}

/// How a shard with no checkpoint starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StartHint {
    /// Start at TRIM_HORIZON: the shard appeared while running, or one of its parents was read in this run.
    pub(crate) trim_horizon: bool,
    /// Parents to look up in the store: if any has a checkpoint, the shard starts at TRIM_HORIZON too.
    pub(crate) parents: Vec<String>,
    /// The shard is closed: with [`InitialPosition::Latest`] there is nothing to read, it is skipped.
    pub(crate) closed: bool,
    /// With [`InitialPosition::Latest`]: start at AT_TIMESTAMP of this time instead of LATEST (a consumer group
    /// taking over a lease that has no checkpoint yet).
    pub(crate) latest_since: Option<std::time::SystemTime>,
}

/// How a shard task ended without error.
#[derive(Debug)]
pub(crate) enum ShardExit {
    /// Read to its end (now or in an earlier run); `children` as GetRecords reported them.
    Ended { children: Vec<ShardInfo> },
    /// Closed, no checkpoint, initial position LATEST: nothing to read.
    Skipped,
    /// Stopped before its end by cancellation.
    Stopped,
}

/// Where a shard starts.
enum Start {
    At(StartingPosition),
    /// Its checkpoint says it was read to its end.
    AlreadyEnded,
    /// Nothing to read (closed, no checkpoint, LATEST).
    Skip,
}

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
    fn handled(&mut self, position: Checkpoint, outcome: Outcome) {
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

    /// The newest checkpoint not yet given to the store.
    #[cfg(test)]
    fn pending(&self) -> Option<&Checkpoint> {
        if self.pending_is_last {
            self.last_handled.as_ref()
        } else {
            self.pending.as_ref()
        }
    }

    fn take_pending(&mut self) -> Option<Checkpoint> {
        if std::mem::take(&mut self.pending_is_last) {
            self.last_handled.clone()
        } else {
            self.pending.take()
        }
    }
}

/// How a shard's records reach the user: one at a time or one batch at a time.
pub(crate) trait Deliver: Send + Sync + 'static {
    fn deliver(
        &self,
        shard_id: &Arc<str>,
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Delivered, Error>> + Send;
}

fn handler_error(e: impl Into<crate::error::BoxError>) -> Error {
    Error::new(ErrorKind::Handler, "the handler returned an error").with_source(e)
}

pub(crate) struct PerRecord<H>(pub(crate) H);

impl<H: RecordHandler> Deliver for PerRecord<H> {
    async fn deliver(
        &self,
        _shard_id: &Arc<str>,
        records: Vec<Record>,
        _millis_behind_latest: Option<i64>,
        progress: &mut Progress,
        cancel: &CancellationToken,
    ) -> Result<Delivered, Error> {
        for record in records {
            // Between records only: the record in hand is always finished.
            if cancel.is_cancelled() {
                return Ok(Delivered::Cancelled);
            }
            let position = record.checkpoint();
            let outcome = self.0.handle(record).await.map_err(handler_error)?;
            progress.handled(position, outcome);
        }
        Ok(Delivered::All)
    }
}

pub(crate) struct PerBatch<H>(pub(crate) H);

impl<H: BatchHandler> Deliver for PerBatch<H> {
    async fn deliver(
        &self,
        shard_id: &Arc<str>,
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        progress: &mut Progress,
        _cancel: &CancellationToken,
    ) -> Result<Delivered, Error> {
        let Some(position) = records.last().map(Record::checkpoint) else {
            return Ok(Delivered::All);
        };
        let batch = Batch { shard_id: Arc::clone(shard_id), records, millis_behind_latest };
        let outcome = self.0.handle_batch(batch).await.map_err(handler_error)?;
        progress.handled(position, outcome);
        Ok(Delivered::All)
    }
}

/// Where to (re)start reading after `position`: after a whole record, or at a partly handled aggregate (whose user
/// records up to `sub` are then dropped).
fn resume_from(position: &Checkpoint) -> Option<(StartingPosition, Option<(SequenceNumber, u64)>)> {
    match position {
        Checkpoint::ShardEnd => None,
        Checkpoint::At { sequence, sub_sequence: None } => {
            Some((StartingPosition::AfterSequenceNumber(sequence.clone()), None))
        }
        Checkpoint::At { sequence, sub_sequence: Some(sub) } => {
            Some((StartingPosition::AtSequenceNumber(sequence.clone()), Some((sequence.clone(), *sub))))
        }
    }
}

/// Where a shard's records come from: the seam between "how records are fetched" and everything else (start
/// position, deaggregation, delivery, checkpoints, metrics, shard end, shutdown), which the reader shares.
pub(crate) enum Source {
    /// GetShardIterator + GetRecords (the default).
    Polling(Polling),
    /// SubscribeToShard (enhanced fan-out).
    FanOut(Subscriber),
}

/// Records a source fetched, to deliver.
pub(crate) struct Fetched {
    pub(crate) records: Vec<RawRecord>,
    pub(crate) millis_behind_latest: Option<i64>,
    /// `Some(children)` when these are the shard's last records.
    pub(crate) end: Option<Vec<ShardInfo>>,
}

/// The polling source: a shard iterator and GetRecords, paced (at once when behind, else the scan interval, never
/// under the 5 calls/s per shard limit), with expired iterators replaced after the last handled record.
pub(crate) struct Polling {
    start: StartingPosition,
    iterator: Option<String>,
    /// When the previous GetRecords started, and whether the shard was behind after it.
    previous: Option<(Instant, bool)>,
}

impl Polling {
    fn new(start: StartingPosition) -> Self {
        Self { start, iterator: None, previous: None }
    }

    /// The next batch; `None` when cancelled.
    async fn next<D: Deliver>(&mut self, r: &mut ShardReader<'_, D>) -> Result<Option<Fetched>, Error> {
        if let Some((started, behind)) = self.previous {
            let cfg = &r.shared.cfg;
            let floor = cfg.min_poll_interval.saturating_sub(started.elapsed());
            let wait = if behind { floor } else { cfg.scan_interval.max(floor) };
            if !wait.is_zero() && !r.sleep(wait).await {
                return Ok(None);
            }
        }
        let mut iterator = match self.iterator.take() {
            Some(it) => it,
            None => match r.iterator(&self.start).await? {
                Some(it) => it,
                None => return Ok(None),
            },
        };
        let limit = r.shared.cfg.max_records;
        loop {
            let call_started = Instant::now();
            let current = Arc::<str>::from(iterator.as_str());
            let fetch = |api: Arc<dyn KinesisApi>| {
                let current = Arc::clone(&current);
                async move { api.get_records(&current, limit).await }
            };
            let batch = match r.call(fetch).await {
                Some(Ok(batch)) => batch,
                Some(Err(e)) if e.kind() == ApiErrorKind::ExpiredIterator => {
                    let position = r.resume_position(&self.start);
                    warn!(position = ?position, "shard iterator expired; getting a new one");
                    r.metrics.retry("expired_iterator");
                    match r.iterator(&position).await? {
                        Some(it) => {
                            iterator = it;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                Some(Err(e)) => return Err(r.api_error("GetRecords", e)),
                None => return Ok(None),
            };
            let RecordBatch { records, next_shard_iterator, millis_behind_latest, child_shards } = batch;
            let fetched = records.len();
            let behind = fetched > 0 && (millis_behind_latest.unwrap_or(0) > 0 || fetched >= limit as usize);
            self.previous = Some((call_started, behind));
            let end = match next_shard_iterator {
                Some(next) => {
                    self.iterator = Some(next);
                    None
                }
                None => Some(child_shards),
            };
            return Ok(Some(Fetched { records, millis_behind_latest, end }));
        }
    }
}

/// Reads one shard until its end, cancellation, or an error.
pub(crate) struct ShardReader<'a, D> {
    pub(crate) shared: &'a Shared,
    deliver: &'a D,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) shard_id: Arc<str>,
    key: ShardKey,
    pub(crate) backoff: Backoff,
    pub(crate) metrics: ShardMetrics,
    progress: Progress,
    /// User records of this aggregate up to this sub-sequence number were handled before the restart.
    drop_until: Option<(SequenceNumber, u64)>,
}

impl<'a, D: Deliver> ShardReader<'a, D> {
    pub(crate) fn new(shared: &'a Shared, deliver: &'a D, cancel: &'a CancellationToken, shard_id: &str) -> Self {
        let cfg = &shared.cfg;
        Self {
            shared,
            deliver,
            cancel,
            shard_id: Arc::from(shard_id),
            key: ShardKey::new(cfg.app.as_str(), cfg.stream.as_str(), shard_id),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
            metrics: ShardMetrics::new(&cfg.app, &cfg.stream, shard_id),
            progress: Progress::default(),
            drop_until: None,
        }
    }

    pub(crate) fn err(&self, e: Error) -> Error {
        e.at(&self.shared.cfg.stream, Some(&self.shard_id))
    }

    fn store_err(&self, what: &str, e: kc_checkpoint::Error) -> Error {
        self.err(Error::new(ErrorKind::Checkpoint, format!("checkpoint store: {what} failed")).with_source(e))
    }

    pub(crate) async fn run(mut self, hint: StartHint) -> Result<ShardExit, Error> {
        let span = tracing::info_span!("shard", stream = %self.shared.cfg.stream, shard = %self.shard_id);
        async move {
            let result = self.read(hint).await;
            // Whatever happened, what was handled is checkpointed.
            let saved = self.save_pending().await;
            match (&result, saved) {
                (Ok(ShardExit::Stopped), Ok(())) => {
                    self.shared.lifecycle.shard_stopped(&self.shard_id);
                    info!("shard stopped");
                }
                (Err(_), _) => self.shared.lifecycle.shard_stopped(&self.shard_id),
                (Ok(_), Err(e)) => return Err(e),
                _ => {}
            }
            result
        }
        .instrument(span)
        .await
    }

    async fn start_position(&mut self, hint: &StartHint) -> Result<Start, Error> {
        let store = &self.shared.store;
        let checkpoint = store.get(&self.key).await.map_err(|e| self.store_err("reading the checkpoint", e))?;
        if let Some(checkpoint) = checkpoint {
            let Some((position, drop_until)) = resume_from(&checkpoint) else {
                return Ok(Start::AlreadyEnded);
            };
            self.drop_until = if self.shared.cfg.aggregation { drop_until } else { None };
            return Ok(Start::At(position));
        }
        let mut trim_horizon = hint.trim_horizon;
        for parent in &hint.parents {
            if trim_horizon {
                break;
            }
            let key = ShardKey::new(self.key.app(), self.key.stream(), parent.as_str());
            let parent_checkpoint =
                store.get(&key).await.map_err(|e| self.store_err("reading a parent's checkpoint", e))?;
            trim_horizon = parent_checkpoint.is_some();
        }
        if trim_horizon {
            return Ok(Start::At(StartingPosition::TrimHorizon));
        }
        let latest = self.shared.cfg.initial_position == InitialPosition::Latest;
        if let Some(since) = hint.latest_since.filter(|_| latest) {
            return Ok(Start::At(StartingPosition::AtTimestamp(since)));
        }
        if hint.closed && latest {
            return Ok(Start::Skip);
        }
        Ok(Start::At(self.shared.cfg.initial_position.starting_position()))
    }

    async fn read(&mut self, hint: StartHint) -> Result<ShardExit, Error> {
        let start = match self.start_position(&hint).await? {
            Start::At(position) => position,
            Start::AlreadyEnded => {
                debug!("shard was read to its end before");
                return Ok(ShardExit::Ended { children: Vec::new() });
            }
            Start::Skip => {
                debug!("closed shard with no checkpoint, initial position LATEST: nothing to read");
                return Ok(ShardExit::Skipped);
            }
        };
        info!(position = ?start, "shard started");
        self.shared.lifecycle.shard_started(&self.shard_id, &start);
        let mut source = match &self.shared.consumer_arn {
            None => Source::Polling(Polling::new(start)),
            Some(arn) => Source::FanOut(Subscriber::new(Arc::clone(arn), start)),
        };
        loop {
            let fetched = match &mut source {
                Source::Polling(polling) => polling.next(self).await?,
                Source::FanOut(subscriber) => subscriber.next(self).await?,
            };
            let Some(Fetched { records, millis_behind_latest, end }) = fetched else {
                return Ok(ShardExit::Stopped);
            };
            if let Some(ms) = millis_behind_latest {
                self.metrics.millis_behind_latest(ms);
            }
            let records = self.expand(records, millis_behind_latest)?;
            let handled = records.len();
            let delivered = self
                .deliver
                .deliver(&self.shard_id, records, millis_behind_latest, &mut self.progress, self.cancel)
                .await;
            self.metrics.records(handled as u64);
            let delivered = delivered.map_err(|e| self.err(e))?;
            self.save_pending().await?;
            if let Delivered::Cancelled = delivered {
                return Ok(ShardExit::Stopped);
            }
            if let Some(children) = end {
                return self.finish(children).await;
            }
        }
    }

    /// Where to continue after the last handled record (or at `start` when none was handled yet): used when a shard
    /// iterator expired or a fan-out subscription has no continuation yet.
    pub(crate) fn resume_position(&self, start: &StartingPosition) -> StartingPosition {
        match &self.progress.last_handled {
            Some(last) => resume_from(last).map(|(p, _)| p).unwrap_or_else(|| start.clone()),
            None => start.clone(),
        }
    }

    /// The shard's last record was handled: record its end (unless records after the last checkpoint were handled
    /// with SkipCheckpoint: they must be delivered again after a restart), then tell the lifecycle hook.
    async fn finish(&mut self, children: Vec<ShardInfo>) -> Result<ShardExit, Error> {
        self.save_pending().await?;
        if self.progress.skipped_since_checkpoint {
            info!("shard ended; not marked finished because its last records were not checkpointed");
        } else {
            self.shared
                .store
                .set(&self.key, Checkpoint::ShardEnd)
                .await
                .map_err(|e| self.store_err("recording the shard's end", e))?;
            self.metrics.checkpoint();
            info!("shard ended");
        }
        self.shared.lifecycle.shard_closed(&self.shard_id);
        Ok(ShardExit::Ended { children })
    }

    async fn save_pending(&mut self) -> Result<(), Error> {
        if let Some(checkpoint) = self.progress.take_pending() {
            self.shared
                .store
                .set(&self.key, checkpoint)
                .await
                .map_err(|e| self.store_err("writing a checkpoint", e))?;
            self.metrics.checkpoint();
        }
        Ok(())
    }

    /// Turns a GetRecords batch into the records to deliver: sequence numbers checked, aggregates split, user records
    /// handled before a restart dropped.
    fn expand(&mut self, raw: Vec<RawRecord>, millis_behind_latest: Option<i64>) -> Result<Vec<Record>, Error> {
        let mut out = Vec::with_capacity(raw.len());
        // One buffer for the batch's sequence numbers: each record's is a slice of it (no allocation per record).
        let mut digits = bytes::BytesMut::with_capacity(raw.iter().map(|r| r.sequence_number.len()).sum());
        for r in &raw {
            digits.extend_from_slice(r.sequence_number.as_bytes());
        }
        let digits = digits.freeze();
        let mut offset = 0;
        for r in raw {
            let end = offset + r.sequence_number.len();
            let sequence = SequenceNumber::from_bytes(digits.slice(offset..end));
            offset = end;
            let sequence = sequence.map_err(|e| {
                self.err(Error::new(ErrorKind::InvalidResponse, "GetRecords returned an invalid sequence number"))
                    .with_source(e)
            })?;
            let drop_until = match self.drop_until.take() {
                Some((seq, sub)) if seq == sequence => Some(sub),
                // Past the partly handled aggregate: nothing more to drop.
                _ => None,
            };
            let record = Record::from_raw(
                &self.shard_id,
                sequence,
                r.partition_key,
                r.data,
                r.approximate_arrival_timestamp,
                millis_behind_latest,
            );
            if !self.shared.cfg.aggregation {
                out.push(record);
                continue;
            }
            match kc_deagg::decode(record.data()) {
                Ok(None) => out.push(record),
                Ok(Some(aggregate)) => {
                    let last = aggregate.len().saturating_sub(1) as u64;
                    for user in aggregate {
                        let parts = user.into_parts();
                        if drop_until.is_some_and(|d| parts.sub_sequence_number <= d) {
                            continue;
                        }
                        let is_last = parts.sub_sequence_number == last;
                        out.push(record.user_record(parts, is_last));
                    }
                }
                Err(e) if self.shared.cfg.strict_deaggregation => {
                    return Err(self.err(
                        Error::new(
                            ErrorKind::Deaggregation,
                            format!("record {} is a corrupt KPL aggregate", record.sequence_number()),
                        )
                        .with_source(e),
                    ));
                }
                Err(e) => {
                    warn!(sequence = %record.sequence_number(), error = %e, "corrupt KPL aggregate delivered as one record");
                    self.metrics.deaggregation_error();
                    out.push(record);
                }
            }
        }
        Ok(out)
    }

    /// A shard iterator at `position`, retrying what can be retried. `None` when cancelled.
    pub(crate) async fn iterator(&mut self, position: &StartingPosition) -> Result<Option<String>, Error> {
        let stream = self.shared.cfg.stream.clone();
        let shard = Arc::clone(&self.shard_id);
        let position = position.clone();
        match self
            .call(|api| {
                let (stream, shard, position) = (stream.clone(), Arc::clone(&shard), position.clone());
                async move { api.get_shard_iterator(&stream, &shard, &position).await }
            })
            .await
        {
            Some(Ok(it)) => Ok(Some(it)),
            Some(Err(e)) => Err(self.api_error("GetShardIterator", e)),
            None => Ok(None),
        }
    }

    pub(crate) fn api_error(&self, call: &str, e: ApiError) -> Error {
        let kind = match e.kind() {
            ApiErrorKind::NotFound => ErrorKind::StreamNotFound,
            _ => ErrorKind::Kinesis,
        };
        self.err(Error::new(kind, format!("{call} failed")).with_source(e))
    }

    /// Makes a Kinesis call with the call timeout, retrying throttling and transient failures with backoff until it
    /// succeeds, fails otherwise, or the shard is cancelled (`None`).
    pub(crate) async fn call<T, F, Fut>(&mut self, mut f: F) -> Option<Result<T, ApiError>>
    where
        F: FnMut(Arc<dyn KinesisApi>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        loop {
            let attempt = tokio::time::timeout(self.shared.cfg.call_timeout, f(Arc::clone(&self.shared.api)));
            let result = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return None,
                r = attempt => r,
            };
            let err = match result {
                Ok(Ok(v)) => {
                    self.backoff.reset();
                    return Some(Ok(v));
                }
                Ok(Err(e)) if e.is_retryable() => e,
                Ok(Err(e)) => return Some(Err(e)),
                Err(_elapsed) => ApiError::new(ApiErrorKind::Transient, Some("client-side timeout".to_owned())),
            };
            let delay = self.backoff.next_delay();
            let reason = if err.kind() == ApiErrorKind::Throttled { "throttled" } else { "transient" };
            self.metrics.retry(reason);
            warn!(error = %err, attempt = self.backoff.attempts(), ?delay, "Kinesis call failed; retrying");
            if !self.sleep(delay).await {
                return None;
            }
        }
    }

    /// Sleeps unless cancelled first; false when cancelled.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).expect("valid")
    }

    #[test]
    fn resume_positions() {
        assert_eq!(resume_from(&Checkpoint::ShardEnd), None);
        assert_eq!(
            resume_from(&Checkpoint::at(seq("42"))),
            Some((StartingPosition::AfterSequenceNumber(seq("42")), None))
        );
        assert_eq!(
            resume_from(&Checkpoint::at_sub(seq("42"), 3)),
            Some((StartingPosition::AtSequenceNumber(seq("42")), Some((seq("42"), 3))))
        );
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
