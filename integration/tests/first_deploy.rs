//! First deploy: N processes call `create_table_if_missing` at the same moment against a table that does not exist
//! yet (every worker of a new consumer group, every instance of a new app). Every call must succeed, on every
//! backend, for the checkpoint stores and the lease tables alike, and the table must work afterwards.
//!
//! PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not atomic: two sessions can both find the table missing and one then
//! fails on the catalog's unique index (issue 12: "seen in 6 of 6 tries").

use std::future::Future;
use std::sync::Arc;

use kc_integration::{all_at_once, dynamodb, mysql_url, postgres_url, unique_table};
use kinesis_consumer::checkpoint::lease::{LeaseScope, LeaseTable};
use kinesis_consumer::ddb::{DynamoDbLeaseTable, DynamoDbStore};
use kinesis_consumer::mysql::{MySqlLeaseTable, MySqlStore};
use kinesis_consumer::postgres::{PostgresLeaseTable, PostgresStore};
use kinesis_consumer::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;

/// Callers at once.
const CALLERS: usize = 8;
/// Fresh tables per backend.
const ROUNDS: usize = 5;

async fn all_at_once_n<F, Fut>(what: &str, call: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), kinesis_consumer::checkpoint::Error>> + Send + 'static,
{
    all_at_once(what, CALLERS, call).await;
}

async fn store_works(store: &dyn CheckpointStore) {
    let key = ShardKey::new("app", "stream", "shardId-000000000000");
    let checkpoint = Checkpoint::at(SequenceNumber::parse("42").expect("sequence"));
    store.set(&key, checkpoint.clone()).await.expect("set");
    store.flush().await.expect("flush");
    assert_eq!(store.get(&key).await.expect("get"), Some(checkpoint));
}

async fn leases_work(table: &dyn LeaseTable) {
    let scope = LeaseScope::new("g", "s");
    assert!(table.create(&scope, "shardId-000000000000", &[]).await.expect("create lease"));
    assert_eq!(table.list(&scope).await.expect("list").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_tables_created_by_many_at_once() {
    let pool = PgPoolOptions::new().max_connections(CALLERS as u32 * 2).connect(&postgres_url()).await.expect("pool");
    for _ in 0..ROUNDS {
        let table = unique_table("kc_first_pg");
        let store = Arc::new(PostgresStore::new(pool.clone(), &table).expect("store"));
        all_at_once_n("PostgresStore", || {
            let store = Arc::clone(&store);
            async move { store.create_table_if_missing().await }
        })
        .await;
        store_works(&*store).await;
        let table = unique_table("kc_first_pg_leases");
        let leases = Arc::new(PostgresLeaseTable::new(pool.clone(), &table).expect("leases"));
        all_at_once_n("PostgresLeaseTable", || {
            let leases = Arc::clone(&leases);
            async move { leases.create_table_if_missing().await }
        })
        .await;
        leases_work(&*leases).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_tables_created_by_many_at_once() {
    let pool = MySqlPoolOptions::new().max_connections(CALLERS as u32 * 2).connect(&mysql_url()).await.expect("pool");
    for _ in 0..ROUNDS {
        let table = unique_table("kc_first_my");
        let store = Arc::new(MySqlStore::new(pool.clone(), &table).expect("store"));
        all_at_once_n("MySqlStore", || {
            let store = Arc::clone(&store);
            async move { store.create_table_if_missing().await }
        })
        .await;
        store_works(&*store).await;
        let table = unique_table("kc_first_my_leases");
        let leases = Arc::new(MySqlLeaseTable::new(pool.clone(), &table).expect("leases"));
        all_at_once_n("MySqlLeaseTable", || {
            let leases = Arc::clone(&leases);
            async move { leases.create_table_if_missing().await }
        })
        .await;
        leases_work(&*leases).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_tables_created_by_many_at_once() {
    let client = dynamodb().await;
    for _ in 0..ROUNDS {
        let table = unique_table("kc-first-ddb").replace('_', "-");
        let store = Arc::new(DynamoDbStore::new(client.clone(), &table).expect("store"));
        all_at_once_n("DynamoDbStore", || {
            let store = Arc::clone(&store);
            async move { store.create_table_if_missing().await }
        })
        .await;
        store_works(&*store).await;
        let table = unique_table("kc-first-ddb-leases").replace('_', "-");
        let leases = Arc::new(DynamoDbLeaseTable::new(client.clone(), &table).expect("leases"));
        all_at_once_n("DynamoDbLeaseTable", || {
            let leases = Arc::clone(&leases);
            async move { leases.create_table_if_missing().await }
        })
        .await;
        leases_work(&*leases).await;
    }
}
