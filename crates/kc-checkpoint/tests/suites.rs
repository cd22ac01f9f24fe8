//! Both conformance suites against the in-memory implementations of this crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kc_checkpoint::lease::MemoryLeaseTable;
use kc_checkpoint::test_util::lease_suite;
use kc_checkpoint::test_util::store_suite::{self, Capabilities, StoreBackend};
use kc_checkpoint::{Checkpoint, CheckpointStore, Error, MemoryStore, ShardKey};

/// `MemoryStore` as a suite backend: a table is a store, a fresh instance a clone of it (clones share checkpoints).
/// It has no table to break, no background flush and no table names: those cases are skipped, and say so.
struct Memory;

#[async_trait]
impl StoreBackend for Memory {
    type Table = MemoryStore;
    type Store = MemoryStore;

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }

    async fn create_table(&self) -> Result<MemoryStore, Error> {
        Ok(MemoryStore::new())
    }

    async fn open(&self, table: &MemoryStore) -> Result<MemoryStore, Error> {
        Ok(table.clone())
    }

    async fn drop_table(&self, _table: MemoryStore) -> Result<(), Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    store_suite::run(Memory, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lease_table_conforms() {
    lease_suite::run(Arc::new(MemoryLeaseTable::new()), "memory").await;
}

/// A store that forgets the contract (every `set` replaces the checkpoint, older or not), to show that the suite
/// notices.
#[derive(Clone, Default)]
struct Regressing(Arc<Mutex<HashMap<ShardKey, Checkpoint>>>);

#[async_trait]
impl CheckpointStore for Regressing {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        Ok(self.0.lock().expect("not poisoned").get(key).cloned())
    }

    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        self.0.lock().expect("not poisoned").insert(key.clone(), checkpoint);
        Ok(())
    }

    async fn flush(&self) -> Result<(), Error> {
        Ok(())
    }
}

struct RegressingBackend;

#[async_trait]
impl StoreBackend for RegressingBackend {
    type Table = Regressing;
    type Store = Regressing;

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }

    async fn create_table(&self) -> Result<Regressing, Error> {
        Ok(Regressing::default())
    }

    async fn open(&self, table: &Regressing) -> Result<Regressing, Error> {
        Ok(table.clone())
    }

    async fn drop_table(&self, _table: Regressing) -> Result<(), Error> {
        Ok(())
    }
}

#[tokio::test]
#[should_panic(expected = "never_moves_backwards_across_flushes_and_instances")]
async fn a_store_that_moves_backwards_fails_the_suite() {
    store_suite::run(RegressingBackend, "regressing").await;
}
