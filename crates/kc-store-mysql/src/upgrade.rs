//! The in-place upgrade of a table an earlier version created: columns widened, columns added. Run by every
//! `create_table_if_missing` after its `CREATE TABLE IF NOT EXISTS`, so it must be safe when many processes start
//! together: the whole upgrade (read the columns, alter what is missing) runs under a named lock of the server
//! (`GET_LOCK`, one per table), so callers run it one after the other, and each alters only what it still finds
//! missing; the later ones find nothing to do. A table already in shape costs one connection and three short
//! statements, no DDL.

use kc_checkpoint::{Error, ErrorKind};
use sqlx::mysql::MySqlConnection;
use sqlx::{MySqlPool, Row};

use crate::error;
use crate::table::TableName;

/// How long a caller waits for another's upgrade of the same table (one ALTER, usually instant).
const LOCK_WAIT_SECS: u32 = 60;

/// A column `create_table_if_missing` wants.
pub(crate) enum Column<'a> {
    /// A `varchar` column of at least this many characters: a narrower one is widened (same character set,
    /// collation and nullability).
    Varchar(&'a str, u32),
    /// A column added with this definition when missing.
    Added(&'a str, &'a str),
}

/// Brings `table` to `columns`; `map` turns a database error into the caller's (naming the table and the call).
pub(crate) async fn upgrade(
    pool: &MySqlPool,
    table: &TableName,
    columns: &[Column<'_>],
    map: impl Fn(&str, sqlx::Error) -> Error,
) -> Result<(), Error> {
    const WHAT: &str = "upgrading the table";
    let (schema, name) = match table.as_str().split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table.as_str()),
    };
    let mut conn = pool.acquire().await.map_err(|e| map(WHAT, e))?;
    // 64 characters at most for a lock name in MySQL: the table's full name hashed.
    let lock = "CONCAT('kc_ddl_', MD5(CONCAT(COALESCE(?, DATABASE()), '.', ?)))";
    let locked: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({lock}, ?)"))
        .bind(schema)
        .bind(name)
        .bind(LOCK_WAIT_SECS)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map(WHAT, e))?;
    if locked != Some(1) {
        return Err(Error::new(
            ErrorKind::Transient,
            format!(
                "{WHAT} {}: another process held its upgrade lock for more than {LOCK_WAIT_SECS} s",
                table.as_str()
            ),
        ));
    }
    let result = upgrade_locked(&mut conn, table, schema, name, columns).await.map_err(|e| map(WHAT, e));
    let released =
        sqlx::query(&format!("SELECT RELEASE_LOCK({lock})")).bind(schema).bind(name).execute(&mut *conn).await;
    if released.is_err() {
        // The lock belongs to the session: closing the connection releases it (the pool opens another).
        let _ = sqlx::Connection::close(conn.detach()).await;
    }
    result
}

/// A column as the table has it.
struct Existing {
    name: String,
    length: Option<i64>,
    nullable: bool,
    charset: Option<String>,
    collation: Option<String>,
}

async fn upgrade_locked(
    conn: &mut MySqlConnection,
    table: &TableName,
    schema: Option<&str>,
    name: &str,
    columns: &[Column<'_>],
) -> Result<(), sqlx::Error> {
    // Cast: MySQL 8 reports information_schema's text as binary strings.
    let rows = sqlx::query(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED), CAST(IS_NULLABLE AS CHAR), \
         CAST(CHARACTER_SET_NAME AS CHAR), CAST(COLLATION_NAME AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
    )
    .bind(schema)
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let existing = rows
        .iter()
        .map(|row| {
            Ok(Existing {
                name: row.try_get(0)?,
                length: row.try_get(1)?,
                nullable: row.try_get::<String, _>(2)? == "YES",
                charset: row.try_get(3)?,
                collation: row.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let find = |column: &str| existing.iter().find(|e| e.name.eq_ignore_ascii_case(column));
    for column in columns {
        if let Column::Added(column, definition) = column {
            if find(column).is_none() {
                let add = format!("ALTER TABLE {} ADD COLUMN {column} {definition}", table.as_str());
                match sqlx::query(&add).execute(&mut *conn).await {
                    // Added meanwhile by a version of this crate that took no lock.
                    Err(e) if !error::is_duplicate_column(&e) => return Err(e),
                    _ => {}
                }
            }
        }
    }
    let widen: Vec<String> = columns
        .iter()
        .filter_map(|column| {
            let Column::Varchar(column, length) = column else { return None };
            let found = find(column)?;
            (found.length.is_some_and(|l| l < i64::from(*length))).then(|| modify(found, *length))
        })
        .collect();
    if !widen.is_empty() {
        let alter = format!("ALTER TABLE {} {}", table.as_str(), widen.join(", "));
        sqlx::query(&alter).execute(&mut *conn).await?;
    }
    Ok(())
}

/// `MODIFY COLUMN` to `varchar(length)`, keeping the column's character set, collation and nullability (names from
/// the server's catalog, put into SQL text only if they are plain identifiers).
fn modify(column: &Existing, length: u32) -> String {
    fn plain(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    }
    let mut sql = format!("MODIFY COLUMN {} varchar({length})", column.name);
    if let Some(charset) = plain(&column.charset) {
        sql.push_str(&format!(" CHARACTER SET {charset}"));
    }
    if let Some(collation) = plain(&column.collation) {
        sql.push_str(&format!(" COLLATE {collation}"));
    }
    sql.push_str(if column.nullable { " NULL" } else { " NOT NULL" });
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_widened_column_keeps_its_character_set_collation_and_nullability() {
        let column = |charset: Option<&str>, collation: Option<&str>, nullable| Existing {
            name: "stream_name".to_owned(),
            length: Some(128),
            nullable,
            charset: charset.map(str::to_owned),
            collation: collation.map(str::to_owned),
        };
        let cases = [
            (
                column(Some("utf8mb4"), Some("utf8mb4_bin"), false),
                "MODIFY COLUMN stream_name varchar(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL",
            ),
            (column(None, None, true), "MODIFY COLUMN stream_name varchar(256) NULL"),
            (column(Some("x; DROP"), Some(""), false), "MODIFY COLUMN stream_name varchar(256) NOT NULL"),
        ];
        for (existing, want) in cases {
            assert_eq!(modify(&existing, 256), want);
        }
    }
}
