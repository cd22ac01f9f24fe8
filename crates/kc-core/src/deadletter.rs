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
//! The trait and its types are defined in `kc-checkpoint` (re-exported here), so that the store crates implement
//! destinations without depending on the consumer. Shipped destinations: [`KinesisDeadLetter`] (another Kinesis
//! stream) here; a table in PostgreSQL or MySQL in the store crates (`PostgresDeadLetter`, `MySqlDeadLetter`).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::api::KinesisApi;
use crate::record::Record;

pub use kc_checkpoint::deadletter::{DeadLetter, DeadLetterError, FailedRecord};

/// `record` of `stream`, failed with `error` after `attempts` attempts, the first at `first_failure`.
pub(crate) fn failed_record(
    stream: &str,
    record: &Record,
    error: &str,
    attempts: u32,
    first_failure: SystemTime,
) -> FailedRecord {
    FailedRecord::new(
        stream,
        record.shard_id(),
        record.sequence_number().clone(),
        record.partition_key(),
        record.data().clone(),
        error,
        attempts,
        first_failure,
    )
    .with_sub_sequence_number(record.sub_sequence_number())
    .with_approximate_arrival_timestamp(record.approximate_arrival_timestamp())
    .with_explicit_hash_key(record.explicit_hash_key().map(str::to_owned))
}

/// A failed record as one JSON object, the format of [`KinesisDeadLetter`]'s records:
///
/// ```json
/// {"stream": "orders", "shard": "shardId-000000000001", "sequence_number": "4959...", "sub_sequence_number": null,
///  "partition_key": "k", "explicit_hash_key": null, "approximate_arrival_ms": 1733300000000,
///  "error": "the handler's error: its source", "attempts": 5, "first_failure_ms": 1733300000100,
///  "data": "aGVsbG8="}
/// ```
///
/// `data` is the payload in standard base64; times are milliseconds since the Unix epoch (`null` when unknown).
pub fn to_json(r: &FailedRecord) -> String {
    serde_json::json!({
        "stream": r.stream(),
        "shard": r.shard_id(),
        "sequence_number": r.sequence_number().to_string(),
        "sub_sequence_number": r.sub_sequence_number(),
        "partition_key": r.partition_key(),
        "explicit_hash_key": r.explicit_hash_key(),
        "approximate_arrival_ms": r.approximate_arrival_timestamp().and_then(epoch_ms),
        "error": r.error(),
        "attempts": r.attempts(),
        "first_failure_ms": epoch_ms(r.first_failure()),
        "data": aws_smithy_types::base64::encode(r.data()),
    })
    .to_string()
}

/// Milliseconds since the Unix epoch; `None` before it.
fn epoch_ms(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().and_then(|d| u64::try_from(d.as_millis()).ok())
}

/// A dead-letter destination that puts each failed record on another Kinesis stream (PutRecord with the record's
/// partition key, so the records of a key keep their order there), as [`to_json`].
///
/// Each dead-letter record is:
/// - partition key: the failed record's own partition key (for a user record of a KPL aggregate, the user record's);
///   no ExplicitHashKey is sent, so the shard of the dead-letter stream is chosen by that key's hash;
/// - data: one JSON object (UTF-8) with the fields `stream` (the stream read), `shard` (its shard id),
///   `sequence_number` (a decimal string), `sub_sequence_number` (a number inside a KPL aggregate, else `null`),
///   `partition_key`, `explicit_hash_key`, `approximate_arrival_ms`, `error` (the handler's last error and its
///   sources, joined by `": "`), `attempts` (the handler calls made), `first_failure_ms` and `data` (the payload, in
///   standard base64). `explicit_hash_key` is `null` for every record read with GetRecords or SubscribeToShard (Kinesis
///   does not return the ExplicitHashKey a record was put with); only the user records of a KPL aggregate that
///   carried one in the aggregate have it.
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
        let data = Bytes::from(to_json(record));
        match self.api.put_record(&self.stream, record.partition_key(), data).await {
            Ok(_sequence) => Ok(()),
            Err(e) if e.is_retryable() => Err(DeadLetterError::transient(e)),
            Err(e) => Err(DeadLetterError::permanent(e)),
        }
    }
}

impl crate::retry::RetryError for DeadLetterError {
    fn is_retryable(&self) -> bool {
        DeadLetterError::is_retryable(self)
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
