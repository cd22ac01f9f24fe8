//! A checkpoint database that accepts and then holds all data (a host that vanished without a reset: a
//! [`HoldProxy`] in front of PostgreSQL or MariaDB), with the stop (what SIGTERM does in the examples: the shutdown
//! token cancelled) landing while a group worker's take cycle, or a single consumer's final flush, is in flight.
//! The stop returns within what `ConsumerBuilder::store_timeout`'s docs promise, with what they say it returns:
//! a group worker `Ok(())` within the lease duration plus the store timeout, a single consumer a `Checkpoint` error
//! ("flush failed") within the store timeout, nothing written. Without the bound (checked with a store timeout of an
//! hour) these stops did not return within 90 s, or, where the held call was waiting for a new connection, only
//! when sqlx's acquire timeout (30 s) ended it: far past the bounds asserted here. The same on the in-process fake,
//! on a paused clock: kc-core's tests/stalled_database.rs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::layer::{Around, BoxFuture, Layered};
use kc_integration::sql::{self, SqlStore};
use kc_integration::{authority, consumer_builder, new_stream, put_numbered, unique_table, HoldProxy, Wait};
use kc_test_support::check::lock;
use kc_test_support::{checkpoint, spawn_collecting, Collecting};
use kinesis_consumer::checkpoint::lease::LeaseTable;
use kinesis_consumer::checkpoint::{Error, ShardKey};
use kinesis_consumer::mysql::{MySqlLeaseTable, MySqlStore};
use kinesis_consumer::postgres::{PostgresLeaseTable, PostgresStore};
use kinesis_consumer::{ErrorKind, Group};
use sqlx::pool::PoolOptions;
use sqlx::Pool;
use tokio::time::Instant;

const SHARDS: usize = 2;
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);
/// How many times the documented bound a stop may take here: the machine is shared and noisy, and a stop that is not
/// bounded never returns, so any multiple tells the two apart.
const SLACK: u32 = 3;
/// The calls of a take cycle (the only callers of `list`, `create`, `take`, `request` and `delete`).
const TAKE_CYCLE: [&str; 5] =
    ["lease table list", "lease table create", "lease table take", "lease table request", "lease table delete"];

/// The tests of this file run one at a time: they measure how long a stop takes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Around every call of a store or lease table, as the test sees them: the calls in flight (since when), and the
/// calls abandoned (dropped before they returned: cut off by the consumer's store timeout, which sits outside).
#[derive(Clone, Default)]
struct Watch(Arc<Mutex<Calls>>);

#[derive(Default)]
struct Calls {
    next: u64,
    in_flight: HashMap<u64, (&'static str, Instant)>,
    abandoned: Vec<&'static str>,
}

/// One call in flight; dropped unfinished, it counts as abandoned.
struct Call {
    calls: Arc<Mutex<Calls>>,
    id: u64,
    finished: bool,
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut calls = lock(&self.calls);
        if let Some((what, _)) = calls.in_flight.remove(&self.id) {
            if !self.finished {
                calls.abandoned.push(what);
            }
        }
    }
}

#[async_trait]
impl Around for Watch {
    async fn around<'a, T: Send + 'a>(
        &'a self,
        what: &'static str,
        call: BoxFuture<'a, Result<T, Error>>,
    ) -> Result<T, Error> {
        let mut guard = {
            let mut calls = lock(&self.0);
            calls.next += 1;
            let id = calls.next;
            calls.in_flight.insert(id, (what, Instant::now()));
            Call { calls: Arc::clone(&self.0), id, finished: false }
        };
        let result = call.await;
        guard.finished = true;
        result
    }
}

impl Watch {
    /// A call among `names` in flight that started at or after `since`.
    fn in_flight_since(&self, since: Instant, names: &[&str]) -> Option<&'static str> {
        let calls = lock(&self.0);
        calls.in_flight.values().find(|(what, at)| *at >= since && names.contains(what)).map(|(what, _)| *what)
    }

    fn abandoned(&self) -> Vec<&'static str> {
        lock(&self.0).abandoned.clone()
    }
}

/// A proxy to the database at `url`, and a pool through it that does not ping a connection before lending it, with
/// room for every call at once (a held call keeps its connection): what the database holds is then the call's
/// statement itself, as when it vanishes with a statement in flight, or the handshake of a new connection the pool
/// opens for it. sqlx bounds only the latter (`acquire_timeout`, 30 s by default), and with a ping before each
/// acquire also a call that begins after the hold (the stores' `connect`: 5 s); nothing but the store timeout bounds
/// a statement already sent.
async fn proxied_pool<Db: sqlx::Database>(url: &str) -> (HoldProxy, Pool<Db>) {
    let proxy = HoldProxy::start(authority(url)).await.expect("hold proxy");
    let pool = PoolOptions::<Db>::new()
        .max_connections(10)
        .test_before_acquire(false)
        .connect(&proxy.url(url))
        .await
        .expect("connect through the proxy");
    (proxy, pool)
}

/// A stream of [`SHARDS`] shards with records on each; returns its name and the records' data.
async fn stream_with_records(prefix: &str) -> (String, Vec<String>) {
    let (client, stream) = new_stream(prefix, SHARDS as i32).await;
    // 20 partition keys: records on both shards.
    let data = put_numbered(&client, &stream, "r", 0..20, 20).await.expect("put");
    (stream, data)
}

/// Waits until the handler saw every record of `data`, from every shard: each shard task is past its start (the
/// checkpoint read), so that the stop finds only what the test means it to find in flight.
async fn every_record(scan: &Collecting, data: &[String]) {
    Wait::real(Duration::from_secs(60))
        .expect("every record from every shard", || {
            let seen = scan.seen.all();
            let shards: HashSet<&str> = seen.iter().map(|r| r.shard.as_str()).collect();
            let all = data.iter().all(|d| seen.iter().any(|r| &r.data == d));
            (all && shards.len() == SHARDS) || scan.task.is_finished()
        })
        .await;
}

/// A group worker with its lease table (`table`, through `proxy`) has read every record; the proxy holds; the stop
/// lands while a take cycle's call is held. It returns `Ok(())` within the lease duration plus the store timeout.
async fn stop_during_a_take_cycle(db: &str, proxy: HoldProxy, table: Arc<dyn LeaseTable>) {
    let _serial = SERIAL.lock().await;
    let (stream, data) = stream_with_records("stall-group").await;
    let watch = Watch::default();
    let group = Group::new("g", Layered::new(table, watch.clone())).worker_id("w1").lease_duration(LEASE);
    let consumer =
        consumer_builder(&stream).await.store_timeout(STORE_TIMEOUT).group(group).build().await.expect("build");
    let worker = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    every_record(&worker, &data).await;

    proxy.hold();
    let held = Instant::now();
    // A take cycle comes every half lease duration; its first call (list) is then held.
    let mut call = None;
    Wait::real(LEASE * 4)
        .expect("a take cycle's call in flight after the hold", || {
            call = watch.in_flight_since(held, &TAKE_CYCLE);
            call.is_some()
        })
        .await;
    let stopped = Instant::now();
    let bound = LEASE + STORE_TIMEOUT;
    let (_, result) = worker.stop(bound * SLACK).await;
    let elapsed = stopped.elapsed();
    eprintln!(
        "[{db}] group worker stopped during a take cycle ({call:?} held): returned {result:?} after {elapsed:?} \
         (lease {LEASE:?} + store_timeout {STORE_TIMEOUT:?} = {bound:?}); {} bytes held",
        proxy.held_bytes()
    );
    result.expect("a worker cut off from its lease table stops without error (its leases are left to expire)");
    assert!(elapsed <= bound * SLACK, "stopped after {elapsed:?}");
    let abandoned = watch.abandoned();
    assert!(
        call.is_some_and(|c| abandoned.contains(&c)),
        "the held take-cycle call {call:?} was cut off by the store timeout (abandoned: {abandoned:?})"
    );
    assert!(proxy.held_bytes() > 0, "the proxy held what the worker sent");
}

/// A single consumer checkpointing in a SQL store (through a proxy; nothing flushed in the background) has read every
/// record; the proxy holds; the stop lands and its final flush is held. The scan returns a `Checkpoint` error
/// ("flush failed") within the store timeout, and nothing was written.
async fn stop_during_the_final_flush<S: SqlStore>(db: &str) {
    let _serial = SERIAL.lock().await;
    let (proxy, pool) = proxied_pool::<S::Db>(&S::url()).await;
    let table = unique_table("kc_stall_store");
    // No background flush during the test: the checkpoints are still pending when the stop lands.
    let store = S::build(pool, &table, Some(Duration::from_secs(3600))).expect("store");
    store.create_table_if_missing().await.expect("create table");
    let (stream, data) = stream_with_records("stall-store").await;
    let watch = Watch::default();
    let consumer = consumer_builder(&stream)
        .await
        .store_timeout(STORE_TIMEOUT)
        .store(Layered::new(Arc::new(store), watch.clone()))
        .build()
        .await
        .expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    every_record(&scan, &data).await;

    proxy.hold();
    let stopped = Instant::now();
    let (_, result) = scan.stop(STORE_TIMEOUT * SLACK).await;
    let elapsed = stopped.elapsed();
    eprintln!(
        "[{db}] consumer stopped with its final flush held: returned {result:?} after {elapsed:?} \
         (store_timeout {STORE_TIMEOUT:?}); {} bytes held",
        proxy.held_bytes()
    );
    let err = result.expect_err("the final flush timed out");
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
    assert!(err.to_string().contains("flush failed"), "{err}");
    assert!(elapsed <= STORE_TIMEOUT * SLACK, "stopped after {elapsed:?}");
    let abandoned = watch.abandoned();
    assert!(abandoned.contains(&"checkpoint store flush"), "the final flush was cut off (abandoned: {abandoned:?})");
    assert!(proxy.held_bytes() > 0, "the flush's statement reached the proxy and was held");
    // The last checkpoints were not saved: their records come again after a restart.
    let direct = sql::pool::<S>().await;
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let key = ShardKey::new("it", stream.as_str(), shard);
        assert_eq!(sql::stored::<S>(&direct, &table, &key).await, None, "{shard}: nothing written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_group_worker_stopped_during_a_take_cycle_returns_ok_within_lease_and_store_timeout() {
    let (proxy, pool) = proxied_pool(&kc_integration::postgres_url()).await;
    let table = PostgresLeaseTable::new(pool, &unique_table("kc_stall_leases")).expect("lease table");
    table.create_table_if_missing().await.expect("create lease table");
    stop_during_a_take_cycle("postgres", proxy, Arc::new(table)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_group_worker_stopped_during_a_take_cycle_returns_ok_within_lease_and_store_timeout() {
    let (proxy, pool) = proxied_pool(&kc_integration::mysql_url()).await;
    let table = MySqlLeaseTable::new(pool, &unique_table("kc_stall_leases")).expect("lease table");
    table.create_table_if_missing().await.expect("create lease table");
    stop_during_a_take_cycle("mysql", proxy, Arc::new(table)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_consumer_stopped_during_the_final_flush_returns_a_checkpoint_error_within_the_store_timeout() {
    stop_during_the_final_flush::<PostgresStore>("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_consumer_stopped_during_the_final_flush_returns_a_checkpoint_error_within_the_store_timeout() {
    stop_during_the_final_flush::<MySqlStore>("mysql").await;
}
