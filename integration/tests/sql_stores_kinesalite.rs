//! The consumer with the PostgreSQL and MySQL checkpoint stores, against kinesalite (all started or checked by
//! `cargo xtask integration`): a restarted consumer with a new store instance resumes after the checkpoints the first
//! one flushed.

use std::sync::Arc;

use kc_integration::sql::SqlStore;
use kc_integration::{new_stream, put_numbered, scan_with_store, unique_table};
use kinesis_consumer::mysql::MySqlStore;
use kinesis_consumer::postgres::PostgresStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_restart_resumes_after_the_flushed_checkpoints() {
    restart_resumes_after_the_flushed_checkpoints::<PostgresStore>("pg-restart", "kc_pg_e2e").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_store_restart_resumes_after_the_flushed_checkpoints() {
    restart_resumes_after_the_flushed_checkpoints::<MySqlStore>("my-restart", "kc_my_e2e").await;
}

async fn restart_resumes_after_the_flushed_checkpoints<S: SqlStore>(stream_prefix: &str, table_prefix: &str) {
    let (client, stream) = new_stream(stream_prefix, 2).await;
    let table = unique_table(table_prefix);
    let url = S::url();

    let first = put_numbered(&client, &stream, "a", 0..300, 10).await.expect("put");
    let store = Arc::new(S::connect(&url, &table).await.expect("connect"));
    store.create_table_if_missing().await.expect("create table");
    let (seen, result) = scan_with_store(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    // A new process: a new store instance on the same table.
    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(S::connect(&url, &table).await.expect("connect"));
    let (seen, result) = scan_with_store(&stream, store.clone(), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);
    store.shutdown().await.expect("shutdown");

    let rows = S::count_rows(store.pool(), &table).await.expect("count");
    // One per shard, and the stream's creation marker (the shard `#created`: kc_core's "a stream created again").
    assert_eq!(rows, 3, "one row per shard and the marker");
    S::execute(store.pool(), &format!("DROP TABLE {table}")).await.expect("drop table");
}
