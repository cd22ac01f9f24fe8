//! DynamoDB checkpoint store for kinesis-consumer: [`DynamoDbStore`], an implementation of
//! [`kc_checkpoint::CheckpointStore`] on one DynamoDB table; and [`DynamoDbLeaseTable`], the lease table of consumer
//! groups.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
//! use kc_store_ddb::DynamoDbStore;
//!
//! # async fn run(client: aws_sdk_dynamodb::Client) -> Result<(), kc_checkpoint::Error> {
//! let store = DynamoDbStore::builder(client, "kinesis-consumer-checkpoint")
//!     .flush_interval(Duration::from_secs(10))
//!     .build()?;
//! store.create_table_if_missing().await?; // or create the table with your infrastructure tooling
//! let key = ShardKey::new("my-app", "my-stream", "shardId-000000000000");
//! let sequence = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898")?;
//! store.set(&key, Checkpoint::at(sequence)).await?;
//! store.flush().await?; // also done every 10 s by a background task
//! assert!(store.get(&key).await?.is_some());
//! store.shutdown().await?; // flushes and stops the background task
//! # Ok(())
//! # }
//! ```
//!
//! # Table layout
//!
//! The table is the Go library's: partition key `namespace` (S), sort key `shard_id` (S), one item per shard.
//! [`DynamoDbStore::create_table_if_missing`] creates it (on-demand capacity) if you do not manage it yourself.
//!
//! | attribute             | type | content                                                                        |
//! |-----------------------|------|--------------------------------------------------------------------------------|
//! | `namespace`           | S    | `{app}-{stream}` (as in the Go library; see below)                             |
//! | `shard_id`            | S    | the shard id                                                                   |
//! | `sequence_number`     | S    | the sequence number, canonical decimal (absent for `ShardEnd`)                 |
//! | `sub_sequence_number` | N    | the sub-sequence number of a KPL user record (absent for a whole record)       |
//! | `finished`            | BOOL | `true` for [`Checkpoint::ShardEnd`], else `false`                              |
//! | `sequence_key`        | S    | an order-preserving encoding of the checkpoint, used by conditional writes     |
//!
//! The namespace is the Go library's, so a Go consumer's table can be reused; like there, it is ambiguous when names
//! contain `-` (app `a-b` reading stream `c` and app `a` reading stream `b-c` share `a-b-c`), so pick app names that
//! cannot collide.
//!
//! Sequence numbers have up to 129 digits (real ones about 56), more than a DynamoDB Number holds (38 digits), so
//! they are strings. To compare them in a `ConditionExpression`, `sequence_key` is the sequence number left-padded
//! with zeros to 129 digits, then `#`, then the sub-sequence number padded to 20 digits or `z` for a whole record;
//! `ShardEnd` is `~`. DynamoDB compares strings by their UTF-8 bytes, so string order is exactly
//! [`Checkpoint`]'s order.
//!
//! # Semantics
//!
//! - [`set`](CheckpointStore::set) only buffers, in memory, the newest checkpoint of each shard.
//!   A background task (started by [`DynamoDbStoreBuilder::build`], so call it inside a Tokio runtime) flushes every
//!   [`flush_interval`](DynamoDbStoreBuilder::flush_interval) (default 5 s); [`flush`](CheckpointStore::flush)
//!   writes at once, one conditional `PutItem` per pending shard, up to 16 at a time.
//! - Monotonic in the database: a write only succeeds if there is no item, or the item has no `sequence_key` (written
//!   by the Go library), or its `sequence_key` is smaller. A failed condition means an equal or newer checkpoint is
//!   stored (by another process): the pending one is dropped and that is a success.
//! - Transient failures (throttling, 5xx, timeouts, connection errors) are retried inside a flush, up to
//!   [`max_attempts`](DynamoDbStoreBuilder::max_attempts) (default 5) with capped exponential backoff, on top of the
//!   SDK's own retries. If they still fail, `flush` returns an [`ErrorKind::Transient`] error. Access denied, a
//!   missing table or a validation error are [`ErrorKind::Permanent`], with the SDK error as `source()`. After any
//!   failure the checkpoints stay pending for the next flush: they are never dropped.
//! - [`get`](CheckpointStore::get) reads with a consistent read and returns the newer of the stored and the pending
//!   checkpoint; `Ok(None)` only when there is neither.
//! - [`DynamoDbStore::shutdown`] stops the background task and flushes; calling it again is harmless. Dropping the
//!   store stops the task without flushing.

//!
//! # The lease table
//!
//! [`DynamoDbLeaseTable`] implements [`LeaseTable`](kc_checkpoint::lease::LeaseTable), the lease table of consumer
//! groups (see [`kc_checkpoint::lease`]), on a table of its own: partition key `scope` (S), sort key `shard_id` (S),
//! one item per lease. [`DynamoDbLeaseTable::create_table_if_missing`] creates it (on-demand capacity).
//!
//! The leases of a scope (a group reading a stream) are spread over [`LEASE_BUCKETS`] (32) partitions: the
//! partition key is `{stream}#{group}#{bucket}`, where the bucket is [`lease_bucket`]`(shard_id)`, a stable hash of
//! the shard id (FNV-1a 64, MurmurHash3's finalizer, modulo 32), in two digits: `orders#billing#07`.
//! [`DynamoDbLeaseTable::partition_key`] gives the key of a lease, to find it with the AWS CLI.
//!
//! | attribute             | type | content                                                                        |
//! |-----------------------|------|--------------------------------------------------------------------------------|
//! | `scope`               | S    | `{stream}#{group}#{bucket}`; `%`, `/`, `#` written `%25`, `%2F`, `%23` in both |
//! | `shard_id`            | S    | the shard id                                                                   |
//! | `group_name`          | S    | the scope's group name (for people reading the table)                          |
//! | `stream_name`         | S    | the scope's stream name (for people reading the table)                         |
//! | `lease_owner`         | S    | the worker holding the lease (absent: none)                                    |
//! | `lease_counter`       | N    | incremented by every write                                                     |
//! | `sequence_number`     | S    | the checkpoint, as in the checkpoint store (these four absent: no checkpoint)  |
//! | `sub_sequence_number` | N    | as in the checkpoint store                                                     |
//! | `finished`            | BOOL | as in the checkpoint store                                                     |
//! | `sequence_key`        | S    | as in the checkpoint store; compared by the checkpoint's conditional write     |
//! | `parents`             | L    | the parent shard ids (strings)                                                 |
//! | `next_owner`          | S    | the worker that asked for the lease (absent: none)                             |
//! | `created_at_ms`       | N    | when the lease was created: ms since the Unix epoch, creating worker's clock   |
//!
//! Why buckets: DynamoDB serves one partition key value from one partition, at most 1,000 write units and 3,000
//! read units a second. A group of 4,096 shards with 10 s leases renews ~1,230 leases a second (every third of the
//! lease duration), plus a checkpoint per shard and batch (~4,100 a second at one batch a second): a lease item is
//! under 1 KB, one write unit per write. Over 32 buckets that is ~40 renewals and ~170 writes in all per partition
//! and second (the fullest bucket of 4,096 Kinesis shard ids holds 144 leases, the mean is 128), with room for
//! about six times as many leases. Every worker lists the scope each take cycle: the leases' bytes are the same as
//! with one partition, now read from 32 (about 1.8 MB, 460 read units, per list of 4,096 leases).
//!
//! The escaping keeps the key unique for any pair of names (a raw `#` only separates), and a key never contains a
//! `/`, which every key of the first layout does, so the two layouts never share a partition. The bucket count is
//! part of the layout: every worker of a group must agree on it, so it is a constant, not an option.
//!
//! `get`, `create` and every write address one item (`GetItem`, `PutItem`, `UpdateItem` on its key). `list`
//! queries the 32 partitions, 8 at a time, each a consistent `Query` following `LastEvaluatedKey` (one page each
//! up to about 2,000 leases per bucket), and returns the leases in shard-id order: 33 `Query` calls per list with
//! the one of the first layout's partition (below).
//!
//! Every write is a conditional `UpdateItem` (`ConditionExpression` on `lease_counter`, and on `lease_owner` for the
//! owner's writes) that increments the counter; `ConditionalCheckFailedException` (the lease changed, or does not
//! exist) is [`ErrorKind::Fenced`], with a message saying what the lease looks like
//! now. A checkpoint is first written with the extra condition `sequence_key < :new` (or no checkpoint yet); if
//! that fails, a second update increments only the counter under `sequence_key >= :new`; if both fail, the lease
//! changed. Both are fenced by the counter, so the checkpoint never moves backwards and the counter always moves.
//! `create` is a `PutItem` with `attribute_not_exists`; `get` a consistent `GetItem`. Writes are sent without the
//! SDK's retries (a write whose response was lost may have been applied: it is
//! [`Transient`](kc_checkpoint::ErrorKind::Transient), never `Fenced`).
//!
//! ```no_run
//! use kc_checkpoint::lease::{LeaseScope, LeaseTable};
//! use kc_store_ddb::DynamoDbLeaseTable;
//!
//! # async fn run(client: aws_sdk_dynamodb::Client) -> Result<(), kc_checkpoint::Error> {
//! let leases = DynamoDbLeaseTable::new(client, "kinesis-consumer-leases")?;
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
//! ## Moving from the first layout
//!
//! Versions before the buckets kept every lease of a scope in one partition, `{stream}/{group}` (`%` and `/`
//! written `%25` and `%2F` in the stream name), with the same attributes. The table itself does not change (same
//! key attributes), so there is nothing to run: every `list` first reads that partition of its scope (one `Query`;
//! after the move it holds one small item) and moves what it finds, before it queries the buckets, so that a list
//! never returns some leases while others are still in the old partition (a worker would create those again,
//! without their checkpoints).
//!
//! 1. It writes a marker item into the old partition unless it is there (a plain `PutItem`): sort key
//!    `~ this group's leases moved to a newer kinesis-consumer's bucketed layout; upgrade this worker`, no
//!    `lease_counter`. A worker of an earlier version that lists the scope fails with "malformed lease item for ~
//!    this group's leases moved [...]; upgrade this worker in table [...]: no number lease_counter" (a permanent
//!    error: its worker stops), instead of creating the leases again in the old partition and reading the shards
//!    from their start.
//! 2. Each lease there, up to 8 at a time: a fence, `UpdateItem` conditional on the counter read, that sets the
//!    owner to `#moving-to-bucketed-layout` (keeping the owner in `moved_owner`) and increments the counter; a copy
//!    of the fenced item to its bucket with its owner, `PutItem` unless a lease of that shard is there already (the
//!    new layout wins); then a `DeleteItem` conditional on the fenced counter. A failed condition reads the item
//!    again and goes on from what it finds (gone: another worker moved it).
//!
//! Several workers, of either version, may run meanwhile:
//! - An earlier worker holding a moved lease has its next write refused (the owner changed, then the item is gone),
//!   reads it, finds it lost and stops reading the shard, at the latest at its deadline (its last successful write
//!   plus the lease duration), as after any loss. The copy keeps its owner, and the counter moves on by one; a new
//!   worker takes it only after seeing that counter unchanged for a lease duration, after the deadline. A lease
//!   that had no owner is free at once. Checkpoints never move backwards: no earlier worker can write the fenced
//!   item, and the copy is that item.
//! - Earlier workers stop at their next take cycle (the marker), so a rolling deploy sees them exit with that error
//!   (and exit again if restarted with the earlier version) while the new workers take their leases after a lease
//!   duration, as after a crash. Deploy the new version to every worker of the group; there is no way back to the
//!   earlier version short of moving the items back by hand.
//! - An earlier worker that listed just before the marker was written may still create or take a lease in the old
//!   partition: the next `list` of a new worker moves it (fencing that worker off), so it reads that shard alongside a
//!   new worker for at most one take cycle.
//! - The move is at-least-once, never lossy. One case can deliver records again: a worker that stalls between
//!   reading a fenced item and copying it, longer than another worker takes to read that shard to its end and delete
//!   its finished lease, writes the lease back with its earlier checkpoint.
//!
//! A list cut short (kc-core bounds each call by its store timeout) leaves leases moved, half-moved (fenced) or not
//! yet moved, never lost; the next list goes on from there. The move costs a `PutItem`, an `UpdateItem` and a
//! `DeleteItem` per lease, once: 4,096 leases took one list of 12 to 25 s against dynalite on two shared cores,
//! 8 in flight (`dynamodb_leases_spread_over_buckets` in `integration/tests/leases.rs` prints it). Scopes that are
//! only read with `get`, never listed, are not moved: a new worker finds no lease there and creates one.
//! Items written by the earliest versions, without `created_at_ms`, are moved as they are.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod key;
mod lease;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use kc_checkpoint::buffered::{AfterShutdown, Backend, BufferedStore, FlushStart, Retry};
use kc_checkpoint::{Checkpoint, CheckpointStore, Error, ErrorKind, SequenceNumber, ShardKey};

pub use key::sequence_key;
pub use lease::{lease_bucket, DynamoDbLeaseTable, LEASE_BUCKETS};

const NAMESPACE: &str = "namespace";
const SHARD_ID: &str = "shard_id";
const SEQUENCE_NUMBER: &str = "sequence_number";
const SUB_SEQUENCE_NUMBER: &str = "sub_sequence_number";
const FINISHED: &str = "finished";
const SEQUENCE_KEY: &str = "sequence_key";

/// Default interval of the background flush.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of attempts of one write within a flush.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Writes in flight at once within a flush.
const MAX_CONCURRENT_WRITES: usize = 16;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A [`CheckpointStore`] on a DynamoDB table. See the [crate docs](crate) for the table layout and the semantics.
///
/// The engine is [`BufferedStore`]; this crate is its backend (one
/// conditional `PutItem` per checkpoint, a consistent `GetItem`).
#[derive(Debug)]
pub struct DynamoDbStore {
    engine: BufferedStore<Table>,
}

/// The backend: the table's requests.
#[derive(Debug)]
struct Table {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// `table {table}`, for the engine's messages and logs.
    name: String,
}

/// Options of a [`DynamoDbStore`]; [`build`](Self::build) validates them.
#[derive(Debug)]
pub struct DynamoDbStoreBuilder {
    client: aws_sdk_dynamodb::Client,
    table: String,
    flush_interval: Duration,
    max_attempts: u32,
}

impl DynamoDbStoreBuilder {
    /// How often the background task flushes pending checkpoints. Default: [`DEFAULT_FLUSH_INTERVAL`] (5 s).
    /// Must not be zero.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// How many times a flush tries one write before it gives up on a transient failure (the checkpoint stays
    /// pending). Default: [`DEFAULT_MAX_ATTEMPTS`] (5). Must be at least 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Validates the options and starts the background flush task.
    ///
    /// Errors with [`ErrorKind::InvalidInput`] for an invalid table name (DynamoDB's rule: 3 to 255 characters of
    /// `A-Z a-z 0-9 _ . -`), a zero interval or zero attempts, and when called outside a Tokio runtime.
    pub fn build(self) -> Result<DynamoDbStore, Error> {
        validate_table_name(&self.table)?;
        let backend = Table { client: self.client, name: format!("table {}", self.table), table: self.table };
        let engine = BufferedStore::builder(backend)
            .flush_interval(self.flush_interval)
            .retry(Retry::with_backoff(self.max_attempts, backoff))
            // One conditional PutItem per checkpoint, so that each one's success is known.
            .max_items_per_write(1)
            .max_writes_in_flight(MAX_CONCURRENT_WRITES)
            .start(FlushStart::Build)
            .after_shutdown(AfterShutdown::Buffer)
            .build()?;
        Ok(DynamoDbStore { engine })
    }
}

/// Checks DynamoDB's table-name rule: 3 to 255 characters of `A-Z a-z 0-9 _ . -`.
pub(crate) fn validate_table_name(table: &str) -> Result<(), Error> {
    let valid_chars = table.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if (3..=255).contains(&table.len()) && valid_chars {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "invalid DynamoDB table name {table:?}: expected 3 to 255 characters of A-Z, a-z, 0-9, '_', '.', '-'"
            ),
        ))
    }
}

impl DynamoDbStore {
    /// A store on `table` with the default options (see [`DynamoDbStoreBuilder`]); must be called inside a Tokio
    /// runtime. The table is not checked here: see [`create_table_if_missing`](Self::create_table_if_missing).
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Result<Self, Error> {
        Self::builder(client, table).build()
    }

    /// A builder for a store on `table`.
    pub fn builder(client: aws_sdk_dynamodb::Client, table: &str) -> DynamoDbStoreBuilder {
        DynamoDbStoreBuilder {
            client,
            table: table.to_owned(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.engine.backend().table
    }

    /// Creates the table (partition key `namespace`, sort key `shard_id`, on-demand capacity) unless it exists, and
    /// waits until it is `ACTIVE` (at most two minutes). A table still being deleted is waited for, then created
    /// again.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        let backend = self.engine.backend();
        create_table_if_missing(&backend.client, &backend.table, NAMESPACE, SHARD_ID).await
    }

    /// Stops the background task and flushes the pending checkpoints. Calling it again only flushes again (which
    /// writes nothing if nothing was set since). [`set`](CheckpointStore::set) still buffers after a shutdown, and
    /// [`flush`](CheckpointStore::flush) still writes.
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.engine.shutdown().await
    }
}

/// Creates `table` (partition key `hash`, sort key `range`, both strings, on-demand capacity) unless it exists, and
/// waits until it is `ACTIVE` (at most two minutes). A table still being deleted (`DELETING`, as right after a
/// `DeleteTable`) is waited for and then created again.
pub(crate) async fn create_table_if_missing(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    hash: &str,
    range: &str,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    loop {
        match client.describe_table().table_name(table).send().await {
            Ok(out) => {
                if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                    return Ok(());
                }
                // CREATING, UPDATING or DELETING: look again after a pause.
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => {
                create_table(client, table, hash, range).await?;
            }
            Err(err) => return Err(error::from_sdk(&format!("describing table {table}"), err)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorKind::Transient,
                format!("table {table} not ACTIVE after {TABLE_ACTIVE_TIMEOUT:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_table(client: &aws_sdk_dynamodb::Client, table: &str, hash: &str, range: &str) -> Result<(), Error> {
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(hash)?)
        .attribute_definitions(attribute(range)?)
        .key_schema(key_element(hash, KeyType::Hash)?)
        .key_schema(key_element(range, KeyType::Range)?)
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        // Created concurrently by another process (or still being deleted): the caller describes it again.
        Err(err) if err.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => Ok(()),
        Err(err) => Err(error::from_sdk(&format!("creating table {table}"), err)),
    }
}

fn attribute(name: &str) -> Result<AttributeDefinition, Error> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Permanent, "building a table definition", e))
}

fn key_element(name: &str, key_type: KeyType) -> Result<KeySchemaElement, Error> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(|e| Error::with_source(ErrorKind::Permanent, "building a key schema", e))
}

/// The partition key of `key`: `{app}-{stream}`, as in the Go library. Note that this is ambiguous when names
/// contain `-` (app `a-b` with stream `c` and app `a` with stream `b-c` share `a-b-c`): keep app names unique.
fn namespace(key: &ShardKey) -> String {
    format!("{}-{}", key.app(), key.stream())
}

#[async_trait]
impl Backend for Table {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        self.get_item(key).await
    }

    /// One conditional `PutItem` per checkpoint (the engine gives batches of one, and retries them).
    async fn write(&self, batch: &[(ShardKey, Checkpoint)]) -> Result<(), Error> {
        for (key, checkpoint) in batch {
            self.put(key, checkpoint).await?;
        }
        Ok(())
    }
}

impl Table {
    async fn put(&self, key: &ShardKey, cp: &Checkpoint) -> Result<(), Error> {
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(NAMESPACE, AttributeValue::S(namespace(key)))
            .item(SHARD_ID, AttributeValue::S(key.shard().to_owned()))
            .item(SEQUENCE_KEY, AttributeValue::S(sequence_key(cp)))
            .item(FINISHED, AttributeValue::Bool(cp.is_shard_end()))
            .condition_expression("attribute_not_exists(#shard) OR attribute_not_exists(#key) OR #key < :new")
            .expression_attribute_names("#shard", SHARD_ID)
            .expression_attribute_names("#key", SEQUENCE_KEY)
            .expression_attribute_values(":new", AttributeValue::S(sequence_key(cp)));
        if let Checkpoint::At { sequence, sub_sequence } = cp {
            request = request.item(SEQUENCE_NUMBER, AttributeValue::S(sequence.as_str().to_owned()));
            if let Some(sub) = sub_sequence {
                request = request.item(SUB_SEQUENCE_NUMBER, AttributeValue::N(sub.to_string()));
            }
        }
        match request.send().await {
            Ok(_) => Ok(()),
            // A checkpoint at or after this one is stored: nothing to do.
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(err) => {
                Err(error::from_sdk(&format!("writing checkpoint of {} to table {}", key.shard(), self.table), err))
            }
        }
    }

    async fn get_item(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(NAMESPACE, AttributeValue::S(namespace(key)))
            .key(SHARD_ID, AttributeValue::S(key.shard().to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| {
                error::from_sdk(&format!("reading checkpoint of {} from table {}", key.shard(), self.table), err)
            })?;
        out.item()
            .map(|item| {
                decode(item).map_err(|msg| {
                    Error::new(
                        ErrorKind::Permanent,
                        format!("malformed checkpoint item for {} in table {}: {msg}", key.shard(), self.table),
                    )
                })
            })
            .transpose()
    }
}

/// Decodes a stored item (also one written by the Go library: `sequence_number` only).
fn decode(item: &HashMap<String, AttributeValue>) -> Result<Checkpoint, String> {
    if matches!(item.get(FINISHED), Some(AttributeValue::Bool(true))) {
        return Ok(Checkpoint::ShardEnd);
    }
    let sequence = match item.get(SEQUENCE_NUMBER) {
        Some(AttributeValue::S(s) | AttributeValue::N(s)) => {
            SequenceNumber::parse(s.as_str()).map_err(|e| format!("{SEQUENCE_NUMBER}: {e}"))?
        }
        Some(_) => return Err(format!("{SEQUENCE_NUMBER} is not a string")),
        None => return Err(format!("no {SEQUENCE_NUMBER}")),
    };
    let sub_sequence = match item.get(SUB_SEQUENCE_NUMBER) {
        None | Some(AttributeValue::Null(_)) => None,
        Some(AttributeValue::N(n)) => Some(n.parse::<u64>().map_err(|e| format!("{SUB_SEQUENCE_NUMBER} {n:?}: {e}"))?),
        Some(_) => return Err(format!("{SUB_SEQUENCE_NUMBER} is not a number")),
    };
    Ok(Checkpoint::At { sequence, sub_sequence })
}

/// Capped exponential backoff with full jitter (between half and all of the step).
fn backoff(attempt: u32) -> Duration {
    let step = BACKOFF_BASE.saturating_mul(1 << attempt.min(10)).min(BACKOFF_CAP);
    step.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[async_trait]
impl CheckpointStore for DynamoDbStore {
    async fn get(&self, key: &ShardKey) -> Result<Option<Checkpoint>, Error> {
        self.engine.get(key).await
    }

    async fn set(&self, key: &ShardKey, checkpoint: Checkpoint) -> Result<(), Error> {
        self.engine.set(key, checkpoint).await
    }

    async fn flush(&self) -> Result<(), Error> {
        self.engine.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let long = "a".repeat(255);
        let too_long = "a".repeat(256);
        let cases: &[(&str, bool)] = &[
            ("abc", true),
            ("kinesis-consumer-checkpoint", true),
            ("A_b.c-9", true),
            (&long, true),
            ("ab", false),
            ("", false),
            (&too_long, false),
            ("has space", false),
            ("slash/name", false),
            ("colon:name", false),
            ("ünïcode", false),
        ];
        for (name, ok) in cases {
            let got = validate_table_name(name);
            assert_eq!(got.is_ok(), *ok, "{name:?}");
            if let Err(err) = got {
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{name:?}");
            }
        }
    }

    #[test]
    fn decode_items() {
        let seq = |s: &str| SequenceNumber::parse(s).expect("valid");
        let s = |v: &str| AttributeValue::S(v.to_owned());
        let item = |pairs: Vec<(&str, AttributeValue)>| -> HashMap<String, AttributeValue> {
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        };
        let cases = vec![
            (item(vec![(SEQUENCE_NUMBER, s("42"))]), Ok(Checkpoint::at(seq("42")))),
            (
                item(vec![(SEQUENCE_NUMBER, s("42")), (SUB_SEQUENCE_NUMBER, AttributeValue::N("3".into()))]),
                Ok(Checkpoint::at_sub(seq("42"), 3)),
            ),
            (item(vec![(FINISHED, AttributeValue::Bool(true))]), Ok(Checkpoint::ShardEnd)),
            (
                item(vec![(SEQUENCE_NUMBER, s("7")), (FINISHED, AttributeValue::Bool(false))]),
                Ok(Checkpoint::at(seq("7"))),
            ),
            (item(vec![]), Err(())),
            (item(vec![(SEQUENCE_NUMBER, s("x1"))]), Err(())),
            (item(vec![(SEQUENCE_NUMBER, s("1")), (SUB_SEQUENCE_NUMBER, AttributeValue::N("-1".into()))]), Err(())),
        ];
        for (item, want) in cases {
            assert_eq!(decode(&item).map_err(|_| ()), want, "{item:?}");
        }
    }

    /// A client for a closed local port: every call fails to connect. No credential chain, no SDK retries.
    fn unreachable_client() -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("dummy", "dummy", None, None, "test"))
            .endpoint_url("http://127.0.0.1:1")
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    #[test]
    fn building_outside_a_runtime_is_an_error() {
        let err = DynamoDbStore::new(unreachable_client(), "table").expect_err("no runtime");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn invalid_options_are_rejected() {
        let zero = DynamoDbStore::builder(unreachable_client(), "table").flush_interval(Duration::ZERO).build();
        assert_eq!(zero.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
        let none = DynamoDbStore::builder(unreachable_client(), "table").max_attempts(0).build();
        assert_eq!(none.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
        let bad = DynamoDbStore::new(unreachable_client(), "a b");
        assert_eq!(bad.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidInput));
    }

    #[tokio::test]
    async fn unreachable_server_keeps_pending_and_is_transient() {
        let store = DynamoDbStore::builder(unreachable_client(), "table").max_attempts(2).build().expect("store");
        store.flush().await.expect("nothing pending: no call");
        let key = ShardKey::new("app", "stream", "shard");
        let cp = Checkpoint::at(SequenceNumber::parse("10").expect("valid"));
        store.set(&key, cp.clone()).await.expect("set");
        store.set(&key, Checkpoint::at(SequenceNumber::parse("9").expect("valid"))).await.expect("set");
        for _ in 0..2 {
            let err = store.flush().await.expect_err("unreachable");
            assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
            assert_eq!(store.engine.pending(&key), Some(cp.clone()), "kept for the next flush");
        }
        let err = store.get(&key).await.expect_err("a failed read is not Ok(None)");
        assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
        store.shutdown().await.expect_err("shutdown still tries to flush");
    }

    #[test]
    fn backoff_is_capped() {
        for attempt in 1..40 {
            let d = backoff(attempt);
            assert!(d <= BACKOFF_CAP && d >= BACKOFF_BASE, "{attempt}: {d:?}");
        }
    }
}
