//! Consumer groups: several workers (processes) share a stream's shards through a lease table.
//!
//! See [`Group`](crate::Group) for the settings and the behaviour. The pieces: `plan` (the decisions of a take cycle, pure),
//! `handle` (one held lease: serialized conditional writes, loss and handoff detection, the checkpoint store of a
//! shard task), and the worker below (discovery, take cycles, shard tasks, shutdown).

mod changes;
mod handle;
mod plan;
mod sentinel;
pub(crate) mod tally;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kc_checkpoint::lease::{Lease, LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, CheckpointStore, ErrorKind as StoreErrorKind, ShardKey};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::api::ShardInfo;
use crate::bounded::bounded;
use crate::config::{GroupConfig, InitialPosition};
use crate::deliver::Deliver;
use crate::discovery::{self, Listing};
use crate::error::{Error, ErrorKind};
use crate::metrics::GroupMetrics;
use crate::reader::{ShardReader, Shared};
use crate::shard::{ShardExit, StartHint};

use changes::Changes;
use handle::{renew_loop, LeaseHandle, LeaseStore};
use plan::{Expiry, Me};
use sentinel::{Check, Sentinels};
use tally::Tallies;

fn lease_error(what: &str, e: kc_checkpoint::Error) -> Error {
    Error::new(ErrorKind::Checkpoint, format!("lease table: {what} failed")).with_source(e)
}

type ShardResult = (String, Result<ShardExit, Error>);

/// Takes of one cycle sent at once.
const TAKES_IN_FLIGHT: usize = 8;

/// Lease creates sent at once.
const CREATES_IN_FLIGHT: usize = 8;

/// Listings of one take cycle while other workers create leases too.
const MAX_CREATE_LISTINGS: usize = 8;

/// How [`Worker::create_leases`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Creating {
    /// Every lease the listing lacked was created (or found).
    Done,
    /// A batch found half its leases or more created already: others are creating them too.
    ByOthers,
    /// A create failed (transient) or the worker is stopping: the next cycle goes on.
    Failed,
}

struct Held {
    handle: Arc<LeaseHandle>,
    store: Arc<LeaseStore>,
}

/// The scan of a worker in a group, until `stop` is cancelled or an error. `tallies` is shared by the workers of the
/// group's other streams in this consumer (a group over several streams): the fair share counts them.
pub(crate) async fn run<D: Deliver>(
    shared: Shared,
    group: &GroupConfig,
    deliver: Arc<D>,
    stop: CancellationToken,
    tallies: Arc<Tallies>,
) -> Result<(), Error> {
    let stream = shared.cfg.stream.clone();
    let span = tracing::info_span!("group", group = %group.name, worker = %group.worker_id, stream = %stream);
    async move {
        let table: Arc<dyn LeaseTable> = bounded(Arc::clone(&group.table), shared.cfg.store_timeout);
        let Some(shared) = shared.prepare(&stop, Some((&*table, group.name.as_str()))).await? else {
            return Ok(()); // cancelled while waiting for the fan-out consumer
        };
        let mut worker = Worker {
            changes: Changes::new(Arc::clone(&table), &group.name, &shared.stream_key, &group.worker_id),
            released: false,
            table,
            cfg: group,
            scope: LeaseScope::new(group.name.as_str(), &*shared.stream_key),
            stop,
            deliver,
            shared,
            held: HashMap::new(),
            tasks: JoinSet::new(),
            renewers: JoinSet::new(),
            expiry: Expiry::default(),
            sentinels: Sentinels::default(),
            last_leases: Vec::new(),
            created: false,
            suspected: false,
            ended_here: HashSet::new(),
            listing: Vec::new(),
            // On the grid of the leases' creation stamps (whole milliseconds), so that a lease this worker creates
            // in the millisecond it started is not taken for one created before it.
            started: kc_checkpoint::lease::from_millis(kc_checkpoint::lease::creation_millis()),
            metrics: GroupMetrics::new(&group.name, &stream, &group.worker_id),
            tallies,
        };
        let result = worker.run().await;
        let stopped = worker.stop_all().await;
        worker.tallies.remove(&worker.shared.stream_key);
        let deregistered = worker.shared.deregister().await;
        let result = match (result, stopped.and(deregistered)) {
            (Err(e), Err(other)) => {
                warn!(error = %other, "another shard failed while stopping");
                Err(e)
            }
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
        result.map_err(|e| if e.stream().is_none() { e.at(&stream, None) } else { e })
    }
    .instrument(span)
    .await
}

struct Worker<'a, D> {
    /// The group's lease table, every call bounded by the store timeout.
    table: Arc<dyn LeaseTable>,
    /// The group's change marker, bumped after leases were released or asked for.
    changes: Changes,
    /// A lease was released since the marker was last bumped.
    released: bool,
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
    /// One lease of each of the two owners after this worker in the ring, read between take cycles instead of every
    /// lease.
    sentinels: Sentinels,
    /// The leases as the last take cycle listed them: which shards of a new listing need a lease.
    last_leases: Vec<Lease>,
    /// Leases were created since the marker was last bumped: the others take their share at once.
    created: bool,
    /// A watched worker looked failed: after the next listing the marker is bumped, so that every worker looks.
    suspected: bool,
    ended_here: HashSet<String>,
    listing: Vec<ShardInfo>,
    /// When this worker started: where a shard taken over without a checkpoint starts under `Latest`.
    started: SystemTime,
    metrics: GroupMetrics,
    /// The group's other streams read by this consumer, and where this stream's figures go.
    tallies: Arc<Tallies>,
}

impl<D: Deliver> Worker<'_, D> {
    async fn run(&mut self) -> Result<(), Error> {
        match discovery::list(&*self.shared.api, &self.shared.cfg, &self.stop, true).await? {
            Listing::Shards(listing) => self.listing = listing,
            Listing::Unavailable | Listing::Cancelled => return Ok(()),
        }
        info!(shards = self.listing.len(), "shards listed; joining the group");
        // Full cycles (taking and balancing) every take interval, and at once when another worker bumped the change
        // marker (it released or created leases, asked for some, or suspects a failed worker). In between, every
        // quarter renew interval, one lease of each of two other workers (a ring) is read (`sentinel.rs`); a take
        // cycle lists every lease only when one of them was not renewed lately (a worker may have failed: its
        // leases' deadlines then schedule the cycles that take them) or changed hands, or when the shards' listing
        // has shards without a lease.
        let mut next_take = Instant::now();
        let mut next_full = next_take;
        let mut discovery = discovery::ticker(self.shared.cfg.discovery_interval);
        let mut watch = tokio::time::interval(self.cfg.watch_interval);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sentinel_check = tokio::time::interval((self.cfg.renew_interval / 4).max(Duration::from_millis(1)));
        sentinel_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A live worker's sentinel changes every renew interval (its renewals come at a fixed rate), give or take
        // the writes' latency: half more is late (a busy database delays writes). A wrong suspicion costs a listing
        // by every worker.
        let stale_after = self.cfg.renew_interval.saturating_mul(3) / 2;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next_take) => {
                    let full = Instant::now() >= next_full;
                    self.cycle(full, false, &mut next_take, &mut next_full).await?;
                }
                _ = watch.tick() => {
                    if !self.stop.is_cancelled() && self.changes.changed().await {
                        debug!("the group changed; take cycle");
                        // Watching every owner's deadlines this once: the change may be another worker's suspicion.
                        self.cycle(true, true, &mut next_take, &mut next_full).await?;
                    }
                }
                _ = sentinel_check.tick() => {
                    if self.stop.is_cancelled() || self.sentinels.len() == 0 {
                        continue;
                    }
                    match self.sentinels.check(&*self.table, &self.scope, stale_after).await {
                        Check::Quiet => {}
                        Check::Changed => next_take = Instant::now(),
                        Check::Stale(workers) => {
                            info!(?workers, "no renewal seen from these workers lately; looking at their leases");
                            next_take = Instant::now();
                            // The others watch other workers: tell them to look too (after this worker's listing).
                            self.suspected = true;
                        }
                    }
                }
                _ = discovery.tick() => {
                    if !self.discover().await? {
                        return Ok(());
                    }
                    if !plan::to_create(&self.listing, &self.last_leases).is_empty() {
                        next_take = Instant::now();
                    }
                }
                Some(joined) = self.tasks.join_next() => {
                    let mut ended: Vec<String> = self.exited(joined).await?.into_iter().collect();
                    // Shards that ended together are dealt with together (one listing at most).
                    while let Some(joined) = self.tasks.try_join_next() {
                        ended.extend(self.exited(joined).await?);
                    }
                    if !ended.is_empty() {
                        // Their children are ready now rather than at the next cycle. The listing is asked again
                        // only when it does not know a child (kinesalite reports no ChildShards; nor does a shard
                        // found ended in its lease); then this worker takes them itself, a few calls per child
                        // instead of a take cycle (a listing of every lease) per shard end.
                        if ended.iter().any(|p| !self.children_known(p)) && !self.discover().await? {
                            return Ok(());
                        }
                        if !self.continue_into_children(&ended).await? {
                            next_take = Instant::now();
                        }
                    }
                    self.announce_releases().await;
                }
                Some(_) = self.renewers.join_next() => {}
            }
        }
    }

    /// A take cycle, then when the next ones come.
    async fn cycle(
        &mut self,
        full: bool,
        watch_all: bool,
        next_take: &mut Instant,
        next_full: &mut Instant,
    ) -> Result<(), Error> {
        // Not abandoned on a stop (a take applied but not seen would leave a lease to expire instead of being
        // released): the cycle looks at the stop between its calls, each bounded by the store timeout.
        let (pending, next_expiry) = self.take_cycle(full, watch_all).await?;
        let now = Instant::now();
        if full {
            *next_full = now + if pending { self.cfg.renew_interval } else { self.cfg.take_interval };
        } else if pending {
            *next_full = (*next_full).min(now + self.cfg.renew_interval);
        }
        let mut next = *next_full;
        if let Some(at) = next_expiry {
            // Just after the deadline (this worker's clock judges it there), and never a busy loop.
            next = next.min((at + Duration::from_millis(10)).max(now + Duration::from_millis(100)));
        }
        *next_take = next;
        Ok(())
    }

    /// Bumps the change marker if leases were released since it was last bumped.
    async fn announce_releases(&mut self) {
        if std::mem::take(&mut self.released) {
            self.changes.bump().await;
        }
    }

    /// Refreshes the shard listing; false when cancelled.
    async fn discover(&mut self) -> Result<bool, Error> {
        match discovery::list(&*self.shared.api, &self.shared.cfg, &self.stop, false).await? {
            Listing::Shards(listing) => self.listing = listing,
            Listing::Unavailable => {}
            Listing::Cancelled => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the listing names a child of `shard_id` (Kinesis creates a split's two children at once, so then all of
    /// them are known).
    fn children_known(&self, shard_id: &str) -> bool {
        self.listing.iter().any(|s| s.parents().any(|p| p == shard_id))
    }

    /// Takes the listed children of shards this worker just read to their end, where their parents are all finished
    /// and nobody took them yet (up to `max_leases`). Returns false when a call failed and a take cycle should come
    /// soon instead; children left to others (a merge's other parent still read, taken meanwhile) are not failures:
    /// the worker that finishes the last parent takes the child, and take cycles remain the safety net.
    async fn continue_into_children(&mut self, ended: &[String]) -> Result<bool, Error> {
        let ended: HashSet<&str> = ended.iter().map(String::as_str).collect();
        let children: Vec<ShardInfo> = self
            .listing
            .iter()
            .filter(|s| s.parents().any(|p| ended.contains(p)) && !self.held.contains_key(&s.shard_id))
            .cloned()
            .collect();
        let mut settled = true;
        for child in children {
            if self.stop.is_cancelled() {
                break;
            }
            if self.cfg.max_leases.is_some_and(|max| self.held.len() >= max) {
                // Left to the others: tell them now rather than at their next take cycle.
                self.released = true;
                break;
            }
            match self.take_child(&child).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() || e.kind() == StoreErrorKind::Fenced => {
                    debug!(shard = %child.shard_id, error = %e, "taking a child lease failed; left to a take cycle");
                    settled = false;
                }
                Err(e) => return Err(lease_error("taking a child's lease", e)),
            }
        }
        Ok(settled)
    }

    /// Creates `child`'s lease if needed and takes it if every listed parent is finished (or its lease is gone) and
    /// it is free.
    async fn take_child(&mut self, child: &ShardInfo) -> Result<(), kc_checkpoint::Error> {
        let parents: Vec<String> =
            child.parents().filter(|p| self.listing.iter().any(|s| s.shard_id == *p)).map(str::to_owned).collect();
        if self.table.create(&self.scope, &child.shard_id, &parents).await? {
            debug!(shard = %child.shard_id, ?parents, "lease created");
        }
        // The parents' leases: checked finished, and where a child under `Latest` starts from (`parents_created`).
        let mut leases = Vec::with_capacity(parents.len() + 1);
        for parent in &parents {
            match self.table.get(&self.scope, parent).await? {
                Some(lease) if lease.is_finished() => leases.push(lease),
                Some(_) => return Ok(()), // another parent still read: whoever finishes it takes the child
                None => {}
            }
        }
        let Some(lease) = self.table.get(&self.scope, &child.shard_id).await? else { return Ok(()) };
        let free = lease.owner.is_none() && lease.next_owner.as_deref().is_none_or(|n| n == self.cfg.worker_id);
        if lease.is_finished() || !free {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.table.take(&self.scope, &child.shard_id, lease.counter, &self.cfg.worker_id).await;
        leases.push(lease);
        match result {
            Ok(taken) => {
                info!(shard = %child.shard_id, "child lease taken (its parent ended here)");
                self.start(taken, started, &leases);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the leases of listed shards that have none, in rounds in which no shard is a parent of another
    /// (parents before children: a round starts when every lease of the rounds before it exists). Within a round a
    /// worker starts at a random shard and sends [`CREATES_IN_FLIGHT`] creates at once: workers started together (a
    /// first deploy) then create different leases, instead of each sending every create, one after the other, in the
    /// same order (16 workers over 4,096 shards: 65,536 conditional writes). A batch of which half the leases or more
    /// exist already means others are creating there: the caller lists the leases again and goes on with what is
    /// still missing.
    async fn create_leases(&mut self, leases: &[Lease]) -> Result<Creating, Error> {
        let listed: HashSet<&str> = self.listing.iter().map(|s| s.shard_id.as_str()).collect();
        let to_create = plan::to_create(&self.listing, leases);
        for round in plan::creation_rounds(&to_create) {
            let from = fastrand::usize(..round.len());
            let mut order = round[from..].iter().chain(&round[..from]);
            loop {
                if self.stop.is_cancelled() {
                    return Ok(Creating::Failed);
                }
                let batch: Vec<&ShardInfo> = order.by_ref().take(CREATES_IN_FLIGHT).copied().collect();
                if batch.is_empty() {
                    break;
                }
                // Only parents still in the stream: one past the retention was never read by this group (its lease
                // would exist, or be deleted only after its children started), so the child is a root, read as the
                // initial position says (under `Latest`, not from TRIM_HORIZON: that would replay the retention).
                let (table, scope) = (&self.table, &self.scope);
                let calls = batch.iter().map(|shard| {
                    let parents: Vec<String> =
                        shard.parents().filter(|p| listed.contains(p)).map(str::to_owned).collect();
                    async move { table.create(scope, &shard.shard_id, &parents).await }
                });
                let results = futures_util::future::join_all(calls).await;
                let (mut existed, mut failed) = (0, false);
                for (shard, result) in batch.iter().zip(results) {
                    match result {
                        Ok(true) => {
                            debug!(shard = %shard.shard_id, "lease created");
                            self.created = true;
                        }
                        Ok(false) => existed += 1,
                        Err(e) if e.is_retryable() => {
                            warn!(shard = %shard.shard_id, error = %e, "creating a lease failed; trying again next cycle");
                            failed = true;
                        }
                        Err(e) => return Err(lease_error("creating a lease", e)),
                    }
                }
                // Parents before children: a round not completed stops here, the next cycle goes on.
                if failed {
                    return Ok(Creating::Failed);
                }
                if existed * 2 >= batch.len() {
                    return Ok(Creating::ByOthers);
                }
            }
        }
        Ok(Creating::Done)
    }

    /// One take cycle (with balancing when `full`). Returns whether the next full cycle should come soon (after a
    /// renew interval): leases were taken (the group is still settling), a handoff this worker asked for is pending,
    /// or the lease table could not be read; and when the next cycle is due at the latest: the first deadline of a
    /// suspected worker's leases, or one watch interval on when a take was missed.
    async fn take_cycle(&mut self, full: bool, watch_all: bool) -> Result<(bool, Option<Instant>), Error> {
        let mut leases = match self.table.list(&self.scope).await {
            Ok(leases) => leases,
            Err(e) if e.is_retryable() => {
                warn!(error = %e, "listing the leases failed; trying again");
                return Ok((true, None));
            }
            Err(e) => return Err(lease_error("listing the leases", e)),
        };
        let mut rounds = 0;
        while !plan::to_create(&self.listing, &leases).is_empty() {
            let created = self.create_leases(&leases).await?;
            if created == Creating::Failed {
                return Ok((true, None));
            }
            leases = match self.table.list(&self.scope).await {
                Ok(leases) => leases,
                Err(e) if e.is_retryable() => return Ok((true, None)),
                Err(e) => return Err(lease_error("listing the leases", e)),
            };
            // Others are creating the rest: go on with what is still missing (a few listings at most; the next
            // cycle finishes what a listing that lags behind the writes does not show yet).
            rounds += 1;
            if created == Creating::Done || rounds == MAX_CREATE_LISTINGS {
                break;
            }
        }
        let now = Instant::now();
        self.expiry.observe(&leases, now);
        self.sentinels.choose(&leases, &self.expiry, now, self.cfg.lease_duration, &self.cfg.worker_id);
        let held: HashSet<String> = self.held.keys().cloned().collect();
        let watched: HashSet<String> = if watch_all {
            leases.iter().filter_map(|l| l.owner.clone()).collect()
        } else {
            self.sentinels.suspects().map(str::to_owned).collect()
        };
        let plan = self.tallies.decide(&self.shared.stream_key, |elsewhere| {
            let me = Me {
                id: &self.cfg.worker_id,
                held: &held,
                ended_here: &self.ended_here,
                max_leases: self.cfg.max_leases,
                watched: &watched,
                elsewhere,
            };
            let mut plan = plan::plan(&leases, &self.expiry, now, self.cfg.lease_duration, &me);
            let tally = std::mem::take(&mut plan.tally);
            (plan, tally)
        });
        self.metrics.workers(plan.workers);
        debug!(workers = plan.workers, target = plan.target, held = held.len(), "take cycle");
        for parent in plan.delete.iter().take_while(|_| !self.stop.is_cancelled()) {
            match self.table.delete(&self.scope, parent).await {
                Ok(()) => debug!(shard = %parent, "finished parent's lease deleted"),
                Err(e) => warn!(shard = %parent, error = %e, "deleting a finished parent's lease failed"),
            }
        }
        // A few takes at a time: a worker taking over a failed worker's share (or joining) does not wait a round
        // trip per lease; every call is awaited (a take applied but not seen would leave its lease to expire).
        let took = !plan.take.is_empty();
        // A take that another worker won (several take a failed worker's leases at once) or that failed: this worker
        // is still below its share, the next cycle comes soon rather than after a renew interval.
        let mut missed = false;
        let mut to_take = plan.take.into_iter();
        while !self.stop.is_cancelled() {
            let batch: Vec<(String, u64)> = to_take.by_ref().take(TAKES_IN_FLIGHT).collect();
            if batch.is_empty() {
                break;
            }
            let started = Instant::now();
            let calls =
                batch.iter().map(|(id, counter)| self.table.take(&self.scope, id, *counter, &self.cfg.worker_id));
            let results = futures_util::future::join_all(calls).await;
            for ((shard_id, _), result) in batch.iter().zip(results) {
                missed |= !self.taken(shard_id, result, started, &leases)?;
            }
        }
        // The owner side of requests made by others: renew those leases now, which finds the request and starts the
        // handoff, instead of at the next renew interval.
        for shard_id in &plan.asked_of_me {
            if let Some(held) = self.held.get(shard_id).filter(|h| !h.handle.handoff_asked()) {
                held.handle.renew_now();
            }
        }
        let mut requested = false;
        for (shard_id, counter) in plan.request.into_iter().filter(|_| full) {
            if self.stop.is_cancelled() {
                break;
            }
            match self.table.request(&self.scope, &shard_id, counter, &self.cfg.worker_id).await {
                Ok(lease) => {
                    info!(shard = %shard_id, from = ?lease.owner, "asked for a lease (balancing)");
                    requested = true;
                }
                Err(e) if e.kind() == StoreErrorKind::Fenced => debug!(shard = %shard_id, "lease changed; not asked"),
                Err(e) => warn!(shard = %shard_id, error = %e, "asking for a lease failed"),
            }
        }
        // A suspicion is announced only if the listing still shows the suspect's sentinel unchanged.
        let suspected = std::mem::take(&mut self.suspected) && self.sentinels.suspects().next().is_some();
        if requested || std::mem::take(&mut self.created) || suspected {
            self.changes.bump().await;
        }
        self.last_leases = leases;
        let soon = missed.then(|| Instant::now() + self.cfg.watch_interval);
        let next = [plan.next_expiry, soon].into_iter().flatten().min();
        Ok((took || requested || plan.request_pending, next))
    }

    /// What a take of `shard_id` (sent at `started`) answered: the shard starts (true), or the lease stays with others
    /// (another worker took it first, or the call failed).
    fn taken(
        &mut self,
        shard_id: &str,
        result: Result<Lease, kc_checkpoint::Error>,
        started: Instant,
        leases: &[Lease],
    ) -> Result<bool, Error> {
        match result {
            Ok(lease) => {
                let previous = leases.iter().find(|l| l.shard_id == shard_id).and_then(|l| l.owner.clone());
                info!(shard = %shard_id, from = ?previous, "lease taken");
                self.start(lease, started, leases);
                Ok(true)
            }
            Err(e) if e.kind() == StoreErrorKind::Fenced => {
                debug!(shard = %shard_id, "lease changed; not taken");
                Ok(false)
            }
            Err(e) if e.is_retryable() => {
                warn!(shard = %shard_id, error = %e, "taking a lease failed");
                Ok(false)
            }
            Err(e) => Err(lease_error("taking a lease", e)),
        }
    }

    /// Starts the shard task and the renewer of a lease just taken (`leases`: the table as this cycle listed it).
    fn start(&mut self, lease: Lease, taken_at: Instant, leases: &[Lease]) {
        let shard_id = lease.shard_id.clone();
        let task = self.stop.child_token();
        let handle = Arc::new(LeaseHandle::new(
            Arc::clone(&self.table),
            self.scope.clone(),
            &shard_id,
            &self.cfg.worker_id,
            lease.counter,
            self.cfg.lease_duration,
            taken_at,
            task.clone(),
        ));
        let cfg = &self.shared.cfg;
        let store = Arc::new(LeaseStore {
            handle: Arc::clone(&handle),
            initial: lease.checkpoint.clone(),
            backoff: (cfg.backoff_base, cfg.backoff_max),
        });
        let shared = Shared { store: Arc::clone(&store) as Arc<dyn CheckpointStore>, ..self.shared.clone() };
        let latest = self.shared.cfg.initial_position == InitialPosition::Latest;
        let since_parents = if latest { parents_created(&lease, leases) } else { None };
        let hint = StartHint {
            // A child is read from its start: its parents were read to their end, by whichever worker. Under
            // `Latest`, from when the group first listed its parents instead (the same records when the group read
            // the parents, none of those put before the group started when it skipped them).
            trim_horizon: !lease.parents.is_empty() && since_parents.is_none(),
            parents: Vec::new(),
            closed: self.listing.iter().any(|s| s.shard_id == shard_id && s.closed),
            latest_since: since_parents.or_else(|| latest_since(&lease, self.started)),
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

    /// A shard task ended: release its lease (or note that it was lost). Returns the shard's id if it ended (read to
    /// its end, or skipped: finished either way).
    async fn exited(&mut self, joined: Result<ShardResult, tokio::task::JoinError>) -> Result<Option<String>, Error> {
        let (shard_id, result) = match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                return Err(Error::new(ErrorKind::Handler, "a shard task panicked (in the handler?)"));
            }
            Err(_) => return Ok(None),
        };
        let Some(held) = self.held.remove(&shard_id) else { return Ok(None) };
        self.metrics.held(self.held.len());
        let handle = &held.handle;
        if handle.is_lost() {
            self.metrics.lost();
            self.shared.lifecycle.lease_lost(&shard_id);
            return match result {
                Err(e) if e.kind() != ErrorKind::Checkpoint => Err(e),
                _ => Ok(None),
            };
        }
        match result {
            Ok(ShardExit::Ended { children }) => {
                if !handle.is_finished() {
                    self.ended_here.insert(shard_id.clone());
                }
                self.release(handle, false).await;
                for child in children {
                    if !self.listing.iter().any(|s| s.shard_id == child.shard_id) {
                        self.listing.push(child);
                    }
                }
                Ok(Some(shard_id))
            }
            Ok(ShardExit::Skipped) => {
                // Nothing to read (closed, no checkpoint, LATEST): finished, so that its children can start.
                let key = ShardKey::new(self.shared.cfg.app.as_str(), &*self.shared.stream_key, &*shard_id);
                if let Err(e) = held.store.set(&key, Checkpoint::ShardEnd).await {
                    warn!(shard = %shard_id, error = %e, "recording a skipped shard as finished failed");
                }
                self.release(handle, false).await;
                Ok(Some(shard_id))
            }
            Ok(ShardExit::Stopped) => {
                if handle.handoff_asked() {
                    info!(shard = %shard_id, "lease handed over");
                }
                self.release(handle, true).await;
                Ok(None)
            }
            Err(e) => {
                // What was handled is checkpointed (the reader saves it even on an error); let others go on.
                self.release(handle, true).await;
                Err(e)
            }
        }
    }

    /// Releases a held lease; `announce`: the other workers are told (the change marker) that it is free to take. A
    /// finished shard's lease is not announced: nobody takes it; its children are taken here or announced then.
    async fn release(&mut self, handle: &LeaseHandle, announce: bool) {
        match handle.release().await {
            Ok(()) => {
                self.released |= announce;
                debug!(shard = %handle.shard_id(), "lease released");
            }
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
            self.release(&held.handle, true).await;
        }
        self.metrics.held(0);
        self.announce_releases().await;
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

/// For a child lease under `Latest`: the earliest creation time of its parents' leases, where it starts (AT_TIMESTAMP)
/// instead of TRIM_HORIZON. Every record of the child was put after its parents closed, so when the group read the
/// parents this is all of the child, and when the group skipped them (closed before it started) it is what was put
/// after the group first listed them: `Latest`, not the child's whole retention. `None` (TRIM_HORIZON) when a parent's
/// lease is gone (deleted once the children started) or has no creation time.
fn parents_created(lease: &Lease, leases: &[Lease]) -> Option<SystemTime> {
    let mut earliest: Option<SystemTime> = None;
    for parent in &lease.parents {
        let created = leases.iter().find(|l| l.shard_id == *parent)?.created_at?;
        earliest = Some(earliest.map_or(created, |e| e.min(created)));
    }
    earliest
}

/// Where a lease without a checkpoint starts under `Latest` (see [`Group`](crate::Group)'s docs): `None` (LATEST) for the first
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
    use std::time::Duration;

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
