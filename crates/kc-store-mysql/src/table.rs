//! Table names and the SQL built from them.

use kc_checkpoint::{sql, Error};

/// The width of the checkpoint table's `namespace` (`{app}-{stream}`): a stream's key is up to about 200 characters
/// when it is named by ARN (`arn:aws-us-gov:kinesis:us-gov-west-1:123456789012:stream/` and 128, `@` and a creation
/// time for a stream created again), which leaves 300 for the app. With `shard_id varchar(255)`, the primary key is at
/// most 3,068 bytes in utf8mb4, under InnoDB's 3,072.
pub(crate) const NAMESPACE_CHARS: u32 = 512;

/// The width of a stream's key outside the checkpoint table's namespace: the lease table's `stream_name` and
/// `shard_id` (the group's markers are keyed by the stream's key), the dead-letter table's `stream_name`. With
/// `group_name varchar(255)`, the lease table's primary key is at most 3,068 bytes in utf8mb4.
pub(crate) const KEY_CHARS: u32 = 256;

/// The longest identifier part accepted (MySQL allows 64; 63 keeps one rule for both SQL stores).
const MAX_IDENT_LEN: usize = 63;

/// A validated table name, `table` or `database.table`, each part matching `[A-Za-z_][A-Za-z0-9_]*` (at most 63
/// characters). Only a `TableName` is ever put into SQL text, unquoted, as the Go library does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableName(String);

impl TableName {
    pub(crate) fn parse(name: &str) -> Result<Self, Error> {
        sql::validate_table_name(name, "database", MAX_IDENT_LEN)?;
        Ok(Self(name.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the primary-key constraint (the Go README's `_pk`; MySQL names primary keys `PRIMARY` anyway).
    fn constraint_name(&self) -> String {
        let table = self.0.rsplit('.').next().unwrap_or(&self.0);
        let mut name = format!("{table}_pk");
        name.truncate(MAX_IDENT_LEN);
        name
    }

    /// The DDL of the table (the Go library's table plus `sub_sequence_number` and `finished`).
    pub(crate) fn create_table_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n\
             \tnamespace varchar({NAMESPACE_CHARS}) NOT NULL,\n\
             \tshard_id varchar(255) NOT NULL,\n\
             \tsequence_number numeric(65,0) NOT NULL,\n\
             \tsub_sequence_number bigint unsigned NULL,\n\
             \tfinished boolean NOT NULL DEFAULT false,\n\
             \tCONSTRAINT {pk} PRIMARY KEY (namespace, shard_id)\n\
             )",
            t = self.0,
            pk = self.constraint_name(),
        )
    }

    /// Reads one checkpoint: parameters namespace, shard id.
    pub(crate) fn select_sql(&self) -> String {
        format!(
            "SELECT CAST(sequence_number AS CHAR), sub_sequence_number, finished FROM {} \
             WHERE namespace = ? AND shard_id = ?",
            self.0
        )
    }

    /// Writes `rows` checkpoints in one statement, each only if it is after the stored one.
    ///
    /// Parameters per row: namespace, shard id, sequence number (text), sub-sequence number (NULL: the whole record),
    /// finished. MySQL evaluates the assignments of `ON DUPLICATE KEY UPDATE` left to right, each seeing the columns
    /// already assigned, so "is the new row after the stored one" is computed once, from the old values, into the
    /// session variable `@kc_newer` by the first assignment, and the others only read it. A shard-end marker keeps
    /// the last stored position.
    pub(crate) fn upsert_sql(&self, rows: usize) -> String {
        let values = vec!["(?, ?, CAST(? AS DECIMAL(65,0)), ?, ?)"; rows].join(", ");
        format!(
            "INSERT INTO {t} (namespace, shard_id, sequence_number, sub_sequence_number, finished) VALUES {values} \
             ON DUPLICATE KEY UPDATE \
             sub_sequence_number = IF(@kc_newer := COALESCE(NOT finished AND (VALUES(finished) \
             OR sequence_number < VALUES(sequence_number) \
             OR (sequence_number = VALUES(sequence_number) AND sub_sequence_number IS NOT NULL \
             AND (VALUES(sub_sequence_number) IS NULL OR sub_sequence_number < VALUES(sub_sequence_number)))), FALSE), \
             IF(VALUES(finished), sub_sequence_number, VALUES(sub_sequence_number)), sub_sequence_number), \
             sequence_number = IF(@kc_newer AND NOT VALUES(finished), VALUES(sequence_number), sequence_number), \
             finished = IF(@kc_newer, VALUES(finished), finished)",
            t = self.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::ErrorKind;

    /// The rule and its cases are `kc_checkpoint::sql`'s; here only this crate's limit and word.
    #[test]
    fn table_names() {
        assert!(TableName::parse(&"a".repeat(MAX_IDENT_LEN)).is_ok());
        let err = TableName::parse(&"a".repeat(MAX_IDENT_LEN + 1)).expect_err("too long");
        assert!(err.kind() == ErrorKind::InvalidInput && err.to_string().contains("`database.table`"), "{err}");
    }

    #[test]
    fn sql_uses_the_table_name() {
        let t = TableName::parse("app.checkpoints").expect("valid");
        let ddl = t.create_table_sql();
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS app.checkpoints ("), "{ddl}");
        assert!(ddl.contains("CONSTRAINT checkpoints_pk PRIMARY KEY (namespace, shard_id)"), "{ddl}");
        assert!(ddl.contains("sequence_number numeric(65,0) NOT NULL"), "{ddl}");
        assert!(ddl.contains("sub_sequence_number bigint unsigned NULL"), "{ddl}");
        assert!(t.select_sql().contains("FROM app.checkpoints WHERE"));
        let upsert = t.upsert_sql(3);
        assert!(upsert.starts_with("INSERT INTO app.checkpoints ("), "{upsert}");
        assert_eq!(upsert.matches('?').count(), 15, "{upsert}");
        // The condition is computed once, before any column is assigned.
        let first = upsert.find("@kc_newer :=").expect("condition computed");
        assert!(upsert.find("sub_sequence_number = IF(").is_some_and(|i| i < first), "{upsert}");
        assert_eq!(upsert.matches("@kc_newer").count(), 3, "{upsert}");
    }
}
