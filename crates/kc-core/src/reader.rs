//! Reading one shard: start position, fetching (through a [`Source`]), deaggregation, delivery, checkpoints, shard
//! end; and [`Shared`], what every shard task of a scan shares.

use std::sync::Arc;

use kc_checkpoint::lease::LeaseTable;
use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::api::{KinesisApi, RawRecord, ShardInfo, StartingPosition};
use crate::config::{Config, InitialPosition};
use crate::deliver::{Deliver, Delivered, Progress};
use crate::discovery::{self, Listing};
use crate::error::{Error, ErrorKind};
use crate::generation::{self, MarkerAt};
use crate::lifecycle::Lifecycle;
use crate::record::{Origin, Record};
use crate::shard::{ShardCx, ShardExit, StartHint};
use crate::source::{fan_out, resume_from, Context, Fetch, Fetched, Source};

/// What the consumer shares with every shard task.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) cfg: Arc<Config>,
    pub(crate) api: Arc<dyn KinesisApi>,
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) lifecycle: Arc<dyn Lifecycle>,
    /// The fan-out consumer's ARN when records come by SubscribeToShard; `None` for polling.
    pub(crate) consumer_arn: Option<Arc<str>>,
    /// The stream's ARN, as DescribeStreamSummary tells it (empty until [`prepare`](Self::prepare)).
    pub(crate) stream_arn: Arc<str>,
    /// The stream's key in the checkpoints and leases: the stream as given (name or ARN), or `{stream}@{creation ms}`
    /// for a stream created again under the name (see [`generation`]).
    pub(crate) stream_key: Arc<str>,
    /// The closed shards as the last fan-out probe listed them, for every shard task.
    pub(crate) closed_shards: Arc<fan_out::ClosedShards>,
}

impl Shared {
    /// Describes the stream (its ARN and creation time: one DescribeStreamSummary), resolves the fan-out consumer
    /// when fan-out is on (registered if needed, then waited for until ACTIVE) and the stream's key (in `group`'s
    /// lease table for a group's worker: the table and the group's name); `None` if `cancel` fired meanwhile.
    pub(crate) async fn prepare(
        mut self,
        cancel: &CancellationToken,
        group: Option<(&dyn LeaseTable, &str)>,
    ) -> Result<Option<Self>, Error> {
        let Some(summary) = discovery::describe(&*self.api, &self.cfg, cancel).await? else {
            return Ok(None);
        };
        self.consumer_arn = fan_out::resolve(&self.cfg, &self.api, &summary.arn, cancel).await?;
        if self.cfg.fan_out.is_some() && self.consumer_arn.is_none() {
            return Ok(None);
        }
        let at = match group {
            Some((table, name)) => MarkerAt::Leases(table, name),
            None => MarkerAt::Store(&*self.store),
        };
        let Some(key) = generation::stream_key(&self.cfg, summary.created_ms, cancel, at).await? else {
            return Ok(None);
        };
        self.stream_key = key;
        self.stream_arn = Arc::from(summary.arn);
        Ok(Some(self))
    }

    /// Flushes the checkpoint store.
    pub(crate) async fn flush(&self) -> Result<(), Error> {
        self.store.flush().await.map_err(|e| {
            Error::new(ErrorKind::Checkpoint, "checkpoint store: flush failed")
                .with_source(e)
                .at(&self.cfg.stream, None)
        })
    }

    /// Deregisters the fan-out consumer if the builder asked for it.
    pub(crate) async fn deregister(&self) -> Result<(), Error> {
        match &self.consumer_arn {
            Some(arn) => fan_out::deregister(&self.cfg, &self.api, arn).await,
            None => Ok(()),
        }
    }
}

/// Where a shard with no checkpoint and no reason to start elsewhere starts.
fn starting_position(initial: InitialPosition) -> StartingPosition {
    match initial {
        InitialPosition::Latest => StartingPosition::Latest,
        InitialPosition::TrimHorizon => StartingPosition::TrimHorizon,
        InitialPosition::AtTimestamp(t) => StartingPosition::AtTimestamp(t),
    }
}

/// Where a shard starts.
enum Start {
    At(StartingPosition),
    /// Its checkpoint says it was read to its end.
    AlreadyEnded,
    /// Nothing to read (closed, no checkpoint, LATEST).
    Skip,
    /// Stopped before it started (nothing handled, nothing to checkpoint).
    Cancelled,
}

/// Reads one shard until its end, cancellation, or an error: start position, fetching through its [`Source`],
/// deaggregation, delivery, checkpoints, shard end.
pub(crate) struct ShardReader<'a, D> {
    shared: &'a Shared,
    deliver: &'a D,
    /// What the shard's source uses too (API, settings, cancellation, backoff, metrics).
    cx: Context,
    key: ShardKey,
    progress: Progress,
    /// User records of this aggregate up to this sub-sequence number were handled before the restart.
    drop_until: Option<(SequenceNumber, u64)>,
    /// This reader, unique in the process (see [`ShardCx::reader`]).
    id: u64,
    /// Stream and shard, shared by every record of the shard.
    origin: Arc<Origin>,
}

/// The next reader's id.
static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<'a, D: Deliver> ShardReader<'a, D> {
    pub(crate) fn new(shared: &'a Shared, deliver: &'a D, cancel: &CancellationToken, shard_id: &str) -> Self {
        let cfg = &shared.cfg;
        Self {
            shared,
            deliver,
            cx: Context::new(
                Arc::clone(cfg),
                Arc::clone(&shared.api),
                Arc::clone(&shared.closed_shards),
                shard_id,
                cancel.clone(),
            ),
            key: ShardKey::new(cfg.app.as_str(), &*shared.stream_key, shard_id),
            progress: Progress::default(),
            drop_until: None,
            id: READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            origin: Origin::new(&cfg.stream, &shared.stream_arn, shard_id),
        }
    }

    fn err(&self, e: Error) -> Error {
        self.cx.err(e)
    }

    fn store_err(&self, what: &str, e: kc_checkpoint::Error) -> Error {
        self.err(Error::new(ErrorKind::Checkpoint, format!("checkpoint store: {what} failed")).with_source(e))
    }

    pub(crate) async fn run(mut self, hint: StartHint) -> Result<ShardExit, Error> {
        let span = tracing::info_span!("shard", stream = %self.shared.cfg.stream, shard = %self.cx.shard_id);
        async move {
            let result = self.read(hint).await;
            self.deliver.shard_ended(self.id);
            // Whatever happened, what was handled is checkpointed.
            let saved = self.save_pending().await;
            match (&result, saved) {
                (Ok(ShardExit::Stopped), Ok(())) => {
                    self.shared.lifecycle.shard_stopped(&self.cx.shard_id);
                    info!("shard stopped");
                }
                (Err(_), _) => self.shared.lifecycle.shard_stopped(&self.cx.shard_id),
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
        // A stop does not wait for this read (bounded by the store timeout): nothing was handled yet, so the stop's
        // bound stays one store timeout (the final flush) rather than two.
        let checkpoint = tokio::select! {
            biased;
            _ = self.cx.cancel.cancelled() => return Ok(Start::Cancelled),
            read = store.get(&self.key) => read.map_err(|e| self.store_err("reading the checkpoint", e))?,
        };
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
        Ok(Start::At(starting_position(self.shared.cfg.initial_position)))
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
            Start::Cancelled => return Ok(ShardExit::Stopped),
        };
        info!(position = ?start, "shard started");
        self.shared.lifecycle.shard_started(&self.cx.shard_id, &start);
        self.deliver.shard_started(self.id, &self.origin);
        let source = Source::new(self.shared.consumer_arn.as_ref(), start);
        // With prefetch (polling), the next batch is fetched in a task of its own while this one is delivered.
        let mut fetch = Fetch::new(source, &self.cx, self.shared.cfg.prefetch);
        loop {
            let fetched = match fetch.next(&mut self.cx, self.progress.last_handled()).await {
                Ok(fetched) => fetched,
                Err(e) if e.kind() == ErrorKind::StreamNotFound => return self.gone(e).await,
                Err(e) => return Err(e),
            };
            let Some(Fetched { records, millis_behind_latest, end }) = fetched else {
                return Ok(ShardExit::Stopped);
            };
            if let Some(ms) = millis_behind_latest {
                self.cx.metrics.millis_behind_latest(ms);
            }
            // At most one batch ahead; none after the shard's last. Started before this batch is expanded, so that
            // the expansion too overlaps the fetch (a batch ahead that is not wanted, after an error here, is aborted
            // when `fetch` is dropped).
            if end.is_none() {
                fetch.start_ahead().await;
            }
            let records = self.expand(records, millis_behind_latest)?;
            let handled = records.len();
            let shard = ShardCx {
                reader: self.id,
                stream: &self.shared.cfg.stream,
                id: &self.cx.shard_id,
                cancel: &self.cx.cancel,
                metrics: &self.cx.metrics,
            };
            let delivered = self.deliver.deliver(&shard, records, millis_behind_latest, &mut self.progress).await;
            self.cx.metrics.records(handled as u64);
            let delivered = delivered.map_err(|e| self.err(e))?;
            self.save_pending().await?;
            if let Delivered::Cancelled = delivered {
                // The batch fetched ahead, if any, is dropped with `fetch`: nothing of it was handled or checkpointed.
                return Ok(ShardExit::Stopped);
            }
            if let Some(children) = end {
                return self.finish(children).await;
            }
        }
    }

    /// A call for this shard answered "not found" (`e`). If the stream still exists and no longer lists the shard, the
    /// shard left the stream (past its retention, while nobody read it): there is nothing more to read, so it is
    /// finished (its end recorded, as the KCL does), with a warning and the `shards_gone` metric, and its children
    /// start. Otherwise (the stream itself is missing) `e` is the scan's error.
    async fn gone(&mut self, e: Error) -> Result<ShardExit, Error> {
        // Any failure of the listing (the stream itself missing, most likely) leaves `e`, the shard's own error.
        match discovery::list(&*self.cx.api, &self.cx.cfg, &self.cx.cancel, true).await {
            Ok(Listing::Shards(shards)) if shards.iter().all(|s| *s.shard_id != *self.cx.shard_id) => {}
            Ok(Listing::Cancelled) => return Ok(ShardExit::Stopped),
            Ok(Listing::Shards(_) | Listing::Unavailable) | Err(_) => return Err(e),
        }
        warn!(error = %e, "the shard left the stream (past its retention) before it was read to its end; finished");
        self.cx.metrics.gone();
        self.save_pending().await?;
        self.shared
            .store
            .set(&self.key, Checkpoint::ShardEnd)
            .await
            .map_err(|e| self.store_err("recording the end of a shard that left the stream", e))?;
        self.cx.metrics.checkpoint();
        Ok(ShardExit::Ended { children: Vec::new() })
    }

    /// The shard's last record was handled: record its end (unless records after the last checkpoint were handled
    /// with SkipCheckpoint: they must be delivered again after a restart), then tell the lifecycle hook.
    async fn finish(&mut self, children: Vec<ShardInfo>) -> Result<ShardExit, Error> {
        self.save_pending().await?;
        if self.progress.skipped_since_checkpoint() {
            info!("shard ended; not marked finished because its last records were not checkpointed");
        } else {
            self.shared
                .store
                .set(&self.key, Checkpoint::ShardEnd)
                .await
                .map_err(|e| self.store_err("recording the shard's end", e))?;
            self.cx.metrics.checkpoint();
            info!("shard ended");
        }
        self.shared.lifecycle.shard_closed(&self.cx.shard_id);
        Ok(ShardExit::Ended { children })
    }

    async fn save_pending(&mut self) -> Result<(), Error> {
        if let Some(checkpoint) = self.progress.take_pending() {
            self.shared
                .store
                .set(&self.key, checkpoint)
                .await
                .map_err(|e| self.store_err("writing a checkpoint", e))?;
            self.cx.metrics.checkpoint();
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
                &self.origin,
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
                    self.cx.metrics.deaggregation_error();
                    out.push(record);
                }
            }
        }
        Ok(out)
    }
}
