//! Leases for consumer groups: the table through which several workers share a stream's shards.
//!
//! One [`Lease`] per shard, in a [`LeaseScope`] (one group reading one stream). A lease carries its owner, a
//! counter, the shard's checkpoint and its parent shard ids. The counter is incremented by every write to the lease
//! (renewal, checkpoint, take, release), so that:
//! - a worker judges a lease expired the KCL way: it saw the counter unchanged for the lease duration on its own
//!   monotonic clock (clock skew between hosts does not matter);
//! - every write is conditional on the counter (and owner) the writer last saw, so a worker that lost a lease cannot
//!   write to it again: its write fails with [`ErrorKind::Fenced`].
//!
//! A shard is finished when its checkpoint is [`Checkpoint::ShardEnd`].
//!
//! Balancing hands a lease over gracefully: a worker that wants a lease held by another [`requests`] it (sets
//! [`Lease::next_owner`], bumping the counter); the owner's next renewal is refused, it reads the lease
//! ([`LeaseTable::get`]), sees that it is still the owner and that a handoff was asked, finishes its in-flight
//! record, checkpoints and [`releases`] the lease, which the requester then takes, starting from that checkpoint.
//!
//! [`requests`]: LeaseTable::request
//! [`releases`]: LeaseTable::release
//!
//! Backends implement [`LeaseTable`]; [`MemoryLeaseTable`] is the in-memory one (tests, one process).
//!
//! ```
//! use kc_checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
//! use kc_checkpoint::ErrorKind;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kc_checkpoint::Error> {
//! let table = MemoryLeaseTable::new();
//! let scope = LeaseScope::new("billing", "orders");
//! table.create(&scope, "shardId-0", &[]).await?;
//! let lease = table.take(&scope, "shardId-0", 0, "worker-a").await?;
//! let counter = table.renew(&scope, "shardId-0", "worker-a", lease.counter).await?;
//! // worker-b saw the counter unchanged for a lease duration and takes the lease over:
//! table.take(&scope, "shardId-0", counter, "worker-b").await?;
//! // worker-a is fenced off:
//! let err = table.renew(&scope, "shardId-0", "worker-a", counter).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Fenced);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::{Checkpoint, Error, ErrorKind};

/// The leases of one consumer group reading one stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseScope {
    group: String,
    stream: String,
}

impl LeaseScope {
    /// The scope of `group` reading `stream`.
    pub fn new(group: impl Into<String>, stream: impl Into<String>) -> Self {
        Self { group: group.into(), stream: stream.into() }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }
}

/// A shard's lease, as read from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The shard's id.
    pub shard_id: String,
    /// The worker that holds the lease, if any.
    pub owner: Option<String>,
    /// Incremented by every write to the lease.
    pub counter: u64,
    /// How far the shard was read ([`Checkpoint::ShardEnd`]: finished).
    pub checkpoint: Option<Checkpoint>,
    /// The shard's parent shard ids (none, one for a split, two for a merge).
    pub parents: Vec<String>,
    /// A worker that asked for the lease (balancing); cleared by [`LeaseTable::take`].
    pub next_owner: Option<String>,
    /// When the lease was created, by the clock of the worker that created it, in whole milliseconds (see
    /// [`LeaseTable::create`]); `None` for a lease read from a row written before this field existed. Consumer
    /// groups under `InitialPosition::Latest` read a shard that was never checkpointed from this time when the
    /// lease changed hands, so records put after the group first listed the shard are not skipped.
    pub created_at: Option<SystemTime>,
}

impl Lease {
    /// A lease as a backend read it.
    pub fn new(
        shard_id: impl Into<String>,
        owner: Option<String>,
        counter: u64,
        checkpoint: Option<Checkpoint>,
        parents: Vec<String>,
    ) -> Self {
        Self { shard_id: shard_id.into(), owner, counter, checkpoint, parents, next_owner: None, created_at: None }
    }

    /// The same lease with [`created_at`](Self::created_at) set.
    pub fn with_created_at(mut self, created_at: Option<SystemTime>) -> Self {
        self.created_at = created_at;
        self
    }

    /// The same lease with [`next_owner`](Self::next_owner) set.
    pub fn with_next_owner(mut self, next_owner: Option<String>) -> Self {
        self.next_owner = next_owner;
        self
    }

    /// Whether the shard was read to its end.
    pub fn is_finished(&self) -> bool {
        matches!(self.checkpoint, Some(Checkpoint::ShardEnd))
    }
}

/// The creation time a backend stores for a lease it creates: the caller's clock now, in whole milliseconds since
/// the Unix epoch (0 for a clock set before 1970).
pub fn creation_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A creation time stored as milliseconds since the Unix epoch, as a [`SystemTime`].
pub fn from_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// Where a consumer group keeps its leases.
///
/// Every write is atomic and conditional; a condition that does not hold is an [`ErrorKind::Fenced`] error (the
/// lease changed since the caller read it, or it does not exist). Other failures are `Transient` or `Permanent` as
/// for checkpoint stores.
///
/// A network failure is never `Fenced`. A write that fails with `Transient` may still have been applied (the
/// connection broke after the server received it), so backends do not retry writes (a retry would be refused by the
/// write itself, and look like a lost lease); a caller that wants to know reads the lease ([`LeaseTable::get`]).
#[async_trait]
pub trait LeaseTable: Send + Sync {
    /// Every lease of `scope`.
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error>;

    /// The lease of `shard_id`, or `Ok(None)` if there is none.
    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error>;

    /// Creates the lease of `shard_id` (no owner, counter 0, no checkpoint, [`Lease::created_at`] the caller's
    /// clock now, as [`creation_millis`] gives it) unless it exists. Returns whether it was created; an existing
    /// lease is left as it is (its creation time too).
    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error>;

    /// Makes `new_owner` the owner, clears `next_owner` and increments the counter, if the counter is still
    /// `expected_counter` (whoever owns it). Returns the lease as written.
    async fn take(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        new_owner: &str,
    ) -> Result<Lease, Error>;

    /// Sets `next_owner` to `requester` and increments the counter, if the counter is still `expected_counter`
    /// (a handoff request to the owner, see the module docs). Returns the lease as written.
    async fn request(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        requester: &str,
    ) -> Result<Lease, Error>;

    /// Increments the counter, if `owner` owns the lease and the counter is `counter`. Returns the new counter.
    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error>;

    /// Writes `checkpoint` and increments the counter, if `owner` owns the lease and the counter is `counter`.
    /// A checkpoint never moves backwards: one at or before the stored checkpoint leaves it as it is (the counter
    /// is still incremented). Returns the new counter.
    async fn checkpoint(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<u64, Error>;

    /// Clears the owner (keeping `next_owner`) and increments the counter, if `owner` owns the lease and the counter
    /// is `counter`. Returns the new counter.
    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error>;

    /// Deletes the lease of `shard_id` (a finished parent whose children have started). Deleting a missing lease
    /// is not an error.
    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error>;
}

#[async_trait]
impl<T: LeaseTable + ?Sized> LeaseTable for Arc<T> {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        (**self).list(scope).await
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        (**self).get(scope, shard_id).await
    }

    async fn request(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        requester: &str,
    ) -> Result<Lease, Error> {
        (**self).request(scope, shard_id, expected_counter, requester).await
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        (**self).create(scope, shard_id, parents).await
    }

    async fn take(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        new_owner: &str,
    ) -> Result<Lease, Error> {
        (**self).take(scope, shard_id, expected_counter, new_owner).await
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        (**self).renew(scope, shard_id, owner, counter).await
    }

    async fn checkpoint(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<u64, Error> {
        (**self).checkpoint(scope, shard_id, owner, counter, checkpoint).await
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        (**self).release(scope, shard_id, owner, counter).await
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        (**self).delete(scope, shard_id).await
    }
}

/// The error of a write whose condition did not hold.
pub fn fenced(scope: &LeaseScope, shard_id: &str, what: &str) -> Error {
    Error::new(
        ErrorKind::Fenced,
        format!(
            "lease of {shard_id} (group {}, stream {}) changed since it was read: {what} refused",
            scope.group, scope.stream
        ),
    )
}

/// The [`fenced`] error of a conditional write to `table` (`what`, expecting counter `expected`) whose condition did
/// not hold, saying what the lease looks like now: its counter and owner, or that it does not exist. Best effort:
/// the error is `Fenced` whether or not that read succeeds. For backends, after a refused write.
pub async fn refused<T: LeaseTable + ?Sized>(
    table: &T,
    scope: &LeaseScope,
    shard_id: &str,
    what: &str,
    expected: u64,
) -> Error {
    let now = match table.get(scope, shard_id).await {
        Ok(Some(l)) => format!("counter {} (expected {expected}), owner {:?}", l.counter, l.owner),
        Ok(None) => "the lease does not exist".to_owned(),
        Err(_) => "could not read the lease".to_owned(),
    };
    fenced(scope, shard_id, &format!("{what} ({now})"))
}

/// A [`LeaseTable`] in memory (clones share the leases): for tests and for several workers in one process.
#[derive(Clone, Debug, Default)]
pub struct MemoryLeaseTable {
    inner: Arc<Mutex<BTreeMap<(LeaseScope, String), Lease>>>,
}

impl MemoryLeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(LeaseScope, String), Lease>> {
        // Every operation is a check then one assignment: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `write` to the lease if `owner` (when given) owns it and its counter is `counter`.
    fn write(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: Option<&str>,
        counter: u64,
        what: &str,
        write: impl FnOnce(&mut Lease),
    ) -> Result<Lease, Error> {
        let mut map = self.lock();
        match map.get_mut(&(scope.clone(), shard_id.to_owned())) {
            Some(lease) if lease.counter == counter && owner.is_none_or(|o| lease.owner.as_deref() == Some(o)) => {
                write(lease);
                lease.counter += 1;
                Ok(lease.clone())
            }
            _ => Err(fenced(scope, shard_id, what)),
        }
    }
}

impl PartialOrd for LeaseScope {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LeaseScope {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.group, &self.stream).cmp(&(&other.group, &other.stream))
    }
}

#[async_trait]
impl LeaseTable for MemoryLeaseTable {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        Ok(self.lock().iter().filter(|((s, _), _)| s == scope).map(|(_, lease)| lease.clone()).collect())
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        Ok(self.lock().get(&(scope.clone(), shard_id.to_owned())).cloned())
    }

    async fn request(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        requester: &str,
    ) -> Result<Lease, Error> {
        self.write(scope, shard_id, None, expected_counter, "handoff request", |l| {
            l.next_owner = Some(requester.to_owned())
        })
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        let mut map = self.lock();
        let key = (scope.clone(), shard_id.to_owned());
        if map.contains_key(&key) {
            return Ok(false);
        }
        let created_at = Some(from_millis(creation_millis()));
        map.insert(key, Lease::new(shard_id, None, 0, None, parents.to_vec()).with_created_at(created_at));
        Ok(true)
    }

    async fn take(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        new_owner: &str,
    ) -> Result<Lease, Error> {
        self.write(scope, shard_id, None, expected_counter, "take", |l| {
            l.owner = Some(new_owner.to_owned());
            l.next_owner = None;
        })
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        self.write(scope, shard_id, Some(owner), counter, "renewal", |_| {}).map(|l| l.counter)
    }

    async fn checkpoint(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<u64, Error> {
        self.write(scope, shard_id, Some(owner), counter, "checkpoint", |l| {
            if l.checkpoint.as_ref().is_none_or(|stored| stored < checkpoint) {
                l.checkpoint = Some(checkpoint.clone());
            }
        })
        .map(|l| l.counter)
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        self.write(scope, shard_id, Some(owner), counter, "release", |l| l.owner = None).map(|l| l.counter)
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        self.lock().remove(&(scope.clone(), shard_id.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SequenceNumber;

    fn at(s: &str) -> Checkpoint {
        Checkpoint::at(SequenceNumber::parse(s).expect("valid"))
    }

    #[tokio::test]
    async fn every_write_is_conditional_and_bumps_the_counter() {
        let t = MemoryLeaseTable::new();
        let s = LeaseScope::new("g", "st");
        let other_scope = LeaseScope::new("g2", "st");
        assert!(t.create(&s, "a", &["p".to_owned()]).await.expect("create"));
        assert!(!t.create(&s, "a", &[]).await.expect("create again"), "an existing lease is kept");
        assert_eq!(t.list(&other_scope).await.expect("list"), [], "scopes are separate");

        let fenced_kind = |r: Result<u64, Error>| r.expect_err("fenced").kind();
        assert_eq!(fenced_kind(t.renew(&s, "a", "w1", 0).await), ErrorKind::Fenced, "not the owner");
        let l = t.take(&s, "a", 0, "w1").await.expect("take");
        assert_eq!((l.owner.as_deref(), l.counter, l.parents.as_slice()), (Some("w1"), 1, &["p".to_owned()][..]));
        assert!(t.take(&s, "a", 0, "w2").await.is_err(), "a stale counter cannot take");
        let c = t.renew(&s, "a", "w1", 1).await.expect("renew");
        assert_eq!(c, 2);
        let c = t.checkpoint(&s, "a", "w1", c, &at("10")).await.expect("checkpoint");
        let c = t.checkpoint(&s, "a", "w1", c, &at("9")).await.expect("older checkpoint is a no-op");
        assert_eq!(t.list(&s).await.expect("list")[0].checkpoint, Some(at("10")), "never backwards");
        let l = t.request(&s, "a", c, "w2").await.expect("w2 asks for it");
        assert_eq!((l.owner.as_deref(), l.next_owner.as_deref()), (Some("w1"), Some("w2")));
        assert_eq!(fenced_kind(t.renew(&s, "a", "w1", c).await), ErrorKind::Fenced, "the request bumped it");
        let read = t.get(&s, "a").await.expect("get").expect("exists");
        assert_eq!(read, l);
        let c = t.checkpoint(&s, "a", "w1", read.counter, &at("10")).await.expect("handoff checkpoint");
        let c = t.release(&s, "a", "w1", c).await.expect("handoff release");
        let l = t.get(&s, "a").await.expect("get").expect("exists");
        assert_eq!((l.owner.as_deref(), l.next_owner.as_deref(), l.counter), (None, Some("w2"), c));
        let l = t.take(&s, "a", c, "w2").await.expect("w2 takes over");
        assert_eq!(l.next_owner, None, "take clears the request");
        assert_eq!(fenced_kind(t.checkpoint(&s, "a", "w1", c, &at("11")).await), ErrorKind::Fenced, "w1 lost it");
        assert_eq!(fenced_kind(t.release(&s, "a", "w1", l.counter).await), ErrorKind::Fenced, "w1 is not owner");
        assert_eq!(l.checkpoint, Some(at("10")), "the next owner starts from the handoff checkpoint");
        let c = t.release(&s, "a", "w2", l.counter).await.expect("release");
        let l = t.list(&s).await.expect("list").remove(0);
        assert_eq!((l.owner, l.counter), (None, c));
        t.delete(&s, "a").await.expect("delete");
        t.delete(&s, "a").await.expect("delete again");
        assert!(t.list(&s).await.expect("list").is_empty());
        assert_eq!(t.get(&s, "a").await.expect("get"), None);
        assert_eq!(fenced_kind(t.renew(&s, "a", "w2", c).await), ErrorKind::Fenced, "a missing lease");
    }
}
