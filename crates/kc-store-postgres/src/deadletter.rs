//! [`PostgresDeadLetter`]: a dead-letter destination in a PostgreSQL table.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kc_checkpoint::deadletter::{DeadLetter, DeadLetterError, FailedRecord};
use kc_checkpoint::Error;
use sqlx::PgPool;

use crate::ddl::Ddl;
use crate::error;
use crate::table::TableName;

/// A dead-letter destination that inserts each failed record as a row of a PostgreSQL table (for
/// `FailurePolicy::dead_letter` of the consumer). A row is committed before the consumer checkpoints past its record;
/// connection failures and the other transient SQLSTATEs the checkpoint store retries are transient here too (the
/// consumer sends again for as long as it takes), anything else (a missing table, access denied) stops the scan.
///
/// [`create_table_if_missing`](Self::create_table_if_missing) creates the table (safe when many processes call it at
/// once, like the checkpoint table's):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS kinesis_dead_letters (
///     id bigserial PRIMARY KEY,
///     stream_name text NOT NULL,
///     shard_id text NOT NULL,
///     sequence_number numeric NOT NULL,
///     sub_sequence_number bigint NULL,
///     partition_key text NOT NULL,
///     explicit_hash_key text NULL,
///     data bytea NOT NULL,
///     approximate_arrival_ms bigint NULL,
///     error text NOT NULL,
///     attempts integer NOT NULL,
///     first_failure_ms bigint NOT NULL,
///     dead_lettered_at timestamptz NOT NULL DEFAULT now()
/// );
/// ```
///
/// Times are milliseconds since the Unix epoch. A record may be inserted twice if the consumer stopped between the
/// insert and its checkpoint (at least once, like every delivery).
#[derive(Clone, Debug)]
pub struct PostgresDeadLetter {
    pool: PgPool,
    table: TableName,
    insert_sql: String,
}

impl PostgresDeadLetter {
    /// A destination inserting into `table` (`table` or `schema.table`, validated like the checkpoint table's name).
    pub fn new(pool: PgPool, table: &str) -> Result<Self, Error> {
        let table = TableName::parse(table)?;
        let insert_sql = format!(
            "INSERT INTO {} (stream_name, shard_id, sequence_number, sub_sequence_number, partition_key, \
             explicit_hash_key, data, approximate_arrival_ms, error, attempts, first_failure_ms) \
             VALUES ($1, $2, $3::numeric, $4, $5, $6, $7, $8, $9, $10, $11)",
            table.as_str()
        );
        Ok(Self { pool, table, insert_sql })
    }

    /// Creates the table if it does not exist.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let table = self.table.as_str();
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n\
             \tid bigserial PRIMARY KEY,\n\
             \tstream_name text NOT NULL,\n\
             \tshard_id text NOT NULL,\n\
             \tsequence_number numeric NOT NULL,\n\
             \tsub_sequence_number bigint NULL,\n\
             \tpartition_key text NOT NULL,\n\
             \texplicit_hash_key text NULL,\n\
             \tdata bytea NOT NULL,\n\
             \tapproximate_arrival_ms bigint NULL,\n\
             \terror text NOT NULL,\n\
             \tattempts integer NOT NULL,\n\
             \tfirst_failure_ms bigint NOT NULL,\n\
             \tdead_lettered_at timestamptz NOT NULL DEFAULT now()\n\
             )"
        );
        let create = async {
            // Safe when many processes create the table at once (see ddl.rs).
            let mut ddl = Ddl::lock(&self.pool, table).await?;
            ddl.execute(&sql).await?;
            ddl.commit().await
        };
        create.await.map_err(|e| self.error("creating the dead-letter table", e))
    }

    fn error(&self, what: &str, e: sqlx::Error) -> Error {
        let table = self.table.as_str();
        error::map_or_missing(what, e, || {
            format!(
                "{what}: the dead-letter table {table} does not exist (PostgresDeadLetter::create_table_if_missing)"
            )
        })
    }
}

/// Milliseconds since the Unix epoch (0 before it).
fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl DeadLetter for PostgresDeadLetter {
    async fn send(&self, r: &FailedRecord) -> Result<(), DeadLetterError> {
        let sub = r.sub_sequence_number().map(|s| i64::try_from(s).unwrap_or(i64::MAX));
        let attempts = i32::try_from(r.attempts()).unwrap_or(i32::MAX);
        let inserted = sqlx::query(&self.insert_sql)
            .bind(r.stream())
            .bind(r.shard_id())
            .bind(r.sequence_number().to_string())
            .bind(sub)
            .bind(r.partition_key())
            .bind(r.explicit_hash_key())
            .bind(r.data().as_ref())
            .bind(r.approximate_arrival_timestamp().map(epoch_ms))
            .bind(r.error())
            .bind(attempts)
            .bind(epoch_ms(r.first_failure()))
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.error("inserting a dead letter", e);
                Err(if e.is_retryable() { DeadLetterError::transient(e) } else { DeadLetterError::permanent(e) })
            }
        }
    }
}
