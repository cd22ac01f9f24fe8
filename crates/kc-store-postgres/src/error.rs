//! How sqlx errors become [`kc_checkpoint::Error`]s.

use kc_checkpoint::{sql, Error, ErrorKind};

/// SQLSTATE codes worth retrying: serialization failure (40001), deadlock (40P01), lock not available (55P03), too many
/// connections (53300), a statement cancelled (57014: a statement timeout, or cancelled by an operator or a failover),
/// the server shutting down, crashing, starting up or its database dropped for a restore (57P01..57P04), and a
/// read-only transaction (25006: connected to a replica, or to a primary that was demoted, during a failover; the
/// pool reconnects to the new primary). Class `08` (connection exceptions) is retried as a whole.
const TRANSIENT_CODES: &[&str] =
    &["40001", "40P01", "55P03", "53300", "57014", "57P01", "57P02", "57P03", "57P04", "25006"];

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
pub(crate) fn map_or_missing(what: &str, err: sqlx::Error, missing: impl FnOnce() -> String) -> Error {
    if matches!(&err, sqlx::Error::Database(db) if db.code().is_some_and(|c| MISSING_TABLE_CODES.contains(&c.as_ref())))
    {
        return Error::with_source(ErrorKind::Permanent, missing(), err);
    }
    Error::with_source(kind_of(&err), what.to_owned(), err)
}

fn kind_of(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Io(io) if tls_refused(io) => ErrorKind::Permanent,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => {
            ErrorKind::Transient
        }
        sqlx::Error::Database(db) => db.code().map_or(ErrorKind::Permanent, |code| code_kind(&code)),
        sqlx::Error::Configuration(_) => ErrorKind::InvalidInput,
        _ => ErrorKind::Permanent,
    }
}

/// The kind of a SQLSTATE code.
fn code_kind(code: &str) -> ErrorKind {
    if code.starts_with("08") || TRANSIENT_CODES.contains(&code) {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
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

    #[test]
    fn sqlstate_codes() {
        let transient = ["08006", "08001", "40001", "40P01", "55P03", "53300", "57014", "57P01", "57P04", "25006"];
        for code in transient {
            assert_eq!(code_kind(code), ErrorKind::Transient, "{code}");
        }
        for code in ["23505", "42501", "22003", "XX000"] {
            assert_eq!(code_kind(code), ErrorKind::Permanent, "{code}");
        }
    }

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
