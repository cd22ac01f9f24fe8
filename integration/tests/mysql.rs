//! The MySQL/MariaDB checkpoint store against a real server (`DATABASE_URL_MYSQL`, passed by `cargo xtask
//! integration`): the conformance suite (`kc_checkpoint::test_util::store_suite`), then what only MySQL has (the Go
//! library's row layout, the documented migration of a Go table, the server cut off).

use std::time::Duration;

use kc_checkpoint::test_util::store_suite::{self, Capabilities};
use kc_integration::sql::{self, at, at_sub, drop_table, key, new_table, pool, stored, SuiteBackend, BIG};
use kc_integration::{mysql_url, unique_table};
use kinesis_consumer::checkpoint::{Checkpoint, CheckpointStore, ErrorKind};
use kinesis_consumer::mysql::MySqlStore;
use sqlx::mysql::MySqlPoolOptions;

/// The store under test (see `kc_integration::sql` for what both SQL stores' tests share).
type Store = MySqlStore;

fn capabilities() -> Capabilities {
    sql::mysql_capabilities()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_store_conforms() {
    let backend = SuiteBackend::<Store> {
        pool: pool::<Store>().await,
        prefix: "kc_my_suite",
        capabilities: capabilities(),
        invalid_table_names: ["x; DROP TABLE y", "`t`", "\"t\"", "a b", "", "tåble", "a.b.c", &"t".repeat(64)]
            .map(String::from)
            .to_vec(),
    };
    store_suite::run(backend, "mysql").await;
}

/// The table the Go library reads: one row per shard, namespace `{app}-{stream}`, the sequence number as a numeric;
/// a shard-end row keeps the last position (`finished` set). The store buffers until a flush, `shutdown` is
/// idempotent and `set` fails after it; a store made by `connect` (a restarted process) reads what was flushed.
#[tokio::test]
async fn rows_follow_the_go_layout_and_shutdown_ends_the_store() {
    let (pool, table, _) = new_table::<Store>("kc_my_layout").await;
    // An hour: only the flushes below write.
    let store = MySqlStore::builder(pool.clone(), &table)
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
    let rows: i64 = sqlx::query_scalar(&format!("SELECT CAST(count(*) AS SIGNED) FROM {table}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 3, "one row per shard");

    let (ns, seq_text): (String, String) = sqlx::query_as(&format!(
        "SELECT namespace, CAST(sequence_number AS CHAR) FROM {table} WHERE shard_id = 'shardId-0'"
    ))
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
    let (seq_text, finished): (String, bool) = sqlx::query_as(&format!(
        "SELECT CAST(sequence_number AS CHAR), finished FROM {table} WHERE shard_id = 'shardId-2'"
    ))
    .fetch_one(&pool)
    .await
    .expect("select");
    assert_eq!((seq_text.as_str(), finished), (digits_57.as_str(), true), "the last position is kept at shard end");

    let restarted = MySqlStore::connect(&mysql_url(), &table).await.expect("connect");
    assert_eq!(restarted.get(&keys[0]).await.expect("get"), Some(at(BIG)));
    assert_eq!(restarted.get(&keys[1]).await.expect("get"), Some(at_sub(BIG, 3)));
    assert_eq!(restarted.get(&keys[2]).await.expect("get"), Some(Checkpoint::ShardEnd));
    let zero = MySqlStore::builder(pool.clone(), &table).flush_interval(Duration::ZERO).build();
    assert_eq!(zero.expect_err("zero interval").kind(), ErrorKind::InvalidInput);
    drop_table::<Store>(&pool, &table).await;
}

/// The error of a missing table names it and says how to fix it, with the sqlx error as its source.
#[tokio::test]
async fn missing_table_error_says_how_to_fix_it() {
    let pool = pool::<Store>().await;
    let table = unique_table("kc_my_missing");
    let store = MySqlStore::new(pool.clone(), &table).expect("valid table name");
    let err = store.get(&key("shardId-0")).await.expect_err("no table");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let message = err.to_string();
    assert!(message.contains(&table) && message.contains("create_table_if_missing"), "{message}");
    assert!(std::error::Error::source(&err).is_some(), "the sqlx error is the source");
}

#[tokio::test]
async fn go_library_table_needs_the_documented_alters() {
    let pool = pool::<Store>().await;
    let table = unique_table("kc_my_gotable");
    // The Go README's DDL, with a checkpoint the Go library wrote.
    sqlx::query(&format!(
        "CREATE TABLE {table} (namespace varchar(255) NOT NULL, shard_id varchar(255) NOT NULL, \
         sequence_number numeric(65,0) NOT NULL, CONSTRAINT {table}_pk PRIMARY KEY (namespace, shard_id))"
    ))
    .execute(&pool)
    .await
    .expect("create Go table");
    sqlx::query(&format!("INSERT INTO {table} VALUES ('it-app-it-stream', 'shardId-0', {BIG})"))
        .execute(&pool)
        .await
        .expect("insert");
    let store = MySqlStore::new(pool.clone(), &table).expect("valid table name");
    let err = store.get(&key("shardId-0")).await.expect_err("old schema");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("sub_sequence_number and finished"), "{err}");

    // The migration from the crate docs.
    for alter in ["ALTER TABLE {t} ADD COLUMN sub_sequence_number bigint unsigned NULL, \
         ADD COLUMN finished boolean NOT NULL DEFAULT false"]
    {
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
    sql::server_unavailable_during_flush_keeps_checkpoints_pending::<Store>("kc_my_unavailable").await;
}

/// A failover: sessions in read-only transactions (MariaDB/MySQL error 1792; 1290 and 1836 for a read-only server)
/// are `Transient`.
#[tokio::test]
async fn read_only_sessions_are_transient() {
    let read_only = MySqlPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move { sqlx::query("SET SESSION TRANSACTION READ ONLY").execute(conn).await.map(drop) })
        })
        .connect(&mysql_url())
        .await
        .expect("pool");
    sql::read_only_sessions_are_transient::<Store>("kc_my_read_only", read_only).await;
}

/// The tables of the version before streams could be named by ARN (narrower key columns, no `created_at_ms`), each
/// with a row, upgraded by 8 processes' `create_table_if_missing` at once (issue 17): every call succeeds, the columns
/// are widened keeping their collation and nullability, the rows stay, and keys of an ARN-named stream (a 128-character
/// name, with the suffix of a stream created again) fit. Three rounds, each on fresh old-shaped tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn old_tables_are_upgraded_by_many_callers_at_once_for_arn_keys() {
    use std::sync::Arc;

    use kc_integration::all_at_once;
    use kinesis_consumer::checkpoint::lease::{LeaseScope, LeaseTable};
    use kinesis_consumer::checkpoint::ShardKey;
    use kinesis_consumer::mysql::{MySqlDeadLetter, MySqlLeaseTable};
    use sqlx::Row;

    const CALLERS: usize = 8;
    let pool = MySqlPoolOptions::new()
        .max_connections(CALLERS as u32 * 3)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&mysql_url())
        .await
        .expect("pool");
    let run = |sql: String| {
        let pool = pool.clone();
        async move { sqlx::query(&sql).execute(&pool).await.unwrap_or_else(|e| panic!("{sql}: {e}")) }
    };
    // (column, length, nullable, collation) as the server reports them.
    let columns = |table: String| {
        let pool = pool.clone();
        async move {
            let rows = sqlx::query(
                "SELECT CAST(COLUMN_NAME AS CHAR), CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED), CAST(IS_NULLABLE AS CHAR), \
                 CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            )
            .bind(&table)
            .fetch_all(&pool)
            .await
            .expect("columns");
            rows.iter()
                .map(|r| {
                    let get = |i| r.try_get::<Option<String>, _>(i).expect("column").unwrap_or_default();
                    (get(0), r.try_get::<Option<i64>, _>(1).expect("length"), get(2), get(3))
                })
                .collect::<Vec<_>>()
        }
    };
    let stream_key =
        format!("arn:aws-us-gov:kinesis:us-gov-west-1:123456789012:stream/{}@1700000000000", "s".repeat(128));
    for _ in 0..3 {
        let (checkpoints, leases, dead_letters) =
            (unique_table("kc_my_old"), unique_table("kc_my_old_leases"), unique_table("kc_my_old_dl"));
        run(format!(
            "CREATE TABLE {checkpoints} (namespace varchar(255) NOT NULL, shard_id varchar(255) NOT NULL, \
             sequence_number numeric(65,0) NOT NULL, sub_sequence_number bigint unsigned NULL, \
             finished boolean NOT NULL DEFAULT false, CONSTRAINT {checkpoints}_pk PRIMARY KEY (namespace, shard_id))"
        ))
        .await;
        run(format!("INSERT INTO {checkpoints} (namespace, shard_id, sequence_number) VALUES ('it-app-it-stream', 'shardId-0', {BIG})")).await;
        run(format!(
            "CREATE TABLE {leases} (group_name varchar(255) NOT NULL, stream_name varchar(128) NOT NULL, \
             shard_id varchar(128) NOT NULL, owner varchar(255) NULL, counter bigint unsigned NOT NULL DEFAULT 0, \
             sequence_number numeric(65,0) NULL, sub_sequence_number bigint unsigned NULL, \
             finished boolean NOT NULL DEFAULT false, parents text NOT NULL, next_owner varchar(255) NULL, \
             PRIMARY KEY (group_name, stream_name, shard_id)) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        ))
        .await;
        run(format!(
            "INSERT INTO {leases} (group_name, stream_name, shard_id, parents) VALUES ('g', 's', 'shardId-0', '')"
        ))
        .await;
        run(format!(
            "CREATE TABLE {dead_letters} (id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, \
             stream_name varchar(128) NOT NULL, shard_id varchar(128) NOT NULL, sequence_number varchar(129) NOT NULL, \
             sub_sequence_number bigint unsigned NULL, partition_key varchar(256) NOT NULL, \
             explicit_hash_key varchar(128) NULL, data longblob NOT NULL, approximate_arrival_ms bigint NULL, \
             error text NOT NULL, attempts int unsigned NOT NULL, first_failure_ms bigint NOT NULL, \
             dead_lettered_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))"
        ))
        .await;

        let store = Arc::new(MySqlStore::new(pool.clone(), &checkpoints).expect("store"));
        let table = Arc::new(MySqlLeaseTable::new(pool.clone(), &leases).expect("leases"));
        let destination = Arc::new(MySqlDeadLetter::new(pool.clone(), &dead_letters).expect("dead letters"));
        // The three kinds at once too: 24 callers on three tables.
        let (a, b, c) = tokio::join!(
            all_at_once("MySqlStore upgrade", CALLERS, || {
                let store = Arc::clone(&store);
                async move { store.create_table_if_missing().await }
            }),
            all_at_once("MySqlLeaseTable upgrade", CALLERS, || {
                let table = Arc::clone(&table);
                async move { table.create_table_if_missing().await }
            }),
            all_at_once("MySqlDeadLetter upgrade", CALLERS, || {
                let destination = Arc::clone(&destination);
                async move { destination.create_table_if_missing().await }
            }),
        );
        let ((), (), ()) = (a, b, c);

        let widened = |cols: &[(String, Option<i64>, String, String)], name: &str| {
            cols.iter().find(|c| c.0 == name).cloned().unwrap_or_else(|| panic!("column {name}: {cols:?}"))
        };
        let cols = columns(checkpoints.clone()).await;
        assert_eq!(widened(&cols, "namespace").1, Some(512), "{cols:?}");
        assert_eq!(widened(&cols, "namespace").2, "NO");
        let cols = columns(leases.clone()).await;
        for name in ["stream_name", "shard_id"] {
            let (_, length, nullable, collation) = widened(&cols, name);
            assert_eq!((length, nullable.as_str(), collation.as_str()), (Some(256), "NO", "utf8mb4_bin"), "{name}");
        }
        assert!(cols.iter().any(|c| c.0 == "created_at_ms"), "created_at_ms added: {cols:?}");
        let cols = columns(dead_letters.clone()).await;
        assert_eq!(widened(&cols, "stream_name").1, Some(256), "{cols:?}");

        // The old rows are there, and ARN keys fit.
        let old = kinesis_consumer::ShardKey::new("it-app", "it-stream", "shardId-0");
        assert_eq!(store.get(&old).await.expect("old checkpoint"), Some(at(BIG)));
        let key = ShardKey::new("an-app-of-forty-characters-for-the-test", stream_key.as_str(), "shardId-000000000001");
        store.set(&key, at("42")).await.expect("set");
        store.flush().await.expect("flush an ARN key");
        assert_eq!(stored::<Store>(&pool, &checkpoints, &key).await, Some(at("42")));
        assert_eq!(table.list(&LeaseScope::new("g", "s")).await.expect("old lease").len(), 1);
        let scope = LeaseScope::new("g", stream_key.as_str());
        assert!(table.create(&scope, "shardId-000000000001", &[]).await.expect("lease of an ARN key"));
        let markers = LeaseScope::new("g", "#created");
        assert!(table.create(&markers, &stream_key, &["1700000000000".to_owned()]).await.expect("marker"));
        assert_eq!(table.get(&markers, &stream_key).await.expect("get").map(|l| l.shard_id), Some(stream_key.clone()));
        store.shutdown().await.expect("shutdown");
        for t in [&checkpoints, &leases, &dead_letters] {
            drop_table::<Store>(&pool, t).await;
        }
    }
}
