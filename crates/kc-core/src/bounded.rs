//! The user's checkpoint store and lease table as the consumer calls them: every call bounded by the store timeout
//! ([`ConsumerBuilder::store_timeout`](crate::ConsumerBuilder::store_timeout)).
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

/// Each call, or a transient "timed out" error once the timeout passed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeout(pub(crate) Duration);

#[async_trait]
impl Around for Timeout {
    async fn around<'a, T: Send + 'a>(
        &'a self,
        what: &'static str,
        call: BoxFuture<'a, Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.0, call).await {
            Ok(result) => result,
            Err(_) => {
                Err(Error::new(ErrorKind::Transient, format!("{what} timed out after {:?} (store_timeout)", self.0)))
            }
        }
    }
}

/// `inner` (a checkpoint store or a lease table), every call bounded by `timeout`.
pub(crate) fn bounded<I: ?Sized>(inner: Arc<I>, timeout: Duration) -> Arc<Layered<I, Timeout>> {
    Arc::new(Layered::new(inner, Timeout(timeout)))
}

#[cfg(test)]
mod tests {
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
}
