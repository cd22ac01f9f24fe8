//! The conformance suite of [`CheckpointStore`]s: the contract of the [crate docs](crate#contract-of-a-store),
//! checked through a [`StoreBackend`] that makes tables and opens stores on them.
//!
//! [`run`] runs every case on a table of its own (made by [`StoreBackend::create_table`], dropped after the case),
//! with keys under an application name of its own. It prints one line per case to stderr (`ok`, `FAILED` or
//! `skipped` with the reason) and panics with the list of the cases that failed and why.
//!
//! # What is checked
//!
//! Every backend:
//! - `get_without_checkpoint_is_none`: `get` of a key never set is `Ok(None)`, before and after other keys are set.
//! - `set_then_get_returns_the_newest`: each newer `set` is read back by `get` of the same store, flushed or not; an
//!   older one (numerically: `9` < `10`, 56 < 57 digits; sub-sequence numbers; a whole record after its user
//!   records) is ignored; a fresh store reads the newest after a flush.
//! - `never_moves_backwards_across_flushes_and_instances`: the same order when every write comes from a store of its
//!   own (so only the storage can refuse older ones), when an older checkpoint is flushed after a newer one, and
//!   when a store flushes an older pending checkpoint after another store wrote a newer one.
//! - `sub_sequence_numbers_order`: user records of a KPL aggregate (`Checkpoint::at_sub`) in their order, each older
//!   one written again by another store and ignored.
//! - `shard_end_is_last_and_sticks`: `ShardEnd` as a first checkpoint, after positions, and never replaced by any
//!   position (the longest too), from the same store or another one.
//! - `keys_are_isolated`: keys differing only in application, stream or shard keep their own checkpoints.
//! - `flush_makes_writes_visible_to_a_fresh_instance`: after one `flush`, a fresh store reads every shard's newest
//!   checkpoint (1000 `set`s on 3 shards, 50 shards); a `flush` with nothing pending succeeds.
//! - `values_at_the_limits`: the longest sequence number and the largest sub-sequence number the backend declares
//!   ([`Capabilities::max_sequence_digits`], [`Capabilities::max_sub_sequence`]) are stored exactly; beyond them
//!   `set` refuses with [`ErrorKind::InvalidInput`] and the store keeps working.
//! - `concurrent_writers_keep_the_max`: two stores on one table setting interleaved positions and flushing at the
//!   same time, then 8 tasks on 4 stores setting increasing checkpoints on a shared shard and on shards of their own:
//!   the stored checkpoint is the newest one set, and an older one flushed late by another store is ignored.
//!
//! Backends that declare it in [`Capabilities`] (a case a backend does not declare is printed as skipped):
//! - `background_flush_writes` ([`Capabilities::background_flush`]): a `set` reaches the table without `flush`.
//! - `permanent_failure_is_reported` ([`Capabilities::breakable`]): after [`StoreBackend::break_table`], `get` of a
//!   fresh store fails with [`ErrorKind::Permanent`] (never `Ok(None)`), `flush` fails with `Permanent`, the pending
//!   checkpoint is kept, and after [`StoreBackend::repair_table`] a `flush` writes it.
//! - `background_flush_failure_is_reported_by_set` (both): when a background flush fails for good, a later `set`
//!   fails with `Permanent` and a message saying a background flush failed (as [`crate::FlushFailure`]'s does);
//!   after the repair, the store works again.
//! - `invalid_table_names_are_refused` ([`Capabilities::table_names`]): each of
//!   [`StoreBackend::invalid_table_names`] is refused by each way of opening a store by name
//!   ([`StoreBackend::open_named`]) with `InvalidInput` and a message about the table name, never a panic.
//!
//! Waits (for a background flush) end after 30 seconds; nothing else depends on timing.
//!
//! # Wiring a backend
//!
//! Implement [`StoreBackend`] in the backend's test and call [`run`] inside a Tokio runtime (the concurrency case
//! spawns tasks; a multi-thread runtime makes the races real). For an in-memory store, a "table" is the store itself
//! and a "fresh instance" a clone of it:
//!
//! ```
//! use kc_checkpoint::test_util::store_suite::{self, Capabilities, StoreBackend};
//! use kc_checkpoint::{Error, MemoryStore};
//!
//! struct Memory;
//!
//! #[async_trait::async_trait]
//! impl StoreBackend for Memory {
//!     type Table = MemoryStore;
//!     type Store = MemoryStore;
//!
//!     fn capabilities(&self) -> Capabilities {
//!         // Nothing to break, no background flush, no table names: those cases are skipped (and say so).
//!         Capabilities::new()
//!     }
//!
//!     async fn create_table(&self) -> Result<MemoryStore, Error> {
//!         Ok(MemoryStore::new())
//!     }
//!
//!     async fn open(&self, table: &MemoryStore) -> Result<MemoryStore, Error> {
//!         Ok(table.clone()) // clones share their checkpoints, as stores on one table do
//!     }
//!
//!     async fn drop_table(&self, _table: MemoryStore) -> Result<(), Error> {
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! async fn main() {
//!     store_suite::run(Memory, "memory").await;
//! }
//! ```
//!
//! A database backend's `Table` is the table's name (plus a pool or client), `create_table` creates a table under a
//! unique name, `open` builds a store on it with a short flush interval (100 ms), `close` shuts the store down,
//! `break_table` drops the table and `repair_table` creates it again.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::test_util::check::{ensure, fail, Context as _, Failure, Outcome};
use crate::{Checkpoint, CheckpointStore, Error, ErrorKind, SequenceNumber, ShardKey};

/// How long the suite waits for something a background flush does.
const WAIT: Duration = Duration::from_secs(30);

/// A 56-digit sequence number, as real ones are.
const BIG: &str = "49590338271490256608559692538361571095921575989136588898";
/// [`BIG`] + 1.
const BIG_PLUS_ONE: &str = "49590338271490256608559692538361571095921575989136588899";
/// The smallest 57-digit number: after [`BIG`] as a number, before it as text.
const DIGITS_57: &str = "100000000000000000000000000000000000000000000000000000000";

/// Which optional cases of the suite apply to a backend, and the limits of what it can store.
///
/// [`Capabilities::new`] declares no optional case and the limits of [`Checkpoint`] itself; a backend declares what
/// it supports with the setters. A case that does not apply is printed as skipped, never passed silently.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`StoreBackend::break_table`] and [`StoreBackend::repair_table`] work: the failure cases run.
    pub breakable: bool,
    /// Stores flush in the background (without `flush`), at a short interval: the background cases run.
    pub background_flush: bool,
    /// Stores are opened by table name, which is validated: the table-name case runs.
    pub table_names: bool,
    /// The most digits of a sequence number the backend stores ([`SequenceNumber::MAX_DIGITS`] unless less).
    pub max_sequence_digits: usize,
    /// The largest sub-sequence number the backend stores (`u64::MAX` unless less).
    pub max_sub_sequence: u64,
}

impl Capabilities {
    /// No optional case, and the limits of [`Checkpoint`]: 129 digits, any `u64` sub-sequence number.
    pub fn new() -> Self {
        Self {
            breakable: false,
            background_flush: false,
            table_names: false,
            max_sequence_digits: SequenceNumber::MAX_DIGITS,
            max_sub_sequence: u64::MAX,
        }
    }

    /// Sets [`breakable`](Self::breakable).
    pub fn breakable(mut self, yes: bool) -> Self {
        self.breakable = yes;
        self
    }

    /// Sets [`background_flush`](Self::background_flush).
    pub fn background_flush(mut self, yes: bool) -> Self {
        self.background_flush = yes;
        self
    }

    /// Sets [`table_names`](Self::table_names).
    pub fn table_names(mut self, yes: bool) -> Self {
        self.table_names = yes;
        self
    }

    /// Sets [`max_sequence_digits`](Self::max_sequence_digits) (at most [`SequenceNumber::MAX_DIGITS`]).
    pub fn max_sequence_digits(mut self, digits: usize) -> Self {
        self.max_sequence_digits = digits;
        self
    }

    /// Sets [`max_sub_sequence`](Self::max_sub_sequence).
    pub fn max_sub_sequence(mut self, max: u64) -> Self {
        self.max_sub_sequence = max;
        self
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::new()
    }
}

/// A checkpoint store under test, as the suite drives it: it makes tables and opens stores on them.
///
/// Errors of these methods fail the case that called them (with the error in the message).
#[async_trait]
pub trait StoreBackend: Send + Sync + 'static {
    /// Where checkpoints live: a table (its name, and a pool or a client to reach it), or for an in-memory store,
    /// the shared map.
    type Table: Send + Sync + 'static;
    /// The store.
    type Store: CheckpointStore + 'static;

    /// What the backend supports: see [`Capabilities`].
    fn capabilities(&self) -> Capabilities;

    /// A new, empty table for one case.
    async fn create_table(&self) -> Result<Self::Table, Error>;

    /// A new store on `table` that shares nothing in memory with the stores opened before, as one in another
    /// process would: only what they flushed is visible to it. With [`Capabilities::background_flush`], it flushes
    /// in the background at a short interval (100 ms is good: the suite waits for it).
    async fn open(&self, table: &Self::Table) -> Result<Self::Store, Error>;

    /// Ends `store` before the suite drops it: flushes what is pending and stops any background work. Called once
    /// for each store `open` returned. The default calls [`CheckpointStore::flush`].
    async fn close(&self, store: &Self::Store) -> Result<(), Error> {
        store.flush().await
    }

    /// Drops `table` after its case (its stores are closed).
    async fn drop_table(&self, table: Self::Table) -> Result<(), Error>;

    /// Breaks `table` so that writes to it fail for good ([`ErrorKind::Permanent`]), for example by dropping it.
    /// Needed with [`Capabilities::breakable`]; the default fails.
    async fn break_table(&self, table: &Self::Table) -> Result<(), Error> {
        let _ = table;
        Err(Error::new(ErrorKind::Permanent, "StoreBackend::break_table is not implemented"))
    }

    /// Undoes [`break_table`](Self::break_table) (for example creates the dropped table again, empty). Needed with
    /// [`Capabilities::breakable`]; the default fails.
    async fn repair_table(&self, table: &Self::Table) -> Result<(), Error> {
        let _ = table;
        Err(Error::new(ErrorKind::Permanent, "StoreBackend::repair_table is not implemented"))
    }

    /// Table names the backend must refuse. Needed (not empty) with [`Capabilities::table_names`].
    fn invalid_table_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Opens a store on the table named `name` in every way the backend offers (constructors, `connect`,
    /// builders), and returns each way's name and result. Needed (not empty) with [`Capabilities::table_names`].
    async fn open_named(&self, name: &str) -> Vec<(String, Result<(), Error>)> {
        let _ = name;
        Vec::new()
    }
}

/// One case, its table and its stores.
struct Harness<B: StoreBackend> {
    backend: Arc<B>,
    table: B::Table,
    caps: Capabilities,
    /// The application name of this case's keys.
    app: String,
    /// Every store `open` returned, closed after the case.
    opened: Mutex<Vec<Arc<B::Store>>>,
}

impl<B: StoreBackend> Harness<B> {
    fn key(&self, shard: &str) -> ShardKey {
        ShardKey::new(self.app.as_str(), "stream", shard)
    }

    /// A new store on the case's table, closed after the case.
    async fn open(&self) -> Result<Arc<B::Store>, Failure> {
        let store = Arc::new(self.backend.open(&self.table).await.context("opening a store")?);
        self.opened.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&store));
        Ok(store)
    }

    /// What a fresh store reads for `key` (so nothing pending in memory can answer). A failed read is an error.
    async fn stored(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Failure> {
        let store = self.backend.open(&self.table).await.context("opening a fresh store")?;
        let read = store.get(key).await;
        self.backend.close(&store).await.context("closing a fresh store")?;
        read.with_context(|| format!("get of {key:?} by a fresh store"))
    }

    /// Writes `checkpoint` through a store of its own (a separate process), flushed and closed.
    async fn write_alone(&self, key: &ShardKey, checkpoint: &Checkpoint) -> Outcome {
        let store = self.backend.open(&self.table).await.context("opening a store")?;
        let set = store.set(key, checkpoint.clone()).await;
        let flushed = store.flush().await;
        self.backend.close(&store).await.context("closing a store")?;
        set.with_context(|| format!("set {checkpoint:?}"))?;
        flushed.with_context(|| format!("flush of {checkpoint:?}"))
    }

    /// Closes every store the case opened; the first failure, if any.
    async fn close_all(&self) -> Outcome {
        let stores = std::mem::take(&mut *self.opened.lock().unwrap_or_else(PoisonError::into_inner));
        let mut first = Ok(());
        for store in stores {
            if let Err(e) = self.backend.close(&store).await {
                if first.is_ok() {
                    first = Err(Failure::from(e));
                }
            }
        }
        first
    }
}

/// One case of the suite.
type Case<B> = for<'a> fn(&'a Harness<B>) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// Whether a case applies to a backend: `Err` says why not.
type Applies = fn(&Capabilities) -> Result<(), &'static str>;

fn always(_: &Capabilities) -> Result<(), &'static str> {
    Ok(())
}

fn if_background(caps: &Capabilities) -> Result<(), &'static str> {
    if caps.background_flush {
        Ok(())
    } else {
        Err("the backend declares no background flush")
    }
}

fn if_breakable(caps: &Capabilities) -> Result<(), &'static str> {
    if caps.breakable {
        Ok(())
    } else {
        Err("the backend declares no way to break its table")
    }
}

fn if_breakable_and_background(caps: &Capabilities) -> Result<(), &'static str> {
    if_breakable(caps).and_then(|()| if_background(caps))
}

fn if_table_names(caps: &Capabilities) -> Result<(), &'static str> {
    if caps.table_names {
        Ok(())
    } else {
        Err("the backend declares no table names")
    }
}

/// Every case, by name.
fn cases<B: StoreBackend>() -> Vec<(&'static str, Applies, Case<B>)> {
    vec![
        ("get_without_checkpoint_is_none", always, |h| Box::pin(get_without_checkpoint_is_none(h))),
        ("set_then_get_returns_the_newest", always, |h| Box::pin(set_then_get_returns_the_newest(h))),
        ("never_moves_backwards_across_flushes_and_instances", always, |h| {
            Box::pin(never_moves_backwards_across_flushes_and_instances(h))
        }),
        ("sub_sequence_numbers_order", always, |h| Box::pin(sub_sequence_numbers_order(h))),
        ("shard_end_is_last_and_sticks", always, |h| Box::pin(shard_end_is_last_and_sticks(h))),
        ("keys_are_isolated", always, |h| Box::pin(keys_are_isolated(h))),
        ("flush_makes_writes_visible_to_a_fresh_instance", always, |h| {
            Box::pin(flush_makes_writes_visible_to_a_fresh_instance(h))
        }),
        ("values_at_the_limits", always, |h| Box::pin(values_at_the_limits(h))),
        ("concurrent_writers_keep_the_max", always, |h| Box::pin(concurrent_writers_keep_the_max(h))),
        ("background_flush_writes", if_background, |h| Box::pin(background_flush_writes(h))),
        ("permanent_failure_is_reported", if_breakable, |h| Box::pin(permanent_failure_is_reported(h))),
        ("background_flush_failure_is_reported_by_set", if_breakable_and_background, |h| {
            Box::pin(background_flush_failure_is_reported_by_set(h))
        }),
        ("invalid_table_names_are_refused", if_table_names, |h| Box::pin(invalid_table_names_are_refused(h))),
    ]
}

/// Runs every case that applies to `backend` (see the [module docs](self)), each on a table of its own, and panics
/// with the list of failures, if any. `name` names the backend in the messages and in the keys' application names.
/// Prints one line per case to stderr.
///
/// # Panics
///
/// When a case fails: the message lists every failed case and why. A panic inside the backend's methods is not
/// caught (except in `open_named`, where it fails the case).
pub async fn run<B: StoreBackend>(backend: B, name: &str) {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let backend = Arc::new(backend);
    let caps = backend.capabilities();
    let mut failures = Vec::new();
    for (case, applies, check) in cases::<B>() {
        if let Err(why) = applies(&caps) {
            eprintln!("store suite {name}: {case}: skipped ({why})");
            continue;
        }
        let app = format!("{name}-{}-{}", std::process::id(), RUN.fetch_add(1, Ordering::SeqCst));
        let result = match backend.create_table().await {
            Err(e) => Err(Failure::from(e)),
            Ok(table) => {
                let harness = Harness {
                    backend: Arc::clone(&backend),
                    table,
                    caps: caps.clone(),
                    app: app.clone(),
                    opened: Mutex::new(Vec::new()),
                };
                let result = check(&harness).await;
                let closed = harness.close_all().await.map_err(|e| fail!("closing the case's stores: {e}"));
                let dropped = backend.drop_table(harness.table).await.map_err(|e| fail!("dropping the table: {e}"));
                result.and(closed).and(dropped)
            }
        };
        match result {
            Ok(()) => eprintln!("store suite {name}: {case}: ok"),
            Err(e) => {
                eprintln!("store suite {name}: {case}: FAILED: {e}");
                failures.push(format!("{case} (app {app}): {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} checkpoint-store cases failed on {name}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn seq(s: &str) -> SequenceNumber {
    SequenceNumber::parse(s).expect("the suite's sequence numbers are valid")
}

fn at(s: &str) -> Checkpoint {
    Checkpoint::at(seq(s))
}

fn at_sub(s: &str, sub: u64) -> Checkpoint {
    Checkpoint::at_sub(seq(s), sub)
}

/// The largest sequence number of `digits` digits.
fn nines(digits: usize) -> String {
    "9".repeat(digits)
}

/// Checks that `result` is an error of `kind`; returns it.
fn want_kind<T: fmt::Debug>(result: Result<T, Error>, kind: ErrorKind, what: &str) -> Result<Error, Failure> {
    match result {
        Err(e) if e.kind() == kind => Ok(e),
        Err(e) => Err(fail!("{what}: want a {kind:?} error, got {}", Failure::from(e))),
        Ok(v) => Err(fail!("{what}: want a {kind:?} error, got Ok({v:?})")),
    }
}

async fn get_without_checkpoint_is_none<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let store = h.open().await?;
    let (k, other) = (h.key("shardId-0"), h.key("shardId-1"));
    ensure!(store.get(&k).await.context("get")?.is_none(), "get of a key never set: want Ok(None)");
    store.set(&other, at("5")).await.context("set")?;
    ensure!(store.get(&k).await.context("get")?.is_none(), "get of a key never set, with another pending");
    store.flush().await.context("flush")?;
    ensure!(store.get(&k).await.context("get")?.is_none(), "get of a key never set, with another flushed");
    ensure!(h.stored(&k).await?.is_none(), "get of a key never set, by a fresh store");
    Ok(())
}

async fn set_then_get_returns_the_newest<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let store = h.open().await?;
    let k = h.key("shardId-0");
    let newer = [
        at("9"),
        at("10"), // "10" < "9" as text
        at(BIG),
        at_sub(BIG_PLUS_ONE, 5),
        at_sub(BIG_PLUS_ONE, 10), // 10 > 5 as numbers
        at(BIG_PLUS_ONE),         // a whole record is after its user records
        at(DIGITS_57),            // 57 digits > 56 although "1..." < "4..." as text
    ];
    for (i, cp) in newer.iter().enumerate() {
        store.set(&k, cp.clone()).await.with_context(|| format!("set {cp:?}"))?;
        let got = store.get(&k).await.context("get")?;
        ensure!(got.as_ref() == Some(cp), "after set {cp:?}: get returned {got:?}");
        if i % 2 == 1 {
            store.flush().await.context("flush")?;
            let got = store.get(&k).await.context("get after a flush")?;
            ensure!(got.as_ref() == Some(cp), "after set {cp:?} and a flush: get returned {got:?}");
        }
    }
    let newest = at(DIGITS_57);
    let older = [at("99999999999999999999999999999999999999999999999999999"), at(BIG_PLUS_ONE), at("10"), at("0")];
    for cp in older {
        store.set(&k, cp.clone()).await.with_context(|| format!("set of the older {cp:?}"))?;
        let got = store.get(&k).await.context("get")?;
        ensure!(got.as_ref() == Some(&newest), "after the older set {cp:?}: get returned {got:?}, want {newest:?}");
    }
    store.flush().await.context("flush")?;
    let got = h.stored(&k).await?;
    ensure!(got.as_ref() == Some(&newest), "a fresh store read {got:?} after the flush, want {newest:?}");
    Ok(())
}

async fn never_moves_backwards_across_flushes_and_instances<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let k = h.key("shardId-0");
    let longest = nines(h.caps.max_sequence_digits);
    // (written by a store of its own, stored afterwards)
    let steps = [
        (at("9"), at("9")),
        (at("10"), at("10")),
        (at("9"), at("10")),
        (at(BIG), at(BIG)),
        (at("99999999999999999999999999999999999999999999999999999"), at(BIG)),
        (at_sub(BIG_PLUS_ONE, 5), at_sub(BIG_PLUS_ONE, 5)),
        (at_sub(BIG_PLUS_ONE, 4), at_sub(BIG_PLUS_ONE, 5)),
        (at_sub(BIG_PLUS_ONE, 10), at_sub(BIG_PLUS_ONE, 10)),
        (at(BIG_PLUS_ONE), at(BIG_PLUS_ONE)),
        (at_sub(BIG_PLUS_ONE, 99), at(BIG_PLUS_ONE)),
        (at(BIG), at(BIG_PLUS_ONE)),
        (at(DIGITS_57), at(DIGITS_57)),
        (at(BIG_PLUS_ONE), at(DIGITS_57)),
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
        (at(&longest), Checkpoint::ShardEnd),
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
    ];
    for (i, (written, want)) in steps.iter().enumerate() {
        h.write_alone(&k, written).await.with_context(|| format!("step {i}"))?;
        let got = h.stored(&k).await?;
        ensure!(got.as_ref() == Some(want), "step {i}: after writing {written:?} alone: stored {got:?}, want {want:?}");
    }

    // One store: an older checkpoint set and flushed after a newer one was flushed.
    let k = h.key("shardId-1");
    let a = h.open().await?;
    a.set(&k, at(BIG_PLUS_ONE)).await.context("set")?;
    a.flush().await.context("flush")?;
    a.set(&k, at(BIG)).await.context("set of an older checkpoint")?;
    a.flush().await.context("flush")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at(BIG_PLUS_ONE)), "an older checkpoint flushed after a newer one: stored {got:?}");

    // Two stores: `b` holds an older checkpoint pending while `c` writes a newer one; `b`'s flush comes late.
    let k = h.key("shardId-2");
    let (b, c) = (h.open().await?, h.open().await?);
    b.set(&k, at("1000")).await.context("set by b")?;
    c.set(&k, at("2000")).await.context("set by c")?;
    c.flush().await.context("flush by c")?;
    b.flush().await.context("late flush by b")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at("2000")), "a store flushed an older checkpoint after another wrote a newer one: {got:?}");
    let got = b.get(&k).await.context("get by b")?;
    ensure!(got == Some(at("2000")), "the store that flushed the older checkpoint reads {got:?}, want the newer");
    Ok(())
}

async fn sub_sequence_numbers_order<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let k = h.key("shardId-0");
    let ordered = [
        at_sub(BIG, 0),
        at_sub(BIG, 9),
        at_sub(BIG, 10),
        at(BIG),
        at_sub(BIG_PLUS_ONE, 0),
        at(BIG_PLUS_ONE),
        Checkpoint::ShardEnd,
    ];
    for (i, cp) in ordered.iter().enumerate() {
        h.write_alone(&k, cp).await?;
        let got = h.stored(&k).await?;
        ensure!(got.as_ref() == Some(cp), "moving forward to {cp:?}: stored {got:?}");
        for older in &ordered[..i] {
            h.write_alone(&k, older).await?;
            let got = h.stored(&k).await?;
            ensure!(got.as_ref() == Some(cp), "{older:?} written after {cp:?}: stored {got:?}");
        }
    }
    Ok(())
}

async fn shard_end_is_last_and_sticks<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let longest = nines(h.caps.max_sequence_digits);
    let later = [at(&longest), at_sub(&longest, h.caps.max_sub_sequence), at("0"), at(BIG)];

    // As a first checkpoint, in one store.
    let k = h.key("shardId-0");
    let store = h.open().await?;
    store.set(&k, Checkpoint::ShardEnd).await.context("set ShardEnd")?;
    for cp in &later {
        store.set(&k, cp.clone()).await.with_context(|| format!("set {cp:?} after ShardEnd"))?;
        let got = store.get(&k).await.context("get")?;
        ensure!(got == Some(Checkpoint::ShardEnd), "{cp:?} set after ShardEnd: get returned {got:?}");
    }
    store.flush().await.context("flush")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(Checkpoint::ShardEnd), "ShardEnd as the first checkpoint: stored {got:?}");

    // After positions, and against positions written later by other stores.
    let k = h.key("shardId-1");
    h.write_alone(&k, &at(BIG)).await?;
    h.write_alone(&k, &Checkpoint::ShardEnd).await?;
    for cp in &later {
        h.write_alone(&k, cp).await?;
        let got = h.stored(&k).await?;
        ensure!(got == Some(Checkpoint::ShardEnd), "{cp:?} written alone after ShardEnd: stored {got:?}");
    }
    h.write_alone(&k, &Checkpoint::ShardEnd).await.context("ShardEnd again")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(Checkpoint::ShardEnd), "ShardEnd written twice: stored {got:?}");
    Ok(())
}

async fn keys_are_isolated<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let app = h.app.as_str();
    let other_app = format!("{app}x");
    let keys = [
        ShardKey::new(app, "stream", "shardId-0"),
        ShardKey::new(app, "stream", "shardId-1"),
        ShardKey::new(app, "stream2", "shardId-0"),
        ShardKey::new(other_app.as_str(), "stream", "shardId-0"),
    ];
    let store = h.open().await?;
    for (i, k) in keys.iter().enumerate() {
        store.set(k, at(&(100 + i).to_string())).await.context("set")?;
    }
    for (i, k) in keys.iter().enumerate() {
        let got = store.get(k).await.context("get")?;
        ensure!(got == Some(at(&(100 + i).to_string())), "{k:?} pending: get returned {got:?}");
    }
    store.flush().await.context("flush")?;
    for (i, k) in keys.iter().enumerate() {
        let got = h.stored(k).await?;
        ensure!(got == Some(at(&(100 + i).to_string())), "{k:?}: a fresh store read {got:?}");
    }
    let never = [
        ShardKey::new(app, "stream", "shardId-2"),
        ShardKey::new(app, "stream3", "shardId-1"),
        ShardKey::new(other_app.as_str(), "stream", "shardId-1"),
        ShardKey::new(format!("{app}y"), "stream", "shardId-0"),
    ];
    for k in &never {
        let got = h.stored(k).await?;
        ensure!(got.is_none(), "{k:?} was never set, yet a fresh store read {got:?}");
    }
    Ok(())
}

async fn flush_makes_writes_visible_to_a_fresh_instance<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let store = h.open().await?;
    let three = [h.key("shardId-a"), h.key("shardId-b"), h.key("shardId-c")];
    for i in 0..1000u64 {
        store.set(&three[(i % 3) as usize], at(&(1_000_000 + i).to_string())).await.context("set")?;
    }
    let wide: Vec<ShardKey> = (0..50).map(|i| h.key(&format!("shardId-{i:012}"))).collect();
    for (i, k) in (0u64..).zip(&wide) {
        store.set(k, at_sub(BIG, i)).await.context("set")?;
    }
    store.flush().await.context("flush")?;
    for (k, want) in three.iter().zip(["1000999", "1000997", "1000998"]) {
        let got = h.stored(k).await?;
        ensure!(got == Some(at(want)), "{k:?}: a fresh store read {got:?}, want the last one set ({want})");
    }
    for (i, k) in (0u64..).zip(&wide) {
        let got = h.stored(k).await?;
        ensure!(got == Some(at_sub(BIG, i)), "{k:?}: a fresh store read {got:?}");
    }
    store.flush().await.context("a flush with nothing pending")?;
    Ok(())
}

async fn values_at_the_limits<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let (digits, max_sub) = (h.caps.max_sequence_digits, h.caps.max_sub_sequence);
    ensure!(
        (1..=SequenceNumber::MAX_DIGITS).contains(&digits),
        "Capabilities::max_sequence_digits is {digits}: want 1 to {}",
        SequenceNumber::MAX_DIGITS
    );
    let store = h.open().await?;
    let k = h.key("shardId-0");
    let longest = nines(digits);
    if digits < SequenceNumber::MAX_DIGITS {
        let refused = store.set(&k, at(&format!("1{}", "0".repeat(digits)))).await;
        let err = want_kind(refused, ErrorKind::InvalidInput, &format!("set of {} digits", digits + 1))?;
        ensure!(!err.to_string().is_empty(), "the error of a too long sequence number says nothing");
    }
    if max_sub < u64::MAX {
        let refused = store.set(&k, at_sub("1", max_sub + 1)).await;
        want_kind(refused, ErrorKind::InvalidInput, &format!("set of sub-sequence number {}", max_sub + 1))?;
    }
    let largest = at_sub(&longest, max_sub);
    store.set(&k, largest.clone()).await.with_context(|| format!("set of {largest:?}"))?;
    store.flush().await.context("flush")?;
    let got = h.stored(&k).await?;
    ensure!(got.as_ref() == Some(&largest), "{digits} digits and sub-sequence {max_sub}: stored {got:?}");
    store.set(&k, at(&longest)).await.context("set")?;
    store.flush().await.context("flush")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at(&longest)), "{digits} digits: stored {got:?}");
    Ok(())
}

async fn concurrent_writers_keep_the_max<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    // Two stores: interleaved, increasing positions flushed at the same time; every other round b is a step behind.
    let (a, b) = (h.open().await?, h.open().await?);
    let keys = [h.key("shardId-0"), h.key("shardId-1"), h.key("shardId-2")];
    // 56 digits: a 32-digit base and a 24-digit counter.
    let position = |i: u64| at(&format!("49590338271490256608559692538361{i:024}"));
    let mut max = 0;
    for i in 0..40u64 {
        let (pa, pb) = if i % 2 == 0 { (2 * i, 2 * i + 1) } else { (2 * i + 1, 2 * i - 2) };
        max = max.max(pa).max(pb);
        for k in &keys {
            a.set(k, position(pa)).await.context("set by a")?;
            b.set(k, position(pb)).await.context("set by b")?;
        }
        let (ra, rb) = tokio::join!(a.flush(), b.flush());
        ra.context("flush by a")?;
        rb.context("flush by b")?;
        for k in &keys {
            let got = h.stored(k).await?;
            ensure!(got == Some(position(max)), "round {i}: {k:?} stored {got:?}, want {:?}", position(max));
        }
    }
    h.write_alone(&keys[0], &position(3)).await.context("a late, older write")?;
    let got = h.stored(&keys[0]).await?;
    ensure!(got == Some(position(max)), "an older write arriving late replaced the newest: {got:?}");

    // Many tasks on a few stores: a shard they all write, and one of their own each.
    const TASKS: u64 = 8;
    const STORES: u64 = 4;
    const STEPS: u64 = 40;
    let mut stores = Vec::new();
    for _ in 0..STORES {
        stores.push(h.open().await?);
    }
    let shared = h.key("shared");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = Arc::clone(&stores[(t % STORES) as usize]);
            let (shared, own) = (shared.clone(), h.key(&format!("own-{t}")));
            tokio::spawn(async move {
                for i in 0..STEPS {
                    // From 95 on: crosses 99 -> 100, where text order would go wrong.
                    let cp = at(&(95 + i * TASKS + t).to_string());
                    store.set(&shared, cp.clone()).await.context("set of the shared shard")?;
                    store.set(&own, cp).await.context("set of the task's shard")?;
                    if i % 5 == 4 {
                        store.flush().await.context("flush")?;
                    }
                }
                Ok::<_, Failure>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("writer task")??;
    }
    for store in &stores {
        store.flush().await.context("flush")?;
    }
    let last = |t: u64| at(&(95 + (STEPS - 1) * TASKS + t).to_string());
    let got = h.stored(&shared).await?;
    ensure!(got == Some(last(TASKS - 1)), "the shared shard: stored {got:?}, want {:?}", last(TASKS - 1));
    for t in 0..TASKS {
        let got = h.stored(&h.key(&format!("own-{t}"))).await?;
        ensure!(got == Some(last(t)), "task {t}'s shard: stored {got:?}, want {:?}", last(t));
    }
    Ok(())
}

/// Polls `done` (a fresh read, say) until it returns true, for at most [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut done: F) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, Failure>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done().await? {
        ensure!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn background_flush_writes<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let store = h.open().await?;
    let k = h.key("shardId-0");
    store.set(&k, at("42")).await.context("set")?;
    wait_until("the background flush writing a checkpoint", || async { Ok(h.stored(&k).await?.is_some()) }).await?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at("42")), "the background flush wrote {got:?}");
    Ok(())
}

async fn permanent_failure_is_reported<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let store = h.open().await?;
    let k = h.key("shardId-0");
    store.set(&k, at("1")).await.context("set")?;
    store.flush().await.context("flush before the table breaks")?;
    h.backend.break_table(&h.table).await.context("break_table")?;

    let fresh = h.backend.open(&h.table).await.context("opening a store on the broken table")?;
    let read = fresh.get(&k).await;
    h.backend.close(&fresh).await.context("closing a store on the broken table (nothing pending)")?;
    want_kind(read, ErrorKind::Permanent, "get from a broken table (an error, never Ok(None))")?;

    match store.set(&k, at("2")).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::Permanent => {} // a store that writes at once
        Err(e) => return Err(fail!("set on a broken table: want Ok or Permanent, got {}", Failure::from(e))),
    }
    want_kind(store.flush().await, ErrorKind::Permanent, "flush to a broken table")?;
    want_kind(store.flush().await, ErrorKind::Permanent, "a second flush to a broken table")?;

    h.backend.repair_table(&h.table).await.context("repair_table")?;
    store.flush().await.context("flush after the repair")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at("2")), "the checkpoint pending while the table was broken: stored {got:?}, want it kept");
    store.set(&k, at("3")).await.context("set after the repair")?;
    store.flush().await.context("flush after the repair")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at("3")), "after the repair: stored {got:?}");
    Ok(())
}

async fn background_flush_failure_is_reported_by_set<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let store = h.open().await?;
    let k = h.key("shardId-0");
    store.set(&k, at("1")).await.context("set")?;
    // Written now, so no background flush is under way when the table breaks.
    store.flush().await.context("flush")?;
    h.backend.break_table(&h.table).await.context("break_table")?;
    store.set(&k, at("2")).await.context("set on a broken table, before any flush failed")?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let err = loop {
        match store.set(&k, at("3")).await {
            Err(e) => break e,
            Ok(()) => {
                ensure!(tokio::time::Instant::now() < deadline, "no set reported the failed background flush");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    ensure!(err.kind() == ErrorKind::Permanent, "set after a failed background flush: {}", Failure::from(err));
    ensure!(err.to_string().contains("background flush"), "the error does not say a background flush failed: {err}");

    h.backend.repair_table(&h.table).await.context("repair_table")?;
    store.flush().await.context("flush after the repair")?;
    store.set(&k, at("4")).await.context("set after the repair")?;
    store.flush().await.context("flush")?;
    let got = h.stored(&k).await?;
    ensure!(got == Some(at("4")), "after the repair: stored {got:?}");
    Ok(())
}

async fn invalid_table_names_are_refused<B: StoreBackend>(h: &Harness<B>) -> Outcome {
    let names = h.backend.invalid_table_names();
    ensure!(!names.is_empty(), "Capabilities::table_names is set, but invalid_table_names is empty");
    for name in names {
        let backend = Arc::clone(&h.backend);
        let task = tokio::spawn({
            let name = name.clone();
            async move { backend.open_named(&name).await }
        });
        let ways = match task.await {
            Ok(ways) => ways,
            Err(e) if e.is_panic() => return Err(fail!("opening a store on table {name:?} panicked")),
            Err(e) => return Err(fail!("opening a store on table {name:?}: {e}")),
        };
        ensure!(!ways.is_empty(), "open_named({name:?}) tried no way of opening a store");
        for (way, result) in ways {
            let err = want_kind(result, ErrorKind::InvalidInput, &format!("{way} with table {name:?}"))?;
            let message = err.to_string();
            ensure!(
                message.to_lowercase().contains("table"),
                "{way} with table {name:?}: the message does not say the table name is wrong: {message}"
            );
        }
    }
    Ok(())
}
