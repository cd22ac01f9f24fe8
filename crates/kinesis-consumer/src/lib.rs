//! Consume AWS Kinesis Data Streams: every record handed to your async handler, progress saved in a checkpoint
//! store, nothing lost when a process restarts, a shard splits or the service throttles.
//!
//! This crate is the one to depend on: it re-exports the consumer (`kc-core`), the checkpoint traits
//! ([`checkpoint`], `kc-checkpoint`), the KPL decoder ([`deagg`], `kc-deagg`) and, behind features, the stores
//! (`ddb`, `postgres`, `mysql`). These docs are the user's guide; the re-exported items carry the details.
//!
//! # A first scan
//!
//! ```no_run
//! use kinesis_consumer::{Consumer, InitialPosition, Outcome, Record};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), kinesis_consumer::Error> {
//!     // Without `.client(..)` the AWS configuration comes from the environment (variables, profile, IMDS, ...).
//!     let consumer = Consumer::builder("my-stream")
//!         .app_name("my-app") // the checkpoints' namespace: [app, stream, shard]
//!         .initial_position(InitialPosition::TrimHorizon) // where a shard without a checkpoint starts
//!         .build()
//!         .await?;
//!
//!     // Cancel this token (on SIGTERM, say) to stop: the record in hand is finished and checkpointed, then
//!     // `scan` returns Ok(()).
//!     let _shutdown = consumer.shutdown_token();
//!
//!     consumer
//!         .scan(|record: Record| async move {
//!             println!("{} {}", record.shard_id(), String::from_utf8_lossy(record.data()));
//!             Ok::<_, std::io::Error>(Outcome::Checkpoint)
//!         })
//!         .await
//! }
//! ```
//!
//! `scan` reads every shard at once, the records of one shard in order and one at a time, and keeps going (new
//! shards, resharding, throttling, expired iterators) until the token is cancelled or the handler fails. Give your
//! own client with `.client(aws_sdk_kinesis::Client)` (built with your `aws-config`).
//!
//! # Testing your handler
//!
//! The feature `test-util` brings [`fake::FakeKinesis`], an in-process Kinesis API: streams, shards,
//! resharding, injected faults, enhanced fan-out. Put it in your `[dev-dependencies]`
//! (`kinesis-consumer = { version = "0.1", features = ["test-util"] }`) and hand it to the builder with `.api(..)`:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//!
//! use kinesis_consumer::fake::FakeKinesis;
//! use kinesis_consumer::{
//!     Checkpoint, CheckpointStore, Consumer, InitialPosition, MemoryStore, Outcome, Record, SequenceNumber, ShardKey,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fake = FakeKinesis::new();
//! fake.create_stream("orders", 1);
//! let mut last = None;
//! for order in ["apple", "pear", "plum"] {
//!     last = Some(fake.put("orders", "customer-1", order)); // (shard id, sequence number)
//! }
//! let (shard, last_sequence) = last.expect("three records");
//!
//! let store = MemoryStore::new();
//! let consumer = Consumer::builder("orders")
//!     .api(fake.clone())
//!     .store(store.clone())
//!     .app_name("billing")
//!     .initial_position(InitialPosition::TrimHorizon)
//!     .build()
//!     .await?;
//! let shutdown = consumer.shutdown_token();
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! consumer
//!     .scan(move |record: Record| {
//!         let (log, shutdown) = (log.clone(), shutdown.clone());
//!         async move {
//!             let mut log = log.lock().expect("lock");
//!             log.push(String::from_utf8_lossy(record.data()).into_owned());
//!             if log.len() == 3 {
//!                 shutdown.cancel(); // this record is still checkpointed, then scan returns
//!             }
//!             Ok::<_, std::io::Error>(Outcome::Checkpoint)
//!         }
//!     })
//!     .await?;
//!
//! assert_eq!(*seen.lock().expect("lock"), ["apple", "pear", "plum"]);
//! let checkpoint = store.get(&ShardKey::new("billing", "orders", shard)).await?;
//! assert_eq!(checkpoint, Some(Checkpoint::at(SequenceNumber::parse(last_sequence)?)));
//! # Ok(())
//! # }
//! ```
//!
//! # What the handler answers
//!
//! | the handler returns | effect |
//! |---|---|
//! | `Ok(Outcome::Checkpoint)` | go on; this record (and everything before it in its shard) is checkpointed |
//! | `Ok(Outcome::SkipCheckpoint)` | go on; no checkpoint: after a restart the record comes again, unless a later record of its shard was checkpointed |
//! | `Err(e)` | under the default [`FailurePolicy::stop`]: every shard stops, the checkpoints made are flushed, `scan` returns an [`Error`] of kind [`ErrorKind::Handler`] with `e` as its source. Other policies: [below](#when-the-handler-fails) |
//! | (the shutdown token is cancelled) | the record in hand is finished, checkpoints are flushed, `scan` returns `Ok(())` |
//!
//! [`Consumer::scan_batches`] takes a handler of a whole GetRecords batch ([`Batch`], one checkpoint per batch);
//! [`Consumer::scan_shard`] reads a single shard to its end. A handler panic stops the scan.
//!
//! # Options
//!
//! Everything is set on [`Consumer::builder`]`(stream)`; `build()` checks the settings (every duration at most
//! [`MAX_DURATION`]).
//!
//! | option | default | what it does |
//! |---|---|---|
//! | `.client(aws_sdk_kinesis::Client)`, `.api(impl KinesisApi)` | a client from the default AWS configuration | the Kinesis client, or any [`KinesisApi`] (the fake) |
//! | `.store(impl CheckpointStore)` | [`MemoryStore`]: nothing survives the process | where checkpoints go ([stores](#checkpoint-stores)) |
//! | `.app_name(name)` | `"kinesis-consumer"` | the checkpoints' namespace |
//! | `.initial_position(..)` | `Latest` | where a shard without a checkpoint starts: `Latest`, `TrimHorizon`, `AtTimestamp(t)` |
//! | `.aggregation(bool)`, `.strict_deaggregation(bool)` | off, off | split KPL aggregates into user records; with strict, a corrupt aggregate is an error instead of one plain record |
//! | `.scan_interval(d)`, `.max_idle_interval(d)` | 250 ms, 1 s | a caught-up shard's polling pace, growing to the second when idle (a shard behind polls at once) |
//! | `.max_records(n)` | 10,000 | records per GetRecords (1..=10,000) |
//! | `.prefetch(bool)` | on | fetch a polling shard's next batch while the handler works through the current one |
//! | `.max_in_flight_per_shard(n)` | 1 | handler calls of one shard at once, never two of one partition key ([throughput](#throughput-and-the-stream-api)) |
//! | `.discovery_interval(d)` | 30 s | how often new shards are looked for (and at once when a shard ends) |
//! | `.fan_out(name)`, `.fan_out_consumer_arn(arn)`, `.deregister_on_shutdown(bool)` | polling | [enhanced fan-out](#enhanced-fan-out) |
//! | `.group(Group)` | none | [consumer groups](#consumer-groups) |
//! | `.on_handler_error(FailurePolicy)`, `.handler_timeout(HandlerTimeout)` | stop at the first error, no timeout | [failure policy](#when-the-handler-fails) |
//! | `.shutdown(CancellationToken)` | a token of its own (`consumer.shutdown_token()`) | the graceful stop |
//! | `.lifecycle(impl Lifecycle)`, `.on_shard_closed(fn)` | none | hooks: shard started, closed, lease gained or lost |
//! | `.call_timeout(d)`, `.min_poll_interval(d)`, `.retry_backoff(base, max)` | 10 s, 200 ms, 100 ms..10 s | bounds of each Kinesis call and of the backoff between retries |
//! | `.max_calls_in_flight(n)` | 64 | Kinesis calls at once for the whole consumer (and checkpoint-store calls, counted apart) |
//! | `.store_timeout(d)` | 30 s | bound of every checkpoint-store and lease-table call, the final flush included |
//!
//! # Checkpoint stores
//!
//! A checkpoint is keyed `[app, stream, shard]` ([`ShardKey`]) and holds the last handled record's sequence number
//! (and sub-sequence number inside a KPL aggregate) or "shard finished". Stores implement [`CheckpointStore`].
//!
//! | store | feature | notes |
//! |---|---|---|
//! | [`MemoryStore`] | – | for tests and for consumers that may start over |
//! | `ddb::DynamoDbStore` | `ddb` | the Go library's table plus three attributes; `create_table_if_missing` |
//! | `postgres::PostgresStore` | `postgres` | the Go library's table plus two columns; a checkpoint inside your own transaction (`checkpoint_in_tx`) |
//! | `mysql::MySqlStore` | `mysql` | the Go library's table plus two columns, `namespace` widened for streams named by ARN |
//!
//! The database stores buffer checkpoints in memory and flush the newest one per shard every 5 s (and when the scan
//! stops); the database itself refuses a checkpoint that would move backwards. The feature `tls` adds TLS (rustls,
//! no system OpenSSL) to PostgreSQL and MySQL, chosen in the URL (`sslmode=verify-full`, `ssl-mode=VERIFY_IDENTITY`;
//! see the store crates' "TLS" and "Connecting" sections for pool size, timeouts and schema). Your own store:
//! implement `checkpoint::buffered::Backend` and wrap it in `checkpoint::buffered::BufferedStore`, then run
//! kc-checkpoint's conformance suite on it (`test_util::store_suite`, its feature `test-util`).
//!
//! # Consumer groups
//!
//! Several processes given `.group(Group::new("my-group", lease_table))` share the stream's shards, each shard read
//! by one worker at a time; the checkpoints live in the leases (no `.store(..)`). Lease tables:
//! `postgres::PostgresLeaseTable`, `mysql::MySqlLeaseTable`, `ddb::DynamoDbLeaseTable`, and
//! [`checkpoint::lease::MemoryLeaseTable`] for tests. Every write to a lease is conditional on its counter and owner
//! (fencing), so a worker that lost a lease cannot checkpoint it any more:
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
//! A lease expires when its counter did not change for the lease duration (10 s by default), as in the KCL; workers
//! below their fair share ask the busiest for leases, which hand them over after checkpointing; a graceful stop
//! releases every lease. [`Group`] lists the settings (`worker_id`, `lease_duration`, `renew_interval`,
//! `take_interval`, `watch_interval`, `max_leases`).
//!
//! # Enhanced fan-out
//!
//! [`ConsumerBuilder::fan_out`]`(name)` reads with SubscribeToShard instead of GetRecords: Kinesis pushes each
//! shard's records to this consumer alone (2 MB/s per shard of its own, about 70 ms latency). The stream consumer
//! `name` is registered when missing and the scan waits until it is active; subscriptions are renewed from the last
//! continuation sequence number every 5 minutes or when a connection drops. Everything else (handler, checkpoints,
//! groups, shutdown) is the same as with polling.
//!
//! # When the handler fails
//!
//! By default the first `Err` stops every shard. A [`FailurePolicy`] given to `.on_handler_error(..)` applies to the
//! failing record's shard alone: retries with a capped, jittered backoff, bounded by attempts and by the record's
//! age, then [stop](FailurePolicy::stop), [skip](FailurePolicy::skip) (logged and counted) or a
//! [dead letter](FailurePolicy::dead_letter) ([`KinesisDeadLetter`], `postgres::PostgresDeadLetter`,
//! `mysql::MySqlDeadLetter`, or your own [`DeadLetter`]).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kinesis_consumer::{Consumer, FailurePolicy, HandlerTimeout, KinesisDeadLetter};
//!
//! # async fn run(client: aws_sdk_kinesis::Client) -> Result<(), kinesis_consumer::Error> {
//! let consumer = Consumer::builder("orders")
//!     .client(client.clone())
//!     .on_handler_error(
//!         FailurePolicy::dead_letter(KinesisDeadLetter::new(client, "orders-dead-letters"))
//!             .max_attempts(5) // 1 call and 4 retries
//!             .max_record_age(Duration::from_secs(3600)), // no retries once the record is an hour old
//!     )
//!     .handler_timeout(HandlerTimeout::cancel_after(Duration::from_secs(30)))
//!     .build()
//!     .await?;
//! # drop(consumer);
//! # Ok(())
//! # }
//! ```
//!
//! While a record is retried its shard waits; the checkpoint moves past it only once it was handled, skipped or
//! accepted by the destination. With `scan_batches`, `Err(BatchFailure::at(i, e))` checkpoints the records before
//! `i` ([`BatchFailure`]) and `.bisect_batches()` halves a failing batch until the bad record is alone.
//!
//! # Throughput and the Stream API
//!
//! - **Prefetch** (on by default): a shard's next GetRecords runs while the handler works through the current batch,
//!   so a shard goes at about the slower of fetching and handling; a stop drops the prefetched batch unhandled.
//! - **Per-key parallelism**: with `.max_in_flight_per_shard(n)`, [`scan`](Consumer::scan) runs up to `n` handler calls
//!   of one shard at once, never two of the same partition key, so each key keeps its order; the checkpoint never
//!   passes a record still in flight.
//! - **Streams**: [`Consumer::into_shards`] hands each shard out as a [`ShardStream`] of [`AckBatch`]es, checkpointed
//!   when acked ([`streams`] says when to use it rather than `scan`).
//! - **Several streams**: [`Consumer::builder_for_streams`] reads several streams with one consumer, and
//!   [`Consumer::builder_tracking`] follows a [`StreamTracker`] that adds and removes streams while it runs;
//!   [`Record::stream`] tells them apart. A stream is given by its name or by its ARN (cross-account streams; see
//!   [`StreamId`]): the ARN goes to Kinesis as `StreamARN`, [`Record::stream_arn`] is the stream's ARN either way,
//!   and checkpoints are keyed by the stream as given.
//!
//! # Metrics and logs
//!
//! Logs go through [`tracing`](https://docs.rs/tracing) (spans carry the stream and shard), metrics through the
//! [`metrics`](https://docs.rs/metrics) facade: install any recorder (Prometheus, StatsD, ...) and they appear,
//! labelled with app, stream and shard. The names are constants in [`metrics::names`].
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `kinesis_consumer_records_total` | counter | records handled |
//! | `kinesis_consumer_checkpoints_total` | counter | checkpoints written |
//! | `kinesis_consumer_millis_behind_latest` | gauge | how far behind the tip of the stream each shard is |
//! | `kinesis_consumer_retries_total` | counter | retried calls, by `reason` (throttled, transient, expired_iterator, handler, ...) |
//! | `kinesis_consumer_handler_errors_total`, `_skipped_total`, `_dead_lettered_total`, `_handler_stalls_total` | counters | the failure policy at work |
//! | `kinesis_consumer_leases_held`, `_leases_taken_total`, `_leases_lost_total`, `kinesis_consumer_workers` | gauge, counters | consumer groups |
//!
//! # Guarantees
//!
//! - **No record is lost.** Every record of every shard reaches the handler at least once, including across restarts,
//!   splits and merges (a child shard starts only after its parents were read to their end), expired iterators,
//!   throttling and a checkpoint database that is down for a while.
//! - **Nothing is checkpointed before the handler returned** for that record: a crash replays at most the records
//!   handled since the last saved checkpoint (at-least-once delivery; duplicates are possible, losses are not).
//! - **A checkpoint never moves backwards**, in memory or in the database, and in a group a worker that lost a lease
//!   cannot write to it.
//! - **Order within a shard**: one record at a time, in sequence order (and KPL user records in sub-sequence
//!   order). Shards are independent of each other.
//! - **Bad input is an error, never a panic**: a corrupt KPL aggregate is delivered as one plain record (or is an
//!   error when strict), a wrong setting fails `build()` with a message that says which.
//!
//! # Coming from the Go library
//!
//! | [harlow/kinesis-consumer](https://github.com/harlow/kinesis-consumer) (Go) | here |
//! |---|---|
//! | `consumer.New(stream, opts...)` | `Consumer::builder(stream)...build().await?` |
//! | `c.Scan(ctx, func(r *Record) error)` | `consumer.scan(\|record: Record\| async { .. })` |
//! | `return nil` / `return consumer.SkipCheckpoint` / `return err` | `Ok(Outcome::Checkpoint)` / `Ok(Outcome::SkipCheckpoint)` / `Err(e)` |
//! | cancel `ctx` | cancel `consumer.shutdown_token()` (or `.shutdown(token)`) |
//! | `c.ScanShard(ctx, shardID, fn)` | `consumer.scan_shard(shard_id, handler)` |
//! | `WithClient(client)` | `.client(client)` |
//! | `WithStore(store)` (DynamoDB, Postgres, MySQL stores) | `.store(store)` (the same three, features `ddb`, `postgres`, `mysql`) |
//! | `WithShardIteratorType(..TrimHorizon)` | `.initial_position(InitialPosition::TrimHorizon)` (also `Latest`, `AtTimestamp(t)`) |
//! | `WithAggregation(true)` | `.aggregation(true)` |
//! | `WithLogger(logger)` | any `tracing` subscriber |
//! | `WithCounter(counter)` | any `metrics` recorder |
//! | – | consumer groups, enhanced fan-out, failure policy, dead letters |
//!
//! Differences in behaviour: new shards from a split or merge start after their parents were read to the end, at
//! their oldest record (Go starts them at LATEST and can lose records); a shard that is behind is polled again at
//! once; expired iterators resume after the last handled record; KPL user records are checkpointed with their
//! sub-sequence number. The stores read the Go library's tables once they have the two or three columns added (the
//! store crates' docs give the `ALTER TABLE`).
//!
//! # Coming from the KCL
//!
//! | Kinesis Client Library (Java) | here |
//! |---|---|
//! | `ShardRecordProcessor::processRecords` | the handler of `scan` (per record) or `scan_batches` (per batch) |
//! | `checkpointer.checkpoint()` | `Ok(Outcome::Checkpoint)`: after each handled record, buffered by the store |
//! | `initialize` / `shardEnded` / `leaseLost` | [`Lifecycle`]: `shard_started`, `shard_closed`, `lease_gained`, `lease_lost` |
//! | `shutdownRequested` | the shutdown token; the record in hand is finished and checkpointed |
//! | the lease table in DynamoDB | `.group(Group::new(name, table))` with a DynamoDB, PostgreSQL or MySQL lease table |
//! | `failoverTimeMillis` (10 s) | `Group::lease_duration` (10 s) |
//! | `maxLeasesForWorker` | `Group::max_leases` |
//! | `workerIdentifier` | `Group::worker_id` |
//! | `InitialPositionInStream` | `.initial_position(..)` |
//! | enhanced fan-out (the default in KCL 2) | `.fan_out(name)` (polling is the default here) |
//! | `maxRecords`, `idleTimeBetweenReadsInMillis` | `.max_records(n)`, `.scan_interval(d)` |
//! | CloudWatch metrics | the `metrics` facade: any recorder |
//! | multi-stream processing | one `Consumer` per stream |
//!
//! Like the KCL: leases expire on the worker's own clock when their counter stops moving, children start after
//! their parents, checkpoints carry KPL sub-sequence numbers. Unlike it: no DynamoDB needed (PostgreSQL and MySQL
//! hold leases too), no Java, and the handler is an async function.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `ddb`, `postgres`, `mysql` | the checkpoint store, lease table (and dead-letter table for the SQL ones) of that database: modules `ddb`, `postgres`, `mysql` |
//! | `tls` | TLS (rustls, no system OpenSSL) to PostgreSQL and MySQL, for the SQL features enabled beside it |
//! | `test-util` | `kinesis_consumer::fake`: the in-process Kinesis API for your tests |
//! | `sso`, `credentials-process` | those providers in the default AWS credential chain (used when no client is given) |
//!
//! Nothing else is forced on your dependency tree: the AWS SDK crates come without `behavior-version-latest` (the
//! consumer passes its `BehaviorVersion` itself) and without SSO; when you build the client yourself, your own
//! `aws-config` chooses its providers.

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
