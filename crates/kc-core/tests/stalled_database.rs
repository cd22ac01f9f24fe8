//! A checkpoint database that accepts calls and never answers them (a network that holds every packet): a graceful
//! stop still returns within the store timeout (plus, in a group, the lease duration), with what the docs say.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::layer::{Around, BoxFuture, Layered};
use kc_checkpoint::lease::MemoryLeaseTable;
use kc_checkpoint::{Error, MemoryStore};
use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, ConsumerBuilder, ErrorKind, Group, InitialPosition};
use kc_test_support::{checkpoint, spawn_collecting, Wait};
use tokio::time::Instant;

const STREAM: &str = "s";
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(10);

/// Around every call of a store or lease table: once `stalled`, every call (after the first `pass`) is counted and
/// never answered.
#[derive(Clone, Default)]
struct Stall {
    stalled: Arc<AtomicBool>,
    pass: Arc<AtomicUsize>,
    calls_held: Arc<AtomicUsize>,
}

#[async_trait]
impl Around for Stall {
    async fn around<'a, T: Send + 'a>(
        &'a self,
        _: &'static str,
        call: BoxFuture<'a, Result<T, Error>>,
    ) -> Result<T, Error> {
        let passed = self.pass.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if self.stalled.load(Ordering::SeqCst) && !passed {
            self.calls_held.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        call.await
    }
}

fn stream_with_records() -> FakeKinesis {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 4);
    for i in 0..40 {
        fake.put(STREAM, &format!("k{i}"), format!("r{i}"));
    }
    fake
}

fn builder(fake: &FakeKinesis) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .max_records(10)
        .store_timeout(STORE_TIMEOUT)
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_the_final_flush_returns_a_checkpoint_error_within_the_store_timeout() {
    let fake = stream_with_records();
    let stall = Stall::default();
    let consumer =
        builder(&fake).store(Layered::new(Arc::new(MemoryStore::new()), stall.clone())).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.expect("every record", || scan.seen.len() >= 40).await;
    stall.stalled.store(true, Ordering::SeqCst);
    let stopped = Instant::now();
    // Generous: a hung flush never returns, so any bound tells the two apart.
    let (_, result) = scan.stop(STORE_TIMEOUT * 4).await;
    let elapsed = stopped.elapsed();
    let err = result.expect_err("the final flush timed out");
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
    assert!(err.to_string().contains("flush failed"), "{err}");
    assert!(elapsed <= STORE_TIMEOUT + Duration::from_secs(1), "stopped after {elapsed:?}");
    assert!(stall.calls_held.load(Ordering::SeqCst) >= 1, "the flush was held");
}

#[tokio::test(start_paused = true)]
async fn a_group_worker_stopped_during_a_take_cycle_returns_within_lease_and_store_timeout() {
    let fake = stream_with_records();
    let stall = Stall::default();
    let table = Layered::new(Arc::new(MemoryLeaseTable::new()), stall.clone());
    let group = Group::new("g", table).worker_id("w1").lease_duration(LEASE);
    let consumer = builder(&fake).group(group).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.expect("every record", || scan.seen.len() >= 40).await;
    // The database holds every call from now on; wait for a take cycle (every half lease) to be in flight.
    stall.stalled.store(true, Ordering::SeqCst);
    let held = stall.calls_held.load(Ordering::SeqCst);
    tokio::time::sleep(LEASE).await;
    assert!(stall.calls_held.load(Ordering::SeqCst) > held, "a take cycle's call is held");
    let stopped = Instant::now();
    let (_, result) = scan.stop((LEASE + STORE_TIMEOUT) * 4).await;
    let elapsed = stopped.elapsed();
    result.expect("a worker cut off from its lease table stops without error (its leases expire)");
    assert!(elapsed <= LEASE + STORE_TIMEOUT + Duration::from_secs(1), "stopped after {elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_group_worker_stopped_while_its_final_checkpoints_are_held_returns_within_the_lease_duration() {
    let fake = stream_with_records();
    let stall = Stall::default();
    let table = Layered::new(Arc::new(MemoryLeaseTable::new()), stall.clone());
    let group = Group::new("g", table).worker_id("w1").lease_duration(LEASE);
    let consumer = builder(&fake).group(group).build().await.expect("build");
    // A slow handler: records are still in hand when the database stalls.
    let scan = spawn_collecting(consumer, Duration::from_millis(500), checkpoint);
    Wait::PAUSED.expect("some records", || scan.seen.len() >= 4).await;
    stall.stalled.store(true, Ordering::SeqCst);
    let stopped = Instant::now();
    let (seen, result) = scan.stop((LEASE + STORE_TIMEOUT) * 4).await;
    let elapsed = stopped.elapsed();
    result.expect("the leases are left to expire; the stop is graceful");
    assert!(seen.len() < 40, "stopped mid-stream");
    assert!(stall.calls_held.load(Ordering::SeqCst) >= 1, "the final checkpoint or release was held");
    assert!(elapsed <= LEASE + Duration::from_secs(1), "stopped after {elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_the_shards_read_their_checkpoints_does_not_wait_for_those_calls() {
    let fake = stream_with_records();
    // The stream's creation marker is read, written and flushed (3 calls); then the database holds every call: each
    // shard's first call, the read of its checkpoint, is held.
    let stall = Stall { pass: Arc::new(AtomicUsize::new(3)), ..Stall::default() };
    stall.stalled.store(true, Ordering::SeqCst);
    let consumer =
        builder(&fake).store(Layered::new(Arc::new(MemoryStore::new()), stall.clone())).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.expect("every shard's checkpoint read held", || stall.calls_held.load(Ordering::SeqCst) >= 4).await;
    let stopped = Instant::now();
    let (seen, result) = scan.stop(STORE_TIMEOUT * 4).await;
    let elapsed = stopped.elapsed();
    // The shards stop at once (nothing handled: nothing to checkpoint); the final flush is held and timed out.
    let err = result.expect_err("the final flush timed out");
    assert_eq!(err.kind(), ErrorKind::Checkpoint, "{err}");
    assert!(err.to_string().contains("flush failed"), "{err}");
    assert!(seen.is_empty());
    assert!(elapsed <= STORE_TIMEOUT + Duration::from_secs(1), "one store timeout, not two: stopped after {elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_the_streams_creation_marker_is_read_returns_at_once() {
    let fake = stream_with_records();
    let stall = Stall::default();
    stall.stalled.store(true, Ordering::SeqCst);
    let consumer =
        builder(&fake).store(Layered::new(Arc::new(MemoryStore::new()), stall.clone())).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.expect("the marker's read held", || stall.calls_held.load(Ordering::SeqCst) >= 1).await;
    let stopped = Instant::now();
    let (seen, result) = scan.stop(STORE_TIMEOUT * 4).await;
    result.expect("nothing started: a clean stop");
    assert!(seen.is_empty());
    assert!(stopped.elapsed() < Duration::from_secs(1), "stopped after {:?}", stopped.elapsed());
}
