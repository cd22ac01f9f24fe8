//! [`MySqlDeadLetter`]: a dead-letter destination in a MySQL table.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kc_checkpoint::deadletter::{DeadLetter, DeadLetterError, FailedRecord};
use kc_checkpoint::Error;
use sqlx::MySqlPool;

use crate::error;
use crate::table::{TableName, KEY_CHARS};
use crate::upgrade::{upgrade, Column};

/// A dead-letter destination that inserts each failed record as a row of a MySQL table (for
/// `FailurePolicy::dead_letter` of the consumer). A row is committed before the consumer checkpoints past its record;
/// connection failures and the other transient errors the checkpoint store retries are transient here too (the
/// consumer sends again for as long as it takes), anything else (a missing table, access denied, a payload larger
/// than `max_allowed_packet`) stops the scan.
///
/// [`create_table_if_missing`](Self::create_table_if_missing) creates the table (`CREATE TABLE IF NOT EXISTS` is safe
/// when many processes run it at once in MySQL and MariaDB, which serialize it under a metadata lock):
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS kinesis_dead_letters (
///     id bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,
///     stream_name varchar(256) NOT NULL,
///     shard_id varchar(128) NOT NULL,
///     sequence_number varchar(129) NOT NULL,
///     sub_sequence_number bigint unsigned NULL,
///     partition_key varchar(256) NOT NULL,
///     explicit_hash_key varchar(128) NULL,
///     data longblob NOT NULL,
///     approximate_arrival_ms bigint NULL,
///     error text NOT NULL,
///     attempts int unsigned NOT NULL,
///     first_failure_ms bigint NOT NULL,
///     dead_lettered_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
/// );
/// ```
///
/// Times are milliseconds since the Unix epoch. A record may be inserted twice if the consumer stopped between the
/// insert and its checkpoint (at least once, like every delivery).
#[derive(Clone, Debug)]
pub struct MySqlDeadLetter {
    pool: MySqlPool,
    table: TableName,
    insert_sql: String,
}

impl MySqlDeadLetter {
    /// A destination inserting into `table` (`table` or `database.table`, validated like the checkpoint table's).
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self, Error> {
        let table = TableName::parse(table)?;
        let insert_sql = format!(
            "INSERT INTO {} (stream_name, shard_id, sequence_number, sub_sequence_number, partition_key, \
             explicit_hash_key, data, approximate_arrival_ms, error, attempts, first_failure_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            table.as_str()
        );
        Ok(Self { pool, table, insert_sql })
    }

    /// Creates the table if it does not exist, and widens the `stream_name` of one an earlier version created (128
    /// characters) to 256; safe when many processes call it at once.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n\
             \tid bigint unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY,\n\
             \tstream_name varchar({KEY_CHARS}) NOT NULL,\n\
             \tshard_id varchar(128) NOT NULL,\n\
             \tsequence_number varchar(129) NOT NULL,\n\
             \tsub_sequence_number bigint unsigned NULL,\n\
             \tpartition_key varchar(256) NOT NULL,\n\
             \texplicit_hash_key varchar(128) NULL,\n\
             \tdata longblob NOT NULL,\n\
             \tapproximate_arrival_ms bigint NULL,\n\
             \terror text NOT NULL,\n\
             \tattempts int unsigned NOT NULL,\n\
             \tfirst_failure_ms bigint NOT NULL,\n\
             \tdead_lettered_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)\n\
             )",
            self.table.as_str()
        );
        sqlx::query(&sql).execute(&self.pool).await.map_err(|e| self.error("creating the dead-letter table", e))?;
        // A table of an earlier version: `stream_name` widened (a record's stream is its ARN when named by one).
        let columns = [Column::Varchar("stream_name", KEY_CHARS)];
        upgrade(&self.pool, &self.table, &columns, |what, e| self.error(what, e)).await
    }

    fn error(&self, what: &str, e: sqlx::Error) -> Error {
        let table = self.table.as_str();
        error::map_or_missing(what, e, || {
            format!("{what}: the dead-letter table {table} does not exist (MySqlDeadLetter::create_table_if_missing)")
        })
    }
}

/// Milliseconds since the Unix epoch (0 before it).
fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl DeadLetter for MySqlDeadLetter {
    async fn send(&self, r: &FailedRecord) -> Result<(), DeadLetterError> {
        let inserted = sqlx::query(&self.insert_sql)
            .bind(r.stream())
            .bind(r.shard_id())
            .bind(r.sequence_number().to_string())
            .bind(r.sub_sequence_number())
            .bind(r.partition_key())
            .bind(r.explicit_hash_key())
            .bind(r.data().as_ref())
            .bind(r.approximate_arrival_timestamp().map(epoch_ms))
            .bind(r.error())
            .bind(r.attempts())
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
