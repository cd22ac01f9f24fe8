//! A consumer group over several streams (issue 17): one lease table for every stream, a fair share counted over the
//! leases of all streams, failover and a tracked stream removed and added again. Against the in-process fake and the
//! in-memory lease table, tokio's paused clock; across processes on kinesalite in the `kc-integration` package
//! (tests/multi_stream.rs).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kc_core::fake::FakeKinesis;
use kc_core::{Checkpoint, Consumer, ConsumerBuilder, Group, InitialPosition};
use kc_test_support::{spawn_recording, Seen, Tracker, Wait};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GROUP: &str = "g";
const LEASE: Duration = Duration::from_secs(10);

/// Streams and their shard counts: 6 leases, 2 each for 3 workers. Read one stream at a time, the three streams of
/// one shard would stay with whichever worker took them first (a lone lease is never moved: the move would not
/// narrow any stream's gap), 4/1/1.
const STREAMS: [(&str, usize); 4] = [("a", 3), ("b", 1), ("c", 1), ("d", 1)];

struct Worker {
    token: CancellationToken,
    task: JoinHandle<Result<(), kc_core::Error>>,
}

impl Worker {
    async fn stop(self) {
        self.token.cancel();
        self.task.await.expect("worker task").expect("worker scan");
    }
}

fn fake() -> FakeKinesis {
    let fake = FakeKinesis::new();
    for (name, shards) in STREAMS {
        fake.create_stream(name, shards);
    }
    fake
}

fn start(builder: ConsumerBuilder, fake: &FakeKinesis, table: &MemoryLeaseTable, id: &str, seen: &Seen) -> Worker {
    let token = CancellationToken::new();
    let builder = builder
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .discovery_interval(Duration::from_secs(1))
        .max_records(10)
        .shutdown(token.clone())
        .group(Group::new(GROUP, table.clone()).worker_id(id).lease_duration(LEASE));
    let task = spawn_recording(builder, seen.for_worker(id));
    Worker { token, task }
}

fn all_streams() -> ConsumerBuilder {
    Consumer::builder_for_streams(STREAMS.iter().map(|(name, _)| *name))
}

/// Puts `{stream}-{prefix}{i}` on every stream, `n` each, keys `{stream}-k{i % 10}`, one round every `every`.
fn produce(fake: &FakeKinesis, n: usize, prefix: &str, every: Duration) -> JoinHandle<Vec<String>> {
    let (fake, prefix) = (fake.clone(), prefix.to_owned());
    tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 0..n {
            for (stream, _) in STREAMS {
                let data = format!("{stream}-{prefix}{i}");
                fake.put(stream, &format!("{stream}-k{}", i % 10), data.clone());
                out.push(data);
            }
            tokio::time::sleep(every).await;
        }
        out
    })
}

/// Unfinished leases held per worker over every stream, sorted counts (unowned ones under "").
async fn spread(table: &MemoryLeaseTable) -> Vec<usize> {
    spread_over(table, &STREAMS.map(|(name, _)| name)).await
}

/// As [`spread`], over `streams`.
async fn spread_over(table: &MemoryLeaseTable, streams: &[&str]) -> Vec<usize> {
    let mut per: HashMap<String, usize> = HashMap::new();
    for stream in streams {
        for l in table.list(&LeaseScope::new(GROUP, *stream)).await.expect("list") {
            if !l.is_finished() {
                *per.entry(l.owner.unwrap_or_default()).or_default() += 1;
            }
        }
    }
    let mut counts: Vec<usize> = per.into_values().collect();
    counts.sort_unstable();
    counts
}

fn assert_right_stream(seen: &Seen) {
    for r in seen.all() {
        let stream = r.data.split('-').next().unwrap_or_default();
        assert_eq!(r.stream, stream, "record {} came as one of {}", r.data, r.stream);
    }
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, done: impl FnMut() -> F) {
    Wait::PAUSED.expect_async(what, done).await;
}

#[tokio::test(start_paused = true)]
async fn workers_joining_one_that_holds_every_stream_get_a_fair_share_of_all_of_them() {
    let fake = fake();
    let table = MemoryLeaseTable::new();
    let seen = Seen::default();
    let producer = produce(&fake, 150, "r", Duration::from_millis(100));
    let first = start(all_streams(), &fake, &table, "w1", &seen);
    wait_until("w1 holds all 6 leases of the 4 streams", || async { spread(&table).await == [6] }).await;
    let joined = tokio::time::Instant::now();
    let mut workers = vec![start(all_streams(), &fake, &table, "w2", &seen)];
    workers.push(start(all_streams(), &fake, &table, "w3", &seen));
    wait_until("2/2/2 over the streams", || async { spread(&table).await == [2, 2, 2] }).await;
    eprintln!("3 workers over 4 streams (6 shards): balanced {:?} after the join", joined.elapsed());
    assert!(joined.elapsed() <= LEASE * 2 * 2, "within 2 take cycles, not {:?}", joined.elapsed());
    let produced = producer.await.expect("producer");
    wait_until("every record", || async { seen.distinct() == produced.len() }).await;
    tokio::time::sleep(LEASE * 3).await;
    assert_eq!(spread(&table).await, [2, 2, 2], "stable");
    seen.assert_all_handled(&produced);
    assert_eq!(seen.duplicates(), 0, "moves are handoffs: nothing read twice");
    seen.assert_key_order();
    assert_right_stream(&seen);
    workers.push(first);
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_worker_dropped_without_release_is_replaced_over_every_stream_and_no_record_is_lost() {
    let fake = fake();
    let table = MemoryLeaseTable::new();
    let seen = Seen::default();
    let producer = produce(&fake, 300, "f", Duration::from_millis(100));
    let workers: Vec<Worker> =
        ["w1", "w2", "w3"].iter().map(|id| start(all_streams(), &fake, &table, id, &seen)).collect();
    wait_until("2/2/2", || async { spread(&table).await == [2, 2, 2] }).await;
    let mut workers = workers.into_iter();
    let dropped = workers.next().expect("w1");
    // As a kill -9: renewals stop, nothing is released or written.
    dropped.task.abort();
    let killed = tokio::time::Instant::now();
    wait_until("3/3 between the two left", || async { spread(&table).await == [3, 3] }).await;
    eprintln!("failover over 4 streams: {:?} (lease {LEASE:?})", killed.elapsed());
    assert!(killed.elapsed() <= LEASE * 2, "within 2 lease durations, not {:?}", killed.elapsed());
    let produced = producer.await.expect("producer");
    wait_until("every record", || async { seen.distinct() == produced.len() }).await;
    seen.assert_all_handled(&produced);
    seen.assert_key_order();
    assert_right_stream(&seen);
    for w in workers {
        w.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_tracked_stream_removed_releases_its_leases_and_keeps_them_for_when_it_comes_back() {
    let fake = fake();
    let table = MemoryLeaseTable::new();
    let seen = Seen::default();
    let tracker = Tracker::default();
    tracker.set(&["a", "b", "c", "d"]);
    let workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|id| start(Consumer::builder_tracking(tracker.clone()), &fake, &table, id, &seen))
        .collect();
    let first = produce(&fake, 50, "x", Duration::from_millis(20)).await.expect("producer");
    wait_until("3/3", || async { spread(&table).await == [3, 3] }).await;
    wait_until("the first records", || async { seen.distinct() == first.len() }).await;

    tracker.set(&["b", "c", "d"]);
    let scope = LeaseScope::new(GROUP, "a");
    wait_until("a's leases released", || async {
        table.list(&scope).await.expect("list").iter().all(|l| l.owner.is_none())
    })
    .await;
    let kept: BTreeMap<String, Option<Checkpoint>> =
        table.list(&scope).await.expect("list").into_iter().map(|l| (l.shard_id, l.checkpoint)).collect();
    assert_eq!(kept.len(), 3, "a's leases stay in the table: {kept:?}");
    assert!(kept.values().all(Option::is_some), "with their checkpoints: {kept:?}");
    wait_until("the 3 leases left, 2/1", || async { spread_over(&table, &["b", "c", "d"]).await == [1, 2] }).await;

    let second = produce(&fake, 50, "y", Duration::from_millis(20)).await.expect("producer");
    let b_to_d = second.iter().filter(|d| !d.starts_with("a-")).count();
    wait_until("b, c and d's new records", || async { seen.distinct() == first.len() + b_to_d }).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(seen.all().iter().all(|r| r.data.starts_with("a-x") || !r.data.starts_with("a-")), "a is not read");

    tracker.set(&["a", "b", "c", "d"]);
    wait_until("every record", || async { seen.distinct() == first.len() + second.len() }).await;
    wait_until("3/3 again", || async { spread(&table).await == [3, 3] }).await;
    let mut all = first;
    all.extend(second);
    seen.assert_all_handled(&all);
    assert_eq!(seen.duplicates(), 0, "a resumed from its checkpoints, b, c and d moved by handoff");
    assert_right_stream(&seen);
    for w in workers {
        w.stop().await;
    }
}
