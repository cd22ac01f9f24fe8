//! MySQL/MariaDB checkpoint store for kinesis-consumer: [`MySqlStore`]; and the lease table of consumer groups:
//! [`MySqlLeaseTable`].
//!
//! Checkpoints live in one table, one row per `(namespace, shard_id)`, where `namespace` is `{app}-{stream}` as in
//! the Go library's store, so tables created for the Go library keep working once they have two more columns.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
//! use kc_store_mysql::MySqlStore;
//!
//! # async fn run() -> Result<(), kc_checkpoint::Error> {
//! let pool = sqlx::mysql::MySqlPoolOptions::new()
//!     .max_connections(4)
//!     .connect("mysql://root@127.0.0.1:3306/test")
//!     .await
//!     .map_err(|e| kc_checkpoint::Error::with_source(kc_checkpoint::ErrorKind::Transient, "connect", e))?;
//! let store = MySqlStore::builder(pool, "kinesis_consumer").flush_interval(Duration::from_secs(1)).build()?;
//! store.create_table_if_missing().await?;
//!
//! let key = ShardKey::new("my-app", "my-stream", "shardId-000000000000");
//! store.set(&key, Checkpoint::at(SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898")?)).await?;
//! store.flush().await?; // or wait for the background flush
//! assert!(store.get(&key).await?.is_some());
//! store.shutdown().await?; // flushes, stops the background task
//! # Ok(())
//! # }
//! ```
//!
//! With the consumer: `Consumer::builder(stream).store(store)`; keep an `Arc<MySqlStore>` (the trait is implemented
//! for `Arc<S>`) to call [`MySqlStore::shutdown`] after the scan returned.
//!
//! # The table
//! Table names must be `table` or `database.table`, each part matching `[A-Za-z_][A-Za-z0-9_]*` with at most 63
//! characters; anything else is an [`ErrorKind::InvalidInput`](kc_checkpoint::ErrorKind::InvalidInput) error of
//! [`MySqlStore::new`]. The name is written into SQL unquoted, as the Go library does, so it cannot be a reserved
//! word such as `order`.
//!
//! [`MySqlStore::create_table_if_missing`] runs (with your table name):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS kinesis_consumer (
//!     namespace varchar(512) NOT NULL,
//!     shard_id varchar(255) NOT NULL,
//!     sequence_number numeric(65,0) NOT NULL,
//!     sub_sequence_number bigint unsigned NULL,
//!     finished boolean NOT NULL DEFAULT false,
//!     CONSTRAINT kinesis_consumer_pk PRIMARY KEY (namespace, shard_id)
//! );
//! ```
//!
//! `namespace` is `{app}-{stream key}`; a stream named by ARN is keyed by its ARN (up to about 200 characters with the
//! suffix of a stream created again), so 512 leaves about 300 for the app. Tables of earlier versions and of the Go
//! library have `varchar(255)`: `create_table_if_missing` widens it in place (see [Upgrades](#upgrades)).
//!
//! A table created for the Go library lacks the last two columns; add them once (existing rows keep their position,
//! as whole records):
//!
//! ```sql
//! ALTER TABLE kinesis_consumer
//!     ADD COLUMN sub_sequence_number bigint unsigned NULL,
//!     ADD COLUMN finished boolean NOT NULL DEFAULT false;
//! ```
//!
//! Without them (or without the table) reads and flushes fail with an
//! [`ErrorKind::Permanent`](kc_checkpoint::ErrorKind::Permanent) error that says so.
//!
//! The `namespace` of app `a-b`, stream `c` is the same as that of app `a`, stream `b-c` (`a-b-c`), as in the Go
//! library: give applications and streams names that cannot collide this way when they share a table.
//!
//! `sub_sequence_number` is the sub-sequence of the last handled user record of a KPL aggregate (NULL: the whole
//! Kinesis record). `finished` marks [`Checkpoint::ShardEnd`](kc_checkpoint::Checkpoint::ShardEnd); the row keeps
//! the last position in `sequence_number` (0 if the shard had none).
//!
//! **Limit:** `DECIMAL(65,0)` holds 65 digits, and Kinesis sequence numbers may have up to 129. Real ones have about
//! 56 digits. A checkpoint with a longer sequence number is refused by `set` with
//! [`ErrorKind::InvalidInput`](kc_checkpoint::ErrorKind::InvalidInput) ([`MAX_SEQUENCE_DIGITS`]) rather than
//! stored rounded or clamped.
//!
//! # Semantics
//! - **Buffered.** [`set`](kc_checkpoint::CheckpointStore::set) only updates an in-memory map (the latest
//!   checkpoint per shard). A flush writes the whole map in one transaction of multi-row
//!   `INSERT .. ON DUPLICATE KEY UPDATE` statements (1,000 rows each): one row per shard, however many records were
//!   checkpointed. Flushes happen every [`flush_interval`](MySqlStoreBuilder::flush_interval) (default 5 s) in a
//!   tokio task the first `set` starts, on [`flush`](kc_checkpoint::CheckpointStore::flush) (the consumer calls it
//!   when it stops), and on [`shutdown`](MySqlStore::shutdown).
//! - **Monotonic, in the database.** The upsert only replaces a row that is before the new checkpoint, comparing
//!   `sequence_number` as a decimal number, then the sub-sequence (NULL is after every sub-sequence of the same
//!   record), and `finished` is after everything. The comparison is made once per row, against the stored values,
//!   before any column is assigned (in the session variable `@kc_newer`: MySQL evaluates the assignments of
//!   `ON DUPLICATE KEY UPDATE` in order, each seeing the earlier ones). Two stores (or processes) flushing the same
//!   shard concurrently, or a late flush of an older checkpoint, cannot move a checkpoint backwards. The statement
//!   uses `VALUES(col)` and a user variable set inside an expression, which MariaDB supports and MySQL 8 still runs
//!   but reports as deprecated (warnings 1287); MySQL's replacement (`AS new` row aliases) does not exist in MariaDB.
//! - **Retries.** Transient failures (connection refused or reset, pool timeout, server shutting down, deadlock,
//!   lock wait timeout) are retried up to 5 times with backoff (100 ms doubling, about 1.5 s in all). If the flush
//!   still fails, the checkpoints stay pending for the next flush and the flush returns an
//!   [`ErrorKind::Transient`](kc_checkpoint::ErrorKind::Transient) error. Other failures (missing table, missing
//!   columns, access denied) are [`ErrorKind::Permanent`](kc_checkpoint::ErrorKind::Permanent). The sqlx error is
//!   the error's `source()`.
//! - [`get`](kc_checkpoint::CheckpointStore::get) reads the row, returns the pending checkpoint instead if it is
//!   newer, and `Ok(None)` only when there is neither.
//!
//! # Upgrades
//! Every `create_table_if_missing` ([`MySqlStore`], [`MySqlLeaseTable`], [`MySqlDeadLetter`]) brings a table of an
//! earlier version up to date in place, after its `CREATE TABLE IF NOT EXISTS`: the checkpoint table's `namespace`
//! to `varchar(512)`, the lease table's `stream_name` and `shard_id` to `varchar(256)` (and its `created_at_ms`
//! added), the dead-letter table's `stream_name` to `varchar(256)`; each widened column keeps its character set,
//! collation and nullability. Many processes may call it at once (every worker of a group starting together): the
//! upgrade holds a named lock of the server (`GET_LOCK`, one per table) while it reads the table's columns from
//! `information_schema` and alters what is still narrow, so one process alters and the others find nothing to do.
//! In utf8mb4 InnoDB widens the columns in place (their length prefix stays two bytes); a column of a single-byte
//! character set under 256 bytes is widened by a copy of the table. A table already up to date costs three short
//! statements, no DDL. The same by hand:
//!
//! ```sql
//! ALTER TABLE kinesis_consumer MODIFY COLUMN namespace varchar(512) NOT NULL;
//! ALTER TABLE kinesis_leases MODIFY COLUMN stream_name varchar(256) NOT NULL,
//!     MODIFY COLUMN shard_id varchar(256) NOT NULL;
//! ALTER TABLE kinesis_dead_letters MODIFY COLUMN stream_name varchar(256) NOT NULL;
//! ```
//!
//! A key longer than its column is refused by the server in strict mode (the default of MySQL and MariaDB), as an
//! [`ErrorKind::Permanent`](kc_checkpoint::ErrorKind::Permanent) error; without strict mode MySQL would cut it.
//!
//! # The lease table
//! [`MySqlLeaseTable`] implements [`LeaseTable`](kc_checkpoint::lease::LeaseTable), the lease table of consumer
//! groups (see [`kc_checkpoint::lease`]), in a table of its own. [`MySqlLeaseTable::create_table_if_missing`] runs
//! (with your table name):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS kinesis_leases (
//!     group_name varchar(255) NOT NULL,
//!     stream_name varchar(256) NOT NULL,
//!     shard_id varchar(256) NOT NULL,
//!     owner varchar(255) NULL,
//!     counter bigint unsigned NOT NULL DEFAULT 0,
//!     sequence_number numeric(65,0) NULL,
//!     sub_sequence_number bigint unsigned NULL,
//!     finished boolean NOT NULL DEFAULT false,
//!     parents text NOT NULL,
//!     next_owner varchar(255) NULL,
//!     created_at_ms bigint unsigned NULL,
//!     PRIMARY KEY (group_name, stream_name, shard_id)
//! ) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
//! ```
//!
//! The binary collation makes names and owners compare exactly (`W1` is not `w1`; as everywhere in MySQL, trailing
//! spaces are ignored in comparisons). `parents` is the parent shard ids joined by `,` (shard ids never contain
//! one; `create` refuses a parent id that does). The checkpoint columns are those of the checkpoint table
//! (`sequence_number` NULL: no checkpoint yet), with the same 65-digit limit. `created_at_ms` is when the lease was
//! created (milliseconds since the Unix epoch, by the creating worker's clock; see
//! [`Lease::created_at`](kc_checkpoint::lease::Lease::created_at)); `create_table_if_missing` adds it to a lease
//! table created by an earlier version, whose rows then read with no creation time. `stream_name` holds the stream's
//! key (its name, or its ARN when the stream is named by one); `shard_id` holds the stream's key too in the group's
//! marker rows (`#created`, `#changes`): both 256 characters, widened from 128 in tables of earlier versions (see
//! [Upgrades](#upgrades)).
//!
//! Every write is one `UPDATE .. SET counter = counter + 1, .. WHERE group_name = ? AND stream_name = ? AND
//! shard_id = ? AND counter = ? [AND owner = ?]`; no affected row means the condition did not hold (or the lease
//! does not exist): an [`ErrorKind::Fenced`](kc_checkpoint::ErrorKind::Fenced) error. The counter always changes,
//! so a matched row is counted whether the connection reports found or changed rows. A checkpoint write compares
//! the stored checkpoint inside the same statement (`@kc_newer`, as the store's upsert) and keeps it when it is at
//! or after the new one, still incrementing the counter. `create` is an `INSERT`; a duplicate key means the lease
//! exists. `take` and `request` read the lease back in the transaction of their update. Errors are classified as
//! for the store; writes are not retried (a write whose connection broke may have been applied: it is
//! [`Transient`](kc_checkpoint::ErrorKind::Transient), never `Fenced`).
//!
//! **Connections.** A busy group writes a checkpoint to each of its leases after every batch; if those writes could
//! take every connection of the pool, renewals would queue behind them and leases would expire while their worker is
//! alive. So checkpoint writes may hold at most the pool's `max_connections` minus an *ownership reserve* at once (a
//! [`CheckpointBudget`](kc_checkpoint::sql::CheckpointBudget)); the reserve is left to renewals, takes, releases,
//! handoff requests, creates, deletes and reads. [`MySqlLeaseTable::connect`] builds 6 connections: 4 for checkpoints
//! ([`DEFAULT_CHECKPOINT_CONNECTIONS`](kc_checkpoint::sql::DEFAULT_CHECKPOINT_CONNECTIONS)) and a reserve of 2
//! ([`DEFAULT_OWNERSHIP_RESERVE`](kc_checkpoint::sql::DEFAULT_OWNERSHIP_RESERVE)). On your own pool
//! ([`MySqlLeaseTable::new`]) the reserve is 2, 1 on a pool of 2 connections and 0 on a pool of 1 (whose one connection
//! checkpoints and renewals then share); choose it with [`MySqlLeaseTableBuilder::ownership_reserve`]. A checkpoint
//! that finds no free slot waits for one as long as the pool's acquire timeout, then fails as
//! [`Transient`](kc_checkpoint::ErrorKind::Transient), as a pool timeout does. The reserve keeps the table's own
//! checkpoints away; other users of a shared pool can still take its connections.
//!
//! ```no_run
//! use kc_store_mysql::MySqlLeaseTable;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::mysql::MySqlPoolOptions::new()
//!     .max_connections(16)
//!     .connect("mysql://root@127.0.0.1:3306/test")
//!     .await?;
//! // 12 connections for checkpoint writes, 4 always free for renewals.
//! let leases = MySqlLeaseTable::builder(pool, "kinesis_leases").ownership_reserve(4).build()?;
//! assert_eq!(leases.checkpoint_connections(), 12);
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use kc_checkpoint::lease::{LeaseScope, LeaseTable};
//! use kc_store_mysql::MySqlLeaseTable;
//!
//! # async fn run() -> Result<(), kc_checkpoint::Error> {
//! let leases = MySqlLeaseTable::connect("mysql://root@127.0.0.1:3306/test", "kinesis_leases").await?;
//! leases.create_table_if_missing().await?;
//! let scope = LeaseScope::new("billing", "orders");
//! leases.create(&scope, "shardId-000000000000", &[]).await?;
//! let lease = leases.take(&scope, "shardId-000000000000", 0, "worker-a").await?;
//! let counter = leases.renew(&scope, "shardId-000000000000", "worker-a", lease.counter).await?;
//! assert_eq!(counter, lease.counter + 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Connecting: TLS, pool, timeouts, database
//! [`MySqlStore::connect`] and [`MySqlLeaseTable::connect`] take a URL and build a small pool (4 and 6 connections,
//! 5 s acquire timeout). Whatever else a shared database needs comes from the URL (sqlx's
//! [`MySqlConnectOptions`](sqlx::mysql::MySqlConnectOptions) reads it, also for `connect`), or from a pool you build
//! with [`MySqlPoolOptions`](sqlx::mysql::MySqlPoolOptions) and pass to `new` or `builder`:
//!
//! | Need | How |
//! |---|---|
//! | TLS | the feature `tls` and `ssl-mode=` in the URL (below) |
//! | pool size, acquire timeout, idle and max lifetime | your own pool: `MySqlPoolOptions::max_connections`, `acquire_timeout`, `idle_timeout`, `max_lifetime` |
//! | statement timeout | a session variable set by `MySqlPoolOptions::after_connect`: MariaDB's `max_statement_time` (seconds, every statement), MySQL's `max_execution_time` (milliseconds, `SELECT` only) |
//! | a database (schema) | the URL's path, or the table name `database.table` |
//!
//! The consumer bounds each call to the store or lease table by its `store_timeout` besides.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kc_store_mysql::MySqlLeaseTable;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "mysql://kc:secret@db.example.com:3306/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ssl/rds-ca.pem";
//! let pool = sqlx::mysql::MySqlPoolOptions::new()
//!     .max_connections(12)
//!     .acquire_timeout(Duration::from_secs(3))
//!     .after_connect(|conn, _| {
//!         Box::pin(async move {
//!             // MariaDB; on MySQL: SET SESSION max_execution_time = 5000
//!             sqlx::query("SET SESSION max_statement_time = 5").execute(&mut *conn).await.map(drop)
//!         })
//!     })
//!     .connect(url)
//!     .await?;
//! let leases = MySqlLeaseTable::new(pool, "kinesis_leases")?;
//! # Ok(())
//! # }
//! ```
//!
//! ## TLS
//! With the feature `tls` (`kinesis-consumer`'s `tls` beside `mysql`) connections use TLS as the URL says, with
//! rustls on aws-lc-rs (the AWS SDK's provider: no system OpenSSL, no second crypto library). Without it a URL that
//! requires TLS fails to connect ("TLS upgrade required by connect options but SQLx was built without TLS support
//! enabled").
//!
//! | `ssl-mode=` | Encrypted | The server's certificate |
//! |---|---|---|
//! | `DISABLED` | no | not asked for |
//! | `PREFERRED` (the default) | if the server offers TLS | not verified |
//! | `REQUIRED` | yes | not verified |
//! | `VERIFY_CA` | yes | signed by a trusted CA; with sqlx 0.8.6 the host name is checked too (as `VERIFY_IDENTITY`: [sqlx#3793](https://github.com/launchbadge/sqlx/issues/3793)) |
//! | `VERIFY_IDENTITY` | yes | signed by a trusted CA, for the URL's host name (a DNS name or an IP address in its subjectAltName) |
//!
//! `ssl-ca=/path/ca.pem` adds a CA (PEM, one or more certificates: a managed database's bundle, e.g. Amazon RDS's)
//! to the Mozilla roots of webpki-roots; it does not replace them, so a certificate from a public CA for the host
//! name passes too. `ssl-cert=` and `ssl-key=` give a client certificate. A certificate the client refuses (another
//! CA, another host name, expired) fails the connection with an
//! [`ErrorKind::Permanent`](kc_checkpoint::ErrorKind::Permanent) error whose source says why ("invalid peer
//! certificate: UnknownIssuer"): retrying cannot fix it. integration/tests/tls.rs runs the store's and the lease
//! table's conformance suites over `VERIFY_IDENTITY` against a MariaDB with `require_secure_transport=ON`.
//!
//! If another dependency of your program enables rustls's `ring` feature, rustls has two providers and cannot pick
//! one by itself: sqlx's `VERIFY_CA` then panics ("Could not automatically determine the process-level
//! CryptoProvider"). Install one first thing in `main`: `rustls::crypto::aws_lc_rs::default_provider()
//! .install_default()`.
//!
//! # Dead letters
//! [`MySqlDeadLetter`] is a destination for the consumer's failure policy (`FailurePolicy::dead_letter`): each
//! record the handler gave up on becomes a row of a table of its own (see its docs for the DDL).

mod deadletter;
mod error;
mod lease;
mod store;
mod table;
mod upgrade;

pub use deadletter::MySqlDeadLetter;
pub use lease::{MySqlLeaseTable, MySqlLeaseTableBuilder};
pub use store::{MySqlStore, MySqlStoreBuilder, DEFAULT_FLUSH_INTERVAL, MAX_SEQUENCE_DIGITS};
