//! One process reading many shards (issue 13): the time to drain N shards × 10 records at TRIM_HORIZON on kinesalite,
//! the consumer (default settings) next to a bare AWS SDK loop with bounded concurrency over the same stream in the
//! same run; the calls the consumer abandoned at its client-side timeout while draining; and, once drained, the
//! GetRecords calls per idle shard per second.
//!
//! Run by `cargo xtask bench` (which starts kinesalite and sets `KINESIS_ENDPOINT`); N = 100, 400, 1,000 (10 when run
//! as a quick check by `cargo test --benches`). Records are put with spread partition keys, so each shard has about
//! 10. Prints figures; asserts nothing about time. The second part (N = 1,000 to 10,000 on a server that
//! answers at memory speed, CPU seconds and peak RSS) is `memory_shards.rs`.

#![allow(clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use kc_integration::{bare, observed, Observed};
use kc_test_support::check::quick_bench;
use kc_test_support::time_scan;
use kinesis_consumer::{Consumer, InitialPosition, MemoryStore, Outcome, Record};

/// The bare loop's concurrency (the script ran 16 threads).
const BARE_CONCURRENCY: usize = 16;
const RECORDS_PER_SHARD: usize = 10;
/// How long the idle consumer runs before its calls are counted, and for how long they are.
const IDLE_WARM_UP: Duration = Duration::from_secs(5);
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// The consumer's default call timeout (less a little: the timer is not exact).
const CALL_TIMEOUT: Duration = Duration::from_millis(9_900);

/// The bare loop (`kc_integration::bare`), `BARE_CONCURRENCY` shards at a time: the time until `records` were read.
async fn bare_sdk(client: &aws_sdk_kinesis::Client, stream: &str, shards: &[String], records: usize) -> Duration {
    let start = Instant::now();
    let seen = bare::drain(client, stream, shards, BARE_CONCURRENCY).await;
    assert_eq!(seen, records, "the bare loop read every record");
    start.elapsed()
}

/// The consumer with its default settings at TRIM_HORIZON: the time until its `records`th record, and the calls it
/// abandoned at its call timeout meanwhile.
async fn consumer(client: &aws_sdk_kinesis::Client, stream: &str, records: usize) -> (Duration, u64) {
    let api = Observed::new(client.clone()).timeout_at_least(CALL_TIMEOUT);
    let consumer = Consumer::builder(stream)
        .api(api.clone())
        .store(MemoryStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    let timed = time_scan(consumer, records).await;
    (timed.to_nth, api.count(observed::CALL_TIMEOUT))
}

/// GetRecords calls per shard per second of a consumer whose shards are all caught up.
async fn idle_calls(client: &aws_sdk_kinesis::Client, stream: &str, shards: usize) -> f64 {
    let api = Observed::new(client.clone());
    let consumer = Consumer::builder(stream)
        .api(api.clone())
        .store(MemoryStore::new())
        .initial_position(InitialPosition::Latest)
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let scan = tokio::spawn(async move {
        consumer
            .scan(|r: Record| {
                std::hint::black_box(r);
                std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Checkpoint))
            })
            .await
    });
    tokio::time::sleep(IDLE_WARM_UP).await;
    let before = api.get_records();
    tokio::time::sleep(IDLE_WINDOW).await;
    let calls = api.get_records() - before;
    token.cancel();
    scan.await.expect("idle scan task").expect("idle scan");
    calls as f64 / shards as f64 / IDLE_WINDOW.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = quick_bench();
    let Some(endpoint) = kc_test_support::check::bench_endpoint("many_shards", "KINESIS_ENDPOINT") else {
        return;
    };
    let sizes: &[usize] = if quick { &[10] } else { &[100, 400, 1_000] };
    let client = kc_examples::kinesis_client(&endpoint).await;
    println!(
        "kinesalite, N shards x ~{RECORDS_PER_SHARD} records at TRIM_HORIZON: time to drain (bare SDK loop, \
         {BARE_CONCURRENCY} shards at a time, vs the consumer with default settings); idle GetRecords per shard per \
         second over {}s",
        IDLE_WINDOW.as_secs()
    );
    println!(
        "  {:>6}  {:>10}  {:>10}  {:>6}  {:>16}  {:>14}",
        "N", "bare SDK", "consumer", "ratio", "call timeouts", "idle calls/s"
    );
    for &n in sizes {
        let stream = format!("bench-many-{n}-{}", std::process::id());
        let shards = i32::try_from(n).expect("shard count");
        kc_examples::ensure_stream(&client, &stream, shards).await.expect("create stream");
        let payload = Bytes::from(vec![b'x'; 100]);
        let records = n * RECORDS_PER_SHARD;
        let entries: Vec<(String, Bytes)> = (0..records).map(|i| (format!("k{i}"), payload.clone())).collect();
        kc_examples::put_all(&client, &stream, entries).await.expect("put");
        let ids = bare::shard_ids(&client, &stream).await;
        let bare = bare_sdk(&client, &stream, &ids, records).await;
        let (ours, timeouts) = consumer(&client, &stream, records).await;
        let idle = idle_calls(&client, &stream, n).await;
        println!(
            "  {n:>6}  {:>9.2}s  {:>9.2}s  {:>6.2}  {timeouts:>16}  {idle:>14.2}",
            bare.as_secs_f64(),
            ours.as_secs_f64(),
            ours.as_secs_f64() / bare.as_secs_f64()
        );
        let _ = client.delete_stream().stream_name(&stream).send().await;
    }
}
