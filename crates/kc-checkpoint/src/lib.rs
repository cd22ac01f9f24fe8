//! The checkpoint-store trait of kinesis-consumer, and [`MemoryStore`].
//!
//! A checkpoint records how far a consumer application has read one shard of one stream. It is keyed as in the Go
//! library we port: `[app, stream, shard]` ([`ShardKey`]). Its value is a [`Checkpoint`]: either the position of the
//! last record that was handled (sequence number plus, for KPL aggregates, the sub-sequence number of the last user
//! record), or [`Checkpoint::ShardEnd`] once the shard was read to its end.
//!
//! The [`lease`] module holds the lease table of consumer groups ([`lease::LeaseTable`], with an in-memory
//! [`lease::MemoryLeaseTable`]): a lease carries a shard's checkpoint, and every write to it is fenced.
//!
//! The [`buffered`] module holds the engine of the persistent stores ([`buffered::BufferedStore`]: a pending map of
//! the newest checkpoint per shard, a background flush task, bounded retries, [`FlushFailure`], shutdown) over a
//! small [`buffered::Backend`] trait: a store crate is only its reads, writes and error mapping.
//!
//! The [`sql`] module holds what the SQL stores share that is not SQL (table-name check, the rows of a flush, a
//! stored row read back, the missing-table message).
//!
//! With the feature `test-util`, [`test_util`] holds the conformance suites every [`CheckpointStore`] and
//! [`lease::LeaseTable`] should pass.
//!
//! This crate is deliberately tiny (no AWS SDK, no database driver; Tokio and `tracing` for the engine) so that
//! store crates (DynamoDB, PostgreSQL, MySQL) can implement [`CheckpointStore`] without pulling in the Kinesis SDK.
//!
//! # Contract of a store
//! - A checkpoint never moves backwards: [`CheckpointStore::set`] with a position older than (or equal to) the stored
//!   one is a successful no-op. Positions are compared numerically ([`SequenceNumber`] implements `Ord` as numbers,
//!   sequence numbers are up to 129 decimal digits), then by sub-sequence number. `ShardEnd` is after every position.
//! - `set` may buffer; [`CheckpointStore::flush`] makes every `set` that returned before it durable.
//! - [`CheckpointStore::get`] distinguishes "no checkpoint" (`Ok(None)`) from "could not read" (`Err`).
//!
//! ```
//! use kc_checkpoint::{Checkpoint, CheckpointStore, MemoryStore, SequenceNumber, ShardKey};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kc_checkpoint::Error> {
//! let store = MemoryStore::new();
//! let key = ShardKey::new("my-app", "my-stream", "shardId-000000000000");
//! let newer = Checkpoint::at(SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898")?);
//! let older = Checkpoint::at(SequenceNumber::parse("1000")?);
//! store.set(&key, newer.clone()).await?;
//! store.set(&key, older).await?; // ignored: checkpoints never move backwards
//! assert_eq!(store.get(&key).await?, Some(newer));
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

pub mod buffered;
pub mod deadletter;
pub mod layer;
pub mod lease;
pub mod sql;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod test_util;

/// The error type of checkpoint stores.
///
/// Stores report their own failures (an SDK or database error) as the [`std::error::Error::source`] of an `Error`
/// with a [`ErrorKind`] that says whether retrying can help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A value was not valid (a sequence number that is not a decimal number, a malformed table name).
    InvalidInput,
    /// A failure that may go away when retried (throttling, a dropped connection, a restarting server).
    Transient,
    /// A failure that retrying will not fix (missing table, access denied, wrong schema).
    Permanent,
    /// The store lost the right to write this shard's checkpoint (another worker owns the shard).
    Fenced,
}

impl Error {
    /// A new error of `kind`, with a message saying what failed.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// A new error of `kind` caused by `source` (an SDK or driver error).
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { kind, message: message.into(), source: Some(source.into()) }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// A Kinesis sequence number: a decimal string of up to 129 digits, ordered as a number.
///
/// Real sequence numbers have about 56 digits (more than 128 bits), so they are kept as text and compared
/// numerically (by length once leading zeros are stripped, then digit by digit), never as strings or machine integers.
/// The text is a [`Bytes`]: cloning a sequence number does not allocate, and the consumer slices the sequence numbers
/// of a whole GetRecords batch out of one buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Bytes);

impl SequenceNumber {
    /// The most digits a sequence number may have (the Kinesis API's pattern is `0|([1-9]\d{0,128})`).
    pub const MAX_DIGITS: usize = 129;

    /// Checks that `s` is a decimal number of at most [`Self::MAX_DIGITS`] digits (leading zeros are removed).
    pub fn parse(s: impl Into<String>) -> Result<Self, Error> {
        Self::from_bytes(Bytes::from(s.into()))
    }

    /// Like [`parse`](Self::parse), from bytes (no copy).
    pub fn from_bytes(digits: Bytes) -> Result<Self, Error> {
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("invalid sequence number {:?}: expected decimal digits", String::from_utf8_lossy(&digits)),
            ));
        }
        let zeros = digits.iter().take_while(|&&b| b == b'0').count().min(digits.len() - 1);
        let digits = if zeros > 0 { digits.slice(zeros..) } else { digits };
        if digits.len() > Self::MAX_DIGITS {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("invalid sequence number: {} digits, at most {} allowed", digits.len(), Self::MAX_DIGITS),
            ));
        }
        Ok(Self(digits))
    }

    /// The number as decimal text, without leading zeros.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits get in (checked in `from_bytes`).
        std::str::from_utf8(&self.0).unwrap_or("0")
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        // Both are canonical (no leading zeros), so a longer number is a larger one.
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.as_ref().cmp(other.0.as_ref()))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SequenceNumber {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// How far a consumer application has read a shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Every record up to and including this one was handled.
    ///
    /// `sub_sequence` is set when the record is a user record of a KPL aggregate: the user records of the aggregate
    /// `sequence` up to and including `sub_sequence` were handled, later ones were not. `None` means the whole
    /// Kinesis record was handled.
    At {
        /// Sequence number of the Kinesis record.
        sequence: SequenceNumber,
        /// Sub-sequence number of the last handled user record of a KPL aggregate, if any.
        sub_sequence: Option<u64>,
    },
    /// The shard was read to its end (it was closed by a reshard and every record was handled).
    ShardEnd,
}

impl Checkpoint {
    /// A checkpoint after the whole Kinesis record `sequence`.
    pub fn at(sequence: SequenceNumber) -> Self {
        Self::At { sequence, sub_sequence: None }
    }

    /// A checkpoint after the user record `sub_sequence` of the KPL aggregate `sequence`.
    pub fn at_sub(sequence: SequenceNumber, sub_sequence: u64) -> Self {
        Self::At { sequence, sub_sequence: Some(sub_sequence) }
    }

    /// Whether this is [`Checkpoint::ShardEnd`].
    pub fn is_shard_end(&self) -> bool {
        matches!(self, Self::ShardEnd)
    }
}

impl Ord for Checkpoint {
    /// The order of positions in a shard. For the same sequence number, a partial aggregate (`Some(sub)`) comes before
    /// the whole record (`None`): `None` means every user record of it was handled.
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::ShardEnd, Self::ShardEnd) => Ordering::Equal,
            (Self::ShardEnd, _) => Ordering::Greater,
            (_, Self::ShardEnd) => Ordering::Less,
            (Self::At { sequence: a, sub_sequence: sa }, Self::At { sequence: b, sub_sequence: sb }) => {
                a.cmp(b).then_with(|| match (sa, sb) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Greater,
                    (Some(_), None) => Ordering::Less,
                    (Some(x), Some(y)) => x.cmp(y),
                })
            }
        }
    }
}

impl PartialOrd for Checkpoint {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The identity of a checkpoint: `[app, stream, shard]`, as in the Go library.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShardKey {
    app: String,
    stream: String,
    shard: String,
}

impl ShardKey {
    /// The key of `shard` of `stream`, read by the consumer application `app`.
    pub fn new(app: impl Into<String>, stream: impl Into<String>, shard: impl Into<String>) -> Self {
        Self { app: app.into(), stream: stream.into(), shard: shard.into() }
    }

    /// The consumer application's name (the checkpoint namespace).
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The shard's id.
    pub fn shard(&self) -> &str {
        &self.shard
    }
}

/// Where a consumer keeps its checkpoints.
///
/// Implementations must be monotonic (a `set` never moves a checkpoint backwards) and may buffer `set`s until
/// [`flush`](CheckpointStore::flush). The consumer calls `set` only after the handler of the checkpointed record
/// returned, and calls `flush` when it stops (cancelled, handler error or shard end).
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint of `key`, or `Ok(None)` if there is none. A failed read is an `Err`, never `Ok(None)`.
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error>;

    /// Records `checkpoint` for `key` unless the stored one is at or after it. May be buffered.
    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error>;

    /// Makes every `set` that returned before this call durable.
    async fn flush(&self) -> Result<(), Error>;
}

#[async_trait]
impl<S: CheckpointStore + ?Sized> CheckpointStore for Arc<S> {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        (**self).get(key).await
    }

    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        (**self).set(key, checkpoint).await
    }

    async fn flush(&self) -> Result<(), Error> {
        (**self).flush().await
    }
}

/// For stores that flush in the background: remembers a failure of a background flush that retrying will not fix
/// (table dropped, access revoked, ...) so that the next [`CheckpointStore::set`] reports it. The consumer calls `set`
/// after every batch, so its scan stops with a checkpoint error instead of running on while nothing is saved.
/// Transient failures are not remembered (the pending checkpoints are simply retried at the next flush).
#[derive(Debug, Default)]
pub struct FlushFailure(Mutex<Option<String>>);

impl FlushFailure {
    /// Remembers `err` if retrying cannot fix it.
    pub fn record(&self, err: &Error) {
        if !err.is_retryable() {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            *self.lock() = Some(message);
        }
    }

    /// Forgets the remembered failure (after a flush succeeded).
    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// The remembered failure, as an [`ErrorKind::Permanent`] error.
    pub fn check(&self) -> Result<(), Error> {
        match &*self.lock() {
            None => Ok(()),
            Some(message) => {
                Err(Error::new(ErrorKind::Permanent, format!("an earlier background flush failed: {message}")))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A [`CheckpointStore`] in memory: checkpoints live as long as the store (clones share them).
///
/// The consumer's default store. A restarted process starts from the initial position again; keep a clone of the
/// store to resume within one process (tests do this), or use a persistent store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<HashMap<ShardKey, Checkpoint>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every checkpoint in the store.
    pub fn snapshot(&self) -> HashMap<ShardKey, Checkpoint> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShardKey, Checkpoint>> {
        // A panic while holding this lock cannot leave the map half-updated (each operation is one insert), so a
        // poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl CheckpointStore for MemoryStore {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        Ok(self.lock().get(key).cloned())
    }

    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        let mut map = self.lock();
        match map.get_mut(key) {
            Some(current) if *current >= checkpoint => {}
            Some(current) => *current = checkpoint,
            None => {
                map.insert(key.clone(), checkpoint);
            }
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str) -> SequenceNumber {
        SequenceNumber::parse(s).expect("valid sequence number")
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        let cases = [
            ("9", "10", Ordering::Less),
            ("10", "9", Ordering::Greater),
            ("0009", "9", Ordering::Equal),
            ("0", "000", Ordering::Equal),
            (
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899",
                Ordering::Less,
            ),
            ("340282366920938463463374607431768211456", "340282366920938463463374607431768211455", Ordering::Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(seq(a).cmp(&seq(b)), want, "{a} vs {b}");
        }
    }

    #[test]
    fn invalid_sequence_numbers_are_errors() {
        for bad in ["", "-1", "12a", " 1", "1.5", &"9".repeat(130)] {
            let err = SequenceNumber::parse(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(seq(&"9".repeat(129)).as_str().len(), 129);
    }

    #[test]
    fn checkpoint_order() {
        let ordered = [
            Checkpoint::at_sub(seq("5"), 0),
            Checkpoint::at_sub(seq("5"), 7),
            Checkpoint::at(seq("5")),
            Checkpoint::at_sub(seq("10"), 0),
            Checkpoint::at(seq("10")),
            Checkpoint::ShardEnd,
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn flush_failure_remembers_only_what_retrying_cannot_fix() {
        let f = FlushFailure::default();
        assert!(f.check().is_ok());
        f.record(&Error::new(ErrorKind::Transient, "connection reset"));
        assert!(f.check().is_ok(), "transient failures are retried, not reported");
        let cause = std::io::Error::other("relation \"t\" does not exist");
        f.record(&Error::with_source(ErrorKind::Permanent, "flushing checkpoints", cause));
        let err = f.check().expect_err("remembered");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("flushing checkpoints: relation \"t\" does not exist"), "{err}");
        f.clear();
        assert!(f.check().is_ok());
    }

    #[tokio::test]
    async fn memory_store_never_moves_backwards() {
        let store = MemoryStore::new();
        let key = ShardKey::new("app", "stream", "shard-1");
        let other = ShardKey::new("app2", "stream", "shard-1");
        assert_eq!(store.get(&key).await.expect("get"), None);
        let steps = [
            (Checkpoint::at(seq("100")), Checkpoint::at(seq("100"))),
            (Checkpoint::at(seq("99")), Checkpoint::at(seq("100"))),
            (Checkpoint::at_sub(seq("100"), 3), Checkpoint::at(seq("100"))),
            (Checkpoint::at_sub(seq("101"), 3), Checkpoint::at_sub(seq("101"), 3)),
            (Checkpoint::at_sub(seq("101"), 2), Checkpoint::at_sub(seq("101"), 3)),
            (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
            (Checkpoint::at(seq("999")), Checkpoint::ShardEnd),
        ];
        for (set, want) in steps {
            store.set(&key, set.clone()).await.expect("set");
            assert_eq!(store.get(&key).await.expect("get"), Some(want), "after set {set:?}");
        }
        assert_eq!(store.get(&other).await.expect("get"), None, "keys are namespaced by app");
        store.flush().await.expect("flush");
        let shared = store.clone();
        assert_eq!(shared.get(&key).await.expect("get"), Some(Checkpoint::ShardEnd), "clones share checkpoints");
    }
}
