//! One consumer reading 1,000 shards of kinesalite (issue 13): every record arrives, and no call is abandoned at its
//! client-side timeout (the calls in flight are bounded, so a slow endpoint queues work in the consumer instead of
//! timing calls out and retrying them into a collapse).

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kc_integration::{kinesis, new_stream, put_numbered, spawn_collecting, Wait};
use kc_test_support::checkpoint;
use kinesis_consumer::api::{ApiError, ApiErrorKind, KinesisApi, RecordBatch, ShardPage, StartingPosition};
use kinesis_consumer::{Consumer, InitialPosition};

/// The Kinesis client, counting the calls the consumer abandoned before they answered (its call timeout) and the
/// client-side timeouts it was answered with.
#[derive(Clone)]
struct Timeouts {
    inner: aws_sdk_kinesis::Client,
    abandoned: Arc<AtomicU64>,
    /// Set before the scan is cancelled: calls abandoned from then on were stopped, not timed out.
    stopping: Arc<AtomicBool>,
}

impl Timeouts {
    async fn note<T>(&self, call: impl std::future::Future<Output = Result<T, ApiError>>) -> Result<T, ApiError> {
        struct Abandoned<'a>(&'a Timeouts, bool);
        impl Drop for Abandoned<'_> {
            fn drop(&mut self) {
                if self.1 && !self.0.stopping.load(Ordering::SeqCst) {
                    self.0.abandoned.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let mut guard = Abandoned(self, true);
        let result = call.await;
        guard.1 = false;
        if let Err(e) = &result {
            assert_ne!(e.kind(), ApiErrorKind::Permanent, "{e}");
        }
        result
    }
}

#[async_trait]
impl KinesisApi for Timeouts {
    async fn stream_created_ms(&self, stream: &str) -> Result<Option<u64>, ApiError> {
        self.note(KinesisApi::stream_created_ms(&self.inner, stream)).await
    }

    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError> {
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
        self.note(KinesisApi::get_records(&self.inner, shard_iterator, limit)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_shards_every_record_and_no_client_side_timeout() {
    let started = Instant::now();
    let (client, stream) = new_stream("many", 1_000).await;
    let produced = put_numbered(&client, &stream, "r", 0..10_000, 10_000).await.expect("put");
    let ready = started.elapsed();
    let api = Timeouts { inner: kinesis().await, abandoned: Arc::default(), stopping: Arc::default() };
    // The defaults a new user gets (64 calls in flight, a 10 s call timeout, 250 ms scan interval), at TRIM_HORIZON.
    let consumer = Consumer::builder(&stream)
        .api(api.clone())
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    let consume = Instant::now();
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let all = Wait::real(Duration::from_secs(60)).until(|| scan.seen.len() >= produced.len()).await;
    let took = consume.elapsed();
    // Duplicates would come now; calls abandoned from the stop on were stopped, not timed out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.stopping.store(true, Ordering::SeqCst);
    let (seen, result) = scan.stop(Duration::from_secs(10)).await;
    // Its 1,000 shards count against kinesalite's shard limit for every later test.
    client.delete_stream().stream_name(&stream).send().await.expect("delete the stream");
    println!("1,000 shards: stream and {} records ready in {ready:?}, all handled in {took:?}", produced.len());
    assert!(all, "not every record within 60 s: {} of {}", seen.len(), produced.len());
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert_eq!(api.abandoned.load(Ordering::SeqCst), 0, "calls abandoned at the client-side timeout");
}
