//! What the SQL stores (PostgreSQL, MySQL) share that is not SQL: the check of their table names, the rows of a
//! flush, a stored row read back as a [`Checkpoint`], and the error message of a missing table. The statements, the
//! column types, the driver calls and the error codes stay in each store crate.
//!
//! A SQL store writes its table name unquoted into SQL text, as the Go library does, so the name must be a plain
//! identifier: `table` or `qualifier.table` (a schema or a database), each part matching `[A-Za-z_][A-Za-z0-9_]*`
//! and no longer than the backend keeps (63 bytes in PostgreSQL, which truncates longer ones silently). Nothing else
//! (quotes, spaces, comments, non-ASCII letters) gets through [`validate_table_name`], so no name can change a
//! statement.
//!
//! ```
//! use kc_checkpoint::{sql, ErrorKind};
//!
//! assert!(sql::validate_table_name("public.kinesis_consumer", "schema", 63).is_ok());
//! let err = sql::validate_table_name("x; DROP TABLE y", "schema", 63).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidInput);
//! ```

use std::collections::BTreeMap;

use crate::{Checkpoint, Error, ErrorKind, SequenceNumber, ShardKey};

/// Checks that `name` is `table` or `{qualifier}.table` (`qualifier` is what the backend calls the first part, e.g.
/// `schema` or `database`, for the message), each part an ASCII identifier of at most `max_part_len` characters.
///
/// Fails with [`ErrorKind::InvalidInput`], saying what is expected.
pub fn validate_table_name(name: &str, qualifier: &str, max_part_len: usize) -> Result<(), Error> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = parts.len() <= 2 && parts.iter().all(|part| is_identifier(part, max_part_len));
    if valid {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "invalid table name {name:?}: expected `table` or `{qualifier}.table`, each part matching \
             [A-Za-z_][A-Za-z0-9_]* with at most {max_part_len} characters"
        ),
    ))
}

fn is_identifier(part: &str, max_len: usize) -> bool {
    let mut bytes = part.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    first_ok && part.len() <= max_len && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The value of the `namespace` column: `{app}-{stream}`, as the Go library's stores write it. Ambiguous when names
/// contain `-` (app `a-b` with stream `c` and app `a` with stream `b-c` share `a-b-c`): [`rows`] keeps one row.
pub fn namespace(key: &ShardKey) -> String {
    format!("{}-{}", key.app(), key.stream())
}

/// One row of a checkpoint table as a flush writes it (the Go library's columns plus `sub_sequence_number` and
/// `finished`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The `namespace` column ([`namespace`]).
    pub namespace: String,
    /// The `shard_id` column.
    pub shard: String,
    /// The `sequence_number` column, as decimal text. `"0"` for a shard end: the column is `NOT NULL` in the Go
    /// schema, and an existing row keeps its own position.
    pub sequence: String,
    /// The `sub_sequence_number` column (`None`: the whole record, or a shard end).
    pub sub_sequence: Option<u64>,
    /// The `finished` column: the shard was read to its end.
    pub finished: bool,
}

/// The rows of a flush: one per primary key `(namespace, shard_id)`, sorted by it (so that concurrent flushes lock
/// rows in the same order and cannot deadlock each other). Two keys can share a row (see [`namespace`]): the later
/// checkpoint is kept, as one statement may not update a row twice.
pub fn rows<'a>(batch: impl IntoIterator<Item = (&'a ShardKey, &'a Checkpoint)>) -> Vec<Row> {
    let mut by_pk: BTreeMap<(String, String), &Checkpoint> = BTreeMap::new();
    for (key, checkpoint) in batch {
        let slot = by_pk.entry((namespace(key), key.shard().to_owned())).or_insert(checkpoint);
        if checkpoint > *slot {
            *slot = checkpoint;
        }
    }
    by_pk
        .into_iter()
        .map(|((namespace, shard), checkpoint)| match checkpoint {
            Checkpoint::At { sequence, sub_sequence } => {
                Row { namespace, shard, sequence: sequence.to_string(), sub_sequence: *sub_sequence, finished: false }
            }
            Checkpoint::ShardEnd => {
                Row { namespace, shard, sequence: "0".to_owned(), sub_sequence: None, finished: true }
            }
        })
        .collect()
}

/// A stored row read back: `finished` is a shard end, else the sequence number (`None`: no checkpoint yet, as in a
/// new lease) and the sub-sequence number in the column's type `S`. A value that is not one (not a decimal number, a
/// negative sub-sequence number) is a [`ErrorKind::Permanent`] error naming `table`.
pub fn stored_checkpoint<S>(
    table: &str,
    finished: bool,
    sequence: Option<String>,
    sub_sequence: Option<S>,
) -> Result<Option<Checkpoint>, Error>
where
    u64: TryFrom<S>,
    <u64 as TryFrom<S>>::Error: std::error::Error + Send + Sync + 'static,
{
    if finished {
        return Ok(Some(Checkpoint::ShardEnd));
    }
    let Some(sequence) = sequence else { return Ok(None) };
    let sequence = SequenceNumber::parse(sequence).map_err(|e| {
        Error::with_source(ErrorKind::Permanent, format!("invalid sequence number stored in {table}"), e)
    })?;
    let sub_sequence = sub_sequence
        .map(u64::try_from)
        .transpose()
        .map_err(|e| Error::with_source(ErrorKind::Permanent, format!("negative sub-sequence in {table}"), e))?;
    Ok(Some(Checkpoint::At { sequence, sub_sequence }))
}

/// The message of an error that says checkpoint table `table` is missing or has the Go library's old schema, while
/// doing `what`; `store` is the store's type, whose `create_table_if_missing` creates it.
pub fn missing_checkpoint_table(what: &str, table: &str, store: &str) -> String {
    format!(
        "{what}: checkpoint table {table} is missing or lacks the columns sub_sequence_number and finished \
         (create it with {store}::create_table_if_missing, or see the crate docs for the DDL and the ALTER TABLE \
         statements)"
    )
}

/// The message of an error that says lease table `table` is missing or lacks columns, while doing `what`;
/// `lease_table` is the lease table's type, whose `create_table_if_missing` creates it.
pub fn missing_lease_table(what: &str, table: &str, lease_table: &str) -> String {
    format!(
        "{what}: lease table {table} is missing or lacks columns (create it with \
         {lease_table}::create_table_if_missing, or see the crate docs for the DDL)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        // The limits of PostgreSQL (63) and of MySQL (64).
        for max in [63, 64] {
            let long = "a".repeat(max);
            let too_long = "a".repeat(max + 1);
            let long_qualified = format!("{long}.{long}");
            let cases: &[(&str, bool)] = &[
                ("kinesis_consumer", true),
                ("Kinesis_Consumer2", true),
                ("_t", true),
                ("public.kinesis_consumer", true),
                ("test.kinesis_consumer", true),
                (&long, true),
                (&long_qualified, true),
                ("", false),
                (".", false),
                ("a.", false),
                (".a", false),
                ("a.b.c", false),
                ("1table", false),
                ("x; DROP TABLE y", false),
                ("x;DROP TABLE y--", false),
                ("kinesis consumer", false),
                (" kinesis_consumer", false),
                ("kinesis_consumer ", false),
                ("\"quoted\"", false),
                ("it's", false),
                ("`back`", false),
                ("a-b", false),
                ("tåble", false),
                ("таблица", false),
                ("t\0", false),
                ("t\n", false),
                ("a/**/b", false),
                (&too_long, false),
            ];
            for &(name, ok) in cases {
                match (ok, validate_table_name(name, "schema", max)) {
                    (true, Ok(())) => {}
                    (false, Err(e)) => {
                        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}");
                        assert!(e.to_string().contains("`schema.table`"), "{e}");
                        assert!(e.to_string().contains(&format!("at most {max} characters")), "{e}");
                    }
                    (want, got) => panic!("{name:?} (at most {max}): want valid={want}, got {got:?}"),
                }
            }
        }
    }

    fn at(s: &str, sub: Option<u64>) -> Checkpoint {
        Checkpoint::At { sequence: SequenceNumber::parse(s).expect("valid"), sub_sequence: sub }
    }

    #[test]
    fn rows_are_sorted_and_deduplicated() {
        let (k2, k1a, k1b, k0) = (
            ShardKey::new("b", "s", "2"),
            ShardKey::new("a", "b-c", "1"),
            // Same row as the one above (app `a`, stream `b-c` vs app `a-b`, stream `c`): the later checkpoint wins.
            ShardKey::new("a-b", "c", "1"),
            ShardKey::new("a", "b-c", "0"),
        );
        let (c2, c1a, c1b) = (at("10", Some(u64::MAX)), at("9", None), at("10", None));
        let rows = rows([(&k2, &c2), (&k1a, &c1a), (&k1b, &c1b), (&k0, &Checkpoint::ShardEnd)]);
        let got: Vec<_> =
            rows.iter().map(|r| (&*r.namespace, &*r.shard, &*r.sequence, r.sub_sequence, r.finished)).collect();
        assert_eq!(
            got,
            [
                ("a-b-c", "0", "0", None, true),
                ("a-b-c", "1", "10", None, false),
                ("b-s", "2", "10", Some(u64::MAX), false)
            ]
        );
        assert_eq!(namespace(&ShardKey::new("app", "stream", "shard")), "app-stream");
    }

    #[test]
    fn stored_rows_read_back() {
        let read = |finished, sequence: Option<&str>, sub: Option<i64>| {
            stored_checkpoint("t", finished, sequence.map(str::to_owned), sub).map_err(|e| e.kind())
        };
        assert_eq!(read(true, Some("1"), Some(-1)), Ok(Some(Checkpoint::ShardEnd)));
        assert_eq!(read(false, None, None), Ok(None));
        assert_eq!(read(false, Some("12"), Some(3)), Ok(Some(at("12", Some(3)))));
        assert_eq!(read(false, Some("12"), None), Ok(Some(at("12", None))));
        assert_eq!(read(false, Some("x"), None), Err(ErrorKind::Permanent));
        assert_eq!(read(false, Some("12"), Some(-1)), Err(ErrorKind::Permanent));
        let unsigned = stored_checkpoint("t", false, Some("5".to_owned()), Some(u64::MAX)).expect("valid");
        assert_eq!(unsigned, Some(at("5", Some(u64::MAX))));
        let message = missing_checkpoint_table("reading", "app.t", "SomeStore");
        assert!(message.starts_with("reading: checkpoint table app.t is missing"), "{message}");
        assert!(message.contains("SomeStore::create_table_if_missing"), "{message}");
        assert!(missing_lease_table("x", "l", "SomeLeases").contains("lease table l is missing"));
    }
}
