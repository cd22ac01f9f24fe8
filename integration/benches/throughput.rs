//! One shard's throughput with and without prefetch (issue 15), next to a bare AWS SDK GetRecords loop over the same
//! stream, in one run, on two endpoints:
//! - kinesalite (`KINESIS_ENDPOINT`, set by `cargo xtask bench`), where both sides are bound by kinesalite;
//! - [`MemoryKinesis`], a server answering from memory on a thread of its own, where the client's work (the SDK's
//!   parsing, the consumer's own) is what is measured.
//!
//! The consumer's floor between two GetRecords calls of a shard (`min_poll_interval`, 200 ms for AWS's 5 calls/s) is
//! off: the bare loop has none and neither server limits calls, so with it both figures would say "50,000 records/s"
//! (10,000 records × 5 calls) and nothing about the client. Three handlers: a no-op; one that keeps its thread busy 50 µs per record (CPU-bound work); one that awaits 1 ms
//! per record (I/O). For each, the consumer with prefetch (the default) and without, in alternating rounds with the
//! bare loop, medians printed. The goal for a handler that costs something is a rate of at least 0.9 × min(fetch rate,
//! handling rate), where the fetch rate is the bare loop's and the handling rate is the handler's alone (called
//! in a loop, measured in the same run); the consumer's rate is printed end to end and from its first record (the
//! steady rate: its start, with a first GetRecords nothing can overlap, is a fixed cost that weighs on a short run).
//! Prints figures; asserts nothing about time. `KC_BENCH_THROUGHPUT_ROUNDS` (default 5),
//! `KC_BENCH_THROUGHPUT_MEMORY_RECORDS` (records per run on the memory server, default 2,000,000) and
//! `KC_BENCH_THROUGHPUT_NOOP_ONLY` (only the no-op handler's rows) make runs longer or shorter.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kc_integration::MemoryKinesis;
use kc_test_support::check::{median, quick_bench};
use kc_test_support::env::count;
use kinesis_consumer::{Consumer, InitialPosition, MemoryStore, Outcome, Record};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Work {
    None,
    /// Busy for this long per record, without yielding.
    Cpu(Duration),
    /// Awaits a timer of this long per record.
    Io(Duration),
}

impl Work {
    async fn run(self) {
        match self {
            Work::None => {}
            Work::Cpu(d) => {
                let until = Instant::now() + d;
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Work::Io(d) => tokio::time::sleep(d).await,
        }
    }

    fn name(self) -> String {
        match self {
            Work::None => "no-op handler".to_owned(),
            Work::Cpu(d) => format!("handler busy {} us per record", d.as_micros()),
            Work::Io(d) => format!("handler awaiting {} ms per record", d.as_millis()),
        }
    }

    /// The handler alone: records per second over `n` calls in a row.
    async fn rate(self, n: usize) -> f64 {
        let start = Instant::now();
        for _ in 0..n {
            self.run().await;
        }
        n as f64 / start.elapsed().as_secs_f64()
    }
}

/// When a consumer run handed over its first record and finished its nth, from its start.
#[derive(Default)]
struct Marks {
    first: Option<Duration>,
    nth: Option<Duration>,
}

/// The consumer's records per second to its `n`th record, with `work` per record: from its start (end to end), and
/// from the moment its first record was handed over (the steady rate, without the start: ListShards, the
/// checkpoint, GetShardIterator and the first GetRecords, which nothing can overlap).
async fn consumer(client: &aws_sdk_kinesis::Client, stream: &str, n: usize, work: Work, prefetch: bool) -> (f64, f64) {
    let consumer = Consumer::builder(stream)
        .client(client.clone())
        .store(MemoryStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .prefetch(prefetch)
        // The bare loop keeps to no floor between calls, and neither server limits calls per shard: the floor of
        // 200 ms (AWS's 5 calls/s) would cap both runs at 50,000 records/s and measure nothing else.
        .min_poll_interval(Duration::ZERO)
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let handled = Arc::new(AtomicUsize::new(0));
    let marks = Arc::new(std::sync::Mutex::new(Marks::default()));
    let (h, m) = (Arc::clone(&handled), Arc::clone(&marks));
    let start = Instant::now();
    // Counts a handled record; cancels the scan at the nth.
    let count = move |h: &AtomicUsize, m: &std::sync::Mutex<Marks>, token: &CancellationToken| {
        if h.fetch_add(1, Ordering::Relaxed) + 1 == n {
            m.lock().expect("lock").nth = Some(start.elapsed());
            token.cancel();
        }
    };
    let first_handed = std::sync::atomic::AtomicBool::new(false);
    consumer
        .scan(move |r: Record| {
            if !first_handed.swap(true, Ordering::Relaxed) {
                m.lock().expect("lock").first = Some(start.elapsed());
            }
            // A no-op handler counts at once (no clone of the counters per record); the others after their work.
            let after = match work {
                Work::None => {
                    count(&h, &m, &token);
                    None
                }
                _ => Some((Arc::clone(&h), Arc::clone(&m), token.clone())),
            };
            async move {
                work.run().await;
                std::hint::black_box(r);
                if let Some((h, m, token)) = after {
                    count(&h, &m, &token);
                }
                Ok::<_, std::convert::Infallible>(Outcome::Checkpoint)
            }
        })
        .await
        .expect("scan");
    let marks = marks.lock().expect("lock");
    let nth = marks.nth.expect("the nth record was handled");
    let first = marks.first.expect("a record was handed over");
    (n as f64 / nth.as_secs_f64(), n as f64 / (nth - first).as_secs_f64())
}

/// Every figure of one endpoint.
async fn endpoint(label: &str, client: &aws_sdk_kinesis::Client, stream: &str, records: usize, quick: bool) {
    let shard =
        client.list_shards().stream_name(stream).send().await.expect("ListShards").shards()[0].shard_id().to_owned();
    let rounds = if quick { 1 } else { count("KC_BENCH_THROUGHPUT_ROUNDS").unwrap_or(5) };
    let io_records = if quick { 200 } else { 3_000 };
    let mut works = vec![
        (Work::None, records),
        (Work::Cpu(Duration::from_micros(50)), records.min(150_000)),
        (Work::Io(Duration::from_millis(1)), io_records),
    ];
    if std::env::var_os("KC_BENCH_THROUGHPUT_NOOP_ONLY").is_some() {
        works.truncate(1);
    }
    println!("{label}, 1 shard, 100-byte records, {rounds} alternating rounds (medians, records/s):");
    let mut bare_rates = Vec::new();
    for (work, n) in works {
        let (mut with, mut without, mut alone) = (Vec::new(), Vec::new(), Vec::new());
        let (mut with_steady, mut without_steady) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            if work == Work::None {
                bare_rates.push(kc_integration::bare::read_one_shard(client, stream, &shard, records).await);
            } else {
                alone.push(work.rate(n.min(5_000)).await);
            }
            let (end_to_end, steady) = consumer(client, stream, n, work, true).await;
            with.push(end_to_end);
            with_steady.push(steady);
            let (end_to_end, steady) = consumer(client, stream, n, work, false).await;
            without.push(end_to_end);
            without_steady.push(steady);
        }
        let (with, without) = (median(with), median(without));
        let fetch = median(bare_rates.clone());
        if work == Work::None {
            let (with_steady, without_steady) = (median(with_steady), median(without_steady));
            println!(
                "  {}: bare SDK loop {fetch:.0}; consumer with prefetch {with:.0} ({:.2}x the bare loop; {with_steady:.0} from its first record), without {without:.0} ({:.2}x; {without_steady:.0})",
                work.name(),
                with / fetch,
                without / fetch
            );
        } else {
            let alone = median(alone);
            let bound = fetch.min(alone);
            let (with_steady, without_steady) = (median(with_steady), median(without_steady));
            println!(
                "  {}: handler alone {alone:.0}, fetch (bare loop) {fetch:.0}; consumer with prefetch {with:.0} ({:.2}x min(fetch, handling); {:.2}x from its first record), without {without:.0} ({:.2}x; {:.2}x)",
                work.name(),
                with / bound,
                with_steady / bound,
                without / bound,
                without_steady / bound
            );
        }
    }
}

fn main() {
    let quick = quick_bench();
    // Enough records that the consumer's start (ListShards, the stream's creation time, the checkpoint,
    // GetShardIterator: ~0.3 s that nothing can overlap) weighs little: kinesalite takes about 30 s to be given
    // 150,000 records; the memory server is given more, at its speed (a run of 500,000 took about 0.5 s there, and
    // its ratios swung 0.88-1.22 from run to run; 2,000,000 records and 5 rounds steady them).
    let (records, memory_records) = if quick {
        (2_000, 2_000)
    } else {
        (150_000, count("KC_BENCH_THROUGHPUT_MEMORY_RECORDS").unwrap_or(2_000_000))
    };
    // The memory server, on a thread and runtime of its own (it stops with the process).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let server = MemoryKinesis::start("throughput", 1, memory_records).await.expect("memory server");
            tx.send(server.endpoint()).expect("send");
            std::future::pending::<()>().await;
            drop(server);
        });
    });
    let memory_endpoint = rx.recv().expect("the memory server's endpoint");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let memory = kc_examples::kinesis_client(&memory_endpoint).await;
        endpoint("memory-speed server", &memory, "throughput", memory_records, quick).await;
        let Some(kinesalite) = kc_test_support::check::bench_endpoint("throughput", "KINESIS_ENDPOINT") else {
            return;
        };
        let client = kc_examples::kinesis_client(&kinesalite).await;
        let stream = format!("throughput-{}", std::process::id());
        kc_examples::ensure_stream(&client, &stream, 1).await.expect("create stream");
        let payload = Bytes::from(vec![b'x'; 100]);
        let entries: Vec<(String, Bytes)> = (0..records).map(|i| (format!("k{}", i % 100), payload.clone())).collect();
        kc_examples::put_all(&client, &stream, entries).await.expect("put");
        endpoint("kinesalite", &client, &stream, records, quick).await;
        let _ = client.delete_stream().stream_name(&stream).send().await;
    });
}
