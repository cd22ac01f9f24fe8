//! Scanning a whole stream: shard discovery, parents before children, one task per shard, shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::api::{ApiError, ApiErrorKind, ShardInfo};
use crate::backoff::Backoff;
use crate::consumer::Consumer;
use crate::error::{Error, ErrorKind};
use crate::handler::{BatchHandler, RecordHandler};
use crate::shard::{Deliver, PerBatch, PerRecord, ShardExit, ShardReader, Shared, StartHint};

/// What the consumer knows of the stream's shards in this run.
#[derive(Debug, Default)]
pub(crate) struct Shards {
    /// The shards of the last listing (plus children GetRecords reported since).
    known: HashMap<String, ShardInfo>,
    running: HashSet<String>,
    /// Read to their end (or skipped) in this run, or found ended in the store.
    finished: HashSet<String>,
    /// Shards actually read in this run (not skipped): their children start at TRIM_HORIZON.
    read: HashSet<String>,
    /// The shards of the first listing: shards that appear later are new children and start at TRIM_HORIZON.
    initial: Option<HashSet<String>>,
}

impl Shards {
    /// Replaces the known shards with a new listing.
    pub(crate) fn update(&mut self, listing: Vec<ShardInfo>) {
        self.known = listing.into_iter().map(|s| (s.shard_id.clone(), s)).collect();
        if self.initial.is_none() {
            info!(shards = self.known.len(), "shards listed");
            self.initial = Some(self.known.keys().cloned().collect());
        }
    }

    /// Adds children that GetRecords reported at the end of a parent.
    pub(crate) fn add_children(&mut self, children: Vec<ShardInfo>) {
        for child in children {
            self.known.entry(child.shard_id.clone()).or_insert(child);
        }
    }

    /// The shards that can start now, with how they start: not running, not finished, and every parent finished or
    /// gone from the listing (past the stream's retention). Marks them running.
    pub(crate) fn take_ready(&mut self) -> Vec<(String, StartHint)> {
        let mut ready: Vec<(String, StartHint)> = self
            .known
            .values()
            .filter(|s| !self.running.contains(&s.shard_id) && !self.finished.contains(&s.shard_id))
            .filter(|s| s.parents().all(|p| self.finished.contains(p) || !self.known.contains_key(p)))
            .map(|s| {
                let hint = StartHint {
                    trim_horizon: !self.initial.as_ref().is_some_and(|i| i.contains(&s.shard_id))
                        || s.parents().any(|p| self.read.contains(p)),
                    parents: s.parents().map(str::to_owned).collect(),
                    closed: s.closed,
                    latest_since: None,
                };
                (s.shard_id.clone(), hint)
            })
            .collect();
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, _) in &ready {
            self.running.insert(id.clone());
        }
        ready
    }

    /// A shard task ended.
    pub(crate) fn exited(&mut self, shard_id: &str, exit: &ShardExit) {
        self.running.remove(shard_id);
        match exit {
            ShardExit::Ended { .. } => {
                self.finished.insert(shard_id.to_owned());
                self.read.insert(shard_id.to_owned());
            }
            ShardExit::Skipped => {
                self.finished.insert(shard_id.to_owned());
            }
            ShardExit::Stopped => {}
        }
    }
}

type ShardResult = (String, Result<ShardExit, Error>);

impl Consumer {
    /// Reads every shard of the stream concurrently, calling `handler` for each record, until the shutdown token is
    /// cancelled (then `Ok(())`) or the handler returns an error (then every shard stops, the checkpoints already
    /// made are flushed, and that error is returned as an [`ErrorKind::Handler`] error).
    ///
    /// Shards that appear while scanning (resharding) are read too, each only after its parents were read to their
    /// end.
    pub async fn scan<H: RecordHandler>(&self, handler: H) -> Result<(), Error> {
        self.scan_with(Arc::new(PerRecord(handler))).await
    }

    /// Like [`scan`](Self::scan), with one handler call per GetRecords batch of a shard.
    pub async fn scan_batches<H: BatchHandler>(&self, handler: H) -> Result<(), Error> {
        self.scan_with(Arc::new(PerBatch(handler))).await
    }

    /// Reads the one shard `shard_id` (and not its children) until its end, cancellation or a handler error.
    ///
    /// Not available in a consumer group (a [`Config`](ErrorKind::Config) error): it reads without a lease.
    pub async fn scan_shard<H: RecordHandler>(&self, shard_id: &str, handler: H) -> Result<(), Error> {
        if self.group.is_some() {
            return Err(Error::config("scan_shard reads a shard without a lease: not available in a consumer group")
                .at(&self.cfg.stream, Some(shard_id)));
        }
        let deliver = PerRecord(handler);
        let cancel = self.shutdown.child_token();
        let Some(shared) = self.prepare(&cancel).await? else {
            return Ok(()); // cancelled while waiting for the fan-out consumer
        };
        let hint = StartHint { trim_horizon: false, parents: Vec::new(), closed: false, latest_since: None };
        let result = ShardReader::new(&shared, &deliver, &cancel, shard_id).run(hint).await;
        let flushed = self.flush().await;
        let deregistered = self.deregister(&shared).await;
        result?;
        flushed?;
        deregistered
    }

    /// The state shared by the shard tasks of a scan, with the fan-out consumer resolved (registered if needed and
    /// ACTIVE) when fan-out is on; `None` if `cancel` fired while waiting for it.
    pub(crate) async fn prepare(&self, cancel: &CancellationToken) -> Result<Option<Shared>, Error> {
        let mut shared = self.shared();
        shared.consumer_arn = crate::fan_out::resolve(&self.cfg, &self.api, cancel).await?;
        if self.cfg.fan_out.is_some() && shared.consumer_arn.is_none() {
            return Ok(None);
        }
        Ok(Some(shared))
    }

    fn shared(&self) -> Shared {
        Shared {
            cfg: Arc::clone(&self.cfg),
            api: Arc::clone(&self.api),
            store: Arc::clone(&self.store),
            lifecycle: Arc::clone(&self.lifecycle),
            consumer_arn: None,
        }
    }

    async fn flush(&self) -> Result<(), Error> {
        self.store.flush().await.map_err(|e| {
            Error::new(ErrorKind::Checkpoint, "checkpoint store: flush failed")
                .with_source(e)
                .at(&self.cfg.stream, None)
        })
    }

    /// Deregisters the fan-out consumer if the builder asked for it.
    pub(crate) async fn deregister(&self, shared: &Shared) -> Result<(), Error> {
        match &shared.consumer_arn {
            Some(arn) => crate::fan_out::deregister(&self.cfg, &self.api, arn).await,
            None => Ok(()),
        }
    }

    async fn scan_with<D: Deliver>(&self, deliver: Arc<D>) -> Result<(), Error> {
        if let Some(group) = &self.group {
            return crate::group::scan(self, group, deliver).await;
        }
        let span = tracing::info_span!("scan", stream = %self.cfg.stream, app = %self.cfg.app);
        async move {
            // Cancelled by the user's token, or by us on the first error.
            let stop = self.shutdown.child_token();
            let Some(shared) = self.prepare(&stop).await? else {
                return Ok(()); // cancelled while waiting for the fan-out consumer
            };
            let mut tasks: JoinSet<ShardResult> = JoinSet::new();
            let mut shards = Shards::default();
            let result = self.run(&stop, &shared, &deliver, &mut tasks, &mut shards).await;
            stop.cancel();
            let mut first_error = result.err();
            while let Some(joined) = tasks.join_next().await {
                if let Err(e) = flatten(joined) {
                    if first_error.is_none() {
                        first_error = Some(e);
                    } else {
                        warn!(error = %e, "another shard failed while stopping");
                    }
                }
            }
            let flushed = self.flush().await;
            let deregistered = self.deregister(&shared).await;
            match first_error {
                Some(e) => {
                    if let Err(flush_error) = flushed {
                        warn!(error = %flush_error, "flushing checkpoints after an error failed");
                    }
                    if let Err(deregister_error) = deregistered {
                        warn!(error = %deregister_error, "deregistering the fan-out consumer after an error failed");
                    }
                    Err(e)
                }
                None => flushed.and(deregistered),
            }
        }
        .instrument(span)
        .await
    }

    /// Discovery and supervision until cancelled or an error.
    async fn run<D: Deliver>(
        &self,
        stop: &CancellationToken,
        shared: &Shared,
        deliver: &Arc<D>,
        tasks: &mut JoinSet<ShardResult>,
        shards: &mut Shards,
    ) -> Result<(), Error> {
        let listing = match self.list_shards(stop, true).await? {
            Listing::Shards(listing) => listing,
            Listing::Unavailable | Listing::Cancelled => return Ok(()),
        };
        shards.update(listing);
        self.spawn_ready(shards, stop, shared, deliver, tasks);
        let mut discovery = tokio::time::interval(self.cfg.discovery_interval);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        discovery.reset();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = discovery.tick() => {
                    match self.list_shards(stop, false).await? {
                        Listing::Shards(listing) => shards.update(listing),
                        Listing::Unavailable => {}
                        Listing::Cancelled => return Ok(()),
                    }
                }
                Some(joined) = tasks.join_next() => {
                    let (shard_id, exit) = match joined {
                        Ok((shard_id, Ok(exit))) => (shard_id, exit),
                        other => return flatten(other),
                    };
                    shards.exited(&shard_id, &exit);
                    if let ShardExit::Ended { children } = exit {
                        shards.add_children(children);
                        // Find the children now rather than at the next discovery tick.
                        match self.list_shards(stop, false).await? {
                            Listing::Shards(listing) => shards.update(listing),
                            Listing::Unavailable => {}
                            Listing::Cancelled => return Ok(()),
                        }
                    }
                }
            }
            self.spawn_ready(shards, stop, shared, deliver, tasks);
        }
    }

    fn spawn_ready<D: Deliver>(
        &self,
        shards: &mut Shards,
        stop: &CancellationToken,
        shared: &Shared,
        deliver: &Arc<D>,
        tasks: &mut JoinSet<ShardResult>,
    ) {
        for (shard_id, hint) in shards.take_ready() {
            let (shared, deliver, stop) = (shared.clone(), Arc::clone(deliver), stop.clone());
            tasks.spawn(async move {
                let result = ShardReader::new(&shared, &*deliver, &stop, &shard_id).run(hint).await;
                (shard_id, result)
            });
        }
    }

    /// Every shard of the stream, following NextToken. A missing stream or a permanent failure is an error. A
    /// retryable failure is retried with backoff at the `first` listing (nothing can start without it); later it
    /// gives [`Listing::Unavailable`] at once, so that the supervisor keeps watching its shard tasks (a handler error
    /// must stop the scan even while ListShards fails) and tries again at the next discovery tick.
    pub(crate) async fn list_shards(&self, stop: &CancellationToken, first: bool) -> Result<Listing, Error> {
        let stream = &self.cfg.stream;
        let mut backoff = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max);
        'listing: loop {
            let mut shards = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let call = self.api.list_shards(stream, token.as_deref());
                let result = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(Listing::Cancelled),
                    r = tokio::time::timeout(self.cfg.call_timeout, call) => r,
                };
                let err = match result {
                    Ok(Ok(page)) => {
                        shards.extend(page.shards);
                        match page.next_token {
                            Some(next) => token = Some(next),
                            None => return Ok(Listing::Shards(shards)),
                        }
                        continue;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => ApiError::new(ApiErrorKind::Transient, Some("client-side timeout".to_owned())),
                };
                if !err.is_retryable() {
                    let kind = if err.kind() == ApiErrorKind::NotFound {
                        ErrorKind::StreamNotFound
                    } else {
                        ErrorKind::Kinesis
                    };
                    let what = if first { "ListShards failed" } else { "ListShards failed while scanning" };
                    return Err(Error::new(kind, what).with_source(err).at(stream, None));
                }
                if !first {
                    warn!(error = %err, "ListShards failed; trying again at the next discovery");
                    return Ok(Listing::Unavailable);
                }
                let delay = backoff.next_delay();
                warn!(error = %err, ?delay, "ListShards failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(Listing::Cancelled),
                    _ = tokio::time::sleep(delay) => continue 'listing,
                }
            }
        }
    }
}

/// The outcome of listing the shards.
pub(crate) enum Listing {
    Shards(Vec<ShardInfo>),
    /// A retryable failure while scanning: keep the shards known so far.
    Unavailable,
    Cancelled,
}

/// A shard task's result, with a panic turned into an error.
fn flatten(joined: Result<ShardResult, tokio::task::JoinError>) -> Result<(), Error> {
    match joined {
        Ok((_, Ok(_))) => Ok(()),
        Ok((_, Err(e))) => Err(e),
        Err(e) if e.is_panic() => Err(Error::new(ErrorKind::Handler, "a shard task panicked (in the handler?)")),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_owned(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            closed,
        }
    }

    fn ids(ready: &[(String, StartHint)]) -> Vec<&str> {
        ready.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn ended() -> ShardExit {
        ShardExit::Ended { children: Vec::new() }
    }

    #[test]
    fn parents_before_children_split_and_merge() {
        // p split into a and b; a and b merged into m; q unrelated; z's parent is past retention.
        let mut s = Shards::default();
        s.update(vec![
            shard("p", &[], true),
            shard("a", &["p"], true),
            shard("b", &["p"], true),
            shard("m", &["a", "b"], false),
            shard("q", &[], false),
            shard("z", &["gone"], false),
        ]);
        let first = s.take_ready();
        assert_eq!(ids(&first), ["p", "q", "z"]);
        assert!(!first[2].1.trim_horizon, "a parent past retention was not read in this run");
        assert_eq!(first[2].1.parents, ["gone"], "but the store is asked about it");
        assert!(s.take_ready().is_empty(), "nothing twice, children wait");

        s.exited("p", &ended());
        let next = s.take_ready();
        assert_eq!(ids(&next), ["a", "b"]);
        assert!(next.iter().all(|(_, h)| h.trim_horizon), "children of a read parent start at TRIM_HORIZON");

        s.exited("a", &ended());
        assert!(s.take_ready().is_empty(), "a merge waits for both parents");
        s.exited("b", &ended());
        assert_eq!(ids(&s.take_ready()), ["m"]);
    }

    #[test]
    fn hints_at_first_listing_and_later() {
        let mut s = Shards::default();
        s.update(vec![shard("old", &[], true), shard("new", &["old"], false)]);
        let first = s.take_ready();
        assert_eq!(ids(&first), ["old"]);
        assert!(first[0].1.closed);
        // Skipped (closed, LATEST): its child is not forced to TRIM_HORIZON.
        s.exited("old", &ShardExit::Skipped);
        let next = s.take_ready();
        assert_eq!(ids(&next), ["new"]);
        assert!(!next[0].1.trim_horizon);

        // A shard that appears after the first listing is a new child: TRIM_HORIZON.
        s.update(vec![shard("new", &["old"], false), shard("brand-new", &[], false)]);
        let later = s.take_ready();
        assert_eq!(ids(&later), ["brand-new"]);
        assert!(later[0].1.trim_horizon);
    }

    #[test]
    fn stopped_shards_are_restartable_and_children_from_get_records_count() {
        let mut s = Shards::default();
        s.update(vec![shard("a", &[], false)]);
        assert_eq!(ids(&s.take_ready()), ["a"]);
        s.exited("a", &ShardExit::Stopped);
        assert_eq!(ids(&s.take_ready()), ["a"], "a stopped shard is not finished");
        s.exited("a", &ended());
        s.add_children(vec![shard("c1", &["a"], false), shard("c2", &["a"], false)]);
        assert_eq!(ids(&s.take_ready()), ["c1", "c2"]);
    }
}
