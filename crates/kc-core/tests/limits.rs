//! Settings at their extremes: durations a user may give (up to `Duration::MAX`) are refused with a clear error or
//! run without a panic; none overflows the clock.

use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::lease::MemoryLeaseTable;
use kc_core::fake::FakeKinesis;
use kc_core::{Consumer, ConsumerBuilder, ErrorKind, Group, InitialPosition, Outcome, Record};
use tokio_util::sync::CancellationToken;

const STREAM: &str = "s";

/// A change to a builder's settings.
type Tweak = Box<dyn FnOnce(ConsumerBuilder) -> ConsumerBuilder>;

/// Scans the fake's 2-shard stream with `tweak`'s settings for 10 s of paused time after every record was handled;
/// the scan's result (a panic fails the test).
async fn scan_with(tweak: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder) -> Result<usize, kc_core::Error> {
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, 2);
    for i in 0..20 {
        fake.put(STREAM, &format!("k{i}"), format!("r{i}"));
    }
    let token = CancellationToken::new();
    let builder = Consumer::builder(STREAM).api(fake).initial_position(InitialPosition::TrimHorizon);
    let consumer = tweak(builder).shutdown(token.clone()).build().await?;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let scan = tokio::spawn(async move {
        consumer
            .scan(move |_r: Record| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }
            })
            .await
    });
    for _ in 0..600 {
        if seen.load(std::sync::atomic::Ordering::SeqCst) >= 20 || scan.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    token.cancel();
    scan.await.expect("the scan task panicked")?;
    Ok(seen.load(std::sync::atomic::Ordering::SeqCst))
}

#[tokio::test(start_paused = true)]
async fn duration_max_is_refused_with_a_clear_error() {
    let max = Duration::MAX;
    let group = || Group::new("g", MemoryLeaseTable::new()).worker_id("w");
    let cases: Vec<(&str, Tweak)> = vec![
        ("scan_interval", Box::new(move |b| b.scan_interval(max))),
        ("max_idle_interval", Box::new(move |b| b.max_idle_interval(max))),
        ("discovery_interval", Box::new(move |b| b.discovery_interval(max))),
        ("min_poll_interval", Box::new(move |b| b.min_poll_interval(max))),
        ("call_timeout", Box::new(move |b| b.call_timeout(max))),
        ("retry backoff", Box::new(move |b| b.retry_backoff(Duration::from_millis(1), max))),
        ("lease_duration", Box::new(move |b| b.group(group().lease_duration(max)))),
        ("take_interval", Box::new(move |b| b.group(group().take_interval(max)))),
    ];
    for (name, tweak) in cases {
        let err = scan_with(tweak).await.expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Config, "{name}: {err}");
        assert!(err.to_string().contains(name), "{name}: {err}");
        assert!(err.to_string().contains("at most"), "{name}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_longest_accepted_durations_run_without_overflow() {
    let max = kc_core::MAX_DURATION;
    let handled = scan_with(|b| b.discovery_interval(max).call_timeout(max).retry_backoff(max, max))
        .await
        .expect("the longest discovery interval, call timeout and backoff");
    assert_eq!(handled, 20);
    scan_with(|b| b.scan_interval(max).min_poll_interval(max).max_idle_interval(max))
        .await
        .expect("the longest polling intervals");
    let group = Group::new("g", MemoryLeaseTable::new()).worker_id("w").lease_duration(max).take_interval(max);
    let handled = scan_with(|b| b.discovery_interval(max).group(group)).await.expect("the longest group durations");
    assert_eq!(handled, 20);
}
