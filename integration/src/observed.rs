//! [`Observed`]: the SDK's Kinesis client as the consumer's `KinesisApi`, counting what the consumer received: the
//! errors that got past the SDK's retries (by kind), the calls it abandoned at its client-side timeout, and the
//! GetRecords calls (idle polling). PutRecord is forwarded too (a Kinesis dead-letter destination writes with it).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kc_test_support::check::lock;
use kinesis_consumer::api::{ApiError, KinesisApi, RecordBatch, ShardPage, StartingPosition, StreamSummary};

/// The key under which [`Observed`] counts a call the consumer dropped unanswered before [`Observed::stopping`]:
/// a call abandoned at its client-side timeout.
pub const CALL_TIMEOUT: &str = "CallTimeout";

/// The Kinesis client with the calls the consumer made counted. Clones share the counts.
#[derive(Clone)]
pub struct Observed {
    inner: aws_sdk_kinesis::Client,
    /// Errors by `ApiErrorKind` (`Debug`), and [`CALL_TIMEOUT`].
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
    get_records: Arc<AtomicU64>,
    list_shards: Arc<AtomicU64>,
    /// Set before the scan is cancelled: calls abandoned from then on were stopped, not timed out.
    stopping: Arc<AtomicBool>,
    /// A call dropped younger than this was not abandoned at its timeout (see [`Observed::timeout_at_least`]).
    min_age: Duration,
}

impl Observed {
    /// `inner`, observed.
    pub fn new(inner: aws_sdk_kinesis::Client) -> Self {
        Self {
            inner,
            errors: Arc::default(),
            get_records: Arc::default(),
            list_shards: Arc::default(),
            stopping: Arc::default(),
            min_age: Duration::ZERO,
        }
    }

    /// Counts a dropped call as [`CALL_TIMEOUT`] only if it was sent at least `age` before (the consumer's call
    /// timeout, less a little): for runs whose stop cannot be announced with [`stopping`](Self::stopping) first.
    #[must_use]
    pub fn timeout_at_least(self, age: Duration) -> Self {
        Self { min_age: age, ..self }
    }

    /// Call before cancelling the scan: the calls dropped from then on were stopped, not timed out.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// How many times `key` was counted: an error kind (`"Transient"`, `"Throttled"`, ...) or [`CALL_TIMEOUT`].
    pub fn count(&self, key: &str) -> u64 {
        lock(&self.errors).get(key).copied().unwrap_or(0)
    }

    /// Every error and abandoned call.
    pub fn total(&self) -> u64 {
        lock(&self.errors).values().sum()
    }

    /// The counts, for a message.
    pub fn summary(&self) -> String {
        format!("{:?}", lock(&self.errors))
    }

    /// GetRecords calls so far.
    pub fn get_records(&self) -> u64 {
        self.get_records.load(Ordering::Relaxed)
    }

    /// ListShards calls so far (each page counts).
    pub fn list_shards(&self) -> u64 {
        self.list_shards.load(Ordering::Relaxed)
    }

    fn add(&self, key: &str) {
        *lock(&self.errors).entry(key.to_owned()).or_default() += 1;
    }

    /// Runs `call`, counting its error, or [`CALL_TIMEOUT`] if the consumer drops it unanswered before
    /// [`stopping`](Self::stopping).
    async fn note<T>(&self, call: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        struct Abandoned<'a>(&'a Observed, Option<Instant>);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                let timed_out = self.1.is_some_and(|sent| sent.elapsed() >= self.0.min_age);
                if timed_out && !self.0.stopping.load(Ordering::SeqCst) {
                    self.0.add(CALL_TIMEOUT);
                }
            }
        }
        let mut guard = Abandoned(self, Some(Instant::now()));
        let result = call.await;
        guard.1 = None;
        if let Err(e) = &result {
            self.add(&format!("{:?}", e.kind()));
        }
        result
    }
}

#[async_trait]
impl KinesisApi for Observed {
    async fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary, ApiError> {
        self.note(KinesisApi::describe_stream_summary(&self.inner, stream)).await
    }

    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError> {
        self.list_shards.fetch_add(1, Ordering::Relaxed);
        self.note(KinesisApi::list_shards(&self.inner, stream, next_token)).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, ApiError> {
        self.note(KinesisApi::get_shard_iterator(&self.inner, stream, shard_id, position)).await
    }

    async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<RecordBatch, ApiError> {
        self.get_records.fetch_add(1, Ordering::Relaxed);
        self.note(KinesisApi::get_records(&self.inner, shard_iterator, limit)).await
    }

    // Forwarded, not left to the trait's default (a permanent "not implemented" error): a `KinesisDeadLetter` made
    // with an `Observed` client writes through it.
    async fn put_record(&self, stream: &str, partition_key: &str, data: Bytes) -> Result<String, ApiError> {
        self.note(KinesisApi::put_record(&self.inner, stream, partition_key, data)).await
    }
}
