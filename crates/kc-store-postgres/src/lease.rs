//! [`PostgresLeaseTable`]: the lease table of consumer groups in a PostgreSQL table.

use async_trait::async_trait;
use kc_checkpoint::lease::{creation_millis, fenced, from_millis, refused, Lease, LeaseScope, LeaseTable};
use kc_checkpoint::sql::{self, CheckpointBudget, DEFAULT_CHECKPOINT_CONNECTIONS, DEFAULT_OWNERSHIP_RESERVE};
use kc_checkpoint::{Checkpoint, Error, ErrorKind};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row as _;

use crate::ddl::Ddl;
use crate::error;
use crate::store::small_pool;
use crate::table::TableName;

/// The columns every read returns, in the order [`decode`] expects.
const COLUMNS: &str =
    "shard_id, owner, counter, sequence_number::text, sub_sequence_number, finished, parents, next_owner, created_at_ms";

/// The key of a lease in every statement: `$1` group, `$2` stream, `$3` shard id.
const KEY: &str = "group_name = $1 AND stream_name = $2 AND shard_id = $3";

/// A [`LeaseTable`] in a PostgreSQL table: one row per lease, every conditional write one `UPDATE .. WHERE counter
/// = .. [AND owner = ..] RETURNING` statement. See the [crate docs](crate#the-lease-table) for the table.
///
/// No statement is retried here: a write whose connection broke may have been applied, so retrying it could turn
/// the caller's own write into a `Fenced` error. Such failures are [`ErrorKind::Transient`]; the caller reads the
/// lease ([`LeaseTable::get`]) to find out.
///
/// Checkpoint writes may hold only some of the pool's connections at once (a
/// [`CheckpointBudget`]): the others are kept for renewals and the other ownership calls, so that a busy group's
/// checkpoints never make its renewals wait for a connection (see the [crate docs](crate#the-lease-table)).
#[derive(Debug, Clone)]
pub struct PostgresLeaseTable {
    pool: PgPool,
    table: TableName,
    sql: Sql,
    budget: CheckpointBudget,
}

/// Configures a [`PostgresLeaseTable`] on a pool of yours: see [`PostgresLeaseTable::builder`].
#[derive(Debug)]
pub struct PostgresLeaseTableBuilder {
    pool: PgPool,
    table: String,
    ownership_reserve: Option<u32>,
}

impl PostgresLeaseTableBuilder {
    /// How many of the pool's connections checkpoint writes leave to the other calls (renew, take, release,
    /// request, create, delete, list, get). Default: [`DEFAULT_OWNERSHIP_RESERVE`] (2), but 1 on a pool of 2
    /// connections and 0 on a pool of 1 (its one connection is then shared, first come first served).
    ///
    /// Checkpoint writes may hold the pool's `max_connections` minus the reserve at once; [`build`](Self::build)
    /// refuses a reserve that leaves them none.
    pub fn ownership_reserve(mut self, connections: u32) -> Self {
        self.ownership_reserve = Some(connections);
        self
    }

    /// Validates the table name and the reserve. Does not touch the database.
    ///
    /// Fails with [`ErrorKind::InvalidInput`] if `table` is not a plain identifier, or if the reserve is not less
    /// than the pool's `max_connections`.
    pub fn build(self) -> Result<PostgresLeaseTable, Error> {
        let table = TableName::parse(&self.table)?;
        let options = self.pool.options();
        let max = options.get_max_connections();
        let reserve = self.ownership_reserve.unwrap_or_else(|| sql::default_ownership_reserve(max));
        // A checkpoint waits for a slot as long as it would have waited for a connection.
        let budget = CheckpointBudget::new(max, reserve, options.get_acquire_timeout())?;
        Ok(PostgresLeaseTable { pool: self.pool, sql: Sql::new(table.as_str()), table, budget })
    }
}

/// The statements, built once from the validated table name.
#[derive(Debug, Clone)]
struct Sql {
    list: String,
    get: String,
    create: String,
    take: String,
    request: String,
    renew: String,
    checkpoint: String,
    release: String,
    delete: String,
}

impl Sql {
    fn new(t: &str) -> Self {
        // `$8`: the new checkpoint is ShardEnd; else `$6` (sequence number as text) and `$7` (sub-sequence).
        let newer = "(NOT $8::boolean AND NOT finished AND (sequence_number IS NULL \
                     OR sequence_number < $6::text::numeric \
                     OR (sequence_number = $6::text::numeric AND sub_sequence_number IS NOT NULL \
                     AND ($7::bigint IS NULL OR sub_sequence_number < $7::bigint))))";
        Self {
            list: format!(
                "SELECT {COLUMNS} FROM {t} WHERE group_name = $1 AND stream_name = $2 ORDER BY shard_id COLLATE \"C\""
            ),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE {KEY}"),
            create: format!(
                "INSERT INTO {t} (group_name, stream_name, shard_id, parents, created_at_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (group_name, stream_name, shard_id) DO NOTHING"
            ),
            take: format!(
                "UPDATE {t} SET owner = $5, next_owner = NULL, counter = counter + 1 \
                 WHERE {KEY} AND counter = $4 RETURNING {COLUMNS}"
            ),
            request: format!(
                "UPDATE {t} SET next_owner = $5, counter = counter + 1 WHERE {KEY} AND counter = $4 RETURNING {COLUMNS}"
            ),
            renew: format!(
                "UPDATE {t} SET counter = counter + 1 WHERE {KEY} AND counter = $4 AND owner = $5 RETURNING counter"
            ),
            // Every SET expression sees the row as it was, so `newer` is the same test in both.
            checkpoint: format!(
                "UPDATE {t} SET counter = counter + 1, finished = finished OR $8::boolean, \
                 sequence_number = CASE WHEN {newer} THEN $6::text::numeric ELSE sequence_number END, \
                 sub_sequence_number = CASE WHEN {newer} THEN $7::bigint ELSE sub_sequence_number END \
                 WHERE {KEY} AND counter = $4 AND owner = $5 RETURNING counter"
            ),
            release: format!(
                "UPDATE {t} SET owner = NULL, counter = counter + 1 \
                 WHERE {KEY} AND counter = $4 AND owner = $5 RETURNING counter"
            ),
            delete: format!("DELETE FROM {t} WHERE {KEY}"),
        }
    }
}

impl PostgresLeaseTable {
    /// A lease table in `table` (`table` or `schema.table`, validated as for
    /// [`PostgresStore`](crate::PostgresStore)) through `pool`.
    ///
    /// Checkpoint writes leave [`DEFAULT_OWNERSHIP_RESERVE`] (2) of the pool's connections to the other calls: 1 on
    /// a pool of 2 connections, none on a pool of 1 (see [`PostgresLeaseTableBuilder::ownership_reserve`]).
    ///
    /// Fails with [`ErrorKind::InvalidInput`] if `table` is not a plain identifier. Does not touch the database: a
    /// missing table shows as an [`ErrorKind::Permanent`] error of the first call.
    pub fn new(pool: PgPool, table: &str) -> Result<Self, Error> {
        Self::builder(pool, table).build()
    }

    /// A builder for a lease table in `table` through `pool`, to set options.
    pub fn builder(pool: PgPool, table: &str) -> PostgresLeaseTableBuilder {
        PostgresLeaseTableBuilder { pool, table: table.to_owned(), ownership_reserve: None }
    }

    /// Connects to `url` with a small pool and returns the lease table in `table`: 6 connections
    /// ([`DEFAULT_CHECKPOINT_CONNECTIONS`] for checkpoint writes, [`DEFAULT_OWNERSHIP_RESERVE`] kept for the other
    /// calls), 5 s acquire timeout. The URL's options apply (TLS with the feature
    /// `tls`): see the [crate docs](crate#connecting-tls-pool-timeouts-schema);
    /// build a `PgPool` yourself for other pool settings.
    pub async fn connect(url: &str, table: &str) -> Result<Self, Error> {
        let table = TableName::parse(table)?;
        let pool = small_pool(url, DEFAULT_CHECKPOINT_CONNECTIONS + DEFAULT_OWNERSHIP_RESERVE)
            .await
            .map_err(|e| error::map_lease("connecting to PostgreSQL", table.as_str(), e))?;
        Self::new(pool, table.as_str())
    }

    /// The pool the table uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How many checkpoint writes may hold a connection of the pool at once (its `max_connections` minus the
    /// ownership reserve).
    pub fn checkpoint_connections(&self) -> u32 {
        self.budget.connections()
    }

    /// Creates the lease table (see the [crate docs](crate#the-lease-table) for the DDL) unless a table of that name
    /// exists. An existing table is left as it is.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n\
             \tgroup_name text NOT NULL,\n\
             \tstream_name text NOT NULL,\n\
             \tshard_id text NOT NULL,\n\
             \towner text NULL,\n\
             \tcounter bigint NOT NULL DEFAULT 0,\n\
             \tsequence_number numeric NULL,\n\
             \tsub_sequence_number bigint NULL,\n\
             \tfinished boolean NOT NULL DEFAULT false,\n\
             \tparents text[] NOT NULL DEFAULT '{{}}',\n\
             \tnext_owner text NULL,\n\
             \tcreated_at_ms bigint NULL,\n\
             \tCONSTRAINT {pk} PRIMARY KEY (group_name, stream_name, shard_id)\n\
             )",
            t = self.table.as_str(),
            pk = self.table.constraint_name(),
        );
        let table = self.table.as_str();
        // Safe when many processes create (or upgrade) the table at once (see ddl.rs).
        let mut ddl = Ddl::lock(&self.pool, table).await.map_err(|e| self.map("creating the lease table", e))?;
        ddl.execute(&sql).await.map_err(|e| self.map("creating the lease table", e))?;
        // A table created before leases carried their creation time gets the column (NULL in existing rows). Looked
        // up first: an `ALTER TABLE` locks the table even when it has nothing to do.
        let upgrading = "upgrading the lease table";
        if !ddl.has_column(table, "created_at_ms").await.map_err(|e| self.map(upgrading, e))? {
            let upgrade = format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS created_at_ms bigint NULL");
            ddl.execute(&upgrade).await.map_err(|e| self.map(upgrading, e))?;
        }
        ddl.commit().await.map_err(|e| self.map("creating the lease table", e))
    }

    fn map(&self, what: &str, err: sqlx::Error) -> Error {
        error::map_lease(what, self.table.as_str(), err)
    }

    fn key<'q>(
        &self,
        sql: &'q str,
        scope: &'q LeaseScope,
        shard_id: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(sql).bind(scope.group()).bind(scope.stream()).bind(shard_id)
    }

    /// Runs a conditional write and reads what it returns with `read`; no row means the condition did not hold.
    async fn write<T>(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        scope: &LeaseScope,
        shard_id: &str,
        what: &str,
        expected: u64,
        read: impl FnOnce(&PgRow) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let row = query.fetch_optional(&self.pool).await.map_err(|e| self.map(what, e))?;
        self.written(row, scope, shard_id, what, expected, read).await
    }

    /// What a conditional write returned, read with `read`; no row means the condition did not hold.
    async fn written<T>(
        &self,
        row: Option<PgRow>,
        scope: &LeaseScope,
        shard_id: &str,
        what: &str,
        expected: u64,
        read: impl FnOnce(&PgRow) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match row {
            Some(row) => read(&row),
            None => Err(refused(self, scope, shard_id, what, expected).await),
        }
    }

    /// The new counter a write returned.
    fn counter(&self, row: &PgRow, what: &str) -> Result<u64, Error> {
        counter_of(row.try_get(0).map_err(|e| self.map(what, e))?)
    }

    fn decode(&self, row: &PgRow) -> Result<Lease, Error> {
        let map = |e| self.map("reading a lease", e);
        let shard_id: String = row.try_get(0).map_err(map)?;
        let owner: Option<String> = row.try_get(1).map_err(map)?;
        let counter: i64 = row.try_get(2).map_err(map)?;
        let sequence: Option<String> = row.try_get(3).map_err(map)?;
        let sub_sequence: Option<i64> = row.try_get(4).map_err(map)?;
        let finished: bool = row.try_get(5).map_err(map)?;
        let parents: Vec<String> = row.try_get(6).map_err(map)?;
        let next_owner: Option<String> = row.try_get(7).map_err(map)?;
        let created_at: Option<i64> = row.try_get(8).map_err(map)?;
        let checkpoint = sql::stored_checkpoint(self.table.as_str(), finished, sequence, sub_sequence)?;
        // A negative value (not written by this crate) reads as unknown.
        let created_at = created_at.and_then(|ms| u64::try_from(ms).ok()).map(from_millis);
        Ok(Lease::new(shard_id, owner, counter_of(counter)?, checkpoint, parents)
            .with_next_owner(next_owner)
            .with_created_at(created_at))
    }
}

/// A counter as stored (`bigint`, never negative: it starts at 0 and only grows).
fn counter_of(stored: i64) -> Result<u64, Error> {
    u64::try_from(stored)
        .map_err(|e| Error::with_source(ErrorKind::Permanent, format!("negative lease counter {stored} stored"), e))
}

/// An expected counter as a `bigint`; `None` when no stored counter can equal it (the condition cannot hold).
fn expected(counter: u64) -> Option<i64> {
    i64::try_from(counter).ok()
}

#[async_trait]
impl LeaseTable for PostgresLeaseTable {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        let rows = sqlx::query(&self.sql.list)
            .bind(scope.group())
            .bind(scope.stream())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map("listing leases", e))?;
        rows.iter().map(|row| self.decode(row)).collect()
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        let row = self
            .key(&self.sql.get, scope, shard_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.map("reading a lease", e))?;
        row.map(|row| self.decode(&row)).transpose()
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        let done = self
            .key(&self.sql.create, scope, shard_id)
            .bind(parents)
            .bind(i64::try_from(creation_millis()).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(|e| self.map("creating a lease", e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn take(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        new_owner: &str,
    ) -> Result<Lease, Error> {
        let Some(counter) = expected(expected_counter) else { return Err(fenced(scope, shard_id, "take")) };
        let query = self.key(&self.sql.take, scope, shard_id).bind(counter).bind(new_owner);
        self.write(query, scope, shard_id, "take", expected_counter, |row| self.decode(row)).await
    }

    async fn request(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        requester: &str,
    ) -> Result<Lease, Error> {
        let what = "handoff request";
        let Some(counter) = expected(expected_counter) else { return Err(fenced(scope, shard_id, what)) };
        let query = self.key(&self.sql.request, scope, shard_id).bind(counter).bind(requester);
        self.write(query, scope, shard_id, what, expected_counter, |row| self.decode(row)).await
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        let Some(c) = expected(counter) else { return Err(fenced(scope, shard_id, "renewal")) };
        let query = self.key(&self.sql.renew, scope, shard_id).bind(c).bind(owner);
        self.write(query, scope, shard_id, "renewal", counter, |row| self.counter(row, "renewal")).await
    }

    async fn checkpoint(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<u64, Error> {
        let (sequence, sub_sequence, finished) = match checkpoint {
            Checkpoint::At { sequence, sub_sequence } => {
                let sub = sub_sequence
                    .map(|sub| {
                        i64::try_from(sub).map_err(|_| {
                            Error::new(
                                ErrorKind::InvalidInput,
                                format!("sub-sequence number {sub} does not fit the bigint column sub_sequence_number"),
                            )
                        })
                    })
                    .transpose()?;
                (Some(sequence.as_str()), sub, false)
            }
            Checkpoint::ShardEnd => (None, None, true),
        };
        let Some(c) = expected(counter) else { return Err(fenced(scope, shard_id, "checkpoint")) };
        let query = self
            .key(&self.sql.checkpoint, scope, shard_id)
            .bind(c)
            .bind(owner)
            .bind(sequence)
            .bind(sub_sequence)
            .bind(finished);
        // Within the budget, so that the ownership reserve stays free; the slot is given back before a refused
        // write is read back (a read, like the others, not a checkpoint).
        let what = "checkpoint";
        let row = self.budget.run(query.fetch_optional(&self.pool)).await?.map_err(|e| self.map(what, e))?;
        self.written(row, scope, shard_id, what, counter, |row| self.counter(row, what)).await
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        let Some(c) = expected(counter) else { return Err(fenced(scope, shard_id, "release")) };
        let query = self.key(&self.sql.release, scope, shard_id).bind(c).bind(owner);
        self.write(query, scope, shard_id, "release", counter, |row| self.counter(row, "release")).await
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        self.key(&self.sql.delete, scope, shard_id)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| self.map("deleting a lease", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_conditional_and_bump_the_counter() {
        let sql = Sql::new("app.leases");
        for (name, stmt, owner) in [
            ("take", &sql.take, false),
            ("request", &sql.request, false),
            ("renew", &sql.renew, true),
            ("checkpoint", &sql.checkpoint, true),
            ("release", &sql.release, true),
        ] {
            assert!(stmt.starts_with("UPDATE app.leases SET"), "{name}: {stmt}");
            assert!(stmt.contains("counter = counter + 1"), "{name}: {stmt}");
            assert!(stmt.contains(&format!("WHERE {KEY} AND counter = $4")), "{name}: {stmt}");
            assert_eq!(stmt.contains("AND owner = $5"), owner, "{name}: {stmt}");
            assert!(stmt.contains(" RETURNING "), "{name}: {stmt}");
        }
        assert!(sql.create.contains("ON CONFLICT (group_name, stream_name, shard_id) DO NOTHING"));
        assert_eq!(expected(u64::MAX), None);
        assert_eq!(expected(7), Some(7));
        assert!(counter_of(-1).is_err());
    }
}
