//! What the consumer calls with the records it reads.

use std::future::Future;

use crate::error::BoxError;
use crate::record::Record;

/// What a handler says about the records it was given, when it succeeded.
///
/// (To stop the scan, a handler returns an error: every shard stops, the checkpoints already made are flushed, and
/// [`Consumer::scan`](crate::Consumer::scan) returns that error.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: checkpoint it (and everything before it in its shard).
    #[default]
    Checkpoint,
    /// Handled, but do not checkpoint it (the Go library's `SkipCheckpoint`): after a restart it is delivered again,
    /// unless a later record of the same shard was checkpointed.
    SkipCheckpoint,
}

/// Handles one record at a time. Implemented for every `Fn(Record) -> impl Future<Output = Result<Outcome, E>>`.
///
/// Records of one shard are handled one after the other, in shard order; records of different shards concurrently.
pub trait RecordHandler: Send + Sync + 'static {
    /// The handler's error; it stops the scan.
    type Error: Into<BoxError>;

    /// Handles `record`.
    fn handle(&self, record: Record) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;
}

impl<F, Fut, E> RecordHandler for F
where
    F: Fn(Record) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send,
    E: Into<BoxError>,
{
    type Error = E;

    fn handle(&self, record: Record) -> impl Future<Output = Result<Outcome, E>> + Send {
        self(record)
    }
}

/// The records of one GetRecords call of one shard (after KPL deaggregation), handed to a [`BatchHandler`].
#[derive(Clone, Debug)]
pub struct Batch {
    pub(crate) shard_id: std::sync::Arc<str>,
    pub(crate) records: Vec<Record>,
    pub(crate) millis_behind_latest: Option<i64>,
}

impl Batch {
    /// The shard the records were read from.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The records, in shard order (never empty).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The records, by value.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }

    /// How far behind the tip of the shard the GetRecords call was.
    pub fn millis_behind_latest(&self) -> Option<i64> {
        self.millis_behind_latest
    }
}

/// A [`BatchHandler`]'s error saying where its batch failed (a partial batch response, as Lambda's
/// `ReportBatchItemFailures`): the records before `index` were handled, the one at `index` failed (and those after it
/// were not handled). The consumer checkpoints the records before it, and the [`FailurePolicy`](crate::FailurePolicy)
/// retries from it: the next call's batch starts at that record. An `index` not inside the batch is a failure of the
/// whole batch.
///
/// Under the default policy (stop at the first error, no retries) the records before `index` are checkpointed and then
/// the scan stops like on any error (after a restart the batch starts again at `index`); a policy with retries, a
/// dead-letter destination or [bisection](crate::FailurePolicy::bisect_batches) keeps the batch and retries from it.
#[derive(Debug)]
pub struct BatchFailure {
    index: usize,
    source: BoxError,
}

impl BatchFailure {
    /// The batch failed at its record `index` (records before it handled) with `source`.
    pub fn at(index: usize, source: impl Into<BoxError>) -> Self {
        Self { index, source: source.into() }
    }

    /// The index of the record that failed, in the batch the handler was given.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the batch failed at its record {}", self.index)
    }
}

impl std::error::Error for BatchFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Handles the records of a shard one GetRecords batch at a time; [`Outcome::Checkpoint`] checkpoints the whole
/// batch. Implemented for every `Fn(Batch) -> impl Future<Output = Result<Outcome, E>>`.
///
/// A batch is delivered once: a retried or refreshed GetRecords after it continues after its last record.
pub trait BatchHandler: Send + Sync + 'static {
    /// The handler's error; it stops the scan.
    type Error: Into<BoxError>;

    /// Handles `batch`.
    fn handle_batch(&self, batch: Batch) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;
}

impl<F, Fut, E> BatchHandler for F
where
    F: Fn(Batch) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, E>> + Send,
    E: Into<BoxError>,
{
    type Error = E;

    fn handle_batch(&self, batch: Batch) -> impl Future<Output = Result<Outcome, E>> + Send {
        self(batch)
    }
}
