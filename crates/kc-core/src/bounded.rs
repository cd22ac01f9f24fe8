//! The user's checkpoint store and lease table as the consumer calls them: every call bounded by the store timeout
//! ([`ConsumerBuilder::store_timeout`](crate::ConsumerBuilder::store_timeout)).
//!
//! A database that accepts a connection and then holds every packet would otherwise hold a call (and a graceful stop
//! waiting for it) until the operating system gives up on the TCP connection, minutes later; sqlx and the AWS SDK set
//! no bound per statement. A call that takes longer fails as [`Transient`](kc_checkpoint::ErrorKind::Transient)
//! ("timed out"), like a broken connection: it may have been applied, which every caller already allows for (stores
//! keep the checkpoint pending, a lease write is read back).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::lease::{Lease, LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, CheckpointStore, Error, ErrorKind, ShardKey};

/// `call`, or a transient "timed out" error once `timeout` passed.
async fn bounded<T>(what: &str, timeout: Duration, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(ErrorKind::Transient, format!("{what} timed out after {timeout:?} (store_timeout)"))),
    }
}

/// A [`CheckpointStore`] whose every call is bounded.
pub(crate) struct BoundedStore {
    inner: Arc<dyn CheckpointStore>,
    timeout: Duration,
}

impl BoundedStore {
    pub(crate) fn new(inner: Arc<dyn CheckpointStore>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

#[async_trait]
impl CheckpointStore for BoundedStore {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        bounded("checkpoint store get", self.timeout, self.inner.get(key)).await
    }

    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        bounded("checkpoint store set", self.timeout, self.inner.set(key, checkpoint)).await
    }

    async fn flush(&self) -> Result<(), Error> {
        bounded("checkpoint store flush", self.timeout, self.inner.flush()).await
    }
}

/// A [`LeaseTable`] whose every call is bounded.
pub(crate) struct BoundedLeaseTable {
    inner: Arc<dyn LeaseTable>,
    timeout: Duration,
}

impl BoundedLeaseTable {
    pub(crate) fn new(inner: Arc<dyn LeaseTable>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

#[async_trait]
impl LeaseTable for BoundedLeaseTable {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        bounded("lease table list", self.timeout, self.inner.list(scope)).await
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        bounded("lease table get", self.timeout, self.inner.get(scope, shard_id)).await
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        bounded("lease table create", self.timeout, self.inner.create(scope, shard_id, parents)).await
    }

    async fn take(&self, scope: &LeaseScope, shard_id: &str, counter: u64, owner: &str) -> Result<Lease, Error> {
        bounded("lease table take", self.timeout, self.inner.take(scope, shard_id, counter, owner)).await
    }

    async fn request(&self, scope: &LeaseScope, shard_id: &str, counter: u64, requester: &str) -> Result<Lease, Error> {
        bounded("lease table request", self.timeout, self.inner.request(scope, shard_id, counter, requester)).await
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        bounded("lease table renew", self.timeout, self.inner.renew(scope, shard_id, owner, counter)).await
    }

    async fn checkpoint(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<u64, Error> {
        let call = self.inner.checkpoint(scope, shard_id, owner, counter, checkpoint);
        bounded("lease table checkpoint", self.timeout, call).await
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        bounded("lease table release", self.timeout, self.inner.release(scope, shard_id, owner, counter)).await
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        bounded("lease table delete", self.timeout, self.inner.delete(scope, shard_id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::MemoryStore;

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
        let store = BoundedStore::new(Arc::new(Hanging), Duration::from_secs(3));
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
        let store = BoundedStore::new(Arc::new(MemoryStore::new()), Duration::from_secs(3));
        store.set(&key, Checkpoint::ShardEnd).await.expect("set");
        assert_eq!(store.get(&key).await.expect("get"), Some(Checkpoint::ShardEnd));
    }
}
