//! One held lease: every write to it (renewal, checkpoint, release) goes through its [`LeaseHandle`], serialized,
//! conditional on the owner and the counter the last write returned; and the [`LeaseStore`] through which a shard
//! task's checkpoints reach the lease.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use kc_checkpoint::lease::{fenced, LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, CheckpointStore, Error as StoreError, ErrorKind as StoreErrorKind, ShardKey};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::retry::{retry, Policy, Retried};

/// A lease this worker holds.
pub(crate) struct LeaseHandle {
    table: Arc<dyn LeaseTable>,
    scope: LeaseScope,
    shard_id: String,
    owner: String,
    duration: Duration,
    /// The counter the last successful write returned; the lock serializes the writes.
    counter: tokio::sync::Mutex<u64>,
    /// The start of the last successful write plus the lease duration: other workers cannot judge the lease
    /// expired before then, and this worker treats it as lost from then on.
    deadline: Mutex<Instant>,
    lost: AtomicBool,
    handoff: AtomicBool,
    finished: AtomicBool,
    /// Stops the shard's task (lost, or a handoff was asked).
    task: CancellationToken,
    /// Cancelled when the lease is released or lost: no more writes, the renewer ends.
    retired: CancellationToken,
    /// Wakes the renewer before its interval (another worker asked for the lease).
    nudge: tokio::sync::Notify,
}

impl LeaseHandle {
    /// A lease just taken by `owner` with `counter`, by a take that started at `taken_at`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        table: Arc<dyn LeaseTable>,
        scope: LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        duration: Duration,
        taken_at: Instant,
        task: CancellationToken,
    ) -> Self {
        Self {
            table,
            scope,
            shard_id: shard_id.to_owned(),
            owner: owner.to_owned(),
            duration,
            counter: tokio::sync::Mutex::new(counter),
            deadline: Mutex::new(taken_at + duration),
            lost: AtomicBool::new(false),
            handoff: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            task,
            retired: CancellationToken::new(),
            nudge: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Whether the lease was lost (taken by another worker, or not renewed within the lease duration).
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Whether another worker asked for the lease.
    pub(crate) fn handoff_asked(&self) -> bool {
        self.handoff.load(Ordering::SeqCst)
    }

    /// Whether the shard's end was written to the lease.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    pub(crate) fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn retired(&self) -> &CancellationToken {
        &self.retired
    }

    /// Makes the renewer renew now rather than at its next interval: the renewal is refused if another worker asked
    /// for the lease, which starts the handoff.
    pub(crate) fn renew_now(&self) {
        self.nudge.notify_one();
    }

    fn mark_lost(&self, why: &str) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            warn!(shard = %self.shard_id, why, "lease lost; the shard stops");
        }
        self.task.cancel();
        self.retired.cancel();
    }

    /// One conditional write, serialized with the others. A refused write is looked into: if this worker still owns
    /// the lease (the counter was bumped by a handoff request), the write is made again with the new counter and, if
    /// a handoff was asked, the shard's task is stopped; otherwise the lease is lost. No write succeeds after the
    /// deadline.
    async fn write<F, Fut>(&self, what: &'static str, op: F) -> Result<u64, StoreError>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let attempt = async {
            let mut counter = self.counter.lock().await;
            for _ in 0..3 {
                if self.retired.is_cancelled() {
                    return Err(fenced(&self.scope, &self.shard_id, what));
                }
                if Instant::now() >= self.deadline() {
                    self.mark_lost("not renewed within the lease duration");
                    return Err(fenced(&self.scope, &self.shard_id, what));
                }
                let started = Instant::now();
                match op(*counter).await {
                    Ok(next) => {
                        *counter = next;
                        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = started + self.duration;
                        return Ok(next);
                    }
                    Err(e) if e.kind() == StoreErrorKind::Fenced => {
                        match self.table.get(&self.scope, &self.shard_id).await? {
                            Some(l) if l.owner.as_deref() == Some(self.owner.as_str()) => {
                                *counter = l.counter;
                                if l.next_owner.is_some() && !self.handoff.swap(true, Ordering::SeqCst) {
                                    info!(shard = %self.shard_id, to = ?l.next_owner, "handoff asked; the shard stops");
                                    self.task.cancel();
                                }
                            }
                            _ => {
                                self.mark_lost("taken by another worker");
                                return Err(e);
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(StoreError::new(StoreErrorKind::Transient, format!("lease of {} kept changing", self.shard_id)))
        };
        match tokio::time::timeout_at(self.deadline(), attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.mark_lost("not renewed within the lease duration");
                Err(fenced(&self.scope, &self.shard_id, what))
            }
        }
    }

    pub(crate) async fn renew(&self) -> Result<(), StoreError> {
        let (table, scope, shard, owner) = (&self.table, &self.scope, self.shard_id.as_str(), self.owner.as_str());
        self.write("renewal", |c| table.renew(scope, shard, owner, c)).await.map(|_| ())
    }

    pub(crate) async fn checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let (table, scope, shard, owner) = (&self.table, &self.scope, self.shard_id.as_str(), self.owner.as_str());
        self.write("checkpoint", |c| table.checkpoint(scope, shard, owner, c, checkpoint)).await?;
        if checkpoint.is_shard_end() {
            self.finished.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Gives the lease up (keeping a handoff request for the requester). Nothing is written after this.
    pub(crate) async fn release(&self) -> Result<(), StoreError> {
        let (table, scope, shard, owner) = (&self.table, &self.scope, self.shard_id.as_str(), self.owner.as_str());
        let released = self.write("release", |c| table.release(scope, shard, owner, c)).await;
        self.retired.cancel();
        released.map(|_| ())
    }

    /// Stops using the lease without writing (the scan stops on an error and the lease is left to expire).
    pub(crate) fn abandon(&self) {
        self.retired.cancel();
    }
}

/// Renews `handle` every `interval` (and when [nudged](LeaseHandle::renew_now)) until it is released or lost.
/// Transient failures are retried at the next interval; the lease is lost when no renewal succeeded for the lease
/// duration (checked at the deadline itself, not only at the next interval).
///
/// The first renewal comes at a random point in the second half of the interval: a worker that takes hundreds of
/// leases in one cycle (a first start, a failover) would otherwise renew them all in the same instant, every interval,
/// in bursts the lease table must absorb at many times the mean rate. Renewing early is always safe. From then on
/// renewals keep that phase ([`next_renewal`]), whatever the writes' latency.
pub(crate) async fn renew_loop(handle: Arc<LeaseHandle>, interval: Duration) {
    let mut planned = Instant::now() + first_renewal(interval, fastrand::f64());
    loop {
        let wake = planned.min(handle.deadline());
        tokio::select! {
            _ = handle.retired().cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
            _ = handle.nudge.notified() => {}
        }
        let renewed = handle.renew().await;
        // A renewal made early (nudged) keeps the planned one.
        let now = Instant::now();
        if now >= planned {
            planned = next_renewal(planned, interval, now);
        }
        if let Err(e) = renewed {
            if handle.is_lost() || handle.retired().is_cancelled() {
                return;
            }
            warn!(shard = %handle.shard_id(), error = %e, "lease renewal failed; retrying");
        }
    }
}

/// The renewal after the one planned at `planned`, at a fixed rate: one interval later, not one interval after the
/// write completed. A database that stalls for a moment completes every renewal that waited on it at once; planned
/// from their completion they would stay together from then on, every interval, and the spread of the first
/// renewals would be lost. A write that ran late by more than an interval skips the missed renewals, keeping its
/// phase: the next one is within an interval of `now`.
fn next_renewal(planned: Instant, interval: Duration, now: Instant) -> Instant {
    let next = planned + interval;
    if next > now {
        return next;
    }
    if interval.is_zero() {
        return now;
    }
    let past = (now - next).as_nanos() % interval.as_nanos();
    now + (interval - Duration::from_nanos(u64::try_from(past).unwrap_or(u64::MAX)))
}

/// The delay before a new lease's first renewal: between half the interval and the interval, by `r` in `[0, 1)`.
fn first_renewal(interval: Duration, r: f64) -> Duration {
    let half = interval / 2;
    half + half.mul_f64(r.clamp(0.0, 1.0))
}

/// The checkpoint store of one shard task in group mode: the checkpoint is the lease's, written through the handle.
pub(crate) struct LeaseStore {
    pub(crate) handle: Arc<LeaseHandle>,
    /// The lease's checkpoint when it was taken.
    pub(crate) initial: Option<Checkpoint>,
    pub(crate) backoff: (Duration, Duration),
}

#[async_trait]
impl CheckpointStore for LeaseStore {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, StoreError> {
        if key.shard() == self.handle.shard_id {
            return Ok(self.initial.clone());
        }
        let lease = self.handle.table.get(&self.handle.scope, key.shard()).await?;
        Ok(lease.and_then(|l| l.checkpoint))
    }

    /// Writes the checkpoint to the lease, retrying transient failures until it is written or the lease is lost.
    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), StoreError> {
        if key.shard() != self.handle.shard_id {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                format!("the lease of {} cannot hold a checkpoint of {}", self.handle.shard_id, key.shard()),
            ));
        }
        let handle = &self.handle;
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        // No timeout of its own: a write is bounded by the lease's deadline. Retried until the lease is retired
        // (lost or released): then the shard stops at once, and the write is refused as fenced.
        let policy = Policy { cancel: handle.retired(), backoff: &mut backoff };
        let written = retry(
            policy,
            || handle.checkpoint(&checkpoint),
            |e: &StoreError, delay, _| {
                if handle.is_lost() {
                    return Retried::GiveUp;
                }
                warn!(shard = %handle.shard_id, error = %e, ?delay, "checkpoint write failed; retrying");
                Retried::Again
            },
        )
        .await;
        written.unwrap_or_else(|| Err(fenced(&handle.scope, &handle.shard_id, "checkpoint")))
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::lease::MemoryLeaseTable;
    use kc_checkpoint::SequenceNumber;

    const D: Duration = Duration::from_secs(10);

    fn at(s: &str) -> Checkpoint {
        Checkpoint::at(SequenceNumber::parse(s).expect("valid"))
    }

    async fn taken(table: &MemoryLeaseTable, scope: &LeaseScope, owner: &str) -> (Arc<LeaseHandle>, CancellationToken) {
        table.create(scope, "s", &[]).await.expect("create");
        let counter = table.get(scope, "s").await.expect("get").expect("lease").counter;
        let started = Instant::now();
        let l = table.take(scope, "s", counter, owner).await.expect("take");
        let task = CancellationToken::new();
        let h =
            LeaseHandle::new(Arc::new(table.clone()), scope.clone(), "s", owner, l.counter, D, started, task.clone());
        (Arc::new(h), task)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_workers_checkpoint_is_refused_and_the_stored_one_stays() {
        let table = MemoryLeaseTable::new();
        let scope = LeaseScope::new("g", "st");
        let (a, a_task) = taken(&table, &scope, "a").await;
        a.checkpoint(&at("10")).await.expect("owner writes");
        // b judged the lease expired and took it; a does not know yet.
        let counter = table.get(&scope, "s").await.expect("get").expect("lease").counter;
        table.take(&scope, "s", counter, "b").await.expect("b takes over");
        let err = a.checkpoint(&at("20")).await.expect_err("fenced");
        assert_eq!(err.kind(), StoreErrorKind::Fenced);
        assert!(a.is_lost() && a_task.is_cancelled(), "lost: the shard's task is stopped");
        let lease = table.get(&scope, "s").await.expect("get").expect("lease");
        assert_eq!((lease.checkpoint, lease.owner.as_deref()), (Some(at("10")), Some("b")), "unchanged");
        assert!(a.renew().await.is_err() && a.release().await.is_err(), "nothing more is written");
        assert_eq!(table.get(&scope, "s").await.expect("get").expect("lease").counter, lease.counter);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handoff_request_stops_the_task_but_the_owner_still_checkpoints_and_releases() {
        let table = MemoryLeaseTable::new();
        let scope = LeaseScope::new("g", "st");
        let (a, a_task) = taken(&table, &scope, "a").await;
        let counter = table.get(&scope, "s").await.expect("get").expect("lease").counter;
        table.request(&scope, "s", counter, "b").await.expect("b asks");
        a.renew().await.expect("still the owner: the renewal is made again with the new counter");
        assert!(a.handoff_asked() && a_task.is_cancelled() && !a.is_lost());
        a.checkpoint(&at("5")).await.expect("final checkpoint");
        a.release().await.expect("release");
        let lease = table.get(&scope, "s").await.expect("get").expect("lease");
        assert_eq!((lease.owner, lease.next_owner.as_deref()), (None, Some("b")));
        assert_eq!(lease.checkpoint, Some(at("5")));
    }

    #[test]
    fn the_first_renewal_comes_in_the_second_half_of_the_interval() {
        let i = Duration::from_secs(4);
        assert_eq!(first_renewal(i, 0.0), Duration::from_secs(2));
        assert_eq!(first_renewal(i, 0.5), Duration::from_secs(3));
        assert!(first_renewal(i, 0.999_999) <= i);
    }

    /// `n` leases of `table` taken by "a" now, renewed every `interval` through `through` (the table itself, or
    /// the table behind a layer).
    async fn renewing(
        table: &MemoryLeaseTable,
        through: Arc<dyn LeaseTable>,
        scope: &LeaseScope,
        n: usize,
        interval: Duration,
    ) -> Vec<Arc<LeaseHandle>> {
        let started = Instant::now();
        let mut handles = Vec::new();
        for i in 0..n {
            let shard = format!("s{i}");
            table.create(scope, &shard, &[]).await.expect("create");
            let l = table.take(scope, &shard, 0, "a").await.expect("take");
            let task = CancellationToken::new();
            let h = LeaseHandle::new(Arc::clone(&through), scope.clone(), &shard, "a", l.counter, D, started, task);
            let h = Arc::new(h);
            tokio::spawn(renew_loop(Arc::clone(&h), interval));
            handles.push(h);
        }
        handles
    }

    /// The counter of each lease of `handles`.
    async fn counters(table: &MemoryLeaseTable, scope: &LeaseScope, handles: &[Arc<LeaseHandle>]) -> Vec<u64> {
        let mut out = Vec::new();
        for h in handles {
            out.push(table.get(scope, &h.shard_id).await.expect("get").expect("lease").counter);
        }
        out
    }

    /// How many of `handles` were renewed in each tenth of `interval`, over 11 tenths (one more: timers round up to
    /// the millisecond), from now.
    async fn renewals_per_tenth(
        table: &MemoryLeaseTable,
        scope: &LeaseScope,
        handles: &[Arc<LeaseHandle>],
        interval: Duration,
    ) -> Vec<usize> {
        let mut seen = counters(table, scope, handles).await;
        let mut per_step = Vec::new();
        for _ in 0..11 {
            tokio::time::sleep(interval / 10).await;
            let now = counters(table, scope, handles).await;
            per_step.push(now.iter().zip(&seen).filter(|(a, b)| a != b).count());
            seen = now;
        }
        per_step
    }

    #[tokio::test(start_paused = true)]
    async fn leases_taken_together_are_not_renewed_together() {
        let table = MemoryLeaseTable::new();
        let scope = LeaseScope::new("g", "st");
        let (n, interval) = (200, Duration::from_secs(4));
        let handles = renewing(&table, Arc::new(table.clone()), &scope, n, interval).await;
        let per_step = renewals_per_tenth(&table, &scope, &handles, interval).await;
        assert_eq!(per_step.iter().sum::<usize>(), n, "each renewed once within the interval: {per_step:?}");
        assert_eq!(per_step[..4].iter().sum::<usize>(), 0, "none in the first half: {per_step:?}");
        assert!(per_step.iter().all(|&r| r < n / 3), "spread over the second half: {per_step:?}");
        for h in &handles {
            h.retired().cancel();
        }
    }

    #[test]
    fn renewals_keep_their_phase_whatever_the_writes_latency() {
        let t0 = Instant::now();
        let i = Duration::from_secs(4);
        let s = Duration::from_secs;
        assert_eq!(next_renewal(t0, i, t0 + s(1)), t0 + s(4), "one interval after the planned time");
        assert_eq!(next_renewal(t0, i, t0 + s(3) + i), t0 + s(8), "a late write does not move the phase");
        assert_eq!(next_renewal(t0, i, t0 + s(4)), t0 + s(8), "due now: the next phase point");
        assert_eq!(next_renewal(t0, i, t0 + s(9)), t0 + s(12), "missed renewals are skipped, the phase kept");
        assert_eq!(next_renewal(t0, Duration::ZERO, t0 + s(9)), t0 + s(9));
    }

    /// Holds every renewal while the write half of `gate` is held (a database that stalls for a moment).
    struct Stall(Arc<tokio::sync::RwLock<()>>);

    #[async_trait]
    impl kc_checkpoint::layer::Around for Stall {
        async fn around<'a, T: Send + 'a>(
            &'a self,
            what: &'static str,
            call: kc_checkpoint::layer::BoxFuture<'a, Result<T, StoreError>>,
        ) -> Result<T, StoreError> {
            let _open = if what == "lease table renew" { Some(self.0.read().await) } else { None };
            call.await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_that_a_stall_held_together_spread_again() {
        let table = MemoryLeaseTable::new();
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let stalling: Arc<dyn LeaseTable> =
            Arc::new(kc_checkpoint::layer::Layered::new(Arc::new(table.clone()), Stall(Arc::clone(&gate))));
        let scope = LeaseScope::new("g", "st");
        let (n, interval) = (200, Duration::from_secs(4));
        let started = Instant::now();
        // The database stalls over the whole first interval: every first renewal (in its second half) waits, and
        // they all complete together when it answers again.
        let stall = gate.write().await;
        let handles = renewing(&table, stalling, &scope, n, interval).await;
        tokio::time::sleep_until(started + interval).await;
        drop(stall);
        tokio::time::sleep_until(started + interval + interval / 4).await;
        assert!(counters(&table, &scope, &handles).await.iter().all(|&c| c == 2), "each renewed once, after the stall");
        let per_step = renewals_per_tenth(&table, &scope, &handles, interval).await;
        assert_eq!(per_step.iter().sum::<usize>(), n, "each renewed once in the next interval: {per_step:?}");
        assert!(per_step.iter().all(|&r| r < n / 3), "spread as before the stall: {per_step:?}");
        for h in &handles {
            h.retired().cancel();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_not_renewed_for_its_duration_is_lost_at_its_deadline() {
        let table = MemoryLeaseTable::new();
        let scope = LeaseScope::new("g", "st");
        let (a, a_task) = taken(&table, &scope, "a").await;
        let started = Instant::now();
        tokio::time::sleep(D / 2).await;
        a.renew().await.expect("renewed");
        assert_eq!(a.deadline(), started + D / 2 + D);
        tokio::time::sleep(D).await;
        let before = table.get(&scope, "s").await.expect("get").expect("lease");
        assert!(a.checkpoint(&at("1")).await.is_err(), "past the deadline nothing is written");
        assert!(a.is_lost() && a_task.is_cancelled());
        assert_eq!(table.get(&scope, "s").await.expect("get").expect("lease"), before);
    }
}
