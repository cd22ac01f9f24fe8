//! Enhanced fan-out against the in-process fake (tokio's paused clock): consumer registration, subscriptions that
//! end, drop and are refused within 5 s, continuation without loss or repeat, KPL resume, resharding, backpressure,
//! deregistration. The same behaviours are tested against kinesis-local in `kc-integration` (tests/fan_out.rs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_core::api::ApiErrorKind;
use kc_core::fake::{FakeKinesis, Op};
use kc_core::{
    Checkpoint, CheckpointStore, Consumer, ConsumerBuilder, ErrorKind, InitialPosition, MemoryStore, Outcome, Record,
    SequenceNumber, ShardKey, StartingPosition,
};
use kc_test_support::fake::{put_many, STREAM};
use kc_test_support::{checkpoint, spawn_collecting, Collect, Collecting, Seen, Wait};

const APP: &str = "efo-app";

fn builder(fake: &FakeKinesis, store: &MemoryStore) -> ConsumerBuilder {
    Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .app_name(APP)
        .initial_position(InitialPosition::TrimHorizon)
        .discovery_interval(Duration::from_secs(1))
        .fan_out("efo")
}

/// A collecting scan until `want` records were seen; a duplicate has 3 s to arrive.
const COLLECT: Collect = Collect::PAUSED.settle(Duration::from_secs(3));

async fn scan_until(consumer: Consumer, want: usize) -> (Seen, Result<(), kc_core::Error>) {
    COLLECT.run(consumer, want).await
}

#[tokio::test(start_paused = true)]
async fn registers_the_consumer_waits_until_active_and_reads_every_record_once_in_order() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 3);
    fake.consumer_activation(Duration::from_secs(4));
    fake.event_limit(7);
    let store = MemoryStore::new();
    let mut produced = put_many(&fake, 0..100, "r");
    let consumer = builder(&fake, &store).build().await.expect("build");
    let f = fake.clone();
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(6)).await;
        put_many(&f, 100..200, "r")
    });
    let task = tokio::spawn(scan_until(consumer, 200));
    produced.extend(producer.await.expect("producer"));
    let (seen, result) = task.await.expect("scan");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    assert_eq!(fake.consumers(STREAM), ["efo"], "registered, and kept by default");
    assert_eq!(fake.calls(Op::RegisterStreamConsumer), 1);
    assert!(fake.calls(Op::DescribeStreamConsumer) >= 2, "polled until ACTIVE");
    assert_eq!(fake.calls(Op::GetRecords), 0, "fan-out does not poll");
    assert_eq!(fake.calls(Op::GetShardIterator), 0);
    let subscriptions = fake.subscriptions();
    assert_eq!(subscriptions.len(), 3, "one subscription per shard: {subscriptions:?}");
    assert!(subscriptions.iter().all(|(_, p)| *p == StartingPosition::TrimHorizon));
    // Checkpoints as with polling.
    for shard in fake.shard_ids(STREAM) {
        let cp = store.get(&ShardKey::new(APP, STREAM, shard.as_str())).await.expect("get");
        assert!(matches!(cp, Some(Checkpoint::At { .. })), "{shard}: {cp:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_existing_consumer_is_used_and_deregistered_on_shutdown_when_asked() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let arn = fake.register_consumer(STREAM, "given");
    let produced = put_many(&fake, 0..10, "r");
    let store = MemoryStore::new();
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .fan_out_consumer_arn(arn)
        .deregister_on_shutdown(true)
        .build()
        .await
        .expect("build");
    let (seen, result) = scan_until(consumer, 10).await;
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert_eq!(fake.calls(Op::RegisterStreamConsumer), 0);
    assert!(fake.consumers(STREAM).is_empty(), "deregistered on shutdown");
    assert_eq!(fake.calls(Op::DeregisterStreamConsumer), 1);
}

#[tokio::test(start_paused = true)]
async fn a_missing_consumer_arn_is_a_clear_error() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let consumer = Consumer::builder(STREAM)
        .api(fake.clone())
        .fan_out_consumer_arn("arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/nope:1")
        .build()
        .await
        .expect("build");
    let err = consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await;
    let err = err.expect_err("no such consumer");
    assert_eq!(err.kind(), ErrorKind::StreamNotFound);
    assert!(err.to_string().contains("DescribeStreamConsumer"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn ended_and_dropped_subscriptions_continue_without_loss_or_repeat() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    fake.subscription_duration(Duration::from_secs(7));
    fake.event_limit(3);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let f = fake.clone();
    let producer = tokio::spawn(async move {
        let mut produced = Vec::new();
        for round in 0..20 {
            produced.extend(put_many(&f, round * 10..round * 10 + 10, "r"));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            match round {
                // A dropped connection, and a broken event stream.
                5 | 12 => f.drop_subscriptions(),
                9 => f.inject(Op::SubscribeEvent, ApiErrorKind::Transient, 1),
                _ => {}
            }
        }
        produced
    });
    let task = tokio::spawn(COLLECT.pace(Duration::from_millis(20)).run(consumer, 200));
    let produced = producer.await.expect("producer");
    let (seen, result) = task.await.expect("scan");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    let subscriptions = fake.subscriptions();
    // 30 s of reading with 7 s subscriptions, two drops and a broken stream: many subscriptions per shard.
    assert!(subscriptions.len() >= 2 * 4, "subscribed again: {subscriptions:?}");
    let continued = subscriptions.iter().filter(|(_, p)| matches!(p, StartingPosition::AfterSequenceNumber(_)));
    assert!(continued.count() >= subscriptions.len() - 2, "re-subscriptions continue after the continuation");
}

#[tokio::test(start_paused = true)]
async fn resource_in_use_within_five_seconds_waits_and_subscribes_again() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let f = fake.clone();
    let producer = tokio::spawn(async move {
        let mut produced = put_many(&f, 0..5, "r");
        Wait::PAUSED.expect("a subscription", || f.subscriptions().len() == 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Dropped right after subscribing: the immediate re-subscription is refused (ResourceInUse).
        f.drop_subscriptions();
        produced.extend(put_many(&f, 5..10, "r"));
        produced
    });
    let task = tokio::spawn(scan_until(consumer, 10));
    let produced = producer.await.expect("producer");
    let (seen, result) = task.await.expect("scan");
    result.expect("ResourceInUse is retried, not an error");
    seen.assert_exactly_once(&produced);
    let calls = fake.calls(Op::SubscribeToShard);
    let ok = fake.subscriptions().len();
    assert_eq!(ok, 2, "subscribed again once accepted");
    assert!(calls > ok, "at least one refused attempt: {calls} calls, {ok} accepted");
    assert!(calls <= ok + 3, "a short wait, not a spin: {calls} calls");
}

#[tokio::test(start_paused = true)]
async fn restart_resumes_after_the_checkpoint() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    let store = MemoryStore::new();
    let first = put_many(&fake, 0..40, "r");
    let (seen, result) = scan_until(builder(&fake, &store).build().await.expect("build"), 40).await;
    result.expect("scan");
    seen.assert_exactly_once(&first);
    let second = put_many(&fake, 40..70, "r");
    let (seen, result) = scan_until(builder(&fake, &store).build().await.expect("build"), 30).await;
    result.expect("scan");
    seen.assert_exactly_once(&second);
    let resumed = fake.subscriptions().into_iter().skip(2);
    assert!(resumed.into_iter().all(|(_, p)| matches!(p, StartingPosition::AfterSequenceNumber(_))));
}

#[tokio::test(start_paused = true)]
async fn restart_mid_kpl_aggregate_subscribes_at_it_and_skips_handled_user_records() {
    use kc_deagg::Aggregator;
    let aggregate = |prefix: &str, n: usize| {
        let mut agg = Aggregator::new();
        for i in 0..n {
            agg.add(&format!("user-key-{i}"), None, format!("{prefix}{i}").as_bytes());
        }
        agg.finish()
    };
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    let (shard, seq) = fake.put(STREAM, "outer", aggregate("a", 5));
    fake.put(STREAM, "plain", "plain-record");
    let store = MemoryStore::new();
    let key = ShardKey::new(APP, STREAM, shard.as_str());
    let sequence = SequenceNumber::parse(seq).expect("sequence");
    store.set(&key, Checkpoint::at_sub(sequence.clone(), 2)).await.expect("set");
    let consumer = builder(&fake, &store).aggregation(true).build().await.expect("build");
    let (seen, result) = scan_until(consumer, 3).await;
    result.expect("scan");
    assert_eq!(seen.data(), ["a3", "a4", "plain-record"]);
    assert_eq!(fake.subscriptions(), [(shard, StartingPosition::AtSequenceNumber(sequence))]);
}

#[tokio::test(start_paused = true)]
async fn split_during_fan_out_parents_before_children() {
    // As on AWS; without ChildShards; and like kinesis-mock, with no end reported at all (found by probing).
    for (hide_child_shards, hide_end) in [(false, false), (true, false), (false, true)] {
        let fake = FakeKinesis::new();
        fake.hide_child_shards(hide_child_shards);
        fake.hide_subscription_end(hide_end);
        fake.create_stream(STREAM, 1);
        fake.event_limit(5);
        let store = MemoryStore::new();
        let closed = Arc::new(Mutex::new(Vec::<String>::new()));
        let c = closed.clone();
        let consumer = builder(&fake, &store)
            .on_shard_closed(move |s| c.lock().expect("lock").push(s.to_owned()))
            .build()
            .await
            .expect("build");
        let f = fake.clone();
        let producer = tokio::spawn(async move {
            let mut produced = put_many(&f, 0..50, "r");
            tokio::time::sleep(Duration::from_secs(2)).await;
            let parent = f.open_shard_ids(STREAM)[0].clone();
            f.split_shard(STREAM, &parent);
            produced.extend(put_many(&f, 50..100, "r"));
            produced
        });
        let task = tokio::spawn(COLLECT.pace(Duration::from_millis(30)).run(consumer, 100));
        let produced = producer.await.expect("producer");
        let (seen, result) = task.await.expect("scan");
        result.expect("scan");
        seen.assert_exactly_once(&produced);
        seen.assert_key_order();
        let ids = fake.shard_ids(STREAM);
        let order: Vec<String> = seen.all().into_iter().map(|r| r.shard).collect();
        let last_parent = order.iter().rposition(|s| *s == ids[0]).expect("parent read");
        let first_child = order.iter().position(|s| *s != ids[0]).expect("children read");
        assert!(last_parent < first_child, "a child started before its parent ended");
        assert_eq!(closed.lock().expect("lock").clone(), [ids[0].clone()]);
        let cp = store.get(&ShardKey::new(APP, STREAM, ids[0].as_str())).await.expect("get");
        assert_eq!(cp, Some(Checkpoint::ShardEnd));
        let children: Vec<_> = fake.subscriptions().into_iter().filter(|(s, _)| *s != ids[0]).collect();
        assert_eq!(children.len(), 2, "each child subscribed: {children:?}");
        assert!(children.iter().all(|(_, p)| *p == StartingPosition::TrimHorizon), "children from their start");
    }
}

#[tokio::test(start_paused = true)]
async fn the_handler_paces_the_subscription() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    fake.event_limit(10);
    let produced = put_many(&fake, 0..300, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let Collecting { seen, token, task } = spawn_collecting(consumer, Duration::from_millis(100), checkpoint);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1234)).await;
        let handled = seen.len();
        let taken = fake.calls(Op::SubscribeEvent);
        // One event in hand beyond what was handled, never a read-ahead buffer.
        assert!(taken <= handled / 10 + 1, "{taken} events taken for {handled} records handled");
    }
    token.cancel();
    task.await.expect("task").expect("scan");
    let handled = seen.len();
    assert!(handled > 200 && handled < produced.len(), "slow handler: {handled}");
    // The stop checkpointed the record in hand: a restart continues right after it.
    let (rest, result) = scan_until(builder(&fake, &store).build().await.expect("build"), 300 - handled).await;
    result.expect("scan");
    let mut all = seen.data();
    all.extend(rest.data());
    assert_eq!(all, produced, "nothing lost or repeated across the graceful stop");
}

#[tokio::test(start_paused = true)]
async fn millis_behind_latest_and_batches_as_with_polling() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    fake.event_limit(4);
    let produced = put_many(&fake, 0..10, "r");
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let batches = Arc::new(Mutex::new(Vec::<(usize, Option<i64>)>::new()));
    let b = batches.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan_batches(move |batch: kc_core::Batch| {
                let b = b.clone();
                async move {
                    b.lock().expect("lock").push((batch.records().len(), batch.millis_behind_latest()));
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    Wait::PAUSED
        .expect("every record", || {
            batches.lock().expect("lock").iter().map(|(n, _)| n).sum::<usize>() >= produced.len()
        })
        .await;
    token.cancel();
    task.await.expect("task").expect("scan");
    let batches = batches.lock().expect("lock").clone();
    assert_eq!(batches[..3], [(4, Some(1_000)), (4, Some(1_000)), (2, Some(0))], "one batch per event");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_subscription_is_replaced_after_the_idle_limit() {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 1);
    fake.consumer_activation(Duration::ZERO);
    let store = MemoryStore::new();
    let consumer = builder(&fake, &store).build().await.expect("build");
    let f = fake.clone();
    let producer = tokio::spawn(async move {
        let mut produced = put_many(&f, 0..10, "r");
        Wait::PAUSED.expect("a subscription", || f.subscriptions().len() == 1).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        f.stall_subscriptions(); // hangs without closing: only the idle limit notices
        produced.extend(put_many(&f, 10..20, "r"));
        produced
    });
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(scan_until(consumer, 20));
    let produced = producer.await.expect("producer");
    let (seen, result) = task.await.expect("scan");
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert_eq!(fake.subscriptions().len(), 2, "subscribed again after the stall");
    assert!(started.elapsed() >= Duration::from_secs(30), "after the idle limit, not before");
}
