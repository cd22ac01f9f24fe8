//! Decode throughput of kc-deagg against MD5 alone over the same bytes (the floor: decoding checks the digest).
//!
//! Aggregates of 100 user records of 100 bytes and of 1 KiB, each with its own partition key (as the KPL writes
//! them). Criterion measures MD5 of the protobuf, `decode` (digest checked, protobuf parsed and checked), and
//! `decode` plus taking every user record by value (what a consumer does), in MB/s of aggregate bytes. A summary at
//! the end prints MB/s, user records/s and the decode / MD5 ratio.
#![allow(clippy::print_stdout)] // a benchmark prints its figures
#![allow(missing_docs)] // `criterion_group!` makes an undocumented `pub fn`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use kc_deagg::Aggregator;
use md5::{Digest, Md5};

const RECORDS: usize = 100;
const SIZES: [(usize, &str); 2] = [(100, "100B"), (1024, "1KiB")];

fn aggregate(record_size: usize) -> Bytes {
    let mut aggregator = Aggregator::new();
    for i in 0..RECORDS {
        let data: Vec<u8> = (0..record_size).map(|j| (i * 31 + j) as u8).collect();
        aggregator.add(&format!("partition-key-{i:04}"), None, data);
    }
    aggregator.finish()
}

fn md5_only(data: &Bytes) -> [u8; 16] {
    Md5::digest(&data[4..data.len() - 16]).into()
}

fn decode_only(data: &Bytes) -> usize {
    kc_deagg::decode(data).ok().flatten().map_or(0, |aggregate| aggregate.len())
}

fn decode_and_iterate(data: &Bytes) -> usize {
    let Some(aggregate) = kc_deagg::decode(data).ok().flatten() else {
        return 0;
    };
    aggregate
        .into_iter()
        .map(|record| {
            let parts = record.into_parts();
            parts.data.len() + parts.partition_key.len()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    for (size, name) in SIZES {
        let data = aggregate(size);
        assert_eq!(decode_only(&data), RECORDS);
        let mut group = c.benchmark_group(format!("{RECORDS} records of {name}"));
        group.throughput(Throughput::BytesDecimal(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("md5 only", data.len()), &data, |b, d| {
            b.iter(|| md5_only(black_box(d)))
        });
        group.bench_with_input(BenchmarkId::new("decode", data.len()), &data, |b, d| {
            b.iter(|| decode_only(black_box(d)))
        });
        group.bench_with_input(BenchmarkId::new("decode + iterate", data.len()), &data, |b, d| {
            b.iter(|| decode_and_iterate(black_box(d)))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench
}

/// How many calls of `f` take about 30 ms.
fn calls_per_batch(f: &mut dyn FnMut() -> usize) -> u32 {
    let mut calls: u32 = 1;
    loop {
        let start = Instant::now();
        for _ in 0..calls {
            black_box(f());
        }
        if start.elapsed() >= Duration::from_millis(30) {
            return calls;
        }
        calls = calls.saturating_mul(2);
    }
}

/// The median time of one call of each function, over 15 rounds of one batch of each, taken in turn so that the
/// machine's noise hits them alike and their ratios hold.
fn time_per_call<const N: usize>(mut fs: [&mut dyn FnMut() -> usize; N]) -> [Duration; N] {
    let calls = fs.each_mut().map(|f| calls_per_batch(*f));
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..15 {
        for ((f, &calls), times) in fs.iter_mut().zip(&calls).zip(&mut times) {
            let start = Instant::now();
            for _ in 0..calls {
                black_box(f());
            }
            times.push(start.elapsed() / calls);
        }
    }
    times.map(|mut t| {
        t.sort();
        t[t.len() / 2]
    })
}

fn summary() {
    println!("\nsummary ({RECORDS} user records per aggregate, MD5 verified; median of 15 interleaved batches)");
    println!(
        "{:<6} {:>9} {:>16} {:>10} {:>15} {:>13}",
        "record", "aggregate", "what", "MB/s", "user records/s", "vs MD5 alone"
    );
    for (size, name) in SIZES {
        let data = aggregate(size);
        let [md5, decode, iterate] = time_per_call([
            &mut || usize::from(md5_only(black_box(&data))[0]),
            &mut || decode_only(black_box(&data)),
            &mut || decode_and_iterate(black_box(&data)),
        ]);
        for (what, time) in [("md5 only", md5), ("decode", decode), ("decode + iterate", iterate)] {
            let seconds = time.as_secs_f64();
            println!(
                "{name:<6} {:>7} B {what:>16} {:>10.0} {:>15.0} {:>12.2}x",
                data.len(),
                data.len() as f64 / seconds / 1e6,
                RECORDS as f64 / seconds,
                md5.as_secs_f64() / seconds,
            );
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` runs each benchmark once, without the summary.
    if std::env::args().any(|arg| arg == "--bench") {
        summary();
    }
}
