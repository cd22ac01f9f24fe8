//! An in-process fake of the Kinesis calls the consumer makes, for fast deterministic tests (feature `test-util`).
//!
//! It keeps streams, shards and records in memory; supports splits and merges (parents closed, children listed with
//! their parent ids, `ChildShards` in the last GetRecords of a parent unless turned off), and injected faults:
//! errors of a given kind for the next calls of an operation, and expiry of every outstanding iterator. The API calls
//! find a stream by its name or by its ARN ([`FakeKinesis::stream_arn`]); the helpers of the tests take names.
//!
//! Enhanced fan-out is faked too: stream consumers (CREATING for [`FakeKinesis::consumer_activation`], then ACTIVE)
//! and SubscribeToShard subscriptions that push the shard's records in events of at most
//! [`FakeKinesis::event_limit`] records (an empty event after 1 s without records), each with its continuation
//! sequence number, `ChildShards` and no continuation in the last event of a closed shard. A subscription ends
//! after [`FakeKinesis::subscription_duration`] (5 minutes, as on AWS), [`FakeKinesis::drop_subscriptions`] breaks
//! every open one, and a new subscription of the same consumer and shard within 5 s of the previous one fails with
//! ResourceInUseException, as on AWS. Events are made when asked for, so reading slowly never buffers.
//! It is not a substitute for the integration tests against kinesalite.
//!
//! ```
//! use kc_core::fake::FakeKinesis;
//! let fake = FakeKinesis::new();
//! fake.create_stream("s", 2);
//! fake.put("s", "key", "hello");
//! assert_eq!(fake.shard_ids("s").len(), 2);
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

use tokio::time::Instant;

use crate::api::{
    ApiError, ApiErrorKind, ConsumerLookup, ConsumerStatus, KinesisApi, RawRecord, RecordBatch, ShardInfo, ShardPage,
    ShardSubscription, StartingPosition, StreamConsumer, StreamSummary, SubscribeEvent,
};

/// A Kinesis operation, for fault injection and call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// ListShards.
    ListShards,
    /// GetShardIterator.
    GetShardIterator,
    /// GetRecords.
    GetRecords,
    /// DescribeStreamSummary (the stream's ARN and creation time, once per stream at the start of its scan).
    DescribeStreamSummary,
    /// RegisterStreamConsumer.
    RegisterStreamConsumer,
    /// DescribeStreamConsumer.
    DescribeStreamConsumer,
    /// DeregisterStreamConsumer.
    DeregisterStreamConsumer,
    /// SubscribeToShard.
    SubscribeToShard,
    /// Taking the next event of a subscription (a fault here breaks the subscription, like a dropped connection).
    SubscribeEvent,
    /// PutRecord (the Kinesis dead-letter destination's call).
    PutRecord,
}

#[derive(Debug)]
struct FakeConsumer {
    name: String,
    stream: String,
    active_at: Instant,
}

#[derive(Debug)]
struct Shard {
    info: ShardInfo,
    /// The partition-key hashes this shard takes (inclusive), as Kinesis' hash key ranges.
    range: (u64, u64),
    records: Vec<RawRecord>,
    /// How many of the first records are past the retention: no longer read, and their sequence numbers no longer
    /// accepted as a starting position.
    trimmed: usize,
    children: Vec<String>,
}

#[derive(Debug, Default)]
struct Stream {
    shards: Vec<Shard>,
    /// When it was created (ms since the Unix epoch; each creation later than the one before).
    created_ms: u64,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Stream>,
    next_sequence: u64,
    next_shard: u64,
    /// The creation time of the last stream created.
    last_created_ms: u64,
    iterator_generation: u64,
    faults: HashMap<Op, VecDeque<ApiErrorKind>>,
    calls: HashMap<Op, usize>,
    hide_child_shards: bool,
    list_page_size: Option<usize>,
    /// Fan-out consumers by ARN.
    consumers: HashMap<String, FakeConsumer>,
    next_consumer: u64,
    consumer_activation: Option<Duration>,
    subscription_duration: Option<Duration>,
    event_limit: Option<usize>,
    /// When each (consumer ARN, shard) was last subscribed.
    subscribed: HashMap<(String, String), Instant>,
    /// Like kinesis-mock: subscriptions of closed shards never report their end.
    hide_subscription_end: bool,
    /// Every successful SubscribeToShard: (shard, position).
    subscriptions: Vec<(String, StartingPosition)>,
    drop_generation: u64,
    stall_generation: u64,
    /// How long ListShards, GetShardIterator and GetRecords take to answer.
    latency: Duration,
    /// Those calls being answered now, and the most at once so far.
    in_flight: usize,
    max_in_flight: usize,
    /// Every `n`th call of an operation fails with this kind.
    fail_every: HashMap<Op, (usize, ApiErrorKind)>,
}

const STREAM_ARN_PREFIX: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/";

/// The name of the stream the API calls were given: a name as it is, an ARN of the fake's account and region by its
/// last part (any other ARN names no stream of the fake).
fn stream_name(stream: &str) -> &str {
    stream.strip_prefix(STREAM_ARN_PREFIX).unwrap_or(stream)
}

/// The fake. Clones share state: keep one to put records and inject faults while a consumer reads another.
#[derive(Clone, Debug, Default)]
pub struct FakeKinesis {
    state: Arc<Mutex<State>>,
}

fn parse_iterator(it: &str) -> Option<(String, String, usize, u64)> {
    let mut parts = it.split('|');
    let stream = parts.next()?.to_owned();
    let shard = parts.next()?.to_owned();
    let pos = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    Some((stream, shard, pos, generation))
}

impl FakeKinesis {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ARN of the stream `name` (`arn:aws:kinesis:us-east-1:000000000000:stream/{name}`): the API calls take a
    /// stream by its name or by this ARN, and DescribeStreamSummary answers it.
    pub fn stream_arn(name: &str) -> String {
        format!("{STREAM_ARN_PREFIX}{name}")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates `stream` with `shards` open shards (`shardId-000000000000`, ...; numbered on from the shards of the
    /// streams created before). Replaces an existing one.
    pub fn create_stream(&self, stream: &str, shards: usize) {
        let mut st = self.lock();
        Self::create_locked(&mut st, stream, shards);
    }

    /// Deletes `stream` and creates it again with `shards` open shards numbered from `shardId-000000000000`, as
    /// Kinesis numbers a new stream's shards, and a later creation time: the checkpoints of the old stream name the
    /// same shard ids.
    pub fn recreate_stream(&self, stream: &str, shards: usize) {
        let mut st = self.lock();
        st.streams.remove(stream);
        let next = st.next_shard;
        st.next_shard = 0;
        Self::create_locked(&mut st, stream, shards);
        st.next_shard = next.max(st.next_shard);
    }

    fn create_locked(st: &mut State, stream: &str, shards: usize) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let created_ms = now.max(st.last_created_ms + 1);
        st.last_created_ms = created_ms;
        let n = shards.max(1) as u64;
        let width = u64::MAX / n;
        let shards = (0..n)
            .map(|i| {
                let id = format!("shardId-{:012}", st.next_shard);
                st.next_shard += 1;
                let end = if i == n - 1 { u64::MAX } else { (i + 1) * width - 1 };
                Shard {
                    info: ShardInfo::new(id),
                    range: (i * width, end),
                    records: Vec::new(),
                    trimmed: 0,
                    children: Vec::new(),
                }
            })
            .collect();
        st.streams.insert(stream.to_owned(), Stream { shards, created_ms });
    }

    /// Deletes `stream`: later calls on it fail with ResourceNotFoundException.
    pub fn delete_stream(&self, stream: &str) {
        self.lock().streams.remove(stream);
    }

    /// Removes `shard_id` from `stream`, as Kinesis does with a closed shard once its records are past the
    /// retention period: ListShards no longer lists it (its children still name it as their parent), and its calls
    /// (GetShardIterator, GetRecords, SubscribeToShard) answer ResourceNotFoundException.
    pub fn trim_shard(&self, stream: &str, shard_id: &str) {
        if let Some(s) = self.lock().streams.get_mut(stream) {
            s.shards.retain(|s| s.info.shard_id != shard_id);
        }
    }

    /// Makes the first `n` records of `shard_id` pass the retention: they are no longer read (TRIM_HORIZON starts
    /// after them, iterators skip them) and a starting position at their sequence numbers is refused as Kinesis does.
    pub fn trim_records(&self, stream: &str, shard_id: &str, n: usize) {
        let mut st = self.lock();
        let shard = st.streams.get_mut(stream).and_then(|s| s.shards.iter_mut().find(|s| s.info.shard_id == shard_id));
        if let Some(shard) = shard {
            shard.trimmed = shard.trimmed.max(n.min(shard.records.len()));
        }
    }

    /// Every shard id of `stream`, in creation order.
    pub fn shard_ids(&self, stream: &str) -> Vec<String> {
        self.lock()
            .streams
            .get(stream)
            .map(|s| s.shards.iter().map(|s| s.info.shard_id.clone()).collect())
            .unwrap_or_default()
    }

    /// The open shards of `stream`.
    pub fn open_shard_ids(&self, stream: &str) -> Vec<String> {
        self.lock()
            .streams
            .get(stream)
            .map(|s| s.shards.iter().filter(|s| !s.info.closed).map(|s| s.info.shard_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Puts a record on the open shard whose hash range holds the hash of `partition_key` (as Kinesis does, so a
    /// key's records move to a child of the shard they were on); returns the shard id and sequence number. Panics if
    /// the stream does not exist (a test's own mistake).
    pub fn put(&self, stream: &str, partition_key: &str, data: impl Into<Bytes>) -> (String, String) {
        // FNV-1a, then splitmix64's finalizer so that similar keys spread over the whole range.
        let mut hash = partition_key
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^= hash >> 31;
        let shard = {
            let st = self.lock();
            let shards = st.streams.get(stream).map(|s| s.shards.as_slice()).unwrap_or_default();
            let open = shards.iter().find(|s| !s.info.closed && s.range.0 <= hash && hash <= s.range.1);
            match open {
                Some(s) => s.info.shard_id.clone(),
                None => panic!("fake: stream {stream:?} does not exist or has no open shard for {partition_key:?}"),
            }
        };
        let seq = self.put_to_shard(stream, &shard, partition_key, data);
        (shard, seq)
    }

    /// Puts a record on `shard_id`; returns its sequence number.
    pub fn put_to_shard(&self, stream: &str, shard_id: &str, partition_key: &str, data: impl Into<Bytes>) -> String {
        let mut st = self.lock();
        st.next_sequence += 1;
        // 56 digits like real sequence numbers (more than 128 bits), increasing.
        let sequence_number = format!("49{:054}", st.next_sequence);
        let shard = st
            .streams
            .get_mut(stream)
            .and_then(|s| s.shards.iter_mut().find(|s| s.info.shard_id == shard_id))
            .filter(|s| !s.info.closed);
        let Some(shard) = shard else {
            panic!("fake: no open shard {shard_id:?} in stream {stream:?}");
        };
        shard.records.push(RawRecord {
            sequence_number: sequence_number.clone(),
            partition_key: partition_key.to_owned(),
            data: data.into(),
            approximate_arrival_timestamp: Some(SystemTime::now()),
        });
        sequence_number
    }

    fn add_shard(st: &mut State, stream: &str, parents: [Option<String>; 2], range: (u64, u64)) -> String {
        let id = format!("shardId-{:012}", st.next_shard);
        st.next_shard += 1;
        let [parent, adjacent] = parents;
        let info = ShardInfo {
            shard_id: id.clone(),
            parent_shard_id: parent.clone(),
            adjacent_parent_shard_id: adjacent.clone(),
            closed: false,
        };
        if let Some(s) = st.streams.get_mut(stream) {
            for p in s
                .shards
                .iter_mut()
                .filter(|s| Some(&s.info.shard_id) == parent.as_ref() || Some(&s.info.shard_id) == adjacent.as_ref())
            {
                p.info.closed = true;
                p.children.push(id.clone());
            }
            s.shards.push(Shard { info, range, records: Vec::new(), trimmed: 0, children: Vec::new() });
        }
        id
    }

    /// Splits `shard_id` into two children (the parent is closed); returns the children's ids.
    pub fn split_shard(&self, stream: &str, shard_id: &str) -> (String, String) {
        let mut st = self.lock();
        let (lo, hi) = self.range_of(&st, stream, shard_id);
        let mid = lo + (hi - lo) / 2;
        let a = Self::add_shard(&mut st, stream, [Some(shard_id.to_owned()), None], (lo, mid));
        let b = Self::add_shard(&mut st, stream, [Some(shard_id.to_owned()), None], (mid + 1, hi));
        (a, b)
    }

    /// Merges `shard_id` and `adjacent_shard_id` into one child (both are closed); returns its id.
    pub fn merge_shards(&self, stream: &str, shard_id: &str, adjacent_shard_id: &str) -> String {
        let mut st = self.lock();
        let a = self.range_of(&st, stream, shard_id);
        let b = self.range_of(&st, stream, adjacent_shard_id);
        assert!(a.1.checked_add(1) == Some(b.0) || b.1.checked_add(1) == Some(a.0), "fake: shards are not adjacent");
        let range = (a.0.min(b.0), a.1.max(b.1));
        Self::add_shard(&mut st, stream, [Some(shard_id.to_owned()), Some(adjacent_shard_id.to_owned())], range)
    }

    fn range_of(&self, st: &State, stream: &str, shard_id: &str) -> (u64, u64) {
        let shard = st.streams.get(stream).and_then(|s| s.shards.iter().find(|s| s.info.shard_id == shard_id));
        match shard {
            Some(s) if !s.info.closed => s.range,
            _ => panic!("fake: no open shard {shard_id:?} in stream {stream:?}"),
        }
    }

    /// Makes the next `times` calls of `op` fail with an error of `kind`.
    pub fn inject(&self, op: Op, kind: ApiErrorKind, times: usize) {
        let mut st = self.lock();
        st.faults.entry(op).or_default().extend(std::iter::repeat_n(kind, times));
    }

    /// Expires every shard iterator handed out so far (GetRecords with one fails with ExpiredIteratorException).
    pub fn expire_iterators(&self) {
        self.lock().iterator_generation += 1;
    }

    /// Like kinesalite: no ChildShards in GetRecords (children are found by listing only).
    pub fn hide_child_shards(&self, hide: bool) {
        self.lock().hide_child_shards = hide;
    }

    /// ListShards returns at most `n` shards per page, with a NextToken.
    pub fn list_page_size(&self, n: usize) {
        self.lock().list_page_size = Some(n.max(1));
    }

    /// How long a registered fan-out consumer stays CREATING. Default: 2 s.
    pub fn consumer_activation(&self, d: Duration) {
        self.lock().consumer_activation = Some(d);
    }

    /// How long a subscription lasts before it ends normally. Default: 5 minutes, as on AWS.
    pub fn subscription_duration(&self, d: Duration) {
        self.lock().subscription_duration = Some(d);
    }

    /// The most records one subscription event carries. Default: 100.
    pub fn event_limit(&self, n: usize) {
        self.lock().event_limit = Some(n.max(1));
    }

    /// Like kinesis-mock: the subscription of a closed shard never reports its end (no ChildShards, always a
    /// continuation); events stay empty once every record was pushed.
    pub fn hide_subscription_end(&self, hide: bool) {
        self.lock().hide_subscription_end = hide;
    }

    /// Stalls every open subscription: it never sends another event (a connection that hangs without closing).
    /// Later subscriptions are not affected.
    pub fn stall_subscriptions(&self) {
        self.lock().stall_generation += 1;
    }

    /// Breaks every open subscription: its next event is an error, as when the connection drops.
    pub fn drop_subscriptions(&self) {
        self.lock().drop_generation += 1;
    }

    /// Every successful SubscribeToShard so far, in order: the shard and the starting position.
    pub fn subscriptions(&self) -> Vec<(String, StartingPosition)> {
        self.lock().subscriptions.clone()
    }

    /// The names of the registered fan-out consumers of `stream`.
    pub fn consumers(&self, stream: &str) -> Vec<String> {
        let mut names: Vec<String> =
            self.lock().consumers.values().filter(|c| c.stream == stream).map(|c| c.name.clone()).collect();
        names.sort();
        names
    }

    /// Registers the fan-out consumer `name` on `stream`, ACTIVE at once; returns its ARN.
    pub fn register_consumer(&self, stream: &str, name: &str) -> String {
        let mut st = self.lock();
        Self::add_consumer(&mut st, stream, name, Duration::ZERO)
    }

    fn add_consumer(st: &mut State, stream: &str, name: &str, activation: Duration) -> String {
        st.next_consumer += 1;
        let arn = format!("{}/consumer/{name}:{}", Self::stream_arn(stream), st.next_consumer);
        let consumer =
            FakeConsumer { name: name.to_owned(), stream: stream.to_owned(), active_at: Instant::now() + activation };
        st.consumers.insert(arn.clone(), consumer);
        arn
    }

    /// ListShards, GetShardIterator and GetRecords take `d` (on Tokio's clock) to answer, so that calls overlap and
    /// [`max_in_flight`](Self::max_in_flight) means something. Default: no time at all.
    pub fn latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// The most ListShards, GetShardIterator and GetRecords calls that were being answered at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Every `n`th call of `op` (counting all of them, from the first) fails with an error of `kind`: a fault rate of
    /// 1/`n`, deterministic. `n` = 0 turns it off.
    pub fn fail_every(&self, op: Op, kind: ApiErrorKind, n: usize) {
        let mut st = self.lock();
        if n == 0 {
            st.fail_every.remove(&op);
        } else {
            st.fail_every.insert(op, (n, kind));
        }
    }

    /// Counts a call in flight for the latency, until the guard is dropped.
    async fn fly(&self) -> Flight {
        let latency = {
            let mut st = self.lock();
            st.in_flight += 1;
            st.max_in_flight = st.max_in_flight.max(st.in_flight);
            st.latency
        };
        let flight = Flight(self.clone());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        flight
    }

    /// How many calls of `op` were made (failed ones included).
    pub fn calls(&self, op: Op) -> usize {
        self.lock().calls.get(&op).copied().unwrap_or(0)
    }

    fn begin(&self, op: Op) -> Result<MutexGuard<'_, State>, ApiError> {
        let mut st = self.lock();
        let count = {
            let calls = st.calls.entry(op).or_default();
            *calls += 1;
            *calls
        };
        if let Some(kind) = st.faults.get_mut(&op).and_then(VecDeque::pop_front) {
            return Err(ApiError::new(kind, Some(format!("injected {kind:?}"))));
        }
        if let Some(&(n, kind)) = st.fail_every.get(&op) {
            if count % n == 0 {
                return Err(ApiError::new(kind, Some(format!("injected {kind:?} (1 call in {n})"))));
            }
        }
        Ok(st)
    }
}

/// A call in flight (see [`FakeKinesis::fly`]).
struct Flight(FakeKinesis);

impl Drop for Flight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

/// The index of the first record at `position` in `shard`, past its trimmed records; a sequence number of a trimmed
/// record is refused as Kinesis does (InvalidArgumentException about the StartingSequenceNumber).
fn start_of(shard: &Shard, position: &StartingPosition) -> Result<usize, ApiError> {
    let (StartingPosition::AtSequenceNumber(s) | StartingPosition::AfterSequenceNumber(s)) = position else {
        return Ok(start_index(&shard.records, position).max(shard.trimmed));
    };
    let at = start_index(&shard.records, &StartingPosition::AtSequenceNumber(s.clone()));
    if at < shard.trimmed {
        return Err(ApiError::with_source(
            ApiErrorKind::SequenceNotAvailable,
            Some("InvalidArgumentException".to_owned()),
            format!("StartingSequenceNumber {s} used in GetShardIterator is no longer available (past the retention)"),
        ));
    }
    Ok(start_index(&shard.records, position))
}

/// The index of the first record at `position`.
fn start_index(records: &[RawRecord], position: &StartingPosition) -> usize {
    let seq_of = |r: &RawRecord| kc_checkpoint::SequenceNumber::parse(r.sequence_number.clone()).ok();
    match position {
        StartingPosition::TrimHorizon => 0,
        StartingPosition::Latest => records.len(),
        StartingPosition::AtTimestamp(t) => records
            .iter()
            .position(|r| r.approximate_arrival_timestamp.is_some_and(|a| a >= *t))
            .unwrap_or(records.len()),
        StartingPosition::AtSequenceNumber(s) => {
            records.iter().position(|r| seq_of(r).is_some_and(|q| q >= *s)).unwrap_or(records.len())
        }
        StartingPosition::AfterSequenceNumber(s) => {
            records.iter().position(|r| seq_of(r).is_some_and(|q| q > *s)).unwrap_or(records.len())
        }
    }
}

fn in_use(what: String) -> ApiError {
    ApiError::with_source(ApiErrorKind::ResourceInUse, Some("ResourceInUseException".to_owned()), what)
}

fn consumer_of(arn: &str, c: &FakeConsumer) -> StreamConsumer {
    let status = if Instant::now() >= c.active_at { ConsumerStatus::Active } else { ConsumerStatus::Creating };
    StreamConsumer { name: c.name.clone(), arn: arn.to_owned(), status }
}

/// A fake subscription: reads the shard from `pos` as events are asked for.
struct FakeSubscription {
    fake: FakeKinesis,
    stream: String,
    shard_id: String,
    pos: usize,
    ends_at: Instant,
    generation: u64,
    stall_generation: u64,
    ended: bool,
}

#[async_trait]
impl ShardSubscription for FakeSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, ApiError> {
        drop(self.fake.begin(Op::SubscribeEvent)?);
        if self.ended {
            return Ok(None);
        }
        let waiting_since = Instant::now();
        loop {
            let stalled = self.fake.lock().stall_generation > self.stall_generation;
            if stalled {
                // Hangs without closing.
                std::future::pending::<()>().await;
            }
            {
                let st = self.fake.lock();
                if st.drop_generation > self.generation {
                    return Err(ApiError::new(ApiErrorKind::Transient, Some("connection reset (fake)".to_owned())));
                }
                if Instant::now() >= self.ends_at {
                    return Ok(None);
                }
                let s = st.streams.get(&self.stream).ok_or_else(|| not_found(format!("stream {}", self.stream)))?;
                let shard = s
                    .shards
                    .iter()
                    .find(|s| s.info.shard_id == self.shard_id)
                    .ok_or_else(|| not_found(format!("shard {}", self.shard_id)))?;
                let len = shard.records.len();
                self.pos = self.pos.max(shard.trimmed);
                let at_end = shard.info.closed && self.pos >= len && !st.hide_subscription_end;
                if self.pos < len || at_end || waiting_since.elapsed() >= Duration::from_secs(1) {
                    let end = (self.pos + st.event_limit.unwrap_or(100)).min(len);
                    let records = shard.records.get(self.pos..end).map(<[RawRecord]>::to_vec).unwrap_or_default();
                    self.pos = end;
                    let last = shard.info.closed && end == len && !st.hide_subscription_end;
                    let continuation = if last {
                        None
                    } else {
                        Some(match end.checked_sub(1).and_then(|i| shard.records.get(i)) {
                            Some(r) => r.sequence_number.clone(),
                            None => "0".to_owned(),
                        })
                    };
                    let child_shards = if last && !st.hide_child_shards {
                        s.shards
                            .iter()
                            .filter(|c| shard.children.contains(&c.info.shard_id))
                            .map(|c| c.info.clone())
                            .collect()
                    } else {
                        Vec::new()
                    };
                    self.ended = last;
                    return Ok(Some(SubscribeEvent {
                        records,
                        continuation_sequence_number: continuation,
                        millis_behind_latest: Some(if end < len { 1_000 } else { 0 }),
                        child_shards,
                    }));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn not_found(what: String) -> ApiError {
    ApiError::with_source(ApiErrorKind::NotFound, Some("ResourceNotFoundException".to_owned()), what)
}

#[async_trait]
impl KinesisApi for FakeKinesis {
    async fn put_record(&self, stream: &str, partition_key: &str, data: Bytes) -> Result<String, ApiError> {
        let stream = stream_name(stream);
        {
            let st = self.begin(Op::PutRecord)?;
            if !st.streams.contains_key(stream) {
                return Err(not_found(format!("stream {stream}")));
            }
        }
        Ok(self.put(stream, partition_key, data).1)
    }

    async fn list_shards(&self, stream: &str, next_token: Option<&str>) -> Result<ShardPage, ApiError> {
        let _flight = self.fly().await;
        let st = self.begin(Op::ListShards)?;
        let (stream, start) = match next_token {
            Some(token) => {
                let (s, i) = token.rsplit_once('|').ok_or_else(|| not_found(format!("bad token {token}")))?;
                (s.to_owned(), i.parse::<usize>().map_err(|_| not_found(format!("bad token {token}")))?)
            }
            None => (stream_name(stream).to_owned(), 0),
        };
        let s = st.streams.get(&stream).ok_or_else(|| not_found(format!("stream {stream}")))?;
        let page = st.list_page_size.unwrap_or(usize::MAX);
        let shards: Vec<ShardInfo> = s.shards.iter().skip(start).take(page).map(|s| s.info.clone()).collect();
        let end = start + shards.len();
        let next_token = (end < s.shards.len()).then(|| format!("{stream}|{end}"));
        Ok(ShardPage { shards, next_token })
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, ApiError> {
        let _flight = self.fly().await;
        let st = self.begin(Op::GetShardIterator)?;
        let stream = stream_name(stream);
        let shard = st
            .streams
            .get(stream)
            .and_then(|s| s.shards.iter().find(|s| s.info.shard_id == shard_id))
            .ok_or_else(|| not_found(format!("shard {shard_id} of stream {stream}")))?;
        let pos = start_of(shard, position)?;
        Ok(format!("{stream}|{shard_id}|{pos}|{}", st.iterator_generation))
    }

    async fn get_records(&self, shard_iterator: &str, limit: i32) -> Result<RecordBatch, ApiError> {
        let _flight = self.fly().await;
        let st = self.begin(Op::GetRecords)?;
        let (stream, shard_id, pos, generation) = parse_iterator(shard_iterator)
            .ok_or_else(|| ApiError::new(ApiErrorKind::Permanent, Some("InvalidArgumentException".to_owned())))?;
        if generation < st.iterator_generation {
            return Err(ApiError::new(ApiErrorKind::ExpiredIterator, Some("ExpiredIteratorException".to_owned())));
        }
        let s = st.streams.get(&stream).ok_or_else(|| not_found(format!("stream {stream}")))?;
        let shard = s
            .shards
            .iter()
            .find(|s| s.info.shard_id == shard_id)
            .ok_or_else(|| not_found(format!("shard {shard_id}")))?;
        let limit = usize::try_from(limit.clamp(1, 10_000)).unwrap_or(1);
        let pos = pos.max(shard.trimmed);
        let end = (pos + limit).min(shard.records.len());
        let records = shard.records.get(pos..end).map(<[RawRecord]>::to_vec).unwrap_or_default();
        let remaining = shard.records.len() - end;
        let at_end = shard.info.closed && remaining == 0;
        let next_shard_iterator = (!at_end).then(|| format!("{stream}|{shard_id}|{end}|{generation}"));
        let child_shards = if at_end && !st.hide_child_shards {
            s.shards.iter().filter(|c| shard.children.contains(&c.info.shard_id)).map(|c| c.info.clone()).collect()
        } else {
            Vec::new()
        };
        Ok(RecordBatch {
            records,
            next_shard_iterator,
            millis_behind_latest: Some(if remaining > 0 { 1_000 } else { 0 }),
            child_shards,
        })
    }

    async fn describe_stream_summary(&self, stream: &str) -> Result<StreamSummary, ApiError> {
        let st = self.begin(Op::DescribeStreamSummary)?;
        let name = stream_name(stream);
        match st.streams.get(name) {
            Some(s) => Ok(StreamSummary::new(Self::stream_arn(name), Some(s.created_ms))),
            None => Err(not_found(format!("stream {stream}"))),
        }
    }

    async fn register_stream_consumer(&self, stream_arn: &str, name: &str) -> Result<StreamConsumer, ApiError> {
        let mut st = self.begin(Op::RegisterStreamConsumer)?;
        let stream = stream_arn.strip_prefix(STREAM_ARN_PREFIX).unwrap_or_default().to_owned();
        if !st.streams.contains_key(&stream) {
            return Err(not_found(format!("stream {stream_arn}")));
        }
        if st.consumers.values().any(|c| c.stream == stream && c.name == name) {
            return Err(in_use(format!("consumer {name} exists")));
        }
        let activation = st.consumer_activation.unwrap_or(Duration::from_secs(2));
        let arn = Self::add_consumer(&mut st, &stream, name, activation);
        let c = st.consumers.get(&arn).map(|c| consumer_of(&arn, c));
        c.ok_or_else(|| not_found(arn))
    }

    async fn describe_stream_consumer(&self, consumer: ConsumerLookup<'_>) -> Result<StreamConsumer, ApiError> {
        let st = self.begin(Op::DescribeStreamConsumer)?;
        let found = match consumer {
            ConsumerLookup::Arn(arn) => st.consumers.get_key_value(arn),
            ConsumerLookup::Name { stream_arn, name } => {
                let stream = stream_arn.strip_prefix(STREAM_ARN_PREFIX).unwrap_or_default();
                st.consumers.iter().find(|(_, c)| c.stream == stream && c.name == name)
            }
        };
        found.map(|(arn, c)| consumer_of(arn, c)).ok_or_else(|| not_found(format!("consumer {consumer:?}")))
    }

    async fn deregister_stream_consumer(&self, consumer_arn: &str) -> Result<(), ApiError> {
        let mut st = self.begin(Op::DeregisterStreamConsumer)?;
        match st.consumers.remove(consumer_arn) {
            Some(_) => Ok(()),
            None => Err(not_found(format!("consumer {consumer_arn}"))),
        }
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Box<dyn ShardSubscription>, ApiError> {
        let mut st = self.begin(Op::SubscribeToShard)?;
        let consumer = st.consumers.get(consumer_arn).ok_or_else(|| not_found(format!("consumer {consumer_arn}")))?;
        if consumer_of(consumer_arn, consumer).status != ConsumerStatus::Active {
            return Err(in_use(format!("consumer {consumer_arn} is not active")));
        }
        let stream = consumer.stream.clone();
        let key = (consumer_arn.to_owned(), shard_id.to_owned());
        if st.subscribed.get(&key).is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return Err(in_use(format!("{shard_id} was subscribed less than 5 s ago")));
        }
        let shard = st
            .streams
            .get(&stream)
            .and_then(|s| s.shards.iter().find(|s| s.info.shard_id == shard_id))
            .ok_or_else(|| not_found(format!("shard {shard_id} of stream {stream}")))?;
        let pos = start_of(shard, position)?;
        st.subscribed.insert(key, Instant::now());
        st.subscriptions.push((shard_id.to_owned(), position.clone()));
        let duration = st.subscription_duration.unwrap_or(Duration::from_secs(300));
        Ok(Box::new(FakeSubscription {
            fake: self.clone(),
            stream,
            shard_id: shard_id.to_owned(),
            pos,
            ends_at: Instant::now() + duration,
            generation: st.drop_generation,
            stall_generation: st.stall_generation,
            ended: false,
        }))
    }
}
