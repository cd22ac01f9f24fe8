//! The consumer with the PostgreSQL and MySQL checkpoint stores, against kinesalite (all started or checked by
//! `cargo xtask integration`): a restarted consumer with a new store instance resumes after the checkpoints the first
//! one flushed.

use std::sync::Arc;
use std::time::Duration;

use kc_integration::{
    create_stream, kinesis, mysql_url, postgres_url, put_numbered, unique_stream, unique_table, wait_for, Seen,
};
use kinesis_consumer::mysql::MySqlStore;
use kinesis_consumer::postgres::PostgresStore;
use kinesis_consumer::{CheckpointStore, Consumer, Error, InitialPosition, Outcome, Record};

const WAIT: Duration = Duration::from_secs(60);

/// Scans `stream` with `store` until `want` records were seen, waits a little for duplicates, cancels.
async fn scan_until(stream: &str, store: impl CheckpointStore + 'static, want: usize) -> (Seen, Result<(), Error>) {
    let consumer = Consumer::builder(stream)
        .client(kinesis().await)
        .store(store)
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .scan_interval(Duration::from_millis(50))
        .discovery_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("build consumer");
    let seen = Seen::default();
    let s = seen.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let s = s.clone();
                async move {
                    s.push(&r);
                    Ok::<_, std::io::Error>(Outcome::Checkpoint)
                }
            })
            .await
    });
    wait_for(&format!("{want} records"), WAIT, || seen.len() >= want || task.is_finished()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await.expect("scan stops promptly").expect("task");
    (seen, result)
}

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
    let (seen, result) = scan_until(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    // A new process: a new store instance on the same table.
    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(PostgresStore::connect(&url, &table).await.expect("connect"));
    let (seen, result) = scan_until(&stream, store.clone(), second.len()).await;
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
    let (seen, result) = scan_until(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(MySqlStore::connect(&url, &table).await.expect("connect"));
    let (seen, result) = scan_until(&stream, store.clone(), second.len()).await;
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
