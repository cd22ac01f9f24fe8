//! How sqlx errors become [`kc_checkpoint::Error`]s.

use kc_checkpoint::{sql, Error, ErrorKind};
use sqlx::mysql::MySqlDatabaseError;

/// Server error numbers worth retrying: deadlock (1213), lock wait timeout (1205), too many connections (1040),
/// server shutting down (1053), connection killed (1927, MariaDB), idle connection dropped (4031, MySQL), the
/// client's "server has gone away" / "lost connection" (2006, 2013), and a server or transaction that is read-only
/// (1290 `--read-only`, 1792 read-only transaction, 1836 read-only mode: a replica, or a demoted primary, during a
/// failover; the pool reconnects to the new primary). SQLSTATE class `08` is retried as a whole.
const TRANSIENT_NUMBERS: &[u16] = &[1213, 1205, 1040, 1053, 1927, 4031, 2006, 2013, 1290, 1792, 1836];

/// No such table (1146), unknown column (1054): the table is missing or has the Go library's old schema.
const MISSING_TABLE_NUMBERS: &[u16] = &[1146, 1054];

/// Maps a sqlx error to a checkpoint-store error, keeping the sqlx error as the source.
pub(crate) fn map(what: &str, table: &str, err: sqlx::Error) -> Error {
    map_or_missing(what, err, || sql::missing_checkpoint_table(what, table, "MySqlStore"))
}

/// Maps a sqlx error of the lease table `table` (see [`crate::MySqlLeaseTable`]), keeping it as the source.
pub(crate) fn map_lease(what: &str, table: &str, err: sqlx::Error) -> Error {
    map_or_missing(what, err, || sql::missing_lease_table(what, table, "MySqlLeaseTable"))
}

/// A missing table (or column) is `Permanent` with the message `missing`; the rest is classified by [`kind_of`].
pub(crate) fn map_or_missing(what: &str, err: sqlx::Error, missing: impl FnOnce() -> String) -> Error {
    if number(&err).is_some_and(|n| MISSING_TABLE_NUMBERS.contains(&n)) {
        return Error::with_source(ErrorKind::Permanent, missing(), err);
    }
    Error::with_source(kind_of(&err), what.to_owned(), err)
}

/// Whether `err` is a duplicate-key error (1062): the row exists.
pub(crate) fn is_duplicate_key(err: &sqlx::Error) -> bool {
    number(err) == Some(1062)
}

/// Whether `err` is a duplicate-column error (1060): the table has that column.
pub(crate) fn is_duplicate_column(err: &sqlx::Error) -> bool {
    number(err) == Some(1060)
}

fn number(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db.try_downcast_ref::<MySqlDatabaseError>().map(MySqlDatabaseError::number),
        _ => None,
    }
}

fn kind_of(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Io(io) if tls_refused(io) => ErrorKind::Permanent,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => {
            ErrorKind::Transient
        }
        sqlx::Error::Database(db) => {
            let transient_number = number(err).is_some_and(|n| TRANSIENT_NUMBERS.contains(&n));
            if transient_number || db.code().is_some_and(|c| c.starts_with("08")) {
                ErrorKind::Transient
            } else {
                ErrorKind::Permanent
            }
        }
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        _ => ErrorKind::Permanent,
    }
}

/// Whether `io` is the TLS handshake refusing the server (rustls's error inside sqlx's IO error): its certificate
/// (another CA, another host name, expired, none), or nothing in common (protocol versions, cipher suites). The same
/// server gives the same answer, so this is `Permanent`: a retry cannot fix it, a person must (the CA, the URL).
#[cfg(feature = "tls")]
fn tls_refused(io: &std::io::Error) -> bool {
    use rustls::Error as Tls;
    io.get_ref().and_then(|e| e.downcast_ref::<Tls>()).is_some_and(|e| {
        matches!(e, Tls::InvalidCertificate(_) | Tls::NoCertificatesPresented | Tls::PeerIncompatible(_))
    })
}

/// Without TLS there is no handshake to refuse.
#[cfg(not(feature = "tls"))]
fn tls_refused(_: &std::io::Error) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS error as sqlx reports it: rustls's error inside an IO error.
    #[cfg(feature = "tls")]
    fn refused(err: rustls::Error) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, err))
    }

    #[test]
    fn kinds() {
        let cases = [
            (sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)), ErrorKind::Transient),
            (sqlx::Error::PoolTimedOut, ErrorKind::Transient),
            (sqlx::Error::PoolClosed, ErrorKind::Permanent),
            (sqlx::Error::RowNotFound, ErrorKind::Permanent),
            (sqlx::Error::Configuration("bad url".into()), ErrorKind::InvalidInput),
            #[cfg(feature = "tls")]
            (refused(rustls::CertificateError::UnknownIssuer.into()), ErrorKind::Permanent),
            #[cfg(feature = "tls")]
            (refused(rustls::CertificateError::NotValidForName.into()), ErrorKind::Permanent),
            // A connection broken mid-stream is not a refusal.
            #[cfg(feature = "tls")]
            (refused(rustls::Error::DecryptError), ErrorKind::Transient),
        ];
        for (err, want) in cases {
            let text = err.to_string();
            let mapped = map("flush", "t", err);
            assert_eq!(mapped.kind(), want, "{text}");
            assert!(std::error::Error::source(&mapped).is_some(), "{text}: source kept");
        }
    }
}
