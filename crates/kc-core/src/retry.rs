//! The one way the consumer retries a call: failures that can be retried retried after a capped, jittered backoff
//! ([`Backoff`]), everything stopped when a cancellation token fires. Calls bound themselves: Kinesis calls in `limit`
//! (the call timeout from when a call is sent, not from when it queued for its turn), store and lease-table calls in
//! `bounded`; a call that timed out there is a transient failure, retried here.
//!
//! Every retried call of the crate goes through [`retry`]: shard polling and iterators, SubscribeToShard and the
//! stream-consumer set-up, ListShards, and the checkpoint writes to a group's leases. Callers differ only in what they
//! log and count on a retry, and in whether they give up on a retryable failure ([`Retried::GiveUp`]). Two waits are
//! not retries of a call and pace themselves with the shard's [`Backoff`]: a fan-out subscription whose event stream
//! failed is replaced by a new one, and a SubscribeToShard refused as in use waits out Kinesis' 5-second window.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::ApiError;
use crate::backoff::Backoff;

/// An error of a call that [`retry`] makes.
pub(crate) trait RetryError: Sized {
    /// Whether another attempt may succeed (throttling, a transient failure, a timeout).
    fn is_retryable(&self) -> bool;
}

impl RetryError for ApiError {
    fn is_retryable(&self) -> bool {
        ApiError::is_retryable(self)
    }
}

impl RetryError for kc_checkpoint::Error {
    fn is_retryable(&self) -> bool {
        kc_checkpoint::Error::is_retryable(self)
    }
}

/// What the caller of [`retry`] decides about a retryable failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retried {
    /// Sleep the backoff's delay and try again.
    Again,
    /// Return the error now.
    GiveUp,
}

/// How [`retry`] bounds and paces its attempts.
pub(crate) struct Policy<'a> {
    /// Stops the retries: [`retry`] returns `None` as soon as it fires, also in the middle of an attempt or a sleep.
    pub(crate) cancel: &'a CancellationToken,
    /// The delays between attempts; reset after a success (so a backoff shared by several calls starts over).
    pub(crate) backoff: &'a mut Backoff,
}

/// Makes the call `f` until it succeeds, fails with an error that cannot be retried, the caller gives up on a
/// retryable one (`on_retry` answers [`Retried::GiveUp`]; it is told the error, the delay before the next attempt
/// and the backoff's retry count), or the policy's token is cancelled (`None`).
pub(crate) async fn retry<T, E, F, Fut>(
    policy: Policy<'_>,
    f: F,
    on_retry: impl FnMut(&E, Duration, u32) -> Retried,
) -> Option<Result<T, E>>
where
    E: RetryError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    attempts(policy, true, f, on_retry).await
}

/// Like [`retry`], except that an attempt in flight when the token fires is finished and its success returned (the
/// token still ends the sleeps at once, and no attempt starts after it fired): the retries of a handler call, whose
/// record in hand is always finished.
pub(crate) async fn retry_finishing<T, E, F, Fut>(
    policy: Policy<'_>,
    f: F,
    on_retry: impl FnMut(&E, Duration, u32) -> Retried,
) -> Option<Result<T, E>>
where
    E: RetryError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    attempts(policy, false, f, on_retry).await
}

async fn attempts<T, E, F, Fut>(
    policy: Policy<'_>,
    abandon_on_cancel: bool,
    mut f: F,
    mut on_retry: impl FnMut(&E, Duration, u32) -> Retried,
) -> Option<Result<T, E>>
where
    E: RetryError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let Policy { cancel, backoff } = policy;
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        // In a block: `f` is called only when the attempt is polled.
        let attempt = async { f().await };
        let result = if abandon_on_cancel {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return None,
                r = attempt => r,
            }
        } else {
            attempt.await
        };
        let err = match result {
            Ok(v) => {
                backoff.reset();
                return Some(Ok(v));
            }
            Err(e) if e.is_retryable() => e,
            Err(e) => return Some(Err(e)),
        };
        let delay = backoff.next_delay();
        if on_retry(&err, delay, backoff.attempts()) == Retried::GiveUp {
            return Some(Err(err));
        }
        if !sleep(cancel, delay).await {
            return None;
        }
    }
}

/// Makes one Kinesis call of the consumer's set-up (the fan-out consumer, the stream's creation time), retrying
/// throttling and transient failures with `backoff` and a warning; `None` when cancelled. The call timeout is the
/// API's own (see `limit`: it counts from when the call is sent).
pub(crate) async fn setup_call<T, Fut>(
    backoff: &mut Backoff,
    cancel: &CancellationToken,
    what: &str,
    f: impl FnMut() -> Fut,
) -> Option<Result<T, ApiError>>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    let policy = Policy { cancel, backoff };
    retry(policy, f, |err: &ApiError, delay, _| {
        tracing::warn!(error = %err, ?delay, "{what} failed; retrying");
        Retried::Again
    })
    .await
}

/// Sleeps for `d` unless `cancel` fires first; false when it did.
pub(crate) async fn sleep(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::api::ApiErrorKind;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);

    fn transient() -> ApiError {
        ApiError::new(ApiErrorKind::Transient, None)
    }

    /// Runs `retry` over the scripted `results` (one per attempt); returns its answer, the attempts made and the
    /// delays `on_retry` was told.
    async fn run(
        results: Vec<Result<u32, ApiError>>,
        give_up_after: usize,
        cancel: &CancellationToken,
    ) -> (Option<Result<u32, ApiError>>, usize, Vec<Duration>) {
        let results = RefCell::new(results.into_iter());
        let attempts = Cell::new(0);
        let mut delays = Vec::new();
        let mut backoff = Backoff::new(BASE, MAX);
        let policy = Policy { cancel, backoff: &mut backoff };
        let answer = retry(
            policy,
            || {
                attempts.set(attempts.get() + 1);
                let next = results.borrow_mut().next();
                async move {
                    match next {
                        Some(r) => r,
                        None => std::future::pending().await, // hangs: only a cancel ends it
                    }
                }
            },
            |_: &ApiError, delay, _| {
                delays.push(delay);
                if delays.len() >= give_up_after {
                    Retried::GiveUp
                } else {
                    Retried::Again
                }
            },
        )
        .await;
        (answer, attempts.get(), delays)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_what_is_retryable_with_a_growing_capped_backoff() {
        let cancel = CancellationToken::new();
        let script =
            vec![Err(transient()), Err(transient()), Err(transient()), Err(transient()), Err(transient()), Ok(7)];
        let started = tokio::time::Instant::now();
        let (answer, attempts, delays) = run(script, usize::MAX, &cancel).await;
        assert_eq!(answer.map(|r| r.ok()), Some(Some(7)));
        assert_eq!(attempts, 6);
        let ceilings = [100u64, 200, 400, 800, 1000].map(Duration::from_millis);
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            assert!(
                *delay >= ceiling / 2 && *delay <= ceiling,
                "{delay:?} not within [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        // Tokio's timer rounds each sleep up to the millisecond.
        let (slept, asked) = (started.elapsed(), delays.iter().sum::<Duration>());
        assert!(slept >= asked && slept <= asked + Duration::from_millis(5), "slept {slept:?} for delays of {asked:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_that_cannot_be_retried_is_returned_at_once() {
        let cancel = CancellationToken::new();
        let permanent = ApiError::new(ApiErrorKind::Permanent, Some("no".to_owned()));
        let (answer, attempts, delays) = run(vec![Err(transient()), Err(permanent), Ok(1)], 9, &cancel).await;
        let err = answer.expect("not cancelled").expect_err("permanent");
        assert_eq!(err.kind(), ApiErrorKind::Permanent);
        assert_eq!((attempts, delays.len()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_caller_may_give_up_on_a_retryable_error() {
        let cancel = CancellationToken::new();
        let (answer, attempts, _) = run(vec![Err(transient()), Err(transient()), Ok(1)], 2, &cancel).await;
        assert_eq!(answer.expect("not cancelled").expect_err("gave up").kind(), ApiErrorKind::Transient);
        assert_eq!(attempts, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_resets_after_a_success() {
        let cancel = CancellationToken::new();
        let results = RefCell::new(vec![Err(transient()), Ok(3)].into_iter());
        let mut backoff = Backoff::new(BASE, MAX);
        backoff.next_delay();
        let policy = Policy { cancel: &cancel, backoff: &mut backoff };
        let mut told = Vec::new();
        let answer = retry(
            policy,
            || {
                let next = results.borrow_mut().next();
                async move { next.expect("scripted") }
            },
            |_: &ApiError, _, attempt| {
                told.push(attempt);
                Retried::Again
            },
        )
        .await;
        assert_eq!(answer.map(|r| r.ok()), Some(Some(3)));
        assert_eq!(told, [2], "the backoff's own count goes on");
        assert_eq!(backoff.attempts(), 0, "reset after the success");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_an_attempt_and_a_sleep() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            canceller.cancel();
        });
        // Hangs in its first attempt (no timeout): the cancel ends it.
        let (answer, attempts, _) = run(Vec::new(), usize::MAX, &cancel).await;
        assert!(answer.is_none());
        assert_eq!(attempts, 1);
        // Already cancelled: no attempt at all.
        let (answer, attempts, _) = run(vec![Ok(1)], usize::MAX, &cancel).await;
        assert!(answer.is_none());
        assert_eq!(attempts, 0);
        // Cancelled while sleeping between attempts.
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            canceller.cancel();
        });
        let (answer, attempts, delays) = run(vec![Err(transient()), Ok(1)], usize::MAX, &cancel).await;
        assert!(answer.is_none());
        assert_eq!((attempts, delays.len()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_finishing_finishes_the_attempt_in_flight_but_starts_none_after_the_cancel() {
        let cancel = CancellationToken::new();
        let canceller = cancel.clone();
        let attempts = Cell::new(0);
        let mut backoff = Backoff::new(BASE, MAX);
        let policy = Policy { cancel: &cancel, backoff: &mut backoff };
        let answer = retry_finishing(
            policy,
            || {
                attempts.set(attempts.get() + 1);
                let (n, canceller) = (attempts.get(), canceller.clone());
                async move {
                    // The second attempt is cancelled in its middle, and succeeds.
                    if n == 1 {
                        return Err(transient());
                    }
                    canceller.cancel();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(n)
                }
            },
            |_: &ApiError, _, _| Retried::Again,
        )
        .await;
        assert_eq!(answer.map(|r| r.ok()), Some(Some(2)), "the attempt in flight finished");
        // A failure of the attempt in flight: no sleep, no attempt after the cancel.
        let attempts = Cell::new(0);
        let policy = Policy { cancel: &cancel, backoff: &mut backoff };
        let answer = retry_finishing(
            policy,
            || {
                attempts.set(attempts.get() + 1);
                async { Err::<u32, _>(transient()) }
            },
            |_: &ApiError, _, _| Retried::Again,
        )
        .await;
        assert!(answer.is_none());
        assert_eq!(attempts.get(), 0, "already cancelled: no attempt");
    }
}
