//! The part of the Kinesis API the consumer uses, as a trait.
//!
//! [`KinesisApi`] is implemented for [`aws_sdk_kinesis::Client`]; the consumer is written against the trait so that
//! tests (and the `test-util` feature's [`crate::fake`]) can run the scan loop without a server, and so that other
//! record sources can be added beside polling.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use kc_checkpoint::SequenceNumber;

use crate::stream_id::is_arn;

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Just after the newest record: only records put from now on.
    Latest,
    /// The first record at or after this time.
    AtTimestamp(SystemTime),
    /// The record with this sequence number (used to resume inside a KPL aggregate).
    AtSequenceNumber(SequenceNumber),
    /// The record after this sequence number (used to resume after a checkpoint).
    AfterSequenceNumber(SequenceNumber),
}

/// One shard, as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard's id.
    pub shard_id: String,
    /// The shard this one was split from, or one of the two it was merged from.
    pub parent_shard_id: Option<String>,
    /// The other shard this one was merged from.
    pub adjacent_parent_shard_id: Option<String>,
    /// Whether the shard is closed (it has an ending sequence number: no record will be added to it).
    pub closed: bool,
}

impl ShardInfo {
    /// An open shard with no parents.
    pub fn new(shard_id: impl Into<String>) -> Self {
        Self { shard_id: shard_id.into(), parent_shard_id: None, adjacent_parent_shard_id: None, closed: false }
    }

    /// The shard's parents (zero, one or two).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id.as_deref().into_iter().chain(self.adjacent_parent_shard_id.as_deref())
    }
}

/// One page of ListShards.
#[derive(Clone, Debug, Default)]
pub struct ShardPage {
    /// The shards of this page.
    pub shards: Vec<ShardInfo>,
    /// The token of the next page, if the service returned one.
    pub next_token: Option<String>,
}

/// A record as GetRecords returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// The record's sequence number in its shard.
    pub sequence_number: String,
    /// The record's partition key.
    pub partition_key: String,
    /// The record's payload.
    pub data: Bytes,
    /// When Kinesis received the record, approximately.
    pub approximate_arrival_timestamp: Option<SystemTime>,
}

/// The result of one GetRecords call.
#[derive(Clone, Debug, Default)]
pub struct RecordBatch {
    /// The records, in shard order.
    pub records: Vec<RawRecord>,
    /// The iterator for the next call; `None` when the shard is closed and every record was returned.
    pub next_shard_iterator: Option<String>,
    /// How far behind the tip of the stream this response is.
    pub millis_behind_latest: Option<i64>,
    /// The shard's children, returned by real Kinesis with the last batch of a closed shard.
    pub child_shards: Vec<ShardInfo>,
}

/// What DescribeStreamSummary tells the consumer about a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream's ARN.
    pub arn: String,
    /// When the stream was created, in milliseconds since the Unix epoch; `None` (unknown) keys its checkpoints by
    /// the stream alone, whatever the stream's creation time.
    pub created_ms: Option<u64>,
}

impl StreamSummary {
    /// The summary of the stream `arn`, created at `created_ms`.
    pub fn new(arn: impl Into<String>, created_ms: Option<u64>) -> Self {
        Self { arn: arn.into(), created_ms }
    }
}

/// The calls the consumer makes to Kinesis.
///
/// A `stream` argument is the stream as the consumer was given it: a name, or an ARN (a stream of another account
/// or region, see [`StreamId`](crate::StreamId)). The implementation for `aws_sdk_kinesis::Client` sends an ARN as
/// `StreamARN` and a name as `StreamName`.
#[async_trait]
pub trait KinesisApi: Send + Sync + 'static {
    /// One page of the shards of `stream`. `next_token` is `Some` only when the previous page returned one.
    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError>;

    /// A shard iterator for `shard_id` at `position`.
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, ApiError>;

    /// Up to `limit` records from `shard_iterator`.
    async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<RecordBatch, ApiError>;

    /// Puts one record on `stream` (PutRecord) with `partition_key`; returns its sequence number. The consumer does
    /// not read with it: the [Kinesis dead-letter destination](crate::deadletter::KinesisDeadLetter) writes with it.
    /// The default fails with a permanent error (an implementation made for reading only keeps compiling, and a
    /// dead-letter destination on it stops the scan with a clear error).
    async fn put_record(&self, stream: &str, partition_key: &str, data: Bytes) -> Result<String, ApiError> {
        let _ = (stream, partition_key, data);
        Err(ApiError::with_source(
            ApiErrorKind::Permanent,
            Some("UnsupportedOperation".to_owned()),
            "this KinesisApi implementation does not implement PutRecord",
        ))
    }

    // Enhanced fan-out. The defaults fail with a permanent error, so that an implementation made for polling only
    // keeps compiling and a consumer configured for fan-out on it stops with a clear error.

    /// What the consumer needs to know of `stream` (DescribeStreamSummary), asked once when the stream's scan starts:
    /// its ARN (records carry it, fan-out consumers are registered on it) and when it was created (to tell a stream
    /// deleted and created again under the same name from the one its checkpoints were written for, see
    /// [the crate docs](crate#a-stream-created-again)). Required (no default), so that a wrapper cannot turn the
    /// detection off by forgetting to forward it.
    async fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary, ApiError>;

    /// Registers a fan-out consumer named `name` on the stream `stream_arn` (RegisterStreamConsumer).
    async fn register_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, ApiError> {
        let _ = (stream_arn, name);
        Err(fan_out_unsupported("RegisterStreamConsumer"))
    }

    /// Describes a fan-out consumer (DescribeStreamConsumer); `NotFound` when there is none.
    async fn describe_stream_consumer(&self, consumer: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError> {
        let _ = consumer;
        Err(fan_out_unsupported("DescribeStreamConsumer"))
    }

    /// Deregisters the fan-out consumer `consumer_arn` (DeregisterStreamConsumer).
    async fn deregister_stream_consumer(&self, consumer_arn: &str) -> Result<(), ApiError> {
        let _ = consumer_arn;
        Err(fan_out_unsupported("DeregisterStreamConsumer"))
    }

    /// Subscribes the fan-out consumer `consumer_arn` to `shard_id` from `position` (SubscribeToShard). The
    /// subscription pushes events until it ends (after 5 minutes on AWS) or fails.
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn ShardSubscription>, ApiError> {
        let _ = (consumer_arn, shard_id, position);
        Err(fan_out_unsupported("SubscribeToShard"))
    }
}

fn fan_out_unsupported(call: &str) -> ApiError {
    ApiError::with_source(
        ApiErrorKind::Permanent,
        Some("UnsupportedOperation".to_owned()),
        format!("this KinesisApi implementation does not implement {call} (enhanced fan-out)"),
    )
}

/// Which fan-out consumer [`KinesisApi::describe_stream_consumer`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerLookup<'a> {
    /// The consumer `name` of the stream `stream_arn`.
    Name {
        /// The stream's ARN.
        stream_arn: &'a str,
        /// The consumer's name.
        name: &'a str,
    },
    /// The consumer with this ARN.
    Arn(&'a str),
}

/// The state of a registered fan-out consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerStatus {
    /// Being registered: it cannot subscribe yet.
    Creating,
    /// Registered: it can subscribe.
    Active,
    /// Being deregistered.
    Deleting,
}

/// A registered fan-out consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    /// The consumer's name.
    pub name: String,
    /// The consumer's ARN, which SubscribeToShard takes.
    pub arn: String,
    /// Its state.
    pub status: ConsumerStatus,
}

/// One event of a SubscribeToShard subscription.
#[derive(Clone, Debug, Default)]
pub struct SubscribeEvent {
    /// The records, in shard order (possibly none: events also come when nothing was put).
    pub records: Vec<RawRecord>,
    /// Where to subscribe again (AFTER_SEQUENCE_NUMBER) to continue after this event; `None` at the shard's end.
    pub continuation_sequence_number: Option<String>,
    /// How far behind the tip of the stream this event is.
    pub millis_behind_latest: Option<i64>,
    /// The shard's children, in the last event of a closed shard.
    pub child_shards: Vec<ShardInfo>,
}

/// A SubscribeToShard subscription: the events Kinesis pushes. Events are read from the connection only when
/// [`next_event`](Self::next_event) is called, so a slow reader slows the transfer (HTTP flow control) rather than
/// filling memory.
#[async_trait]
pub trait ShardSubscription: Send {
    /// The next event; `None` when the subscription ended normally (after 5 minutes on AWS).
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, ApiError>;
}

/// What kind of failure an [`ApiError`] is: it decides what the scan loop does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// The shard iterator expired: get a new one after the last handled record.
    ExpiredIterator,
    /// Throttling (ProvisionedThroughputExceeded, LimitExceeded, KMS throttling): back off and retry.
    Throttled,
    /// A server error (5xx), a timeout or a dropped connection: back off and retry.
    Transient,
    /// The stream or shard does not exist (or no longer does).
    NotFound,
    /// The resource is busy: a fan-out consumer that is not ACTIVE yet, or a shard that this consumer subscribed to
    /// less than 5 seconds ago (ResourceInUseException).
    ResourceInUse,
    /// The starting sequence number is no longer in the shard: its record is past the stream's retention
    /// (InvalidArgumentException about the StartingSequenceNumber). The consumer reads from TRIM_HORIZON instead.
    SequenceNotAvailable,
    /// Anything retrying will not fix (access denied, invalid argument, KMS key disabled, ...).
    Permanent,
}

/// A failed Kinesis call.
#[derive(Debug)]
pub struct ApiError {
    kind: ApiErrorKind,
    code: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ApiError {
    /// An error of `kind` with the service's error code (e.g. `"ExpiredIteratorException"`), if there is one.
    pub fn new(kind: ApiErrorKind, code: Option<String>) -> Self {
        Self { kind, code, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: ApiErrorKind,
        code: Option<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { kind, code, source: Some(source.into()) }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ApiErrorKind {
        self.kind
    }

    /// The service's error code, if the service answered.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// A call the consumer gave up on at its client-side timeout (transient: retried).
    pub(crate) fn timed_out() -> Self {
        Self::new(ApiErrorKind::Transient, Some("client-side timeout".to_owned()))
    }

    /// Whether the scan loop retries this error after a backoff.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, ApiErrorKind::Throttled | ApiErrorKind::Transient)
    }

    /// Classifies an error from the AWS SDK by its error code and HTTP status.
    pub fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(ctx) => {
                let code = ctx.err().code().map(str::to_owned);
                let mut kind = code.as_deref().map_or(ApiErrorKind::Permanent, classify_code);
                if code.as_deref() == Some("InvalidArgumentException")
                    && ctx.err().message().is_some_and(is_about_the_starting_sequence_number)
                {
                    kind = ApiErrorKind::SequenceNotAvailable;
                }
                if kind == ApiErrorKind::Permanent && ctx.raw().status().is_server_error() {
                    kind = ApiErrorKind::Transient;
                }
                Self::with_source(kind, code, err)
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                Self::with_source(ApiErrorKind::Transient, None, err)
            }
            _ => Self::with_source(ApiErrorKind::Permanent, None, err),
        }
    }
}

/// Whether an InvalidArgumentException's message is about the StartingSequenceNumber: how Kinesis says that a
/// sequence number is no longer in the shard (past the retention); the Go library reads it the same way.
fn is_about_the_starting_sequence_number(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("startingsequencenumber") || message.contains("starting sequence number")
}

/// The kind of a Kinesis error code. Unknown codes are permanent: retrying an error we do not understand could spin
/// for ever; 5xx codes the SDK knows are transient.
fn classify_code(code: &str) -> ApiErrorKind {
    match code {
        "ExpiredIteratorException" => ApiErrorKind::ExpiredIterator,
        "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "KMSThrottlingException"
        | "ThrottlingException"
        | "Throttling"
        | "RequestLimitExceeded" => ApiErrorKind::Throttled,
        "InternalFailure"
        | "InternalFailureException"
        | "InternalServerError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalError"
        | "RequestTimeout"
        | "RequestTimeoutException" => ApiErrorKind::Transient,
        "ResourceNotFoundException" => ApiErrorKind::NotFound,
        "ResourceInUseException" => ApiErrorKind::ResourceInUse,
        _ => ApiErrorKind::Permanent,
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ApiErrorKind::ExpiredIterator => "shard iterator expired",
            ApiErrorKind::Throttled => "throttled by Kinesis",
            ApiErrorKind::Transient => "transient Kinesis failure",
            ApiErrorKind::NotFound => "stream or shard not found",
            ApiErrorKind::ResourceInUse => "Kinesis resource in use",
            ApiErrorKind::SequenceNotAvailable => "starting sequence number no longer in the shard",
            ApiErrorKind::Permanent => "Kinesis call failed",
        };
        match &self.code {
            Some(code) => write!(f, "{what} ({code})"),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

fn to_shard_info(shard: aws_sdk_kinesis::types::Shard) -> ShardInfo {
    let closed = shard.sequence_number_range.as_ref().is_some_and(|r| r.ending_sequence_number.is_some());
    ShardInfo {
        shard_id: shard.shard_id,
        parent_shard_id: shard.parent_shard_id,
        adjacent_parent_shard_id: shard.adjacent_parent_shard_id,
        closed,
    }
}

fn to_raw_record(r: aws_sdk_kinesis::types::Record) -> RawRecord {
    RawRecord {
        sequence_number: r.sequence_number,
        partition_key: r.partition_key.unwrap_or_default(),
        data: Bytes::from(r.data.into_inner()),
        approximate_arrival_timestamp: r.approximate_arrival_timestamp.and_then(|t| t.try_into().ok()),
    }
}

fn to_child_shards(children: Option<Vec<aws_sdk_kinesis::types::ChildShard>>) -> Vec<ShardInfo> {
    children
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let mut parents = c.parent_shards.into_iter();
            ShardInfo {
                shard_id: c.shard_id,
                parent_shard_id: parents.next(),
                adjacent_parent_shard_id: parents.next(),
                closed: false,
            }
        })
        .collect()
}

fn to_stream_consumer(
    name: String,
    arn: String,
    status: &aws_sdk_kinesis::types::ConsumerStatus,
) -> Result<StreamConsumer, ApiError> {
    use aws_sdk_kinesis::types::ConsumerStatus as S;
    let status = match status {
        S::Active => ConsumerStatus::Active,
        S::Creating => ConsumerStatus::Creating,
        S::Deleting => ConsumerStatus::Deleting,
        other => {
            return Err(ApiError::new(
                ApiErrorKind::Permanent,
                Some(format!("unknown stream consumer status {:?}", other.as_str())),
            ))
        }
    };
    Ok(StreamConsumer { name, arn, status })
}

fn to_sdk_position(position: &StartingPosition) -> Result<aws_sdk_kinesis::types::StartingPosition, ApiError> {
    let builder = aws_sdk_kinesis::types::StartingPosition::builder();
    let builder = match position {
        StartingPosition::TrimHorizon => builder.r#type(ShardIteratorType::TrimHorizon),
        StartingPosition::Latest => builder.r#type(ShardIteratorType::Latest),
        StartingPosition::AtTimestamp(t) => {
            builder.r#type(ShardIteratorType::AtTimestamp).timestamp(aws_sdk_kinesis::primitives::DateTime::from(*t))
        }
        StartingPosition::AtSequenceNumber(s) => {
            builder.r#type(ShardIteratorType::AtSequenceNumber).sequence_number(s.as_str())
        }
        StartingPosition::AfterSequenceNumber(s) => {
            builder.r#type(ShardIteratorType::AfterSequenceNumber).sequence_number(s.as_str())
        }
    };
    builder.build().map_err(|e| ApiError::with_source(ApiErrorKind::Permanent, None, e))
}

/// A subscription of the AWS SDK: events are decoded from the HTTP response body one at a time, as they are asked
/// for.
struct SdkSubscription {
    out: aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput,
}

#[async_trait]
impl ShardSubscription for SdkSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, ApiError> {
        use aws_sdk_kinesis::types::SubscribeToShardEventStream as Ev;
        loop {
            let event = match self.out.event_stream.recv().await {
                Ok(Some(Ev::SubscribeToShardEvent(e))) => e,
                // An event type newer than this SDK: not records, skip it.
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(None),
                Err(e) => return Err(event_stream_error(e)),
            };
            let continuation = Some(event.continuation_sequence_number).filter(|c| !c.is_empty());
            return Ok(Some(SubscribeEvent {
                records: event.records.into_iter().map(to_raw_record).collect(),
                continuation_sequence_number: continuation,
                millis_behind_latest: Some(event.millis_behind_latest),
                child_shards: to_child_shards(event.child_shards),
            }));
        }
    }
}

/// Classifies a failure of an open subscription: an error event by its code, a broken connection as transient.
fn event_stream_error<E, R>(err: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().map(str::to_owned);
            let kind = code.as_deref().map_or(ApiErrorKind::Transient, classify_code);
            ApiError::with_source(kind, code, err)
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ApiError::with_source(ApiErrorKind::Transient, None, err)
        }
        _ => ApiError::with_source(ApiErrorKind::Permanent, None, err),
    }
}

#[async_trait]
impl KinesisApi for aws_sdk_kinesis::Client {
    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError> {
        // ListShards takes either the stream or a next token (which names the stream), never both; the KCL sends a
        // stream ARN on the first page only too.
        let request = match next_token {
            Some(token) => self.list_shards().next_token(token),
            None if is_arn(stream) => self.list_shards().stream_arn(stream),
            None => self.list_shards().stream_name(stream),
        };
        let out = request.send().await.map_err(ApiError::from_sdk)?;
        Ok(ShardPage {
            shards: out.shards.unwrap_or_default().into_iter().map(to_shard_info).collect(),
            next_token: out.next_token,
        })
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, ApiError> {
        let request = self.get_shard_iterator().shard_id(shard_id);
        let request = if is_arn(stream) { request.stream_arn(stream) } else { request.stream_name(stream) };
        let request = match position {
            StartingPosition::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartingPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            StartingPosition::AtTimestamp(t) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from(*t)),
            StartingPosition::AtSequenceNumber(s) => {
                request.shard_iterator_type(ShardIteratorType::AtSequenceNumber).starting_sequence_number(s.as_str())
            }
            StartingPosition::AfterSequenceNumber(s) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(s.as_str())
            }
        };
        let out = request.send().await.map_err(ApiError::from_sdk)?;
        out.shard_iterator.ok_or_else(|| {
            ApiError::new(ApiErrorKind::Transient, Some("GetShardIterator returned no iterator".to_owned()))
        })
    }

    async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<RecordBatch, ApiError> {
        let out = self.get_records().shard_iterator(shard_iterator).limit(limit).send().await;
        let out = out.map_err(ApiError::from_sdk)?;
        let records = out.records.into_iter().map(to_raw_record).collect();
        let child_shards = to_child_shards(out.child_shards);
        Ok(RecordBatch {
            records,
            next_shard_iterator: out.next_shard_iterator,
            millis_behind_latest: out.millis_behind_latest,
            child_shards,
        })
    }

    async fn put_record(&self, stream: &str, partition_key: &str, data: Bytes) -> Result<String, ApiError> {
        let request = self.put_record();
        let request = if is_arn(stream) { request.stream_arn(stream) } else { request.stream_name(stream) };
        let out = request
            .partition_key(partition_key)
            .data(aws_sdk_kinesis::primitives::Blob::new(data))
            .send()
            .await
            .map_err(ApiError::from_sdk)?;
        Ok(out.sequence_number)
    }

    async fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary, ApiError> {
        let request = self.describe_stream_summary();
        let request = if is_arn(stream) { request.stream_arn(stream) } else { request.stream_name(stream) };
        let out = request.send().await.map_err(ApiError::from_sdk)?;
        let summary = out.stream_description_summary.ok_or_else(|| {
            ApiError::new(ApiErrorKind::Transient, Some("DescribeStreamSummary returned no description".to_owned()))
        })?;
        let created = u64::try_from(summary.stream_creation_timestamp.to_millis().unwrap_or(-1)).ok();
        Ok(StreamSummary::new(summary.stream_arn, created))
    }

    async fn register_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, ApiError> {
        let out = self
            .register_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(ApiError::from_sdk)?;
        let c = out.consumer.ok_or_else(|| {
            ApiError::new(ApiErrorKind::Transient, Some("RegisterStreamConsumer returned no consumer".to_owned()))
        })?;
        to_stream_consumer(c.consumer_name, c.consumer_arn, &c.consumer_status)
    }

    async fn describe_stream_consumer(&self, consumer: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError> {
        let request = match consumer {
            ConsumerLookup::Name { stream_arn, name } => {
                self.describe_stream_consumer().stream_arn(stream_arn).consumer_name(name)
            }
            ConsumerLookup::Arn(arn) => self.describe_stream_consumer().consumer_arn(arn),
        };
        let out = request.send().await.map_err(ApiError::from_sdk)?;
        let c = out.consumer_description.ok_or_else(|| {
            ApiError::new(ApiErrorKind::Transient, Some("DescribeStreamConsumer returned no description".to_owned()))
        })?;
        to_stream_consumer(c.consumer_name, c.consumer_arn, &c.consumer_status)
    }

    async fn deregister_stream_consumer(&self, consumer_arn: &str) -> Result<(), ApiError> {
        self.deregister_stream_consumer().consumer_arn(consumer_arn).send().await.map_err(ApiError::from_sdk)?;
        Ok(())
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn ShardSubscription>, ApiError> {
        let out = self
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(to_sdk_position(position)?)
            .send()
            .await
            .map_err(ApiError::from_sdk)?;
        Ok(Box::new(SdkSubscription { out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_classified() {
        let cases = [
            ("ExpiredIteratorException", ApiErrorKind::ExpiredIterator),
            ("ProvisionedThroughputExceededException", ApiErrorKind::Throttled),
            ("LimitExceededException", ApiErrorKind::Throttled),
            ("KMSThrottlingException", ApiErrorKind::Throttled),
            ("InternalFailure", ApiErrorKind::Transient),
            ("ServiceUnavailable", ApiErrorKind::Transient),
            ("ResourceNotFoundException", ApiErrorKind::NotFound),
            ("ResourceInUseException", ApiErrorKind::ResourceInUse),
            ("AccessDeniedException", ApiErrorKind::Permanent),
            ("InvalidArgumentException", ApiErrorKind::Permanent),
            ("KMSDisabledException", ApiErrorKind::Permanent),
            ("SomethingNew", ApiErrorKind::Permanent),
        ];
        for (code, kind) in cases {
            assert_eq!(classify_code(code), kind, "{code}");
        }
    }

    /// A GetShardIterator service error with `code` and `message`, as the SDK gives it.
    fn service_error(code: &str, message: &str) -> ApiError {
        use aws_sdk_kinesis::error::ErrorMetadata;
        use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
        use aws_smithy_types::body::SdkBody;
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        let err = GetShardIteratorError::generic(meta);
        let status =
            aws_sdk_kinesis::config::http::HttpResponse::new(400u16.try_into().expect("status"), SdkBody::empty());
        ApiError::from_sdk(SdkError::service_error(err, status))
    }

    #[test]
    fn a_starting_sequence_number_past_the_retention_is_told_apart() {
        let cases = [
            ("InvalidArgumentException", "StartingSequenceNumber 4959... is no longer available", true),
            ("InvalidArgumentException", "The starting sequence number is past the trim horizon", true),
            ("InvalidArgumentException", "Invalid ShardId: shardId-1", false),
            ("ResourceNotFoundException", "StartingSequenceNumber of a shard that does not exist", false),
        ];
        for (code, message, past) in cases {
            let kind = service_error(code, message).kind();
            assert_eq!(kind == ApiErrorKind::SequenceNotAvailable, past, "{code}: {message}: {kind:?}");
            assert!(!ApiError::new(kind, None).is_retryable());
        }
    }

    #[test]
    fn retryable_kinds() {
        let retryable = |kind| ApiError::new(kind, None).is_retryable();
        assert!(retryable(ApiErrorKind::Throttled));
        assert!(retryable(ApiErrorKind::Transient));
        assert!(!retryable(ApiErrorKind::ExpiredIterator));
        assert!(!retryable(ApiErrorKind::NotFound));
        assert!(!retryable(ApiErrorKind::ResourceInUse));
        assert!(!retryable(ApiErrorKind::Permanent));
    }
}
