//! One consumer reading many shards (issue 13), against the in-process fake on a paused clock: the Kinesis calls in
//! flight stay within the bound, every record comes once despite faults, idle shards back off, and start-up and
//! relisting do not fan out into one call per shard.

use std::time::Duration;

use kc_core::api::ApiErrorKind;
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{Consumer, ConsumerBuilder, InitialPosition, MemoryStore};
use kc_test_support::fake::STREAM;
use kc_test_support::Collect;

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
