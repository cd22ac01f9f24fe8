//! Dead-letter destinations: where a record goes when the handler failed on it and the
//! [`FailurePolicy`](crate::FailurePolicy) gave up retrying it ([`FailurePolicy::dead_letter`](crate::FailurePolicy::dead_letter)).
//!
//! A destination is a [`DeadLetter`]: one async call that takes a [`FailedRecord`] (the record, the handler's error,
//! the attempts, the time of the first failure) and answers when the record is stored. The consumer checkpoints past
//! the record only after that answer. A [`DeadLetterError`] that [`is_retryable`](DeadLetterError::is_retryable) is
//! retried with backoff for as long as it takes (a destination that is down holds its shard, it never lets a record
//! go missing; a graceful stop or a lost lease ends the wait, the record is then not checkpointed and comes again); any
//! other error stops the scan with an [`ErrorKind::DeadLetter`](crate::ErrorKind::DeadLetter) error.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;

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
