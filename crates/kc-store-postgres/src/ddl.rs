//! DDL that many processes run at once: every worker of a new consumer group (every instance of a new app) calls
//! `create_table_if_missing` when it starts. PostgreSQL's `CREATE TABLE IF NOT EXISTS` is not atomic: two sessions
//! can both find the table missing, and one then fails on the catalog's unique index (`duplicate key value violates
//! unique constraint "pg_type_typname_nsp_index"`). So the DDL of a table runs in one transaction that first takes a
//! transaction-level advisory lock keyed by the table's name: concurrent callers run one after the other, the later
//! ones find the table (and its columns) there, and the lock goes with the transaction, whatever happens.

use sqlx::{PgPool, Postgres, Transaction};

/// A transaction holding the DDL lock of one table.
pub(crate) struct Ddl<'c> {
    tx: Transaction<'c, Postgres>,
}

impl Ddl<'_> {
    /// Begins the transaction and waits for the lock of `table` (as written in SQL, e.g. `app.checkpoints`).
    pub(crate) async fn lock(pool: &PgPool, table: &str) -> Result<Ddl<'static>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("kinesis-consumer DDL of {table}"))
            .execute(&mut *tx)
            .await?;
        Ok(Ddl { tx })
    }

    /// Runs a statement under the lock.
    pub(crate) async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(&mut *self.tx).await.map(drop)
    }

    /// Whether `table` has `column` (a table created by an older version may lack one).
    pub(crate) async fn has_column(&mut self, table: &str, column: &str) -> Result<bool, sqlx::Error> {
        let sql = "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) \
                   AND attname = $2 AND NOT attisdropped)";
        let (has,): (bool,) = sqlx::query_as(sql).bind(table).bind(column).fetch_one(&mut *self.tx).await?;
        Ok(has)
    }

    /// Commits, releasing the lock.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}
