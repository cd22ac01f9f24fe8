//! What happens when the handler fails: the [`FailurePolicy`] (given to
//! [`ConsumerBuilder::on_handler_error`](crate::ConsumerBuilder::on_handler_error)) and the mechanism that applies it
//! to one shard: retries with a capped, jittered backoff, bounded by attempts and/or the record's age, then stop,
//! skip or a dead-letter destination.
//!
//! The first handler call is made by the delivery as before (no cost on the hot path); only its failure comes here.
//! Everything here holds one shard: the other shards keep going. The shard's cancellation token (a graceful stop, or
//! in a group a lost lease) ends the waits at once; a handler call in flight is finished first (the record in hand is
//! always finished), a dead-letter send in flight is abandoned (nothing was checkpointed, the record comes again).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kc_checkpoint::Checkpoint;
use tracing::{error, warn};

use crate::backoff::Backoff;
use crate::config::at_most_max;
use crate::deadletter::{error_text, failed_record, DeadLetter, DeadLetterError, FailedRecord};
use crate::error::{BoxError, Error, ErrorKind};
use crate::record::Record;
use crate::retry::{self, retry, retry_finishing, Policy, Retried, RetryError};
use crate::shard::ShardCx;

/// The longest one call to a dead-letter destination may take before it is abandoned and retried.
pub const DEAD_LETTER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the consumer does when the handler returns an error for a record (or, with
/// [`scan_batches`](crate::Consumer::scan_batches), a batch), applied to that record's shard alone: the other shards
/// keep going.
///
/// Start from what happens when the attempts are used up ([`stop`](Self::stop), [`skip`](Self::skip),
/// [`dead_letter`](Self::dead_letter)), then bound the retries with [`max_attempts`](Self::max_attempts) and/or
/// [`max_record_age`](Self::max_record_age). Without either bound there are no retries (one attempt).
///
/// ```
/// use std::time::Duration;
/// use kc_core::FailurePolicy;
///
/// // Five attempts (four retries, 100 ms to 10 s apart), then log, count and go on.
/// let policy = FailurePolicy::skip().max_attempts(5);
/// // Retry for as long as the record is less than an hour old, then stop the scan.
/// let policy = FailurePolicy::stop().max_record_age(Duration::from_secs(3600));
/// # drop(policy);
/// ```
///
/// - The default, [`FailurePolicy::stop`] with no bound, is the behaviour without a policy: the first error stops
///   every shard, the checkpoints made are flushed, and the scan returns the error
///   ([`ErrorKind::Handler`](crate::ErrorKind::Handler)).
/// - While a record is retried its shard holds (nothing after it is handled or checkpointed), its position stays at
///   the record before it, and a graceful stop or a lost lease ends the retries at once (the record is not
///   checkpointed and comes again after a restart). A consumer group worker keeps renewing the shard's lease
///   meanwhile.
/// - A record is checkpointed past only when its fate is settled: handled, skipped by this policy, or accepted by the
///   dead-letter destination.
/// - Handler panics are not failures the policy handles: a panic stops the scan as before.
///
/// | option | AWS Lambda (Kinesis event source mapping) | KCL |
/// |---|---|---|
/// | [`max_attempts`](Self::max_attempts)`(n)` | `MaximumRetryAttempts` = n − 1 | none (the record processor retries itself) |
/// | [`max_record_age`](Self::max_record_age) | `MaximumRecordAgeInSeconds` (here a bound of the retries of a record that failed, not a filter of records never tried) | none |
/// | [`retry_backoff`](Self::retry_backoff) | none (Lambda's own backoff) | none |
/// | [`stop`](Self::stop) | none (Lambda retries until the record expires) | an exception thrown out of `processRecords` |
/// | [`skip`](Self::skip) | retries exhausted, no destination | catching the error in `processRecords` and checkpointing |
/// | [`dead_letter`](Self::dead_letter) | `DestinationConfig.OnFailure` (Lambda sends metadata only; this sends the record) | none |
#[derive(Clone)]
pub struct FailurePolicy {
    max_attempts: Option<u32>,
    max_record_age: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    then: Exhausted,
    bisect: bool,
    /// The builder's [`handler_timeout`](crate::ConsumerBuilder::handler_timeout), set by `build()`.
    pub(crate) stall: Option<HandlerTimeout>,
}

/// What the consumer does about a handler call that runs long
/// ([`ConsumerBuilder::handler_timeout`](crate::ConsumerBuilder::handler_timeout)): it is logged (a warning naming
/// stream, shard, sequence number and the time elapsed) and counted (`kinesis_consumer_handler_stalls_total`), and
/// optionally cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerTimeout {
    after: Duration,
    cancel: bool,
}

impl HandlerTimeout {
    /// Log and count a call still running after `after`, and let it run (its end is logged too).
    pub fn log_after(after: Duration) -> Self {
        Self { after, cancel: false }
    }

    /// Log and count a call still running after `after`, and cancel it (its future is dropped): a failure of the
    /// handler, to which the [`FailurePolicy`] applies (retried, stopped, skipped or dead-lettered). The handler must
    /// then tolerate being stopped at any `.await`.
    pub fn cancel_after(after: Duration) -> Self {
        Self { after, cancel: true }
    }
}

/// What happens to a record whose attempts are used up.
#[derive(Clone)]
enum Exhausted {
    Stop,
    Skip,
    DeadLetter(Arc<dyn DeadLetter>),
}

impl Default for FailurePolicy {
    /// [`FailurePolicy::stop`]: the first error stops the scan.
    fn default() -> Self {
        Self::stop()
    }
}

impl std::fmt::Debug for FailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let then = match self.then {
            Exhausted::Stop => "stop",
            Exhausted::Skip => "skip",
            Exhausted::DeadLetter(_) => "dead letter",
        };
        f.debug_struct("FailurePolicy")
            .field("max_attempts", &self.max_attempts)
            .field("max_record_age", &self.max_record_age)
            .field("backoff", &(self.backoff_base, self.backoff_max))
            .field("then", &then)
            .field("bisect", &self.bisect)
            .finish()
    }
}

impl FailurePolicy {
    fn new(then: Exhausted) -> Self {
        Self {
            max_attempts: None,
            max_record_age: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            then,
            bisect: false,
            stall: None,
        }
    }

    /// When the attempts are used up, stop the scan: every shard stops, the checkpoints made are flushed, and the
    /// scan returns the handler's last error ([`ErrorKind::Handler`](crate::ErrorKind::Handler)). The default.
    pub fn stop() -> Self {
        Self::new(Exhausted::Stop)
    }

    /// When the attempts are used up, skip the record: an error is logged (stream, shard, sequence and sub-sequence
    /// number, attempts, error), `kinesis_consumer_skipped_total` counted, and the shard goes on with the next record,
    /// checkpointing past the skipped one (it is not delivered again).
    pub fn skip() -> Self {
        Self::new(Exhausted::Skip)
    }

    /// When the attempts are used up, send the record to `destination` (see [`DeadLetter`]), count
    /// `kinesis_consumer_dead_lettered_total`, and go on with the next record. The checkpoint moves past the record
    /// only after the destination accepted it; a retryable failure of the destination is retried with this policy's
    /// backoff for as long as it lasts (each call bounded by [`DEAD_LETTER_TIMEOUT`]), any other stops the scan
    /// ([`ErrorKind::DeadLetter`](crate::ErrorKind::DeadLetter)).
    pub fn dead_letter(destination: impl DeadLetter) -> Self {
        Self::new(Exhausted::DeadLetter(Arc::new(destination)))
    }

    /// Like [`dead_letter`](Self::dead_letter), with a shared destination.
    pub fn shared_dead_letter(destination: Arc<dyn DeadLetter>) -> Self {
        Self::new(Exhausted::DeadLetter(destination))
    }

    /// The most handler calls for one record (or batch), the first included; at least 1. Default: unbounded if a
    /// [`max_record_age`](Self::max_record_age) is given, else 1 (no retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// No retry of a record that failed when it was older than `age` (by its approximate arrival time; for a batch,
    /// its oldest record's): a record that fails older than this goes to the end of the policy at once. Default: no
    /// bound by age. A record without an arrival time is bounded by [`max_attempts`](Self::max_attempts) alone.
    pub fn max_record_age(mut self, age: Duration) -> Self {
        self.max_record_age = Some(age);
        self
    }

    /// With [`scan_batches`](crate::Consumer::scan_batches): a batch that fails (whole) is split in halves, the first
    /// half handed to the handler alone, and so on until the failing record is alone; only then do the attempts and
    /// the end of this policy apply, to that record alone. The records before it are handled (and checkpointed) in the
    /// halves that succeed; a record after it may have been in a failed call (Lambda's `BisectBatchOnFunctionError`).
    /// Default: off. ([`scan`](crate::Consumer::scan) hands records one at a time: each failing record is already
    /// alone.)
    pub fn bisect_batches(mut self) -> Self {
        self.bisect = true;
        self
    }

    /// The backoff between attempts (and between the sends to a dead-letter destination that failed): exponential
    /// from `base`, capped at `max`, with jitter. Default: 100 ms to 10 s.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == Some(0) {
            return Err(Error::config("the failure policy's max_attempts must be at least 1"));
        }
        if self.backoff_base.is_zero() {
            return Err(Error::config("the failure policy's backoff base must be greater than zero"));
        }
        if self.backoff_max < self.backoff_base {
            return Err(Error::config("the failure policy's backoff max must be at least its base"));
        }
        at_most_max("the failure policy's backoff max", self.backoff_max)?;
        if let Some(age) = self.max_record_age {
            at_most_max("the failure policy's max_record_age", age)?;
        }
        if let Some(stall) = self.stall {
            if stall.after.is_zero() {
                return Err(Error::config("handler_timeout must be greater than zero"));
            }
            at_most_max("handler_timeout", stall.after)?;
        }
        Ok(())
    }

    /// Whether the policy may call the handler again or send to a destination: then a record (batch) is kept (cloned,
    /// no payload copied) before the first call. The default policy keeps nothing.
    pub(crate) fn keeps_records(&self) -> bool {
        self.max_attempts.unwrap_or(if self.max_record_age.is_some() { u32::MAX } else { 1 }) > 1
            || matches!(self.then, Exhausted::DeadLetter(_))
            || self.bisect
    }

    /// Whether failed batches are bisected.
    pub(crate) fn bisects(&self) -> bool {
        self.bisect
    }

    /// Whether a record (batch) whose oldest record arrived at `oldest` is used up after `attempts` calls.
    fn exhausted(&self, attempts: u32, oldest: Option<SystemTime>) -> bool {
        let too_old = || match (self.max_record_age, oldest) {
            (Some(age), Some(arrived)) => SystemTime::now().duration_since(arrived).is_ok_and(|a| a >= age),
            _ => false,
        };
        match (self.max_attempts, self.max_record_age) {
            (None, None) => true,
            (max, _) => max.is_some_and(|m| attempts >= m) || too_old(),
        }
    }
}

/// How the policy settled a record (batch) whose first handler call failed.
pub(crate) enum Settled<T> {
    /// A retry succeeded with this outcome.
    Handled(T),
    /// Skipped or accepted by the dead-letter destination: checkpoint past it.
    Given,
    /// The shard was cancelled first: nothing settled, nothing to checkpoint.
    Cancelled,
}

/// A handler error, always worth another attempt (the policy bounds them).
struct HandlerError(BoxError);

impl RetryError for HandlerError {
    fn is_retryable(&self) -> bool {
        true
    }
}

/// What failed, for logs: the first and last record (or the last position when the records were not kept).
struct Failed<'a> {
    records: &'a [Record],
    position: &'a Checkpoint,
}

impl std::fmt::Display for Failed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn one(f: &mut std::fmt::Formatter<'_>, r: &Record) -> std::fmt::Result {
            match r.sub_sequence_number() {
                Some(sub) => write!(f, "{}/{sub}", r.sequence_number()),
                None => write!(f, "{}", r.sequence_number()),
            }
        }
        match self.records {
            [] => match self.position {
                Checkpoint::At { sequence, sub_sequence: Some(sub) } => write!(f, "{sequence}/{sub}"),
                Checkpoint::At { sequence, sub_sequence: None } => write!(f, "{sequence}"),
                other => write!(f, "{other:?}"),
            },
            [r] => one(f, r),
            [first, .., last] => {
                write!(f, "{} records from ", self.records.len())?;
                one(f, first)?;
                f.write_str(" to ")?;
                one(f, last)
            }
        }
    }
}

impl FailurePolicy {
    /// Applies the policy after the first handler call for `records` (kept if [`keeps_records`](Self::keeps_records),
    /// else empty; `position` is the last one's checkpoint) failed with `error`: `call_again` makes another attempt.
    /// `Err` stops the scan (the policy's `stop`, or a destination's permanent failure).
    pub(crate) async fn after_failure<T, F, Fut>(
        &self,
        shard: &ShardCx<'_>,
        records: &[Record],
        position: &Checkpoint,
        error: BoxError,
        mut call_again: F,
    ) -> Result<Settled<T>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        let first_failure = SystemTime::now();
        shard.metrics.handler_error();
        let what = Failed { records, position };
        let oldest = records.first().and_then(Record::approximate_arrival_timestamp);
        let attempts = AtomicU32::new(1); // the future must be Send: no Cell
        let error = if self.exhausted(1, oldest) {
            error
        } else {
            let mut backoff = Backoff::new(self.backoff_base, self.backoff_max);
            let delay = backoff.next_delay();
            self.retrying(shard, &what, &error, delay, 1);
            if !retry::sleep(shard.cancel, delay).await {
                return Ok(Settled::Cancelled);
            }
            let policy = Policy { cancel: shard.cancel, backoff: &mut backoff };
            let answer = retry_finishing(
                policy,
                || {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let attempt = call_again();
                    async move { attempt.await.map_err(HandlerError) }
                },
                |HandlerError(e), delay, _| {
                    shard.metrics.handler_error();
                    if self.exhausted(attempts.load(Ordering::Relaxed), oldest) {
                        return Retried::GiveUp;
                    }
                    self.retrying(shard, &what, e, delay, attempts.load(Ordering::Relaxed));
                    Retried::Again
                },
            )
            .await;
            match answer {
                None => return Ok(Settled::Cancelled),
                Some(Ok(outcome)) => return Ok(Settled::Handled(outcome)),
                Some(Err(HandlerError(e))) => e,
            }
        };
        let attempts = attempts.load(Ordering::Relaxed);
        match &self.then {
            Exhausted::Stop => {
                let message = match attempts {
                    1 => "the handler returned an error".to_owned(),
                    n => format!("the handler returned an error ({n} attempts)"),
                };
                Err(Error::new(ErrorKind::Handler, message).with_source(error))
            }
            Exhausted::Skip => {
                error!(
                    stream = %shard.stream,
                    shard = %shard.id,
                    sequence = %what,
                    attempts,
                    error = %error_text(&*error),
                    "the handler failed; skipped (not delivered again)",
                );
                shard.metrics.skipped(records.len().max(1) as u64);
                Ok(Settled::Given)
            }
            Exhausted::DeadLetter(destination) => {
                let text = error_text(&*error);
                for record in records {
                    let failed = failed_record(shard.stream, record, &text, attempts, first_failure);
                    if !self.send(shard, &**destination, &failed).await? {
                        return Ok(Settled::Cancelled);
                    }
                    shard.metrics.dead_lettered();
                }
                warn!(sequence = %what, attempts, error = %text, "the handler failed; sent to the dead-letter destination");
                Ok(Settled::Given)
            }
        }
    }

    /// A handler call (`call`, for the record or batch ending at `position`) under the
    /// [`HandlerTimeout`] `stall`: logged and counted when it runs longer, and cancelled as a failure if asked.
    pub(crate) async fn watched<T, E: Into<BoxError>>(
        stall: HandlerTimeout,
        shard: &ShardCx<'_>,
        position: &Checkpoint,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BoxError> {
        let started = tokio::time::Instant::now();
        let mut call = std::pin::pin!(call);
        tokio::select! {
            biased;
            result = &mut call => return result.map_err(Into::into),
            _ = tokio::time::sleep(stall.after) => {}
        }
        shard.metrics.stall();
        let what = Failed { records: &[], position };
        let elapsed = started.elapsed();
        if stall.cancel {
            warn!(stream = %shard.stream, shard = %shard.id, sequence = %what, ?elapsed, "the handler did not return in time; cancelled");
            return Err(format!("the handler did not return within {:?} (cancelled)", stall.after).into());
        }
        warn!(stream = %shard.stream, shard = %shard.id, sequence = %what, ?elapsed, "the handler has not returned yet (stalled?)");
        let result = call.await;
        warn!(sequence = %what, elapsed = ?started.elapsed(), "the stalled handler call returned");
        result.map_err(Into::into)
    }

    fn retrying(&self, shard: &ShardCx<'_>, what: &Failed<'_>, e: &BoxError, delay: Duration, attempts: u32) {
        warn!(sequence = %what, attempts, ?delay, error = %error_text(&**e), "the handler failed; retrying");
        shard.metrics.retry("handler");
    }

    /// Sends `failed` to `destination`, retrying what can be retried; false when the shard was cancelled first.
    async fn send(
        &self,
        shard: &ShardCx<'_>,
        destination: &dyn DeadLetter,
        failed: &FailedRecord,
    ) -> Result<bool, Error> {
        let mut backoff = Backoff::new(self.backoff_base, self.backoff_max);
        let policy = Policy { cancel: shard.cancel, backoff: &mut backoff };
        // Each send bounded: a destination that hangs is a transient failure, retried.
        let send = || async {
            tokio::time::timeout(DEAD_LETTER_TIMEOUT, destination.send(failed))
                .await
                .unwrap_or_else(|_elapsed| Err(DeadLetterError::transient("client-side timeout")))
        };
        let sent = retry(policy, send, |e: &DeadLetterError, delay, attempt| {
            warn!(attempt, ?delay, error = %error_text(e), "the dead-letter destination failed; retrying");
            shard.metrics.retry("dead_letter");
            Retried::Again
        })
        .await;
        match sent {
            None => Ok(false),
            Some(Ok(())) => Ok(true),
            Some(Err(e)) => {
                let position = Checkpoint::At {
                    sequence: failed.sequence_number().clone(),
                    sub_sequence: failed.sub_sequence_number(),
                };
                let what = Failed { records: &[], position: &position };
                Err(Error::new(
                    ErrorKind::DeadLetter,
                    format!("the dead-letter destination refused record {what}; stopping (it is not checkpointed)"),
                )
                .with_source(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let old = Some(SystemTime::now() - Duration::from_secs(100));
        let new = Some(SystemTime::now());
        let cases: [(FailurePolicy, u32, Option<SystemTime>, bool); 9] = [
            (FailurePolicy::stop(), 1, None, true),
            (FailurePolicy::skip().max_attempts(3), 2, old, false),
            (FailurePolicy::skip().max_attempts(3), 3, None, true),
            (FailurePolicy::skip().max_record_age(Duration::from_secs(60)), 1000, new, false),
            (FailurePolicy::skip().max_record_age(Duration::from_secs(60)), 1, old, true),
            (FailurePolicy::skip().max_record_age(Duration::from_secs(60)), 1000, None, false),
            (FailurePolicy::skip().max_attempts(3).max_record_age(Duration::from_secs(60)), 1, old, true),
            (FailurePolicy::skip().max_attempts(3).max_record_age(Duration::from_secs(60)), 3, new, true),
            (FailurePolicy::skip().max_attempts(1), 1, new, true),
        ];
        for (i, (policy, attempts, oldest, want)) in cases.into_iter().enumerate() {
            assert_eq!(policy.exhausted(attempts, oldest), want, "case {i}: {policy:?}");
        }
    }

    #[test]
    fn what_is_kept() {
        assert!(!FailurePolicy::stop().keeps_records(), "the default keeps nothing");
        assert!(!FailurePolicy::skip().keeps_records());
        assert!(!FailurePolicy::skip().max_attempts(1).keeps_records());
        assert!(FailurePolicy::stop().max_attempts(2).keeps_records());
        assert!(FailurePolicy::stop().max_record_age(Duration::from_secs(1)).keeps_records());
        struct Nowhere;
        #[async_trait::async_trait]
        impl DeadLetter for Nowhere {
            async fn send(&self, _: &FailedRecord) -> Result<(), DeadLetterError> {
                Ok(())
            }
        }
        assert!(FailurePolicy::dead_letter(Nowhere).keeps_records());
    }

    #[test]
    fn validation() {
        assert!(FailurePolicy::stop().validate().is_ok());
        let err = |p: FailurePolicy| p.validate().expect_err("invalid").to_string();
        assert!(err(FailurePolicy::skip().max_attempts(0)).contains("at least 1"));
        assert!(err(FailurePolicy::skip().retry_backoff(Duration::ZERO, Duration::ZERO)).contains("greater than zero"));
        assert!(err(FailurePolicy::skip().retry_backoff(Duration::from_secs(2), Duration::from_secs(1)))
            .contains("at least its base"));
        assert!(err(FailurePolicy::skip().max_record_age(Duration::MAX)).contains("at most"));
    }
}
