//! The user's checkpoint store and lease table as the consumer calls them: every call bounded by the store timeout
//! ([`ConsumerBuilder::store_timeout`](crate::ConsumerBuilder::store_timeout)); the checkpoint store's calls also
//! at most [`max_calls_in_flight`](crate::ConsumerBuilder::max_calls_in_flight) at once, each timed from when it got
//! its turn, so that a start of thousands of shards reads their checkpoints a few at a time (issue 13).
//!
//! A database that accepts a connection and then holds every packet would otherwise hold a call (and a graceful stop
//! waiting for it) until the operating system gives up on the TCP connection, minutes later; sqlx and the AWS SDK set
//! no bound per statement. A call that takes longer fails as [`Transient`](kc_checkpoint::ErrorKind::Transient)
//! ("timed out"), like a broken connection: it may have been applied, which every caller already allows for (stores
//! keep the checkpoint pending, a lease write is read back).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::layer::{Around, BoxFuture, Layered};
use kc_checkpoint::{Error, ErrorKind};
use tokio::sync::Semaphore;

/// Each call, or a transient "timed out" error once the timeout passed; with permits, at most that many calls at
/// once (the timeout counts from when a call got its permit).
#[derive(Clone, Debug)]
pub(crate) struct Timeout {
    timeout: Duration,
    permits: Option<Arc<Semaphore>>,
}

#[async_trait]
impl Around for Timeout {
    async fn around<'a, T: Send + 'a>(
        &'a self,
        what: &'static str,
        call: BoxFuture<'a, Result<T, Error>>,
    ) -> Result<T, Error> {
        let _permit = match &self.permits {
            // The semaphore is never closed.
            Some(permits) => permits.acquire().await.ok(),
            None => None,
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Transient,
                format!("{what} timed out after {:?} (store_timeout)", self.timeout),
            )),
        }
    }
}

/// `inner` (a checkpoint store or a lease table), every call bounded by `timeout`.
pub(crate) fn bounded<I: ?Sized>(inner: Arc<I>, timeout: Duration) -> Arc<Layered<I, Timeout>> {
    Arc::new(Layered::new(inner, Timeout { timeout, permits: None }))
}

/// `inner`, at most `permits` calls at once, each bounded by `timeout` from when it got its permit.
pub(crate) fn bounded_and_limited<I: ?Sized>(
    inner: Arc<I>,
    timeout: Duration,
    permits: usize,
) -> Arc<Layered<I, Timeout>> {
    Arc::new(Layered::new(inner, Timeout { timeout, permits: Some(Arc::new(Semaphore::new(permits))) }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use kc_checkpoint::{Checkpoint, CheckpointStore, MemoryStore, ShardKey};

    /// A store whose calls never return.
    struct Hanging;

    #[async_trait]
    impl CheckpointStore for Hanging {
        async fn get(&self, _: &ShardKey) -> Result<Option<Checkpoint>, Error> {
            std::future::pending().await
        }
        async fn set(&self, _: &ShardKey, _: Checkpoint) -> Result<(), Error> {
            std::future::pending().await
        }
        async fn flush(&self) -> Result<(), Error> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_hangs_fails_as_transient_after_the_timeout() {
        let store: Arc<Layered<dyn CheckpointStore, Timeout>> = bounded(Arc::new(Hanging), Duration::from_secs(3));
        let key = ShardKey::new("a", "s", "shard");
        let started = tokio::time::Instant::now();
        let err = store.flush().await.expect_err("timed out");
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.to_string().contains("flush timed out after 3s"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(store.get(&key).await.expect_err("timed out").kind(), ErrorKind::Transient);
        let err = store.set(&key, Checkpoint::ShardEnd).await.expect_err("timed out");
        assert_eq!(err.kind(), ErrorKind::Transient);
        // A store that answers is not changed.
        let store: Arc<Layered<dyn CheckpointStore, Timeout>> =
            bounded(Arc::new(MemoryStore::new()), Duration::from_secs(3));
        store.set(&key, Checkpoint::ShardEnd).await.expect("set");
        assert_eq!(store.get(&key).await.expect("get"), Some(Checkpoint::ShardEnd));
    }

    /// A store whose `get` takes a second, counting the calls in flight and their maximum.
    #[derive(Default)]
    struct Slow {
        now: AtomicUsize,
        max: AtomicUsize,
    }

    #[async_trait]
    impl CheckpointStore for Slow {
        async fn get(&self, _: &ShardKey) -> Result<Option<Checkpoint>, Error> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            Ok(None)
        }
        async fn set(&self, _: &ShardKey, _: Checkpoint) -> Result<(), Error> {
            Ok(())
        }
        async fn flush(&self) -> Result<(), Error> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limited_calls_wait_their_turn_and_are_timed_from_it() {
        // 30 reads of 1 s through 3 permits take 10 s; none times out at 2 s, since the wait does not count.
        let slow = Arc::new(Slow::default());
        let store = bounded_and_limited(Arc::clone(&slow) as Arc<dyn CheckpointStore>, Duration::from_secs(2), 3);
        let started = tokio::time::Instant::now();
        let reads: Vec<_> = (0..30)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.get(&ShardKey::new("a", "s", format!("shard-{i}"))).await })
            })
            .collect();
        for read in reads {
            read.await.expect("no panic").expect("no read timed out");
        }
        assert_eq!(slow.max.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
