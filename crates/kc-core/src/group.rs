//! Consumer groups: several workers (processes) share a stream's shards through a lease table.
//!
//! See [`Group`] for the settings and the behaviour. The pieces: `plan` (the decisions of a take cycle, pure),
//! `handle` (one held lease: serialized conditional writes, loss and handoff detection, the checkpoint store of a
//! shard task), and the worker below (discovery, take cycles, shard tasks, shutdown).

mod handle;
mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use kc_checkpoint::lease::{Lease, LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, CheckpointStore, ErrorKind as StoreErrorKind, ShardKey};
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::api::ShardInfo;
use crate::consumer::Consumer;
use crate::error::{Error, ErrorKind};
use crate::metrics::GroupMetrics;
use crate::scan::Listing;
use crate::shard::{Deliver, ShardExit, ShardReader, Shared, StartHint};

use handle::{renew_loop, LeaseHandle, LeaseStore};
use plan::{Expiry, Me};

/// A consumer group: the workers (processes) that run a consumer with the same group name and lease table share
/// the stream's shards, each shard read by one worker at a time. Give it to
/// [`ConsumerBuilder::group`](crate::ConsumerBuilder::group).
///
/// ```
/// use std::time::Duration;
/// use kc_core::{Consumer, Group};
/// use kc_checkpoint::lease::MemoryLeaseTable;
///
/// # async fn run() -> Result<(), kc_core::Error> {
/// let group = Group::new("billing", MemoryLeaseTable::new()) // in production: a PostgreSQL or DynamoDB table
///     .worker_id("billing-1")
///     .lease_duration(Duration::from_secs(10));
/// let consumer = Consumer::builder("orders").group(group).build().await?;
/// # drop(consumer);
/// # Ok(())
/// # }
/// ```
///
/// # Settings and defaults
/// | setting | default | meaning |
/// |---|---|---|
/// | [`worker_id`](Self::worker_id) | `{hostname}-{pid}-{8 random hex digits}` | this worker's name in the table |
/// | [`lease_duration`](Self::lease_duration) | 10 s | a lease whose counter did not change for this long is expired |
/// | [`renew_interval`](Self::renew_interval) | lease duration / 3 | how often each held lease is renewed |
/// | [`take_interval`](Self::take_interval) | 2 × lease duration | how often leases are balanced (see Taking) |
/// | [`max_leases`](Self::max_leases) | none | the most leases this worker holds |
///
/// [`ConsumerBuilder::build`](crate::ConsumerBuilder::build) validates them: a non-empty group name and worker
/// id, durations above zero, a renew interval below the lease duration, `max_leases` at least 1. A builder given both
/// a group and a checkpoint store is refused (a [`Config`](ErrorKind::Config) error): in a group the checkpoints live
/// in the leases.
///
/// # How it works
/// - **Leases.** One lease per shard in the group's scope (group name, stream), created for every shard the
///   discovery lists (parents before children, with their parent ids). A lease holds its owner, a counter bumped by
///   every write, the shard's checkpoint (never moving backwards) and the parents. A shard is finished when its
///   checkpoint is the shard's end.
/// - **Expiry, the KCL way.** A lease is expired when this worker saw its counter unchanged for the lease duration
///   on its own monotonic clock: clock skew between hosts does not matter. Leases without an owner are free.
/// - **Taking**, every take interval (and at once when a shard of this worker ended; free and expired leases also
///   every half lease duration, so that a failed worker's leases are taken within about one and a half to two lease
///   durations of its last renewal: up to half a duration to see its last counter, one to judge it unchanged): the
///   leases to read are the
///   unfinished ones whose parents are finished or gone; the live workers are the owners of unexpired leases, the
///   workers that asked for one, and this one; each aims at `ceil(leases to read / live workers)`, capped by
///   `max_leases`. Free leases are taken first (those released to this worker, then unowned, then expired ones).
///   When none is free and this worker is below the target, it asks the most loaded worker, if that one is above the
///   target (or at it, when this worker needs more than one lease and holds at least two fewer: no worker stays
///   idle), for one lease ([`LeaseTable::request`]): at most one lease moves per cycle, and the other worker hands
///   it over gracefully (below). While such a request is pending the next cycle comes after one renew interval.
/// - **Renewal and fencing.** Each held lease is renewed every renew interval. Renewals and checkpoint writes of a
///   lease are serialized and conditional on the owner and the counter the last write returned. A refused write is
///   looked into: if another worker owns the lease it is **lost**: the shard's task stops at once (the handler in
///   flight finishes, no other record is handed to it) and nothing more is written for it; if this worker still owns
///   it and another asked for it, the write is made again with the new counter and the shard is **handed over**:
///   its task stops after the record in hand, checkpoints and releases the lease, which the requester takes,
///   starting from that checkpoint (no record handled twice). A lease whose renewals failed (lease table
///   unreachable) for a lease duration is lost too, at that deadline: a worker cut off from the lease table stops
///   its shards before any other worker can judge their leases expired.
/// - **Checkpoints** are written to the lease at the end of each GetRecords batch and when a shard stops, as
///   without a group; transient failures are retried until the write succeeds or the lease is lost.
/// - **Resharding.** A child's lease is taken only when all its parents are finished (or their leases gone); a
///   child with no checkpoint starts at TRIM_HORIZON. A finished parent's lease is deleted once every child has an
///   owner or a checkpoint, and is not created again.
/// - **Shutdown.** Cancelling the shutdown token stops every shard after the record in hand; each checkpoints and
///   releases its lease, so other workers take over at once from there.
///
/// Lease events reach the [`Lifecycle`](crate::Lifecycle) hooks (`lease_gained`, `lease_lost`, and `shard_closed`
/// when a shard is finished) and the metrics (see [`metrics`](crate::metrics)).
///
/// # `Latest` in a group
/// A shard with no checkpoint starts at the consumer's initial position. With
/// [`InitialPosition::Latest`](crate::InitialPosition::Latest) that is LATEST for a lease's first owner when this
/// worker created the lease. A lease without a checkpoint that had an owner before (handed over, or its owner
/// crashed or stopped before a first batch end, or its shard had no records yet), or that another worker created
/// before this one started, starts at AT_TIMESTAMP of the lease's creation (or of this worker's start, if that is
/// earlier; [`Lease::created_at`](kc_checkpoint::lease::Lease::created_at)), so that no record put after the group
/// first listed the shard is skipped while the lease changes hands, even across a restart of every worker. The
/// times are the creating worker's clock against Kinesis' arrival times: a creating host whose clock runs ahead of
/// AWS's by more than the time to its first take could still skip the records of that difference. (kinesalite
/// answers AT_TIMESTAMP only once a record at or after the time exists; until then the call times out and is
/// retried.)
///
/// # Limits
/// - A lease that is lost (taken after expiry) may have had records handled by both workers: the old owner's last
///   handled records after its last checkpoint, as after a crash. Handoffs and graceful stops repeat nothing.
/// - A shard whose last records were handled with [`Outcome::SkipCheckpoint`](crate::Outcome::SkipCheckpoint) is not
///   finished; the worker that read it releases it and does not take it again in this run.
#[derive(Clone)]
pub struct Group {
    name: String,
    table: Arc<dyn LeaseTable>,
    worker_id: Option<String>,
    lease_duration: Duration,
    renew_interval: Option<Duration>,
    take_interval: Option<Duration>,
    max_leases: Option<usize>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("worker_id", &self.worker_id)
            .field("lease_duration", &self.lease_duration)
            .field("renew_interval", &self.renew_interval)
            .field("take_interval", &self.take_interval)
            .field("max_leases", &self.max_leases)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// The group `name`, with its leases in `table` (any [`LeaseTable`], e.g. an `Arc<dyn LeaseTable>`).
    pub fn new(name: impl Into<String>, table: impl LeaseTable + 'static) -> Self {
        Self {
            name: name.into(),
            table: Arc::new(table),
            worker_id: None,
            lease_duration: Duration::from_secs(10),
            renew_interval: None,
            take_interval: None,
            max_leases: None,
        }
    }

    /// This worker's name in the lease table; unique among the group's live workers. Default:
    /// `{hostname}-{pid}-{8 random hex digits}`.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// How long a lease's counter must stay unchanged before other workers may take it. Default: 10 s.
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    /// How often each held lease is renewed; below the lease duration. Default: a third of the lease duration.
    pub fn renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = Some(interval);
        self
    }

    /// How often this worker takes and balances leases. Default: twice the lease duration.
    pub fn take_interval(mut self, interval: Duration) -> Self {
        self.take_interval = Some(interval);
        self
    }

    /// The most leases this worker holds. Default: no limit.
    pub fn max_leases(mut self, max: usize) -> Self {
        self.max_leases = Some(max);
        self
    }

    /// Applies the defaults and validates.
    pub(crate) fn resolve(self) -> Result<GroupConfig, Error> {
        if self.name.is_empty() {
            return Err(Error::config("the group name must not be empty"));
        }
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        if worker_id.is_empty() {
            return Err(Error::config("the worker id must not be empty"));
        }
        let lease_duration = self.lease_duration;
        let renew_interval = self.renew_interval.unwrap_or(lease_duration / 3);
        let take_interval = self.take_interval.unwrap_or(lease_duration.saturating_mul(2));
        for (name, value) in
            [("lease_duration", lease_duration), ("renew_interval", renew_interval), ("take_interval", take_interval)]
        {
            if value.is_zero() {
                return Err(Error::config(format!("group {name} must be greater than zero")));
            }
        }
        if renew_interval >= lease_duration {
            return Err(Error::config(format!(
                "group renew_interval ({renew_interval:?}) must be shorter than the lease duration ({lease_duration:?})"
            )));
        }
        if self.max_leases == Some(0) {
            return Err(Error::config("group max_leases must be at least 1"));
        }
        Ok(GroupConfig {
            name: self.name,
            table: self.table,
            worker_id,
            lease_duration,
            renew_interval,
            take_interval,
            max_leases: self.max_leases,
        })
    }
}

/// `{hostname}-{pid}-{8 random hex digits}`.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// A validated [`Group`].
#[derive(Clone)]
pub(crate) struct GroupConfig {
    pub(crate) name: String,
    pub(crate) table: Arc<dyn LeaseTable>,
    pub(crate) worker_id: String,
    pub(crate) lease_duration: Duration,
    pub(crate) renew_interval: Duration,
    pub(crate) take_interval: Duration,
    pub(crate) max_leases: Option<usize>,
}

impl std::fmt::Debug for GroupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConfig")
            .field("name", &self.name)
            .field("worker_id", &self.worker_id)
            .field("lease_duration", &self.lease_duration)
            .field("renew_interval", &self.renew_interval)
            .field("take_interval", &self.take_interval)
            .field("max_leases", &self.max_leases)
            .finish_non_exhaustive()
    }
}

fn lease_error(what: &str, e: kc_checkpoint::Error) -> Error {
    Error::new(ErrorKind::Checkpoint, format!("lease table: {what} failed")).with_source(e)
}

type ShardResult = (String, Result<ShardExit, Error>);

struct Held {
    handle: Arc<LeaseHandle>,
    store: Arc<LeaseStore>,
}

/// The scan of a worker in a group.
pub(crate) async fn scan<D: Deliver>(consumer: &Consumer, group: &GroupConfig, deliver: Arc<D>) -> Result<(), Error> {
    let span =
        tracing::info_span!("group", group = %group.name, worker = %group.worker_id, stream = %consumer.cfg.stream);
    async move {
        let stop = consumer.shutdown.child_token();
        let Some(shared) = consumer.prepare(&stop).await? else {
            return Ok(()); // cancelled while waiting for the fan-out consumer
        };
        let mut worker = Worker {
            consumer,
            cfg: group,
            scope: LeaseScope::new(group.name.as_str(), consumer.cfg.stream.as_str()),
            stop,
            deliver,
            shared,
            held: HashMap::new(),
            tasks: JoinSet::new(),
            renewers: JoinSet::new(),
            expiry: Expiry::default(),
            ended_here: HashSet::new(),
            listing: Vec::new(),
            // On the grid of the leases' creation stamps (whole milliseconds), so that a lease this worker creates
            // in the millisecond it started is not taken for one created before it.
            started: kc_checkpoint::lease::from_millis(kc_checkpoint::lease::creation_millis()),
            metrics: GroupMetrics::new(&group.name, &consumer.cfg.stream, &group.worker_id),
        };
        let result = worker.run().await;
        let stopped = worker.stop_all().await;
        let deregistered = consumer.deregister(&worker.shared).await;
        let result = match (result, stopped.and(deregistered)) {
            (Err(e), Err(other)) => {
                warn!(error = %other, "another shard failed while stopping");
                Err(e)
            }
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
        result.map_err(|e| if e.stream().is_none() { e.at(&consumer.cfg.stream, None) } else { e })
    }
    .instrument(span)
    .await
}

struct Worker<'a, D> {
    consumer: &'a Consumer,
    cfg: &'a GroupConfig,
    scope: LeaseScope,
    /// Cancelled by the user's token, or by us when stopping on an error.
    stop: CancellationToken,
    deliver: Arc<D>,
    shared: Shared,
    held: HashMap<String, Held>,
    tasks: JoinSet<ShardResult>,
    renewers: JoinSet<()>,
    expiry: Expiry,
    ended_here: HashSet<String>,
    listing: Vec<ShardInfo>,
    /// When this worker started: where a shard taken over without a checkpoint starts under `Latest`.
    started: SystemTime,
    metrics: GroupMetrics,
}

impl<D: Deliver> Worker<'_, D> {
    async fn run(&mut self) -> Result<(), Error> {
        match self.consumer.list_shards(&self.stop, true).await? {
            Listing::Shards(listing) => self.listing = listing,
            Listing::Unavailable | Listing::Cancelled => return Ok(()),
        }
        info!(shards = self.listing.len(), "shards listed; joining the group");
        // Full cycles (taking and balancing) every take interval; in between, every half lease duration, a check
        // that takes free and expired leases, so that a failed worker's leases are taken within about one and a half
        // to two lease durations.
        let mut next_take = Instant::now();
        let mut next_full = next_take;
        let mut discovery = tokio::time::interval(self.consumer.cfg.discovery_interval);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        discovery.reset();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_take) => {
                    let full = Instant::now() >= next_full;
                    let pending = self.take_cycle(full).await?;
                    let now = Instant::now();
                    if full {
                        next_full = now + if pending { self.cfg.renew_interval } else { self.cfg.take_interval };
                    }
                    next_take = next_full.min(now + self.cfg.lease_duration / 2);
                }
                _ = discovery.tick() => {
                    if !self.discover().await? {
                        return Ok(());
                    }
                }
                Some(joined) = self.tasks.join_next() => {
                    if self.exited(joined).await? {
                        // A shard ended: its children may be ready now rather than at the next cycle.
                        if !self.discover().await? {
                            return Ok(());
                        }
                        next_take = Instant::now();
                        next_full = next_take;
                    }
                }
                Some(_) = self.renewers.join_next() => {}
            }
        }
    }

    /// Refreshes the shard listing; false when cancelled.
    async fn discover(&mut self) -> Result<bool, Error> {
        match self.consumer.list_shards(&self.stop, false).await? {
            Listing::Shards(listing) => self.listing = listing,
            Listing::Unavailable => {}
            Listing::Cancelled => return Ok(false),
        }
        Ok(true)
    }

    /// Creates the leases of listed shards that have none. Returns whether every lease needed exists.
    async fn create_leases(&self, leases: &[Lease]) -> Result<bool, Error> {
        for shard in plan::to_create(&self.listing, leases) {
            let parents: Vec<String> = shard.parents().map(str::to_owned).collect();
            match self.cfg.table.create(&self.scope, &shard.shard_id, &parents).await {
                Ok(created) => {
                    if created {
                        debug!(shard = %shard.shard_id, ?parents, "lease created");
                    }
                }
                Err(e) if e.is_retryable() => {
                    // Parents before children: stop here, the next cycle goes on.
                    warn!(shard = %shard.shard_id, error = %e, "creating a lease failed; trying again next cycle");
                    return Ok(false);
                }
                Err(e) => return Err(lease_error("creating a lease", e)),
            }
        }
        Ok(true)
    }

    /// One take cycle (with balancing when `full`). Returns whether the next full cycle should come soon (after a
    /// renew interval): a handoff this worker asked for is pending, or the lease table could not be read.
    async fn take_cycle(&mut self, full: bool) -> Result<bool, Error> {
        let mut leases = match self.cfg.table.list(&self.scope).await {
            Ok(leases) => leases,
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "listing the leases failed; trying again");
                return Ok(true);
            }
            Err(e) => return Err(lease_error("listing the leases", e)),
        };
        if !plan::to_create(&self.listing, &leases).is_empty() {
            if !self.create_leases(&leases).await? {
                return Ok(true);
            }
            leases = match self.cfg.table.list(&self.scope).await {
                Ok(leases) => leases,
                Err(e) if e.is_retryable() => return Ok(true),
                Err(e) => return Err(lease_error("listing the leases", e)),
            };
        }
        let now = Instant::now();
        self.expiry.observe(&leases, now);
        let held: HashSet<String> = self.held.keys().cloned().collect();
        let me =
            Me { id: &self.cfg.worker_id, held: &held, ended_here: &self.ended_here, max_leases: self.cfg.max_leases };
        let plan = plan::plan(&leases, &self.expiry, now, self.cfg.lease_duration, &me);
        self.metrics.workers(plan.workers);
        debug!(workers = plan.workers, target = plan.target, held = held.len(), "take cycle");
        for parent in &plan.delete {
            match self.cfg.table.delete(&self.scope, parent).await {
                Ok(()) => debug!(shard = %parent, "finished parent's lease deleted"),
                Err(e) => warn!(shard = %parent, error = %e, "deleting a finished parent's lease failed"),
            }
        }
        for (shard_id, counter) in plan.take {
            if self.stop.is_cancelled() {
                break;
            }
            self.take(&shard_id, counter, &leases).await?;
        }
        let mut requested = false;
        if let Some((shard_id, counter)) = plan.request.filter(|_| full && !self.stop.is_cancelled()) {
            match self.cfg.table.request(&self.scope, &shard_id, counter, &self.cfg.worker_id).await {
                Ok(lease) => {
                    info!(shard = %shard_id, from = ?lease.owner, "asked for a lease (balancing)");
                    requested = true;
                }
                Err(e) if e.kind() == StoreErrorKind::Fenced => debug!(shard = %shard_id, "lease changed; not asked"),
                Err(e) => warn!(shard = %shard_id, error = %e, "asking for a lease failed"),
            }
        }
        Ok(requested || plan.request_pending)
    }

    async fn take(&mut self, shard_id: &str, counter: u64, leases: &[Lease]) -> Result<(), Error> {
        let started = Instant::now();
        match self.cfg.table.take(&self.scope, shard_id, counter, &self.cfg.worker_id).await {
            Ok(lease) => {
                let previous = leases.iter().find(|l| l.shard_id == shard_id).and_then(|l| l.owner.clone());
                info!(shard = %shard_id, from = ?previous, "lease taken");
                self.start(lease, started);
                Ok(())
            }
            Err(e) if e.kind() == StoreErrorKind::Fenced => {
                debug!(shard = %shard_id, "lease changed; not taken");
                Ok(())
            }
            Err(e) if e.is_retryable() => {
                warn!(shard = %shard_id, error = %e, "taking a lease failed");
                Ok(())
            }
            Err(e) => Err(lease_error("taking a lease", e)),
        }
    }

    /// Starts the shard task and the renewer of a lease just taken.
    fn start(&mut self, lease: Lease, taken_at: Instant) {
        let shard_id = lease.shard_id.clone();
        let task = self.stop.child_token();
        let handle = Arc::new(LeaseHandle::new(
            Arc::clone(&self.cfg.table),
            self.scope.clone(),
            &shard_id,
            &self.cfg.worker_id,
            lease.counter,
            self.cfg.lease_duration,
            taken_at,
            task.clone(),
        ));
        let cfg = &self.consumer.cfg;
        let store = Arc::new(LeaseStore {
            handle: Arc::clone(&handle),
            initial: lease.checkpoint.clone(),
            backoff: (cfg.backoff_base, cfg.backoff_max),
        });
        let shared = Shared { store: Arc::clone(&store) as Arc<dyn CheckpointStore>, ..self.shared.clone() };
        let hint = StartHint {
            // A child is read from its start: its parents were read to their end, by whichever worker.
            trim_horizon: !lease.parents.is_empty(),
            parents: Vec::new(),
            closed: self.listing.iter().any(|s| s.shard_id == shard_id && s.closed),
            latest_since: latest_since(&lease, self.started),
        };
        let deliver = Arc::clone(&self.deliver);
        let id = shard_id.clone();
        self.tasks.spawn(async move {
            let result = ShardReader::new(&shared, &*deliver, &task, &id).run(hint).await;
            (id, result)
        });
        self.renewers.spawn(renew_loop(Arc::clone(&handle), self.cfg.renew_interval));
        self.held.insert(shard_id.clone(), Held { handle, store });
        self.metrics.taken(self.held.len());
        self.shared.lifecycle.lease_gained(&shard_id);
    }

    /// A shard task ended: release its lease (or note that it was lost). Returns whether the shard ended.
    async fn exited(&mut self, joined: Result<ShardResult, tokio::task::JoinError>) -> Result<bool, Error> {
        let (shard_id, result) = match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                return Err(Error::new(ErrorKind::Handler, "a shard task panicked (in the handler?)"));
            }
            Err(_) => return Ok(false),
        };
        let Some(held) = self.held.remove(&shard_id) else { return Ok(false) };
        self.metrics.held(self.held.len());
        let handle = &held.handle;
        if handle.is_lost() {
            self.metrics.lost();
            self.shared.lifecycle.lease_lost(&shard_id);
            return match result {
                Err(e) if e.kind() != ErrorKind::Checkpoint => Err(e),
                _ => Ok(false),
            };
        }
        match result {
            Ok(ShardExit::Ended { .. }) => {
                if !handle.is_finished() {
                    self.ended_here.insert(shard_id.clone());
                }
                self.release(handle).await;
                Ok(true)
            }
            Ok(ShardExit::Skipped) => {
                // Nothing to read (closed, no checkpoint, LATEST): finished, so that its children can start.
                let key = ShardKey::new(self.consumer.cfg.app.as_str(), self.consumer.cfg.stream.as_str(), &*shard_id);
                if let Err(e) = held.store.set(&key, Checkpoint::ShardEnd).await {
                    warn!(shard = %shard_id, error = %e, "recording a skipped shard as finished failed");
                }
                self.release(handle).await;
                Ok(true)
            }
            Ok(ShardExit::Stopped) => {
                if handle.handoff_asked() {
                    info!(shard = %shard_id, "lease handed over");
                }
                self.release(handle).await;
                Ok(false)
            }
            Err(e) => {
                // What was handled is checkpointed (the reader saves it even on an error); let others go on.
                self.release(handle).await;
                Err(e)
            }
        }
    }

    async fn release(&self, handle: &LeaseHandle) {
        match handle.release().await {
            Ok(()) => debug!(shard = %handle.shard_id(), "lease released"),
            Err(e) => warn!(shard = %handle.shard_id(), error = %e, "releasing a lease failed; it will expire"),
        }
    }

    /// Stops every shard (each finishes its record in hand, checkpoints and releases its lease).
    async fn stop_all(&mut self) -> Result<(), Error> {
        self.stop.cancel();
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = self.exited(joined).await {
                if first_error.is_none() {
                    first_error = Some(e);
                } else {
                    warn!(error = %e, "another shard failed while stopping");
                }
            }
        }
        // Leases whose task panicked.
        for (_, held) in std::mem::take(&mut self.held) {
            self.release(&held.handle).await;
        }
        self.metrics.held(0);
        self.renewers.shutdown().await;
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // A lease dropped without release (the scan future dropped): stop renewing, let it expire.
        if !self.handle.retired().is_cancelled() {
            self.handle.abandon();
        }
    }
}

/// Where a lease without a checkpoint starts under `Latest` (see [`Group`]'s docs): `None` (LATEST) for the first
/// owner of a lease this worker created; otherwise the lease's creation time, or this worker's start if earlier
/// (or if the lease has no creation time).
fn latest_since(lease: &Lease, started: SystemTime) -> Option<SystemTime> {
    if lease.checkpoint.is_some() {
        return None;
    }
    // Bumped by more than this worker's take: somebody owned it before and may have read without checkpointing.
    let had_owner = lease.counter > 1;
    let created_elsewhere = lease.created_at.is_some_and(|created| created < started);
    (had_owner || created_elsewhere).then(|| lease.created_at.map_or(started, |created| created.min(started)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::lease::MemoryLeaseTable;

    fn resolve(g: Group) -> Result<GroupConfig, String> {
        g.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn settings_have_defaults_and_are_validated() {
        let g = || Group::new("g", MemoryLeaseTable::new());
        let c = resolve(g()).expect("defaults");
        assert_eq!(
            (c.lease_duration, c.renew_interval, c.take_interval, c.max_leases),
            (Duration::from_secs(10), Duration::from_secs(10) / 3, Duration::from_secs(20), None)
        );
        assert!(c.worker_id.matches('-').count() >= 2, "{}", c.worker_id);
        assert_ne!(c.worker_id, resolve(g()).expect("defaults").worker_id, "unique per consumer");
        let c = resolve(g().lease_duration(Duration::from_secs(3)).worker_id("w")).expect("derived");
        assert_eq!(
            (c.renew_interval, c.take_interval, c.worker_id.as_str()),
            (Duration::from_secs(1), Duration::from_secs(6), "w")
        );
        let cases: [(Group, &str); 6] = [
            (Group::new("", MemoryLeaseTable::new()), "group name"),
            (g().worker_id(""), "worker id"),
            (g().lease_duration(Duration::ZERO), "lease_duration must be greater than zero"),
            (g().take_interval(Duration::ZERO), "take_interval"),
            (g().renew_interval(Duration::from_secs(10)), "shorter than the lease duration"),
            (g().max_leases(0), "max_leases"),
        ];
        for (group, want) in cases {
            let err = resolve(group).expect_err(want);
            assert!(err.contains(want), "{err} does not contain {want:?}");
        }
    }

    #[test]
    fn latest_starts_from_the_lease_creation_unless_this_worker_created_it_and_is_its_first_owner() {
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let (before, after) = (started - Duration::from_secs(60), started + Duration::from_secs(5));
        let lease =
            |counter, created_at| Lease::new("s", Some("me".into()), counter, None, vec![]).with_created_at(created_at);
        // First owner of a lease created by this worker (after it started): LATEST.
        assert_eq!(latest_since(&lease(1, Some(after)), started), None);
        // First owner of a lease another worker created before this one started: from the creation.
        assert_eq!(latest_since(&lease(1, Some(before)), started), Some(before));
        // Owned before (counter bumped by others): from the creation, or this worker's start if earlier.
        assert_eq!(latest_since(&lease(5, Some(before)), started), Some(before));
        assert_eq!(latest_since(&lease(5, Some(after)), started), Some(started));
        // A lease read from a row without a creation time: this worker's start once it had an owner.
        assert_eq!(latest_since(&lease(5, None), started), Some(started));
        assert_eq!(latest_since(&lease(1, None), started), None);
        // A checkpoint decides.
        let checkpointed = Lease::new("s", None, 5, Some(Checkpoint::ShardEnd), vec![]).with_created_at(Some(before));
        assert_eq!(latest_since(&checkpointed, started), None);
    }
}
