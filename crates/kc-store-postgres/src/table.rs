//! Table names and the SQL built from them.

use kc_checkpoint::{sql, Error};

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1): longer ones would be truncated silently.
const MAX_IDENT_LEN: usize = 63;

/// A validated table name, `table` or `schema.table`, each part matching `[A-Za-z_][A-Za-z0-9_]*` (at most 63 bytes).
///
/// Only a `TableName` is ever put into SQL text. It is written unquoted, as the Go library does, so a table created
/// with `CREATE TABLE Kinesis_Consumer` (folded to lower case by PostgreSQL) is found by the name `Kinesis_Consumer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableName(String);

impl TableName {
    pub(crate) fn parse(name: &str) -> Result<Self, Error> {
        sql::validate_table_name(name, "schema", MAX_IDENT_LEN)?;
        Ok(Self(name.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the primary-key constraint `create_table_if_missing` gives the table (the Go README's `_pk`).
    pub(crate) fn constraint_name(&self) -> String {
        let table = self.0.rsplit('.').next().unwrap_or(&self.0);
        let mut name = format!("{table}_pk");
        name.truncate(MAX_IDENT_LEN);
        name
    }

    /// The DDL of the table (the Go library's table plus `sub_sequence_number` and `finished`).
    pub(crate) fn create_table_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n\
             \tnamespace text NOT NULL,\n\
             \tshard_id text NOT NULL,\n\
             \tsequence_number numeric NOT NULL,\n\
             \tsub_sequence_number bigint NULL,\n\
             \tfinished boolean NOT NULL DEFAULT false,\n\
             \tCONSTRAINT {pk} PRIMARY KEY (namespace, shard_id)\n\
             )",
            t = self.0,
            pk = self.constraint_name(),
        )
    }

    /// Reads one checkpoint: `$1` namespace, `$2` shard id.
    pub(crate) fn select_sql(&self) -> String {
        format!(
            "SELECT sequence_number::text, sub_sequence_number, finished FROM {} WHERE namespace = $1 AND shard_id = $2",
            self.0
        )
    }

    /// Writes many checkpoints in one statement, each only if it is after the stored one.
    ///
    /// Parameters are parallel arrays: `$1` namespaces, `$2` shard ids, `$3` sequence numbers (text, cast to numeric),
    /// `$4` sub-sequence numbers (NULL: the whole record), `$5` finished flags. The `WHERE` of `DO UPDATE` keeps the
    /// stored row when it is at or after the new one, so a checkpoint never moves backwards whatever order concurrent
    /// writers commit in. A shard-end marker keeps the last stored position (for readers of the old schema).
    pub(crate) fn upsert_sql(&self) -> String {
        format!(
            "INSERT INTO {t} AS t (namespace, shard_id, sequence_number, sub_sequence_number, finished) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]::numeric[], $4::bigint[], $5::boolean[]) \
             ON CONFLICT (namespace, shard_id) DO UPDATE SET \
             sequence_number = CASE WHEN EXCLUDED.finished THEN t.sequence_number ELSE EXCLUDED.sequence_number END, \
             sub_sequence_number = CASE WHEN EXCLUDED.finished THEN t.sub_sequence_number \
             ELSE EXCLUDED.sub_sequence_number END, \
             finished = EXCLUDED.finished \
             WHERE NOT t.finished AND (EXCLUDED.finished \
             OR t.sequence_number < EXCLUDED.sequence_number \
             OR (t.sequence_number = EXCLUDED.sequence_number AND t.sub_sequence_number IS NOT NULL \
             AND (EXCLUDED.sub_sequence_number IS NULL OR t.sub_sequence_number < EXCLUDED.sub_sequence_number)))",
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
        assert!(err.kind() == ErrorKind::InvalidInput && err.to_string().contains("`schema.table`"), "{err}");
    }

    #[test]
    fn sql_uses_the_table_name() {
        let t = TableName::parse("app.checkpoints").expect("valid");
        let ddl = t.create_table_sql();
        assert!(ddl.starts_with("CREATE TABLE IF NOT EXISTS app.checkpoints ("), "{ddl}");
        assert!(ddl.contains("CONSTRAINT checkpoints_pk PRIMARY KEY (namespace, shard_id)"), "{ddl}");
        assert!(ddl.contains("sub_sequence_number bigint NULL"), "{ddl}");
        assert!(ddl.contains("finished boolean NOT NULL DEFAULT false"), "{ddl}");
        assert!(t.select_sql().contains("FROM app.checkpoints WHERE"));
        let upsert = t.upsert_sql();
        assert!(upsert.starts_with("INSERT INTO app.checkpoints AS t"), "{upsert}");
        assert!(upsert.contains("ON CONFLICT (namespace, shard_id) DO UPDATE"), "{upsert}");
        let long = TableName::parse(&"b".repeat(63)).expect("valid");
        assert_eq!(long.constraint_name().len(), 63);
    }
}
