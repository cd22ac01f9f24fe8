//! Enhanced fan-out: the stream consumer (registered if missing, waited for until ACTIVE, optionally deregistered
//! at the end) and [`Subscriber`], the record source that reads a shard with SubscribeToShard.
//!
//! A subscription starts at the shard's start position (checkpoint, parents or initial position, as for polling) and
//! is renewed from the last event's ContinuationSequenceNumber (AFTER_SEQUENCE_NUMBER) when it ends (every 5 minutes
//! on AWS), when the connection drops, or when no event came for [`EVENT_IDLE_LIMIT`]. A ResourceInUseException
//! within 5 s of the previous subscription (Kinesis allows one SubscribeToShard per consumer and shard every 5 s)
//! waits out those 5 s; otherwise it backs off like other retries. The last event of a closed shard (ChildShards, no
//! continuation) ends the shard. Events are taken from the connection one at a time, only after the previous one was
//! delivered: the handler's pace is the read pace, and the HTTP flow control holds the rest at the server.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::{Checkpoint, SequenceNumber};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{resume_position, Context, Fetched};
use crate::api::{
    ApiError, ApiErrorKind, ConsumerLookup, ConsumerStatus, KinesisApi, ShardInfo, ShardSubscription, StartingPosition,
    StreamConsumer, SubscribeEvent,
};
use crate::backoff::Backoff;
use crate::config::{Config, FanOutConfig};
use crate::error::{Error, ErrorKind};
use crate::retry::{setup_call as call, sleep};

/// Kinesis accepts one SubscribeToShard per consumer and shard every 5 seconds.
const RESUBSCRIBE_WINDOW: Duration = Duration::from_secs(5);
/// A subscription that delivered no event for this long is taken as dead (Kinesis sends an event at least every 5 s,
/// even when no record was put) and replaced by a new one from the continuation.
pub(crate) const EVENT_IDLE_LIMIT: Duration = Duration::from_secs(30);

fn setup_error(cfg: &Config, what: &str, e: ApiError) -> Error {
    let kind = match e.kind() {
        ApiErrorKind::NotFound => ErrorKind::StreamNotFound,
        _ => ErrorKind::Kinesis,
    };
    Error::new(kind, format!("enhanced fan-out: {what} failed")).with_source(e).at(&cfg.stream, None)
}

/// The ARN of the fan-out consumer to subscribe with, once it is ACTIVE (registered first on the stream `stream_arn`
/// when it is given by name and missing); `Ok(None)` for polling or when cancelled meanwhile.
pub(crate) async fn resolve(
    cfg: &Config,
    api: &Arc<dyn KinesisApi>,
    stream_arn: &str,
    cancel: &CancellationToken,
) -> Result<Option<Arc<str>>, Error> {
    let Some(fan_out) = &cfg.fan_out else {
        return Ok(None);
    };
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    // Polls the consumer's state with its own backoff: registration takes seconds on AWS.
    let mut wait = Backoff::new(cfg.backoff_base, cfg.backoff_max.min(Duration::from_secs(2)).max(cfg.backoff_base));
    loop {
        let lookup = match fan_out {
            FanOutConfig::Name(name) => ConsumerLookup::Name { stream_arn, name },
            FanOutConfig::Arn(arn) => ConsumerLookup::Arn(arn),
        };
        let described =
            call(&mut backoff, cancel, "DescribeStreamConsumer", || api.describe_stream_consumer(lookup)).await;
        match described {
            None => return Ok(None),
            Some(Ok(StreamConsumer { arn, status: ConsumerStatus::Active, name })) => {
                info!(consumer = %name, arn = %arn, "fan-out consumer is active");
                return Ok(Some(Arc::from(arn)));
            }
            Some(Ok(StreamConsumer { status, name, .. })) => {
                debug!(consumer = %name, ?status, "waiting for the fan-out consumer to become active");
            }
            Some(Err(e)) if e.kind() == ApiErrorKind::NotFound => {
                let FanOutConfig::Name(name) = fan_out else {
                    return Err(setup_error(cfg, "DescribeStreamConsumer (the consumer ARN given)", e));
                };
                info!(consumer = %name, "registering the fan-out consumer");
                let registered = call(&mut backoff, cancel, "RegisterStreamConsumer", || {
                    api.register_stream_consumer(stream_arn, name)
                })
                .await;
                match registered {
                    None => return Ok(None),
                    Some(Ok(c)) if c.status == ConsumerStatus::Active => return Ok(Some(Arc::from(c.arn))),
                    Some(Ok(_)) => {}
                    // Registered meanwhile by another instance (or a previous one is still being deleted): wait.
                    Some(Err(e)) if e.kind() == ApiErrorKind::ResourceInUse => {
                        debug!(error = %e, "the consumer is being registered or deleted elsewhere; waiting");
                    }
                    Some(Err(e)) => return Err(setup_error(cfg, "RegisterStreamConsumer", e)),
                }
            }
            Some(Err(e)) => return Err(setup_error(cfg, "DescribeStreamConsumer", e)),
        }
        if !sleep(cancel, wait.next_delay()).await {
            return Ok(None);
        }
    }
}

/// Deregisters the fan-out consumer when the builder asked for it.
pub(crate) async fn deregister(cfg: &Config, api: &Arc<dyn KinesisApi>, arn: &str) -> Result<(), Error> {
    if !cfg.deregister_on_shutdown {
        return Ok(());
    }
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    // Not cancellable: the scan is already stopping, this is its last step. Bounded by a few attempts.
    let never = CancellationToken::new();
    let attempt = call(&mut backoff, &never, "DeregisterStreamConsumer", || api.deregister_stream_consumer(arn));
    match tokio::time::timeout(cfg.call_timeout * 3, attempt).await {
        Ok(Some(Ok(()))) => {
            info!(arn, "fan-out consumer deregistered");
            Ok(())
        }
        Ok(Some(Err(e))) => Err(setup_error(cfg, "DeregisterStreamConsumer", e)),
        Ok(None) | Err(_) => Err(setup_error(cfg, "DeregisterStreamConsumer", ApiError::timed_out())),
    }
}

/// The stream's closed shards as a ListShards found them, shared by every shard of a consumer, so that idle fan-out
/// shards probing for an unreported end make one listing per discovery interval between them rather than one each
/// (issue 13: O(shards²) calls on an idle stream).
#[derive(Debug, Default)]
pub(crate) struct ClosedShards {
    /// When the last listing was made, and the closed shards it had. Locked while a listing is made: shards that probe
    /// meanwhile wait for it and use it.
    last: tokio::sync::Mutex<Option<(Instant, Arc<HashSet<String>>)>>,
}

impl ClosedShards {
    /// Whether `r`'s shard is closed, after a listing at most `every` old (made now if there is none); `None` when
    /// cancelled.
    async fn closed(&self, r: &mut Context, every: Duration) -> Result<Option<bool>, Error> {
        let mut last = tokio::select! {
            biased;
            _ = r.cancel.cancelled() => return Ok(None),
            last = self.last.lock() => last,
        };
        let fresh = last.as_ref().filter(|(at, _)| at.elapsed() < every).map(|(_, closed)| Arc::clone(closed));
        let closed = match fresh {
            Some(closed) => closed,
            None => {
                let listed_at = Instant::now();
                let stream = r.cfg.stream.clone();
                let mut closed = HashSet::new();
                let mut token: Option<String> = None;
                loop {
                    let (s, t) = (stream.clone(), token.clone());
                    let page = match r
                        .call(|api| {
                            let (s, t) = (s.clone(), t.clone());
                            async move { api.list_shards(&s, t.as_deref()).await }
                        })
                        .await
                    {
                        Some(Ok(page)) => page,
                        Some(Err(e)) => return Err(r.api_error("ListShards", e)),
                        None => return Ok(None),
                    };
                    closed.extend(page.shards.into_iter().filter(|s| s.closed).map(|s| s.shard_id));
                    match page.next_token {
                        Some(next) => token = Some(next),
                        None => break,
                    }
                }
                let closed = Arc::new(closed);
                *last = Some((listed_at, Arc::clone(&closed)));
                closed
            }
        };
        Ok(Some(closed.contains(&*r.shard_id)))
    }
}

/// The fan-out source of one shard.
pub(crate) struct Subscriber {
    consumer_arn: Arc<str>,
    /// Where the next subscription starts: the start position, then after the last continuation.
    position: StartingPosition,
    /// Whether `position` came from an event (else: the reader's progress decides, see [`resume_position`]).
    continued: bool,
    subscription: Option<Box<dyn ShardSubscription>>,
    /// When the last subscription was made.
    subscribed_at: Option<Instant>,
    /// When the shard was last checked for an end that no event reported (see [`Subscriber::probe_end`]).
    probed_at: Option<Instant>,
}

impl Subscriber {
    pub(crate) fn new(consumer_arn: Arc<str>, start: StartingPosition) -> Self {
        Self {
            consumer_arn,
            position: start,
            continued: false,
            subscription: None,
            subscribed_at: None,
            probed_at: None,
        }
    }

    /// The next event's records; `None` when cancelled.
    pub(crate) async fn next(
        &mut self,
        r: &mut Context,
        last_handled: Option<&Checkpoint>,
    ) -> Result<Option<Fetched>, Error> {
        loop {
            let subscription = match self.subscription.as_mut() {
                Some(s) => s,
                None => match self.subscribe(r, last_handled).await? {
                    Some(s) => self.subscription.insert(s),
                    None => return Ok(None),
                },
            };
            let event = tokio::select! {
                biased;
                _ = r.cancel.cancelled() => return Ok(None),
                e = tokio::time::timeout(EVENT_IDLE_LIMIT, subscription.next_event()) => e,
            };
            let err = match event {
                Ok(Ok(Some(event))) => {
                    r.backoff.reset();
                    let idle = event.records.is_empty() && event.child_shards.is_empty();
                    let mut fetched = self.event(r, event)?;
                    if idle && fetched.end.is_none() {
                        fetched.end = self.probe_end(r).await?;
                    }
                    return Ok(Some(fetched));
                }
                Ok(Ok(None)) => {
                    debug!(position = ?self.position, "subscription ended; subscribing again");
                    r.metrics.retry("subscription_ended");
                    self.subscription = None;
                    continue;
                }
                Ok(Err(e)) if e.is_retryable() => e,
                Ok(Err(e)) => return Err(r.api_error("SubscribeToShard (event stream)", e)),
                Err(_idle) => ApiError::new(
                    ApiErrorKind::Transient,
                    Some(format!("no SubscribeToShard event for {}s", EVENT_IDLE_LIMIT.as_secs())),
                ),
            };
            self.subscription = None;
            let delay = r.backoff.next_delay();
            r.metrics.retry("subscription_failed");
            warn!(error = %err, position = ?self.position, ?delay, "subscription failed; subscribing again");
            if !r.sleep(delay).await {
                return Ok(None);
            }
        }
    }

    fn event(&mut self, r: &Context, event: SubscribeEvent) -> Result<Fetched, Error> {
        let SubscribeEvent { records, continuation_sequence_number, millis_behind_latest, child_shards } = event;
        let end = match continuation_sequence_number {
            Some(_) if !child_shards.is_empty() => Some(child_shards),
            None => Some(child_shards),
            Some(continuation) => {
                let sequence = SequenceNumber::parse(continuation).map_err(|e| {
                    r.err(Error::new(
                        ErrorKind::InvalidResponse,
                        "SubscribeToShard returned an invalid continuation sequence number",
                    ))
                    .with_source(e)
                })?;
                self.position = StartingPosition::AfterSequenceNumber(sequence);
                self.continued = true;
                None
            }
        };
        Ok(Fetched { records, millis_behind_latest, end })
    }

    /// An idle subscription of a closed shard whose end no event reported (kinesis-mock never sends ChildShards; AWS
    /// does): at most once per discovery interval of idleness, look the shard up in a listing at most a discovery
    /// interval old ([`ClosedShards`]: one listing for every shard of the consumer), and if it is closed, read after
    /// the continuation with GetRecords: no record and no next iterator means the shard was read to its end.
    async fn probe_end(&mut self, r: &mut Context) -> Result<Option<Vec<ShardInfo>>, Error> {
        let every = r.cfg.discovery_interval;
        let since = *self.probed_at.get_or_insert_with(Instant::now);
        if since.elapsed() < every {
            return Ok(None);
        }
        self.probed_at = Some(Instant::now());
        let StartingPosition::AfterSequenceNumber(_) = &self.position else {
            return Ok(None);
        };
        let probe = Arc::clone(&r.closed_shards);
        let closed = match probe.closed(r, every).await? {
            Some(closed) => closed,
            None => return Ok(None),
        };
        if !closed {
            return Ok(None);
        }
        let Some(iterator) = r.iterator(&self.position).await? else {
            return Ok(None);
        };
        let batch = match r
            .call(|api| {
                let iterator = iterator.clone();
                async move { api.get_records(&iterator, 1).await }
            })
            .await
        {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => return Err(r.api_error("GetRecords", e)),
            None => return Ok(None),
        };
        if batch.records.is_empty() && batch.next_shard_iterator.is_none() {
            debug!("closed shard read to its end (found by GetRecords after the continuation)");
            return Ok(Some(batch.child_shards));
        }
        Ok(None)
    }

    /// A new subscription from the current position, retrying what can be retried; `None` when cancelled.
    async fn subscribe(
        &mut self,
        r: &mut Context,
        last_handled: Option<&Checkpoint>,
    ) -> Result<Option<Box<dyn ShardSubscription>>, Error> {
        loop {
            let position =
                if self.continued { self.position.clone() } else { resume_position(&self.position, last_handled) };
            let (arn, shard) = (Arc::clone(&self.consumer_arn), Arc::clone(&r.shard_id));
            let result = r
                .call(|api| {
                    let (arn, shard, position) = (Arc::clone(&arn), Arc::clone(&shard), position.clone());
                    async move { api.subscribe_to_shard(&arn, &shard, &position).await }
                })
                .await;
            match result {
                None => return Ok(None),
                Some(Ok(subscription)) => {
                    debug!(position = ?position, "subscribed");
                    self.subscribed_at = Some(Instant::now());
                    return Ok(Some(subscription));
                }
                Some(Err(e)) if e.kind() == ApiErrorKind::ResourceInUse => {
                    // The previous subscription of this shard is less than 5 s old (or still closing): wait until
                    // Kinesis accepts a new one, then try again.
                    let since = self.subscribed_at.map(|t| t.elapsed());
                    let delay = match since {
                        Some(since) if since < RESUBSCRIBE_WINDOW => RESUBSCRIBE_WINDOW - since + r.cfg.backoff_base,
                        _ => r.backoff.next_delay(),
                    };
                    r.metrics.retry("resource_in_use");
                    debug!(error = %e, ?delay, "shard subscription in use; subscribing again shortly");
                    if !r.sleep(delay).await {
                        return Ok(None);
                    }
                }
                Some(Err(e)) => match r.past_retention(&position, &e) {
                    Some(trim_horizon) => {
                        self.position = trim_horizon;
                        self.continued = true;
                    }
                    None => return Err(r.api_error("SubscribeToShard", e)),
                },
            }
        }
    }
}
