//! Shared helpers of the integration tests. The servers are started by `cargo xtask integration`, which passes their
//! endpoints in the environment; a test whose server is missing fails loudly.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

pub mod fault_proxy;
pub mod report;
pub use fault_proxy::{Fault, FaultCounts, FaultPlan, FaultProxy, SplitMix64};

/// The kinesalite endpoint from `KINESIS_ENDPOINT`; panics with a clear message when it is not set.
pub fn kinesis_endpoint() -> String {
    match std::env::var("KINESIS_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => panic!("KINESIS_ENDPOINT is not set: run the integration tests with `cargo xtask integration`"),
    }
}

/// A client for kinesalite.
pub async fn kinesis() -> aws_sdk_kinesis::Client {
    kc_examples::kinesis_client(&kinesis_endpoint()).await
}

/// A stream name no other test (or earlier run against the same server) uses.
pub fn unique_stream(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), subsec_nanos(), N.fetch_add(1, Ordering::SeqCst))
}

/// Creates `stream` with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, stream: &str, shards: i32) -> anyhow::Result<()> {
    kc_examples::ensure_stream(client, stream, shards).await
}

/// Puts records `{prefix}{i}` for i in `range`, with partition key `key-{i % keys}`, in order; returns their data.
pub async fn put_numbered(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    keys: usize,
) -> anyhow::Result<Vec<String>> {
    let entries: Vec<(String, Bytes)> =
        range.map(|i| (format!("key-{}", i % keys), Bytes::from(format!("{prefix}{i}")))).collect();
    let data = entries.iter().map(|(_, d)| String::from_utf8_lossy(d).into_owned()).collect();
    kc_examples::put_all(client, stream, entries).await?;
    Ok(data)
}

/// Waits until the stream is ACTIVE again after a reshard.
pub async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    kc_examples::ensure_stream(client, stream, 1).await
}

/// Splits `shard_id` in the middle of its hash key range.
pub async fn split(client: &aws_sdk_kinesis::Client, stream: &str, shard_id: &str) -> anyhow::Result<()> {
    let shards = client.list_shards().stream_name(stream).send().await.context("ListShards")?;
    let shard = shards.shards().iter().find(|s| s.shard_id() == shard_id).context("no such shard")?;
    let range = shard.hash_key_range().context("no hash key range")?;
    let lo: u128 = range.starting_hash_key().parse()?;
    let hi: u128 = range.ending_hash_key().parse()?;
    let mid = lo + (hi - lo) / 2;
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard_id)
        .new_starting_hash_key(mid.to_string())
        .send()
        .await
        .context("SplitShard")?;
    wait_active(client, stream).await
}

/// Merges two adjacent open shards; returns their ids.
pub async fn merge_first_adjacent(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<(String, String)> {
    let shards = client.list_shards().stream_name(stream).send().await.context("ListShards")?;
    let mut open: Vec<(u128, u128, String)> = shards
        .shards()
        .iter()
        .filter(|s| s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_none()))
        .filter_map(|s| {
            let r = s.hash_key_range()?;
            Some((r.starting_hash_key().parse().ok()?, r.ending_hash_key().parse().ok()?, s.shard_id().to_owned()))
        })
        .collect();
    open.sort();
    let pair = open.windows(2).find(|w| w[0].1 + 1 == w[1].0).context("no adjacent open shards")?;
    let (a, b) = (pair[0].2.clone(), pair[1].2.clone());
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(&a)
        .adjacent_shard_to_merge(&b)
        .send()
        .await
        .context("MergeShards")?;
    wait_active(client, stream).await?;
    Ok((a, b))
}

/// What a handler saw, in handling order.
#[derive(Clone, Debug, Default)]
pub struct Seen(Arc<Mutex<Vec<SeenRecord>>>);

/// One handled record.
#[derive(Clone, Debug)]
pub struct SeenRecord {
    /// The shard it came from.
    pub shard: String,
    /// Its partition key.
    pub key: String,
    /// Its data, as text.
    pub data: String,
    /// Its sub-sequence number (KPL user records).
    pub sub: Option<u64>,
}

impl Seen {
    /// Records `r`.
    pub fn push(&self, r: &kinesis_consumer::Record) {
        let rec = SeenRecord {
            shard: r.shard_id().to_owned(),
            key: r.partition_key().to_owned(),
            data: String::from_utf8_lossy(r.data()).into_owned(),
            sub: r.sub_sequence_number(),
        };
        self.lock().push(rec);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SeenRecord>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many were seen.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none was seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record seen.
    pub fn all(&self) -> Vec<SeenRecord> {
        self.lock().clone()
    }

    /// The data of every record seen.
    pub fn data(&self) -> Vec<String> {
        self.lock().iter().map(|r| r.data.clone()).collect()
    }

    /// Asserts every produced record was seen exactly once.
    pub fn assert_exactly_once(&self, produced: &[String]) {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for d in self.data() {
            *counts.entry(d).or_default() += 1;
        }
        let missing: Vec<&String> = produced.iter().filter(|p| !counts.contains_key(*p)).collect();
        let dupes: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(missing.is_empty(), "lost {} of {} records, e.g. {:?}", missing.len(), produced.len(), missing.first());
        assert!(dupes.is_empty(), "{} records handled twice, e.g. {:?}", dupes.len(), dupes.first());
        assert_eq!(self.len(), produced.len(), "unexpected extra records");
    }

    /// Asserts that for each partition key, records (data `{prefix}{i}`) arrived in increasing `i`.
    pub fn assert_key_order(&self) {
        self.assert_order_within("key", |r| &r.key);
    }

    /// Asserts that within each shard, records arrived in the order they were produced.
    pub fn assert_shard_order(&self) {
        self.assert_order_within("shard", |r| &r.shard);
    }

    /// Asserts that records with the same `group` arrived in increasing `i` (data `{prefix}{i}`).
    fn assert_order_within(&self, what: &str, group: impl Fn(&SeenRecord) -> &String) {
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.all() {
            let digits = r.data.trim_start_matches(|c: char| !c.is_ascii_digit());
            let i: usize = digits.parse().unwrap_or_else(|_| panic!("not numbered: {}", r.data));
            if let Some(prev) = last.insert(group(&r).clone(), i) {
                assert!(prev < i, "{what} {}: record {i} arrived after {prev}", group(&r));
            }
        }
    }
}

/// A consumer builder for `stream` as the tests use it: kinesalite's client, app `it`, TRIM_HORIZON, fast polling
/// and discovery.
pub async fn consumer_builder(stream: &str) -> kinesis_consumer::ConsumerBuilder {
    kinesis_consumer::Consumer::builder(stream)
        .client(kinesis().await)
        .app_name("it")
        .initial_position(kinesis_consumer::InitialPosition::TrimHorizon)
        .scan_interval(Duration::from_millis(50))
        .discovery_interval(Duration::from_secs(1))
}

/// Scans with `consumer` and a handler that records what it sees, until `want` records were seen (or the scan
/// ended), waits half a second for duplicates, cancels; returns what was seen and the scan's result.
pub async fn collect_until(
    consumer: kinesis_consumer::Consumer,
    want: usize,
) -> (Seen, Result<(), kinesis_consumer::Error>) {
    let seen = Seen::default();
    let s = seen.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: kinesis_consumer::Record| {
                let s = s.clone();
                async move {
                    s.push(&r);
                    Ok::<_, std::io::Error>(kinesis_consumer::Outcome::Checkpoint)
                }
            })
            .await
    });
    wait_for(&format!("{want} records"), Duration::from_secs(60), || seen.len() >= want || task.is_finished()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await.expect("scan stops promptly").expect("task");
    (seen, result)
}

/// [`collect_until`] with a consumer of `stream` checkpointing in `store`.
pub async fn scan_with_store(
    stream: &str,
    store: impl kinesis_consumer::CheckpointStore + 'static,
    want: usize,
) -> (Seen, Result<(), kinesis_consumer::Error>) {
    let consumer = consumer_builder(stream).await.store(store).build().await.expect("build consumer");
    collect_until(consumer, want).await
}

/// Polls `done` every 50 ms for up to `timeout`; panics with `what` when it never holds.
pub async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The PostgreSQL URL from `DATABASE_URL_POSTGRES`; panics with a clear message when it is not set.
pub fn postgres_url() -> String {
    match std::env::var("DATABASE_URL_POSTGRES") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!("DATABASE_URL_POSTGRES is not set: run the integration tests with `cargo xtask integration`"),
    }
}

/// The MySQL/MariaDB URL from `DATABASE_URL_MYSQL`; panics with a clear message when it is not set.
pub fn mysql_url() -> String {
    match std::env::var("DATABASE_URL_MYSQL") {
        Ok(u) if !u.is_empty() => u,
        _ => panic!("DATABASE_URL_MYSQL is not set: run the integration tests with `cargo xtask integration`"),
    }
}

/// A table name no other test, concurrent run or earlier run uses: `{prefix}_{pid}_{nanos}_{n}`. The databases
/// outlive a run, and a failed test leaves its table behind; the time keeps a later process with the same id from
/// finding it.
pub fn unique_table(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}_{}_{}", std::process::id(), subsec_nanos(), N.fetch_add(1, Ordering::SeqCst))
}

fn subsec_nanos() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}

/// A TCP proxy on 127.0.0.1 to a server, which a test can cut (every connection closed, new ones closed at once)
/// and restore, to play a server that goes away.
pub struct CutProxy {
    addr: std::net::SocketAddr,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Starts a proxy to `target` (`host:port`).
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind proxy")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, c) = (Arc::clone(&up), Arc::clone(&conns));
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Checked and registered under the lock `cut` takes, so no connection slips past a cut.
                let mut conns = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        Ok(Self { addr, up, conns, task })
    }

    /// The proxy's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Closes every connection and refuses new ones until [`restore`](Self::restore). Each connection's task is
    /// aborted: one that is not running stops at once, and one running on another thread stops at its next pause,
    /// so a request written after this returns is not forwarded unless that task was copying at that very moment.
    pub fn cut(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.up.store(false, Ordering::SeqCst);
        for conn in conns.drain(..) {
            conn.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// --- Enhanced fan-out (tests/fan_out.rs, benches/latency.rs): kinesis-local, which has SubscribeToShard ---

/// The kinesis-local endpoint from `KINESIS_LOCAL_ENDPOINT`; panics with a clear message when it is not set.
pub fn kinesis_local_endpoint() -> String {
    match std::env::var("KINESIS_LOCAL_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => panic!("KINESIS_LOCAL_ENDPOINT is not set: run the integration tests with `cargo xtask integration`"),
    }
}

/// A client for kinesis-local (or for `endpoint`, e.g. a [`CutProxy`] in front of it).
pub async fn kinesis_local_at(endpoint: &str) -> aws_sdk_kinesis::Client {
    kc_examples::kinesis_client(endpoint).await
}

/// A client for kinesis-local.
pub async fn kinesis_local() -> aws_sdk_kinesis::Client {
    kinesis_local_at(&kinesis_local_endpoint()).await
}

/// A consumer builder for `stream` on kinesis-local reading with enhanced fan-out as the consumer `name`: app `it`,
/// TRIM_HORIZON, discovery every second.
pub fn fan_out_builder(client: aws_sdk_kinesis::Client, stream: &str, name: &str) -> kinesis_consumer::ConsumerBuilder {
    kinesis_consumer::Consumer::builder(stream)
        .client(client)
        .app_name("it")
        .initial_position(kinesis_consumer::InitialPosition::TrimHorizon)
        .discovery_interval(Duration::from_secs(1))
        .fan_out(name)
}

/// The path of the example binary `name`, from `KC_EXAMPLES_BIN_DIR` (set by `cargo xtask integration`, which builds
/// the examples); panics with a clear message when it is not set or the binary is missing.
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let dir = std::env::var("KC_EXAMPLES_BIN_DIR").unwrap_or_else(|_| {
        panic!("KC_EXAMPLES_BIN_DIR is not set: run the integration tests with `cargo xtask integration`")
    });
    let path = std::path::PathBuf::from(dir).join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the examples (`cargo build -p kc-examples --bins`)",
        path.display()
    );
    path
}
