//! The record handed to the handler.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use kc_checkpoint::{Checkpoint, SequenceNumber};

/// A partition key: the Kinesis record's own `String`, or a slice of a KPL aggregate (no copy either way).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Owned(String),
    Shared(Bytes),
}

/// Where a record was read from: its stream (as given, and its ARN) and shard, in one allocation shared by every
/// record of a shard reader, so that a record costs one reference count for all of them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    stream: Box<str>,
    stream_arn: Box<str>,
    shard_id: Box<str>,
}

impl Origin {
    pub(crate) fn new(stream: &str, stream_arn: &str, shard_id: &str) -> Arc<Self> {
        Arc::new(Self { stream: stream.into(), stream_arn: stream_arn.into(), shard_id: shard_id.into() })
    }

    /// The stream as the consumer was given it (name or ARN).
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// The stream's ARN.
    pub(crate) fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// The shard's id.
    pub(crate) fn shard_id(&self) -> &str {
        &self.shard_id
    }
}

/// A record read from a shard: a Kinesis record, or one user record of a KPL aggregate when aggregation is on.
///
/// Payload and keys are [`Bytes`]: cloning a `Record` copies no payload, and the user records of an aggregate are
/// slices of the Kinesis record they came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    data: Bytes,
    partition_key: Key,
    sequence_number: SequenceNumber,
    sub_sequence_number: Option<u64>,
    approximate_arrival_timestamp: Option<SystemTime>,
    explicit_hash_key: Option<Bytes>,
    /// Stream and shard.
    origin: Arc<Origin>,
    millis_behind_latest: Option<i64>,
    /// Whether handling this record completes its Kinesis record (false only for a user record that is not the last
    /// of its aggregate).
    completes_kinesis_record: bool,
}

impl Record {
    /// A record of `shard_id` (for tests of handlers; the consumer builds its own), of no stream (an empty name and
    /// ARN; see [`with_stream`](Self::with_stream) and [`with_stream_arn`](Self::with_stream_arn)).
    pub fn new(
        shard_id: impl AsRef<str>,
        sequence_number: SequenceNumber,
        partition_key: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        Self {
            data: data.into(),
            partition_key: Key::Owned(partition_key.into()),
            sequence_number,
            sub_sequence_number: None,
            approximate_arrival_timestamp: None,
            explicit_hash_key: None,
            origin: Origin::new("", "", shard_id.as_ref()),
            millis_behind_latest: None,
            completes_kinesis_record: true,
        }
    }

    pub(crate) fn from_raw(
        origin: &Arc<Origin>,
        sequence_number: SequenceNumber,
        partition_key: String,
        data: Bytes,
        approximate_arrival_timestamp: Option<SystemTime>,
        millis_behind_latest: Option<i64>,
    ) -> Self {
        Self {
            data,
            partition_key: Key::Owned(partition_key),
            sequence_number,
            sub_sequence_number: None,
            approximate_arrival_timestamp,
            explicit_hash_key: None,
            origin: Arc::clone(origin),
            millis_behind_latest,
            completes_kinesis_record: true,
        }
    }

    /// Turns an aggregate's record into one of its user records. `partition_key` must be valid UTF-8 (kc-deagg
    /// checks it).
    pub(crate) fn user_record(&self, parts: kc_deagg::UserRecordParts, last_of_aggregate: bool) -> Self {
        Self {
            data: parts.data,
            partition_key: Key::Shared(parts.partition_key),
            sequence_number: self.sequence_number.clone(),
            sub_sequence_number: Some(parts.sub_sequence_number),
            approximate_arrival_timestamp: self.approximate_arrival_timestamp,
            explicit_hash_key: parts.explicit_hash_key,
            origin: Arc::clone(&self.origin),
            millis_behind_latest: self.millis_behind_latest,
            completes_kinesis_record: last_of_aggregate,
        }
    }

    /// The payload.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The payload, by value.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The partition key (of the user record, for a KPL user record).
    pub fn partition_key(&self) -> &str {
        match &self.partition_key {
            Key::Owned(s) => s,
            // kc-deagg validated it as UTF-8.
            Key::Shared(b) => std::str::from_utf8(b).unwrap_or_default(),
        }
    }

    /// The sequence number of the Kinesis record (shared by every user record of a KPL aggregate).
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.sequence_number
    }

    /// The index of this user record in its KPL aggregate; `None` for a record that was not aggregated.
    pub fn sub_sequence_number(&self) -> Option<u64> {
        self.sub_sequence_number
    }

    /// When Kinesis received the record, approximately.
    pub fn approximate_arrival_timestamp(&self) -> Option<SystemTime> {
        self.approximate_arrival_timestamp
    }

    /// The explicit hash key a KPL user record was put with, if any.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_deref().map(|k| std::str::from_utf8(k).unwrap_or_default())
    }

    /// The shard the record was read from.
    pub fn shard_id(&self) -> &str {
        &self.origin.shard_id
    }

    /// The stream the record was read from (one consumer may read several), as the consumer was given it: its name,
    /// or its ARN for a stream named by ARN. The label of the stream in metrics, logs and errors too.
    pub fn stream(&self) -> &str {
        &self.origin.stream
    }

    /// The ARN of the stream the record was read from, as DescribeStreamSummary told it when the stream's scan
    /// started, whether the stream was named by name or by ARN: it tells streams of the same name in different
    /// accounts or regions apart.
    pub fn stream_arn(&self) -> &str {
        &self.origin.stream_arn
    }

    /// How far behind the tip of the shard the GetRecords call that returned this record was.
    pub fn millis_behind_latest(&self) -> Option<i64> {
        self.millis_behind_latest
    }

    /// The checkpoint that says "this record and everything before it was handled".
    pub fn checkpoint(&self) -> Checkpoint {
        match self.sub_sequence_number {
            Some(sub) if !self.completes_kinesis_record => Checkpoint::at_sub(self.sequence_number.clone(), sub),
            _ => Checkpoint::at(self.sequence_number.clone()),
        }
    }

    /// Sets the stream, as a consumer would have been given it (for tests of handlers).
    pub fn with_stream(mut self, stream: &str) -> Self {
        self.origin = Origin::new(stream, &self.origin.stream_arn, &self.origin.shard_id);
        self
    }

    /// Sets the stream's ARN (for tests of handlers).
    pub fn with_stream_arn(mut self, stream_arn: &str) -> Self {
        self.origin = Origin::new(&self.origin.stream, stream_arn, &self.origin.shard_id);
        self
    }

    /// Sets the approximate arrival time (for tests of handlers).
    pub fn with_approximate_arrival_timestamp(mut self, t: SystemTime) -> Self {
        self.approximate_arrival_timestamp = Some(t);
        self
    }
}
