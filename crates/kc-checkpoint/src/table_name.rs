//! Validation of the table names SQL stores put into their statements, one rule for every SQL backend.
//!
//! A SQL store (PostgreSQL, MySQL) writes its table name unquoted into SQL text, as the Go library does, so the name
//! must be a plain identifier: `table` or `qualifier.table` (a schema or a database), each part matching
//! `[A-Za-z_][A-Za-z0-9_]*` and no longer than the backend keeps (63 bytes in PostgreSQL, which truncates longer
//! ones silently). Nothing else (quotes, spaces, comments, non-ASCII letters) gets through, so no name can change a
//! statement. Each store crate keeps its own `TableName` type and the SQL built from it; this is only the check.
//!
//! ```
//! use kc_checkpoint::{table_name, ErrorKind};
//!
//! assert!(table_name::validate("public.kinesis_consumer", "schema", 63).is_ok());
//! let err = table_name::validate("x; DROP TABLE y", "schema", 63).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidInput);
//! ```

use crate::{Error, ErrorKind};

/// Checks that `name` is `table` or `{qualifier}.table` (`qualifier` is what the backend calls the first part, e.g.
/// `schema` or `database`, for the message), each part an ASCII identifier of at most `max_part_len` characters.
///
/// Fails with [`ErrorKind::InvalidInput`], saying what is expected.
pub fn validate(name: &str, qualifier: &str, max_part_len: usize) -> Result<(), Error> {
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
                match (ok, validate(name, "schema", max)) {
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
}
