//! Dead-letter destinations: where a record goes when the handler failed on it and the
//! [`FailurePolicy`](crate::FailurePolicy) gave up retrying it ([`FailurePolicy::dead_letter`](crate::FailurePolicy::dead_letter)).
//!
//! A destination is a [`DeadLetter`]: one async call that takes a [`FailedRecord`] (the record, the handler's error,
//! the attempts, the time of the first failure) and answers when the record is stored. The consumer checkpoints past
//! the record only after that answer. A [`DeadLetterError`] that [`is_retryable`](DeadLetterError::is_retryable) is
//! retried with backoff for as long as it takes (a destination that is down holds its shard, it never lets a record
//! go missing; a graceful stop or a lost lease ends the wait, the record is then not checkpointed and comes again); any
//! other error stops the scan with an [`ErrorKind::DeadLetter`](crate::ErrorKind::DeadLetter) error.
//!
//! Shipped destinations: [`KinesisDeadLetter`] (another Kinesis stream) here; a table in PostgreSQL or MySQL in the
//! store crates.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::api::KinesisApi;
use crate::error::BoxError;
use crate::record::Record;

/// A record the handler failed on, as a [`DeadLetter`] destination receives it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FailedRecord {
    stream: String,
    record: Record,
    error: String,
    attempts: u32,
    first_failure: SystemTime,
}

impl FailedRecord {
    /// A failed record (for tests of destinations; the consumer makes its own).
    pub fn new(
        stream: impl Into<String>,
        record: Record,
        error: impl Into<String>,
        attempts: u32,
        first_failure: SystemTime,
    ) -> Self {
        Self { stream: stream.into(), record, error: error.into(), attempts, first_failure }
    }

    /// The stream the record was read from.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The record: data, partition key, sequence and sub-sequence number, shard, approximate arrival time.
    pub fn record(&self) -> &Record {
        &self.record
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

    /// The record and its failure as one JSON object, the format of [`KinesisDeadLetter`]'s records:
    ///
    /// ```json
    /// {"stream": "orders", "shard": "shardId-000000000001", "sequence_number": "4959...", "sub_sequence_number": null,
    ///  "partition_key": "k", "explicit_hash_key": null, "approximate_arrival_ms": 1733300000000,
    ///  "error": "the handler's error: its source", "attempts": 5, "first_failure_ms": 1733300000100,
    ///  "data": "aGVsbG8="}
    /// ```
    ///
    /// `data` is the payload in standard base64; times are milliseconds since the Unix epoch (`null` when unknown).
    pub fn to_json(&self) -> String {
        let r = &self.record;
        serde_json::json!({
            "stream": self.stream,
            "shard": r.shard_id(),
            "sequence_number": r.sequence_number().to_string(),
            "sub_sequence_number": r.sub_sequence_number(),
            "partition_key": r.partition_key(),
            "explicit_hash_key": r.explicit_hash_key(),
            "approximate_arrival_ms": r.approximate_arrival_timestamp().and_then(epoch_ms),
            "error": self.error,
            "attempts": self.attempts,
            "first_failure_ms": epoch_ms(self.first_failure),
            "data": aws_smithy_types::base64::encode(r.data()),
        })
        .to_string()
    }
}

/// Milliseconds since the Unix epoch; `None` before it.
fn epoch_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().and_then(|d| u64::try_from(d.as_millis()).ok())
}

/// A dead-letter destination that puts each failed record on another Kinesis stream (PutRecord with the record's
/// partition key, so the records of a key keep their order there), as [`FailedRecord::to_json`].
///
/// ```no_run
/// # async fn run(client: aws_sdk_kinesis::Client) -> Result<(), kc_core::Error> {
/// use kc_core::{deadletter::KinesisDeadLetter, Consumer, FailurePolicy};
///
/// let dead_letters = KinesisDeadLetter::new(client.clone(), "orders-dead-letters");
/// let consumer = Consumer::builder("orders")
///     .client(client)
///     .on_handler_error(FailurePolicy::dead_letter(dead_letters).max_attempts(3))
///     .build()
///     .await?;
/// # drop(consumer);
/// # Ok(())
/// # }
/// ```
///
/// Throttling, 5xx answers and timeouts are retried (the record is never dropped); any other error (no such stream,
/// access denied, a record over the 1 MiB limit once wrapped: base64 makes the payload a third larger) stops the
/// scan. The stream is not created: create it beforehand.
#[derive(Clone)]
pub struct KinesisDeadLetter {
    api: Arc<dyn KinesisApi>,
    stream: String,
}

impl fmt::Debug for KinesisDeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisDeadLetter").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl KinesisDeadLetter {
    /// Puts the failed records on `stream` with `api` (an `aws_sdk_kinesis::Client`, usually the consumer's).
    pub fn new(api: impl KinesisApi, stream: impl Into<String>) -> Self {
        Self::shared(Arc::new(api), stream)
    }

    /// Like [`new`](Self::new), with a shared client.
    pub fn shared(api: Arc<dyn KinesisApi>, stream: impl Into<String>) -> Self {
        Self { api, stream: stream.into() }
    }

    /// The dead-letter stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

#[async_trait]
impl DeadLetter for KinesisDeadLetter {
    async fn send(&self, record: &FailedRecord) -> Result<(), DeadLetterError> {
        let data = Bytes::from(record.to_json());
        match self.api.put_record(&self.stream, record.record().partition_key(), data).await {
            Ok(_sequence) => Ok(()),
            Err(e) if e.is_retryable() => Err(DeadLetterError::transient(e)),
            Err(e) => Err(DeadLetterError::permanent(e)),
        }
    }
}

/// A dead-letter destination (object safe: the consumer holds an `Arc<dyn DeadLetter>`).
#[async_trait]
pub trait DeadLetter: Send + Sync + 'static {
    /// Stores `record`. `Ok` means it is stored for good: the consumer then checkpoints past it. The consumer calls
    /// this for one record of a shard at a time, and again with the same record after a retryable error.
    async fn send(&self, record: &FailedRecord) -> Result<(), DeadLetterError>;
}

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

impl crate::retry::RetryError for DeadLetterError {
    fn is_retryable(&self) -> bool {
        self.retryable
    }
    fn timed_out() -> Self {
        Self::transient("client-side timeout")
    }
}

/// An error and its sources as one line of text (`"outer: inner: root"`).
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_text_joins_the_sources() {
        let e = Outer(std::io::Error::other("root cause"));
        assert_eq!(error_text(&e), "outer: root cause");
        let d = DeadLetterError::permanent(e);
        assert!(!d.is_retryable());
        assert_eq!(error_text(&d), "the dead-letter destination refused the record: outer: root cause");
        assert!(DeadLetterError::transient("x").is_retryable());
    }
}
