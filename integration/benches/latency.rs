//! Latency from put to handler, polling vs enhanced fan-out, against the same kinesis-local stream in one run.
//!
//! Run by `cargo xtask bench` (which starts kinesis-local and sets `KINESIS_LOCAL_ENDPOINT`). Two consumers read one
//! 2-shard stream at the same time: one polling with the default settings (scan interval 250 ms, at most 5 calls/s
//! per shard), one with fan-out. Records are put one at a time, spaced out, each carrying its index; a record's
//! latency is the time from just before its PutRecord to its handler call. Prints the median and p99 of each;
//! asserts nothing about time. The figures are the emulator's as much as the consumer's: kinesis-mock pushes
//! subscription events on its own schedule (about once a second), where AWS pushes within about 70 ms.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kinesis_consumer::{Consumer, ConsumerBuilder, InitialPosition, MemoryStore, Outcome, Record};

type Latencies = Arc<Mutex<Vec<Duration>>>;

/// Starts scanning with `builder`; each handled record's latency goes into the returned vector.
fn start(
    builder: ConsumerBuilder,
    sent: Arc<Mutex<Vec<Option<Instant>>>>,
) -> (Latencies, tokio::task::JoinHandle<Consumer>) {
    let latencies: Latencies = Arc::default();
    let l = latencies.clone();
    let task = tokio::spawn(async move {
        let consumer = builder.store(MemoryStore::new()).build().await.expect("build");
        let c = consumer.clone();
        consumer
            .scan(move |r: Record| {
                let now = Instant::now();
                let index: Option<usize> = std::str::from_utf8(r.data()).ok().and_then(|s| s.parse().ok());
                let sent_at = index.and_then(|i| sent.lock().expect("lock").get(i).copied().flatten());
                if let Some(at) = sent_at {
                    l.lock().expect("lock").push(now.duration_since(at));
                }
                std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Checkpoint))
            })
            .await
            .expect("scan");
        c
    });
    (latencies, task)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, latencies: &Latencies, records: usize) {
    let mut v = latencies.lock().expect("lock").clone();
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {what:<8} {} of {records} handled: median {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.99)),
        ms(v.first().copied().unwrap_or_default()),
        ms(v.last().copied().unwrap_or_default()),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = kc_test_support::check::quick_bench();
    let Some(endpoint) = kc_test_support::check::bench_endpoint("latency", "KINESIS_LOCAL_ENDPOINT") else {
        return;
    };
    let records = if quick { 40 } else { 400 };
    let spacing = Duration::from_millis(if quick { 50 } else { 37 });
    let client = kc_examples::kinesis_client(&endpoint).await;
    let stream = format!("latency-{}", std::process::id());
    kc_examples::ensure_stream(&client, &stream, 2).await.expect("create stream");
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; records]));
    let base = Consumer::builder(&stream).client(client.clone()).initial_position(InitialPosition::TrimHorizon);
    let (polled, polling) = start(base.app_name("latency-polling"), sent.clone());
    let base = Consumer::builder(&stream).client(client.clone()).initial_position(InitialPosition::TrimHorizon);
    let (pushed, fan_out) = start(base.app_name("latency-fan-out").fan_out("latency"), sent.clone());
    // Both readers running (the fan-out consumer registered and subscribed) before the first put.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for i in 0..records {
        sent.lock().expect("lock")[i] = Some(Instant::now());
        client
            .put_record()
            .stream_name(&stream)
            .partition_key(format!("k{}", i % 16))
            .data(aws_sdk_kinesis::primitives::Blob::new(i.to_string()))
            .send()
            .await
            .expect("PutRecord");
        tokio::time::sleep(spacing).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && (polled.lock().expect("lock").len() < records || pushed.lock().expect("lock").len() < records)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("kinesis-local, 2 shards, {records} records put one at a time every {spacing:?}, put -> handler:");
    report("polling", &polled, records);
    report("fan-out", &pushed, records);
    polling.abort();
    fan_out.abort();
    let _ = client.delete_stream().stream_name(&stream).enforce_consumer_deletion(true).send().await;
}
