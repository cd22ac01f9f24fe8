//! One consumer reading many shards (issue 13), against the in-process fake on a paused clock: the Kinesis calls in
//! flight stay within the bound, every record comes once despite faults, idle shards back off, and start-up and
//! relisting do not fan out into one call per shard.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kc_core::api::ApiErrorKind;
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{Checkpoint, CheckpointStore, Consumer, ConsumerBuilder, InitialPosition, MemoryStore, ShardKey};
use kc_test_support::fake::{put_to_shard, STREAM};
use kc_test_support::{checkpoint, spawn_collecting, Collect, Wait};
use tokio::time::Instant;

fn builder(fake: &FakeKinesis) -> ConsumerBuilder {
    Consumer::builder(STREAM).api(fake.clone()).store(MemoryStore::new()).initial_position(InitialPosition::TrimHorizon)
}

/// Puts `per_shard` records (`r0`, `r1`, ...) on each of `shards` new shards of [`STREAM`]; returns their data.
fn stream_of(fake: &FakeKinesis, shards: usize, per_shard: usize) -> Vec<String> {
    fake.create_stream(STREAM, shards);
    let mut produced = Vec::new();
    for shard in fake.shard_ids(STREAM) {
        for _ in 0..per_shard {
            let data = format!("r{}", produced.len());
            fake.put_to_shard(STREAM, &shard, "k", data.clone());
            produced.push(data);
        }
    }
    produced
}

#[tokio::test(start_paused = true)]
async fn a_thousand_shards_with_faults_every_record_once_within_the_call_bound() {
    let fake = FakeKinesis::new();
    let produced = stream_of(&fake, 1_000, 10);
    // Every call takes 50 ms; 1 GetRecords in 7 fails as a 5xx would, 1 GetShardIterator in 11 is throttled.
    fake.latency(Duration::from_millis(50));
    fake.fail_every(Op::GetRecords, ApiErrorKind::Transient, 7);
    fake.fail_every(Op::GetShardIterator, ApiErrorKind::Throttled, 11);
    // A call timeout shorter than a turn of the queue (1,000 shards / 32 calls × 50 ms = 1.6 s): a timeout counted
    // from the queue would time calls out again and again.
    let consumer = builder(&fake)
        .max_calls_in_flight(32)
        .call_timeout(Duration::from_secs(1))
        .max_records(4)
        .build()
        .await
        .expect("build");
    let (seen, result) = Collect::PAUSED.run(consumer, produced.len()).await;
    result.expect("scan ok after cancel");
    seen.assert_exactly_once(&produced);
    seen.assert_shard_order();
    let max = fake.max_in_flight();
    assert!(max <= 32, "{max} calls in flight, more than the bound of 32");
    assert!(max >= 16, "only {max} calls in flight: the bound is not used");
}

#[tokio::test(start_paused = true)]
async fn idle_shards_poll_about_once_a_second() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1_000);
    let consumer = builder(&fake).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    // The backoff reaches its cap (250 ms, 500 ms, 1 s) within seconds; measure a minute after that.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = fake.calls(Op::GetRecords);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let per_shard_per_second = (fake.calls(Op::GetRecords) - before) as f64 / 1_000.0 / 60.0;
    let (seen, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("scan ok after cancel");
    assert!(seen.is_empty());
    // Without the backoff: 4 per shard per second (every 250 ms).
    assert!(
        (0.9..=1.0).contains(&per_shard_per_second),
        "{per_shard_per_second:.3} GetRecords per idle shard per second, want about 1"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_shard_that_gets_records_again_polls_at_once() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let shard = fake.shard_ids(STREAM).remove(0);
    let consumer = builder(&fake).max_records(5).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    tokio::time::sleep(Duration::from_secs(30)).await;

    // 12 records after 30 s of idleness: found within the idle interval (1 s), then the shard is behind (full
    // batches of 5) and polls at once, every min_poll_interval (200 ms).
    let put_at = Instant::now();
    put_to_shard(&fake, STREAM, &shard, "a", 12);
    Wait::PAUSED.expect("12 records", || scan.seen.len() >= 12).await;
    let times = scan.seen.times();
    let first = times[0] - put_at;
    assert!(first <= Duration::from_secs(1), "the first batch came {first:?} after the put");
    let batches: Vec<Duration> = [5, 10].iter().map(|&i| times[i] - times[0]).collect();
    assert_eq!(batches, [Duration::from_millis(200), Duration::from_millis(400)], "behind: at once, 5 calls/s");

    // Caught up again, the pace is back to the scan interval (250 ms), not the idle interval.
    tokio::time::sleep_until(times[11] + Duration::from_millis(10)).await;
    let put_at = Instant::now();
    put_to_shard(&fake, STREAM, &shard, "b", 1);
    Wait::new(Duration::from_millis(1), Duration::from_secs(2)).expect("1 more record", || scan.seen.len() >= 13).await;
    let next = scan.seen.times()[12] - put_at;
    assert!(next <= Duration::from_millis(250), "the next record came {next:?} after the put");

    let (_, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("scan ok after cancel");
}

/// A checkpoint store whose reads take 20 ms, counting the reads in flight and their maximum.
#[derive(Clone, Default)]
struct SlowReads {
    inner: MemoryStore,
    reads: Arc<(AtomicUsize, AtomicUsize)>,
}

#[async_trait]
impl CheckpointStore for SlowReads {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, kc_checkpoint::Error> {
        let (now, max) = &*self.reads;
        max.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        now.fetch_sub(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), kc_checkpoint::Error> {
        self.inner.set(key, checkpoint).await
    }
    async fn flush(&self) -> Result<(), kc_checkpoint::Error> {
        self.inner.flush().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_of_a_thousand_shards_reads_checkpoints_and_iterators_within_the_bound() {
    let fake = FakeKinesis::new();
    let produced = stream_of(&fake, 1_000, 1);
    fake.latency(Duration::from_millis(20));
    let store = SlowReads::default();
    let consumer = builder(&fake).store(store.clone()).max_calls_in_flight(16).build().await.expect("build");
    let (seen, result) = Collect::PAUSED.run(consumer, produced.len()).await;
    result.expect("scan ok after cancel");
    seen.assert_exactly_once(&produced);
    assert_eq!(fake.calls(Op::GetShardIterator), 1_000);
    let reads = store.reads.1.load(Ordering::SeqCst);
    assert!((8..=16).contains(&reads), "{reads} checkpoint reads at once, want up to the bound of 16");
    assert!(fake.max_in_flight() <= 16, "{} Kinesis calls at once", fake.max_in_flight());
}

#[tokio::test(start_paused = true)]
async fn shards_that_end_together_make_few_listings() {
    // Like kinesalite: no ChildShards, so children are found by listing. Every call takes 20 ms and 16 are in flight
    // at most, so the parents' ends spread over a while: one listing each, awaited in turn, made dozens.
    let fake = FakeKinesis::new();
    fake.hide_child_shards(true);
    let mut produced = stream_of(&fake, 200, 5);
    fake.latency(Duration::from_millis(20));
    let consumer = builder(&fake).max_calls_in_flight(16).build().await.expect("build");
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    Wait::PAUSED.expect("the parents' records", || scan.seen.len() >= produced.len()).await;
    assert_eq!(fake.calls(Op::ListShards), 1, "the first listing only");

    // Split every shard while they are read: 200 ends, whose children the first listing after the split knows.
    for shard in fake.open_shard_ids(STREAM) {
        fake.split_shard(STREAM, &shard);
    }
    for (i, shard) in fake.open_shard_ids(STREAM).into_iter().enumerate() {
        fake.put_to_shard(STREAM, &shard, "k", format!("r{}", 1_000 + i));
        produced.push(format!("r{}", 1_000 + i));
    }
    Wait::PAUSED.expect("the children's records", || scan.seen.len() >= produced.len()).await;
    let (seen, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("scan ok after cancel");
    seen.assert_exactly_once(&produced);
    let listings = fake.calls(Op::ListShards);
    assert!(listings <= 3, "{listings} listings for 200 shards that ended together");
}

#[tokio::test(start_paused = true)]
async fn idle_fan_out_shards_share_one_end_probe_per_discovery_interval() {
    // Like kinesis-mock: no subscription reports its shard's end, so idle shards probe with ListShards.
    let fake = FakeKinesis::new();
    fake.hide_subscription_end(true);
    fake.create_stream(STREAM, 100);
    let consumer = builder(&fake).fan_out("c").discovery_interval(Duration::from_secs(10)).build().await;
    let scan = spawn_collecting(consumer.expect("build"), Duration::ZERO, checkpoint);
    tokio::time::sleep(Duration::from_secs(15)).await;
    let before = fake.calls(Op::ListShards);
    tokio::time::sleep(Duration::from_secs(100)).await;
    let listings = fake.calls(Op::ListShards) - before;
    let (_, result) = scan.stop(Duration::from_secs(60)).await;
    result.expect("scan ok after cancel");
    // 10 intervals: the scan's own discovery and the shards' shared probe, each once an interval (before: the scan's
    // 10 and one probe per shard and interval, 1,010).
    assert!((11..=22).contains(&listings), "{listings} ListShards in 10 discovery intervals, want 20");
}
