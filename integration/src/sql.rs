//! What `tests/postgres.rs` and `tests/mysql.rs` share: the checkpoints they write, and everything around a SQL
//! checkpoint store that is the same for both databases (a pool for the tests, a table of its own, reading back what
//! was flushed, and the conformance suite's [`StoreBackend`]). What differs is the [`SqlStore`] impl in each file.

use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::test_util::store_suite::{Capabilities, StoreBackend};
use kinesis_consumer::checkpoint::{Checkpoint, CheckpointStore, Error, ErrorKind, SequenceNumber, ShardKey};
use kinesis_consumer::mysql::{MySqlStore, MAX_SEQUENCE_DIGITS};
use kinesis_consumer::postgres::PostgresStore;
use sqlx::pool::PoolOptions;
use sqlx::{Database, MySql, Pool, Postgres};

use crate::{mysql_url, postgres_url, unique_table, CutProxy};

/// A 56-digit sequence number, as real ones are.
pub const BIG: &str = "49590338271490256608559692538361571095921575989136588898";

/// A sequence number from decimal text.
pub fn seq(s: &str) -> SequenceNumber {
    SequenceNumber::parse(s).expect("valid sequence number")
}

/// The checkpoint of a whole record.
pub fn at(s: &str) -> Checkpoint {
    Checkpoint::at(seq(s))
}

/// The checkpoint of a user record of an aggregate.
pub fn at_sub(s: &str, sub: u64) -> Checkpoint {
    Checkpoint::at_sub(seq(s), sub)
}

/// The key of `shard` of the tests' application and stream.
pub fn key(shard: &str) -> ShardKey {
    ShardKey::new("it-app", "it-stream", shard)
}

/// A SQL checkpoint store as these tests drive it: the store's constructors, and the one statement the tests run
/// themselves.
#[async_trait]
pub trait SqlStore: CheckpointStore + Sized + 'static {
    /// The sqlx database.
    type Db: Database;
    /// The store's type name (each way of opening it is reported under it).
    const NAME: &'static str;
    /// The database's name and the variable of its URL, for the message of a failed connection.
    const DATABASE: (&'static str, &'static str);

    /// The server's URL (from the environment).
    fn url() -> String;
    /// The store's `new`.
    fn new(pool: Pool<Self::Db>, table: &str) -> Result<Self, Error>;
    /// The store's builder with `flush_interval` if given, else the defaults.
    fn build(pool: Pool<Self::Db>, table: &str, flush_interval: Option<Duration>) -> Result<Self, Error>;
    /// The store's `connect`.
    async fn connect(url: &str, table: &str) -> Result<Self, Error>;
    /// The store's `create_table_if_missing`.
    async fn create_table_if_missing(&self) -> Result<(), Error>;
    /// The store's `shutdown`.
    async fn shutdown(&self) -> Result<(), Error>;
    /// The store's `pool`.
    fn pool(&self) -> &Pool<Self::Db>;
    /// Runs one statement.
    async fn execute(pool: &Pool<Self::Db>, sql: &str) -> Result<(), sqlx::Error>;
    /// The number of rows of `table`.
    async fn count_rows(pool: &Pool<Self::Db>, table: &str) -> Result<i64, sqlx::Error>;
}

/// `SqlStore` for a store type whose inherent methods have the trait's names (both SQL stores do).
macro_rules! sql_store {
    ($store:ident, $db:ident, $database:literal, $var:literal, $url:ident, count: $count:literal) => {
        #[async_trait]
        impl SqlStore for $store {
            type Db = $db;
            const NAME: &'static str = stringify!($store);
            const DATABASE: (&'static str, &'static str) = ($database, $var);

            fn url() -> String {
                $url()
            }

            fn new(pool: Pool<$db>, table: &str) -> Result<Self, Error> {
                $store::new(pool, table)
            }

            fn build(pool: Pool<$db>, table: &str, flush_interval: Option<Duration>) -> Result<Self, Error> {
                let builder = $store::builder(pool, table);
                match flush_interval {
                    Some(interval) => builder.flush_interval(interval).build(),
                    None => builder.build(),
                }
            }

            async fn connect(url: &str, table: &str) -> Result<Self, Error> {
                $store::connect(url, table).await
            }

            async fn create_table_if_missing(&self) -> Result<(), Error> {
                $store::create_table_if_missing(self).await
            }

            async fn shutdown(&self) -> Result<(), Error> {
                $store::shutdown(self).await
            }

            fn pool(&self) -> &Pool<$db> {
                $store::pool(self)
            }

            async fn execute(pool: &Pool<$db>, sql: &str) -> Result<(), sqlx::Error> {
                sqlx::query(sql).execute(pool).await.map(drop)
            }

            async fn count_rows(pool: &Pool<$db>, table: &str) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(&format!($count, table = table)).fetch_one(pool).await
            }
        }
    };
}

sql_store!(PostgresStore, Postgres, "PostgreSQL", "DATABASE_URL_POSTGRES", postgres_url, count: "SELECT count(*) FROM {table}");
sql_store!(MySqlStore, MySql, "MySQL", "DATABASE_URL_MYSQL", mysql_url,
    count: "SELECT CAST(count(*) AS SIGNED) FROM {table}");

/// What the PostgreSQL store supports in the conformance suite (tests/postgres.rs, tests/tls.rs).
pub fn postgres_capabilities() -> Capabilities {
    // sub_sequence_number is a bigint.
    let max_sub = u64::try_from(i64::MAX).expect("i64::MAX fits u64");
    Capabilities::new().breakable(true).background_flush(true).table_names(true).max_sub_sequence(max_sub)
}

/// What the MySQL store supports in the conformance suite (tests/mysql.rs, tests/tls.rs).
pub fn mysql_capabilities() -> Capabilities {
    // sequence_number is a DECIMAL(65,0); sub_sequence_number a bigint unsigned (any u64).
    Capabilities::new()
        .breakable(true)
        .background_flush(true)
        .table_names(true)
        .max_sequence_digits(MAX_SEQUENCE_DIGITS)
}

/// A pool with room for the suite's concurrent stores; a generous acquire timeout, so that a loaded machine makes
/// tests slower, not failed.
pub async fn pool<S: SqlStore>() -> Pool<S::Db> {
    let url = S::url();
    let (database, var) = S::DATABASE;
    PoolOptions::<S::Db>::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {database} at {url} ({var}): {e}"))
}

/// A store on a new table of its own (created with `create_table_if_missing`).
pub async fn new_table<S: SqlStore>(prefix: &str) -> (Pool<S::Db>, String, S) {
    let pool = pool::<S>().await;
    let table = unique_table(prefix);
    let store = S::new(pool.clone(), &table).expect("valid table name");
    store.create_table_if_missing().await.expect("create table");
    (pool, table, store)
}

/// Runs `sql`, as a `Permanent` error if it fails.
pub async fn execute<S: SqlStore>(pool: &Pool<S::Db>, sql: &str) -> Result<(), Error> {
    S::execute(pool, sql).await.map_err(|e| Error::with_source(ErrorKind::Permanent, sql, e))
}

/// Drops `table` if it exists.
pub async fn drop_table<S: SqlStore>(pool: &Pool<S::Db>, table: &str) {
    execute::<S>(pool, &format!("DROP TABLE IF EXISTS {table}")).await.expect("drop table");
}

/// What the database holds (read by a fresh store, so nothing pending in memory can answer).
pub async fn stored<S: SqlStore>(pool: &Pool<S::Db>, table: &str, key: &ShardKey) -> Option<Checkpoint> {
    let reader = S::new(pool.clone(), table).expect("valid table name");
    reader.get(key).await.expect("get")
}

/// The test `server_unavailable_during_flush_keeps_checkpoints_pending` of both stores (table named after
/// `prefix`): a store whose server is cut off (a [`CutProxy`]) fails its flush and reads as `Transient`, keeps its
/// checkpoint pending, and writes it once the server is back.
pub async fn server_unavailable_during_flush_keeps_checkpoints_pending<S: SqlStore>(prefix: &str) {
    let direct = pool::<S>().await;
    let table = unique_table(prefix);
    let url = S::url();
    let authority = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("host:port in the URL");
    let proxy = CutProxy::start(authority).await.expect("proxy");
    let proxied_url = url.replacen(authority, &proxy.addr().to_string(), 1);
    let proxied = PoolOptions::<S::Db>::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&proxied_url)
        .await
        .expect("connect through the proxy");
    let store = S::new(proxied, &table).expect("valid table name");
    store.create_table_if_missing().await.expect("create table");
    let k = key("shardId-0");

    store.set(&k, at(BIG)).await.expect("set");
    proxy.cut();
    let err = store.flush().await.expect_err("server unreachable");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}: {:?}", std::error::Error::source(&err));
    assert_eq!(stored::<S>(&direct, &table, &k).await, None, "nothing written");
    assert_eq!(store.get(&k).await.map_err(|e| e.kind()), Err(ErrorKind::Transient), "reads fail, not Ok(None)");

    proxy.restore();
    store.flush().await.expect("flush after the server is back");
    assert_eq!(stored::<S>(&direct, &table, &k).await, Some(at(BIG)), "the pending checkpoint was kept and written");
    store.shutdown().await.expect("shutdown");
    drop_table::<S>(&direct, &table).await;
}

/// The test `read_only_sessions_are_transient` of both stores (table named after `prefix`): what a database failover
/// looks like to a pool (its sessions reach a replica, or the demoted primary, until it reconnects to the new
/// primary): `read_only` is a pool whose sessions refuse writes. The flush fails as `Transient` (not `Permanent`: the
/// consumer keeps running), the checkpoint stays pending, no flush failure is recorded (the next `set` works), and
/// a store on a writable pool then writes it.
pub async fn read_only_sessions_are_transient<S: SqlStore>(prefix: &str, read_only: Pool<S::Db>) {
    let (direct, table, writable) = new_table::<S>(prefix).await;
    let store = S::new(read_only, &table).expect("valid table name");
    let k = key("shardId-0");
    store.set(&k, at("41")).await.expect("set");
    let err = store.flush().await.expect_err("read-only sessions refuse the write");
    let source = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}: {source:?}");
    store.set(&k, at(BIG)).await.expect("no flush failure recorded: set works");
    assert_eq!(store.get(&k).await.expect("get"), Some(at(BIG)), "pending, newest");
    assert_eq!(stored::<S>(&direct, &table, &k).await, None, "nothing written");
    writable.set(&k, at(BIG)).await.expect("set");
    writable.flush().await.expect("a writable session writes");
    assert_eq!(stored::<S>(&direct, &table, &k).await, Some(at(BIG)));
    drop_table::<S>(&direct, &table).await;
}

/// The conformance suite's backend: a table per case (named after `prefix`), stores flushing every 100 ms, a table
/// broken by dropping it.
pub struct SuiteBackend<S: SqlStore> {
    /// The pool of every store.
    pub pool: Pool<S::Db>,
    /// The prefix of the tables' names.
    pub prefix: &'static str,
    /// What the store supports.
    pub capabilities: Capabilities,
    /// Names the store must refuse.
    pub invalid_table_names: Vec<String>,
}

#[async_trait]
impl<S: SqlStore> StoreBackend for SuiteBackend<S> {
    type Table = String;
    type Store = S;

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn create_table(&self) -> Result<String, Error> {
        let table = unique_table(self.prefix);
        let store = S::new(self.pool.clone(), &table)?;
        store.create_table_if_missing().await?;
        store.create_table_if_missing().await?; // a second call is a no-op
        Ok(table)
    }

    async fn open(&self, table: &String) -> Result<S, Error> {
        S::build(self.pool.clone(), table, Some(Duration::from_millis(100)))
    }

    async fn close(&self, store: &S) -> Result<(), Error> {
        store.shutdown().await
    }

    async fn drop_table(&self, table: String) -> Result<(), Error> {
        execute::<S>(&self.pool, &format!("DROP TABLE IF EXISTS {table}")).await
    }

    async fn break_table(&self, table: &String) -> Result<(), Error> {
        execute::<S>(&self.pool, &format!("DROP TABLE {table}")).await
    }

    async fn repair_table(&self, table: &String) -> Result<(), Error> {
        S::new(self.pool.clone(), table)?.create_table_if_missing().await
    }

    fn invalid_table_names(&self) -> Vec<String> {
        self.invalid_table_names.clone()
    }

    async fn open_named(&self, name: &str) -> Vec<(String, Result<(), Error>)> {
        let store = S::NAME;
        vec![
            (format!("{store}::new"), S::new(self.pool.clone(), name).map(drop)),
            (format!("{store}::connect"), S::connect(&S::url(), name).await.map(drop)),
            (format!("{store}::builder"), S::build(self.pool.clone(), name, None).map(drop)),
        ]
    }
}
