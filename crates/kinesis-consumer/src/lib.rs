//! Consume AWS Kinesis Data Streams: every record handled, progress saved, nothing lost when a process restarts, a
//! shard splits or the service throttles.
//!
//! This crate only re-exports the workspace's crates:
//! - the consumer itself ([`Consumer`], from `kc-core`): scans every shard concurrently, follows resharding with
//!   parents before children, retries with backoff, checkpoints, shuts down gracefully; reads by GetRecords polling
//!   or, with [`ConsumerBuilder::fan_out`], by enhanced fan-out (SubscribeToShard);
//! - [`checkpoint`] (`kc-checkpoint`): the [`CheckpointStore`] trait and the in-memory [`MemoryStore`];
//! - [`deagg`] (`kc-deagg`): the KPL aggregated-record decoder and encoder;
//! - checkpoint stores behind features: [`ddb`] (`kc-store-ddb`, feature `ddb`), [`postgres`]
//!   (`kc-store-postgres`, feature `postgres`) and [`mysql`] (`kc-store-mysql`, feature `mysql`); the feature `tls`
//!   adds TLS (rustls) to the PostgreSQL and MySQL connections, configured by the URL (`sslmode=verify-full`,
//!   `ssl-mode=VERIFY_IDENTITY`: see their crate docs, "TLS");
//! - lease tables of consumer groups: the trait [`checkpoint::lease::LeaseTable`] and the in-memory
//!   [`checkpoint::lease::MemoryLeaseTable`], and a backend in each store module, behind the same features:
//!   `ddb::DynamoDbLeaseTable`, `postgres::PostgresLeaseTable`, `mysql::MySqlLeaseTable` (each store crate's docs
//!   give its table and its conditional writes).
//!
//! ```
//! use kinesis_consumer::checkpoint::lease::{LeaseScope, LeaseTable, MemoryLeaseTable};
//! use kinesis_consumer::checkpoint::ErrorKind;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kinesis_consumer::checkpoint::Error> {
//! // With feature `postgres`: `kinesis_consumer::postgres::PostgresLeaseTable::connect(url, "leases").await?`.
//! let leases = MemoryLeaseTable::new();
//! let scope = LeaseScope::new("billing", "orders");
//! leases.create(&scope, "shardId-0", &[]).await?;
//! let lease = leases.take(&scope, "shardId-0", 0, "worker-a").await?;
//! let stale = leases.take(&scope, "shardId-0", 0, "worker-b").await.unwrap_err();
//! assert_eq!(stale.kind(), ErrorKind::Fenced); // worker-b's view of the lease was stale
//! assert_eq!(lease.owner.as_deref(), Some("worker-a"));
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use kinesis_consumer::{Consumer, InitialPosition, Outcome, Record};
//!
//! # async fn run(client: aws_sdk_kinesis::Client) -> Result<(), kinesis_consumer::Error> {
//! let consumer = Consumer::builder("my-stream")
//!     .client(client)
//!     .app_name("my-app")
//!     .initial_position(InitialPosition::TrimHorizon)
//!     .aggregation(true)
//!     .build()
//!     .await?;
//! consumer
//!     .scan(|record: Record| async move {
//!         println!("{}", String::from_utf8_lossy(record.data()));
//!         Ok::<_, std::convert::Infallible>(Outcome::Checkpoint) // or SkipCheckpoint; Err(..) stops the scan
//!     })
//!     .await
//! # }
//! ```
//!
//! See `kc_core`'s documentation for the guarantees and the design decisions, and the repository's README for the
//! examples.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use kc_checkpoint as checkpoint;
pub use kc_core::*;
pub use kc_deagg as deagg;
#[cfg(feature = "ddb")]
#[cfg_attr(docsrs, doc(cfg(feature = "ddb")))]
pub use kc_store_ddb as ddb;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use kc_store_mysql as mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use kc_store_postgres as postgres;
