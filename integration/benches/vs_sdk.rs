//! The consumer's records/s against a bare AWS SDK GetRecords loop over the same kinesalite stream, in one run.
//!
//! Run by `cargo xtask bench` (which starts kinesalite and sets `KINESIS_ENDPOINT`). One shard, 100-byte records,
//! a no-op handler. The two readers alternate (bare, consumer, bare, consumer, ...) so that drift in the shared
//! machine's speed hits both; the ratio of medians is printed. Prints figures; asserts nothing about time.

#![allow(clippy::print_stdout, missing_docs)]

use std::time::Instant;

use bytes::Bytes;
use kc_test_support::check::{median, quick_bench};
use kc_test_support::time_scan;
use kinesis_consumer::{Consumer, InitialPosition, MemoryStore};

async fn consumer(client: &aws_sdk_kinesis::Client, stream: &str, records: usize) -> f64 {
    let consumer = Consumer::builder(stream)
        .client(client.clone())
        .store(MemoryStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    records as f64 / time_scan(consumer, records).await.to_nth.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = quick_bench();
    let Some(endpoint) = kc_test_support::check::bench_endpoint("vs_sdk", "KINESIS_ENDPOINT") else {
        return;
    };
    let records = if quick { 2_000 } else { 100_000 };
    let rounds = if quick { 1 } else { 5 };
    let client = kc_examples::kinesis_client(&endpoint).await;
    let stream = format!("bench-{}", std::process::id());
    kc_examples::ensure_stream(&client, &stream, 1).await.expect("create stream");
    let payload = Bytes::from(vec![b'x'; 100]);
    let entries: Vec<(String, Bytes)> = (0..records).map(|i| (format!("k{}", i % 100), payload.clone())).collect();
    let put_start = Instant::now();
    kc_examples::put_all(&client, &stream, entries).await.expect("put");
    let put_rate = records as f64 / put_start.elapsed().as_secs_f64();
    let shard =
        client.list_shards().stream_name(&stream).send().await.expect("ListShards").shards()[0].shard_id().to_owned();
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        bare.push(kc_integration::bare::read_one_shard(&client, &stream, &shard, records).await);
        ours.push(consumer(&client, &stream, records).await);
    }
    let (b, o) = (median(bare.clone()), median(ours.clone()));
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{:.0}", x)).collect::<Vec<_>>().join(", ");
    println!("kinesalite, 1 shard, {records} x 100-byte records (put at {put_rate:.0} records/s):");
    println!("  bare SDK GetRecords loop: median {b:.0} records/s ({})", fmt(&bare));
    println!("  consumer, no-op handler:  median {o:.0} records/s ({})", fmt(&ours));
    println!("  ratio consumer / bare SDK: {:.3} (target >= 0.9)", o / b);
    let _ = client.delete_stream().stream_name(&stream).send().await;
}
