//! The fair share of a group over several streams. A worker runs one take cycle per stream (each stream's leases are
//! a scope of the one lease table); after each cycle's decisions, the stream's [`Tally`] is published here, and the
//! next cycle of any stream adds the other streams' tallies to its own listing: the target is the group's readable
//! leases of every stream over the live workers of every stream, and a worker's count is what it holds in all of
//! them. The decisions of the streams' cycles are made one at a time (the lock), so two streams of one worker do not
//! both take the lease that brings it to its target. With one stream there is nothing elsewhere and nothing changes.
//!
//! The other streams' figures are as their last cycle saw them (at most a take interval old). A stale count can make
//! a worker ask for one lease too many or too few; the next cycles correct it, as they do for the other workers'
//! moves in one stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::plan::Tally;

/// Every stream's tally, shared by the stream workers of one group in one consumer.
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    by_stream: Mutex<HashMap<Arc<str>, Tally>>,
}

impl Tallies {
    /// Runs `decide` with the sum of the other streams' tallies, and publishes the tally it returns for `stream`.
    pub(crate) fn decide<T>(&self, stream: &Arc<str>, decide: impl FnOnce(&Tally) -> (T, Tally)) -> T {
        let mut by_stream = self.by_stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let others: Vec<&Tally> = by_stream.iter().filter(|(s, _)| *s != stream).map(|(_, t)| t).collect();
        let mut elsewhere = Tally::default();
        for tally in &others {
            let mut tally = Tally::clone(tally);
            // A worker another stream saw failed after this tally was made is gone here too.
            let failed_since: Vec<String> = tally
                .workers
                .iter()
                .filter(|w| others.iter().any(|t| t.at > tally.at && t.gone.contains(*w)))
                .cloned()
                .collect();
            for w in &failed_since {
                tally.forget(w);
            }
            elsewhere.add(&tally);
        }
        let (out, tally) = decide(&elsewhere);
        by_stream.insert(Arc::clone(stream), tally);
        out
    }

    /// `stream` is no longer read here (stopped): its leases were released and count no more.
    pub(crate) fn remove(&self, stream: &Arc<str>) {
        self.by_stream.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(readable: usize, mine: usize, others: &[(&str, usize)]) -> Tally {
        Tally {
            readable,
            mine,
            free: 0,
            others: others.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect(),
            workers: others.iter().map(|(w, _)| (*w).to_owned()).collect(),
            ..Tally::default()
        }
    }

    #[test]
    fn a_stream_sees_the_sum_of_the_others_and_not_itself() {
        let t = Tallies::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        t.decide(&a, |seen| {
            assert_eq!(*seen, Tally::default());
            ((), tally(4, 2, &[("w2", 2)]))
        });
        t.decide(&b, |seen| {
            assert_eq!(*seen, tally(4, 2, &[("w2", 2)]));
            ((), tally(2, 0, &[("w2", 1), ("w3", 1)]))
        });
        t.decide(&c, |seen| {
            assert_eq!(*seen, tally(6, 2, &[("w2", 3), ("w3", 1)]));
            ((), Tally::default())
        });
        t.decide(&a, |seen| {
            assert_eq!(*seen, tally(2, 0, &[("w2", 1), ("w3", 1)]), "a's own tally is not added to a's cycle");
            ((), tally(4, 2, &[("w2", 2)]))
        });
        t.remove(&b);
        t.decide(&c, |seen| {
            assert_eq!(*seen, tally(4, 2, &[("w2", 2)]), "a removed stream counts no more");
            ((), Tally::default())
        });
    }

    #[test]
    fn a_worker_seen_failed_by_one_stream_is_taken_out_of_the_older_tallies_of_the_others() {
        let t = Tallies::default();
        let t0 = tokio::time::Instant::now();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        t.decide(&a, |_| ((), Tally { at: Some(t0), ..tally(4, 2, &[("w2", 2)]) }));
        let mut gone = tally(1, 0, &[]);
        gone.gone.insert("w2".to_owned());
        gone.at = Some(t0 + std::time::Duration::from_secs(1));
        t.decide(&b, |_| ((), gone));
        t.decide(&c, |seen| {
            assert!(!seen.workers.contains("w2"), "w2 failed after a's tally: {seen:?}");
            assert_eq!((seen.readable, seen.mine, seen.free), (5, 2, 2), "its 2 leases in a count as free");
            ((), Tally::default())
        });
        // a sees w2 alive again (restarted with its id), after b saw it failed.
        t.decide(&a, |_| ((), Tally { at: Some(t0 + std::time::Duration::from_secs(2)), ..tally(4, 2, &[("w2", 2)]) }));
        t.decide(&c, |seen| {
            assert!(seen.workers.contains("w2"), "{seen:?}");
            ((), Tally::default())
        });
    }
}
