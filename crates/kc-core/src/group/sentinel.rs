//! Between take cycles, a worker watches a few others through one lease of each (its **sentinel**), read with
//! `get`, instead of listing every lease: a live worker renews each of its leases every renew interval, so a sentinel
//! whose counter stays the same for longer points at a worker that may have failed, and only then is the whole scope
//! listed (a take cycle, which judges every lease's expiry). A sentinel that changed owner, finished or went away
//! asks for a take cycle too.
//!
//! The watchers form a ring: the owners sorted by id, each worker watches the [`WATCHED`] owners after it (wrapping),
//! so every owner is watched by that many others whatever the group's size, and a check costs a worker [`WATCHED`]
//! reads. A worker that finds a stale sentinel lists the leases and bumps the group's change marker; the others then
//! list too, and for that one cycle watch the deadlines of every owner's leases, so they all take the failed worker's
//! leases at about the same time. So a group in a steady state reads, per check and worker, a constant number of
//! leases, and lists every lease only on its take interval (and on the change marker, new shards, or a suspect).
//!
//! A lease that expires while its owner lives (its renewals failed for a lease duration, so the owner let it go
//! without a release) is not seen by the sentinels unless it is one: it is taken by the next full take cycle, within
//! the take interval plus a lease duration.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use kc_checkpoint::lease::{Lease, LeaseScope, LeaseTable};
use tokio::time::Instant;
use tracing::debug;

use super::plan::Expiry;

/// How many other owners each worker watches (the ones after it in the ring of owners sorted by id).
pub(crate) const WATCHED: usize = 2;

#[derive(Debug)]
struct Sentinel {
    shard_id: String,
    counter: u64,
    /// When this worker first saw `counter` (its own monotonic clock).
    since: Instant,
    /// Reported stale since the counter last changed: the take cycle that followed listed the owner's leases, and
    /// the deadlines of those leases schedule the next ones; not reported again.
    reported: bool,
}

/// What a check of the sentinels found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Every other worker renewed its sentinel recently.
    Quiet,
    /// A sentinel changed owner, finished or went away, or could not be read: a take cycle should look.
    Changed,
    /// These workers did not renew their sentinel for longer than expected (first reported): a take cycle should
    /// list their leases, whose deadlines then schedule the cycles that take them if they expire.
    Stale(Vec<String>),
}

/// One sentinel per watched worker.
#[derive(Debug, Default)]
pub(crate) struct Sentinels {
    by_worker: HashMap<String, Sentinel>,
}

impl Sentinels {
    /// After a listing of every lease: one unfinished, unexpired lease of each of the [`WATCHED`] owners after `me`
    /// in the ring. A worker's sentinel is kept while that worker still owns it (with when its counter was first seen,
    /// and whether it was reported).
    pub(crate) fn choose(&mut self, leases: &[Lease], expiry: &Expiry, now: Instant, duration: Duration, me: &str) {
        let live = |l: &&Lease| !l.is_finished() && !expiry.expired(l, now, duration);
        let owners: BTreeSet<&str> =
            leases.iter().filter(live).filter_map(|l| l.owner.as_deref()).filter(|o| *o != me).collect();
        let watched: Vec<&str> = owners
            .range::<str, _>((std::ops::Bound::Excluded(me), std::ops::Bound::Unbounded))
            .chain(&owners)
            .copied()
            .take(WATCHED)
            .collect();
        let mut chosen: HashMap<String, Sentinel> = HashMap::new();
        for lease in leases.iter().filter(live) {
            let Some(owner) = lease.owner.as_deref().filter(|o| watched.contains(o)) else { continue };
            let since = expiry.deadline(lease, duration).map_or(now, |deadline| deadline - duration);
            match (chosen.get(owner), self.by_worker.get(owner)) {
                // This owner's sentinel so far is still its lease: keep it.
                (_, Some(kept)) if kept.shard_id == lease.shard_id => {
                    let reported = kept.reported && kept.counter == lease.counter;
                    let sentinel =
                        Sentinel { shard_id: lease.shard_id.clone(), counter: lease.counter, since, reported };
                    chosen.insert(owner.to_owned(), sentinel);
                }
                (None, _) => {
                    let sentinel =
                        Sentinel { shard_id: lease.shard_id.clone(), counter: lease.counter, since, reported: false };
                    chosen.insert(owner.to_owned(), sentinel);
                }
                (Some(_), _) => {}
            }
        }
        self.by_worker = chosen;
    }

    /// The workers watched.
    pub(crate) fn len(&self) -> usize {
        self.by_worker.len()
    }

    /// Workers whose sentinel was reported stale and has not changed since.
    pub(crate) fn suspects(&self) -> impl Iterator<Item = &str> {
        self.by_worker.iter().filter(|(_, s)| s.reported).map(|(w, _)| w.as_str())
    }

    /// Reads every sentinel (one `get` each, all at once). `stale_after`: how long a live worker's sentinel may keep
    /// its counter.
    pub(crate) async fn check(&mut self, table: &dyn LeaseTable, scope: &LeaseScope, stale_after: Duration) -> Check {
        let reads = self.by_worker.values().map(|sentinel| table.get(scope, &sentinel.shard_id));
        let reads = futures_util::future::join_all(reads).await;
        let now = Instant::now();
        let mut stale = Vec::new();
        let mut changed = false;
        for ((worker, sentinel), read) in self.by_worker.iter_mut().zip(reads) {
            match read {
                Ok(Some(lease)) if lease.owner.as_deref() == Some(worker.as_str()) && !lease.is_finished() => {
                    if lease.counter != sentinel.counter {
                        (sentinel.counter, sentinel.since, sentinel.reported) = (lease.counter, now, false);
                    } else if !sentinel.reported && now.saturating_duration_since(sentinel.since) >= stale_after {
                        sentinel.reported = true;
                        stale.push(worker.clone());
                    }
                }
                Ok(_) => changed = true,
                Err(e) => {
                    debug!(shard = %sentinel.shard_id, error = %e, "reading a sentinel lease failed");
                    changed = true;
                }
            }
        }
        if !stale.is_empty() {
            stale.sort_unstable();
            Check::Stale(stale)
        } else if changed {
            Check::Changed
        } else {
            Check::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::lease::MemoryLeaseTable;

    const D: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn one_lease_per_other_worker_is_read_and_a_stale_one_is_reported_once() {
        let table = MemoryLeaseTable::new();
        let scope = LeaseScope::new("g", "s");
        for (shard, owner) in [("a", "w2"), ("b", "w2"), ("c", "w3"), ("mine", "w1"), ("free", "")] {
            table.create(&scope, shard, &[]).await.expect("create");
            if !owner.is_empty() {
                table.take(&scope, shard, 0, owner).await.expect("take");
            }
        }
        let mut expiry = Expiry::default();
        let mut sentinels = Sentinels::default();
        let leases = table.list(&scope).await.expect("list");
        expiry.observe(&leases, Instant::now());
        sentinels.choose(&leases, &expiry, Instant::now(), D, "w1");
        assert_eq!(sentinels.len(), 2, "w2 and w3, not this worker nor the free lease");
        // In a ring of five owners, each watches the two after it.
        let ring: Vec<Lease> = ["w1", "w2", "w3", "w4", "w5"]
            .iter()
            .map(|w| Lease::new(format!("s-{w}"), Some((*w).to_owned()), 1, None, Vec::new()))
            .collect();
        let mut e = Expiry::default();
        e.observe(&ring, Instant::now());
        for (me, want) in [("w1", ["w2", "w3"]), ("w4", ["w5", "w1"]), ("w5", ["w1", "w2"])] {
            let mut s = Sentinels::default();
            s.choose(&ring, &e, Instant::now(), D, me);
            let mut watched: Vec<&str> = s.by_worker.keys().map(String::as_str).collect();
            watched.sort_unstable();
            let mut want = want.to_vec();
            want.sort_unstable();
            assert_eq!(watched, want, "{me}");
        }
        let stale_after = Duration::from_secs(5);
        assert_eq!(sentinels.check(&table, &scope, stale_after).await, Check::Quiet);

        // w2 renews its leases, w3 does not.
        tokio::time::advance(Duration::from_secs(3)).await;
        for shard in ["a", "b"] {
            let counter = table.get(&scope, shard).await.expect("get").expect("lease").counter;
            table.renew(&scope, shard, "w2", counter).await.expect("renew");
        }
        assert_eq!(sentinels.check(&table, &scope, stale_after).await, Check::Quiet);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(sentinels.check(&table, &scope, stale_after).await, Check::Stale(vec!["w3".to_owned()]));
        assert_eq!(sentinels.suspects().collect::<Vec<_>>(), ["w3"]);
        assert_eq!(sentinels.check(&table, &scope, stale_after).await, Check::Quiet, "reported once");

        // A listing keeps the report (same counter); a renewal clears it.
        let leases = table.list(&scope).await.expect("list");
        expiry.observe(&leases, Instant::now());
        sentinels.choose(&leases, &expiry, Instant::now(), D, "w1");
        assert_eq!(sentinels.suspects().collect::<Vec<_>>(), ["w3"]);
        table.renew(&scope, "c", "w3", 1).await.expect("renew");
        assert_eq!(sentinels.check(&table, &scope, stale_after).await, Check::Quiet);
        assert_eq!(sentinels.suspects().count(), 0);

        // A sentinel taken by another worker (or released, finished, deleted) asks for a take cycle.
        let counter = table.get(&scope, "c").await.expect("get").expect("lease").counter;
        table.take(&scope, "c", counter, "w4").await.expect("take");
        assert_eq!(sentinels.check(&table, &scope, stale_after).await, Check::Changed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sentinel_seen_unchanged_by_earlier_listings_counts_from_then() {
        let table = MemoryLeaseTable::new();
        let scope = LeaseScope::new("g", "s");
        table.create(&scope, "a", &[]).await.expect("create");
        table.take(&scope, "a", 0, "w2").await.expect("take");
        let mut expiry = Expiry::default();
        let leases = table.list(&scope).await.expect("list");
        expiry.observe(&leases, Instant::now());
        tokio::time::advance(Duration::from_secs(4)).await;
        // A later listing with the same counter: the sentinel's clock starts at the first sight, 4 s ago.
        expiry.observe(&leases, Instant::now());
        let mut sentinels = Sentinels::default();
        sentinels.choose(&leases, &expiry, Instant::now(), D, "w1");
        tokio::time::advance(Duration::from_secs(1)).await;
        let check = sentinels.check(&table, &scope, Duration::from_secs(5)).await;
        assert_eq!(check, Check::Stale(vec!["w2".to_owned()]));
    }
}
