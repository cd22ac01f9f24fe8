//! Shared helpers of the integration tests. The servers are started by `cargo xtask integration`, which passes their
//! endpoints in the environment; a test whose server is missing fails loudly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

pub mod bare;
pub mod ddb;
pub mod fault_proxy;
pub mod hold_proxy;
pub mod memory_kinesis;
pub mod observed;
pub mod report;
pub mod sql;
pub use fault_proxy::{Fault, FaultCounts, FaultPlan, FaultProxy, SplitMix64};
pub use hold_proxy::HoldProxy;
pub use memory_kinesis::MemoryKinesis;
pub use observed::Observed;
// The helpers these tests share with kc-core's tests and xtask live once, in kc-test-support; re-exported under the
// names the tests have always used.
pub use kc_test_support::names::{unique_stream, unique_table};
pub use kc_test_support::{collect_until, spawn_collecting, wait_for, Collect, Collecting, Seen, SeenRecord, Wait};

/// The kinesalite endpoint from `KINESIS_ENDPOINT`; panics with a clear message when it is not set.
pub fn kinesis_endpoint() -> String {
    kc_test_support::env::required("KINESIS_ENDPOINT")
}

/// A client for kinesalite.
pub async fn kinesis() -> aws_sdk_kinesis::Client {
    kc_examples::kinesis_client(&kinesis_endpoint()).await
}

/// Creates `stream` with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, stream: &str, shards: i32) -> anyhow::Result<()> {
    kc_examples::ensure_stream(client, stream, shards).await
}

/// A client for kinesalite and a new stream (named after `prefix`, unique) with `shards` shards, ACTIVE: how most
/// tests begin.
pub async fn new_stream(prefix: &str, shards: i32) -> (aws_sdk_kinesis::Client, String) {
    let client = kinesis().await;
    let stream = unique_stream(prefix);
    create_stream(&client, &stream, shards).await.unwrap_or_else(|e| panic!("create stream {stream}: {e:#}"));
    (client, stream)
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

/// Every record of `stream`'s shards, from TRIM_HORIZON, as the SDK reads them (a dead-letter stream read back).
pub async fn read_all_records(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<aws_sdk_kinesis::types::Record> {
    use aws_sdk_kinesis::types::ShardIteratorType;
    let shards = client.list_shards().stream_name(stream).send().await.expect("list").shards.unwrap_or_default();
    let mut out = Vec::new();
    for shard in shards {
        let it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator;
        let mut it = it.expect("an iterator");
        loop {
            let page = client.get_records().shard_iterator(&it).send().await.expect("get records");
            let empty = page.records.is_empty();
            out.extend(page.records);
            match page.next_shard_iterator {
                Some(next) if !empty => it = next,
                _ => break,
            }
        }
    }
    out
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

/// [`collect_until`] with a consumer of `stream` checkpointing in `store`.
pub async fn scan_with_store(
    stream: &str,
    store: impl kinesis_consumer::CheckpointStore + 'static,
    want: usize,
) -> (Seen, Result<(), kinesis_consumer::Error>) {
    let consumer = consumer_builder(stream).await.store(store).build().await.expect("build consumer");
    collect_until(consumer, want).await
}

/// Runs `call()` from `callers` tasks released at the same moment (as N processes starting together); panics with
/// every error. For `create_table_if_missing` on first deploy and upgrade.
pub async fn all_at_once<F, Fut, E>(what: &str, callers: usize, call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (barrier, call) = (Arc::clone(&barrier), call());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            call.await
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        if let Err(e) = task.await.expect("task") {
            errors.push(format!("{e} ({:?})", std::error::Error::source(&e).map(ToString::to_string)));
        }
    }
    assert!(errors.is_empty(), "{what}: {} of {callers} concurrent callers failed: {errors:#?}", errors.len());
}

/// The PostgreSQL URL from `DATABASE_URL_POSTGRES`; panics with a clear message when it is not set.
pub fn postgres_url() -> String {
    kc_test_support::env::required("DATABASE_URL_POSTGRES")
}

/// The MySQL/MariaDB URL from `DATABASE_URL_MYSQL`; panics with a clear message when it is not set.
pub fn mysql_url() -> String {
    kc_test_support::env::required("DATABASE_URL_MYSQL")
}

/// The `host:port` of a URL (`scheme://[user@]host:port[/path]`), e.g. to start a proxy to a database.
pub fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or(rest);
    host_port.rsplit('@').next().unwrap_or(host_port)
}

/// The dynalite endpoint from `DYNAMODB_ENDPOINT`; panics with a clear message when it is not set.
pub fn dynamodb_endpoint() -> String {
    kc_test_support::env::required("DYNAMODB_ENDPOINT")
}

/// A DynamoDB client for dynalite (static credentials, never the default credential chain).
pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    kc_examples::dynamodb_client(&dynamodb_endpoint()).await
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
                let mut conns = kc_test_support::check::lock(&c);
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
        let mut conns = kc_test_support::check::lock(&self.conns);
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
    kc_test_support::env::required("KINESIS_LOCAL_ENDPOINT")
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
    let dir = kc_test_support::env::required("KC_EXAMPLES_BIN_DIR");
    let path = std::path::PathBuf::from(dir).join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the examples (`cargo build -p kc-examples --bins`)",
        path.display()
    );
    path
}
