//! [`Layered`]: a checkpoint store or a lease table with something done around each of its calls (a timeout, a
//! metric, a fault injected by a test), written once as an [`Around`] instead of as a delegating implementation of
//! every trait method.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! use kc_checkpoint::layer::{Around, BoxFuture, Layered};
//! use kc_checkpoint::{Checkpoint, CheckpointStore, Error, MemoryStore, ShardKey};
//!
//! /// Counts the calls.
//! #[derive(Default)]
//! struct Count(AtomicUsize);
//!
//! #[async_trait::async_trait]
//! impl Around for Count {
//!     async fn around<'a, T: Send + 'a>(
//!         &'a self,
//!         _what: &'static str,
//!         call: BoxFuture<'a, Result<T, Error>>,
//!     ) -> Result<T, Error> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         call.await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let store = Layered::new(Arc::new(MemoryStore::new()), Count::default());
//! store.set(&ShardKey::new("app", "stream", "shard"), Checkpoint::ShardEnd).await?;
//! store.flush().await?;
//! assert_eq!(store.around().0.load(Ordering::Relaxed), 2);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::lease::{Lease, LeaseScope, LeaseTable};
use crate::{Checkpoint, CheckpointStore, Error, ShardKey};

/// A boxed call of a store or a lease table.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a [`Layered`] store or table does around each call.
#[async_trait]
pub trait Around: Send + Sync + 'static {
    /// Runs `call` (named `what`: `"checkpoint store get"`, `"lease table renew"`, ...) and returns its result, or
    /// an error of its own instead (a timeout, an injected fault).
    async fn around<'a, T: Send + 'a>(
        &'a self,
        what: &'static str,
        call: BoxFuture<'a, Result<T, Error>>,
    ) -> Result<T, Error>;
}

/// A [`CheckpointStore`] or [`LeaseTable`] (`inner`) whose every call goes through an [`Around`].
pub struct Layered<I: ?Sized, A> {
    inner: Arc<I>,
    around: A,
}

impl<I: ?Sized, A> Layered<I, A> {
    /// `inner`, with `around` around each of its calls.
    pub fn new(inner: Arc<I>, around: A) -> Self {
        Self { inner, around }
    }

    /// The store or table inside.
    pub fn inner(&self) -> &Arc<I> {
        &self.inner
    }

    /// What is done around each call.
    pub fn around(&self) -> &A {
        &self.around
    }
}

impl<I: ?Sized, A: std::fmt::Debug> std::fmt::Debug for Layered<I, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layered").field("around", &self.around).finish_non_exhaustive()
    }
}

#[async_trait]
impl<I: CheckpointStore + ?Sized + 'static, A: Around> CheckpointStore for Layered<I, A> {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        self.around.around("checkpoint store get", self.inner.get(key)).await
    }

    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        self.around.around("checkpoint store set", self.inner.set(key, checkpoint)).await
    }

    async fn flush(&self) -> Result<(), Error> {
        self.around.around("checkpoint store flush", self.inner.flush()).await
    }
}

#[async_trait]
impl<I: LeaseTable + ?Sized + 'static, A: Around> LeaseTable for Layered<I, A> {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        self.around.around("lease table list", self.inner.list(scope)).await
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        self.around.around("lease table get", self.inner.get(scope, shard_id)).await
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        self.around.around("lease table create", self.inner.create(scope, shard_id, parents)).await
    }

    async fn take(&self, scope: &LeaseScope, shard_id: &str, counter: u64, owner: &str) -> Result<Lease, Error> {
        self.around.around("lease table take", self.inner.take(scope, shard_id, counter, owner)).await
    }

    async fn request(&self, scope: &LeaseScope, shard_id: &str, counter: u64, requester: &str) -> Result<Lease, Error> {
        self.around.around("lease table request", self.inner.request(scope, shard_id, counter, requester)).await
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        self.around.around("lease table renew", self.inner.renew(scope, shard_id, owner, counter)).await
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
        self.around.around("lease table checkpoint", call).await
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        self.around.around("lease table release", self.inner.release(scope, shard_id, owner, counter)).await
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        self.around.around("lease table delete", self.inner.delete(scope, shard_id)).await
    }
}
