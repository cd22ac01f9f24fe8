//! One consumer reading 1,000 shards of kinesalite (issue 13): every record arrives, and no call is abandoned at its
//! client-side timeout (the calls in flight are bounded, so a slow endpoint queues work in the consumer instead of
//! timing calls out and retrying them into a collapse).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use kc_integration::observed::CALL_TIMEOUT;
use kc_integration::{kinesis, new_stream, put_numbered, spawn_collecting, Observed, Wait};
use kc_test_support::checkpoint;
use kinesis_consumer::{Consumer, InitialPosition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_shards_every_record_and_no_client_side_timeout() {
    let started = Instant::now();
    let (client, stream) = new_stream("many", 1_000).await;
    let produced = put_numbered(&client, &stream, "r", 0..10_000, 10_000).await.expect("put");
    let ready = started.elapsed();
    let api = Observed::new(kinesis().await);
    // The defaults a new user gets (64 calls in flight, a 10 s call timeout, 250 ms scan interval), at TRIM_HORIZON.
    let consumer = Consumer::builder(&stream)
        .api(api.clone())
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    let consume = Instant::now();
    let scan = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    let all = Wait::real(Duration::from_secs(60)).until(|| scan.seen.len() >= produced.len()).await;
    let took = consume.elapsed();
    // Duplicates would come now; calls abandoned from the stop on were stopped, not timed out.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.stopping();
    let (seen, result) = scan.stop(Duration::from_secs(10)).await;
    // Its 1,000 shards count against kinesalite's shard limit for every later test.
    client.delete_stream().stream_name(&stream).send().await.expect("delete the stream");
    println!("1,000 shards: stream and {} records ready in {ready:?}, all handled in {took:?}", produced.len());
    assert!(all, "not every record within 60 s: {} of {}", seen.len(), produced.len());
    result.expect("scan");
    seen.assert_exactly_once(&produced);
    assert_eq!(api.count(CALL_TIMEOUT), 0, "calls abandoned at the client-side timeout: {}", api.summary());
    assert_eq!(api.count("Permanent"), 0, "permanent errors: {}", api.summary());
}
