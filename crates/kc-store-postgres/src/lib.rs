//! PostgreSQL checkpoint store for kinesis-consumer: [`PostgresStore`]; and the lease table of consumer groups:
//! [`PostgresLeaseTable`].
//!
//! Checkpoints live in one table, one row per `(namespace, shard_id)`, where `namespace` is `{app}-{stream}` as in
//! the Go library's store, so tables created for the Go library keep working once they have two more columns.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
//! use kc_store_postgres::PostgresStore;
//!
//! # async fn run() -> Result<(), kc_checkpoint::Error> {
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(4)
//!     .connect("postgres://postgres@127.0.0.1:5432/test")
//!     .await
//!     .map_err(|e| kc_checkpoint::Error::with_source(kc_checkpoint::ErrorKind::Transient, "connect", e))?;
//! let store = PostgresStore::builder(pool, "kinesis_consumer").flush_interval(Duration::from_secs(1)).build()?;
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
//! With the consumer: `Consumer::builder(stream).store(store)`; keep an `Arc<PostgresStore>` (the trait is
//! implemented for `Arc<S>`) to call [`PostgresStore::shutdown`] after the scan returned.
//!
//! # The table
//! Table names must be `table` or `schema.table`, each part matching `[A-Za-z_][A-Za-z0-9_]*` with at most 63
//! characters; anything else is an [`ErrorKind::InvalidInput`](kc_checkpoint::ErrorKind::InvalidInput) error of
//! [`PostgresStore::new`]. The name is written into SQL unquoted, as the Go library does (PostgreSQL folds it to
//! lower case), so it cannot be a reserved word such as `user`.
//!
//! [`PostgresStore::create_table_if_missing`] runs (with your table name), in a transaction holding an advisory lock
//! keyed by the table name (`pg_advisory_xact_lock`), so that many processes may call it at the same moment on first
//! deploy (PostgreSQL's `CREATE TABLE IF NOT EXISTS` alone is not safe under concurrency); the same goes for
//! [`PostgresLeaseTable::create_table_if_missing`] and its column upgrade:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS kinesis_consumer (
//!     namespace text NOT NULL,
//!     shard_id text NOT NULL,
//!     sequence_number numeric NOT NULL,
//!     sub_sequence_number bigint NULL,
//!     finished boolean NOT NULL DEFAULT false,
//!     CONSTRAINT kinesis_consumer_pk PRIMARY KEY (namespace, shard_id)
//! );
//! ```
//!
//! A table created for the Go library lacks the last two columns; add them once (existing rows keep their position,
//! as whole records):
//!
//! ```sql
//! ALTER TABLE kinesis_consumer ADD COLUMN sub_sequence_number bigint NULL;
//! ALTER TABLE kinesis_consumer ADD COLUMN finished boolean NOT NULL DEFAULT false;
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
//! # Semantics
//! - **Buffered.** [`set`](kc_checkpoint::CheckpointStore::set) only updates an in-memory map (the latest
//!   checkpoint per shard). A flush writes the whole map in one `INSERT .. ON CONFLICT` statement: one row per shard,
//!   however many records were checkpointed. Flushes happen every
//!   [`flush_interval`](PostgresStoreBuilder::flush_interval) (default 5 s) in a tokio task the first `set` starts,
//!   on [`flush`](kc_checkpoint::CheckpointStore::flush) (the consumer calls it when it stops), and on
//!   [`shutdown`](PostgresStore::shutdown).
//! - **Monotonic, in the database.** The upsert only replaces a row that is before the new checkpoint, comparing
//!   `sequence_number` as a number, then the sub-sequence (NULL is after every sub-sequence of the same record), and
//!   `finished` is after everything. Two stores (or processes) flushing the same shard concurrently, or a late flush
//!   of an older checkpoint, cannot move a checkpoint backwards.
//! - **Retries.** Transient failures (connection refused or reset, pool timeout, server shutting down, deadlock,
//!   serialization failure) are retried up to 5 times with backoff (100 ms doubling, about 1.5 s in all). If the
//!   flush still fails, the checkpoints stay pending for the next flush and the flush returns an
//!   [`ErrorKind::Transient`](kc_checkpoint::ErrorKind::Transient) error. Other failures (missing table, missing
//!   columns, permission denied) are [`ErrorKind::Permanent`](kc_checkpoint::ErrorKind::Permanent). The sqlx error
//!   is the error's `source()`.
//! - [`get`](kc_checkpoint::CheckpointStore::get) reads the row, returns the pending checkpoint instead if it is
//!   newer, and `Ok(None)` only when there is neither.
//!
//! # Transactional checkpoints
//! [`PostgresStore::checkpoint_in_tx`] writes a checkpoint inside your own transaction, so the rows a handler writes
//! and the checkpoint of the record commit together: after a crash, either both are there or neither is, and the
//! record is delivered again only in the second case (exactly-once effects for writes to the same database).
//!
//! ```no_run
//! use kc_checkpoint::{Checkpoint, ShardKey};
//! use kc_store_postgres::PostgresStore;
//!
//! // In the handler, for a record of shard `key` (the consumer's `Record::checkpoint()` gives `checkpoint`):
//! async fn handle(store: &PostgresStore, key: &ShardKey, checkpoint: &Checkpoint, payload: &[u8])
//!     -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let mut tx = store.pool().begin().await?;
//!     sqlx::query("INSERT INTO events (payload) VALUES ($1)").bind(payload).execute(&mut *tx).await?;
//!     store.checkpoint_in_tx(&mut tx, key, checkpoint).await?;
//!     tx.commit().await?;
//!     Ok(())
//! }
//! ```
//!
//! The handler may then return `Outcome::Checkpoint` or `Outcome::SkipCheckpoint`. With `Checkpoint` the consumer
//! also `set`s the same position and a later flush writes it again: harmless, because writes are monotonic (the
//! upsert finds the row already there and leaves it). `SkipCheckpoint` saves that write. The [`ShardKey`] must be
//! the one the consumer uses: the consumer's app name, the stream name and `Record::shard_id()`.
//!
//! [`ShardKey`]: kc_checkpoint::ShardKey
//!
//! # The lease table
//! [`PostgresLeaseTable`] implements [`LeaseTable`](kc_checkpoint::lease::LeaseTable), the lease table of consumer
//! groups (see [`kc_checkpoint::lease`]), in a table of its own (not the checkpoint table: a lease carries its
//! shard's checkpoint). [`PostgresLeaseTable::create_table_if_missing`] runs (with your table name):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS kinesis_leases (
//!     group_name text NOT NULL,
//!     stream_name text NOT NULL,
//!     shard_id text NOT NULL,
//!     owner text NULL,
//!     counter bigint NOT NULL DEFAULT 0,
//!     sequence_number numeric NULL,
//!     sub_sequence_number bigint NULL,
//!     finished boolean NOT NULL DEFAULT false,
//!     parents text[] NOT NULL DEFAULT '{}',
//!     next_owner text NULL,
//!     created_at_ms bigint NULL,
//!     CONSTRAINT kinesis_leases_pk PRIMARY KEY (group_name, stream_name, shard_id)
//! );
//! ```
//!
//! It then adds `created_at_ms` to a lease table created by an earlier version (`ALTER TABLE .. ADD COLUMN IF NOT
//! EXISTS`); a lease row without it reads with no creation time.
//!
//! The checkpoint columns mean what they mean in the checkpoint table (`sequence_number` NULL: no checkpoint yet;
//! `finished`: [`Checkpoint::ShardEnd`](kc_checkpoint::Checkpoint::ShardEnd)). `created_at_ms` is when the lease
//! was created (milliseconds since the Unix epoch, by the creating worker's clock; see
//! [`Lease::created_at`](kc_checkpoint::lease::Lease::created_at)). Group and stream are two columns,
//! so no pair of names can collide.
//!
//! Every write is one statement: `UPDATE .. SET counter = counter + 1, .. WHERE group_name = .. AND stream_name =
//! .. AND shard_id = .. AND counter = $expected [AND owner = $owner] RETURNING ..`. No row returned means the
//! condition did not hold (or the lease does not exist): an [`ErrorKind::Fenced`](kc_checkpoint::ErrorKind::Fenced)
//! error whose message says what the lease looks like now. A checkpoint write compares the stored checkpoint inside
//! the same statement (as the checkpoint store's upsert does) and keeps it when it is at or after the new one, while
//! still incrementing the counter. `create` is `INSERT .. ON CONFLICT DO NOTHING`.
//!
//! Errors are classified as for the store: a broken connection or a server going away is
//! [`Transient`](kc_checkpoint::ErrorKind::Transient) (never `Fenced`: a write that may have been applied before the
//! connection broke is reported `Transient`, and is not retried, so read the lease to find out); a missing table is
//! [`Permanent`](kc_checkpoint::ErrorKind::Permanent). Statements have no timeout of their own: a caller that must
//! bound a renewal (a lease duration) wraps the call in `tokio::time::timeout`.
//!
//! **Connections.** A busy group writes a checkpoint to each of its leases after every batch; if those writes could
//! take every connection of the pool, renewals would queue behind them and leases would expire while their worker is
//! alive. So checkpoint writes may hold at most the pool's `max_connections` minus an *ownership reserve* at once (a
//! [`CheckpointBudget`](kc_checkpoint::sql::CheckpointBudget)); the reserve is left to renewals, takes, releases,
//! handoff requests, creates, deletes and reads. [`PostgresLeaseTable::connect`] builds 6 connections: 4 for
//! checkpoints ([`DEFAULT_CHECKPOINT_CONNECTIONS`](kc_checkpoint::sql::DEFAULT_CHECKPOINT_CONNECTIONS)) and a reserve
//! of 2 ([`DEFAULT_OWNERSHIP_RESERVE`](kc_checkpoint::sql::DEFAULT_OWNERSHIP_RESERVE)). On your own pool
//! ([`PostgresLeaseTable::new`]) the reserve is 2, 1 on a pool of 2 connections and 0 on a pool of 1 (whose one
//! connection checkpoints and renewals then share); choose it with [`PostgresLeaseTableBuilder::ownership_reserve`]. A
//! checkpoint that finds no free slot waits for one as long as the pool's acquire timeout, then fails as
//! [`Transient`](kc_checkpoint::ErrorKind::Transient), as a pool timeout does. The reserve keeps the table's own
//! checkpoints away; other users of a shared pool can still take its connections.
//!
//! ```no_run
//! use kc_store_postgres::PostgresLeaseTable;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(16)
//!     .connect("postgres://postgres@127.0.0.1:5432/test")
//!     .await?;
//! // 12 connections for checkpoint writes, 4 always free for renewals.
//! let leases = PostgresLeaseTable::builder(pool, "kinesis_leases").ownership_reserve(4).build()?;
//! assert_eq!(leases.checkpoint_connections(), 12);
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use kc_checkpoint::lease::{LeaseScope, LeaseTable};
//! use kc_store_postgres::PostgresLeaseTable;
//!
//! # async fn run() -> Result<(), kc_checkpoint::Error> {
//! let leases = PostgresLeaseTable::connect("postgres://postgres@127.0.0.1:5432/test", "kinesis_leases").await?;
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
//! # Connecting: TLS, pool, timeouts, schema
//! [`PostgresStore::connect`] and [`PostgresLeaseTable::connect`] take a URL and build a small pool (4 and 6
//! connections, 5 s acquire timeout). Whatever else a shared database needs comes from the URL (sqlx's
//! [`PgConnectOptions`](sqlx::postgres::PgConnectOptions) reads it, also for `connect`), or from a pool you build
//! with [`PgPoolOptions`](sqlx::postgres::PgPoolOptions) and pass to `new` or `builder`:
//!
//! | Need | How |
//! |---|---|
//! | TLS | the feature `tls` and `sslmode=` in the URL (below) |
//! | pool size, acquire timeout, idle and max lifetime | your own pool: `PgPoolOptions::max_connections`, `acquire_timeout`, `idle_timeout`, `max_lifetime` |
//! | statement timeout | `options[statement_timeout]=5s` in the URL (a statement cancelled by it, 57014, is [`Transient`](kc_checkpoint::ErrorKind::Transient) and retried) |
//! | a schema | the table name `schema.table`, or `options[search_path]=my_schema` in the URL |
//! | credentials | in the URL, or `PgConnectOptions` (which also reads `PGHOST`, `PGUSER`, `PGPASSWORD`, ...) and `PgPoolOptions::connect_with` |
//!
//! The consumer bounds each call to the store or lease table by its `store_timeout` besides.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kc_store_postgres::PostgresLeaseTable;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "postgres://kc:secret@db.example.com:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/rds-ca.pem\
//!            &options[search_path]=kinesis&options[statement_timeout]=5s";
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(12)
//!     .acquire_timeout(Duration::from_secs(3))
//!     .connect(url)
//!     .await?;
//! let leases = PostgresLeaseTable::new(pool, "kinesis_leases")?;
//! # Ok(())
//! # }
//! ```
//!
//! ## TLS
//! With the feature `tls` (`kinesis-consumer`'s `tls` beside `postgres`) connections use TLS as the URL says, with
//! rustls on aws-lc-rs (the AWS SDK's provider: no system OpenSSL, no second crypto library). Without it a URL that
//! requires TLS fails to connect ("TLS upgrade required by connect options but SQLx was built without TLS support
//! enabled").
//!
//! | `sslmode=` | Encrypted | The server's certificate |
//! |---|---|---|
//! | `disable` | no | not asked for |
//! | `prefer` (the default) | if the server offers TLS | not verified |
//! | `require` | yes | not verified |
//! | `verify-ca` | yes | signed by a trusted CA; with sqlx 0.8.6 the host name is checked too (as `verify-full`: [sqlx#3793](https://github.com/launchbadge/sqlx/issues/3793)) |
//! | `verify-full` | yes | signed by a trusted CA, for the URL's host name (a DNS name or an IP address in its subjectAltName) |
//!
//! `sslrootcert=/path/ca.pem` adds a CA (PEM, one or more certificates: a managed database's bundle, e.g. Amazon
//! RDS's) to the Mozilla roots of webpki-roots; it does not replace them, so a certificate from a public CA for the
//! host name passes too. `sslcert=` and `sslkey=` give a client certificate. A certificate the client refuses
//! (another CA, another host name, expired) fails the connection with an
//! [`ErrorKind::Permanent`](kc_checkpoint::ErrorKind::Permanent) error whose source says why ("invalid peer
//! certificate: UnknownIssuer"): retrying cannot fix it. integration/tests/tls.rs runs the store's and the lease
//! table's conformance suites over `verify-full` against a PostgreSQL that refuses connections without TLS.
//!
//! If another dependency of your program enables rustls's `ring` feature, rustls has two providers and cannot pick
//! one by itself: sqlx's `verify-ca` then panics ("Could not automatically determine the process-level
//! CryptoProvider"). Install one first thing in `main`: `rustls::crypto::aws_lc_rs::default_provider()
//! .install_default()`.
//!
//! # Dead letters
//! [`PostgresDeadLetter`] is a destination for the consumer's failure policy (`FailurePolicy::dead_letter`): each
//! record the handler gave up on becomes a row of a table of its own (see its docs for the DDL).

mod ddl;
mod deadletter;
mod error;
mod lease;
mod store;
mod table;

pub use deadletter::PostgresDeadLetter;
pub use lease::{PostgresLeaseTable, PostgresLeaseTableBuilder};
pub use store::{PostgresStore, PostgresStoreBuilder, DEFAULT_FLUSH_INTERVAL};
