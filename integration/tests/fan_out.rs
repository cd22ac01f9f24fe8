//! Enhanced fan-out against kinesis-local (kinesis-mock), started by `cargo xtask integration`
//! (`KINESIS_LOCAL_ENDPOINT`). kinesis-mock pushes an event about once a second and is slower than kinesalite
//! under load: these tests use hundreds of records, not thousands. A subscription that ends after its 5 minutes
//! is covered with the fake (crates/kc-core/tests/fan_out_fake.rs): kinesis-local cannot be told to end one early.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_integration::{
    collect_until, create_stream, example_bin, fan_out_builder, kinesis_local, kinesis_local_at,
    kinesis_local_endpoint, put_numbered, split, unique_stream, CutProxy, Seen,
};
use kc_test_support::check::tally;
use kinesis_consumer::{Checkpoint, CheckpointStore, MemoryStore, Outcome, Record, ShardKey};

/// Records put before the consumer starts and while it reads are all handled once, in order per shard and key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_and_during_the_subscription_are_handled_once_in_order() -> anyhow::Result<()> {
    let client = kinesis_local().await;
    let stream = unique_stream("efo-basic");
    create_stream(&client, &stream, 2).await?;
    let mut produced = put_numbered(&client, &stream, "r", 0..150, 10).await?;
    let consumer = fan_out_builder(client.clone(), &stream, "efo-basic").build().await?;
    let task = tokio::spawn(collect_until(consumer, 300));
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let from = 150 + round * 50;
        produced.extend(put_numbered(&client, &stream, "r", from..from + 50, 10).await?);
    }
    let (seen, result) = task.await?;
    result?;
    seen.assert_exactly_once(&produced);
    seen.assert_shard_order();
    seen.assert_key_order();
    // The consumer was registered by the scan and is kept (deregistration is off by default).
    let arn = client.describe_stream_summary().stream_name(&stream).send().await?;
    let arn = arn.stream_description_summary().map(|d| d.stream_arn().to_owned()).unwrap_or_default();
    let consumers = client.list_stream_consumers().stream_arn(&arn).send().await?;
    let names: Vec<&str> = consumers.consumers().iter().map(|c| c.consumer_name()).collect();
    assert_eq!(names, ["efo-basic"]);
    Ok(())
}

/// Connections cut under the subscription (the SDK sees the event stream break) are replaced by new subscriptions
/// from the last continuation sequence number: nothing lost, nothing repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_from_the_continuation() -> anyhow::Result<()> {
    let client = kinesis_local().await;
    let stream = unique_stream("efo-drop");
    create_stream(&client, &stream, 1).await?;
    let target = kinesis_local_endpoint().trim_start_matches("http://").to_owned();
    let proxy = CutProxy::start(&target).await?;
    let through_proxy = kinesis_local_at(&format!("http://{}", proxy.addr())).await;
    let consumer = fan_out_builder(through_proxy, &stream, "efo-drop")
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(500))
        .build()
        .await?;
    // One batch before the start and one after each of the cuts; the collector waits for all of them (it stops a
    // moment after seeing that many, so a smaller figure would cut the last batch off).
    const BATCH: usize = 60;
    const CUTS: usize = 5;
    let mut produced = put_numbered(&client, &stream, "r", 0..BATCH, 5).await?;
    let task = tokio::spawn(collect_until(consumer, BATCH * (CUTS + 1)));
    for round in 1..=CUTS {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        produced.extend(put_numbered(&client, &stream, "r", round * BATCH..(round + 1) * BATCH, 5).await?);
    }
    let (seen, result) = task.await?;
    result?;
    seen.assert_exactly_once(&produced);
    seen.assert_shard_order();
    Ok(())
}

/// A second run resumes after the store's checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_checkpoint() -> anyhow::Result<()> {
    let client = kinesis_local().await;
    let stream = unique_stream("efo-restart");
    create_stream(&client, &stream, 2).await?;
    let store = MemoryStore::new();
    let first = put_numbered(&client, &stream, "r", 0..100, 10).await?;
    let consumer = fan_out_builder(client.clone(), &stream, "efo-restart").store(store.clone()).build().await?;
    let (seen, result) = collect_until(consumer, 100).await;
    result?;
    seen.assert_exactly_once(&first);
    let second = put_numbered(&client, &stream, "r", 100..180, 10).await?;
    let consumer = fan_out_builder(client.clone(), &stream, "efo-restart").store(store.clone()).build().await?;
    let (seen, result) = collect_until(consumer, 80).await;
    result?;
    seen.assert_exactly_once(&second);
    Ok(())
}

/// A split while reading with fan-out: the parent to its end (ShardEnd checkpoint), then both children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_during_fan_out_reads_parents_then_children() -> anyhow::Result<()> {
    let client = kinesis_local().await;
    let stream = unique_stream("efo-split");
    create_stream(&client, &stream, 1).await?;
    let store = MemoryStore::new();
    let mut produced = put_numbered(&client, &stream, "r", 0..100, 8).await?;
    let consumer = fan_out_builder(client.clone(), &stream, "efo-split").store(store.clone()).build().await?;
    let task = tokio::spawn(collect_until(consumer, 250));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shards = client.list_shards().stream_name(&stream).send().await?;
    let parent = shards.shards().first().map(|s| s.shard_id().to_owned()).unwrap_or_default();
    split(&client, &stream, &parent).await?;
    produced.extend(put_numbered(&client, &stream, "r", 100..250, 8).await?);
    let (seen, result) = task.await?;
    result?;
    seen.assert_exactly_once(&produced);
    seen.assert_key_order();
    let order: Vec<String> = seen.all().into_iter().map(|r| r.shard).collect();
    let last_parent = order.iter().rposition(|s| *s == parent).expect("parent read");
    let first_child = order.iter().position(|s| *s != parent).expect("children read");
    assert!(last_parent < first_child, "a child record came before the parent's last one");
    let children: std::collections::HashSet<&String> = order.iter().filter(|s| **s != parent).collect();
    assert_eq!(children.len(), 2, "both children read");
    let cp = store.get(&ShardKey::new("it", stream.as_str(), parent.as_str())).await?;
    assert_eq!(cp, Some(Checkpoint::ShardEnd));
    Ok(())
}

/// Cancelling the shutdown token while records stream in: `scan` returns `Ok` promptly with the handled records
/// checkpointed, so that a restart continues exactly after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_stream_is_graceful() -> anyhow::Result<()> {
    let client = kinesis_local().await;
    let stream = unique_stream("efo-stop");
    create_stream(&client, &stream, 2).await?;
    let store = MemoryStore::new();
    let produced = put_numbered(&client, &stream, "r", 0..300, 10).await?;
    let consumer = fan_out_builder(client.clone(), &stream, "efo-stop")
        .store(store.clone())
        .deregister_on_shutdown(true)
        .build()
        .await?;
    let token = consumer.shutdown_token();
    let seen = Seen::default();
    let s = seen.clone();
    let stopped = Arc::new(Mutex::new(None));
    let (at, handled) = (Arc::clone(&stopped), Arc::new(AtomicUsize::new(0)));
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let (s, token, at, handled) = (s.clone(), token.clone(), Arc::clone(&at), Arc::clone(&handled));
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await; // slower than the stream
                    s.push(&r);
                    // Cancelled from the handler, so the stop comes mid-stream however slow the machine is.
                    if handled.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                        *at.lock().expect("lock") = Some(std::time::Instant::now());
                        token.cancel();
                    }
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    let cancelled = || *stopped.lock().expect("lock");
    kc_integration::wait_for("100 records", Duration::from_secs(60), || cancelled().is_some()).await;
    let stopped = cancelled().expect("cancelled at the 100th record");
    tokio::time::timeout(Duration::from_secs(10), task).await??.map_err(anyhow::Error::new)?;
    eprintln!("scan returned {:?} after the cancel, {} records handled", stopped.elapsed(), seen.len());
    assert!(seen.len() < produced.len(), "stopped mid-stream");
    // The consumer was deregistered on shutdown, as asked.
    let arn = client.describe_stream_summary().stream_name(&stream).send().await?;
    let arn = arn.stream_description_summary().map(|d| d.stream_arn().to_owned()).unwrap_or_default();
    let mut deregistered = false;
    for _ in 0..50 {
        let consumers = client.list_stream_consumers().stream_arn(&arn).send().await?;
        let active = consumers.consumers().iter().any(|c| {
            c.consumer_name() == "efo-stop" && *c.consumer_status() != aws_sdk_kinesis::types::ConsumerStatus::Deleting
        });
        if !active {
            deregistered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deregistered, "consumer deregistered on shutdown");
    // A restart (registering the consumer again) continues after the checkpoints: the two runs saw each record once.
    let consumer = fan_out_builder(client.clone(), &stream, "efo-stop").store(store.clone()).build().await?;
    let (rest, result) = collect_until(consumer, produced.len() - seen.len()).await;
    result?;
    let mut all = seen.data();
    all.extend(rest.data());
    assert_eq!(tally(&produced, &all), (0, 0), "lost, duplicates: each record once over the stop and restart");
    assert_eq!(all.len(), produced.len());
    Ok(())
}

/// The `consumer` example with `--fan-out NAME`, as a user runs it: every record printed once, SIGINT stops it
/// with exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_example_with_fan_out() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let client = kinesis_local().await;
    let stream = unique_stream("efo-example");
    create_stream(&client, &stream, 2).await?;
    let produced = put_numbered(&client, &stream, "line-", 0..60, 7).await?;
    let mut child = tokio::process::Command::new(example_bin("consumer"))
        .args(["--stream", &stream, "--endpoint", &kinesis_local_endpoint(), "--iterator-type", "TRIM_HORIZON"])
        .args(["--fan-out", "efo-example"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let read = async {
        while printed.len() < produced.len() {
            match lines.next_line().await {
                Ok(Some(line)) => printed.push(line),
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // a duplicate would arrive now
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status()?.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    assert!(status.success(), "consumer exited with {status} after SIGINT");
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push(line);
    }
    printed.sort();
    let mut want = produced.clone();
    want.sort();
    assert_eq!(printed, want, "every record printed once");
    Ok(())
}
