//! The conformance suite of [`LeaseTable`]s: every method, every condition, and races, checked against the
//! contract of [`crate::lease`] (which [`MemoryLeaseTable`](crate::lease::MemoryLeaseTable) implements).
//!
//! [`run`] runs every check, each in a scope of its own (a group name made of the prefix, the check, the process id
//! and a counter), so one table serves every check and every run, and checks never see each other's leases. It
//! prints one line per check to stderr and panics with the list of the checks that failed and why.
//!
//! What is checked:
//! - `create` is idempotent, keeps parents and stamps the creation time once (whole milliseconds of the caller's
//!   clock); `get` of a missing lease is `None`; `list` reads what `get` reads.
//! - `take` and `request` need the current counter; `renew`, `checkpoint` and `release` need the owner (compared
//!   exactly) and the counter; a refused write is [`ErrorKind::Fenced`] and changes nothing; every write bumps the
//!   counter by one and returns it.
//! - Handoff: `request` sets `next_owner`, which renewals, checkpoints and releases keep and `take` clears.
//! - Checkpoints never move backwards (numeric order of up to 129 digits, sub-sequence numbers, `ShardEnd` last),
//!   the first one may be anything.
//! - `delete` is idempotent and a deleted lease can be created again; writes to a missing lease are `Fenced`.
//! - Scopes are separate, also for group and stream names that a naive `{group}-{stream}` key would merge.
//! - Races: of 8 concurrent takes exactly one wins; concurrent owner writes never return a counter twice.
//!
//! # Wiring a backend
//!
//! Create the table, hand it to [`run`] with a name for the messages, and drop the table afterwards if the test
//! created it. The checks spawn Tokio tasks, so call it inside a Tokio runtime (a multi-thread one makes the races
//! real):
//!
//! ```
//! use std::sync::Arc;
//!
//! use kc_checkpoint::lease::MemoryLeaseTable;
//! use kc_checkpoint::test_util::lease_suite;
//!
//! #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! async fn main() {
//!     // A database backend would create its table here (and drop it after the run).
//!     lease_suite::run(Arc::new(MemoryLeaseTable::new()), "memory").await;
//! }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::lease::{creation_millis, from_millis, Lease, LeaseScope, LeaseTable};
use crate::test_util::check::{ensure, fail, Context as _, Failure, Outcome};
use crate::{Checkpoint, Error, ErrorKind, SequenceNumber};

/// A lease table as the checks use it (spawned tasks share it).
type Table = Arc<dyn LeaseTable>;

/// One check: a table and a scope of its own.
type Check = fn(Table, LeaseScope) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// Every check, by name.
fn checks() -> Vec<(&'static str, Check)> {
    vec![
        ("create_is_idempotent_and_keeps_parents", |t, s| Box::pin(create_is_idempotent_and_keeps_parents(t, s))),
        ("get_of_a_missing_lease_is_none", |t, s| Box::pin(get_of_a_missing_lease_is_none(t, s))),
        ("creation_time_is_stamped_once_and_kept", |t, s| Box::pin(creation_time_is_stamped_once_and_kept(t, s))),
        ("take_needs_the_current_counter", |t, s| Box::pin(take_needs_the_current_counter(t, s))),
        ("owner_writes_need_owner_and_counter", |t, s| Box::pin(owner_writes_need_owner_and_counter(t, s))),
        ("request_then_handoff", |t, s| Box::pin(request_then_handoff(t, s))),
        ("checkpoints_never_move_backwards", |t, s| Box::pin(checkpoints_never_move_backwards(t, s))),
        ("first_checkpoint_may_be_anything", |t, s| Box::pin(first_checkpoint_may_be_anything(t, s))),
        ("delete_is_idempotent", |t, s| Box::pin(delete_is_idempotent(t, s))),
        ("scopes_are_separate", |t, s| Box::pin(scopes_are_separate(t, s))),
        ("writes_to_a_missing_lease_are_fenced", |t, s| Box::pin(writes_to_a_missing_lease_are_fenced(t, s))),
        ("concurrent_takes_one_winner", |t, s| Box::pin(concurrent_takes_one_winner(t, s))),
        ("concurrent_owner_writes_never_reuse_a_counter", |t, s| {
            Box::pin(concurrent_owner_writes_never_reuse_a_counter(t, s))
        }),
    ]
}

/// Runs every check on `table` (scopes named after `prefix`, the process and a counter) and panics with the list of
/// failures, if any. Prints one line per check to stderr. See the [module docs](self) for what is checked.
///
/// # Panics
///
/// When a check fails: the message lists every failed check, its group name and why.
pub async fn run(table: Arc<dyn LeaseTable>, prefix: &str) {
    let mut failures = Vec::new();
    for (name, check) in checks() {
        let scope = unique_scope(prefix, name);
        let result = check(Arc::clone(&table), scope.clone()).await;
        match &result {
            Ok(()) => eprintln!("lease suite {prefix}: {name}: ok"),
            Err(e) => {
                eprintln!("lease suite {prefix}: {name}: FAILED: {e:#}");
                failures.push(format!("{name} (group {}): {e:#}", scope.group()));
            }
        }
    }
    assert!(failures.is_empty(), "{} lease-table checks failed on {prefix}:\n{}", failures.len(), failures.join("\n"));
}

/// A scope no other check or run uses.
fn unique_scope(prefix: &str, name: &str) -> LeaseScope {
    static N: AtomicUsize = AtomicUsize::new(0);
    let group = format!("{prefix}-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    LeaseScope::new(group, "stream-1")
}

/// A 56-digit sequence number of nines (real ones have 56 digits).
fn nines56() -> String {
    "9".repeat(56)
}

/// The smallest 57-digit number: after [`nines56`] as a number, before it as text.
fn one57() -> String {
    format!("1{}", "0".repeat(56))
}

fn seq(s: &str) -> SequenceNumber {
    SequenceNumber::parse(s).expect("valid sequence number")
}

fn at(s: &str) -> Checkpoint {
    Checkpoint::at(seq(s))
}

fn at_sub(s: &str, sub: u64) -> Checkpoint {
    Checkpoint::at_sub(seq(s), sub)
}

/// Checks that `result` is a `Fenced` error.
fn fenced<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> Outcome {
    match result {
        Err(e) if e.kind() == ErrorKind::Fenced => Ok(()),
        Err(e) => Err(fail!("{what}: want Fenced, got {:?}: {e}", e.kind())),
        Ok(v) => Err(fail!("{what}: want Fenced, got Ok({v:?})")),
    }
}

async fn must_get(t: &Table, s: &LeaseScope, shard: &str) -> Result<Lease, Failure> {
    t.get(s, shard).await.context("get")?.ok_or_else(|| fail!("lease {shard} is missing"))
}

/// A lease `shard` taken by `owner`; returns its counter.
async fn taken(t: &Table, s: &LeaseScope, shard: &str, owner: &str) -> Result<u64, Failure> {
    ensure!(t.create(s, shard, &[]).await.context("create")?, "create {shard}: want created");
    let lease = t.take(s, shard, 0, owner).await.context("take")?;
    ensure!(lease.owner.as_deref() == Some(owner) && lease.counter == 1, "take of a new lease: {lease:?}");
    Ok(lease.counter)
}

async fn create_is_idempotent_and_keeps_parents(t: Table, s: LeaseScope) -> Outcome {
    let parents = vec!["shardId-p1".to_owned(), "shardId-p2".to_owned()];
    ensure!(t.create(&s, "shardId-b", &parents).await?, "first create: want true");
    ensure!(!t.create(&s, "shardId-b", &[]).await?, "second create: want false");
    let b = must_get(&t, &s, "shardId-b").await?;
    let want = Lease::new("shardId-b", None, 0, None, parents.clone()).with_created_at(b.created_at);
    ensure!(b == want, "a created lease: got {b:?}, want {want:?}");
    ensure!(t.create(&s, "shardId-a", &[]).await?, "create a");
    let a = t.take(&s, "shardId-a", 0, "w1").await?;
    ensure!(!t.create(&s, "shardId-a", &parents).await?, "create of a taken lease: want false");
    let a_now = must_get(&t, &s, "shardId-a").await?;
    ensure!(a_now == a, "create left the existing lease as it was: got {a_now:?}, want {a:?}");
    ensure!(a_now.parents.is_empty(), "no parents");
    let mut listed = t.list(&s).await?;
    listed.sort_by(|x, y| x.shard_id.cmp(&y.shard_id));
    ensure!(listed == vec![a, want], "list: {listed:?}");
    Ok(())
}

/// `create` stamps the caller's clock (whole milliseconds) on a new lease; a second `create` and every write keep it.
async fn creation_time_is_stamped_once_and_kept(t: Table, s: LeaseScope) -> Outcome {
    let before = from_millis(creation_millis());
    ensure!(t.create(&s, "shard", &[]).await?, "create");
    let after = from_millis(creation_millis());
    let created = must_get(&t, &s, "shard").await?.created_at.ok_or_else(|| fail!("no creation time"))?;
    ensure!(before <= created && created <= after, "created at {created:?}, not within {before:?}..={after:?}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    ensure!(!t.create(&s, "shard", &[]).await?, "second create");
    let c = t.take(&s, "shard", 0, "w1").await?.counter;
    let c = t.renew(&s, "shard", "w1", c).await?;
    let c = t.checkpoint(&s, "shard", "w1", c, &at("7")).await?;
    let l = t.request(&s, "shard", c, "w2").await?;
    let c = t.release(&s, "shard", "w1", l.counter).await?;
    let taken = t.take(&s, "shard", c, "w2").await?;
    ensure!(taken.created_at == Some(created), "take returns the creation time: {taken:?}");
    let read = must_get(&t, &s, "shard").await?;
    ensure!(read.created_at == Some(created), "kept by a second create and every write: {read:?}");
    let listed = t.list(&s).await?;
    ensure!(listed.iter().all(|l| l.created_at == Some(created)), "list reads it too: {listed:?}");
    Ok(())
}

async fn get_of_a_missing_lease_is_none(t: Table, s: LeaseScope) -> Outcome {
    ensure!(t.get(&s, "shardId-none").await?.is_none(), "get of a missing lease: want None");
    ensure!(t.list(&s).await?.is_empty(), "list of an empty scope");
    Ok(())
}

async fn take_needs_the_current_counter(t: Table, s: LeaseScope) -> Outcome {
    t.create(&s, "shard", &[]).await?;
    fenced(t.take(&s, "shard", 1, "w1").await, "take with a counter from the future")?;
    fenced(t.take(&s, "shard", u64::MAX, "w1").await, "take with u64::MAX")?;
    ensure!(must_get(&t, &s, "shard").await?.counter == 0, "a refused take wrote nothing");
    let l = t.take(&s, "shard", 0, "w1").await?;
    ensure!((l.owner.as_deref(), l.counter) == (Some("w1"), 1), "take: {l:?}");
    fenced(t.take(&s, "shard", 0, "w2").await, "take with a stale counter")?;
    let l = t.take(&s, "shard", 1, "w2").await?;
    ensure!((l.owner.as_deref(), l.counter) == (Some("w2"), 2), "take of an owned lease: {l:?}");
    let l = t.take(&s, "shard", 2, "w2").await?;
    ensure!((l.owner.as_deref(), l.counter) == (Some("w2"), 3), "take by the owner itself: {l:?}");
    ensure!(must_get(&t, &s, "shard").await? == l, "get reads what take returned");
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum OwnerWrite {
    Renew,
    Checkpoint,
    Release,
}

async fn owner_write(t: &Table, s: &LeaseScope, op: OwnerWrite, owner: &str, counter: u64) -> Result<u64, Error> {
    match op {
        OwnerWrite::Renew => t.renew(s, "shard", owner, counter).await,
        OwnerWrite::Checkpoint => t.checkpoint(s, "shard", owner, counter, &at(&nines56())).await,
        OwnerWrite::Release => t.release(s, "shard", owner, counter).await,
    }
}

async fn owner_writes_need_owner_and_counter(t: Table, s: LeaseScope) -> Outcome {
    for op in [OwnerWrite::Renew, OwnerWrite::Checkpoint, OwnerWrite::Release] {
        let s = LeaseScope::new(format!("{}-{op:?}", s.group()), s.stream());
        let c = taken(&t, &s, "shard", "w1").await?;
        let c = t.renew(&s, "shard", "w1", c).await.context("renew to move the counter off 1")?;
        let before = must_get(&t, &s, "shard").await?;
        // (owner, counter): each is refused and leaves the lease as it was.
        let refused = [("w2", c), ("w1", c + 1), ("w1", c - 1), ("w1", 0), ("w1", u64::MAX), ("", c), ("W1", c)];
        for (owner, counter) in refused {
            fenced(owner_write(&t, &s, op, owner, counter).await, &format!("{op:?} by {owner:?} at {counter}"))?;
            let now = must_get(&t, &s, "shard").await?;
            ensure!(now == before, "{op:?} by {owner:?} at {counter} changed the lease: {now:?}, was {before:?}");
        }
        let next = owner_write(&t, &s, op, "w1", c).await.with_context(|| format!("{op:?} by the owner"))?;
        ensure!(next == c + 1, "{op:?}: returned counter {next}, want {}", c + 1);
        let after = must_get(&t, &s, "shard").await?;
        ensure!(after.counter == next, "{op:?}: stored counter {} != returned {next}", after.counter);
        let want_owner = if matches!(op, OwnerWrite::Release) { None } else { Some("w1") };
        ensure!(after.owner.as_deref() == want_owner, "{op:?}: owner {:?}", after.owner);
        if let OwnerWrite::Release = op {
            fenced(t.renew(&s, "shard", "w1", next).await, "renew of a released lease by its former owner")?;
            fenced(t.release(&s, "shard", "w1", next).await, "release of a released lease")?;
        }
    }
    Ok(())
}

async fn request_then_handoff(t: Table, s: LeaseScope) -> Outcome {
    let c = taken(&t, &s, "shard", "w1").await?;
    fenced(t.request(&s, "shard", c + 1, "w2").await, "request with a wrong counter")?;
    let l = t.request(&s, "shard", c, "w2").await?;
    ensure!(
        (l.owner.as_deref(), l.next_owner.as_deref(), l.counter) == (Some("w1"), Some("w2"), c + 1),
        "request: {l:?}"
    );
    fenced(t.renew(&s, "shard", "w1", c).await, "renewal after a request (counter bumped)")?;
    let read = must_get(&t, &s, "shard").await?;
    ensure!(read == l, "get after request: {read:?}, want {l:?}");
    let c = t.renew(&s, "shard", "w1", read.counter).await?;
    ensure!(must_get(&t, &s, "shard").await?.next_owner.as_deref() == Some("w2"), "renew keeps next_owner");
    let c = t.checkpoint(&s, "shard", "w1", c, &at("42")).await?;
    ensure!(must_get(&t, &s, "shard").await?.next_owner.as_deref() == Some("w2"), "checkpoint keeps next_owner");
    let c = t.release(&s, "shard", "w1", c).await?;
    let l = must_get(&t, &s, "shard").await?;
    ensure!(
        (l.owner.as_deref(), l.next_owner.as_deref(), l.counter) == (None, Some("w2"), c),
        "release keeps next_owner: {l:?}"
    );
    let l = t.take(&s, "shard", c, "w2").await?;
    ensure!(
        (l.owner.as_deref(), l.next_owner.as_deref(), l.checkpoint.clone()) == (Some("w2"), None, Some(at("42"))),
        "take clears next_owner and starts from the handoff checkpoint: {l:?}"
    );
    ensure!(must_get(&t, &s, "shard").await? == l, "get after take");
    fenced(t.checkpoint(&s, "shard", "w1", c, &at("43")).await, "checkpoint by the old owner")?;
    // A request on a lease nobody owns is allowed (it only names who wants it).
    let c = t.release(&s, "shard", "w2", l.counter).await?;
    let l = t.request(&s, "shard", c, "w3").await?;
    ensure!((l.owner.as_deref(), l.next_owner.as_deref()) == (None, Some("w3")), "request of a free lease: {l:?}");
    Ok(())
}

async fn checkpoints_never_move_backwards(t: Table, s: LeaseScope) -> Outcome {
    let (n56, o57) = (nines56(), one57());
    let o57b = format!("1{}1", "0".repeat(55));
    // (written, stored afterwards)
    let steps = [
        (at(&n56), at(&n56)),
        (at_sub(&n56, 5), at(&n56)),
        (at(&o57), at(&o57)),
        (at(&n56), at(&o57)),
        (at_sub(&o57b, 5), at_sub(&o57b, 5)),
        (at_sub(&o57b, 3), at_sub(&o57b, 5)),
        (at_sub(&o57b, 5), at_sub(&o57b, 5)),
        (at_sub(&o57b, 6), at_sub(&o57b, 6)),
        (at(&o57b), at(&o57b)),
        (at_sub(&o57b, 7), at(&o57b)),
        (at(&o57b), at(&o57b)),
        (at("1"), at(&o57b)),
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
        (at(&"9".repeat(64)), Checkpoint::ShardEnd),
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
    ];
    let mut c = taken(&t, &s, "shard", "w1").await?;
    for (i, (written, want)) in steps.into_iter().enumerate() {
        let next = t.checkpoint(&s, "shard", "w1", c, &written).await.with_context(|| format!("step {i}"))?;
        ensure!(next == c + 1, "step {i}: counter {next}, want {} (bumped even when not newer)", c + 1);
        c = next;
        let l = must_get(&t, &s, "shard").await?;
        ensure!(
            l.checkpoint.as_ref() == Some(&want),
            "step {i}: wrote {written:?}: stored {:?}, want {want:?}",
            l.checkpoint
        );
        ensure!(l.is_finished() == want.is_shard_end(), "step {i}: is_finished {}", l.is_finished());
        ensure!(l.counter == c && l.owner.as_deref() == Some("w1"), "step {i}: {l:?}");
    }
    Ok(())
}

async fn first_checkpoint_may_be_anything(t: Table, s: LeaseScope) -> Outcome {
    for (shard, cp) in [("sub", at_sub(&nines56(), 0)), ("end", Checkpoint::ShardEnd), ("zero", at("0"))] {
        let c = taken(&t, &s, shard, "w1").await?;
        t.checkpoint(&s, shard, "w1", c, &cp).await.with_context(|| shard.to_owned())?;
        let l = must_get(&t, &s, shard).await?;
        ensure!(l.checkpoint.as_ref() == Some(&cp), "{shard}: stored {:?}, want {cp:?}", l.checkpoint);
    }
    Ok(())
}

async fn delete_is_idempotent(t: Table, s: LeaseScope) -> Outcome {
    taken(&t, &s, "gone", "w1").await?;
    t.create(&s, "kept", &[]).await?;
    t.delete(&s, "gone").await?;
    ensure!(t.get(&s, "gone").await?.is_none(), "deleted lease still there");
    t.delete(&s, "gone").await.context("second delete")?;
    t.delete(&s, "never-was").await.context("delete of a lease that never existed")?;
    let listed: Vec<String> = t.list(&s).await?.into_iter().map(|l| l.shard_id).collect();
    ensure!(listed == ["kept"], "other leases are kept: {listed:?}");
    ensure!(t.create(&s, "gone", &[]).await?, "a deleted lease can be created again");
    ensure!(must_get(&t, &s, "gone").await?.counter == 0, "a re-created lease starts at 0");
    Ok(())
}

async fn scopes_are_separate(t: Table, s: LeaseScope) -> Outcome {
    let g = s.group();
    // Pairs that a naive `{group}-{stream}` or `{group}/{stream}` key would merge, and plain neighbours.
    let scopes = [
        LeaseScope::new(format!("{g}-a-b"), "c"),
        LeaseScope::new(format!("{g}-a"), "b-c"),
        LeaseScope::new(format!("{g}-x/y"), "z"),
        LeaseScope::new(format!("{g}-x"), "y/z"),
        LeaseScope::new(format!("{g}-p%2F"), "q"),
        LeaseScope::new(format!("{g}-p/"), "q"),
        LeaseScope::new(g, "stream-2"),
        LeaseScope::new(format!("{g}2"), "stream-2"),
    ];
    for (i, scope) in scopes.iter().enumerate() {
        ensure!(t.create(scope, "shard", &[format!("parent-{i}")]).await?, "create in scope {i} ({scope:?})");
    }
    t.take(&scopes[0], "shard", 0, "w1").await?;
    for (i, scope) in scopes.iter().enumerate() {
        let listed = t.list(scope).await?;
        ensure!(listed.len() == 1, "scope {i} ({scope:?}) lists {listed:?}");
        ensure!(listed[0].parents == [format!("parent-{i}")], "scope {i} sees another scope's lease: {listed:?}");
        let want_owner = if i == 0 { Some("w1") } else { None };
        ensure!(listed[0].owner.as_deref() == want_owner, "scope {i}: {listed:?}");
    }
    t.delete(&scopes[1], "shard").await?;
    ensure!(t.get(&scopes[0], "shard").await?.is_some(), "delete in one scope left the other's lease");
    ensure!(t.list(&s).await?.is_empty(), "the check's own scope is empty");
    Ok(())
}

async fn writes_to_a_missing_lease_are_fenced(t: Table, s: LeaseScope) -> Outcome {
    let shard = "missing";
    for c in [0, 1] {
        fenced(t.take(&s, shard, c, "w1").await, "take")?;
        fenced(t.request(&s, shard, c, "w1").await, "request")?;
        fenced(t.renew(&s, shard, "w1", c).await, "renew")?;
        fenced(t.checkpoint(&s, shard, "w1", c, &at("1")).await, "checkpoint")?;
        fenced(t.release(&s, shard, "w1", c).await, "release")?;
    }
    ensure!(t.get(&s, shard).await?.is_none(), "a refused write created the lease");
    let c = taken(&t, &s, "deleted", "w1").await?;
    t.delete(&s, "deleted").await?;
    fenced(t.renew(&s, "deleted", "w1", c).await, "renew of a deleted lease")?;
    fenced(t.checkpoint(&s, "deleted", "w1", c, &at("1")).await, "checkpoint of a deleted lease")?;
    ensure!(t.get(&s, "deleted").await?.is_none(), "a refused write re-created the lease");
    Ok(())
}

async fn concurrent_takes_one_winner(t: Table, s: LeaseScope) -> Outcome {
    const WORKERS: usize = 8;
    for round in 0..3 {
        let shard = format!("shard-{round}");
        t.create(&s, &shard, &[]).await?;
        let before = must_get(&t, &s, &shard).await?.counter;
        let barrier = Arc::new(tokio::sync::Barrier::new(WORKERS));
        let tasks: Vec<_> = (0..WORKERS)
            .map(|i| {
                let (t, s, shard, barrier) = (Arc::clone(&t), s.clone(), shard.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    (i, t.take(&s, &shard, before, &format!("w{i}")).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (i, result) = task.await.context("take task")?;
            match result {
                Ok(lease) => winners.push((i, lease)),
                Err(e) if e.kind() == ErrorKind::Fenced => {}
                Err(e) => return Err(fail!("round {round}: take by w{i}: want Ok or Fenced, got {:?}: {e}", e.kind())),
            }
        }
        ensure!(winners.len() == 1, "round {round}: {} takes won: {winners:?}", winners.len());
        let (i, lease) = &winners[0];
        ensure!(lease.counter == before + 1 && lease.owner == Some(format!("w{i}")), "round {round}: {lease:?}");
        ensure!(must_get(&t, &s, &shard).await? == *lease, "round {round}: the table holds the winner's write");
    }
    Ok(())
}

async fn concurrent_owner_writes_never_reuse_a_counter(t: Table, s: LeaseScope) -> Outcome {
    const TASKS: u64 = 4;
    const ROUNDS: u64 = 20;
    let start = taken(&t, &s, "shard", "w1").await?;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (t, s) = (Arc::clone(&t), s.clone());
            tokio::spawn(async move {
                // (counter returned, checkpoint written if any), and the number of refused writes.
                let mut successes: Vec<(u64, Option<u64>)> = Vec::new();
                let mut refused = 0usize;
                for round in 0..ROUNDS {
                    let counter = t.get(&s, "shard").await?.context("lease gone")?.counter;
                    let value = round * TASKS + task + 1;
                    let result = if (round + task) % 2 == 0 {
                        t.renew(&s, "shard", "w1", counter).await.map(|c| (c, None))
                    } else {
                        t.checkpoint(&s, "shard", "w1", counter, &at(&value.to_string()))
                            .await
                            .map(|c| (c, Some(value)))
                    };
                    match result {
                        Ok(success) => successes.push(success),
                        Err(e) if e.kind() == ErrorKind::Fenced => refused += 1,
                        Err(e) => return Err(fail!("task {task} round {round}: {:?}: {e}", e.kind())),
                    }
                }
                Ok::<_, Failure>((successes, refused))
            })
        })
        .collect();
    let mut counters = Vec::new();
    let mut best: Option<u64> = None;
    let mut refused = 0;
    for task in tasks {
        let (successes, r) = task.await.context("writer task")??;
        refused += r;
        for (counter, value) in successes {
            counters.push(counter);
            best = best.max(value);
        }
    }
    let distinct: HashSet<u64> = counters.iter().copied().collect();
    ensure!(distinct.len() == counters.len(), "a counter was returned twice: {counters:?}");
    let n = counters.len() as u64;
    ensure!(n > 0, "no write succeeded ({refused} refused)");
    let want: HashSet<u64> = (start + 1..=start + n).collect();
    ensure!(distinct == want, "counters returned are not {}..={}: {counters:?}", start + 1, start + n);
    let l = must_get(&t, &s, "shard").await?;
    ensure!(l.counter == start + n, "stored counter {} after {n} successful writes from {start}", l.counter);
    let want_cp = best.map(|v| at(&v.to_string()));
    ensure!(l.checkpoint == want_cp, "stored checkpoint {:?}, want the newest written {want_cp:?}", l.checkpoint);
    eprintln!("lease suite: concurrent owner writes: {n} succeeded, {refused} fenced");
    Ok(())
}
