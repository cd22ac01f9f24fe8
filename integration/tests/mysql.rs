//! The MySQL/MariaDB checkpoint store against a real server (`DATABASE_URL_MYSQL`, passed by `cargo xtask
//! integration`).

use std::time::Duration;

use kc_integration::{mysql_url, unique_table, CutProxy};
use kinesis_consumer::checkpoint::{Checkpoint, CheckpointStore, ErrorKind, SequenceNumber, ShardKey};
use kinesis_consumer::mysql::{MySqlStore, MAX_SEQUENCE_DIGITS};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

/// A 56-digit sequence number, as real ones are.
const BIG: &str = "49590338271490256608559692538361571095921575989136588898";

fn seq(s: &str) -> SequenceNumber {
    SequenceNumber::parse(s).expect("valid sequence number")
}

fn at(s: &str) -> Checkpoint {
    Checkpoint::at(seq(s))
}

fn at_sub(s: &str, sub: u64) -> Checkpoint {
    Checkpoint::at_sub(seq(s), sub)
}

fn key(shard: &str) -> ShardKey {
    ShardKey::new("it-app", "it-stream", shard)
}

async fn pool_to(url: &str) -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MySQL at {url} (DATABASE_URL_MYSQL): {e}"))
}

async fn pool() -> MySqlPool {
    pool_to(&mysql_url()).await
}

/// A store on a new table of its own (created with `create_table_if_missing`).
async fn new_table(prefix: &str) -> (MySqlPool, String, MySqlStore) {
    let pool = pool().await;
    let table = unique_table(prefix);
    let store = MySqlStore::new(pool.clone(), &table).expect("valid table name");
    store.create_table_if_missing().await.expect("create table");
    (pool, table, store)
}

async fn drop_table(pool: &MySqlPool, table: &str) {
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(pool).await.expect("drop table");
}

/// What the database holds (read by a fresh store, so nothing pending in memory can answer).
async fn stored(pool: &MySqlPool, table: &str, key: &ShardKey) -> Option<Checkpoint> {
    let reader = MySqlStore::new(pool.clone(), table).expect("valid table name");
    reader.get(key).await.expect("get")
}

/// Writes `checkpoint` through a store of its own (a separate "process"), and flushes it.
async fn write_alone(pool: &MySqlPool, table: &str, key: &ShardKey, checkpoint: Checkpoint) {
    let writer = MySqlStore::new(pool.clone(), table).expect("valid table name");
    writer.set(key, checkpoint).await.expect("set");
    writer.shutdown().await.expect("flush");
}

#[tokio::test]
async fn round_trip_restart_and_double_shutdown() {
    let (pool, table, store) = new_table("kc_my_roundtrip").await;
    let (k0, k1) = (key("shardId-0"), key("shardId-1"));
    assert_eq!(store.get(&k0).await.expect("get"), None, "no row: Ok(None)");

    store.set(&k0, at(BIG)).await.expect("set");
    store.set(&k1, at_sub(BIG, 3)).await.expect("set");
    assert_eq!(store.get(&k0).await.expect("get"), Some(at(BIG)), "pending checkpoints are read back");
    assert_eq!(stored(&pool, &table, &k0).await, None, "nothing written before a flush");
    store.flush().await.expect("flush");
    store.shutdown().await.expect("shutdown");
    store.shutdown().await.expect("second shutdown is a no-op");
    assert_eq!(store.set(&k0, at("1")).await.expect_err("set after shutdown").kind(), ErrorKind::Permanent);

    // A new instance (a restarted process) reads what the first one flushed.
    let restarted = MySqlStore::connect(&mysql_url(), &table).await.expect("connect");
    assert_eq!(restarted.get(&k0).await.expect("get"), Some(at(BIG)));
    assert_eq!(restarted.get(&k1).await.expect("get"), Some(at_sub(BIG, 3)));
    assert_eq!(restarted.get(&key("shardId-2")).await.expect("get"), None);
    let other_app = ShardKey::new("other-app", "it-stream", "shardId-0");
    assert_eq!(restarted.get(&other_app).await.expect("get"), None, "namespaced by app and stream");

    // The namespace column is `{app}-{stream}`, as the Go library writes it.
    let (ns, seq_text): (String, String) = sqlx::query_as(&format!(
        "SELECT namespace, CAST(sequence_number AS CHAR) FROM {table} WHERE shard_id = 'shardId-0'"
    ))
    .fetch_one(&pool)
    .await
    .expect("select");
    assert_eq!((ns.as_str(), seq_text.as_str()), ("it-app-it-stream", BIG));
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn background_flush() {
    let pool = pool().await;
    let table = unique_table("kc_my_background");
    let store = MySqlStore::builder(pool.clone(), &table)
        .flush_interval(Duration::from_millis(100))
        .build()
        .expect("valid options");
    store.create_table_if_missing().await.expect("create table");
    store.set(&key("s"), at("42")).await.expect("set");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&pool, &table, &key("s")).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the background task did not flush within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored(&pool, &table, &key("s")).await, Some(at("42")));
    store.shutdown().await.expect("shutdown");
    let zero = MySqlStore::builder(pool.clone(), &table).flush_interval(Duration::ZERO).build();
    assert_eq!(zero.expect_err("zero interval").kind(), ErrorKind::InvalidInput);
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn never_moves_backwards_in_the_database() {
    let (pool, table, _store) = new_table("kc_my_monotonic").await;
    let k = key("shardId-0");
    let big_plus_one = "49590338271490256608559692538361571095921575989136588899";
    let digits_57 = "100000000000000000000000000000000000000000000000000000000";
    // Each write comes from a separate store instance, so only the database can refuse older ones.
    let steps = [
        (at("9"), at("9")),
        (at("10"), at("10")), // "10" < "9" as strings
        (at("9"), at("10")),
        (at(BIG), at(BIG)),
        (at("99999999999999999999999999999999999999999999999999999"), at(BIG)),
        (at_sub(big_plus_one, 5), at_sub(big_plus_one, 5)),
        (at_sub(big_plus_one, 4), at_sub(big_plus_one, 5)),
        (at_sub(big_plus_one, 10), at_sub(big_plus_one, 10)), // 10 > 5 as numbers
        (at(big_plus_one), at(big_plus_one)),                 // the whole record is after its sub-records
        (at_sub(big_plus_one, 99), at(big_plus_one)),
        (at(BIG), at(big_plus_one)),
        (at(digits_57), at(digits_57)), // 57 digits > 56 digits although "1..." < "4..." as strings
        (at(big_plus_one), at(digits_57)),
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
        (at(&"9".repeat(MAX_SEQUENCE_DIGITS)), Checkpoint::ShardEnd),
        (Checkpoint::ShardEnd, Checkpoint::ShardEnd),
    ];
    for (write, want) in steps {
        write_alone(&pool, &table, &k, write.clone()).await;
        assert_eq!(stored(&pool, &table, &k).await, Some(want), "after writing {write:?}");
    }
    // The shard-end row keeps the last position for readers of the old schema.
    let (seq_text, finished): (String, bool) =
        sqlx::query_as(&format!("SELECT CAST(sequence_number AS CHAR), finished FROM {table}"))
            .fetch_one(&pool)
            .await
            .expect("select");
    assert_eq!((seq_text.as_str(), finished), (digits_57, true));
    // A shard end with no earlier row.
    write_alone(&pool, &table, &key("shardId-1"), Checkpoint::ShardEnd).await;
    assert_eq!(stored(&pool, &table, &key("shardId-1")).await, Some(Checkpoint::ShardEnd));
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn concurrent_flushes_keep_the_max() {
    let (pool, table, _store) = new_table("kc_my_concurrent").await;
    let a = MySqlStore::new(pool.clone(), &table).expect("valid table name");
    let b = MySqlStore::new(pool.clone(), &table).expect("valid table name");
    let keys = [key("shardId-0"), key("shardId-1"), key("shardId-2")];
    let base: u128 = 49590338271490256608559692538361; // 32 digits; the sequence numbers are 56 digits long
    let position = |i: u128| at(&format!("{}{:024}", base, i));
    let mut max = 0;
    for i in 0..150u128 {
        // Interleaved, increasing positions: a writes even ones, b odd ones; every other round b is a step behind.
        let (pa, pb) = if i % 2 == 0 { (2 * i, 2 * i + 1) } else { (2 * i + 1, 2 * i - 2) };
        max = max.max(pa).max(pb);
        for k in &keys {
            a.set(k, position(pa)).await.expect("set");
            b.set(k, position(pb)).await.expect("set");
        }
        let (ra, rb) = tokio::join!(a.flush(), b.flush());
        ra.expect("flush a");
        rb.expect("flush b");
        for k in &keys {
            assert_eq!(stored(&pool, &table, k).await, Some(position(max)), "round {i}");
        }
    }
    // An older write arriving late (a slow process) is ignored.
    write_alone(&pool, &table, &keys[0], position(3)).await;
    assert_eq!(stored(&pool, &table, &keys[0]).await, Some(position(max)));
    a.shutdown().await.expect("shutdown");
    b.shutdown().await.expect("shutdown");
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn one_row_per_shard() {
    let (pool, table, store) = new_table("kc_my_rows").await;
    let keys = [key("shardId-0"), key("shardId-1"), key("shardId-2")];
    for i in 0..1000u64 {
        store.set(&keys[(i % 3) as usize], at(&(1_000_000 + i).to_string())).await.expect("set");
    }
    store.flush().await.expect("flush");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT CAST(count(*) AS SIGNED) FROM {table}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 3);
    assert_eq!(stored(&pool, &table, &keys[0]).await, Some(at("1000999")));
    assert_eq!(stored(&pool, &table, &keys[1]).await, Some(at("1000997")));
    assert_eq!(stored(&pool, &table, &keys[2]).await, Some(at("1000998")));
    store.flush().await.expect("nothing pending: no-op");
    store.shutdown().await.expect("shutdown");
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn invalid_table_names_are_rejected() {
    let pool = pool().await;
    for bad in ["x; DROP TABLE y", "\"t\"", "a b", "", "tåble", &"t".repeat(64)] {
        let err = MySqlStore::new(pool.clone(), bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        let err = MySqlStore::connect(&mysql_url(), bad).await.expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
    }
}

#[tokio::test]
async fn missing_table_is_a_permanent_error_until_created() {
    let pool = pool().await;
    let table = unique_table("kc_my_missing");
    let store = MySqlStore::new(pool.clone(), &table).expect("valid table name");
    let k = key("shardId-0");
    let err = store.get(&k).await.expect_err("no table");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let message = err.to_string();
    assert!(message.contains(&table) && message.contains("create_table_if_missing"), "{message}");
    assert!(std::error::Error::source(&err).is_some(), "the sqlx error is the source");

    store.set(&k, at("7")).await.expect("set is buffered");
    assert_eq!(store.flush().await.expect_err("no table").kind(), ErrorKind::Permanent);
    store.create_table_if_missing().await.expect("create table");
    store.create_table_if_missing().await.expect("second call is a no-op");
    store.flush().await.expect("the pending checkpoint was kept, and is written now");
    assert_eq!(stored(&pool, &table, &k).await, Some(at("7")));
    store.shutdown().await.expect("shutdown");
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn go_library_table_needs_the_documented_alters() {
    let pool = pool().await;
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
    assert_eq!(stored(&pool, &table, &key("shardId-0")).await, Some(at(BIG)), "older than the Go checkpoint");
    drop_table(&pool, &table).await;
}

#[tokio::test]
async fn server_unavailable_during_flush_keeps_checkpoints_pending() {
    let direct = pool().await;
    let table = unique_table("kc_my_unavailable");
    let url = mysql_url();
    let authority = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("host:port in the URL");
    let proxy = CutProxy::start(authority).await.expect("proxy");
    let proxied_url = url.replacen(authority, &proxy.addr().to_string(), 1);
    let proxied = MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&proxied_url)
        .await
        .expect("connect through the proxy");
    let store = MySqlStore::new(proxied, &table).expect("valid table name");
    store.create_table_if_missing().await.expect("create table");
    let k = key("shardId-0");

    store.set(&k, at(BIG)).await.expect("set");
    proxy.cut();
    let err = store.flush().await.expect_err("server unreachable");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}: {:?}", std::error::Error::source(&err));
    assert_eq!(stored(&direct, &table, &k).await, None, "nothing written");
    assert_eq!(store.get(&k).await.map_err(|e| e.kind()), Err(ErrorKind::Transient), "reads fail, not Ok(None)");

    proxy.restore();
    store.flush().await.expect("flush after the server is back");
    assert_eq!(stored(&direct, &table, &k).await, Some(at(BIG)), "the pending checkpoint was kept and written");
    store.shutdown().await.expect("shutdown");
    drop_table(&direct, &table).await;
}

#[tokio::test]
async fn sequence_numbers_longer_than_the_column_are_refused() {
    let (pool, table, store) = new_table("kc_my_digits").await;
    let k = key("shardId-0");
    let longest = "9".repeat(MAX_SEQUENCE_DIGITS);
    let err = store.set(&k, at(&"1".repeat(MAX_SEQUENCE_DIGITS + 1))).await.expect_err("66 digits");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    store.set(&k, at_sub(&longest, u64::MAX)).await.expect("65 digits and the largest sub-sequence fit");
    store.flush().await.expect("flush");
    assert_eq!(stored(&pool, &table, &k).await, Some(at_sub(&longest, u64::MAX)));
    store.shutdown().await.expect("shutdown");
    drop_table(&pool, &table).await;
}

/// A background flush that fails for good (the table was dropped while running) is reported by the next `set`, so
/// a consumer stops instead of running on while nothing is saved; once the table is back, a flush clears it.
#[tokio::test]
async fn permanent_background_flush_failure_is_reported_by_the_next_set() {
    let pool = pool().await;
    let table = unique_table("kc_my_bgfail");
    let store = MySqlStore::builder(pool.clone(), &table)
        .flush_interval(Duration::from_millis(100))
        .build()
        .expect("valid options");
    store.create_table_if_missing().await.expect("create table");
    store.set(&key("s"), at("1")).await.expect("set");
    // Written now, so no background flush can be waiting on the DROP's lock and fail before the next line.
    store.flush().await.expect("flush");
    drop_table(&pool, &table).await;
    store.set(&key("s"), at("2")).await.expect("nothing failed yet");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match store.set(&key("s"), at("3")).await {
            Err(e) => break e,
            Ok(()) => {
                assert!(tokio::time::Instant::now() < deadline, "set never reported the failed background flush");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("background flush"), "{err}");
    store.create_table_if_missing().await.expect("table back");
    store.flush().await.expect("the pending checkpoint is written now");
    store.set(&key("s"), at("4")).await.expect("set works again");
    store.shutdown().await.expect("shutdown");
    assert_eq!(stored(&pool, &table, &key("s")).await, Some(at("4")));
    drop_table(&pool, &table).await;
}
