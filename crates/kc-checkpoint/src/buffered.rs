//! [`BufferedStore`]: the engine of the persistent checkpoint stores, over a small [`Backend`].
//!
//! Every persistent store buffers the same way: [`set`](CheckpointStore::set) keeps the newest checkpoint of each
//! shard in a pending map, a background task flushes the map every flush interval, a flush retries what failed
//! transiently a bounded number of times, removes a pending checkpoint only after the write that wrote it committed
//! (and only if no newer one was set meanwhile), and remembers a failure that retrying cannot fix
//! ([`FlushFailure`]) for the next `set` to return. [`BufferedStore`] is that engine, once; a
//! backend (PostgreSQL, MySQL, DynamoDB, ...) is only its reads and writes and the mapping of its errors to
//! [`ErrorKind`]s.
//!
//! A backend writes a batch of checkpoints ([`Backend::write`]) and reads one ([`Backend::read`]). The
//! [`BufferedStoreBuilder`] says how the pending map is cut into writes: one write of everything (a SQL upsert of
//! many rows, the default) or writes of at most [`max_items_per_write`](BufferedStoreBuilder::max_items_per_write)
//! checkpoints, [`max_writes_in_flight`](BufferedStoreBuilder::max_writes_in_flight) at a time (one conditional
//! `PutItem` per shard, 16 in flight). A write's result covers all of its checkpoints: a backend that can only tell
//! success per checkpoint asks for writes of one.
//!
//! A backend must keep checkpoints monotonic itself, in the write (a conditional upsert or put): two processes may
//! flush the same shard, and a late flush of an older checkpoint must not move a stored one backwards. A write that
//! finds a newer checkpoint stored succeeded.
//!
//! A toy backend, in memory:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use std::time::Duration;
//!
//! use kc_checkpoint::buffered::{Backend, BufferedStore};
//! use kc_checkpoint::{Checkpoint, CheckpointStore, Error, SequenceNumber, ShardKey};
//!
//! #[derive(Debug, Default)]
//! struct Toy(Mutex<HashMap<ShardKey, Checkpoint>>);
//!
//! #[async_trait::async_trait]
//! impl Backend for Toy {
//!     fn name(&self) -> &str {
//!         "toy map"
//!     }
//!
//!     async fn read(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
//!         Ok(self.0.lock().expect("not poisoned").get(key).cloned())
//!     }
//!
//!     async fn write(&self, batch: &[(ShardKey, Checkpoint)]) -> Result<(), Error> {
//!         let mut map = self.0.lock().expect("not poisoned");
//!         for (key, checkpoint) in batch {
//!             // Monotonic in the "database": keep a stored checkpoint that is at or after this one.
//!             let stored = map.entry(key.clone()).or_insert_with(|| checkpoint.clone());
//!             if *checkpoint > *stored {
//!                 *stored = checkpoint.clone();
//!             }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let store = BufferedStore::builder(Toy::default()).flush_interval(Duration::from_secs(1)).build()?;
//! let key = ShardKey::new("my-app", "my-stream", "shardId-000000000000");
//! store.set(&key, Checkpoint::at(SequenceNumber::parse("42")?)).await?;
//! assert_eq!(store.backend().read(&key).await?, None, "buffered");
//! store.flush().await?;
//! assert_eq!(store.backend().read(&key).await?, Some(Checkpoint::at(SequenceNumber::parse("42")?)));
//! store.shutdown().await?; // flushes and stops the background task
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::{Checkpoint, CheckpointStore, Error, ErrorKind, FlushFailure, ShardKey};

/// Default of [`BufferedStoreBuilder::flush_interval`]: 5 seconds.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Default of [`BufferedStoreBuilder::retry`]: 5 attempts, 100 ms before the second, doubled before each later one.
pub const DEFAULT_RETRY: Retry = Retry::doubling(5, Duration::from_millis(100));

/// The storage side of a [`BufferedStore`]: writes and reads checkpoints, and says which failures are transient.
///
/// Errors must carry the right [`ErrorKind`]: [`ErrorKind::Transient`] errors are retried (up to the store's
/// [`Retry`]) and leave the checkpoints pending; any other kind is not retried: the checkpoints stay pending too, the
/// flush returns the error and, until a flush succeeds, every `set` does.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Where the checkpoints go, for messages and logs (`table kinesis_consumer`).
    fn name(&self) -> &str;

    /// Checks a checkpoint before [`set`](CheckpointStore::set) buffers it, for what the backend cannot store (a
    /// number too large for a column): an [`ErrorKind::InvalidInput`] error refuses it. Accepts everything by default.
    fn check(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
        let _ = checkpoint;
        Ok(())
    }

    /// The stored checkpoint of `key`, `Ok(None)` if there is none. Not retried by the engine (see
    /// [`Retry::run`] for a backend that wants to).
    async fn read(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error>;

    /// Writes every checkpoint of `batch` (distinct keys) unless the stored one is at or after it. `Ok` means all of
    /// them committed; after an `Err`, all of them stay pending (a backend that can tell success per checkpoint is
    /// given batches of one: [`BufferedStoreBuilder::max_items_per_write`]).
    async fn write(&self, batch: &[(ShardKey, Checkpoint)]) -> Result<(), Error>;
}

/// How often, and after which pauses, a failed operation is tried again: only [`ErrorKind::Transient`] failures are.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    max_attempts: u32,
    backoff: Backoff,
}

#[derive(Clone, Copy, Debug)]
enum Backoff {
    /// `first` before the second attempt, doubled before each later one.
    Doubling(Duration),
    /// The pause after the failed attempt `n` (1-based).
    Custom(fn(u32) -> Duration),
}

impl Retry {
    /// Up to `max_attempts` attempts, pausing `first` before the second and twice the previous pause before each
    /// later one.
    pub const fn doubling(max_attempts: u32, first: Duration) -> Self {
        Self { max_attempts, backoff: Backoff::Doubling(first) }
    }

    /// Up to `max_attempts` attempts, pausing `backoff(n)` after the failed attempt `n` (1-based): for jittered or
    /// capped backoff.
    pub const fn with_backoff(max_attempts: u32, backoff: fn(u32) -> Duration) -> Self {
        Self { max_attempts, backoff: Backoff::Custom(backoff) }
    }

    /// The most attempts of one operation.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The pause after the failed attempt `attempt` (1-based).
    fn pause(&self, attempt: u32) -> Duration {
        match self.backoff {
            Backoff::Doubling(first) => first.saturating_mul(1 << attempt.saturating_sub(1).min(31)),
            Backoff::Custom(backoff) => backoff(attempt),
        }
    }

    /// Runs `op` until it succeeds, fails with an error that is not [retryable](Error::is_retryable), or failed
    /// [`max_attempts`](Self::max_attempts) times; returns its last result.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let pause = self.pause(attempt);
                    tracing::debug!(error = %e, attempt, ?pause, "transient checkpoint store failure, retrying");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// When a [`BufferedStore`]'s background flush task starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushStart {
    /// With the first [`set`](CheckpointStore::set) (the default): building the store needs no runtime, and a
    /// store nobody sets anything in runs no task.
    FirstSet,
    /// At [`build`](BufferedStoreBuilder::build), which must then be called inside a Tokio runtime.
    Build,
}

/// What [`set`](CheckpointStore::set) does after [`BufferedStore::shutdown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterShutdown {
    /// Fails with an [`ErrorKind::Permanent`] error (the default).
    RefuseSet,
    /// Still buffers; nothing flushes in the background any more, [`flush`](CheckpointStore::flush) still writes.
    Buffer,
}

/// A [`CheckpointStore`] that buffers the newest checkpoint per shard and flushes it to a [`Backend`]; see the
/// [module docs](self).
///
/// [`get`](CheckpointStore::get) returns the newer of the stored and the pending checkpoint. Dropping the store
/// stops the background task without flushing: call [`shutdown`](Self::shutdown) (or
/// [`flush`](CheckpointStore::flush)) first, or the checkpoints set since the last flush are lost (their records are
/// delivered again after a restart).
#[derive(Debug)]
pub struct BufferedStore<B> {
    shared: Arc<Shared<B>>,
}

/// Configures a [`BufferedStore`]: see [`BufferedStore::builder`]. Every default is documented on its setter.
#[derive(Debug)]
pub struct BufferedStoreBuilder<B> {
    backend: B,
    config: Config,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    flush_interval: Duration,
    retry: Retry,
    max_items_per_write: usize,
    max_writes_in_flight: usize,
    start: FlushStart,
    after_shutdown: AfterShutdown,
}

#[derive(Debug)]
struct Shared<B> {
    backend: B,
    config: Config,
    /// Checkpoints set but not yet written, the newest one per shard.
    pending: Mutex<HashMap<ShardKey, Checkpoint>>,
    /// One flush at a time (the background one and explicit ones), so that one does not remove what the other is
    /// writing.
    flush_lock: tokio::sync::Mutex<()>,
    task: Mutex<Task>,
    /// A flush failure that retrying cannot fix, reported by the next `set`.
    failure: FlushFailure,
}

#[derive(Debug)]
enum Task {
    NotStarted,
    Running { stop: oneshot::Sender<()>, handle: JoinHandle<()> },
    ShutDown,
}

impl<B: Backend> BufferedStoreBuilder<B> {
    /// How often the background task writes the pending checkpoints (the pause between the end of one flush and the
    /// start of the next). Default [`DEFAULT_FLUSH_INTERVAL`] (5 s); must not be zero.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.flush_interval = interval;
        self
    }

    /// How a write that failed transiently is tried again within a flush. Default [`DEFAULT_RETRY`] (5 attempts,
    /// 100 ms doubling); at least one attempt.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.config.retry = retry;
        self
    }

    /// The most checkpoints given to one [`Backend::write`]. Default: all pending ones in one write; at least 1.
    pub fn max_items_per_write(mut self, items: usize) -> Self {
        self.config.max_items_per_write = items;
        self
    }

    /// The most writes of one flush in flight at once. Default 1; at least 1.
    pub fn max_writes_in_flight(mut self, writes: usize) -> Self {
        self.config.max_writes_in_flight = writes;
        self
    }

    /// When the background flush task starts. Default [`FlushStart::FirstSet`].
    pub fn start(mut self, start: FlushStart) -> Self {
        self.config.start = start;
        self
    }

    /// What `set` does after [`BufferedStore::shutdown`]. Default [`AfterShutdown::RefuseSet`].
    pub fn after_shutdown(mut self, after: AfterShutdown) -> Self {
        self.config.after_shutdown = after;
        self
    }

    /// Validates the options (an [`ErrorKind::InvalidInput`] error names the first bad one) and, with
    /// [`FlushStart::Build`], starts the background task (an `InvalidInput` error outside a Tokio runtime).
    pub fn build(self) -> Result<BufferedStore<B>, Error> {
        let config = self.config;
        let invalid = |what: &str| Err(Error::new(ErrorKind::InvalidInput, what.to_owned()));
        if config.flush_interval.is_zero() {
            return invalid("flush interval must be greater than zero");
        }
        if config.retry.max_attempts == 0 {
            return invalid("max attempts must be at least 1");
        }
        if config.max_items_per_write == 0 || config.max_writes_in_flight == 0 {
            return invalid("items per write and writes in flight must be at least 1");
        }
        let runtime = match config.start {
            FlushStart::FirstSet => None,
            FlushStart::Build => Some(tokio::runtime::Handle::try_current().map_err(|e| {
                let message =
                    format!("the checkpoint store of {} must be built inside a Tokio runtime", self.backend.name());
                Error::with_source(ErrorKind::InvalidInput, message, e)
            })?),
        };
        let shared = Arc::new(Shared {
            backend: self.backend,
            config,
            pending: Mutex::new(HashMap::new()),
            flush_lock: tokio::sync::Mutex::new(()),
            task: Mutex::new(Task::NotStarted),
            failure: FlushFailure::default(),
        });
        if let Some(runtime) = runtime {
            *shared.task() = shared.spawn_task(&runtime);
        }
        Ok(BufferedStore { shared })
    }
}

impl<B: Backend> BufferedStore<B> {
    /// A builder for a store writing to `backend`, with the defaults documented on its setters.
    pub fn builder(backend: B) -> BufferedStoreBuilder<B> {
        BufferedStoreBuilder {
            backend,
            config: Config {
                flush_interval: DEFAULT_FLUSH_INTERVAL,
                retry: DEFAULT_RETRY,
                max_items_per_write: usize::MAX,
                max_writes_in_flight: 1,
                start: FlushStart::FirstSet,
                after_shutdown: AfterShutdown::RefuseSet,
            },
        }
    }

    /// The backend (for what a store offers beyond the engine: creating its table, transactional writes).
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// The checkpoint of `key` set but not yet written, if any.
    pub fn pending(&self, key: &ShardKey) -> Option<Checkpoint> {
        self.shared.pending().get(key).cloned()
    }

    /// Stops the background task and flushes the pending checkpoints.
    ///
    /// Calling it again finds no task and flushes again (nothing, if nothing was set since). If the flush fails,
    /// the checkpoints stay pending and a later `shutdown` or `flush` tries again. What `set` does afterwards is
    /// the builder's [`after_shutdown`](BufferedStoreBuilder::after_shutdown).
    pub async fn shutdown(&self) -> Result<(), Error> {
        let task = std::mem::replace(&mut *self.shared.task(), Task::ShutDown);
        if let Task::Running { stop, handle } = task {
            // A send error means the task already ended.
            let _ = stop.send(());
            // The task only ends by itself; an Err would mean it panicked, which a flush does not do.
            if let Err(e) = handle.await {
                tracing::warn!(store = self.shared.backend.name(), error = %e, "checkpoint flush task ended abnormally");
            }
        }
        self.shared.flush_and_note().await
    }
}

#[async_trait]
impl<B: Backend> CheckpointStore for BufferedStore<B> {
    /// The stored checkpoint of `key`, or the pending one if that is newer.
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        // Pending first: a flush removes a pending checkpoint only after writing it, so one that commits between
        // these two reads leaves it in the store. Reading the store first could miss both.
        let pending = self.pending(key);
        let stored = self.shared.backend.read(key).await?;
        Ok(stored.into_iter().chain(pending).max())
    }

    /// Records `checkpoint` in the pending map (keeping the newest per shard) for the next flush; fails with the
    /// remembered failure of an earlier flush that retrying could not fix.
    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        self.shared.backend.check(&checkpoint)?;
        self.shared.failure.check()?;
        self.shared.start_task()?;
        let mut pending = self.shared.pending();
        match pending.get_mut(key) {
            Some(current) if *current >= checkpoint => {}
            Some(current) => *current = checkpoint,
            None => {
                pending.insert(key.clone(), checkpoint);
            }
        }
        Ok(())
    }

    /// Writes every pending checkpoint, retrying transient failures; what failed stays pending.
    async fn flush(&self) -> Result<(), Error> {
        self.shared.flush_and_note().await
    }
}

impl<B: Backend> Shared<B> {
    fn pending(&self) -> MutexGuard<'_, HashMap<ShardKey, Checkpoint>> {
        // Each operation under this lock is one insert, remove or copy: a panic cannot leave it half-updated.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn task(&self) -> MutexGuard<'_, Task> {
        // Only replacements of the whole value happen under this lock.
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn_task(self: &Arc<Self>, runtime: &tokio::runtime::Handle) -> Task {
        let (stop, stopped) = oneshot::channel();
        // The task holds the store weakly: dropping the store drops `stop` and ends the task.
        let handle = runtime.spawn(background(Arc::downgrade(self), self.config.flush_interval, stopped));
        Task::Running { stop, handle }
    }

    /// Starts the background task if the store starts it at the first `set`; refuses a `set` after `shutdown` if
    /// the store does.
    fn start_task(self: &Arc<Self>) -> Result<(), Error> {
        let mut task = self.task();
        match *task {
            Task::Running { .. } => Ok(()),
            Task::ShutDown => match self.config.after_shutdown {
                AfterShutdown::RefuseSet => Err(Error::new(ErrorKind::Permanent, "checkpoint store was shut down")),
                AfterShutdown::Buffer => Ok(()),
            },
            Task::NotStarted => {
                if self.config.start == FlushStart::FirstSet {
                    *task = self.spawn_task(&tokio::runtime::Handle::current());
                }
                Ok(())
            }
        }
    }

    /// [`Shared::flush`], remembering a failure that retrying cannot fix (for `set` to report) or forgetting it.
    async fn flush_and_note(self: &Arc<Self>) -> Result<(), Error> {
        let result = self.flush().await;
        match &result {
            Ok(()) => self.failure.clear(),
            Err(e) => self.failure.record(e),
        }
        result
    }

    async fn flush(self: &Arc<Self>) -> Result<(), Error> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let batch: Vec<(ShardKey, Checkpoint)> = self.pending().iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        if batch.is_empty() {
            return Ok(());
        }
        let per_write = self.config.max_items_per_write;
        let writes_total = batch.len().div_ceil(per_write);
        let mut chunks = Vec::with_capacity(writes_total);
        let mut rest = batch.into_iter();
        loop {
            let chunk: Vec<_> = rest.by_ref().take(per_write).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }

        let mut chunks = chunks.into_iter();
        let mut in_flight = JoinSet::new();
        let mut failed = 0usize;
        let mut first_error: Option<Error> = None;
        loop {
            while in_flight.len() < self.config.max_writes_in_flight {
                let Some(chunk) = chunks.next() else { break };
                let shared = Arc::clone(self);
                in_flight.spawn(async move {
                    let result = shared.config.retry.run(|| shared.backend.write(&chunk)).await;
                    (chunk, result)
                });
            }
            let Some(joined) = in_flight.join_next().await else { break };
            let (chunk, result) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only when the runtime shuts down: the checkpoints stay pending.
                Err(e) => {
                    failed += 1;
                    let err = Error::with_source(ErrorKind::Transient, "checkpoint write cancelled", e);
                    first_error.get_or_insert(err);
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    // Forget what was written, unless a newer checkpoint was set meanwhile.
                    let mut pending = self.pending();
                    for (key, written) in chunk {
                        if pending.get(&key) == Some(&written) {
                            pending.remove(&key);
                        }
                    }
                }
                Err(err) => {
                    failed += 1;
                    if writes_total > 1 {
                        let first_shard = chunk.first().map(|(k, _)| k.shard());
                        tracing::warn!(
                            store = self.backend.name(),
                            shard = first_shard,
                            checkpoints = chunk.len(),
                            error = %err,
                            "checkpoint write failed"
                        );
                    }
                    // A permanent error is more useful to the caller than a transient one.
                    let replace = first_error.as_ref().is_none_or(|e| e.is_retryable() && !err.is_retryable());
                    if replace {
                        first_error = Some(err);
                    }
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(err) if failed == 1 => Err(err),
            Some(err) => Err(Error::with_source(
                err.kind(),
                format!("{failed} checkpoint writes to {} failed; they stay pending", self.backend.name()),
                err,
            )),
        }
    }
}

/// The background flush: every `interval` after the previous flush ended, until stopped or the store is dropped.
async fn background<B: Backend>(shared: Weak<Shared<B>>, interval: Duration, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            // Stopped, or the store was dropped (the sender with it).
            _ = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        if let Err(e) = shared.flush_and_note().await {
            tracing::warn!(
                store = shared.backend.name(),
                error = %e,
                source = ?std::error::Error::source(&e),
                "background checkpoint flush failed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::sync::Semaphore;
    use tokio::time::Instant;

    use super::*;
    use crate::SequenceNumber;

    /// An in-memory backend that records every write call, can fail writes of chosen shards, hold writes at a gate
    /// and make them take time, and counts the writes in flight.
    #[derive(Debug, Default)]
    struct Fake {
        stored: Mutex<HashMap<ShardKey, Checkpoint>>,
        /// Every call of `write` (attempts included), with its batch.
        calls: Mutex<Vec<Vec<(ShardKey, Checkpoint)>>>,
        /// A write containing one of these shards fails with this kind.
        failing: Mutex<HashMap<String, ErrorKind>>,
        /// Writes wait for a permit of this semaphore, if any.
        gate: Option<Semaphore>,
        /// How long a write takes.
        delay: Duration,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        /// Held only to be dropped with the backend.
        _dropped: DropFlag,
    }

    /// Set when the backend holding it is dropped.
    #[derive(Debug, Default)]
    struct DropFlag(Option<Arc<AtomicBool>>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            if let Some(dropped) = &self.0 {
                dropped.store(true, Ordering::SeqCst);
            }
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    impl Fake {
        fn fail(&self, shard: &str, kind: ErrorKind) {
            lock(&self.failing).insert(shard.to_owned(), kind);
        }

        fn heal(&self) {
            lock(&self.failing).clear();
        }

        fn stored(&self, key: &ShardKey) -> Option<Checkpoint> {
            lock(&self.stored).get(key).cloned()
        }

        fn calls(&self) -> Vec<Vec<(ShardKey, Checkpoint)>> {
            lock(&self.calls).clone()
        }
    }

    #[async_trait]
    impl Backend for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        /// Sub-sequence numbers above 1000 "do not fit a column".
        fn check(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
            match checkpoint {
                Checkpoint::At { sub_sequence: Some(sub), .. } if *sub > 1000 => {
                    Err(Error::new(ErrorKind::InvalidInput, "sub-sequence too large"))
                }
                _ => Ok(()),
            }
        }

        async fn read(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
            Ok(self.stored(key))
        }

        async fn write(&self, batch: &[(ShardKey, Checkpoint)]) -> Result<(), Error> {
            lock(&self.calls).push(batch.to_vec());
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let failing = lock(&self.failing);
            if let Some((key, kind)) = batch.iter().find_map(|(k, _)| failing.get(k.shard()).map(|kind| (k, kind))) {
                return Err(Error::new(*kind, format!("writing {} failed", key.shard())));
            }
            let mut stored = lock(&self.stored);
            for (key, checkpoint) in batch {
                let slot = stored.entry(key.clone()).or_insert_with(|| checkpoint.clone());
                if checkpoint > slot {
                    *slot = checkpoint.clone();
                }
            }
            Ok(())
        }
    }

    fn at(s: &str) -> Checkpoint {
        Checkpoint::at(SequenceNumber::parse(s).expect("valid"))
    }

    fn key(shard: &str) -> ShardKey {
        ShardKey::new("app", "stream", shard)
    }

    fn store(fake: Fake) -> BufferedStore<Fake> {
        BufferedStore::builder(fake).build().expect("valid options")
    }

    #[tokio::test]
    async fn pending_keeps_only_the_newest_per_shard_and_one_write_takes_all() {
        let store = store(Fake::default());
        // (set, pending after it)
        let steps = [
            (at("10"), at("10")),
            (at("9"), at("10")),
            (Checkpoint::at_sub(SequenceNumber::parse("10").expect("valid"), 4), at("10")),
            (at("11"), at("11")),
            (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
            (at("12"), Checkpoint::ShardEnd),
        ];
        for (set, want) in steps {
            store.set(&key("a"), set.clone()).await.expect("set");
            assert_eq!(store.pending(&key("a")), Some(want), "after set {set:?}");
        }
        store.set(&key("b"), at("7")).await.expect("set");
        store.set(&key("c"), at("8")).await.expect("set");
        assert_eq!(store.backend().calls(), [] as [Vec<_>; 0], "set only buffers");

        store.flush().await.expect("flush");
        let calls = store.backend().calls();
        assert_eq!(calls.len(), 1, "one write of every pending checkpoint: {calls:?}");
        let mut written = calls[0].clone();
        written.sort_by(|x, y| x.0.shard().cmp(y.0.shard()));
        assert_eq!(written, [(key("a"), Checkpoint::ShardEnd), (key("b"), at("7")), (key("c"), at("8"))]);
        assert_eq!(store.pending(&key("a")), None, "written, so no longer pending");
        store.flush().await.expect("nothing pending");
        assert_eq!(store.backend().calls().len(), 1, "an empty flush writes nothing");
    }

    #[tokio::test]
    async fn writes_are_cut_to_the_items_per_write() {
        let store = BufferedStore::builder(Fake::default()).max_items_per_write(2).build().expect("valid");
        for shard in ["a", "b", "c", "d", "e"] {
            store.set(&key(shard), at("1")).await.expect("set");
        }
        store.flush().await.expect("flush");
        let mut sizes: Vec<usize> = store.backend().calls().iter().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [1, 2, 2]);
        assert_eq!(store.backend().max_in_flight.load(Ordering::SeqCst), 1, "one write at a time by default");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_then_kept_pending() {
        let store = store(Fake::default());
        store.set(&key("a"), at("5")).await.expect("set");
        store.backend().fail("a", ErrorKind::Transient);
        let started = Instant::now();
        let err = store.flush().await.expect_err("still failing");
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(store.backend().calls().len(), 5, "the default retry makes 5 attempts");
        assert_eq!(started.elapsed(), Duration::from_millis(100 + 200 + 400 + 800), "doubling pauses");
        assert_eq!(store.pending(&key("a")), Some(at("5")), "kept for the next flush");
        store.set(&key("a"), at("6")).await.expect("a transient failure is not reported by set");

        store.backend().heal();
        store.flush().await.expect("flush after the failure went away");
        assert_eq!(store.backend().stored(&key("a")), Some(at("6")));
        assert_eq!(store.pending(&key("a")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn custom_backoff_and_attempts() {
        let retry = Retry::with_backoff(3, |attempt| Duration::from_secs(u64::from(attempt)));
        let store = BufferedStore::builder(Fake::default()).retry(retry).build().expect("valid");
        store.set(&key("a"), at("5")).await.expect("set");
        store.backend().fail("a", ErrorKind::Transient);
        let started = Instant::now();
        store.flush().await.expect_err("failing");
        assert_eq!(store.backend().calls().len(), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(1 + 2));
        // A permanent failure is not retried.
        store.backend().fail("a", ErrorKind::Permanent);
        assert_eq!(store.flush().await.map_err(|e| e.kind()), Err(ErrorKind::Permanent));
        assert_eq!(store.backend().calls().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_background_failure_is_returned_by_the_next_set() {
        let store = BufferedStore::builder(Fake::default()).flush_interval(Duration::from_secs(1)).build().expect("ok");
        store.backend().fail("a", ErrorKind::Permanent);
        store.set(&key("a"), at("5")).await.expect("set");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(store.backend().calls().len(), 1, "the background flush ran once");
        let err = store.set(&key("a"), at("6")).await.expect_err("the failure is reported");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("background flush") && err.to_string().contains("writing a failed"), "{err}");
        assert_eq!(store.pending(&key("a")), Some(at("5")), "the refused set changed nothing, the failed one stays");

        store.backend().heal();
        store.flush().await.expect("healed");
        store.set(&key("a"), at("7")).await.expect("a successful flush clears the failure");
        assert_eq!(store.backend().stored(&key("a")), Some(at("5")));
    }

    #[tokio::test]
    async fn a_newer_set_during_a_write_is_not_lost() {
        let fake = Fake { gate: Some(Semaphore::new(0)), ..Fake::default() };
        let store = Arc::new(store(fake));
        store.set(&key("a"), at("5")).await.expect("set");
        store.set(&key("b"), at("1")).await.expect("set");
        let flushing = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.flush().await }
        });
        while store.backend().in_flight.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        store.set(&key("a"), at("6")).await.expect("set during the write");
        store.backend().gate.as_ref().expect("gate").add_permits(1);
        flushing.await.expect("no panic").expect("flush");
        assert_eq!(store.backend().stored(&key("a")), Some(at("5")));
        assert_eq!(store.pending(&key("a")), Some(at("6")), "the newer checkpoint stays pending");
        assert_eq!(store.pending(&key("b")), None, "what did not change is forgotten");

        store.backend().gate.as_ref().expect("gate").add_permits(1);
        store.flush().await.expect("flush");
        assert_eq!(store.backend().stored(&key("a")), Some(at("6")));
        assert_eq!(store.pending(&key("a")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_in_flight_are_bounded() {
        let fake = Fake { delay: Duration::from_millis(10), ..Fake::default() };
        let store = BufferedStore::builder(fake).max_items_per_write(1).max_writes_in_flight(3).build().expect("ok");
        for i in 0..10 {
            store.set(&key(&format!("s{i}")), at("1")).await.expect("set");
        }
        let started = Instant::now();
        store.flush().await.expect("flush");
        assert_eq!(store.backend().max_in_flight.load(Ordering::SeqCst), 3, "never more than 3, and 3 were used");
        assert_eq!(started.elapsed(), Duration::from_millis(40), "10 writes of 10 ms, 3 at a time");
        assert!(store.backend().calls().iter().all(|c| c.len() == 1));
        for i in 0..10 {
            assert_eq!(store.backend().stored(&key(&format!("s{i}"))), Some(at("1")));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_writes_are_summed_up_and_a_permanent_one_wins() {
        let store = BufferedStore::builder(Fake::default()).max_items_per_write(1).max_writes_in_flight(2).build();
        let store = store.expect("valid");
        for shard in ["ok", "slow", "gone"] {
            store.set(&key(shard), at("3")).await.expect("set");
        }
        store.backend().fail("slow", ErrorKind::Transient);
        store.backend().fail("gone", ErrorKind::Permanent);
        let err = tokio::time::timeout(Duration::from_secs(10), store.flush()).await.expect("in time");
        let err = err.expect_err("two writes failed");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.to_string(), "2 checkpoint writes to fake failed; they stay pending");
        assert_eq!(std::error::Error::source(&err).map(ToString::to_string), Some("writing gone failed".into()));
        assert_eq!(store.pending(&key("ok")), None);
        assert_eq!(store.pending(&key("slow")), Some(at("3")));
        assert_eq!(store.pending(&key("gone")), Some(at("3")));

        // One failed write is returned as it is.
        store.backend().heal();
        store.backend().fail("gone", ErrorKind::Permanent);
        let err = store.flush().await.expect_err("one write failed");
        assert_eq!(err.to_string(), "writing gone failed");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_and_stops_the_background_task() {
        let store = BufferedStore::builder(Fake::default()).flush_interval(Duration::from_secs(1)).build().expect("ok");
        store.set(&key("a"), at("5")).await.expect("set");
        store.shutdown().await.expect("shutdown");
        assert_eq!(store.backend().stored(&key("a")), Some(at("5")), "flushed");
        assert_eq!(store.set(&key("a"), at("6")).await.map_err(|e| e.kind()), Err(ErrorKind::Permanent));
        store.shutdown().await.expect("a second shutdown flushes nothing");
        assert_eq!(store.backend().calls().len(), 1);

        let store = BufferedStore::builder(Fake::default())
            .flush_interval(Duration::from_secs(1))
            .start(FlushStart::Build)
            .after_shutdown(AfterShutdown::Buffer)
            .build()
            .expect("ok");
        store.shutdown().await.expect("shutdown");
        store.set(&key("a"), at("5")).await.expect("still buffers");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(store.backend().calls().len(), 0, "no background flush after shutdown");
        store.flush().await.expect("flush still writes");
        assert_eq!(store.backend().stored(&key("a")), Some(at("5")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_flush_task_starts_at_the_first_set_or_at_build() {
        // Built at 0, set at 0.5 s, interval 1 s: the first background flush comes at 1.5 s or at 1 s.
        for (start, first_flush_ms) in [(FlushStart::FirstSet, 1500), (FlushStart::Build, 1000)] {
            let built = Instant::now();
            let store = BufferedStore::builder(Fake::default())
                .flush_interval(Duration::from_secs(1))
                .start(start)
                .build()
                .expect("ok");
            tokio::time::sleep(Duration::from_millis(500)).await;
            store.set(&key("a"), at("5")).await.expect("set");
            tokio::time::sleep_until(built + Duration::from_millis(first_flush_ms - 50)).await;
            assert_eq!(store.backend().stored(&key("a")), None, "{start:?} before the first flush");
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(store.backend().stored(&key("a")), Some(at("5")), "{start:?} after it");
            // The next flush comes an interval after this one.
            store.set(&key("a"), at("6")).await.expect("set");
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert_eq!(store.backend().stored(&key("a")), Some(at("5")), "{start:?} before the next interval");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(store.backend().stored(&key("a")), Some(at("6")), "{start:?} after it");
        }
    }

    #[test]
    fn building_outside_a_runtime() {
        let lazy = BufferedStore::builder(Fake::default()).build();
        assert!(lazy.is_ok(), "the first set starts the task");
        let eager = BufferedStore::builder(Fake::default()).start(FlushStart::Build).build();
        assert_eq!(eager.map(drop).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    }

    #[test]
    fn invalid_options_are_refused() {
        type Configure = fn(BufferedStoreBuilder<Fake>) -> BufferedStoreBuilder<Fake>;
        let cases: [(&str, Configure); 4] = [
            ("zero interval", |b| b.flush_interval(Duration::ZERO)),
            ("no attempt", |b| b.retry(Retry::doubling(0, Duration::from_millis(1)))),
            ("empty writes", |b| b.max_items_per_write(0)),
            ("no write in flight", |b| b.max_writes_in_flight(0)),
        ];
        for (what, configure) in cases {
            let built = configure(BufferedStore::builder(Fake::default())).build();
            assert_eq!(built.map(drop).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput), "{what}");
        }
    }

    #[tokio::test]
    async fn set_refuses_what_the_backend_cannot_store_and_get_takes_the_newer() {
        let store = store(Fake::default());
        let too_big = Checkpoint::at_sub(SequenceNumber::parse("1").expect("valid"), 1001);
        assert_eq!(store.set(&key("a"), too_big).await.map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
        assert_eq!(store.pending(&key("a")), None);
        assert_eq!(store.get(&key("a")).await.expect("get"), None);

        store.set(&key("a"), at("5")).await.expect("set");
        assert_eq!(store.get(&key("a")).await.expect("get"), Some(at("5")), "pending only");
        store.flush().await.expect("flush");
        store.set(&key("a"), at("7")).await.expect("set");
        assert_eq!(store.get(&key("a")).await.expect("get"), Some(at("7")), "pending is newer");
        lock(&store.backend().stored).insert(key("a"), at("9"));
        assert_eq!(store.get(&key("a")).await.expect("get"), Some(at("9")), "stored (by another process) is newer");
    }

    #[tokio::test]
    async fn dropping_the_store_drops_the_backend() {
        let dropped = Arc::new(AtomicBool::new(false));
        let store = store(Fake { _dropped: DropFlag(Some(Arc::clone(&dropped))), ..Fake::default() });
        store.set(&key("a"), at("5")).await.expect("set starts the task");
        drop(store);
        tokio::task::yield_now().await;
        assert!(dropped.load(Ordering::SeqCst), "the background task does not keep the store alive");
    }
}
