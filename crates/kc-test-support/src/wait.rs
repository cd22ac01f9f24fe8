//! Waiting until a condition holds, on Tokio's clock: under a paused clock (kc-core's tests against the fake) the
//! sleeps advance virtual time, in real time (the integration tests) they take real time. Only the period and the
//! limit differ between the two, so both use this one helper.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    every: Duration,
    limit: Duration,
}

impl Wait {
    /// For tests on a paused clock: every 100 ms of virtual time, for 10 minutes of it (waiting costs nothing).
    pub const PAUSED: Wait = Wait::new(Duration::from_millis(100), Duration::from_secs(600));

    /// Checks every `every`, up to `limit`.
    pub const fn new(every: Duration, limit: Duration) -> Self {
        Self { every, limit }
    }

    /// For tests against real servers: every 50 ms, up to `limit`.
    pub const fn real(limit: Duration) -> Self {
        Self::new(Duration::from_millis(50), limit)
    }

    /// Whether `done` came to hold within the limit (it is checked once more when the limit is reached).
    pub async fn until(self, mut done: impl FnMut() -> bool) -> bool {
        self.until_async(|| std::future::ready(done())).await
    }

    /// [`until`](Self::until) with a condition that has to be awaited (e.g. reading a table).
    pub async fn until_async<F: Future<Output = bool>>(self, mut done: impl FnMut() -> F) -> bool {
        let start = Instant::now();
        loop {
            if done().await {
                return true;
            }
            if start.elapsed() >= self.limit {
                return false;
            }
            tokio::time::sleep(self.every).await;
        }
    }

    /// Waits until `done` holds.
    ///
    /// # Panics
    /// When it does not within the limit, naming `what`.
    pub async fn expect(self, what: &str, done: impl FnMut() -> bool) {
        assert!(self.until(done).await, "timed out after {:?} waiting for {what}", self.limit);
    }

    /// [`expect`](Self::expect) with a condition that has to be awaited.
    ///
    /// # Panics
    /// When it does not hold within the limit, naming `what`.
    pub async fn expect_async<F: Future<Output = bool>>(self, what: &str, done: impl FnMut() -> F) {
        assert!(self.until_async(done).await, "timed out after {:?} waiting for {what}", self.limit);
    }
}

/// Polls `done` every 50 ms for up to `timeout` ([`Wait::real`]).
///
/// # Panics
/// With `what` when it never holds.
pub async fn wait_for(what: &str, timeout: Duration, done: impl FnMut() -> bool) {
    Wait::real(timeout).expect(what, done).await;
}
