//! Per-key parallelism inside a shard (issue 15): one shard on the in-process fake, 1,000 distinct partition keys, a
//! handler awaiting 1 ms per record (simulated I/O); records per second with `max_in_flight_per_shard` = 1, 4, 16, 64,
//! each next to n × the n = 1 figure of the same run (the goal: at least 0.8 of it).
//!
//! `cargo bench -p kc-core --features test-util --bench per_key` (or `cargo xtask bench`). Prints figures; asserts
//! nothing about time.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, InitialPosition, MemoryStore, Outcome, Record};
use kc_test_support::check::{median, quick_bench};

const KEYS: usize = 1_000;

/// Records per second to the last of `records`, with `n` calls at once.
async fn rate(n: usize, records: usize) -> f64 {
    let fake = FakeKinesis::new();
    fake.create_stream("bench", 1);
    let shard = fake.shard_ids("bench")[0].clone();
    for i in 0..records {
        fake.put_to_shard("bench", &shard, &format!("key-{}", i % KEYS), format!("r{i}"));
    }
    let consumer = Consumer::builder("bench")
        .api(fake)
        .store(MemoryStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .max_in_flight_per_shard(n)
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let handled = Arc::new(AtomicUsize::new(0));
    let took = Arc::new(Mutex::new(None));
    let start = Instant::now();
    let (h, t) = (Arc::clone(&handled), Arc::clone(&took));
    consumer
        .scan(move |r: Record| {
            let (h, t, token) = (Arc::clone(&h), Arc::clone(&t), token.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                std::hint::black_box(r);
                if h.fetch_add(1, Ordering::Relaxed) + 1 == records {
                    *t.lock().expect("lock") = Some(start.elapsed());
                    token.cancel();
                }
                Ok::<_, std::convert::Infallible>(Outcome::Checkpoint)
            }
        })
        .await
        .expect("scan");
    let took = took.lock().expect("lock").expect("every record handled");
    records as f64 / took.as_secs_f64()
}

fn main() {
    let quick = quick_bench();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let rounds = if quick { 1 } else { 3 };
    let ns = [1, 4, 16, 64];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ns.len()];
    rt.block_on(async {
        for _ in 0..rounds {
            for (i, n) in ns.iter().enumerate() {
                let records = if quick { 100 * n } else { (1_000 * n).min(20_000) };
                rates[i].push(rate(*n, records).await);
            }
        }
    });
    let one = median(rates[0].clone());
    println!("per-key parallelism, 1 shard on the in-process fake, {KEYS} keys, handler awaiting 1 ms per record ({rounds} rounds, medians):");
    for (i, n) in ns.iter().enumerate() {
        let r = median(rates[i].clone());
        println!(
            "  max_in_flight_per_shard = {n:>2}: {r:>8.0} records/s, {:.2} x (n x the n = 1 figure) (goal >= 0.8)",
            r / (one * *n as f64)
        );
    }
}
