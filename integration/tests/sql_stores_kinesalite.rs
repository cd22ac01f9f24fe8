//! The consumer with the PostgreSQL and MySQL checkpoint stores, against kinesalite (all started or checked by
//! `cargo xtask integration`): a restarted consumer with a new store instance resumes after the checkpoints the first
//! one flushed.

use std::sync::Arc;

use kc_integration::{
    create_stream, kinesis, mysql_url, postgres_url, put_numbered, scan_with_store, unique_stream, unique_table,
};
use kinesis_consumer::mysql::MySqlStore;
use kinesis_consumer::postgres::PostgresStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_restart_resumes_after_the_flushed_checkpoints() {
    let client = kinesis().await;
    let stream = unique_stream("pg-restart");
    create_stream(&client, &stream, 2).await.expect("create stream");
    let table = unique_table("kc_pg_e2e");
    let url = postgres_url();

    let first = put_numbered(&client, &stream, "a", 0..300, 10).await.expect("put");
    let store = Arc::new(PostgresStore::connect(&url, &table).await.expect("connect"));
    store.create_table_if_missing().await.expect("create table");
    let (seen, result) = scan_with_store(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    // A new process: a new store instance on the same table.
    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(PostgresStore::connect(&url, &table).await.expect("connect"));
    let (seen, result) = scan_with_store(&stream, store.clone(), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);
    store.shutdown().await.expect("shutdown");

    let rows: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(store.pool()).await.expect("count");
    assert_eq!(rows, 2, "one row per shard");
    sqlx::query(&format!("DROP TABLE {table}")).execute(store.pool()).await.expect("drop table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_store_restart_resumes_after_the_flushed_checkpoints() {
    let client = kinesis().await;
    let stream = unique_stream("my-restart");
    create_stream(&client, &stream, 2).await.expect("create stream");
    let table = unique_table("kc_my_e2e");
    let url = mysql_url();

    let first = put_numbered(&client, &stream, "a", 0..300, 10).await.expect("put");
    let store = Arc::new(MySqlStore::connect(&url, &table).await.expect("connect"));
    store.create_table_if_missing().await.expect("create table");
    let (seen, result) = scan_with_store(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(MySqlStore::connect(&url, &table).await.expect("connect"));
    let (seen, result) = scan_with_store(&stream, store.clone(), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);
    store.shutdown().await.expect("shutdown");

    let rows: i64 = sqlx::query_scalar(&format!("SELECT CAST(count(*) AS SIGNED) FROM {table}"))
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(rows, 2, "one row per shard");
    sqlx::query(&format!("DROP TABLE {table}")).execute(store.pool()).await.expect("drop table");
}
