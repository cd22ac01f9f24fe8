//! Decode throughput of kc-deagg against MD5 alone over the same bytes (the floor: decoding checks the digest).
//!
//! Aggregates of 100 user records of 100 bytes and of 1 KiB, each with its own partition key (as the KPL writes
//! them). Criterion measures MD5 of the protobuf (`kc_deagg::md5`, the one `decode` uses), `decode` (digest checked,
//! protobuf parsed and checked), and `decode` plus taking every user record by value (what a consumer does), in MB/s
//! of aggregate bytes. A summary at the end prints MB/s, user records/s and the ratios to our MD5 alone and to
//! OpenSSL's MD5 over buffers of the same size (`openssl speed -evp md5`, assembly, the fastest MD5 on the machine;
//! measured here only, never linked), with the `md-5` crate's portable MD5 beside them.
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
    kc_deagg::md5(&data[4..data.len() - 16])
}

fn md5_crate(data: &Bytes) -> [u8; 16] {
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
    times.map(median)
}

/// OpenSSL's MD5 over buffers of `len` bytes, per call: `openssl speed -evp md5` for about a second of wall-clock
/// time (`-elapsed`, as the rest of this summary measures). `None` when the `openssl` command is not there.
fn openssl_md5(len: usize) -> Option<Duration> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-elapsed", "-seconds", "1", "-mr", "-evp", "md5", "-bytes"])
        .arg(len.to_string())
        .output()
        .ok()?;
    // The machine-readable result: `+F:<n>:md5:<bytes per second>`.
    let text = String::from_utf8_lossy(&out.stdout);
    let rate: f64 = text.lines().find_map(|l| l.strip_prefix("+F:"))?.rsplit(':').next()?.trim().parse().ok()?;
    (rate > 0.0).then(|| Duration::from_secs_f64(len as f64 / rate))
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

fn summary() {
    println!(
        "\nsummary ({RECORDS} user records per aggregate, MD5 verified; medians of 5 rounds, each 15 interleaved \
         batches of ours then a second of `openssl speed -evp md5` over buffers of the aggregate's size)"
    );
    println!(
        "{:<6} {:>9} {:>16} {:>10} {:>15} {:>13} {:>16}",
        "record", "aggregate", "what", "MB/s", "user records/s", "vs MD5 alone", "vs OpenSSL MD5"
    );
    for (size, name) in SIZES {
        let data = aggregate(size);
        assert_eq!(md5_only(&data), md5_crate(&data));
        let mut ours: [Vec<Duration>; 4] = Default::default();
        let mut openssl = Vec::new();
        for _ in 0..5 {
            let round = time_per_call([
                &mut || usize::from(md5_crate(black_box(&data))[0]),
                &mut || usize::from(md5_only(black_box(&data))[0]),
                &mut || decode_only(black_box(&data)),
                &mut || decode_and_iterate(black_box(&data)),
            ]);
            for (all, t) in ours.iter_mut().zip(round) {
                all.push(t);
            }
            openssl.extend(openssl_md5(data.len()));
        }
        let [crate_md5, md5, decode, iterate] = ours.map(median);
        let openssl = (!openssl.is_empty()).then(|| median(openssl));
        let rows = [
            ("OpenSSL md5", openssl),
            ("md-5 crate md5", Some(crate_md5)),
            ("md5 only", Some(md5)),
            ("decode", Some(decode)),
            ("decode + iterate", Some(iterate)),
        ];
        for (what, time) in rows {
            let Some(time) = time else {
                println!("{name:<6} {:>7} B {what:>16}  (the openssl command was not found)", data.len());
                continue;
            };
            let seconds = time.as_secs_f64();
            let vs_openssl = openssl.map_or("-".to_owned(), |o| format!("{:.2}x", o.as_secs_f64() / seconds));
            println!(
                "{name:<6} {:>7} B {what:>16} {:>10.0} {:>15.0} {:>12.2}x {vs_openssl:>16}",
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
