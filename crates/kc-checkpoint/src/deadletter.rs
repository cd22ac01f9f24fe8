//! The dead-letter seam: where the consumer puts a record the handler failed on once its failure policy gave up
//! retrying it. It lives here, beside [`CheckpointStore`](crate::CheckpointStore), so that the store crates
//! (PostgreSQL, MySQL) can offer a destination without depending on the consumer and the Kinesis SDK; the consumer
//! (`kc-core`) re-exports it and ships a Kinesis-stream destination of its own.
//!
//! The consumer checkpoints past the record only after [`DeadLetter::send`] returned `Ok`. A [`DeadLetterError`] that
//! [`is_retryable`](DeadLetterError::is_retryable) is retried with backoff for as long as it takes (a destination
//! that is down holds its shard; it never lets a record go missing); any other stops the scan.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use crate::SequenceNumber;

/// A record the handler failed on, as a [`DeadLetter`] destination receives it: the record (data, partition key,
/// sequence and sub-sequence number, shard, approximate arrival time) and its failure (the handler's error as text,
/// the attempts, the time of the first failure).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedRecord {
    stream: String,
    shard_id: String,
    sequence_number: SequenceNumber,
    sub_sequence_number: Option<u64>,
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Bytes,
    approximate_arrival_timestamp: Option<SystemTime>,
    error: String,
    attempts: u32,
    first_failure: SystemTime,
}

impl FailedRecord {
    /// The record `sequence_number` of `stream`'s shard `shard_id`, failed with `error` after `attempts` attempts,
    /// the first at `first_failure`. The rest (sub-sequence number, arrival time, explicit hash key) through the
    /// `with_` methods.
    #[expect(clippy::too_many_arguments, reason = "each is required: a builder would let one be forgotten")]
    pub fn new(
        stream: impl Into<String>,
        shard_id: impl Into<String>,
        sequence_number: SequenceNumber,
        partition_key: impl Into<String>,
        data: impl Into<Bytes>,
        error: impl Into<String>,
        attempts: u32,
        first_failure: SystemTime,
    ) -> Self {
        Self {
            stream: stream.into(),
            shard_id: shard_id.into(),
            sequence_number,
            sub_sequence_number: None,
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
            approximate_arrival_timestamp: None,
            error: error.into(),
            attempts,
            first_failure,
        }
    }

    /// With the index of the user record in its KPL aggregate.
    #[must_use]
    pub fn with_sub_sequence_number(mut self, sub: Option<u64>) -> Self {
        self.sub_sequence_number = sub;
        self
    }

    /// With the approximate arrival time.
    #[must_use]
    pub fn with_approximate_arrival_timestamp(mut self, t: Option<SystemTime>) -> Self {
        self.approximate_arrival_timestamp = t;
        self
    }

    /// With the explicit hash key of a KPL user record.
    #[must_use]
    pub fn with_explicit_hash_key(mut self, key: Option<String>) -> Self {
        self.explicit_hash_key = key;
        self
    }

    /// The stream the record was read from.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The shard the record was read from.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The sequence number of the Kinesis record.
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.sequence_number
    }

    /// The index of the user record in its KPL aggregate; `None` for a record that was not aggregated.
    pub fn sub_sequence_number(&self) -> Option<u64> {
        self.sub_sequence_number
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The explicit hash key of a KPL user record, if any.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_deref()
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// When Kinesis received the record, approximately.
    pub fn approximate_arrival_timestamp(&self) -> Option<SystemTime> {
        self.approximate_arrival_timestamp
    }

    /// The handler's last error, as text (the error and its sources, separated by `": "`).
    pub fn error(&self) -> &str {
        &self.error
    }

    /// How many times the handler was called with the record (with its batch, for `scan_batches`).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the handler failed on it the first time.
    pub fn first_failure(&self) -> SystemTime {
        self.first_failure
    }
}

/// A dead-letter destination (object safe: the consumer holds an `Arc<dyn DeadLetter>`).
#[async_trait]
pub trait DeadLetter: Send + Sync + 'static {
    /// Stores `record`. `Ok` means it is stored for good: the consumer then checkpoints past it. The consumer calls
    /// this for one record of a shard at a time, and again with the same record after a retryable error (and after a
    /// restart, if it stopped before the checkpoint was saved: a destination receives a record at least once).
    async fn send(&self, record: &FailedRecord) -> Result<(), DeadLetterError>;
}

/// A boxed error, the source of a [`DeadLetterError`].
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a [`DeadLetter`] destination did not store a record.
#[derive(Debug)]
pub struct DeadLetterError {
    retryable: bool,
    source: BoxError,
}

impl DeadLetterError {
    /// A failure that may go away (the destination is unreachable, throttled, timed out): the record is sent again.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self { retryable: true, source: source.into() }
    }

    /// A failure retrying does not fix (access denied, no such stream or table, a record too large): the scan stops.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self { retryable: false, source: source.into() }
    }

    /// Whether sending again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for DeadLetterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.retryable {
            "the dead-letter destination failed (transient)"
        } else {
            "the dead-letter destination refused the record"
        })
    }
}

impl std::error::Error for DeadLetterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
