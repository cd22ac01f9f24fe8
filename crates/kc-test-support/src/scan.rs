//! Scans with a collecting handler, run in a task of their own and stopped through the consumer's shutdown token;
//! and the timed scan of the benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kc_core::{Consumer, ConsumerBuilder, Outcome, Record};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::check::lock;
use crate::{Seen, Wait};

/// The result of a scan.
type ScanResult = Result<(), kc_core::Error>;

/// Checkpoints every record: the outcome of most collecting handlers.
pub fn checkpoint(_: &Record) -> Outcome {
    Outcome::Checkpoint
}

/// A running scan with a collecting handler: what it saw, its shutdown token and its task.
#[derive(Debug)]
pub struct Collecting {
    /// What the handler saw.
    pub seen: Seen,
    /// The consumer's shutdown token.
    pub token: CancellationToken,
    /// The scan.
    pub task: JoinHandle<ScanResult>,
}

impl Collecting {
    /// Cancels the scan and waits for its result.
    ///
    /// # Panics
    /// When it does not return within `within`, or its task panicked.
    pub async fn stop(self, within: Duration) -> (Seen, ScanResult) {
        self.token.cancel();
        match tokio::time::timeout(within, self.task).await {
            Ok(joined) => (self.seen, joined.expect("the scan task panicked")),
            Err(_) => panic!("the scan did not stop within {within:?} of its cancellation"),
        }
    }
}

/// Spawns `consumer.scan` with a handler that sleeps `pace` (if not zero), records the record in [`Seen`] and
/// answers `outcome(record)`.
pub fn spawn_collecting(consumer: Consumer, pace: Duration, outcome: fn(&Record) -> Outcome) -> Collecting {
    let seen = Seen::default();
    let s = seen.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let s = s.clone();
                async move {
                    if !pace.is_zero() {
                        tokio::time::sleep(pace).await;
                    }
                    s.push(&r);
                    Ok::<_, std::io::Error>(outcome(&r))
                }
            })
            .await
    });
    Collecting { seen, token, task }
}

/// Builds the consumer inside a task (a group worker's build waits for the lease table, and several workers start
/// together) and scans, recording every record in `seen` (give it `seen.for_worker(id)` for a group worker) and
/// checkpointing it. Stop it through the builder's shutdown token.
pub fn spawn_recording(builder: ConsumerBuilder, seen: Seen) -> JoinHandle<ScanResult> {
    tokio::spawn(async move {
        let consumer = builder.build().await?;
        consumer
            .scan(move |r: Record| {
                let seen = seen.clone();
                async move {
                    seen.push(&r);
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    })
}

/// How a collecting scan is run to a number of records: the handler's pace, how long to wait for them, how long to
/// let anything extra (a duplicate) arrive after, how long the stop may take.
#[derive(Clone, Copy, Debug)]
pub struct Collect {
    pace: Duration,
    wait: Wait,
    settle: Duration,
    stop_within: Duration,
}

impl Collect {
    /// For tests on a paused clock: no pace, [`Wait::PAUSED`], 2 s to settle, 10 minutes to stop (virtual time).
    pub const PAUSED: Collect = Collect {
        pace: Duration::ZERO,
        wait: Wait::PAUSED,
        settle: Duration::from_secs(2),
        stop_within: Duration::from_secs(600),
    };

    /// For tests against real servers: no pace, 60 s for the records, half a second to settle, 10 s to stop.
    pub const REAL: Collect = Collect {
        pace: Duration::ZERO,
        wait: Wait::real(Duration::from_secs(60)),
        settle: Duration::from_millis(500),
        stop_within: Duration::from_secs(10),
    };

    /// With a handler that sleeps `pace` per record.
    #[must_use]
    pub const fn pace(self, pace: Duration) -> Self {
        Self { pace, ..self }
    }

    /// Letting anything extra arrive for `settle` after the records wanted.
    #[must_use]
    pub const fn settle(self, settle: Duration) -> Self {
        Self { settle, ..self }
    }

    /// Runs a [`spawn_collecting`] scan (checkpointing every record) until `want` records were seen (or the scan
    /// ended), lets anything extra arrive, cancels; returns what was seen and the scan's result.
    ///
    /// # Panics
    /// When the records do not come within the wait's limit, or the scan does not stop in time.
    pub async fn run(self, consumer: Consumer, want: usize) -> (Seen, ScanResult) {
        let collecting = spawn_collecting(consumer, self.pace, checkpoint);
        let (seen, task) = (&collecting.seen, &collecting.task);
        self.wait.expect(&format!("{want} records"), || seen.len() >= want || task.is_finished()).await;
        tokio::time::sleep(self.settle).await;
        collecting.stop(self.stop_within).await
    }
}

/// [`Collect::REAL`]: scans until `want` records were seen (or the scan ended), waits half a second for
/// duplicates, cancels; returns what was seen and the scan's result.
pub async fn collect_until(consumer: Consumer, want: usize) -> (Seen, ScanResult) {
    Collect::REAL.run(consumer, want).await
}

/// Scans, recording every record, until the handler meets the record with data `data`: it fails there (as a crash
/// would); returns what was recorded before and the scan's error.
///
/// # Panics
/// When the scan ends without an error.
pub async fn scan_failing_at(consumer: &Consumer, data: &str) -> (Seen, kc_core::Error) {
    let seen = Seen::default();
    let s = seen.clone();
    let stop_at: Arc<str> = data.into();
    let err = consumer
        .scan(move |r: Record| {
            let (s, stop_at) = (s.clone(), Arc::clone(&stop_at));
            async move {
                if r.data() == stop_at.as_bytes() {
                    return Err(std::io::Error::other(format!("stop at {stop_at}")));
                }
                s.push(&r);
                Ok(Outcome::Checkpoint)
            }
        })
        .await
        .expect_err("the handler's error stops the scan");
    (seen, err)
}

/// Cancels `token` after `after`, in the background.
pub fn cancel_after(token: CancellationToken, after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        token.cancel();
    });
}

/// How long a [`time_scan`] took.
#[derive(Clone, Copy, Debug)]
pub struct Timed {
    /// From the call of `scan` to the handler's `n`th record.
    pub to_nth: Duration,
    /// From the call of `scan` to its return (the stop and the final flush included).
    pub whole: Duration,
}

/// Scans with a no-op handler (each record passed to [`std::hint::black_box`]) that cancels the scan at its `n`th
/// record, on the real clock: the benchmarks' measurement.
///
/// # Panics
/// When the scan fails, or did not handle exactly `n` records.
pub async fn time_scan(consumer: Consumer, n: usize) -> Timed {
    let token = consumer.shutdown_token();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let start = std::time::Instant::now();
    let nth = Arc::new(Mutex::new(Duration::ZERO));
    let at = Arc::clone(&nth);
    consumer
        .scan(move |r: Record| {
            std::hint::black_box(r);
            if h.fetch_add(1, Ordering::Relaxed) + 1 == n {
                *lock(&at) = start.elapsed();
                token.cancel();
            }
            std::future::ready(Ok::<_, std::convert::Infallible>(Outcome::Checkpoint))
        })
        .await
        .expect("scan");
    let whole = start.elapsed();
    assert_eq!(handled.load(Ordering::Relaxed), n, "records handled");
    let to_nth = *lock(&nth);
    Timed { to_nth, whole }
}
