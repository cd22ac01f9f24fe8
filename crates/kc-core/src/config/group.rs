//! The settings of a consumer group ([`Group`], validated into `GroupConfig`).

use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::lease::LeaseTable;

use crate::error::Error;

/// The default [`Group::watch_interval`].
const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

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
/// | [`watch_interval`](Self::watch_interval) | 500 ms | how often the group's change marker is read (see Taking) |
/// | [`max_leases`](Self::max_leases) | none | the most leases this worker holds (of every stream, with several) |
///
/// [`ConsumerBuilder::build`](crate::ConsumerBuilder::build) validates them: a non-empty group name and worker
/// id, durations above zero, a renew interval below the lease duration, `max_leases` at least 1. A builder given both
/// a group and a checkpoint store is refused (a [`Config`](crate::ErrorKind::Config) error): in a group the checkpoints live
/// in the leases.
///
/// # How it works
/// - **Leases.** One lease per shard in the group's scope (group name, stream), created for every shard the
///   discovery lists (parents before children, with their parent ids). A lease holds its owner, a counter bumped by
///   every write, the shard's checkpoint (never moving backwards) and the parents. A shard is finished when its
///   checkpoint is the shard's end.
/// - **Expiry, the KCL way.** A lease is expired when this worker saw its counter unchanged for the lease duration
///   on its own monotonic clock: clock skew between hosts does not matter. Leases without an owner are free.
/// - **Taking**, every take interval (and at once when another worker bumped the group's change marker, below;
///   after a renew interval while the group settles: this worker took leases or waits for a handoff; when the
///   shards' listing has shards without a lease). A take cycle lists every lease of the scope. Between take cycles,
///   every quarter renew interval, a worker reads one lease (its *sentinel*, one `get`) of each of the two owners
///   after it in the ring of owners sorted by id, instead of listing: a live worker renews its leases every renew
///   interval, so a sentinel unchanged for one and a half renew intervals makes the watcher list the leases and
///   bump the change marker; every worker then lists too and schedules a cycle at the first deadline of the leases
///   (a lease duration after their counters were first seen), which takes the failed worker's leases: about one and
///   a half lease durations after its last renewal. A sentinel that changed owner or finished also starts a take
///   cycle. So a group in a steady state lists the leases once per take interval per worker, and reads two more
///   leases per worker every quarter renew interval, whatever its size (issue 12: reads proportional to what a
///   worker needs). A lease that expires while its owner lives (its renewals failed for a lease duration) is taken
///   by the next take cycle. When a shard of this worker ends, this worker takes the shard's children itself,
///   without a take cycle (see Resharding). The leases to read are the unfinished ones whose parents are finished or gone; the live workers are the owners of unexpired leases, the workers that asked for
///   one, and this one; each aims at `ceil(leases to read / live workers)`, capped by `max_leases`. A lease on its way
///   (asked for by a live worker, or released for it) counts as the requester's. Free leases are taken first (those
///   released to this worker, then unowned, then expired ones). When none is left and this worker is still below
///   the target, it asks for everything it lacks in the same cycle ([`LeaseTable::request`], one call per lease):
///   each lease from the most loaded worker at that point, if that one is above the target (or at it, when this
///   worker needs more than one lease and holds at least two fewer: no worker stays idle), so that no worker is
///   asked below the target. The owners hand the leases over gracefully (below). While a request is pending the next
///   cycle comes after one renew interval. A consumer of several streams in a group
///   ([`Consumer::builder_for_streams`](crate::Consumer::builder_for_streams)) runs these cycles per stream, each
///   stream's leases a scope of the one lease table, and counts every stream in the fair share: the leases to read,
///   the live workers and each worker's leases are the sums over the streams (the other streams' figures as their
///   last cycle saw them), and no lease is asked for while a stream has free ones.
/// - **The change marker.** One more entry of the lease table, in a scope of its own (the stream name `#changes`
///   beside the group's name, which no stream can have), whose counter a worker bumps after it released leases
///   (graceful stop, handoff; not a finished shard's, which nobody can take), created leases (new shards) or asked
///   for some. Every worker reads it every
///   [`watch_interval`](Self::watch_interval) (one small read) and runs a take cycle when another worker bumped it,
///   renewing at once the leases it was asked for: a released lease is taken, and a request starts its handoff,
///   within about the watch interval instead of at the next take cycle. A joining worker gets its whole share in
///   its first cycle plus one watch interval; a graceful stop's shards move within one watch interval. The marker is
///   only a hint: when it cannot be read or written, the take cycles do the same work at their own pace.
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
///   child with no checkpoint starts at TRIM_HORIZON (under `Latest`, see below). The worker that finishes a
///   shard takes its children at once (a few calls per child: create its lease, read its parents' and its own,
///   take it), listing the shards again only when it does not know them (no ChildShards reported); a merged child
///   is taken by whoever finishes its last parent. Balancing then moves leases as usual. A finished parent's lease is
///   deleted once every child has an owner or a checkpoint, and is not created again. A lease records only the
///   parents still in the stream: a child of parents past the retention is a root.
/// - **Shutdown.** Cancelling the shutdown token stops every shard after the record in hand; each checkpoints and
///   releases its lease, so other workers take over at once from there. A take cycle in flight stops after its
///   current call, and every lease-table call is bounded by [`store_timeout`](crate::ConsumerBuilder::store_timeout):
///   with the table unreachable the stop returns `Ok(())` within the lease duration (plus that timeout), its leases
///   left to expire.
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
/// A child lease without a checkpoint starts, under `Latest`, at AT_TIMESTAMP of the earliest creation of its
/// parents' leases rather than at TRIM_HORIZON: every record of the child was put after its parents closed, so when
/// the group read the parents that is the whole child, and when the parents closed before the group started (a new
/// group on a stream resharded earlier, as every on-demand stream is) it is what was put since the group first
/// listed them, not the child's whole retention. A child of parents past the retention has no parents in its lease
/// and starts like any root. If a parent's lease is already gone (deleted once the children started) the child
/// starts at TRIM_HORIZON.
///
/// # Limits
/// - A lease that is lost (taken after expiry) may have had records handled by both workers: the old owner's last
///   handled records after its last checkpoint, as after a crash. Handoffs and graceful stops repeat nothing.
/// - A lease handed over to a worker that stopped before it took the lease (its request was answered after it left)
///   stays reserved for that worker until it expires: the shard waits about a lease duration instead of being taken
///   at once. There is no call to withdraw a request yet.
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
    watch_interval: Duration,
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
            .field("watch_interval", &self.watch_interval)
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
            watch_interval: DEFAULT_WATCH_INTERVAL,
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

    /// How often this worker reads the group's change marker (one small read): a lease released by another worker's
    /// graceful stop or handoff, and a request for one of this worker's leases, are acted on within this interval
    /// rather than at the next take cycle. Default: 500 ms.
    pub fn watch_interval(mut self, interval: Duration) -> Self {
        self.watch_interval = interval;
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
        let watch_interval = self.watch_interval;
        for (name, value) in [
            ("lease_duration", lease_duration),
            ("renew_interval", renew_interval),
            ("take_interval", take_interval),
            ("watch_interval", watch_interval),
        ] {
            if value.is_zero() {
                return Err(Error::config(format!("group {name} must be greater than zero")));
            }
            super::at_most_max(&format!("group {name}"), value)?;
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
            watch_interval,
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
    pub(crate) watch_interval: Duration,
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
            .field("watch_interval", &self.watch_interval)
            .field("max_leases", &self.max_leases)
            .finish_non_exhaustive()
    }
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
        let cases: [(Group, &str); 7] = [
            (Group::new("", MemoryLeaseTable::new()), "group name"),
            (g().worker_id(""), "worker id"),
            (g().lease_duration(Duration::ZERO), "lease_duration must be greater than zero"),
            (g().take_interval(Duration::ZERO), "take_interval"),
            (g().watch_interval(Duration::ZERO), "watch_interval"),
            (g().renew_interval(Duration::from_secs(10)), "shorter than the lease duration"),
            (g().max_leases(0), "max_leases"),
        ];
        for (group, want) in cases {
            let err = resolve(group).expect_err(want);
            assert!(err.contains(want), "{err} does not contain {want:?}");
        }
    }
}
