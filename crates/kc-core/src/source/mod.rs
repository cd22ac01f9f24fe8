//! Record sources: how a shard's records are fetched, behind one small seam.
//!
//! A source yields [`Fetched`] batches of one shard from a narrow [`Context`] (the Kinesis API, the settings, the
//! shard's id, cancellation, the retry backoff and the shard's metrics) and the position of the last record the
//! reader handled; it never sees the reader. The reader (start position, deaggregation, delivery, checkpoints, shard
//! end, shutdown) does not know which source it reads from.
//! - [`polling`]: GetShardIterator + GetRecords, paced.
//! - [`fan_out`]: SubscribeToShard (enhanced fan-out), and the stream consumer it subscribes with.

pub(crate) mod fan_out;
pub(crate) mod polling;
mod prefetch;

pub(crate) use prefetch::Fetch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::{Checkpoint, SequenceNumber};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::api::{ApiError, ApiErrorKind, KinesisApi, RawRecord, ShardInfo, StartingPosition};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::metrics::ShardMetrics;
use crate::retry::{retry, Policy, Retried};

/// Records a source fetched, to deliver.
pub(crate) struct Fetched {
    pub(crate) records: Vec<RawRecord>,
    pub(crate) millis_behind_latest: Option<i64>,
    /// `Some(children)` when these are the shard's last records.
    pub(crate) end: Option<Vec<ShardInfo>>,
}

/// Where a shard's records come from.
pub(crate) enum Source {
    /// GetShardIterator + GetRecords (the default).
    Polling(polling::Polling),
    /// SubscribeToShard (enhanced fan-out) as the stream consumer with this ARN.
    FanOut(fan_out::Subscriber),
}

impl Source {
    /// The source for a shard starting at `start`: fan-out when a stream consumer is given, else polling.
    pub(crate) fn new(consumer_arn: Option<&Arc<str>>, start: StartingPosition) -> Self {
        match consumer_arn {
            None => Self::Polling(polling::Polling::new(start)),
            Some(arn) => Self::FanOut(fan_out::Subscriber::new(Arc::clone(arn), start)),
        }
    }

    /// The next batch; `None` when cancelled. `last_handled` is the position of the last record the reader handled
    /// (where a fan-out subscription that must start over continues; polling continues after the last record it
    /// fetched, which is the same record unless a batch is prefetched).
    pub(crate) async fn next(
        &mut self,
        cx: &mut Context,
        last_handled: Option<&Checkpoint>,
    ) -> Result<Option<Fetched>, Error> {
        match self {
            Self::Polling(polling) => polling.next(cx, last_handled).await,
            Self::FanOut(subscriber) => subscriber.next(cx, last_handled).await,
        }
    }
}

/// What a source may use of its shard: the Kinesis API, the settings, the shard's id, cancellation, the retry
/// backoff (reset after every success) and the shard's metrics. The reader owns it and shares it with its source.
pub(crate) struct Context {
    pub(crate) cfg: Arc<Config>,
    pub(crate) api: Arc<dyn KinesisApi>,
    pub(crate) shard_id: Arc<str>,
    pub(crate) cancel: CancellationToken,
    pub(crate) backoff: Backoff,
    pub(crate) metrics: ShardMetrics,
    /// The consumer's shared listing of closed shards (fan-out's probe for an unreported end).
    pub(crate) closed_shards: Arc<fan_out::ClosedShards>,
}

impl Context {
    pub(crate) fn new(
        cfg: Arc<Config>,
        api: Arc<dyn KinesisApi>,
        closed_shards: Arc<fan_out::ClosedShards>,
        shard_id: &str,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            closed_shards,
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
            metrics: ShardMetrics::new(&cfg.app, &cfg.stream, shard_id),
            shard_id: Arc::from(shard_id),
            cfg,
            api,
            cancel,
        }
    }

    /// A second context of the same shard, for a fetch that runs beside delivery (prefetch): the same API, settings,
    /// cancellation and metrics, its own retry backoff.
    pub(crate) fn sibling(&self) -> Self {
        Self {
            cfg: Arc::clone(&self.cfg),
            api: Arc::clone(&self.api),
            shard_id: Arc::clone(&self.shard_id),
            cancel: self.cancel.clone(),
            backoff: Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max),
            metrics: self.metrics.clone(),
            closed_shards: Arc::clone(&self.closed_shards),
        }
    }

    /// `e` with this shard's stream and id.
    pub(crate) fn err(&self, e: Error) -> Error {
        e.at(&self.cfg.stream, Some(&self.shard_id))
    }

    /// A failed Kinesis call as this shard's error: a missing stream or shard is [`ErrorKind::StreamNotFound`].
    pub(crate) fn api_error(&self, call: &str, e: ApiError) -> Error {
        let kind = match e.kind() {
            ApiErrorKind::NotFound => ErrorKind::StreamNotFound,
            _ => ErrorKind::Kinesis,
        };
        self.err(Error::new(kind, format!("{call} failed")).with_source(e))
    }

    /// Makes a Kinesis call (bounded by the call timeout in the API itself, see `limit`), retrying throttling and transient failures with backoff until it
    /// succeeds, fails otherwise, or the shard is cancelled (`None`).
    pub(crate) async fn call<T, F, Fut>(&mut self, mut f: F) -> Option<Result<T, ApiError>>
    where
        F: FnMut(Arc<dyn KinesisApi>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let api = &self.api;
        let metrics = &self.metrics;
        let policy = Policy { cancel: &self.cancel, backoff: &mut self.backoff };
        retry(
            policy,
            || f(Arc::clone(api)),
            |err: &ApiError, delay, attempt| {
                let reason = if err.kind() == ApiErrorKind::Throttled { "throttled" } else { "transient" };
                metrics.retry(reason);
                warn!(error = %err, attempt, ?delay, "Kinesis call failed; retrying");
                Retried::Again
            },
        )
        .await
    }

    /// A shard iterator at `position` (or at TRIM_HORIZON if `position` is past the retention, see
    /// [`past_retention`](Self::past_retention)), retrying what can be retried. `None` when cancelled.
    pub(crate) async fn iterator(&mut self, position: &StartingPosition) -> Result<Option<String>, Error> {
        let stream = self.cfg.stream.clone();
        let shard = Arc::clone(&self.shard_id);
        let mut position = position.clone();
        loop {
            let at = position.clone();
            let result = self
                .call(|api| {
                    let (stream, shard, position) = (stream.clone(), Arc::clone(&shard), at.clone());
                    async move { api.get_shard_iterator(&stream, &shard, &position).await }
                })
                .await;
            match result {
                Some(Ok(it)) => return Ok(Some(it)),
                Some(Err(e)) => match self.past_retention(&position, &e) {
                    Some(trim_horizon) => position = trim_horizon,
                    None => return Err(self.api_error("GetShardIterator", e)),
                },
                None => return Ok(None),
            }
        }
    }

    /// When Kinesis answers that the sequence number of `position` is no longer in the shard (the consumer was
    /// stopped longer than the stream's retention), the position to read from instead: TRIM_HORIZON, the oldest
    /// record left (what the records in between were is lost to the retention, not to the consumer). Logged as a
    /// warning and counted (`kinesis_consumer_checkpoints_past_retention_total`), as the KCL and the Go library do.
    pub(crate) fn past_retention(&self, position: &StartingPosition, e: &ApiError) -> Option<StartingPosition> {
        let by_sequence =
            matches!(position, StartingPosition::AtSequenceNumber(_) | StartingPosition::AfterSequenceNumber(_));
        if !by_sequence || e.kind() != ApiErrorKind::SequenceNotAvailable {
            return None;
        }
        warn!(?position, error = %e, "the position is past the stream's retention; reading from TRIM_HORIZON");
        self.metrics.past_retention();
        Some(StartingPosition::TrimHorizon)
    }

    /// Sleeps unless the shard is cancelled first; false when cancelled.
    pub(crate) async fn sleep(&self, d: Duration) -> bool {
        crate::retry::sleep(&self.cancel, d).await
    }
}

/// Where to (re)start reading after `position`: after a whole record, or at a partly handled aggregate (whose user
/// records up to `sub` are then dropped).
pub(crate) fn resume_from(position: &Checkpoint) -> Option<(StartingPosition, Option<(SequenceNumber, u64)>)> {
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

/// Where to continue after the last handled record (or at `start` when none was handled yet): used when a shard
/// iterator expired or a fan-out subscription has no continuation yet.
pub(crate) fn resume_position(start: &StartingPosition, last_handled: Option<&Checkpoint>) -> StartingPosition {
    last_handled.and_then(resume_from).map(|(p, _)| p).unwrap_or_else(|| start.clone())
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
        let start = StartingPosition::TrimHorizon;
        assert_eq!(resume_position(&start, None), start);
        assert_eq!(resume_position(&start, Some(&Checkpoint::ShardEnd)), start);
        assert_eq!(
            resume_position(&start, Some(&Checkpoint::at_sub(seq("7"), 1))),
            StartingPosition::AtSequenceNumber(seq("7"))
        );
    }
}
