//! The reliability suite (issue 7): faults injected between the consumer and kinesalite, kinesalite restarted, the
//! checkpoint database cut off, consumer processes killed with SIGKILL, 1,000 shards, and bad input end to end.
//!
//! Each scenario prints its figures and appends one row (scenario, faults injected, produced, handled, lost,
//! duplicates, result) to the file named by `KC_RELIABILITY_REPORT`, which `cargo xtask reliability` prints as a
//! table. Every wait is bounded: a hang fails the test instead of blocking CI.

// Printing the figures is this suite's job.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kc_integration::report::{tally, Row};
use kc_integration::{
    create_stream, example_bin, kinesis, kinesis_endpoint, new_stream, postgres_url, put_numbered, unique_stream,
    unique_table, CutProxy, Fault, FaultPlan, FaultProxy, Observed, SplitMix64,
};
use kc_test_support::check::lock;
use kc_test_support::emulator::{Emulator, Launch, KINESALITE};
use kc_test_support::{checkpoint, spawn_collecting, Collecting, Seen, Wait};
use kinesis_consumer::{
    Checkpoint, CheckpointStore, Consumer, ErrorKind, InitialPosition, MemoryStore, Outcome, Record, SequenceNumber,
    ShardKey,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

// ---------------------------------------------------------------------------------------------------------------
// Reporting

// ---------------------------------------------------------------------------------------------------------------
// Helpers

type ScanTask = tokio::task::JoinHandle<Result<(), kinesis_consumer::Error>>;

/// Starts `consumer.scan` with a handler that logs every record (sleeping `delay` per record) and checkpoints it;
/// returns the log (with the position of the last record per shard) and the scan's task.
fn scan_logging(consumer: &Consumer, delay: Duration) -> (Seen, ScanTask) {
    let Collecting { seen, task, .. } = spawn_collecting(consumer.clone(), delay, checkpoint);
    (seen, task)
}

/// Polls `done` every 50 ms for up to `timeout`; whether it held.
async fn until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    Wait::real(timeout).until(done).await
}

/// Cancels the scan and waits (bounded) for its result.
async fn stop(consumer: &Consumer, task: ScanTask) -> Result<(), kinesis_consumer::Error> {
    consumer.shutdown_token().cancel();
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(joined) => joined.expect("scan task panicked"),
        Err(_) => panic!("the scan did not stop within 30 s of its cancellation"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// 1 and 2: faults injected by the proxy

struct ProxyRun {
    scenario: &'static str,
    records: usize,
    shards: i32,
    plan: FaultPlan,
    call_timeout: Duration,
    max_records: i32,
}

/// Produces `records` records straight into kinesalite, consumes them through a [`FaultProxy`] with `plan`, and
/// checks: none lost, none twice, the scan never failed, and every shard's checkpoint is its last record.
async fn consume_through_faults(run: ProxyRun) {
    let started = Instant::now();
    let client = kinesis().await;
    let stream = unique_stream("rel-faults");
    create_stream(&client, &stream, run.shards).await.expect("create stream");
    let produced = put_numbered(&client, &stream, "r", 0..run.records, 997).await.expect("produce");
    let produce_time = started.elapsed();

    let proxy = FaultProxy::start(&kinesis_endpoint(), run.plan).await.expect("proxy");
    // The consumer's client is configured as a user's would be (the SDK's default retries), only pointed at the proxy.
    let api = Observed::new(kc_examples::kinesis_client(&proxy.endpoint()).await);
    let store = Arc::new(MemoryStore::new());
    let consumer = Consumer::builder(&stream)
        .api(api.clone())
        .shared_store(store.clone())
        .app_name("rel")
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(run.max_records)
        .scan_interval(Duration::from_millis(100))
        .call_timeout(run.call_timeout)
        .discovery_interval(Duration::from_secs(2))
        .build()
        .await
        .expect("build consumer");
    let consume_started = Instant::now();
    let (log, task) = scan_logging(&consumer, Duration::ZERO);
    let all = until(Duration::from_secs(300), || log.len() >= run.records || task.is_finished()).await;
    let consume_time = consume_started.elapsed();
    // Duplicates would come now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.stopping();
    let result = stop(&consumer, task).await;

    let counts = proxy.counts();
    let (lost, duplicates) = tally(&produced, &log.data());
    let mut checkpoints_ok = true;
    for (shard, last) in log.last_checkpoints() {
        let stored = store.get(&ShardKey::new("rel", stream.as_str(), shard.as_str())).await.expect("memory store");
        if stored.as_ref() != Some(&last) {
            checkpoints_ok = false;
            println!("shard {shard}: checkpoint {stored:?}, last handled {last:?}");
        }
    }
    let calls = counts.forwarded_total() + counts.total();
    println!(
        "{}: produced {} in {produce_time:?}, consumed in {consume_time:?}; {} calls to the proxy, {} faults injected \
         ({:.1}%: {}), {} reached the consumer ({}), the rest absorbed by the SDK's retries; scan result {:?}",
        run.scenario,
        run.records,
        calls,
        counts.total(),
        100.0 * counts.total() as f64 / calls.max(1) as f64,
        counts.summary(),
        api.total(),
        api.summary(),
        result.as_ref().map_err(ToString::to_string),
    );
    let ok = all && lost == 0 && duplicates == 0 && result.is_ok() && checkpoints_ok && counts.total() > 0;
    Row {
        scenario: run.scenario.into(),
        faults: format!("{} ({}); {} reached consumer", counts.total(), counts.summary(), api.total()),
        produced: produced.len(),
        handled: log.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(all, "not every record was handled within 300 s: {} of {}", log.len(), run.records);
    assert_eq!((lost, duplicates), (0, 0), "lost, duplicates");
    assert!(result.is_ok(), "a transient fault stopped the scan: {result:?}");
    assert!(checkpoints_ok, "every shard's checkpoint is its last handled record");
    assert!(counts.total() > 0, "faults were injected");
}

/// Scenario 1: throttling bursts (ProvisionedThroughputExceeded, LimitExceeded) and 500/503 answers: bursts of 1 to 3
/// calls starting at 12% of the calls (about 20% of the calls in all) while 100k records are consumed from 4 shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1_throttling_and_5xx_lose_nothing() {
    let faults = [Fault::Throughput, Fault::LimitExceeded, Fault::Status500, Fault::Status503];
    consume_through_faults(ProxyRun {
        scenario: "1 throttling+5xx (bursts)",
        records: 100_000,
        shards: 4,
        plan: FaultPlan::rate(1, 0.12, &faults).burst(3),
        call_timeout: Duration::from_secs(10),
        max_records: 1000,
    })
    .await;
}

/// Scenario 1b: answers held back past the consumer's call timeout, and connections dropped after the request, at
/// 10% of the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s1b_slow_answers_and_dropped_connections_lose_nothing() {
    consume_through_faults(ProxyRun {
        scenario: "1b slow+dropped (10%)",
        records: 10_000,
        shards: 4,
        plan: FaultPlan::rate(2, 0.1, &[Fault::Slow, Fault::Drop]).slow_delay(Duration::from_millis(2500)),
        call_timeout: Duration::from_secs(1),
        max_records: 100,
    })
    .await;
}

/// Scenario 2: ExpiredIteratorException answers to 25% of the GetRecords calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2_expired_iterators_lose_nothing() {
    consume_through_faults(ProxyRun {
        scenario: "2 expired iterators (25%)",
        records: 20_000,
        shards: 4,
        plan: FaultPlan::rate(3, 0.25, &[Fault::ExpiredIterator]).only(&["GetRecords"]),
        call_timeout: Duration::from_secs(10),
        max_records: 200,
    })
    .await;
}

// ---------------------------------------------------------------------------------------------------------------
// 3: kinesalite restarted

/// A kinesalite process of this test's own, on 127.0.0.1, keeping its state in a folder (LevelDB).
struct OwnKinesalite(Emulator);

fn free_port() -> u16 {
    kc_test_support::net::free_port().expect("a free port on 127.0.0.1")
}

fn temp_dir(what: &str) -> PathBuf {
    kc_test_support::names::temp_dir(&format!("rel-{what}"))
}

impl OwnKinesalite {
    /// Starts kinesalite on `port` with its LevelDB in `path`, and waits (30 s at most) until it accepts connections.
    /// Its log is `$KC_EMULATORS_DIR/run/kinesalite-<port>.log`.
    async fn start(port: u16, path: &Path) -> Self {
        let path = path.to_owned();
        let started = tokio::task::spawn_blocking(move || {
            // Where `require('kinesalite')` works.
            let modules = PathBuf::from(kc_test_support::env::required("KC_EMULATORS_DIR"));
            Launch::new(&KINESALITE, &modules, &modules.join("run")).port(port).state_dir(&path).start()
        });
        let emulator = started.await.expect("start kinesalite");
        Self(emulator.unwrap_or_else(|e| panic!("kinesalite on port {port}: {e}")))
    }

    fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    /// SIGKILL, and reaped.
    async fn kill(self) {
        tokio::task::spawn_blocking(move || drop(self)).await.expect("kill kinesalite");
    }
}

fn consumer_at(endpoint_client: aws_sdk_kinesis::Client, stream: &str) -> kinesis_consumer::ConsumerBuilder {
    Consumer::builder(stream)
        .client(endpoint_client)
        .app_name("rel")
        .initial_position(InitialPosition::TrimHorizon)
        .scan_interval(Duration::from_millis(50))
        .discovery_interval(Duration::from_secs(1))
        .call_timeout(Duration::from_secs(3))
        .retry_backoff(Duration::from_millis(100), Duration::from_secs(1))
}

/// Scenario 3a: kinesalite (state on disk) is killed with SIGKILL while the consumer reads, and started again on the
/// same port and folder: the stream is still there, the consumer rides out the outage, loses and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3a_kinesalite_restarted_with_its_state_kept() {
    let dir = temp_dir("kept");
    let port = free_port();
    let server = OwnKinesalite::start(port, &dir).await;
    let client = kc_examples::kinesis_client(&server.endpoint()).await;
    let stream = unique_stream("rel-restart");
    create_stream(&client, &stream, 2).await.expect("create stream");
    let mut produced = put_numbered(&client, &stream, "a", 0..2000, 101).await.expect("produce");

    let api = Observed::new(client.clone());
    // Batches of 100 records, 1 ms per record: the consumer calls GetRecords about every 0.1 s per shard, so the kill
    // lands mid-stream and the outage is felt.
    let consumer = consumer_at(client.clone(), &stream).api(api.clone()).max_records(100).build().await.expect("build");
    let (log, task) = scan_logging(&consumer, Duration::from_millis(1));
    assert!(until(Duration::from_secs(60), || log.len() >= 600).await, "600 records before the kill");
    let at_kill = log.len();
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_outage = log.len() - at_kill;
    let server = OwnKinesalite::start(port, &dir).await;
    let kept = client.describe_stream_summary().stream_name(&stream).send().await;
    assert!(kept.is_ok(), "kinesalite --path kept the stream across the restart: {kept:?}");
    produced.extend(put_numbered(&client, &stream, "b", 0..2000, 101).await.expect("produce after restart"));
    let all = until(Duration::from_secs(120), || log.len() >= produced.len() || task.is_finished()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.stopping();
    let result = stop(&consumer, task).await;
    server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (lost, duplicates) = tally(&produced, &log.data());
    println!(
        "3a: {at_kill} handled at the kill, {during_outage} more from batches in hand during the 2 s outage; failed \
         calls the consumer retried: {}; scan {:?}",
        api.summary(),
        result.as_ref().map_err(ToString::to_string)
    );
    let ok = all && lost == 0 && duplicates == 0 && result.is_ok() && api.total() > 0;
    Row {
        scenario: "3a kinesalite restart, state kept".into(),
        faults: format!("1 SIGKILL + restart; {} failed calls retried", api.total()),
        produced: produced.len(),
        handled: log.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(all, "every record handled after the restart: {} of {}", log.len(), produced.len());
    assert_eq!((lost, duplicates), (0, 0), "lost, duplicates");
    assert!(result.is_ok(), "the restart stopped the scan: {result:?}");
    assert!(api.total() > 0, "the consumer saw the outage (failed calls)");
}

/// Scenario 3b: kinesalite comes back without its state (the stream is gone): the scan ends with a StreamNotFound
/// error, promptly, instead of retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3b_kinesalite_restarted_without_the_stream_is_a_clear_error() {
    let port = free_port();
    let (dir, empty) = (temp_dir("lost"), temp_dir("empty"));
    let server = OwnKinesalite::start(port, &dir).await;
    let client = kc_examples::kinesis_client(&server.endpoint()).await;
    let stream = unique_stream("rel-gone");
    create_stream(&client, &stream, 2).await.expect("create stream");
    let produced = put_numbered(&client, &stream, "g", 0..500, 101).await.expect("produce");
    let consumer = consumer_at(client.clone(), &stream).build().await.expect("build");
    let (log, task) = scan_logging(&consumer, Duration::ZERO);
    assert!(until(Duration::from_secs(60), || log.len() >= produced.len()).await, "records before the restart");
    server.kill().await;
    let server = OwnKinesalite::start(port, &empty).await;
    let restarted = Instant::now();
    let ended = until(Duration::from_secs(60), || task.is_finished()).await;
    let took = restarted.elapsed();
    let result = stop(&consumer, task).await;
    server.kill().await;
    for d in [dir, empty] {
        let _ = std::fs::remove_dir_all(d);
    }
    let (lost, duplicates) = tally(&produced, &log.data());
    let kind = result.as_ref().err().map(kinesis_consumer::Error::kind);
    println!("3b: scan ended {took:?} after the empty restart with {:?}", result.as_ref().map_err(ToString::to_string));
    let ok = ended && kind == Some(ErrorKind::StreamNotFound) && lost == 0;
    Row {
        scenario: "3b kinesalite restart, stream gone".into(),
        faults: format!("1 restart empty -> {kind:?} in {:.1}s", took.as_secs_f64()),
        produced: produced.len(),
        handled: log.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(ended, "the scan must end (not spin) when the stream is gone");
    assert_eq!(kind, Some(ErrorKind::StreamNotFound), "{result:?}");
}

/// What a scan did after its stream was recreated: ended with an error of this kind, or delivered every record of the
/// new stream (`None`); panics if it did neither within 30 s (a hang or a spin without progress).
async fn after_recreation(
    consumer: &Consumer,
    task: ScanTask,
    log: &Seen,
    new: &[String],
    api: &Observed,
) -> Option<ErrorKind> {
    let ended = until(Duration::from_secs(30), || {
        let data = log.data();
        task.is_finished() || new.iter().all(|n| data.contains(n))
    })
    .await;
    assert!(
        ended,
        "after the recreation the scan neither failed nor delivered the new stream within 30 s: {} handled ({:?}..); \
         failed calls {}",
        log.len(),
        log.data().first(),
        api.summary()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(consumer, task).await.err().map(|e| {
        println!("3c: scan error: {e}: {:?}", std::error::Error::source(&e).map(ToString::to_string));
        e.kind()
    })
}

/// Scenario 3c: the stream is deleted and created again under the same name while the consumer is cut off (every
/// call dropped by the proxy), then the consumer is let through; and a new consumer starts from the old checkpoints.
/// Either is acceptable only as a typed error, or as every record of the new stream delivered once; kinesalite's
/// iterators carry no stream identity, so with it the running consumer reads on into the new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3c_stream_recreated_under_the_same_name() {
    let (client, stream) = new_stream("rel-recreated", 2).await;
    let old = put_numbered(&client, &stream, "old-", 0..300, 13).await.expect("produce");
    let proxy = FaultProxy::start(&kinesis_endpoint(), FaultPlan::none()).await.expect("proxy");
    let store = Arc::new(MemoryStore::new());
    let api = Observed::new(kc_examples::kinesis_client(&proxy.endpoint()).await);
    let build = |store: Arc<MemoryStore>| {
        let (api, stream) = (api.clone(), stream.clone());
        async move { consumer_at(kinesis().await, &stream).api(api).shared_store(store).build().await.expect("build") }
    };
    let consumer = build(store).await;
    let (log, task) = scan_logging(&consumer, Duration::ZERO);
    assert!(until(Duration::from_secs(60), || log.len() >= old.len()).await, "the old records");

    // The old stream's checkpoints, for a consumer started after the recreation.
    let old_checkpoints = Arc::new(MemoryStore::new());
    for (shard, cp) in log.last_checkpoints() {
        let key = ShardKey::new("rel", stream.as_str(), shard.as_str());
        old_checkpoints.set(&key, cp).await.expect("memory store");
    }
    proxy.set_plan(FaultPlan::rate(0, 1.0, &[Fault::Drop]));
    client.delete_stream().stream_name(&stream).send().await.expect("delete");
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while client.describe_stream_summary().stream_name(&stream).send().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    assert!(gone, "the stream was deleted");
    // Kinesalite tells streams apart by their creation second (as part of each sequence number): a stream recreated
    // within the same second takes the old checkpoints as its own and skips records. Real Kinesis streams differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_stream(&client, &stream, 2).await.expect("create again");
    let new = put_numbered(&client, &stream, "new-", 0..300, 13).await.expect("produce again");
    proxy.set_plan(FaultPlan::none());
    let dropped = proxy.counts().total();
    let running = after_recreation(&consumer, task, &log, &new, &api).await;

    // A new consumer, starting from the checkpoints of the old stream.
    let restarted = build(old_checkpoints).await;
    let (log2, task) = scan_logging(&restarted, Duration::ZERO);
    let from_checkpoints = after_recreation(&restarted, task, &log2, &new, &api).await;

    let mut produced = old.clone();
    produced.extend(new.iter().cloned());
    let (lost, duplicates) = tally(&produced, &log.data());
    let (lost2, duplicates2) = tally(&new, &log2.data());
    let outcome = |kind: Option<ErrorKind>, lost: usize, dups: usize| match kind {
        Some(k) => format!("error {k:?}"),
        None => format!("read on: new stream lost {lost}, twice {dups}"),
    };
    let summary = format!(
        "running consumer: {}; new consumer from old checkpoints: {}",
        outcome(running, lost, duplicates),
        outcome(from_checkpoints, lost2, duplicates2)
    );
    println!("3c: {dropped} calls dropped while the stream was recreated; {summary}");
    let acceptable = |kind: Option<ErrorKind>, lost: usize, dups: usize| match kind {
        Some(k) => matches!(k, ErrorKind::StreamNotFound | ErrorKind::Kinesis),
        None => lost == 0 && dups == 0,
    };
    let ok = acceptable(running, lost, duplicates) && acceptable(from_checkpoints, lost2, duplicates2);
    Row {
        scenario: "3c stream deleted + recreated".into(),
        faults: summary.clone(),
        produced: produced.len(),
        handled: log.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(ok, "{summary}");
}

// ---------------------------------------------------------------------------------------------------------------
// 4: checkpoint database unavailable

/// The checkpoints of `namespace` as stored, read past the proxy.
async fn stored_checkpoints(pool: &sqlx::PgPool, table: &str, namespace: &str) -> BTreeMap<String, Checkpoint> {
    let sql = format!(
        "SELECT shard_id, sequence_number::text, sub_sequence_number, finished FROM {table} WHERE namespace = $1"
    );
    let rows: Vec<(String, String, Option<i64>, bool)> =
        sqlx::query_as(&sql).bind(namespace).fetch_all(pool).await.expect("read checkpoints");
    rows.into_iter()
        .map(|(shard, seq, sub, finished)| {
            let cp = if finished {
                Checkpoint::ShardEnd
            } else {
                Checkpoint::At {
                    sequence: SequenceNumber::parse(seq).expect("stored sequence"),
                    sub_sequence: sub.map(|s| u64::try_from(s).expect("sub-sequence")),
                }
            };
            (shard, cp)
        })
        .collect()
}

/// Scenario 4: PostgreSQL (through a [`CutProxy`]) is unreachable for 20 s while records keep coming and the store
/// flushes every 500 ms. Documented choice (the stores' design): the consumer keeps consuming, checkpoints stay
/// pending in the store, and the first flush after the outage writes them; a sampler reading the table directly every
/// 200 ms sees no checkpoint move backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_checkpoint_database_outage_keeps_consuming_and_catches_up() {
    let (client, stream) = new_stream("rel-dbcut", 2).await;
    let url = postgres_url();
    let direct = sqlx::PgPool::connect(&url).await.expect("connect");
    let table = unique_table("kc_rel_cut");
    let pg = url.trim_start_matches("postgres://").split('/').next().and_then(|s| s.split('@').nth(1));
    let proxy = CutProxy::start(pg.expect("host:port in DATABASE_URL_POSTGRES")).await.expect("proxy");
    let proxied_url = url.replacen(pg.unwrap_or_default(), &proxy.addr().to_string(), 1);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&proxied_url)
        .await
        .expect("connect through the proxy");
    let store = kinesis_consumer::postgres::PostgresStore::builder(pool, &table)
        .flush_interval(Duration::from_millis(500))
        .build()
        .expect("store");
    store.create_table_if_missing().await.expect("create table");
    let store = Arc::new(store);
    let consumer = Consumer::builder(&stream)
        .client(kinesis().await)
        .shared_store(store.clone())
        .app_name("rel")
        .initial_position(InitialPosition::TrimHorizon)
        .scan_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("build");
    let namespace = format!("rel-{stream}");

    // Records keep coming: 40 every 500 ms for 28 s.
    let producer = {
        let (client, stream) = (client.clone(), stream.clone());
        tokio::spawn(async move {
            let mut produced = Vec::new();
            for round in 0..56 {
                let batch = put_numbered(&client, &stream, &format!("c{round}-"), 0..40, 7).await.expect("produce");
                produced.extend(batch);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            produced
        })
    };
    // The sampler: every stored checkpoint compared with the one before.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pool, table, namespace, sampling) = (direct.clone(), table.clone(), namespace.clone(), sampling.clone());
        tokio::spawn(async move {
            let (mut samples, mut regressions) = (0u64, Vec::new());
            let mut previous: BTreeMap<String, Checkpoint> = BTreeMap::new();
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                for (shard, cp) in stored_checkpoints(&pool, &table, &namespace).await {
                    samples += 1;
                    if let Some(before) = previous.get(&shard) {
                        if cp < *before {
                            regressions.push(format!("{shard}: {before:?} -> {cp:?}"));
                        }
                    }
                    previous.insert(shard, cp);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (samples, regressions)
        })
    };
    let (log, task) = scan_logging(&consumer, Duration::ZERO);
    assert!(until(Duration::from_secs(30), || log.len() >= 200).await, "consuming before the outage");
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.cut();
    let at_cut = log.len();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = log.len() - at_cut;
    let before_restore = stored_checkpoints(&direct, &table, &namespace).await;
    let behind_at_restore =
        log.last_checkpoints().iter().filter(|(s, last)| before_restore.get(*s) < Some(*last)).count();
    proxy.restore();
    let restored = Instant::now();
    let produced = tokio::time::timeout(Duration::from_secs(60), producer).await.expect("producer").expect("task");
    let all = until(Duration::from_secs(60), || log.len() >= produced.len() || task.is_finished()).await;
    // The pending checkpoints reach the table by the background flush, while the consumer still runs.
    let mut caught_up = false;
    let catch_up_start = Instant::now();
    while catch_up_start.elapsed() < Duration::from_secs(30) && !task.is_finished() {
        let stored = stored_checkpoints(&direct, &table, &namespace).await;
        if log.last_checkpoints().iter().all(|(s, last)| stored.get(s) == Some(last)) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up = restored.elapsed();
    let result = stop(&consumer, task).await;
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let (samples, regressions) =
        tokio::time::timeout(Duration::from_secs(10), sampler).await.expect("sampler").expect("t");
    store.shutdown().await.expect("final flush");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&direct).await.expect("drop");

    let (lost, duplicates) = tally(&produced, &log.data());
    println!(
        "4: {during} records handled during the 20 s outage; {behind_at_restore} shard(s) with pending checkpoints at \
         the restore; stored checkpoints caught up {catch_up:?} after it: {caught_up}; {samples} samples, {} \
         regressions; scan {:?}",
        regressions.len(),
        result.as_ref().map_err(ToString::to_string)
    );
    let ok = all
        && lost == 0
        && duplicates == 0
        && result.is_ok()
        && caught_up
        && regressions.is_empty()
        && during > 0
        && behind_at_restore > 0;
    Row {
        scenario: "4 PostgreSQL cut 20 s (keep consuming)".into(),
        faults: format!("20 s outage; {behind_at_restore} shards pending; {} regressions/{samples}", regressions.len()),
        produced: produced.len(),
        handled: log.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(all, "every record handled: {} of {}", log.len(), produced.len());
    assert_eq!((lost, duplicates), (0, 0), "lost, duplicates");
    assert!(result.is_ok(), "a database outage stopped the scan: {result:?}");
    assert!(during > 0, "the consumer kept consuming during the outage");
    assert!(behind_at_restore > 0, "checkpoints were pending when the database came back");
    assert!(caught_up, "the pending checkpoints were written after the outage");
    assert!(regressions.is_empty(), "checkpoints moved backwards: {regressions:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 5: kill -9

/// Collects a child's stdout lines into a shared vector, in the background.
fn collect_lines(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("stdout piped");
    let l = lines.clone();
    let task = tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lock(&l).push(line);
        }
    });
    (lines, task)
}

/// The shard and position of every record of `stream`, by data.
async fn positions(client: &aws_sdk_kinesis::Client, stream: &str) -> HashMap<String, (String, Checkpoint)> {
    let mut out = HashMap::new();
    let shards = client.list_shards().stream_name(stream).send().await.expect("list shards");
    for shard in shards.shards() {
        let it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator");
        let mut iterator = it.shard_iterator().map(str::to_owned);
        while let Some(i) = iterator {
            let out_batch = client.get_records().shard_iterator(i).send().await.expect("get records");
            if out_batch.records().is_empty() {
                break;
            }
            for r in out_batch.records() {
                let seq = SequenceNumber::parse(r.sequence_number()).expect("sequence");
                let data = String::from_utf8_lossy(r.data().as_ref()).into_owned();
                out.insert(data, (shard.shard_id().to_owned(), Checkpoint::at(seq)));
            }
            iterator = out_batch.next_shard_iterator().map(str::to_owned);
        }
    }
    out
}

fn kill9(child: &Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill").args(["-9", &pid]).status().expect("kill");
    assert!(status.success(), "kill -9 {pid}");
}

/// Scenario 5a: `consumer-postgres` (batches of 50, flushes every 200 ms) is killed with SIGKILL at 20 random points (seeded) and
/// restarted each time, then run to the end. Every record is printed at least once, and every record printed again
/// was after the checkpoint stored when its first printer was killed (duplicates <= records since the last flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5a_kill_9_twenty_times_at_least_once() {
    let (client, stream) = new_stream("rel-kill", 2).await;
    let produced = put_numbered(&client, &stream, "k", 0..6000, 101).await.expect("produce");
    let where_is = positions(&client, &stream).await;
    assert_eq!(where_is.len(), produced.len());
    let url = postgres_url();
    let direct = sqlx::PgPool::connect(&url).await.expect("connect");
    let table = unique_table("kc_rel_kill");
    let namespace = format!("kc-example-consumer-{stream}");
    let run = || {
        Command::new(example_bin("consumer-postgres"))
            .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
            .args(["--database-url", &url, "--table", &table, "--flush-interval-ms", "200", "--delay-ms", "2"])
            .args(["--max-records", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn consumer-postgres")
    };
    let mut rng = SplitMix64::new(5);
    let mut printed_by_run: Vec<Vec<String>> = Vec::new();
    let mut stored_at_kill: Vec<BTreeMap<String, Checkpoint>> = Vec::new();
    for _ in 0..20 {
        let mut child = run();
        let (lines, reader) = collect_lines(&mut child);
        tokio::time::sleep(Duration::from_millis(rng.range(300, 2500))).await;
        // The table exists once the first run got going; before that nothing is stored.
        let stored = match sqlx::query(&format!("SELECT 1 FROM {table} LIMIT 1")).execute(&direct).await {
            Ok(_) => stored_checkpoints(&direct, &table, &namespace).await,
            Err(_) => BTreeMap::new(),
        };
        kill9(&child);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("killed process exits");
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        stored_at_kill.push(stored);
        printed_by_run.push(lock(&lines).clone());
    }
    // The last run goes to the end.
    let mut child = run();
    let (lines, reader) = collect_lines(&mut child);
    let seen_before: std::collections::HashSet<String> = printed_by_run.iter().flatten().cloned().collect();
    let remaining = produced.iter().filter(|p| !seen_before.contains(*p)).count();
    let finished = until(Duration::from_secs(120), || {
        let l = lock(&lines);
        l.iter().filter(|x| !seen_before.contains(*x)).count() >= remaining
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = child.id().expect("running").to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("graceful stop").expect("wait");
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    printed_by_run.push(lock(&lines).clone());
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&direct).await.expect("drop");

    let all: Vec<String> = printed_by_run.iter().flatten().cloned().collect();
    let (lost, duplicates) = tally(&produced, &all);
    // Each record printed by run k and printed again later must be after run k's stored checkpoint of its shard.
    let mut bound_violations = Vec::new();
    let mut since_flush_total = 0;
    for (k, printed) in printed_by_run.iter().enumerate().take(20) {
        let later: std::collections::HashSet<&String> = printed_by_run[k + 1..].iter().flatten().collect();
        for data in printed {
            let Some((shard, position)) = where_is.get(data) else {
                bound_violations.push(format!("run {k}: printed {data:?}, which is no record of the stream"));
                continue;
            };
            let after_flush = stored_at_kill[k].get(shard).is_none_or(|stored| position > stored);
            if after_flush {
                since_flush_total += 1;
            }
            if later.contains(data) && !after_flush {
                bound_violations.push(format!("run {k}: {data} was checkpointed, yet printed again"));
            }
        }
    }
    let per_run: Vec<usize> = printed_by_run.iter().map(Vec::len).collect();
    println!(
        "5a: records printed per run {per_run:?}; duplicates {duplicates} <= {since_flush_total} printed after the \
         stored checkpoint at each kill; last run exit {status}"
    );
    // Progress was saved between kills: the last run did not start from the beginning.
    let resumed = printed_by_run.last().map_or(0, Vec::len) < produced.len();
    let ok = finished
        && lost == 0
        && bound_violations.is_empty()
        && duplicates <= since_flush_total
        && status.success()
        && resumed;
    Row {
        scenario: "5a kill -9 x20, consumer-postgres".into(),
        faults: format!("20 SIGKILL; dup bound {since_flush_total}"),
        produced: produced.len(),
        handled: all.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(finished, "the last run printed every remaining record within 120 s");
    assert_eq!(lost, 0, "every record handled at least once");
    assert!(bound_violations.is_empty(), "{bound_violations:?}");
    assert!(duplicates <= since_flush_total);
    assert!(status.success(), "the last run stopped gracefully: {status}");
    assert!(resumed, "checkpoints were saved between the kills: the last run resumed");
}

/// Scenario 5b: `consumer-postgres-tx` (each record's row and its checkpoint in one transaction) killed with SIGKILL at
/// 20 random points and restarted: the events table holds every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5b_kill_9_twenty_times_exactly_once_with_transactional_checkpoints() {
    let (client, stream) = new_stream("rel-killtx", 2).await;
    let produced = put_numbered(&client, &stream, "x", 0..2000, 101).await.expect("produce");
    let url = postgres_url();
    let direct = sqlx::PgPool::connect(&url).await.expect("connect");
    let (table, events) = (unique_table("kc_rel_txcp"), unique_table("kc_rel_txev"));
    let run = || {
        Command::new(example_bin("consumer-postgres-tx"))
            .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
            .args(["--database-url", &url, "--table", &table, "--events-table", &events, "--delay-ms", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn consumer-postgres-tx")
    };
    let count_sql = format!("SELECT count(*), count(DISTINCT data) FROM {events}");
    let count = || async { sqlx::query_as::<_, (i64, i64)>(&count_sql).fetch_one(&direct).await.unwrap_or((0, 0)) };
    let mut rng = SplitMix64::new(55);
    let mut per_kill = Vec::new();
    for _ in 0..20 {
        let mut child = run();
        let (_lines, reader) = collect_lines(&mut child);
        tokio::time::sleep(Duration::from_millis(rng.range(200, 1200))).await;
        kill9(&child);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("killed process exits");
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        per_kill.push(count().await.0);
    }
    let mut child = run();
    let (_lines, reader) = collect_lines(&mut child);
    let want = produced.len() as i64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(120) && count().await.0 < want {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let last = count().await;
    let pid = child.id().expect("running").to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("graceful stop").expect("wait");
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let distinct_produced: i64 = {
        let sql = format!("SELECT count(*) FROM {events} WHERE data = ANY($1)");
        sqlx::query_scalar(&sql).bind(&produced).fetch_one(&direct).await.expect("count produced")
    };
    for t in [&table, &events] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {t}")).execute(&direct).await.expect("drop");
    }
    let (rows, distinct) = (last.0 as usize, last.1 as usize);
    let lost = produced.len().saturating_sub(distinct);
    let duplicates = rows - distinct;
    println!("5b: event rows after each kill {per_kill:?}; final {rows} rows, {distinct} distinct; exit {status}");
    // Most kills landed before the end: the table was still filling up (or the process still starting).
    let mid_stream = per_kill.iter().filter(|n| (**n as usize) < produced.len()).count();
    let ok = lost == 0 && duplicates == 0 && distinct_produced == want && status.success() && mid_stream >= 10;
    Row {
        scenario: "5b kill -9 x20, transactional".into(),
        faults: format!("20 SIGKILL, {mid_stream} before the end"),
        produced: produced.len(),
        handled: rows,
        lost,
        duplicates,
        ok,
    }
    .report();
    assert_eq!((lost, duplicates), (0, 0), "exactly once: lost, duplicates");
    assert_eq!(distinct_produced, want);
    assert!(status.success(), "the last run stopped gracefully: {status}");
    assert!(mid_stream >= 10, "at least 10 of the kills landed while records were being written: {per_kill:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// 6: 1,000 shards

/// The peak resident set of process `pid` (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Scenario 6: one `consumer` process reads a 1,000-shard stream (issue 13; 200 shards before): every record arrives, the process stops gracefully
/// on SIGTERM (no deadlock), prints no panic; its peak RSS is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_a_thousand_shards_on_one_consumer() {
    let (client, stream) = new_stream("rel-1000", 1_000).await;
    let produced = put_numbered(&client, &stream, "s", 0..20_000, 20_000).await.expect("produce");
    let started = Instant::now();
    let mut child = Command::new(example_bin("consumer"))
        .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn consumer");
    let pid = child.id().expect("pid");
    let (lines, reader) = collect_lines(&mut child);
    let stderr = child.stderr.take().expect("stderr");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let mut reader = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let all = until(Duration::from_secs(180), || lock(&lines).len() >= produced.len()).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = peak_rss_kib(pid);
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill -TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let stopped = matches!(&status, Ok(Ok(s)) if s.success());
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let stderr =
        tokio::time::timeout(Duration::from_secs(10), errors).await.ok().and_then(Result::ok).unwrap_or_default();
    let printed = lock(&lines).clone();
    let (lost, duplicates) = tally(&produced, &printed);
    let panicked = stderr.contains("panicked");
    let timeouts = stderr.matches("client-side timeout").count();
    // Its 1,000 shards count against kinesalite's shard limit for every later test.
    let _ = client.delete_stream().stream_name(&stream).send().await;
    println!(
        "6: 1,000 shards, {} records in {took:?}; peak RSS {} KiB; SIGTERM -> {status:?}; stderr lines {}",
        printed.len(),
        peak.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        stderr.lines().count()
    );
    let ok = all && lost == 0 && duplicates == 0 && stopped && !panicked && timeouts == 0;
    Row {
        scenario: "6 1,000 shards, one process".into(),
        faults: format!(
            "peak RSS {} MiB; {timeouts} client-side timeouts",
            peak.map_or_else(|| "?".to_owned(), |p| format!("{:.1}", p as f64 / 1024.0))
        ),
        produced: produced.len(),
        handled: printed.len(),
        lost,
        duplicates,
        ok,
    }
    .report();
    assert!(all, "every record within 180 s: {} of {}", printed.len(), produced.len());
    assert_eq!((lost, duplicates), (0, 0));
    assert!(stopped, "graceful stop within 30 s of SIGTERM (no deadlock): {status:?}");
    assert!(!panicked, "the consumer panicked:\n{stderr}");
    assert_eq!(timeouts, 0, "client-side timeouts logged:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------------------------
// 7: bad input

/// A KPL aggregate: magic, `protobuf`, MD5 of `protobuf`.
fn aggregate_of(protobuf: &[u8]) -> Bytes {
    use md5::{Digest as _, Md5};
    let mut out = vec![0xF3, 0x89, 0x9A, 0xC2];
    out.extend_from_slice(protobuf);
    out.extend_from_slice(&Md5::digest(protobuf));
    Bytes::from(out)
}

/// Corrupt aggregates and an empty record between good records, consumed with aggregation on: each corrupt one is
/// passed through as one record (the documented default) or, with strict deaggregation, stops the scan with a
/// Deaggregation error; the empty record is delivered as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7a_corrupt_aggregates_and_empty_records() {
    let (client, stream) = new_stream("rel-bad", 1).await;
    let mut rng = SplitMix64::new(7);
    let mut good = kinesis_consumer::deagg::Aggregator::new();
    for i in 0..3 {
        good.add("k", None, format!("user-{i}"));
    }
    let good = good.finish();
    let mut wrong_md5 = good.to_vec();
    if let Some(last) = wrong_md5.last_mut() {
        *last ^= 0xFF;
    }
    let mut random = vec![0xF3, 0x89, 0x9A, 0xC2];
    random.extend((0..200).map(|_| rng.next_u64() as u8));
    // Field 1 (partition key table), length-delimited, declaring 2^32-1 bytes; field 3 (record) declaring 2^62.
    let huge_key = aggregate_of(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, b'k']);
    let huge_record = aggregate_of(&[0x0A, 0x01, b'k', 0x1A, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, 0]);
    let inputs: Vec<(&str, Bytes)> = vec![
        ("plain-0", Bytes::from_static(b"plain-0")),
        ("wrong md5", Bytes::from(wrong_md5)),
        ("random after magic", Bytes::from(random)),
        ("huge key length", huge_key),
        ("huge record length", huge_record),
        ("magic only", Bytes::from_static(&[0xF3, 0x89, 0x9A, 0xC2])),
        ("good aggregate", good),
        ("plain-1", Bytes::from_static(b"plain-1")),
    ];
    // One at a time, in order, on the single shard.
    for (_, data) in &inputs {
        kc_examples::put_all(&client, &stream, vec![("k".to_owned(), data.clone())]).await.expect("put");
    }
    let empty = client
        .put_record()
        .stream_name(&stream)
        .partition_key("k")
        .data(aws_sdk_kinesis::primitives::Blob::new(Vec::new()))
        .send()
        .await;
    let empty_accepted = empty.is_ok();
    println!("7a: kinesalite {} an empty record", if empty_accepted { "accepted" } else { "refused" });

    // Lenient (default): corrupt aggregates pass through whole, the good one is split, the empty one delivered.
    let build = |strict: bool| {
        let stream = stream.clone();
        async move {
            Consumer::builder(&stream)
                .client(kinesis().await)
                .app_name("rel")
                .initial_position(InitialPosition::TrimHorizon)
                .aggregation(true)
                .strict_deaggregation(strict)
                .scan_interval(Duration::from_millis(50))
                .build()
                .await
                .expect("build")
        }
    };
    let expected = 2 + 5 + 3 + usize::from(empty_accepted);
    let seen: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let consumer = build(false).await;
    let s = seen.clone();
    let task = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            consumer
                .scan(move |r: Record| {
                    let s = s.clone();
                    async move {
                        lock(&s).push(r.data().clone());
                        Ok::<_, std::io::Error>(Outcome::Checkpoint)
                    }
                })
                .await
        })
    };
    let all = until(Duration::from_secs(60), || lock(&seen).len() >= expected || task.is_finished()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lenient = stop(&consumer, task).await;
    let seen = lock(&seen).clone();
    let corrupt_passed = inputs[1..6].iter().all(|(_, d)| seen.contains(d));
    let users_split = (0..3).all(|i| seen.iter().any(|d| d.as_ref() == format!("user-{i}").as_bytes()));
    let empty_delivered = !empty_accepted || seen.iter().any(Bytes::is_empty);

    // Strict: the first corrupt aggregate stops the scan with a Deaggregation error.
    let consumer = build(true).await;
    let task = scan_logging(&consumer, Duration::ZERO).1;
    let ended = until(Duration::from_secs(30), || task.is_finished()).await;
    let strict = stop(&consumer, task).await;
    let strict_kind = strict.as_ref().err().map(kinesis_consumer::Error::kind);
    println!(
        "7a: lenient delivered {} records (corrupt passed through: {corrupt_passed}, good split: {users_split}, empty \
         delivered: {empty_delivered}), result {:?}; strict -> {strict_kind:?}: {:?}",
        seen.len(),
        lenient.as_ref().map_err(ToString::to_string),
        strict.as_ref().err().map(ToString::to_string)
    );
    let ok = all
        && seen.len() == expected
        && corrupt_passed
        && users_split
        && empty_delivered
        && lenient.is_ok()
        && ended
        && strict_kind == Some(ErrorKind::Deaggregation);
    Row {
        scenario: "7a corrupt aggregates, empty record".into(),
        faults: format!("5 corrupt, {} empty; strict -> {strict_kind:?}", usize::from(empty_accepted)),
        produced: expected,
        handled: seen.len(),
        lost: expected.saturating_sub(seen.len()),
        duplicates: seen.len().saturating_sub(expected),
        ok,
    }
    .report();
    assert!(all && seen.len() == expected, "lenient: {} records, want {expected}", seen.len());
    assert!(corrupt_passed && users_split && empty_delivered);
    assert!(lenient.is_ok(), "{lenient:?}");
    assert!(ended, "strict deaggregation ends the scan");
    assert_eq!(strict_kind, Some(ErrorKind::Deaggregation), "{strict:?}");
}

/// A missing stream, a stream deleted while it is read, table names with SQL in them, and a checkpoint table with the
/// wrong schema: each a typed error, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7b_missing_and_deleted_streams_bad_tables() {
    let mut checks: Vec<(String, bool)> = Vec::new();
    let client = kinesis().await;
    let bounded = Duration::from_secs(30);

    // A stream that does not exist.
    let consumer = consumer_at(kinesis().await, &unique_stream("rel-missing")).build().await.expect("build");
    let task = scan_logging(&consumer, Duration::ZERO).1;
    let ended = until(bounded, || task.is_finished()).await;
    let missing = stop(&consumer, task).await.err().map(|e| e.kind());
    checks.push((format!("missing stream -> {missing:?}"), ended && missing == Some(ErrorKind::StreamNotFound)));

    // A stream deleted while it is read.
    let stream = unique_stream("rel-deleted");
    create_stream(&client, &stream, 2).await.expect("create");
    let produced = put_numbered(&client, &stream, "d", 0..200, 11).await.expect("produce");
    let consumer = consumer_at(kinesis().await, &stream).build().await.expect("build");
    let (log, task) = scan_logging(&consumer, Duration::ZERO);
    assert!(until(bounded, || log.len() >= produced.len()).await, "records before the delete");
    client.delete_stream().stream_name(&stream).send().await.expect("delete stream");
    let deleted_at = Instant::now();
    let ended = until(bounded, || task.is_finished()).await;
    let took = deleted_at.elapsed();
    let deleted = stop(&consumer, task).await.err().map(|e| e.kind());
    checks.push((
        format!("deleted stream -> {deleted:?} in {:.1}s", took.as_secs_f64()),
        ended && deleted == Some(ErrorKind::StreamNotFound),
    ));

    // Table names with SQL in them: refused before any SQL is sent.
    let url = postgres_url();
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    for name in ["kc; DROP TABLE users", "kc_cp' OR '1'='1", "a.b.c", "\"quoted\"", ""] {
        let pg = kinesis_consumer::postgres::PostgresStore::new(pool.clone(), name).err().map(|e| e.kind());
        let my = kinesis_consumer::mysql::MySqlStore::connect(&kc_integration::mysql_url(), name)
            .await
            .err()
            .map(|e| e.kind());
        let want = Some(kinesis_consumer::checkpoint::ErrorKind::InvalidInput);
        checks.push((format!("table {name:?} -> pg {pg:?}, mysql {my:?}"), pg == want && my == want));
    }

    // A checkpoint table with the wrong schema: the scan stops with a Checkpoint error naming the problem.
    let table = unique_table("kc_rel_schema");
    sqlx::query(&format!("CREATE TABLE {table} (namespace text, shard_id text, sequence_number text)"))
        .execute(&pool)
        .await
        .expect("create wrong table");
    let stream = unique_stream("rel-schema");
    create_stream(&client, &stream, 1).await.expect("create");
    put_numbered(&client, &stream, "w", 0..10, 3).await.expect("produce");
    let store = kinesis_consumer::postgres::PostgresStore::new(pool.clone(), &table).expect("valid name");
    let consumer = consumer_at(kinesis().await, &stream).store(store).build().await.expect("build");
    let task = scan_logging(&consumer, Duration::ZERO).1;
    let ended = until(bounded, || task.is_finished()).await;
    let schema = stop(&consumer, task).await.err();
    let schema_kind = schema.as_ref().map(kinesis_consumer::Error::kind);
    let chain = schema.as_ref().map(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    });
    println!("7b: wrong schema -> {chain:?}");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
    checks.push((
        format!("wrong table schema -> {schema_kind:?}"),
        ended && schema_kind == Some(ErrorKind::Checkpoint) && chain.is_some_and(|c| c.contains("lacks the columns")),
    ));

    for (what, ok) in &checks {
        println!("7b: {what}: {}", if *ok { "ok" } else { "FAILED" });
    }
    let failed: Vec<&String> = checks.iter().filter(|(_, ok)| !ok).map(|(w, _)| w).collect();
    Row {
        scenario: "7b missing/deleted stream, bad tables".into(),
        faults: format!("{} bad inputs, {} typed errors", checks.len(), checks.len() - failed.len()),
        produced: produced.len(),
        handled: log.len(),
        lost: produced.len().saturating_sub(log.len()),
        duplicates: log.len().saturating_sub(produced.len()),
        ok: failed.is_empty(),
    }
    .report();
    assert!(failed.is_empty(), "{failed:?}");
}
