//! The Kinesis API as the consumer calls it: at most
//! [`max_calls_in_flight`](crate::ConsumerBuilder::max_calls_in_flight) calls at once for the whole consumer, each
//! bounded by the call timeout counted from when it was sent (its permit acquired), not from when it was queued.
//!
//! Without the bound, every shard task sends its calls on its own: 1,000 shards put thousands of calls in flight, a
//! slow endpoint answers them later than the call timeout, they are retried, and the endpoint collapses under the
//! retries (issue 13). With it, the work waits in the consumer (a fair queue: calls are sent in the order they were
//! made) and a call that waited long is not abandoned for it.
//!
//! A fan-out subscription holds its permit only while SubscribeToShard is answered, not while its events stream in.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::api::{
    ApiError, ApiErrorKind, ConsumerLookup, KinesisApi, RecordBatch, ShardPage, ShardSubscription, StartingPosition,
    StreamConsumer, StreamSummary,
};

/// `inner` with at most `permits` calls in flight, each bounded by `timeout` once sent.
pub(crate) struct Limited {
    inner: Arc<dyn KinesisApi>,
    permits: Semaphore,
    timeout: Duration,
}

impl Limited {
    pub(crate) fn new(inner: Arc<dyn KinesisApi>, permits: usize, timeout: Duration) -> Self {
        Self { inner, permits: Semaphore::new(permits), timeout }
    }

    /// Waits for a permit, then makes the call with the timeout.
    async fn call<T>(&self, call: impl Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        // The semaphore is never closed.
        let Ok(_permit) = self.permits.acquire().await else {
            return Err(ApiError::new(ApiErrorKind::Permanent, Some("call limit closed".to_owned())));
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_elapsed) => Err(ApiError::timed_out()),
        }
    }
}

#[async_trait]
impl KinesisApi for Limited {
    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError> {
        self.call(self.inner.list_shards(stream, next_token)).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, ApiError> {
        self.call(self.inner.get_shard_iterator(stream, shard_id, position)).await
    }

    async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<RecordBatch, ApiError> {
        self.call(self.inner.get_records(shard_iterator, limit)).await
    }

    async fn put_record(&self, stream: &str, partition_key: &str, data: Bytes) -> Result<String, ApiError> {
        self.call(self.inner.put_record(stream, partition_key, data)).await
    }

    async fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary, ApiError> {
        self.call(self.inner.describe_stream_summary(stream)).await
    }

    async fn register_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, ApiError> {
        self.call(self.inner.register_stream_consumer(stream_arn, name)).await
    }

    async fn describe_stream_consumer(&self, consumer: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError> {
        self.call(self.inner.describe_stream_consumer(consumer)).await
    }

    async fn deregister_stream_consumer(&self, consumer_arn: &str) -> Result<(), ApiError> {
        self.call(self.inner.deregister_stream_consumer(consumer_arn)).await
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn ShardSubscription>, ApiError> {
        self.call(self.inner.subscribe_to_shard(consumer_arn, shard_id, position)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers GetRecords after `latency`, counting the calls in flight and their maximum.
    #[derive(Default)]
    struct Slow {
        latency: Duration,
        now: AtomicUsize,
        max: AtomicUsize,
    }

    #[async_trait]
    impl KinesisApi for Slow {
        async fn list_shards(&self, _: &str, _: Option<&str>) -> Result<ShardPage, ApiError> {
            Ok(ShardPage::default())
        }
        async fn get_shard_iterator(&self, _: &str, _: &str, _: &StartingPosition) -> Result<String, ApiError> {
            Ok(String::new())
        }
        async fn get_records(&self, _: &str, _: i32) -> Result<RecordBatch, ApiError> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.latency).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(RecordBatch::default())
        }
        async fn describe_stream_summary(&self, _: &str) -> Result<StreamSummary, ApiError> {
            Ok(StreamSummary::new("arn:aws:kinesis:us-east-1:000000000000:stream/it", None))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_permits_in_flight_and_the_timeout_counts_from_the_send() {
        // 40 calls of 1 s each through 4 permits take 10 s; a 2 s timeout counted from the queue would fail most.
        let slow = Arc::new(Slow { latency: Duration::from_secs(1), ..Slow::default() });
        let limited = Arc::new(Limited::new(Arc::clone(&slow) as Arc<dyn KinesisApi>, 4, Duration::from_secs(2)));
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = (0..40)
            .map(|_| {
                let limited = Arc::clone(&limited);
                tokio::spawn(async move { limited.get_records("it", 1).await.map(|_| ()) })
            })
            .collect();
        for call in calls {
            call.await.expect("no panic").expect("no call timed out");
        }
        assert_eq!(slow.max.load(Ordering::SeqCst), 4);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        // A call slower than the timeout once sent fails as a transient client-side timeout.
        let slow = Arc::new(Slow { latency: Duration::from_secs(3), ..Slow::default() });
        let limited = Limited::new(slow, 4, Duration::from_secs(2));
        let err = limited.get_records("it", 1).await.expect_err("timed out");
        assert_eq!(err.kind(), ApiErrorKind::Transient);
        assert!(err.to_string().contains("client-side timeout"), "{err}");
    }
}
