//! [`MySqlStore`]: buffered, monotonic checkpoints in a MySQL table: the engine
//! [`BufferedStore`](kc_checkpoint::buffered::BufferedStore) over [`MySql`], the backend of this file (one
//! transaction of upserts of every pending checkpoint, one select).

use std::time::Duration;

use async_trait::async_trait;
use kc_checkpoint::buffered::{Backend, BufferedStore, Retry};
use kc_checkpoint::{sql, Checkpoint, CheckpointStore, Error, ErrorKind, ShardKey};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use crate::error;
use crate::table::{TableName, NAMESPACE_CHARS};
use crate::upgrade::{upgrade, Column};

/// Default of [`MySqlStoreBuilder::flush_interval`]: 5 seconds.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Transient failures of a flush (or a read): 5 attempts, 100 ms before the second, doubled before each later one
/// (100, 200, 400, 800 ms).
const RETRY: Retry = Retry::doubling(5, Duration::from_millis(100));
/// Rows per `INSERT` statement (5 placeholders each; MySQL allows 65,535 placeholders per statement).
const ROWS_PER_STATEMENT: usize = 1000;

/// The most digits of a sequence number the `DECIMAL(65,0)` column holds (real ones have about 56).
pub const MAX_SEQUENCE_DIGITS: usize = 65;

/// A [`CheckpointStore`] in a MySQL table. See the [crate docs](crate) for the table, and the semantics.
///
/// Dropping the store without [`shutdown`](Self::shutdown) (or [`flush`](CheckpointStore::flush)) loses the
/// checkpoints set since the last flush: their records are delivered again after a restart.
#[derive(Debug)]
pub struct MySqlStore {
    engine: BufferedStore<MySql>,
}

/// Configures a [`MySqlStore`]: see [`MySqlStore::builder`].
#[derive(Debug)]
pub struct MySqlStoreBuilder {
    pool: MySqlPool,
    table: String,
    flush_interval: Duration,
}

/// The backend: the table's statements.
#[derive(Debug)]
struct MySql {
    pool: MySqlPool,
    table: TableName,
    /// `table {name}`, for the engine's messages and logs.
    name: String,
    select_sql: String,
}

impl MySqlStoreBuilder {
    /// How often the background task writes the pending checkpoints. Default [`DEFAULT_FLUSH_INTERVAL`] (5 s).
    ///
    /// The task starts with the first [`set`](CheckpointStore::set). A longer interval means fewer writes and more
    /// records delivered again after a crash; the consumer flushes on its own when it stops.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Validates the table name and the options. Does not touch the database.
    pub fn build(self) -> Result<MySqlStore, Error> {
        let table = TableName::parse(&self.table)?;
        let backend =
            MySql { pool: self.pool, name: format!("table {}", table.as_str()), select_sql: table.select_sql(), table };
        // The engine's defaults are this store's: one transaction for everything, the task started by the first
        // `set`, `set` refused after `shutdown`.
        let engine = BufferedStore::builder(backend).flush_interval(self.flush_interval).retry(RETRY).build()?;
        Ok(MySqlStore { engine })
    }
}

impl MySqlStore {
    /// A store keeping its checkpoints in `table` (`table` or `schema.table`) through `pool`, with default options.
    ///
    /// Fails with [`ErrorKind::InvalidInput`] if `table` is not a plain identifier. Does not touch the database: a
    /// missing table shows as an [`ErrorKind::Permanent`] error of the first read or flush.
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self, Error> {
        Self::builder(pool, table).build()
    }

    /// A builder for a store in `table` through `pool`, to set options.
    pub fn builder(pool: MySqlPool, table: &str) -> MySqlStoreBuilder {
        MySqlStoreBuilder { pool, table: table.to_owned(), flush_interval: DEFAULT_FLUSH_INTERVAL }
    }

    /// Connects to `url` (`mysql://user@host:3306/db`) with a small pool (4 connections, 5 s acquire timeout) and
    /// returns a store in `table` with default options. The URL's options apply (TLS with the feature
    /// `tls`): see the [crate docs](crate#connecting-tls-pool-timeouts-database);
    /// build a `MySqlPool` yourself for other pool settings.
    pub async fn connect(url: &str, table: &str) -> Result<Self, Error> {
        let table = TableName::parse(table)?;
        let pool = small_pool(url, 4).await.map_err(|e| error::map("connecting to MySQL", table.as_str(), e))?;
        Self::new(pool, table.as_str())
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &MySqlPool {
        &self.engine.backend().pool
    }

    /// Creates the checkpoint table (see the [crate docs](crate#the-table) for the DDL) unless a table of that name
    /// exists, and widens the `namespace` column of an existing one narrower than 512 characters (a table of an
    /// earlier version or of the Go library: streams named by ARN make longer namespaces); safe when many processes
    /// call it at once. Otherwise an existing table is left as it is, even if it lacks the columns this store needs.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let backend = self.engine.backend();
        let table = &backend.table;
        let sql = table.create_table_sql();
        sqlx::query(&sql)
            .execute(&backend.pool)
            .await
            .map_err(|e| error::map("creating the checkpoint table", table.as_str(), e))?;
        let columns = [Column::Varchar("namespace", NAMESPACE_CHARS)];
        upgrade(&backend.pool, table, &columns, |what, e| error::map(what, table.as_str(), e)).await
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
pub(crate) async fn small_pool(url: &str, connections: u32) -> Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new().max_connections(connections).acquire_timeout(Duration::from_secs(5)).connect(url).await
}

#[async_trait]
impl CheckpointStore for MySqlStore {
    /// The checkpoint of `key`: the stored one, or the pending one if that is newer.
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        self.engine.get(key).await
    }

    /// Records `checkpoint` in memory (keeping the latest per shard) for the next flush.
    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        self.engine.set(key, checkpoint).await
    }

    /// Writes every pending checkpoint in one transaction (one row per shard), retrying transient failures.
    async fn flush(&self) -> Result<(), Error> {
        self.engine.flush().await
    }
}

#[async_trait]
impl Backend for MySql {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, checkpoint: &Checkpoint) -> Result<(), Error> {
        check(checkpoint)
    }

    async fn read(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        let table = self.table.as_str();
        let ns = sql::namespace(key);
        let row: Option<(String, Option<u64>, bool)> = RETRY
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

    /// One transaction for the whole batch (the engine retries it).
    async fn write(&self, batch: &[(ShardKey, Checkpoint)]) -> Result<(), Error> {
        write_rows(&self.pool, &self.table, &sql::rows(batch.iter().map(|(k, c)| (k, c))))
            .await
            .map_err(|e| error::map("flushing checkpoints", self.table.as_str(), e))
    }
}

/// Sequence numbers are stored as `DECIMAL(65,0)`.
fn check(checkpoint: &Checkpoint) -> Result<(), Error> {
    match checkpoint {
        Checkpoint::At { sequence, .. } if sequence.as_str().len() > MAX_SEQUENCE_DIGITS => Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "sequence number {sequence} has {} digits: the DECIMAL(65,0) column sequence_number holds at most \
                 {MAX_SEQUENCE_DIGITS}",
                sequence.as_str().len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Writes the rows of a flush ([`sql::rows`]: sorted by primary key) in one transaction, [`ROWS_PER_STATEMENT`] rows
/// per statement.
async fn write_rows(pool: &MySqlPool, table: &TableName, rows: &[sql::Row]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = table.upsert_sql(chunk.len());
        let mut query = sqlx::query(&sql);
        for row in chunk {
            query = query
                .bind(&row.namespace)
                .bind(&row.shard)
                .bind(&row.sequence)
                .bind(row.sub_sequence)
                .bind(row.finished);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::SequenceNumber;

    fn at(s: &str, sub: Option<u64>) -> Checkpoint {
        Checkpoint::At { sequence: SequenceNumber::parse(s).expect("valid"), sub_sequence: sub }
    }

    #[test]
    fn sequence_numbers_must_fit_decimal_65() {
        assert!(check(&at(&"9".repeat(MAX_SEQUENCE_DIGITS), Some(u64::MAX))).is_ok());
        let too_long = check(&at(&"9".repeat(MAX_SEQUENCE_DIGITS + 1), None));
        assert_eq!(too_long.map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
        assert!(check(&Checkpoint::ShardEnd).is_ok());
    }
}
