//! The kinesis-consumer scan loop: reads every shard of a Kinesis stream concurrently, hands each record to your
//! handler, checkpoints what was handled, follows resharding (parents before children), retries what can be
//! retried, and shuts down gracefully.
//!
//! Most users depend on the `kinesis-consumer` facade crate, which re-exports this one.
//!
//! ```no_run
//! use kc_core::{Consumer, InitialPosition, Outcome, Record};
//!
//! # async fn run() -> Result<(), kc_core::Error> {
//! let consumer = Consumer::builder("my-stream")
//!     .app_name("my-app")
//!     .initial_position(InitialPosition::TrimHorizon)
//!     .build()
//!     .await?;
//! let shutdown = consumer.shutdown_token(); // cancel it (e.g. on SIGTERM) to stop gracefully
//! consumer
//!     .scan(|record: Record| async move {
//!         println!("{}: {:?}", record.shard_id(), record.data());
//!         Ok::<_, std::io::Error>(Outcome::Checkpoint)
//!     })
//!     .await?;
//! # drop(shutdown);
//! # Ok(())
//! # }
//! ```
//!
//! # Enhanced fan-out
//! [`ConsumerBuilder::fan_out`] reads with SubscribeToShard instead of GetRecords polling: Kinesis pushes each shard's
//! records to this consumer alone (its own 2 MB/s per shard, about 70 ms latency). The stream consumer is registered
//! when the scan starts if it does not exist, and the scan waits until it is ACTIVE
//! ([`ConsumerBuilder::fan_out_consumer_arn`] uses one registered beforehand). The handler, checkpoints, metrics,
//! resharding and shutdown behave as with polling; only the fetching differs.
//!
//! ```no_run
//! # async fn run() -> Result<(), kc_core::Error> {
//! let consumer = kc_core::Consumer::builder("my-stream")
//!     .app_name("my-app")
//!     .fan_out("my-app") // the stream consumer's name; registered if missing
//!     .build()
//!     .await?;
//! # drop(consumer);
//! # Ok(())
//! # }
//! ```
//!
//! - Each shard subscribes from its checkpoint (AFTER_SEQUENCE_NUMBER, or AT_SEQUENCE_NUMBER inside a partly handled
//!   KPL aggregate, whose handled user records are skipped), its parents or the initial position, and subscribes
//!   again from the last event's ContinuationSequenceNumber when the subscription ends (every 5 minutes), the
//!   connection drops or no event came for 30 s. A ResourceInUseException within 5 s of the previous subscription
//!   (Kinesis allows one per 5 s) waits out those 5 s; other failures back off like polling's retries.
//! - The last event of a closed shard (ChildShards) ends the shard: `ShardEnd` is checkpointed and its children
//!   start after it, as with polling. If a service never reports the end (kinesis-mock does not), an idle closed
//!   shard is checked once per discovery interval with ListShards and GetRecords after the continuation.
//! - Backpressure: the next event is taken from the connection only after the previous one was handled and
//!   checkpointed, so a slow handler slows the transfer (HTTP flow control) and memory stays bounded.
//! - [`ConsumerBuilder::deregister_on_shutdown`] deregisters the consumer when the scan returns (default: kept).
//!
//! # Guarantees
//! - **No record is lost.** A record is checkpointed only after its handler returned; after a restart the consumer
//!   resumes after the last checkpoint (so a record may be delivered twice after a crash, never skipped). Expired
//!   iterators continue after the last handled record; throttling and transient failures are retried with a capped,
//!   jittered backoff (on top of the SDK's own retries) and never end the scan.
//! - **A checkpoint never moves backwards.** Stores ignore older positions; positions compare numerically.
//! - **Parents before children.** After a split or merge, a child shard starts only when all its parents were read to
//!   their end (or are past the stream's retention); a child with no checkpoint starts at its oldest record.
//! - **Graceful stop.** Cancelling the shutdown token finishes the record in hand, checkpoints, flushes the store, and
//!   `scan` returns `Ok(())`. A handler error stops every shard the same way and `scan` returns that error (unless a
//!   [`FailurePolicy`] says otherwise).
//!
//! # When the handler fails
//! By default the first error of the handler stops every shard (the checkpoints made are flushed and `scan` returns
//! the error). [`ConsumerBuilder::on_handler_error`] takes a [`FailurePolicy`] instead, applied to the failing
//! record's shard alone while the other shards keep going: retries with a capped, jittered backoff, bounded by
//! attempts and/or the record's age, then stop, skip (logged and counted) or a [`DeadLetter`] destination. The
//! checkpoint moves past a failed record only once its fate is settled (skipped, or accepted by the destination); a
//! stop, or in a group a lost lease, ends the retries at once and leaves the record to be delivered again.
//! [`ConsumerBuilder::handler_timeout`] watches for stalled handler calls: logged and counted, and optionally
//! cancelled as failures ([`HandlerTimeout`]).
//!
//! ```no_run
//! use kc_core::{Consumer, FailurePolicy, Outcome, Record};
//!
//! # async fn run() -> Result<(), kc_core::Error> {
//! let consumer = Consumer::builder("my-stream")
//!     .on_handler_error(FailurePolicy::skip().max_attempts(5))
//!     .build()
//!     .await?;
//! consumer
//!     .scan(|record: Record| async move {
//!         std::str::from_utf8(record.data())?; // a record that is not UTF-8 is retried 4 times, then skipped
//!         Ok::<_, std::str::Utf8Error>(Outcome::Checkpoint)
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Consumer groups
//! With [`ConsumerBuilder::group`], several processes share the stream's shards through a lease table (PostgreSQL,
//! MySQL or DynamoDB in the store crates; in memory for tests): each shard is read by one worker at a time, every
//! checkpoint and renewal is fenced by the lease's counter, leases are balanced by graceful handoffs, and a worker
//! that loses a lease stops that shard before its next record. See [`Group`].
//!
//! # Design decisions
//! - The handler's checkpoints are given to the store at the end of each GetRecords batch and when a shard stops
//!   (one store call per batch, not per record); stores may buffer further and flush on [`CheckpointStore::flush`],
//!   which `scan` calls before it returns.
//! - [`Outcome::SkipCheckpoint`] leaves the checkpoint where it was; a later checkpointed record of the same shard
//!   moves it past the skipped ones. A shard whose last records were skipped is not marked finished in the store, so
//!   that they are delivered again after a restart.
//! - With [`InitialPosition::Latest`], closed shards with no checkpoint are not read (there is nothing after their
//!   end); their children start at LATEST too. Shards that appear while scanning, and children of shards this
//!   consumer read, start at TRIM_HORIZON.
//! - A shard is polled again at once when its last batch was non-empty and it is behind (MillisBehindLatest > 0, or a
//!   full batch: kinesalite always reports 0), never more often than every 200 ms (5 calls/s per shard); otherwise
//!   after the scan interval, and an idle shard (empty answers, caught up) less and less often, up to once a second
//!   ([`ConsumerBuilder::max_idle_interval`]), until records come again.
//! - At most [`ConsumerBuilder::max_calls_in_flight`] Kinesis calls are in flight at once (64 by default); more wait
//!   their turn in the consumer. Every call has a client-side timeout ([`ConsumerBuilder::call_timeout`]) counted
//!   from when it was sent.
//! - A checkpoint older than the stream's retention (the consumer was stopped for longer) is read from TRIM_HORIZON,
//!   the oldest record left, with a warning (and the `kinesis_consumer_checkpoints_past_retention_total` metric).
//! - A handler call that fails under a [`FailurePolicy`] with retries holds its shard: nothing after the record is
//!   handled until its fate is settled, and the records handled before it in its batch are checkpointed when the batch
//!   ends (after that) or at a stop, as usual: after a crash during long retries they come again. The policy keeps a copy of each
//!   record (no payload copied) only if it may call the handler again or send to a destination; the default keeps
//!   none. With [`Consumer::scan_batches`] the policy applies to the whole batch (skipped whole, or each record sent
//!   to the destination).
//! - A shard that left the stream (past its retention) before it was read to its end is finished with a warning
//!   (and the `kinesis_consumer_shards_gone_total` metric), and its children are read; only a missing stream stops
//!   the scan ([`ErrorKind::StreamNotFound`]).
//!
//! # A stream created again
//! A stream deleted and created again under the same name has the same shard ids (`shardId-000000000000`, ...) but
//! none of the old records, so the old stream's checkpoints must not apply to it (a finished parent's end would skip
//! the new shard of that id; a sequence number of a record that is gone would be refused). At start the consumer asks
//! for the stream's creation time (DescribeStreamSummary) and compares it with a marker kept beside the checkpoints,
//! written the first time the app (or the group) met the stream: the checkpoint of the shard `#created` in the
//! store, or an entry of the lease table in the scope (group, `#created`). When they differ, the stream is a new one:
//! its checkpoints (or leases) are keyed by `{stream}@{creation ms}` instead of the name, so it starts at the initial
//! position with a warning, and the old stream's checkpoints are left as they were. Checkpoints written before the
//! marker existed are taken as the stream's (there is no way to tell), and the marker is written then. A stream
//! created again while a consumer runs is seen at the next start (the running one stops with
//! [`ErrorKind::StreamNotFound`] when the old stream goes away). A [`api::KinesisApi`] that does not
//! tell the creation time ([`api::StreamSummary::created_ms`] `None`) keeps the plain key. A stream named by ARN is
//! keyed the same way by its ARN (`{arn}@{creation ms}`); the MySQL tables' key columns hold such keys (see the
//! store crate's docs).
//!
//! # Several streams
//! [`Consumer::builder_for_streams`] reads several streams with one consumer, one handler and one checkpoint store;
//! [`Consumer::builder_tracking`] reads the streams a [`StreamTracker`] names, asked on the discovery interval, so
//! streams are added (started at their initial position, [`TrackedStream::initial_position`]) and removed (stopped
//! gracefully, checkpoints written) while the scan runs. [`Record::stream`] tells a record's stream. Checkpoints are
//! keyed by app, stream and shard as for one stream: no migration.
//!
//! # Streams named by ARN
//! Wherever a stream is given ([`Consumer::builder`], [`Consumer::builder_for_streams`], [`TrackedStream`]) it may be
//! a name (a stream of the client's account and region) or an ARN, `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`:
//! how a stream of another account (cross-account, allowed by the stream's resource policy) is named. [`StreamId`]
//! is the check `build()` makes. The consumer sends `StreamARN` instead of `StreamName` for an ARN on every call that
//! takes a stream, and asks DescribeStreamSummary once at each stream's start for its ARN and creation time.
//! [`Record::stream`] is the stream as given (the metrics' and logs' label too) and [`Record::stream_arn`] its ARN
//! either way. Checkpoints and leases are keyed by the stream as given, so a stream named by ARN is keyed by its ARN,
//! and tables keyed by names keep working; the same stream named once by name and once by ARN is two keys (not
//! detected: name each stream one way). kinesalite does not accept `StreamARN`: a stream named by ARN there fails at
//! once with an [`ErrorKind::Kinesis`] error ("DescribeStreamSummary failed"); AWS and kinesis-mock accept it. With `fan_out(name)`, the stream consumer is
//! registered on each stream. In a consumer group, the leases of every stream are in the group's lease table and a
//! worker's fair share counts all of them (see [`Consumer::builder_for_streams`]).
//!
//! [`CheckpointStore::flush`]: kc_checkpoint::CheckpointStore::flush

#![cfg_attr(docsrs, feature(doc_cfg))]

// Modules point one way (see ARCHITECTURE.md): data and seams at the bottom (`config`, `api`, `error`, `record`,
// `handler`, `lifecycle`, `metrics`, `backoff`, `retry`, `bounded`, `limit`, `shard`, `deadletter`), mechanisms above them
// (`source`, `discovery`, `failure`, `deliver`, `reader`, `group::{plan, handle}`), orchestration on top (`scan`,
// `multi`, `group`, `consumer`); `tracker` is a seam (the streams of a consumer of several).
pub mod api;
mod backoff;
mod bounded;
mod by_key;
mod config;
mod consumer;
pub mod deadletter;
mod deliver;
mod discovery;
mod error;
mod failure;
#[cfg(any(test, feature = "test-util"))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod fake;
mod generation;
mod group;
mod handler;
mod lifecycle;
mod limit;
pub mod metrics;
mod multi;
mod reader;
mod record;
mod retry;
mod scan;
mod shard;
mod source;
mod stream_id;
pub mod streams;
mod tracker;

pub use api::{KinesisApi, StartingPosition};
pub use config::{Group, InitialPosition, MAX_DURATION};
pub use consumer::{Consumer, ConsumerBuilder};
pub use deadletter::{DeadLetter, DeadLetterError, FailedRecord, KinesisDeadLetter};
pub use error::{BoxError, Error, ErrorKind};
pub use failure::{FailurePolicy, HandlerTimeout, DEAD_LETTER_TIMEOUT};
pub use handler::{Batch, BatchFailure, BatchHandler, Outcome, RecordHandler};
pub use kc_checkpoint::{Checkpoint, CheckpointStore, MemoryStore, SequenceNumber, ShardKey};
pub use lifecycle::{Lifecycle, NoLifecycle};
pub use record::Record;
pub use stream_id::StreamId;
pub use streams::{AckBatch, ShardStream, Shards};
pub use tracker::{StreamTracker, TrackedStream};
