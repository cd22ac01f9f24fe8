//! The lease tables of consumer groups against real servers: the conformance suite (`kc_integration::lease_suite`)
//! on every backend, and each backend's failures (bad table name, missing table, server cut off).

use std::sync::Arc;
use std::time::Duration;

use kc_integration::lease_suite;
use kc_integration::{postgres_url, unique_table, CutProxy};
use kinesis_consumer::checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
use kinesis_consumer::checkpoint::{Error, ErrorKind};
use kinesis_consumer::postgres::PostgresLeaseTable;
use sqlx::postgres::{PgPool, PgPoolOptions};

fn kind<T: std::fmt::Debug>(result: Result<T, Error>) -> ErrorKind {
    match result {
        Ok(v) => panic!("want an error, got Ok({v:?})"),
        Err(e) => {
            eprintln!("  error as expected: {:?}: {e} (source: {:?})", e.kind(), std::error::Error::source(&e));
            e.kind()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_table_conforms() {
    lease_suite::run(Arc::new(MemoryLeaseTable::new()), "memory").await;
}

// ---------------------------------------------------------------------------------------------------------------
// PostgreSQL

async fn pg_pool(url: &str, connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .expect("connect to PostgreSQL")
}

async fn pg_drop(pool: &PgPool, table: &str) {
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(pool).await.expect("drop table");
}

/// `url` with its `host:port` replaced by the proxy's, and the proxy.
async fn proxied(url: &str) -> (String, CutProxy) {
    let authority = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("host:port in the URL");
    let proxy = CutProxy::start(authority).await.expect("proxy");
    (url.replacen(authority, &proxy.addr().to_string(), 1), proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_table_conforms() {
    let pool = pg_pool(&postgres_url(), 10).await;
    let table = unique_table("kc_pg_leases");
    let leases = PostgresLeaseTable::new(pool.clone(), &table).expect("valid table name");
    leases.create_table_if_missing().await.expect("create table");
    leases.create_table_if_missing().await.expect("create table again is a no-op");
    lease_suite::run(Arc::new(leases), "postgres").await;
    pg_drop(&pool, &table).await;
}

#[tokio::test]
async fn postgres_table_name_with_sql_is_invalid_input() {
    let pool = pg_pool(&postgres_url(), 1).await;
    for name in ["x; DROP TABLE y", "leases--", "a.b.c", "\"quoted\"", ""] {
        assert_eq!(kind(PostgresLeaseTable::new(pool.clone(), name)), ErrorKind::InvalidInput, "{name:?}");
        assert_eq!(kind(PostgresLeaseTable::connect(&postgres_url(), name).await), ErrorKind::InvalidInput, "{name:?}");
    }
}

#[tokio::test]
async fn postgres_missing_table_is_permanent_until_created() {
    let table = unique_table("kc_pg_leases_missing");
    let leases = PostgresLeaseTable::connect(&postgres_url(), &table).await.expect("connect");
    let s = LeaseScope::new("g", "s");
    assert_eq!(kind(leases.list(&s).await), ErrorKind::Permanent);
    assert_eq!(kind(leases.get(&s, "shard").await), ErrorKind::Permanent);
    assert_eq!(kind(leases.create(&s, "shard", &[]).await), ErrorKind::Permanent);
    assert_eq!(kind(leases.renew(&s, "shard", "w", 0).await), ErrorKind::Permanent, "not Fenced: no table");
    let err = leases.take(&s, "shard", 0, "w").await.expect_err("no table");
    assert!(err.to_string().contains("create_table_if_missing"), "the message says how to fix it: {err}");
    leases.create_table_if_missing().await.expect("create table");
    assert!(leases.create(&s, "shard", &[]).await.expect("create lease"));
    assert_eq!(leases.take(&s, "shard", 0, "w").await.expect("take").counter, 1);
    pg_drop(leases.pool(), &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_is_transient_not_fenced_and_restore_works() {
    let url = postgres_url();
    let table = unique_table("kc_pg_leases_cut");
    let direct = PostgresLeaseTable::new(pg_pool(&url, 2).await, &table).expect("table");
    direct.create_table_if_missing().await.expect("create table");
    let (proxied_url, proxy) = proxied(&url).await;
    let leases = PostgresLeaseTable::new(pg_pool(&proxied_url, 2).await, &table).expect("table");
    let s = LeaseScope::new("g", "s");
    leases.create(&s, "shard", &[]).await.expect("create");
    let c = leases.take(&s, "shard", 0, "w1").await.expect("take").counter;

    proxy.cut();
    assert_eq!(kind(leases.renew(&s, "shard", "w1", c).await), ErrorKind::Transient, "renew while cut");
    assert_eq!(kind(leases.take(&s, "shard", c, "w1").await), ErrorKind::Transient, "take while cut");
    assert_eq!(kind(leases.get(&s, "shard").await), ErrorKind::Transient, "get while cut: an error, not None");
    assert_eq!(kind(leases.list(&s).await), ErrorKind::Transient, "list while cut");
    assert_eq!(direct.get(&s, "shard").await.expect("get").map(|l| l.counter), Some(c), "nothing was written");

    proxy.restore();
    let c = leases.renew(&s, "shard", "w1", c).await.expect("renew after restore");
    assert_eq!(leases.get(&s, "shard").await.expect("get").map(|l| l.counter), Some(c));
    pg_drop(direct.pool(), &table).await;
}

/// A renewal that the server applies after its client's connection was cut: the caller sees `Transient` (it cannot
/// know whether the write happened), never `Fenced`, and the table did not retry it (a retry would have been
/// refused by its own write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_write_applied_after_the_cut_is_transient() {
    let url = postgres_url();
    let table = unique_table("kc_pg_leases_inflight");
    let direct_pool = pg_pool(&url, 3).await;
    let direct = PostgresLeaseTable::new(direct_pool.clone(), &table).expect("table");
    direct.create_table_if_missing().await.expect("create table");
    let s = LeaseScope::new("g", "s");
    direct.create(&s, "shard", &[]).await.expect("create");
    let c = direct.take(&s, "shard", 0, "w1").await.expect("take").counter;
    let (proxied_url, proxy) = proxied(&url).await;
    let leases = PostgresLeaseTable::new(pg_pool(&proxied_url, 1).await, &table).expect("table");

    // Hold the row lock so that the renewal waits inside the server.
    let mut lock = direct_pool.begin().await.expect("begin");
    sqlx::query(&format!("SELECT 1 FROM {table} WHERE shard_id = 'shard' FOR UPDATE"))
        .execute(&mut *lock)
        .await
        .expect("lock the row");
    let renewal = tokio::spawn(async move { leases.renew(&s, "shard", "w1", c).await });
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE {table} %'"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (n,): (i64,) = sqlx::query_as(&waiting).fetch_one(&direct_pool).await.expect("pg_stat_activity");
        if n == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewal never waited for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut();
    let result = renewal.await.expect("renewal task");
    assert_eq!(kind(result), ErrorKind::Transient, "a write in flight when the connection broke");
    lock.commit().await.expect("release the row lock");
    let s = LeaseScope::new("g", "s");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = direct.get(&s, "shard").await.expect("get").expect("lease").counter;
        if now == c + 1 {
            break;
        }
        assert_eq!(now, c, "only the cut renewal writes this lease");
        assert!(std::time::Instant::now() < deadline, "the server never applied the cut renewal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the renewal was applied by the server although its caller got a Transient error");
    proxy.restore();
    pg_drop(&direct_pool, &table).await;
}
