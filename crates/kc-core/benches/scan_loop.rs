//! Records per second through the scan loop over an in-process Kinesis with pre-built batches and a no-op handler,
//! on one core (a current-thread runtime), with the allocations made per record: `scan` (one record per handler
//! call) with its defaults and with prefetch off, `scan_batches` (one batch per call), under the default failure
//! policy, and the Stream API (`into_shards`, each batch acked; goal: within 10 % of `scan_batches`), in alternating
//! runs.
//!
//! `cargo bench -p kc-core --bench scan_loop` (or `cargo xtask bench`). Prints figures; asserts nothing about time.

#![allow(clippy::print_stdout, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kc_core::api::{
    ApiError, KinesisApi, RawRecord, RecordBatch, ShardInfo, ShardPage, StartingPosition, StreamSummary,
};
use kc_core::{Batch, Consumer, InitialPosition, MemoryStore, Outcome};
use kc_test_support::check::{median, quick_bench};
use kc_test_support::time_scan;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Hands out pre-built batches of one shard, so the measured time is the consumer's alone.
struct Prebuilt {
    batches: Mutex<Vec<RecordBatch>>,
}

#[async_trait]
impl KinesisApi for Prebuilt {
    async fn list_shards(&self, _stream: &str, _next: Option<&str>) -> Result<ShardPage, ApiError> {
        Ok(ShardPage { shards: vec![ShardInfo::new("shardId-000000000000")], next_token: None })
    }
    async fn get_shard_iterator(&self, _: &str, _: &str, _: &StartingPosition) -> Result<String, ApiError> {
        Ok("it".to_owned())
    }
    async fn get_records(&self, _it: &str, _limit: i32) -> Result<RecordBatch, ApiError> {
        let batch = self.batches.lock().map_err(|_| ApiError::new(kc_core::api::ApiErrorKind::Permanent, None))?.pop();
        Ok(batch.unwrap_or_else(|| RecordBatch {
            next_shard_iterator: Some("it".to_owned()),
            millis_behind_latest: Some(0),
            ..RecordBatch::default()
        }))
    }
    async fn describe_stream_summary(&self, _: &str) -> Result<StreamSummary, ApiError> {
        Ok(StreamSummary::new("arn:aws:kinesis:us-east-1:000000000000:stream/bench", None))
    }
}

fn batches(records: usize, per_batch: usize) -> Vec<RecordBatch> {
    let payload = Bytes::from_static(&[b'x'; 100]);
    let mut out: Vec<RecordBatch> = (0..records / per_batch)
        .map(|b| RecordBatch {
            records: (0..per_batch)
                .map(|i| RawRecord {
                    sequence_number: format!("49{:054}", b * per_batch + i + 1),
                    partition_key: format!("key-{}", i % 64),
                    data: payload.clone(),
                    approximate_arrival_timestamp: None,
                })
                .collect(),
            next_shard_iterator: Some("it".to_owned()),
            millis_behind_latest: Some(1000),
            child_shards: Vec::new(),
        })
        .collect();
    out.reverse();
    out
}

/// Seconds to handle `n` records with a no-op batch handler, the stop included.
async fn time_batches(consumer: Consumer, n: usize) -> f64 {
    let token = consumer.shutdown_token();
    let handled = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    consumer
        .scan_batches(move |batch: Batch| {
            let len = batch.records().len();
            std::hint::black_box(batch);
            if handled.fetch_add(len, Ordering::Relaxed) + len >= n {
                token.cancel();
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Checkpoint))
        })
        .await
        .expect("scan");
    start.elapsed().as_secs_f64()
}

/// Seconds to take `n` records through the Stream API (`into_shards`), each batch acked at once, the stop included.
async fn time_streams(consumer: Consumer, n: usize) -> f64 {
    use futures_util::StreamExt;
    let start = Instant::now();
    let mut shards = consumer.into_shards();
    let token = shards.shutdown_token();
    let mut handled = 0;
    while let Some(mut shard) = shards.next().await {
        while let Some(batch) = shard.next().await {
            handled += batch.records().len();
            std::hint::black_box(batch.records());
            batch.ack();
            if handled >= n {
                token.cancel();
            }
        }
        if handled >= n {
            break;
        }
    }
    shards.join().await.expect("scan");
    start.elapsed().as_secs_f64()
}

/// How the records are taken.
#[derive(Clone, Copy)]
enum Api {
    Scan,
    ScanBatches,
    Streams,
}

fn run(records: usize, api_kind: Api, prefetch: bool) -> (f64, f64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let api = Prebuilt { batches: Mutex::new(batches(records, 10_000)) };
        let consumer = Consumer::builder("bench")
            .api(api)
            .store(MemoryStore::new())
            .initial_position(InitialPosition::TrimHorizon)
            .min_poll_interval(Duration::ZERO)
            .prefetch(prefetch)
            .build()
            .await
            .expect("build");
        let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
        // The whole scan, its stop included (the handler cancels it at the last record).
        let secs = match api_kind {
            Api::ScanBatches => time_batches(consumer, records).await,
            Api::Scan => time_scan(consumer, records).await.whole.as_secs_f64(),
            Api::Streams => time_streams(consumer, records).await,
        };
        let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
        (records as f64 / secs, allocs as f64 / records as f64)
    })
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep it short then.
    let quick = quick_bench();
    let records = if quick { 20_000 } else { 2_000_000 };
    // `scan` with its defaults (prefetch on), `scan` with prefetch off, `scan_batches`, the Stream API: in
    // alternating runs, so that drift in the shared machine's speed hits all four.
    let kinds = [
        (Api::Scan, true, "scan"),
        (Api::Scan, false, "scan, prefetch off"),
        (Api::ScanBatches, true, "scan_batches"),
        (Api::Streams, true, "streams (into_shards, acked)"),
    ];
    for (api_kind, prefetch, _) in kinds {
        run(records.min(100_000), api_kind, prefetch); // warm-up
    }
    let mut rates = vec![Vec::new(); kinds.len()];
    let mut allocs = vec![0.0; kinds.len()];
    for _ in 0..if quick { 1 } else { 5 } {
        for (k, (api_kind, prefetch, _)) in kinds.iter().enumerate() {
            let (rate, a) = run(records, *api_kind, *prefetch);
            rates[k].push(rate);
            allocs[k] = a;
        }
    }
    println!("scan loop, in-process pre-built batches of 10,000 x 100-byte records, no-op handler, 1 core:");
    for (k, (_, _, what)) in kinds.iter().enumerate() {
        let median = median(rates[k].clone());
        println!(
            "  {what}: median {:.2} M records/s (runs: {}); heap allocations per record {:.4}; target >= 5 M: {}",
            median / 1e6,
            rates[k].iter().map(|r| format!("{:.2} M", r / 1e6)).collect::<Vec<_>>().join(", "),
            allocs[k],
            if median >= 5e6 { "met" } else { "NOT met" }
        );
    }
    let (batches, streams) = (median(rates[2].clone()), median(rates[3].clone()));
    println!(
        "  streams / scan_batches: {:.2}x (goal >= 0.90: {})",
        streams / batches,
        if streams >= 0.9 * batches { "met" } else { "NOT met" }
    );
}
