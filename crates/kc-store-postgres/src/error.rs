//! How sqlx errors become [`kc_checkpoint::Error`]s.

use kc_checkpoint::{sql, Error, ErrorKind};

/// SQLSTATE codes worth retrying: serialization failure, deadlock, lock not available, too many connections, and the
/// server shutting down or starting up. Class `08` (connection exceptions) is retried as a whole.
const TRANSIENT_CODES: &[&str] = &["40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03"];

/// `undefined_table` and `undefined_column`: the table is missing or has the Go library's old schema.
const MISSING_TABLE_CODES: &[&str] = &["42P01", "42703"];

/// Maps a sqlx error to a checkpoint-store error, keeping the sqlx error as the source.
pub(crate) fn map(what: &str, table: &str, err: sqlx::Error) -> Error {
    map_or_missing(what, err, || sql::missing_checkpoint_table(what, table, "PostgresStore"))
}

/// Maps a sqlx error of the lease table `table` (see [`crate::PostgresLeaseTable`]), keeping it as the source.
pub(crate) fn map_lease(what: &str, table: &str, err: sqlx::Error) -> Error {
    map_or_missing(what, err, || sql::missing_lease_table(what, table, "PostgresLeaseTable"))
}

/// A missing table (or column) is `Permanent` with the message `missing`; the rest is classified by [`kind_of`].
fn map_or_missing(what: &str, err: sqlx::Error, missing: impl FnOnce() -> String) -> Error {
    if matches!(&err, sqlx::Error::Database(db) if db.code().is_some_and(|c| MISSING_TABLE_CODES.contains(&c.as_ref())))
    {
        return Error::with_source(ErrorKind::Permanent, missing(), err);
    }
    Error::with_source(kind_of(&err), what.to_owned(), err)
}

fn kind_of(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => {
            ErrorKind::Transient
        }
        sqlx::Error::Database(db) => match db.code() {
            Some(code) if code.starts_with("08") || TRANSIENT_CODES.contains(&code.as_ref()) => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        },
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        _ => ErrorKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let cases = [
            (sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)), ErrorKind::Transient),
            (sqlx::Error::PoolTimedOut, ErrorKind::Transient),
            (sqlx::Error::PoolClosed, ErrorKind::Permanent),
            (sqlx::Error::RowNotFound, ErrorKind::Permanent),
            (sqlx::Error::Configuration("bad url".into()), ErrorKind::InvalidInput),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            let mapped = map("flush", "t", err);
            assert_eq!(mapped.kind(), want, "{text}");
            assert!(std::error::Error::source(&mapped).is_some(), "{text}: source kept");
        }
    }
}
