//! Capped exponential backoff with jitter, for the failures the AWS SDK's own retries gave up on.

use std::time::Duration;

/// Delays of `base * 2^attempt`, capped at `max`, each drawn uniformly from the upper half of that range
/// ("equal jitter": never zero, never more than the cap). [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self { base, max: max.max(base), attempt: 0 }
    }

    /// The delay before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let ceiling = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// How many retries in a row were made since the last success.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut b = Backoff::new(base, max);
        let mut ceilings = Vec::new();
        for attempt in 0..12u32 {
            let d = b.next_delay();
            let ceiling = (base * 2u32.pow(attempt)).min(max);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "attempt {attempt}: {d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceilings.push(ceiling);
        }
        assert_eq!(*ceilings.last().expect("non-empty"), max, "capped");
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert!(b.next_delay() <= base, "reset starts over");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
    }
}
