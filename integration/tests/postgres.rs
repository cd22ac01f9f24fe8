//! The PostgreSQL checkpoint store against a real server (`DATABASE_URL_POSTGRES`, passed by `cargo xtask
//! integration`): the conformance suite (`kc_checkpoint::test_util::store_suite`), then what only PostgreSQL has
//! (the Go library's row layout, the documented migration of a Go table, `checkpoint_in_tx`, the server cut off).

use std::str::FromStr;
use std::time::Duration;

use kc_checkpoint::test_util::store_suite::{self, Capabilities};
use kc_integration::sql::{self, at, at_sub, drop_table, key, new_table, pool, stored, SuiteBackend, BIG};
use kc_integration::{postgres_url, unique_table};
use kinesis_consumer::checkpoint::{Checkpoint, CheckpointStore, ErrorKind, ShardKey};
use kinesis_consumer::postgres::PostgresStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The store under test (see `kc_integration::sql` for what both SQL stores' tests share).
type Store = PostgresStore;

fn capabilities() -> Capabilities {
    sql::postgres_capabilities()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let backend = SuiteBackend::<Store> {
        pool: pool::<Store>().await,
        prefix: "kc_pg_suite",
        capabilities: capabilities(),
        invalid_table_names: ["x; DROP TABLE y", "\"t\"", "a b", "", "tåble", "a.b.c", &"t".repeat(64)]
            .map(String::from)
            .to_vec(),
    };
    store_suite::run(backend, "postgres").await;
}

/// The table the Go library reads: one row per shard, namespace `{app}-{stream}`, the sequence number as a numeric;
/// a shard-end row keeps the last position (`finished` set). The store buffers until a flush, `shutdown` is
/// idempotent and `set` fails after it; a store made by `connect` (a restarted process) reads what was flushed.
#[tokio::test]
async fn rows_follow_the_go_layout_and_shutdown_ends_the_store() {
    let (pool, table, _) = new_table::<Store>("kc_pg_layout").await;
    // An hour: only the flushes below write.
    let store = PostgresStore::builder(pool.clone(), &table)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .expect("valid options");
    let keys = [key("shardId-0"), key("shardId-1"), key("shardId-2")];
    for i in 0..1000u64 {
        store.set(&keys[(i % 3) as usize], at(&(1_000_000 + i).to_string())).await.expect("set");
    }
    store.set(&keys[0], at(BIG)).await.expect("set");
    store.set(&keys[1], at_sub(BIG, 3)).await.expect("set");
    assert_eq!(stored::<Store>(&pool, &table, &keys[0]).await, None, "nothing written before a flush");
    store.flush().await.expect("flush");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&pool).await.expect("count");
    assert_eq!(rows, 3, "one row per shard");

    let (ns, seq_text): (String, String) =
        sqlx::query_as(&format!("SELECT namespace, sequence_number::text FROM {table} WHERE shard_id = 'shardId-0'"))
            .fetch_one(&pool)
            .await
            .expect("select");
    assert_eq!((ns.as_str(), seq_text.as_str()), ("it-app-it-stream", BIG));

    let digits_57 = format!("1{}", "0".repeat(56));
    store.set(&keys[2], at(&digits_57)).await.expect("set");
    store.flush().await.expect("flush");
    store.set(&keys[2], Checkpoint::ShardEnd).await.expect("set");
    store.shutdown().await.expect("shutdown flushes");
    store.shutdown().await.expect("second shutdown is a no-op");
    assert_eq!(store.set(&keys[0], at("1")).await.expect_err("set after shutdown").kind(), ErrorKind::Permanent);
    let (seq_text, finished): (String, bool) =
        sqlx::query_as(&format!("SELECT sequence_number::text, finished FROM {table} WHERE shard_id = 'shardId-2'"))
            .fetch_one(&pool)
            .await
            .expect("select");
    assert_eq!((seq_text.as_str(), finished), (digits_57.as_str(), true), "the last position is kept at shard end");

    let restarted = PostgresStore::connect(&postgres_url(), &table).await.expect("connect");
    assert_eq!(restarted.get(&keys[0]).await.expect("get"), Some(at(BIG)));
    assert_eq!(restarted.get(&keys[1]).await.expect("get"), Some(at_sub(BIG, 3)));
    assert_eq!(restarted.get(&keys[2]).await.expect("get"), Some(Checkpoint::ShardEnd));
    let zero = PostgresStore::builder(pool.clone(), &table).flush_interval(Duration::ZERO).build();
    assert_eq!(zero.expect_err("zero interval").kind(), ErrorKind::InvalidInput);
    drop_table::<Store>(&pool, &table).await;
}

/// The error of a missing table names it and says how to fix it, with the sqlx error as its source.
#[tokio::test]
async fn missing_table_error_says_how_to_fix_it() {
    let pool = pool::<Store>().await;
    let table = unique_table("kc_pg_missing");
    let store = PostgresStore::new(pool.clone(), &table).expect("valid table name");
    let err = store.get(&key("shardId-0")).await.expect_err("no table");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let message = err.to_string();
    assert!(message.contains(&table) && message.contains("create_table_if_missing"), "{message}");
    assert!(std::error::Error::source(&err).is_some(), "the sqlx error is the source");
}

#[tokio::test]
async fn go_library_table_needs_the_documented_alters() {
    let pool = pool::<Store>().await;
    let table = unique_table("kc_pg_gotable");
    // The Go README's DDL, with a checkpoint the Go library wrote.
    sqlx::query(&format!(
        "CREATE TABLE {table} (namespace text NOT NULL, shard_id text NOT NULL, sequence_number numeric NOT NULL, \
         CONSTRAINT {table}_pk PRIMARY KEY (namespace, shard_id))"
    ))
    .execute(&pool)
    .await
    .expect("create Go table");
    sqlx::query(&format!("INSERT INTO {table} VALUES ('it-app-it-stream', 'shardId-0', {BIG})"))
        .execute(&pool)
        .await
        .expect("insert");
    let store = PostgresStore::new(pool.clone(), &table).expect("valid table name");
    let err = store.get(&key("shardId-0")).await.expect_err("old schema");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("sub_sequence_number and finished"), "{err}");

    // The migration from the crate docs.
    for alter in [
        "ALTER TABLE {t} ADD COLUMN sub_sequence_number bigint NULL",
        "ALTER TABLE {t} ADD COLUMN finished boolean NOT NULL DEFAULT false",
    ] {
        sqlx::query(&alter.replace("{t}", &table)).execute(&pool).await.expect("alter");
    }
    assert_eq!(store.get(&key("shardId-0")).await.expect("get"), Some(at(BIG)), "the Go checkpoint is kept");
    store.set(&key("shardId-0"), at("10")).await.expect("set");
    store.shutdown().await.expect("flush");
    assert_eq!(stored::<Store>(&pool, &table, &key("shardId-0")).await, Some(at(BIG)), "older than the Go checkpoint");
    drop_table::<Store>(&pool, &table).await;
}

#[tokio::test]
async fn server_unavailable_during_flush_keeps_checkpoints_pending() {
    sql::server_unavailable_during_flush_keeps_checkpoints_pending::<Store>("kc_pg_unavailable").await;
}

/// A handler that writes its own row and the record's checkpoint in one transaction. `crash` plays a process that
/// dies before the commit.
async fn handle_in_tx(store: &PostgresStore, events: &str, k: &ShardKey, record: &Checkpoint, crash: bool) {
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query(&format!("INSERT INTO {events} (payload) VALUES ($1)"))
        .bind("hello")
        .execute(&mut *tx)
        .await
        .expect("insert event");
    store.checkpoint_in_tx(&mut tx, k, record).await.expect("checkpoint in tx");
    if crash {
        drop(tx); // rolled back
    } else {
        tx.commit().await.expect("commit");
    }
}

#[tokio::test]
async fn transactional_checkpoint_commits_with_the_handler_rows() {
    let (pool, table, store) = new_table::<Store>("kc_pg_tx").await;
    let events = format!("{table}_events");
    sqlx::query(&format!("CREATE TABLE {events} (id bigserial PRIMARY KEY, payload text NOT NULL)"))
        .execute(&pool)
        .await
        .expect("create events table");
    let count = || async {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM {events}")).fetch_one(&pool).await.expect("count");
        n
    };
    let k = key("shardId-0");
    let record = at_sub(BIG, 2);

    handle_in_tx(&store, &events, &k, &record, true).await;
    assert_eq!((count().await, stored::<Store>(&pool, &table, &k).await), (0, None), "a crash leaves neither");

    // Redelivered after the crash: the consumer would resume before the record, since nothing was checkpointed.
    handle_in_tx(&store, &events, &k, &record, false).await;
    assert_eq!((count().await, stored::<Store>(&pool, &table, &k).await), (1, Some(record.clone())), "both, once");

    // The consumer also `set`s the same position (Outcome::Checkpoint), and an older one arrives late: harmless.
    store.set(&k, record.clone()).await.expect("set");
    store.set(&k, at_sub(BIG, 1)).await.expect("set");
    store.flush().await.expect("flush");
    let mut tx = store.pool().begin().await.expect("begin");
    store.checkpoint_in_tx(&mut tx, &k, &at("1")).await.expect("older checkpoint in tx is a no-op");
    tx.commit().await.expect("commit");
    assert_eq!((count().await, stored::<Store>(&pool, &table, &k).await), (1, Some(record)));

    store.shutdown().await.expect("shutdown");
    drop_table::<Store>(&pool, &events).await;
    drop_table::<Store>(&pool, &table).await;
}

/// A failover: sessions that refuse writes (`default_transaction_read_only`, SQLSTATE 25006) are `Transient`.
#[tokio::test]
async fn read_only_sessions_are_transient() {
    let options =
        PgConnectOptions::from_str(&postgres_url()).expect("url").options([("default_transaction_read_only", "on")]);
    let read_only = PgPoolOptions::new().max_connections(2).connect_with(options).await.expect("pool");
    sql::read_only_sessions_are_transient::<Store>("kc_pg_read_only", read_only).await;
}

/// A statement cancelled (SQLSTATE 57014: a statement timeout here; an operator or a failover elsewhere) is
/// `Transient`: the flush fails, the checkpoint stays pending, the next flush writes it.
#[tokio::test]
async fn a_cancelled_statement_is_transient() {
    let (direct, table, _) = new_table::<Store>("kc_pg_cancelled").await;
    let options = PgConnectOptions::from_str(&postgres_url()).expect("url").options([("statement_timeout", "300")]);
    let timed = PgPoolOptions::new().max_connections(2).connect_with(options).await.expect("pool");
    let store = Store::new(timed, &table).expect("valid table name");
    let k = key("shardId-0");
    store.set(&k, at(BIG)).await.expect("set");
    // Another session holds the table: the upsert waits, and is cancelled after 300 ms.
    let mut lock = direct.begin().await.expect("begin");
    sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).execute(&mut *lock).await.expect("lock");
    let err = store.flush().await.expect_err("cancelled");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}: {source:?}");
    assert!(source.is_some_and(|s| s.contains("statement timeout")), "{err}");
    lock.rollback().await.expect("unlock");
    store.flush().await.expect("the next flush writes it");
    assert_eq!(stored::<Store>(&direct, &table, &k).await, Some(at(BIG)));
    drop_table::<Store>(&direct, &table).await;
}
