//! [`Consumer`] and its builder (every setting with its default, validated by `build()`), and the scans a consumer
//! runs: alone (`scan`), or as a group's worker (`group`).

use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::{CheckpointStore, MemoryStore};
use tokio_util::sync::CancellationToken;

use crate::api::KinesisApi;
use crate::bounded::bounded_and_limited;
use crate::config::{Config, FanOutConfig, Group, GroupConfig, InitialPosition};
use crate::deliver::{Deliver, PerBatch, PerRecord};
use crate::error::Error;
use crate::failure::{FailurePolicy, HandlerTimeout};
use crate::handler::{BatchHandler, RecordHandler};
use crate::lifecycle::{Lifecycle, NoLifecycle, OnShardClosed};
use crate::limit::Limited;
use crate::reader::{ShardReader, Shared};
use crate::shard::StartHint;
use crate::tracker::{StreamTracker, Streams, TrackedStream};

/// Reads every shard of one Kinesis stream and hands each record to a handler. Build one with
/// [`Consumer::builder`].
///
/// See the [crate documentation](crate) for the guarantees.
#[derive(Clone)]
pub struct Consumer {
    pub(crate) cfg: Arc<Config>,
    pub(crate) api: Arc<dyn KinesisApi>,
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) lifecycle: Arc<dyn Lifecycle>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) group: Option<Arc<GroupConfig>>,
    pub(crate) failure: Arc<FailurePolicy>,
    /// The streams of a consumer of several (`cfg.stream` is then empty).
    pub(crate) streams: Option<Streams>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("config", &self.cfg).finish_non_exhaustive()
    }
}

impl Consumer {
    /// A builder for a consumer of `stream`: its name (a stream of the client's account and region), or its ARN (any
    /// stream the credentials may read, cross-account ones included; see [`StreamId`](crate::StreamId)). Records,
    /// metrics, logs and checkpoint keys name the stream as given here.
    pub fn builder(stream: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(stream.into())
    }

    /// A builder for a consumer of several streams, each read as [`builder`](Self::builder)'s one stream is, by one
    /// scan: names (`"orders"`) or ARNs (`"arn:aws:kinesis:eu-west-1:123456789012:stream/orders"`, cross-account
    /// streams), or [`TrackedStream`]s with an initial position of their own. Every setting of the
    /// builder applies to each stream; records tell their stream by [`Record::stream`](crate::Record::stream) (as
    /// given) and [`Record::stream_arn`](crate::Record::stream_arn).
    ///
    /// The streams share the consumer's Kinesis client and its
    /// [`max_calls_in_flight`](ConsumerBuilder::max_calls_in_flight), the checkpoint store (keyed by app, stream and
    /// shard, as for one stream: the checkpoints of a consumer of one stream are the same stream's checkpoints here)
    /// and the handler. The first error of any stream stops the scan of all of them. With
    /// [`fan_out(name)`](ConsumerBuilder::fan_out) the stream consumer `name` is registered on each stream (a
    /// consumer given by ARN belongs to one stream: refused).
    ///
    /// In a consumer group ([`group`](ConsumerBuilder::group)), every stream's leases are in the group's one lease
    /// table (a scope per stream) and a worker's fair share counts the leases of all streams: 3 workers over streams
    /// of 4, 2 and 1 shards hold 3, 2 and 2 leases, whichever streams they come from. `max_leases` counts them all
    /// too. A stream removed from the tracker's answer releases its leases (they stay in the table, with their
    /// checkpoints, for when it is added again).
    pub fn builder_for_streams<S: Into<TrackedStream>>(streams: impl IntoIterator<Item = S>) -> ConsumerBuilder {
        let streams: Vec<TrackedStream> = streams.into_iter().map(Into::into).collect();
        ConsumerBuilder::new_streams(Streams::Fixed(streams.into()))
    }

    /// A builder for a consumer of the streams `tracker` names, asked when the scan starts and on every
    /// [`discovery_interval`](ConsumerBuilder::discovery_interval): a stream it adds starts (at its initial position
    /// or from its checkpoints), one it drops stops gracefully (the records in hand finished, their checkpoints
    /// flushed). A tracked stream found deleted is dropped with a warning (not an error) and started again, as the
    /// new stream it then is, when an answer names it and it exists. Otherwise as
    /// [`builder_for_streams`](Self::builder_for_streams).
    ///
    /// ```no_run
    /// use kc_core::{BoxError, Consumer, InitialPosition, Outcome, Record, StreamTracker, TrackedStream};
    ///
    /// /// One stream per tenant, as a registry says now.
    /// struct Tenants;
    ///
    /// #[async_trait::async_trait]
    /// impl StreamTracker for Tenants {
    ///     async fn streams(&self) -> Result<Vec<TrackedStream>, BoxError> {
    ///         let tenants = ["acme", "globex"]; // from a database, a config service, ...
    ///         Ok(tenants.iter().map(|t| TrackedStream::new(format!("events-{t}"))).collect())
    ///     }
    /// }
    ///
    /// # async fn run() -> Result<(), kc_core::Error> {
    /// let consumer = Consumer::builder_tracking(Tenants)
    ///     .initial_position(InitialPosition::TrimHorizon)
    ///     .build()
    ///     .await?;
    /// consumer
    ///     .scan(|record: Record| async move {
    ///         println!("{} {}: {:?}", record.stream(), record.shard_id(), record.data());
    ///         Ok::<_, std::io::Error>(Outcome::Checkpoint)
    ///     })
    ///     .await
    /// # }
    /// ```
    pub fn builder_tracking(tracker: impl StreamTracker) -> ConsumerBuilder {
        ConsumerBuilder::new_streams(Streams::Tracked(Arc::new(tracker)))
    }

    /// The stream this consumer reads, as given (name or ARN; empty for a consumer of several streams).
    pub fn stream(&self) -> &str {
        &self.cfg.stream
    }

    /// The app name (checkpoint namespace).
    pub fn app(&self) -> &str {
        &self.cfg.app
    }

    /// The token that stops [`scan`](Self::scan) gracefully when cancelled (the one given to
    /// [`ConsumerBuilder::shutdown`], or one of the consumer's own).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The checkpoint store (in a consumer group an unused empty [`MemoryStore`]: the checkpoints are in the leases).
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.store
    }

    /// In a consumer group, this worker's id (the given one or the default, see [`Group::worker_id`]).
    pub fn worker_id(&self) -> Option<&str> {
        self.group.as_deref().map(|g| g.worker_id.as_str())
    }

    /// Reads every shard of the stream concurrently, calling `handler` for each record, until the shutdown token is
    /// cancelled (then `Ok(())`) or the handler returns an error (then every shard stops, the checkpoints already
    /// made are flushed, and that error is returned as an [`ErrorKind::Handler`](crate::ErrorKind::Handler) error).
    ///
    /// Shards that appear while scanning (resharding) are read too, each only after its parents were read to their
    /// end.
    pub async fn scan<H: RecordHandler>(&self, handler: H) -> Result<(), Error> {
        self.scan_with(Arc::new(self.per_record(handler))).await
    }

    fn per_record<H: RecordHandler>(&self, handler: H) -> PerRecord<H> {
        PerRecord { handler, failure: Arc::clone(&self.failure), in_flight: self.cfg.max_in_flight_per_shard }
    }

    /// Like [`scan`](Self::scan), with one handler call per GetRecords batch of a shard.
    pub async fn scan_batches<H: BatchHandler>(&self, handler: H) -> Result<(), Error> {
        self.scan_with(Arc::new(PerBatch { handler, failure: Arc::clone(&self.failure) })).await
    }

    /// Reads the one shard `shard_id` (and not its children) until its end, cancellation or a handler error.
    ///
    /// Not available in a consumer group (a [`Config`](crate::ErrorKind::Config) error): it reads without a lease.
    pub async fn scan_shard<H: RecordHandler>(&self, shard_id: &str, handler: H) -> Result<(), Error> {
        if self.group.is_some() {
            return Err(Error::config("scan_shard reads a shard without a lease: not available in a consumer group")
                .at(&self.cfg.stream, Some(shard_id)));
        }
        if self.streams.is_some() {
            return Err(Error::config("scan_shard reads a shard of one stream: not available for several streams"));
        }
        let deliver = self.per_record(handler);
        let cancel = self.shutdown.child_token();
        let Some(shared) = self.shared().prepare(&cancel, None).await? else {
            return Ok(()); // cancelled while waiting for the fan-out consumer
        };
        let hint = StartHint { trim_horizon: false, parents: Vec::new(), closed: false, latest_since: None };
        let result = ShardReader::new(&shared, &deliver, &cancel, shard_id).run(hint).await;
        let flushed = shared.flush().await;
        let deregistered = shared.deregister().await;
        result?;
        flushed?;
        deregistered
    }

    /// The whole stream, alone or as a group's worker.
    pub(crate) async fn scan_with<D: Deliver>(&self, deliver: Arc<D>) -> Result<(), Error> {
        // Cancelled by the user's token, or by the scan itself on the first error.
        let stop = self.shutdown.child_token();
        match (&self.group, &self.streams) {
            (Some(group), None) => crate::group::run(self.shared(), group, deliver, stop, Arc::default()).await,
            (group, Some(streams)) => crate::multi::run(self.shared(), streams, group.clone(), deliver, stop).await,
            (None, None) => crate::scan::run(self.shared(), deliver, stop).await,
        }
    }

    /// What the shard tasks share (the fan-out consumer not resolved yet).
    fn shared(&self) -> Shared {
        Shared {
            cfg: Arc::clone(&self.cfg),
            api: Arc::clone(&self.api),
            store: bounded_and_limited(Arc::clone(&self.store), self.cfg.store_timeout, self.cfg.max_calls_in_flight),
            lifecycle: Arc::clone(&self.lifecycle),
            consumer_arn: None,
            stream_arn: Arc::from(""),
            stream_key: Arc::from(self.cfg.stream.as_str()),
            closed_shards: Arc::default(),
        }
    }
}

/// Configures a [`Consumer`]. Required: the stream, by name or ARN (given to [`Consumer::builder`]); everything else
/// has a default, stated on its method. [`build`](Self::build) validates: among other things, every duration (here and
/// in [`Group`]) is at most [`MAX_DURATION`](crate::MAX_DURATION), a year.
#[must_use]
pub struct ConsumerBuilder {
    cfg: Config,
    api: Option<Arc<dyn KinesisApi>>,
    store: Option<Arc<dyn CheckpointStore>>,
    lifecycle: Option<Arc<dyn Lifecycle>>,
    shutdown: Option<CancellationToken>,
    group: Option<Group>,
    failure: FailurePolicy,
    handler_timeout: Option<HandlerTimeout>,
    streams: Option<Streams>,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder").field("config", &self.cfg).finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(stream: String) -> Self {
        Self {
            cfg: Config::new(stream),
            api: None,
            store: None,
            lifecycle: None,
            shutdown: None,
            group: None,
            failure: FailurePolicy::default(),
            handler_timeout: None,
            streams: None,
        }
    }

    fn new_streams(streams: Streams) -> Self {
        Self { streams: Some(streams), ..Self::new(String::new()) }
    }

    /// The Kinesis client. Default: one built from `aws_config`'s defaults (environment, profile, IMDS, ...).
    pub fn client(self, client: aws_sdk_kinesis::Client) -> Self {
        self.api(client)
    }

    /// Any implementation of the Kinesis calls the consumer makes (a wrapped client, or a fake in tests).
    pub fn api(mut self, api: impl KinesisApi) -> Self {
        self.api = Some(Arc::new(api));
        self
    }

    /// The checkpoint store. Default: a new [`MemoryStore`] (nothing survives the process).
    pub fn store(mut self, store: impl CheckpointStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A shared checkpoint store.
    pub fn shared_store(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The app name: the namespace of the checkpoints (`[app, stream, shard]`). Default: `"kinesis-consumer"`.
    pub fn app_name(mut self, app: impl Into<String>) -> Self {
        self.cfg.app = app.into();
        self
    }

    /// Where shards with no checkpoint start. Default: [`InitialPosition::Latest`]. Children of a shard this consumer
    /// read always start at the oldest record, so that resharding loses nothing.
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.cfg.initial_position = position;
        self
    }

    /// How long a shard waits before the next GetRecords when it is caught up. Default: 250 ms. A shard that is
    /// behind (a non-empty batch with MillisBehindLatest > 0, or a full batch) polls again at once, no sooner than
    /// [`min_poll_interval`](Self::min_poll_interval) after the previous call. An idle shard (empty answers, caught
    /// up) waits longer and longer, up to [`max_idle_interval`](Self::max_idle_interval).
    pub fn scan_interval(mut self, interval: Duration) -> Self {
        self.cfg.scan_interval = interval;
        self.cfg.polling_options.push("scan_interval");
        self
    }

    /// The longest wait between two GetRecords calls of an idle shard. Default: 1 s. After each empty answer with
    /// MillisBehindLatest 0 the wait doubles from the [`scan_interval`](Self::scan_interval) (250 ms, 500 ms, 1 s,
    /// ...) up to this; an answer with records brings it back to the scan interval at once (and a shard that is
    /// behind polls at once). So a caught-up shard costs about one call per second, as AWS recommends, instead of
    /// four of its five GetRecords per second, and a process of thousands of idle shards does not flood the endpoint;
    /// the price is up to this much latency for the first record after a quiet spell. A value at or below the scan
    /// interval turns the backoff off.
    pub fn max_idle_interval(mut self, interval: Duration) -> Self {
        self.cfg.max_idle_interval = interval;
        self.cfg.polling_options.push("max_idle_interval");
        self
    }

    /// The most records one GetRecords call returns, 1 to 10,000. Default: 10,000.
    pub fn max_records(mut self, max: i32) -> Self {
        self.cfg.max_records = max;
        self.cfg.polling_options.push("max_records");
        self
    }

    /// Whether a shard fetches its next batch while the handler works through the current one (polling only).
    /// Default: on. A shard is then at most one batch ahead (memory stays bounded to two batches per shard), and its
    /// GetRecords calls keep to [`min_poll_interval`](Self::min_poll_interval) and the idle backoff as without
    /// prefetch. Throughput becomes about the slower of fetching and handling rather than their sum. Nothing
    /// changes in the guarantees: checkpoints follow handled records only; an expired iterator resumes after the last
    /// record fetched (every record before it is handled or in hand); a stop finishes the record in hand and drops the
    /// prefetched batch unhandled and uncheckpointed (it is read again after a restart). Turn it off to fetch only
    /// when a batch is done (one GetRecords in flight per shard less).
    pub fn prefetch(mut self, on: bool) -> Self {
        self.cfg.prefetch = on;
        self.cfg.polling_options.push("prefetch");
        self
    }

    /// How often the shard list is refreshed to find new shards. Default: 30 s. (The list is also refreshed at once
    /// whenever a shard ends, to start its children.)
    pub fn discovery_interval(mut self, interval: Duration) -> Self {
        self.cfg.discovery_interval = interval;
        self
    }

    /// Whether records are KPL aggregates to split into user records (with kc-deagg). Default: off.
    pub fn aggregation(mut self, on: bool) -> Self {
        self.cfg.aggregation = on;
        self
    }

    /// With aggregation on: whether a record that has the KPL magic but fails to decode (bad MD5, truncated, ...)
    /// stops the scan with an [`ErrorKind::Deaggregation`](crate::ErrorKind::Deaggregation) error. Default: off: the
    /// record is delivered as one ordinary record (as the AWS KCL does) and counted in the
    /// `kinesis_consumer_deaggregation_errors_total` metric.
    pub fn strict_deaggregation(mut self, strict: bool) -> Self {
        self.cfg.strict_deaggregation = strict;
        self
    }

    /// The least time between two GetRecords calls of one shard. Default: 200 ms (Kinesis allows 5 calls per second
    /// per shard).
    pub fn min_poll_interval(mut self, interval: Duration) -> Self {
        self.cfg.min_poll_interval = interval;
        self.cfg.polling_options.push("min_poll_interval");
        self
    }

    /// The longest one Kinesis call may take before it is abandoned and retried, counted from when it was sent (see
    /// [`max_calls_in_flight`](Self::max_calls_in_flight): time spent waiting for a turn does not count). Default:
    /// 10 s.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.call_timeout = timeout;
        self
    }

    /// The most Kinesis calls (GetRecords, GetShardIterator, ListShards, SubscribeToShard, ...) this consumer has in
    /// flight at once, over all its shards; 1 to 100,000. Default: 64. Further calls wait in the consumer, in the
    /// order they were made, so that a slow endpoint (or a process reading thousands of shards) queues work here
    /// instead of timing calls out and retrying them into a congestion collapse. A call's
    /// [`call_timeout`](Self::call_timeout) starts when it is sent. The same number bounds the calls to the
    /// checkpoint store (on a count of its own): a start of many shards reads their checkpoints a few at a time.
    pub fn max_calls_in_flight(mut self, max: usize) -> Self {
        self.cfg.max_calls_in_flight = max;
        self
    }

    /// How many handler calls of one shard may run at once in [`scan`](Consumer::scan) (and
    /// [`scan_shard`](Consumer::scan_shard)), never two for the same partition key. Default: 1 (each shard's records
    /// in turn). With `n` > 1 a batch's records are dispatched to up to `n` concurrent calls of the handler, in the
    /// shard's order except that a record waits while an earlier record of its key is being handled: each key's
    /// records are handled in order (a KPL user record by its own key), as AWS Lambda's ParallelizationFactor does.
    /// It pays when the handler awaits I/O (a database write, an HTTP call) and records have many keys.
    ///
    /// The checkpoint is the last record of the unbroken run of finished records from the start: it never passes a
    /// record still in flight, so a crash delivers again the unfinished records and what came after them, never skips
    /// one. A record the [failure policy](Self::on_handler_error) retries holds its key and one of the `n` slots,
    /// not the shard. A stop, a lost lease or an error starts no more calls, waits for the ones running, and
    /// checkpoints what finished in order. The next batch starts when this one is settled (with
    /// [`prefetch`](Self::prefetch) it is already fetched). Between 1 and 10,000 (a batch's size); no effect on
    /// [`scan_batches`](Consumer::scan_batches), whose handler gets a whole batch.
    pub fn max_in_flight_per_shard(mut self, n: usize) -> Self {
        self.cfg.max_in_flight_per_shard = n;
        self
    }

    /// The longest one call to the checkpoint store or a group's lease table may take (get, set, flush; list, take,
    /// renew, checkpoint, release, ...) before it fails as a transient error. Default: 30 s. sqlx and the AWS SDK set
    /// no bound per statement: without this, a database that accepts connections and then holds every packet would
    /// hold a call, and a graceful stop waiting for it, until the operating system gives up on the connection.
    ///
    /// A graceful stop therefore returns in bounded time whatever the database does: a single consumer within this
    /// timeout (the final flush; a shard still reading its checkpoint at its start, and the stream's creation marker
    /// being read, are abandoned by the stop: nothing was handled yet), plus one more for a `set` in flight if the
    /// store's `set` itself writes to the database (this crate's stores buffer: their `set` does not); a group worker
    /// within the lease duration plus this timeout. With the database unreachable, [`scan`](Consumer::scan) then
    /// returns an [`ErrorKind::Checkpoint`](crate::ErrorKind::Checkpoint) error, "flush failed" (the last checkpoints
    /// were not saved, so their records are delivered again after a restart); a group worker's leases are left to
    /// expire and its stop returns `Ok(())` (their checkpoints stay at the last write that succeeded).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.store_timeout = timeout;
        self
    }

    /// The backoff between retries of calls that failed after the SDK's own retries (throttling, 5xx, timeouts):
    /// exponential from `base`, capped at `max`, with jitter, reset after a success. Default: 100 ms to 10 s.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.cfg.backoff_base = base;
        self.cfg.backoff_max = max;
        self
    }

    /// Receives shard lifecycle events (started, closed, stopped). Default: none.
    pub fn lifecycle(mut self, lifecycle: impl Lifecycle) -> Self {
        self.lifecycle = Some(Arc::new(lifecycle));
        self
    }

    /// Calls `hook` with the shard id when a shard was read to its end, after its last record was handled and its
    /// end recorded. A shorthand for a [`Lifecycle`] with only `shard_closed`.
    pub fn on_shard_closed(self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.lifecycle(OnShardClosed(hook))
    }

    /// A token that stops the scan gracefully when cancelled: each shard finishes the record in hand, checkpoints,
    /// and the store is flushed. Default: a token of the consumer's own ([`Consumer::shutdown_token`]).
    pub fn shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// What happens when the handler returns an error: retries (bounded by attempts and/or the record's age), then
    /// stop, skip or a dead-letter destination; applied to the failing record's shard alone, the other shards keep
    /// going. See [`FailurePolicy`]. Default: [`FailurePolicy::stop`], the first error stops the scan.
    pub fn on_handler_error(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Watches each handler call for stalls: one that runs longer than the timeout is logged (stream, shard, sequence
    /// number, time elapsed) and counted (`kinesis_consumer_handler_stalls_total`), and with
    /// [`HandlerTimeout::cancel_after`] cancelled and treated as a failure, to which the
    /// [failure policy](Self::on_handler_error) applies. Default: none (no timer per call).
    pub fn handler_timeout(mut self, timeout: HandlerTimeout) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    // --- Enhanced fan-out (issue 6) ---

    /// Reads with enhanced fan-out (SubscribeToShard) as the stream consumer `name` instead of polling with
    /// GetRecords. When the scan starts, the consumer is registered on the stream if it does not exist
    /// (RegisterStreamConsumer) and the scan waits until it is ACTIVE (retrying with backoff). Each shard then gets
    /// its records pushed (about 70 ms latency, 2 MB/s per shard for this consumer alone); handler, checkpoints,
    /// metrics, resharding and shutdown work as with polling. Default: polling. `name` is 1 to 128 of
    /// `a-z A-Z 0-9 _ . -`. [`scan_interval`](Self::scan_interval), [`min_poll_interval`](Self::min_poll_interval)
    /// and [`max_records`](Self::max_records) apply to polling only: giving one of them with fan-out is a
    /// configuration error.
    pub fn fan_out(mut self, name: impl Into<String>) -> Self {
        self.cfg.fan_out = Some(FanOutConfig::Name(name.into()));
        self
    }

    /// Like [`fan_out`](Self::fan_out), with a consumer registered beforehand, given by its ARN
    /// (`arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM/consumer/NAME:TIMESTAMP`). It is not registered by the consumer;
    /// the scan waits until it is ACTIVE.
    pub fn fan_out_consumer_arn(mut self, arn: impl Into<String>) -> Self {
        self.cfg.fan_out = Some(FanOutConfig::Arn(arn.into()));
        self
    }

    /// With fan-out: deregister the stream consumer (DeregisterStreamConsumer) when the scan returns. Default: off (a
    /// registered consumer is usually long-lived, and other instances of the app may still use it). Setting it
    /// without fan-out, or in a consumer group (whose workers share the stream consumer), is a configuration error.
    pub fn deregister_on_shutdown(mut self, on: bool) -> Self {
        self.cfg.deregister_on_shutdown = on;
        self
    }

    // --- Consumer groups (issue 5) ---

    /// Makes this consumer a worker of a consumer group: it reads only the shards whose leases it holds, and keeps
    /// their checkpoints in the leases (so a [`store`](Self::store) must not be given too). See [`Group`] for the
    /// settings, their defaults and the behaviour. Default: no group (every shard is read, checkpoints in the store).
    pub fn group(mut self, group: Group) -> Self {
        self.group = Some(group);
        self
    }

    /// Validates the settings and builds the consumer. Without a client, one is built from `aws_config` defaults.
    pub async fn build(mut self) -> Result<Consumer, Error> {
        match &self.streams {
            None => self.cfg.validate()?,
            Some(streams) => {
                self.cfg.validate_settings()?;
                if let Streams::Fixed(fixed) = streams {
                    crate::tracker::validate(fixed)?;
                }
                if let Some(FanOutConfig::Arn(_)) = &self.cfg.fan_out {
                    return Err(Error::config(
                        "a fan-out consumer given by ARN belongs to one stream: with several streams, give a name \
                         (fan_out(name)), registered on each stream",
                    ));
                }
            }
        }
        self.failure.stall = self.handler_timeout;
        self.failure.validate()?;
        if self.group.is_some() && self.store.is_some() {
            return Err(Error::config(
                "a consumer group keeps its checkpoints in the lease table: give either a group or a store, not both",
            ));
        }
        if self.group.is_some() && self.cfg.deregister_on_shutdown {
            return Err(Error::config(
                "deregister_on_shutdown cannot be used in a consumer group: every worker shares the stream consumer, \
                 and one worker's stop would deregister it under the others (deregister it when the whole group is \
                 retired)",
            ));
        }
        let group = self.group.map(Group::resolve).transpose()?.map(Arc::new);
        let api: Arc<dyn KinesisApi> = match self.api {
            Some(api) => api,
            None => {
                let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
                Arc::new(aws_sdk_kinesis::Client::new(&config))
            }
        };
        let api = Arc::new(Limited::new(api, self.cfg.max_calls_in_flight, self.cfg.call_timeout));
        Ok(Consumer {
            cfg: Arc::new(self.cfg),
            api,
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            lifecycle: self.lifecycle.unwrap_or_else(|| Arc::new(NoLifecycle)),
            shutdown: self.shutdown.unwrap_or_default(),
            group,
            failure: Arc::new(self.failure),
            streams: self.streams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn check(f: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder, want_err: Option<&str>) {
        let builder = f(Consumer::builder("stream").api(crate::fake::FakeKinesis::new()));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        match (rt.block_on(builder.build()), want_err) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => {
                assert_eq!(e.kind(), ErrorKind::Config);
                assert!(e.to_string().contains(want), "{e} does not contain {want:?}");
            }
            (Ok(_), Some(want)) => panic!("expected an error containing {want:?}"),
            (Err(e), None) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn build_validates() {
        check(|b| b, None);
        check(|b| b.max_records(1), None);
        check(|b| b.max_records(10_000), None);
        check(|b| b.max_records(0), Some("max_records must be between 1 and 10000"));
        check(|b| b.max_records(10_001), Some("got 10001"));
        check(|b| b.app_name(""), Some("app name"));
        check(|b| b.scan_interval(Duration::ZERO), Some("scan_interval must be greater than zero"));
        check(|b| b.discovery_interval(Duration::ZERO), Some("discovery_interval"));
        check(|b| b.call_timeout(Duration::ZERO), Some("call_timeout"));
        check(|b| b.max_calls_in_flight(1), None);
        check(|b| b.max_calls_in_flight(100_000), None);
        check(|b| b.max_calls_in_flight(0), Some("max_calls_in_flight must be between 1 and 100000, got 0"));
        check(|b| b.max_calls_in_flight(100_001), Some("got 100001"));
        check(|b| b.store_timeout(Duration::ZERO), Some("store_timeout must be greater than zero"));
        check(|b| b.store_timeout(Duration::MAX), Some("store_timeout must be at most"));
        check(|b| b.retry_backoff(Duration::from_secs(2), Duration::from_secs(1)), Some("backoff max"));
        check(|b| b.fan_out("my-app_1.x"), None);
        check(|b| b.fan_out("my-app").deregister_on_shutdown(true), None);
        check(|b| b.fan_out(""), Some("consumer name must not be empty"));
        check(|b| b.fan_out("a".repeat(129)), Some("at most 128"));
        check(|b| b.fan_out("a b"), Some("character ' '"));
        check(|b| b.deregister_on_shutdown(true), Some("deregister_on_shutdown needs enhanced fan-out"));
        let group = || Group::new("g", kc_checkpoint::lease::MemoryLeaseTable::new());
        check(|b| b.fan_out("c").group(group()), None);
        check(
            |b| b.fan_out("c").deregister_on_shutdown(true).group(group()),
            Some("deregister_on_shutdown cannot be used in a consumer group"),
        );
        check(|b| b.max_records(5).fan_out("c"), Some("max_records only apply to polling"));
        check(|b| b.max_idle_interval(Duration::from_secs(2)).fan_out("c"), Some("max_idle_interval only apply"));
        check(|b| b.max_idle_interval(Duration::ZERO), None);
        check(|b| b.max_idle_interval(Duration::MAX), Some("max_idle_interval must be at most"));
        check(
            |b| b.fan_out("c").scan_interval(Duration::from_secs(1)).min_poll_interval(Duration::from_secs(1)),
            Some("scan_interval, min_poll_interval only apply to polling"),
        );
        check(|b| b.fan_out_consumer_arn("arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1"), None);
        check(|b| b.fan_out_consumer_arn("c"), Some("not a stream consumer ARN"));
        check(|b| b.on_handler_error(crate::FailurePolicy::skip().max_attempts(3)), None);
        check(
            |b| b.handler_timeout(HandlerTimeout::log_after(Duration::ZERO)),
            Some("handler_timeout must be greater"),
        );
        check(
            |b| b.handler_timeout(HandlerTimeout::cancel_after(Duration::MAX)),
            Some("handler_timeout must be at most"),
        );
        check(
            |b| b.on_handler_error(crate::FailurePolicy::skip().max_attempts(0)),
            Some("max_attempts must be at least 1"),
        );
        check(|b| b.fan_out_consumer_arn("arn:aws:kinesis:us-east-1:1:stream/s"), Some("not a stream consumer ARN"));
    }
}
