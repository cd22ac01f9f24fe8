//! [`MySqlLeaseTable`]: the lease table of consumer groups in a MySQL/MariaDB table.

use async_trait::async_trait;
use kc_checkpoint::lease::{creation_millis, from_millis, refused, Lease, LeaseScope, LeaseTable};
use kc_checkpoint::sql::{self, CheckpointBudget, DEFAULT_CHECKPOINT_CONNECTIONS, DEFAULT_OWNERSHIP_RESERVE};
use kc_checkpoint::{Checkpoint, Error, ErrorKind};
use sqlx::mysql::{MySqlArguments, MySqlPool};
use sqlx::query::Query;
use sqlx::MySql;

use crate::error;
use crate::store::small_pool;
use crate::store::MAX_SEQUENCE_DIGITS;
use crate::table::TableName;
use crate::table::KEY_CHARS;
use crate::upgrade::{upgrade, Column};

/// The columns every read returns (text columns cast to the connection's character set, since the table's binary
/// collation marks them binary), in the order of [`Row`].
const COLUMNS: &str = "CAST(shard_id AS CHAR), CAST(owner AS CHAR), counter, CAST(sequence_number AS CHAR), \
                       sub_sequence_number, finished, CAST(parents AS CHAR), CAST(next_owner AS CHAR), created_at_ms";

/// The key of a lease: group, stream, shard id.
const KEY: &str = "group_name = ? AND stream_name = ? AND shard_id = ?";

type Row = (String, Option<String>, u64, Option<String>, Option<u64>, bool, String, Option<String>, Option<u64>);

/// A [`LeaseTable`] in a MySQL or MariaDB table: one row per lease, every conditional write one `UPDATE .. WHERE
/// counter = ? [AND owner = ?]` whose affected-row count says whether the condition held (the counter always
/// changes, so a matched row is always counted). See the [crate docs](crate#the-lease-table) for the table.
///
/// No statement is retried here: a write whose connection broke may have been applied, so retrying it could turn
/// the caller's own write into a `Fenced` error. Such failures are [`ErrorKind::Transient`]; the caller reads the
/// lease ([`LeaseTable::get`]) to find out.
///
/// Checkpoint writes may hold only some of the pool's connections at once (a
/// [`CheckpointBudget`]): the others are kept for renewals and the other ownership calls, so that a busy group's
/// checkpoints never make its renewals wait for a connection (see the [crate docs](crate#the-lease-table)).
#[derive(Debug, Clone)]
pub struct MySqlLeaseTable {
    pool: MySqlPool,
    table: TableName,
    sql: Sql,
    budget: CheckpointBudget,
}

/// Configures a [`MySqlLeaseTable`] on a pool of yours: see [`MySqlLeaseTable::builder`].
#[derive(Debug)]
pub struct MySqlLeaseTableBuilder {
    pool: MySqlPool,
    table: String,
    ownership_reserve: Option<u32>,
}

impl MySqlLeaseTableBuilder {
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
    pub fn build(self) -> Result<MySqlLeaseTable, Error> {
        let table = TableName::parse(&self.table)?;
        let options = self.pool.options();
        let max = options.get_max_connections();
        let reserve = self.ownership_reserve.unwrap_or_else(|| sql::default_ownership_reserve(max));
        // A checkpoint waits for a slot as long as it would have waited for a connection.
        let budget = CheckpointBudget::new(max, reserve, options.get_acquire_timeout())?;
        Ok(MySqlLeaseTable { pool: self.pool, sql: Sql::new(table.as_str()), table, budget })
    }
}

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
        Self {
            list: format!("SELECT {COLUMNS} FROM {t} WHERE group_name = ? AND stream_name = ? ORDER BY shard_id"),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE {KEY}"),
            // A duplicate key means the lease exists (not `INSERT IGNORE`, which would also turn a too-long name
            // into a silently truncated one; not `ON DUPLICATE KEY UPDATE`, whose row count sqlx's CLIENT_FOUND_ROWS
            // makes 1 either way).
            create: format!(
                "INSERT INTO {t} (group_name, stream_name, shard_id, counter, finished, parents, created_at_ms) \
                 VALUES (?, ?, ?, 0, FALSE, ?, ?)"
            ),
            take: format!(
                "UPDATE {t} SET owner = ?, next_owner = NULL, counter = counter + 1 WHERE {KEY} AND counter = ?"
            ),
            request: format!("UPDATE {t} SET next_owner = ?, counter = counter + 1 WHERE {KEY} AND counter = ?"),
            renew: format!("UPDATE {t} SET counter = counter + 1 WHERE {KEY} AND counter = ? AND owner = ?"),
            // MySQL assigns left to right, each assignment seeing the ones before: "is the new checkpoint after the
            // stored one" is computed once, from the old values, into `@kc_newer` by the first assignment.
            // Parameters: finished, sequence x2, sub-sequence x3, sequence, finished, then the key and condition.
            checkpoint: format!(
                "UPDATE {t} SET \
                 sub_sequence_number = IF(@kc_newer := COALESCE(NOT ? AND NOT finished AND (sequence_number IS NULL \
                 OR sequence_number < CAST(? AS DECIMAL(65,0)) \
                 OR (sequence_number = CAST(? AS DECIMAL(65,0)) AND sub_sequence_number IS NOT NULL \
                 AND (? IS NULL OR sub_sequence_number < ?))), FALSE), ?, sub_sequence_number), \
                 sequence_number = IF(@kc_newer, CAST(? AS DECIMAL(65,0)), sequence_number), \
                 finished = finished OR ?, \
                 counter = counter + 1 \
                 WHERE {KEY} AND counter = ? AND owner = ?"
            ),
            release: format!(
                "UPDATE {t} SET owner = NULL, counter = counter + 1 WHERE {KEY} AND counter = ? AND owner = ?"
            ),
            delete: format!("DELETE FROM {t} WHERE {KEY}"),
        }
    }
}

impl MySqlLeaseTable {
    /// A lease table in `table` (`table` or `database.table`, validated as for [`MySqlStore`](crate::MySqlStore))
    /// through `pool`.
    ///
    /// Checkpoint writes leave [`DEFAULT_OWNERSHIP_RESERVE`] (2) of the pool's connections to the other calls: 1 on
    /// a pool of 2 connections, none on a pool of 1 (see [`MySqlLeaseTableBuilder::ownership_reserve`]).
    ///
    /// Fails with [`ErrorKind::InvalidInput`] if `table` is not a plain identifier. Does not touch the database: a
    /// missing table shows as an [`ErrorKind::Permanent`] error of the first call.
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self, Error> {
        Self::builder(pool, table).build()
    }

    /// A builder for a lease table in `table` through `pool`, to set options.
    pub fn builder(pool: MySqlPool, table: &str) -> MySqlLeaseTableBuilder {
        MySqlLeaseTableBuilder { pool, table: table.to_owned(), ownership_reserve: None }
    }

    /// Connects to `url` (`mysql://user@host:3306/db`) with a small pool and returns the lease table in `table`: 6
    /// connections ([`DEFAULT_CHECKPOINT_CONNECTIONS`] for checkpoint writes, [`DEFAULT_OWNERSHIP_RESERVE`] kept for
    /// the other calls), 5 s acquire timeout. The URL's options apply (TLS with the feature
    /// `tls`): see the [crate docs](crate#connecting-tls-pool-timeouts-database);
    /// build a `MySqlPool` yourself for other pool settings.
    pub async fn connect(url: &str, table: &str) -> Result<Self, Error> {
        let table = TableName::parse(table)?;
        let pool = small_pool(url, DEFAULT_CHECKPOINT_CONNECTIONS + DEFAULT_OWNERSHIP_RESERVE)
            .await
            .map_err(|e| error::map_lease("connecting to MySQL", table.as_str(), e))?;
        Self::new(pool, table.as_str())
    }

    /// The pool the table uses.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// How many checkpoint writes may hold a connection of the pool at once (its `max_connections` minus the
    /// ownership reserve).
    pub fn checkpoint_connections(&self) -> u32 {
        self.budget.connections()
    }

    /// Creates the lease table (see the [crate docs](crate#the-lease-table) for the DDL) unless a table of that name
    /// exists, and brings an existing one of an earlier version up to date (safe when many processes call it at
    /// once): `created_at_ms` added, `stream_name` and `shard_id` widened to 256 characters (a stream named by ARN is
    /// keyed by its ARN, and the group's markers put the stream's key in `shard_id`).
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n\
             \tgroup_name varchar(255) NOT NULL,\n\
             \tstream_name varchar({KEY_CHARS}) NOT NULL,\n\
             \tshard_id varchar({KEY_CHARS}) NOT NULL,\n\
             \towner varchar(255) NULL,\n\
             \tcounter bigint unsigned NOT NULL DEFAULT 0,\n\
             \tsequence_number numeric(65,0) NULL,\n\
             \tsub_sequence_number bigint unsigned NULL,\n\
             \tfinished boolean NOT NULL DEFAULT false,\n\
             \tparents text NOT NULL,\n\
             \tnext_owner varchar(255) NULL,\n\
             \tcreated_at_ms bigint unsigned NULL,\n\
             \tPRIMARY KEY (group_name, stream_name, shard_id)\n\
             ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin",
            t = self.table.as_str(),
        );
        sqlx::query(&sql).execute(&self.pool).await.map_err(|e| self.map("creating the lease table", e))?;
        // A table created before leases carried their creation time gets the column (NULL in existing rows); one
        // created before streams could be named by ARN gets the wider key columns.
        let columns = [
            Column::Added("created_at_ms", "bigint unsigned NULL"),
            Column::Varchar("stream_name", KEY_CHARS),
            Column::Varchar("shard_id", KEY_CHARS),
        ];
        upgrade(&self.pool, &self.table, &columns, |what, e| self.map(what, e)).await
    }

    fn map(&self, what: &str, err: sqlx::Error) -> Error {
        error::map_lease(what, self.table.as_str(), err)
    }

    /// Runs a conditional write of the owner; the condition pins the counter, so the new one is `counter + 1`.
    /// `budget`: the checkpoint budget the statement runs within (none for the other writes).
    async fn owner_write(
        &self,
        query: Query<'_, MySql, MySqlArguments>,
        scope: &LeaseScope,
        shard_id: &str,
        what: &str,
        counter: u64,
        budget: Option<&CheckpointBudget>,
    ) -> Result<u64, Error> {
        let execute = query.execute(&self.pool);
        let done = match budget {
            Some(budget) => budget.run(execute).await?,
            None => execute.await,
        };
        // The slot (if any) is back before a refused write is read back.
        let done = done.map_err(|e| self.map(what, e))?;
        if done.rows_affected() == 1 {
            Ok(counter + 1)
        } else {
            Err(refused(self, scope, shard_id, what, counter).await)
        }
    }

    /// Runs a conditional write and reads the lease as written, in one transaction (the row stays locked from the
    /// update to the commit, so the read is the write's result).
    async fn write_and_read(
        &self,
        query: Query<'_, MySql, MySqlArguments>,
        scope: &LeaseScope,
        shard_id: &str,
        what: &str,
        expected: u64,
    ) -> Result<Lease, Error> {
        let mut tx = self.pool.begin().await.map_err(|e| self.map(what, e))?;
        let done = query.execute(&mut *tx).await.map_err(|e| self.map(what, e))?;
        if done.rows_affected() != 1 {
            tx.rollback().await.map_err(|e| self.map(what, e))?;
            return Err(refused(self, scope, shard_id, what, expected).await);
        }
        let row: Row = sqlx::query_as(&self.sql.get)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.map(what, e))?;
        tx.commit().await.map_err(|e| self.map(what, e))?;
        self.decode(row)
    }

    fn decode(&self, row: Row) -> Result<Lease, Error> {
        let (shard_id, owner, counter, sequence, sub_sequence, finished, parents, next_owner, created_at) = row;
        let checkpoint = sql::stored_checkpoint(self.table.as_str(), finished, sequence, sub_sequence)?;
        let parents = if parents.is_empty() { Vec::new() } else { parents.split(',').map(str::to_owned).collect() };
        Ok(Lease::new(shard_id, owner, counter, checkpoint, parents)
            .with_next_owner(next_owner)
            .with_created_at(created_at.map(from_millis)))
    }
}

/// The `parents` column: the ids joined by `,` (shard ids are `[a-zA-Z0-9_.-]+`).
fn join_parents(parents: &[String]) -> Result<String, Error> {
    if let Some(bad) = parents.iter().find(|p| p.is_empty() || p.contains(',')) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "parent shard id {bad:?}: must be non-empty without ',' (the parents column is a list joined by ',')"
            ),
        ));
    }
    Ok(parents.join(","))
}

#[async_trait]
impl LeaseTable for MySqlLeaseTable {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        let rows: Vec<Row> = sqlx::query_as(&self.sql.list)
            .bind(scope.group())
            .bind(scope.stream())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map("listing leases", e))?;
        rows.into_iter().map(|row| self.decode(row)).collect()
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        let row: Option<Row> = sqlx::query_as(&self.sql.get)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.map("reading a lease", e))?;
        row.map(|row| self.decode(row)).transpose()
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        let parents = join_parents(parents)?;
        let done = sqlx::query(&self.sql.create)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .bind(parents)
            .bind(creation_millis())
            .execute(&self.pool)
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if error::is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(self.map("creating a lease", e)),
        }
    }

    async fn take(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        new_owner: &str,
    ) -> Result<Lease, Error> {
        let query = sqlx::query(&self.sql.take)
            .bind(new_owner)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .bind(expected_counter);
        self.write_and_read(query, scope, shard_id, "take", expected_counter).await
    }

    async fn request(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        requester: &str,
    ) -> Result<Lease, Error> {
        let query = sqlx::query(&self.sql.request)
            .bind(requester)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .bind(expected_counter);
        self.write_and_read(query, scope, shard_id, "handoff request", expected_counter).await
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        let query = sqlx::query(&self.sql.renew)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .bind(counter)
            .bind(owner);
        self.owner_write(query, scope, shard_id, "renewal", counter, None).await
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
                if sequence.as_str().len() > MAX_SEQUENCE_DIGITS {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "sequence number {sequence} has {} digits: the DECIMAL(65,0) column sequence_number \
                             holds at most {MAX_SEQUENCE_DIGITS}",
                            sequence.as_str().len()
                        ),
                    ));
                }
                (Some(sequence.as_str()), *sub_sequence, false)
            }
            Checkpoint::ShardEnd => (None, None, true),
        };
        let query = sqlx::query(&self.sql.checkpoint)
            .bind(finished)
            .bind(sequence)
            .bind(sequence)
            .bind(sub_sequence)
            .bind(sub_sequence)
            .bind(sub_sequence)
            .bind(sequence)
            .bind(finished)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .bind(counter)
            .bind(owner);
        // Within the budget, so that the ownership reserve stays free.
        self.owner_write(query, scope, shard_id, "checkpoint", counter, Some(&self.budget)).await
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        let query = sqlx::query(&self.sql.release)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
            .bind(counter)
            .bind(owner);
        self.owner_write(query, scope, shard_id, "release", counter, None).await
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        sqlx::query(&self.sql.delete)
            .bind(scope.group())
            .bind(scope.stream())
            .bind(shard_id)
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
            assert!(stmt.contains(&format!("WHERE {KEY} AND counter = ?")), "{name}: {stmt}");
            assert_eq!(stmt.ends_with("AND owner = ?"), owner, "{name}: {stmt}");
        }
        assert_eq!(sql.checkpoint.matches('?').count(), 13, "the binds of `checkpoint`");
    }

    #[test]
    fn parents_are_joined_and_checked() {
        assert_eq!(join_parents(&[]).expect("none"), "");
        assert_eq!(join_parents(&["a".to_owned(), "b".to_owned()]).expect("two"), "a,b");
        for bad in [vec![String::new()], vec!["a,b".to_owned()]] {
            assert_eq!(join_parents(&bad).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput), "{bad:?}");
        }
    }
}
