//! One process reading many shards at memory speed (issue 13): N = 1,000, 4,000, 10,000 shards × 10 records on
//! [`MemoryKinesis`], a local endpoint answering ListShards, GetShardIterator, GetRecords and DescribeStreamSummary
//! from responses built at its start (part of this benchmark, not a test double: both sides reach it through the AWS
//! SDK over HTTP/1.1 on 127.0.0.1).
//!
//! Each N runs three child processes of this binary (the role chosen by `KC_MEMORY_SHARDS_ROLE`), so that the CPU
//! accounting of what is measured is its own: the server; then a bare SDK loop (`kc_integration::bare`, 16 shards at a
//! time) draining the stream; then the consumer (default settings, MemoryStore, TRIM_HORIZON, a handler that counts).
//! Each side's time runs from when it knows only the stream's name (client made, nothing listed) to its last record;
//! its CPU seconds (user + system, from /proc/self/stat) over the same span; its peak RSS (VmHWM) at its end. The
//! consumer then keeps running on the drained stream: after a warm-up, its GetRecords calls per shard per second and
//! its CPU use over a window (idle shards); and the calls it abandoned at its client-side timeout over the whole run.
//!
//! `cargo xtask bench` (or `cargo bench -p kc-integration --bench memory_shards`) runs N = 1,000, 4,000, 10,000; `cargo
//! test --benches` runs N = 20 with a short idle window as a quick check (it needs no server: it starts its own).
//! Prints figures; asserts nothing about time.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kc_integration::{bare, observed, MemoryKinesis, Observed};
use kc_test_support::check::quick_bench;
use kinesis_consumer::{Consumer, InitialPosition, MemoryStore, Outcome, Record};

const ROLE: &str = "KC_MEMORY_SHARDS_ROLE";
const SHARDS: &str = "KC_MEMORY_SHARDS_N";
const ENDPOINT: &str = "KC_MEMORY_SHARDS_ENDPOINT";
const QUICK: &str = "KC_MEMORY_SHARDS_QUICK";
const STREAM: &str = "memory-shards";

/// The bare loop's concurrency (the script ran 16 threads).
const BARE_CONCURRENCY: usize = 16;
const RECORDS_PER_SHARD: usize = 10;
/// The consumer's default call timeout (less a little: the timer is not exact).
const CALL_TIMEOUT: Duration = Duration::from_millis(9_900);
/// How long a side may take to drain before it is reported as not drained.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// How long the drained consumer runs before its idle calls are counted, and for how long they are.
fn idle_times(quick: bool) -> (Duration, Duration) {
    if quick {
        (Duration::from_secs(2), Duration::from_secs(2))
    } else {
        (Duration::from_secs(5), Duration::from_secs(10))
    }
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("server") => runtime().block_on(server()),
        Ok("bare") => runtime().block_on(bare_side()),
        Ok("consumer") => runtime().block_on(consumer_side()),
        _ => parent(),
    }
}

/// Every child's runtime: tokio's default multi-thread runtime (a worker per core).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn env_number(name: &str) -> usize {
    kc_test_support::env::count(name).unwrap_or_else(|| panic!("{name} not set"))
}

/// User + system CPU seconds of this process so far (every thread), from /proc/self/stat (in USER_HZ, 100 on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name (which is in parentheses and may hold spaces): state is field 3, utime 14,
    // stime 15.
    let after = &stat[stat.rfind(')').expect("stat format") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields[i].parse::<u64>().expect("stat field");
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Peak resident set size of this process so far, in MB (VmHWM).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmHWM");
    kb / 1024.0
}

/// A child's answer: one line `result key=value ...` on stdout.
fn report(values: &[(&str, String)]) {
    let line: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("result {}", line.join(" "));
}

/// The server child: prints its endpoint, serves until its stdin closes, then prints its call counts.
async fn server() {
    let shards = env_number(SHARDS);
    let server = MemoryKinesis::start(STREAM, shards, RECORDS_PER_SHARD).await.expect("start the memory Kinesis");
    println!("endpoint {}", server.endpoint());
    std::io::stdout().flush().expect("stdout");
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut rest).await.expect("stdin");
    let calls: Vec<(&str, String)> = server.calls().into_iter().map(|(op, n)| (op, n.to_string())).collect();
    report(&calls);
}

/// The bare SDK loop's child.
async fn bare_side() {
    let shards = env_number(SHARDS);
    let client = kc_examples::kinesis_client(&std::env::var(ENDPOINT).expect("endpoint")).await;
    let (start, cpu) = (Instant::now(), cpu_seconds());
    let ids = bare::shard_ids(&client, STREAM).await;
    let seen = tokio::time::timeout(DRAIN_LIMIT, bare::drain(&client, STREAM, &ids, BARE_CONCURRENCY))
        .await
        .expect("the bare loop drained within the limit");
    let (took, cpu) = (start.elapsed(), cpu_seconds() - cpu);
    assert_eq!(seen, shards * RECORDS_PER_SHARD, "the bare loop read every record");
    report(&[
        ("secs", format!("{:.3}", took.as_secs_f64())),
        ("cpu", format!("{cpu:.2}")),
        ("rss", format!("{:.0}", peak_rss_mb())),
    ]);
}

/// The consumer's child.
async fn consumer_side() {
    let shards = env_number(SHARDS);
    let quick = std::env::var(QUICK).is_ok();
    let records = shards * RECORDS_PER_SHARD;
    let client = kc_examples::kinesis_client(&std::env::var(ENDPOINT).expect("endpoint")).await;
    let api = Observed::new(client).timeout_at_least(CALL_TIMEOUT);
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let consumer = Consumer::builder(STREAM)
        .api(api.clone())
        .store(MemoryStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    let token = consumer.shutdown_token();
    let handled = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(OnceLock::<(Duration, f64)>::new());
    let notify = Arc::new(tokio::sync::Notify::new());
    let (h, d, n) = (Arc::clone(&handled), Arc::clone(&drained), Arc::clone(&notify));
    let scan = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                std::hint::black_box(r);
                if h.fetch_add(1, Ordering::Relaxed) + 1 == records {
                    let _ = d.set((start.elapsed(), cpu_seconds() - cpu_start));
                    n.notify_one();
                }
                std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Checkpoint))
            })
            .await
    });
    let in_time = tokio::time::timeout(DRAIN_LIMIT, notify.notified()).await.is_ok();
    let mut values = match drained.get() {
        Some((took, cpu)) if in_time => {
            vec![("secs", format!("{:.3}", took.as_secs_f64())), ("cpu", format!("{cpu:.2}"))]
        }
        _ => vec![("secs", "none".to_owned()), ("handled", handled.load(Ordering::Relaxed).to_string())],
    };
    if in_time {
        let (warm_up, window) = idle_times(quick);
        tokio::time::sleep(warm_up).await;
        let (calls, cpu) = (api.get_records(), cpu_seconds());
        tokio::time::sleep(window).await;
        let calls = api.get_records() - calls;
        let cpu = cpu_seconds() - cpu;
        let secs = window.as_secs_f64();
        values.push(("idle_calls", format!("{:.3}", calls as f64 / shards as f64 / secs)));
        values.push(("idle_cpu", format!("{:.0}", 100.0 * cpu / secs)));
    }
    api.stopping();
    token.cancel();
    scan.await.expect("scan task").expect("scan");
    values.push(("timeouts", api.count(observed::CALL_TIMEOUT).to_string()));
    values.push(("errors", api.total().to_string()));
    values.push(("extra", handled.load(Ordering::Relaxed).saturating_sub(records).to_string()));
    values.push(("rss", format!("{:.0}", peak_rss_mb())));
    report(&values);
}

/// Starts this binary as `role` for `shards` shards.
fn child(role: &str, shards: usize, endpoint: Option<&str>, quick: bool) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    let mut command = Command::new(exe);
    command.env(ROLE, role).env(SHARDS, shards.to_string()).stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(endpoint) = endpoint {
        command.env(ENDPOINT, endpoint);
    }
    if quick {
        command.env(QUICK, "1");
    }
    command.spawn().unwrap_or_else(|e| panic!("start the {role} child: {e}"))
}

/// The `result` line of a child that ran to its end.
fn result(role: &str, child: Child) -> BTreeMap<String, String> {
    let out = child.wait_with_output().expect("child output");
    assert!(out.status.success(), "the {role} child failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("result ")).unwrap_or_else(|| panic!("{role}: no result"));
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn parent() {
    let quick = quick_bench();
    let sizes: &[usize] = if quick { &[20] } else { &[1_000, 4_000, 10_000] };
    let (warm_up, window) = idle_times(quick);
    println!(
        "memory-speed Kinesis (kc_integration::MemoryKinesis, own process), N shards x {RECORDS_PER_SHARD} records at \
         TRIM_HORIZON: time to drain, bare SDK loop ({BARE_CONCURRENCY} shards at a time) vs the consumer (default \
         settings), each in its own process; consumer CPU and peak RSS; idle GetRecords per shard per second and idle \
         CPU over {}s after {}s",
        window.as_secs(),
        warm_up.as_secs()
    );
    println!(
        "  {:>6}  {:>9}  {:>9}  {:>5}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>10}  {:>8}",
        "N",
        "bare",
        "consumer",
        "ratio",
        "bare CPU",
        "cons CPU",
        "bare RSS",
        "cons RSS",
        "timeouts",
        "idle c/sh/s",
        "idle CPU"
    );
    for &n in sizes {
        let mut server = child("server", n, None, quick);
        let mut lines = BufReader::new(server.stdout.take().expect("server stdout")).lines();
        let first = lines.next().expect("server answered").expect("server stdout");
        let endpoint = first.strip_prefix("endpoint ").expect("server endpoint").to_owned();

        let bare = result("bare", child("bare", n, Some(&endpoint), quick));
        let ours = result("consumer", child("consumer", n, Some(&endpoint), quick));
        drop(server.stdin.take()); // the server prints its counts and exits
        let counts = lines.find_map(|l| l.ok()?.strip_prefix("result ").map(str::to_owned)).unwrap_or_default();
        assert!(server.wait().expect("server").success(), "the server child failed");

        let get = |m: &BTreeMap<String, String>, k: &str| m.get(k).cloned().unwrap_or_else(|| "-".to_owned());
        let secs = |m: &BTreeMap<String, String>| m.get("secs").and_then(|s| s.parse::<f64>().ok());
        let ratio = match (secs(&ours), secs(&bare)) {
            (Some(o), Some(b)) => format!("{:.2}", o / b),
            _ => "-".to_owned(),
        };
        let idle_cpu = ours.get("idle_cpu").map_or_else(|| "-".to_owned(), |c| format!("{c}%"));
        println!(
            "  {n:>6}  {:>8}s  {:>8}s  {ratio:>5}  {:>7}s  {:>7}s  {:>5} MB  {:>5} MB  {:>8}  {:>10}  {idle_cpu:>8}",
            get(&bare, "secs"),
            get(&ours, "secs"),
            get(&bare, "cpu"),
            get(&ours, "cpu"),
            get(&bare, "rss"),
            get(&ours, "rss"),
            get(&ours, "timeouts"),
            get(&ours, "idle_calls"),
        );
        let (errors, extra) = (get(&ours, "errors"), get(&ours, "extra"));
        if errors != "0" || extra != "0" || ours.contains_key("handled") {
            println!(
                "          consumer: errors {errors}, records handled beyond N x {RECORDS_PER_SHARD}: {extra}, \
                 handled when not drained: {}",
                get(&ours, "handled")
            );
        }
        println!("          server calls: {counts}");
        if quick {
            assert!(secs(&ours).is_some(), "the consumer drained the stream");
            assert_eq!(extra, "0", "the consumer handled each record once");
        }
    }
}
