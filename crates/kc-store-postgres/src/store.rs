//! [`PostgresStore`]: buffered, monotonic checkpoints in a PostgreSQL table: the engine
//! [`BufferedStore`](kc_checkpoint::buffered::BufferedStore) over [`Postgres`], the backend of this file (one
//! upsert of every pending checkpoint, one select).

use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::buffered::{Backend, BufferedStore, Retry};
use kc_checkpoint::{sql, Checkpoint, CheckpointStore, Error, ErrorKind, ShardKey};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::ddl::Ddl;
use crate::error;
use crate::table::TableName;

/// Default of [`PostgresStoreBuilder::flush_interval`]: 5 seconds.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Transient failures of a flush (or a read): 5 attempts, 100 ms before the second, doubled before each later one
/// (100, 200, 400, 800 ms).
const RETRY: Retry = Retry::doubling(5, Duration::from_millis(100));

/// A [`CheckpointStore`] in a PostgreSQL table. See the [crate docs](crate) for the table, and the semantics.
///
/// Dropping the store without [`shutdown`](Self::shutdown) (or [`flush`](CheckpointStore::flush)) loses the
/// checkpoints set since the last flush: their records are delivered again after a restart.
#[derive(Debug)]
pub struct PostgresStore {
    engine: BufferedStore<Postgres>,
}

/// Configures a [`PostgresStore`]: see [`PostgresStore::builder`].
#[derive(Debug)]
pub struct PostgresStoreBuilder {
    pool: PgPool,
    table: String,
    flush_interval: Duration,
}

/// The backend: the table's statements.
#[derive(Debug)]
struct Postgres {
    pool: PgPool,
    table: TableName,
    /// `table {name}`, for the engine's messages and logs.
    name: String,
    select_sql: String,
    upsert_sql: String,
}

impl PostgresStoreBuilder {
    /// How often the background task writes the pending checkpoints. Default [`DEFAULT_FLUSH_INTERVAL`] (5 s).
    ///
    /// The task starts with the first [`set`](CheckpointStore::set). A longer interval means fewer writes and more
    /// records delivered again after a crash; the consumer flushes on its own when it stops.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Validates the table name and the options. Does not touch the database.
    pub fn build(self) -> Result<PostgresStore, Error> {
        let table = TableName::parse(&self.table)?;
        let backend = Postgres {
            pool: self.pool,
            name: format!("table {}", table.as_str()),
            select_sql: table.select_sql(),
            upsert_sql: table.upsert_sql(),
            table,
        };
        // The engine's defaults are this store's: one upsert of everything, the task started by the first `set`,
        // `set` refused after `shutdown`.
        let engine = BufferedStore::builder(backend).flush_interval(self.flush_interval).retry(RETRY).build()?;
        Ok(PostgresStore { engine })
    }
}

impl PostgresStore {
    /// A store keeping its checkpoints in `table` (`table` or `schema.table`) through `pool`, with default options.
    ///
    /// Fails with [`ErrorKind::InvalidInput`] if `table` is not a plain identifier. Does not touch the database: a
    /// missing table shows as an [`ErrorKind::Permanent`] error of the first read or flush.
    pub fn new(pool: PgPool, table: &str) -> Result<Self, Error> {
        Self::builder(pool, table).build()
    }

    /// A builder for a store in `table` through `pool`, to set options.
    pub fn builder(pool: PgPool, table: &str) -> PostgresStoreBuilder {
        PostgresStoreBuilder { pool, table: table.to_owned(), flush_interval: DEFAULT_FLUSH_INTERVAL }
    }

    /// Connects to `url` (`postgres://user@host:5432/db`) with a small pool (4 connections, 5 s acquire timeout) and
    /// returns a store in `table` with default options. The URL's options apply (TLS with the feature
    /// `tls`): see the [crate docs](crate#connecting-tls-pool-timeouts-schema);
    /// build a `PgPool` yourself for other pool settings.
    pub async fn connect(url: &str, table: &str) -> Result<Self, Error> {
        let table = TableName::parse(table)?;
        let pool = small_pool(url, 4).await.map_err(|e| error::map("connecting to PostgreSQL", table.as_str(), e))?;
        Self::new(pool, table.as_str())
    }

    /// The pool the store uses (for example to begin the transactions of [`checkpoint_in_tx`](Self::checkpoint_in_tx)).
    pub fn pool(&self) -> &PgPool {
        &self.engine.backend().pool
    }

    /// Creates the checkpoint table (see the [crate docs](crate#the-table) for the DDL) unless a table of that name
    /// exists. An existing table is left as it is, even if it lacks the columns this store needs.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let backend = self.engine.backend();
        let table = backend.table.as_str();
        let create = async {
            // Safe when many processes create the table at once (see ddl.rs).
            let mut ddl = Ddl::lock(&backend.pool, table).await?;
            ddl.execute(&backend.table.create_table_sql()).await?;
            ddl.commit().await
        };
        create.await.map_err(|e| error::map("creating the checkpoint table", table, e))
    }

    /// Writes `checkpoint` for `key` inside the caller's transaction, unless the stored checkpoint is at or after it.
    ///
    /// The checkpoint commits (or rolls back) with the caller's own writes: see the
    /// [crate docs](crate#transactional-checkpoints). Not buffered, not retried (the transaction is the caller's).
    pub async fn checkpoint_in_tx(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        key: &ShardKey,
        checkpoint: &Checkpoint,
    ) -> Result<(), Error> {
        check(checkpoint)?;
        let backend = self.engine.backend();
        let rows = Rows::new([(key, checkpoint)]);
        rows.query(&backend.upsert_sql)
            .execute(&mut **tx)
            .await
            .map(drop)
            .map_err(|e| error::map("writing a checkpoint in a transaction", backend.table.as_str(), e))
    }

    /// Flushes the pending checkpoints and stops the background task.
    ///
    /// Idempotent: a second call finds nothing to stop and nothing pending, and returns `Ok(())`. If the flush
    /// fails, the checkpoints stay pending and a later `shutdown` or `flush` tries again. `set` fails after
    /// `shutdown`.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.engine.shutdown().await
    }
}

/// The pool of `connect` (the store's and the lease table's): 4 connections, 5 s acquire timeout.
/// A pool of `connections` to `url` with a 5 s acquire timeout (what `connect` builds).
pub(crate) async fn small_pool(url: &str, connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new().max_connections(connections).acquire_timeout(Duration::from_secs(5)).connect(url).await
}

#[async_trait]
impl CheckpointStore for PostgresStore {
    /// The checkpoint of `key`: the stored one, or the pending one if that is newer.
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        self.engine.get(key).await
    }

    /// Records `checkpoint` in memory (keeping the latest per shard) for the next flush.
    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        self.engine.set(key, checkpoint).await
    }

    /// Writes every pending checkpoint in one statement (one row per shard), retrying transient failures.
    async fn flush(&self) -> Result<(), Error> {
        self.engine.flush().await
    }
}

#[async_trait]
impl Backend for Postgres {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
        check(checkpoint)
    }

    async fn read(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        let table = self.table.as_str();
        let ns = sql::namespace(key);
        let row: Option<(String, Option<i64>, bool)> = RETRY
            .run(|| async {
                sqlx::query_as(&self.select_sql)
                    .bind(&ns)
                    .bind(key.shard())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| error::map("reading a checkpoint", table, e))
            })
            .await?;
        let Some((sequence, sub_sequence, finished)) = row else { return Ok(None) };
        sql::stored_checkpoint(table, finished, Some(sequence), sub_sequence)
    }

    /// One statement for the whole batch (the engine retries it).
    async fn write(&self, batch: &[(ShardKey, Checkpoint)]) -> Result<(), Error> {
        let rows = Rows::new(batch.iter().map(|(k, c)| (k, c)));
        rows.query(&self.upsert_sql)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| error::map("flushing checkpoints", self.table.as_str(), e))
    }
}

/// Sub-sequence numbers are stored as `bigint`.
fn check(checkpoint: &Checkpoint) -> Result<(), Error> {
    match checkpoint {
        Checkpoint::At { sub_sequence: Some(sub), .. } if i64::try_from(*sub).is_err() => Err(Error::new(
            ErrorKind::InvalidInput,
            format!("sub-sequence number {sub} does not fit the bigint column sub_sequence_number"),
        )),
        _ => Ok(()),
    }
}

/// The parameters of the upsert: parallel arrays of [`sql::rows`] (one entry per row, sorted by primary key).
struct Rows {
    namespaces: Vec<String>,
    shards: Vec<String>,
    sequences: Vec<String>,
    sub_sequences: Vec<Option<i64>>,
    finished: Vec<bool>,
}

impl Rows {
    fn new<'a>(batch: impl IntoIterator<Item = (&'a ShardKey, &'a Checkpoint)>) -> Self {
        let rows = sql::rows(batch);
        let mut arrays = Rows {
            namespaces: Vec::with_capacity(rows.len()),
            shards: Vec::with_capacity(rows.len()),
            sequences: Vec::with_capacity(rows.len()),
            sub_sequences: Vec::with_capacity(rows.len()),
            finished: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            arrays.namespaces.push(row.namespace);
            arrays.shards.push(row.shard);
            arrays.sequences.push(row.sequence);
            // `check` let only values that fit through.
            arrays.sub_sequences.push(row.sub_sequence.and_then(|s| i64::try_from(s).ok()));
            arrays.finished.push(row.finished);
        }
        arrays
    }

    fn query<'q>(&'q self, sql: &'q str) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql)
            .bind(&self.namespaces)
            .bind(&self.shards)
            .bind(&self.sequences)
            .bind(&self.sub_sequences)
            .bind(&self.finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::SequenceNumber;

    fn at(s: &str, sub: Option<u64>) -> Checkpoint {
        Checkpoint::At { sequence: SequenceNumber::parse(s).expect("valid"), sub_sequence: sub }
    }

    /// Sorting and deduplication are `kc_checkpoint::sql::rows`'s (tested there); here the arrays and their types.
    #[test]
    fn rows_are_sorted_deduplicated_and_typed() {
        let (k2, k1a, k1b, k0) = (
            ShardKey::new("b", "s", "2"),
            ShardKey::new("a", "b-c", "1"),
            // Same row as the one above (app `a`, stream `b-c` vs app `a-b`, stream `c`): the later checkpoint wins.
            ShardKey::new("a-b", "c", "1"),
            ShardKey::new("a", "b-c", "0"),
        );
        let (c2, c1a, c1b) = (at("10", Some(3)), at("9", None), at("10", None));
        let rows = Rows::new([(&k2, &c2), (&k1a, &c1a), (&k1b, &c1b), (&k0, &Checkpoint::ShardEnd)]);
        assert_eq!(rows.namespaces, ["a-b-c", "a-b-c", "b-s"]);
        assert_eq!(rows.shards, ["0", "1", "2"]);
        assert_eq!(rows.sequences, ["0", "10", "10"]);
        assert_eq!(rows.sub_sequences, [None, None, Some(3)]);
        assert_eq!(rows.finished, [true, false, false]);
    }

    #[test]
    fn sub_sequences_must_fit_bigint() {
        let max = u64::try_from(i64::MAX).expect("fits");
        assert!(check(&at("1", Some(max))).is_ok());
        assert_eq!(check(&at("1", Some(max + 1))).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
        assert!(check(&Checkpoint::ShardEnd).is_ok());
    }
}
