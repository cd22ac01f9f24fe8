//! Shard discovery, for the single consumer and for a group's workers alike: what the stream is ([`describe`]: its
//! ARN and creation time, once at the start), listing the stream's shards (following NextToken, retried as [`list`]
//! says), and, for the single consumer, [`Shards`]: which shards can start and how (parents before children).

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{ApiError, ApiErrorKind, KinesisApi, ShardInfo, StreamSummary};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::retry::{retry, setup_call, Policy, Retried};
use crate::shard::{ShardExit, StartHint};

/// The outcome of listing the shards.
pub(crate) enum Listing {
    Shards(Vec<ShardInfo>),
    /// A retryable failure while scanning: keep the shards known so far.
    Unavailable,
    Cancelled,
}

/// The discovery interval's timer: its first tick one interval from now, a late tick delayed rather than caught up.
pub(crate) fn ticker(every: std::time::Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    ticker
}

/// The stream's ARN and creation time (DescribeStreamSummary), asked once when its scan starts; throttling and
/// transient failures are retried. `None` if `stop` fired meanwhile. A missing stream is a
/// [`StreamNotFound`](ErrorKind::StreamNotFound) error, any other failure a [`Kinesis`](ErrorKind::Kinesis) error
/// (e.g. a service that refuses a stream ARN: kinesalite answers a `StreamARN` with a ValidationException).
pub(crate) async fn describe(
    api: &dyn KinesisApi,
    cfg: &Config,
    stop: &CancellationToken,
) -> Result<Option<StreamSummary>, Error> {
    let stream = cfg.stream.as_str();
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    // Bounded by the call timeout in the API itself (`limit`: from when the call is sent, not queued).
    match setup_call(&mut backoff, stop, "DescribeStreamSummary", || api.describe_stream_summary(stream)).await {
        None => Ok(None),
        Some(Ok(summary)) => Ok(Some(summary)),
        Some(Err(e)) => {
            let kind = if e.kind() == ApiErrorKind::NotFound { ErrorKind::StreamNotFound } else { ErrorKind::Kinesis };
            Err(Error::new(kind, "DescribeStreamSummary failed").with_source(e).at(stream, None))
        }
    }
}

/// Every shard of the stream, following NextToken. A missing stream or a permanent failure is an error. A retryable
/// failure is retried with backoff at the `first` listing (nothing can start without it), each time from the first
/// page; later it gives [`Listing::Unavailable`] at once, so that the caller keeps watching its shard tasks (a handler
/// error must stop the scan even while ListShards fails) and tries again at the next discovery.
pub(crate) async fn list(
    api: &dyn KinesisApi,
    cfg: &Config,
    stop: &CancellationToken,
    first: bool,
) -> Result<Listing, Error> {
    let stream = cfg.stream.as_str();
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    let all_pages = || async move {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Each page is bounded by the call timeout in the API itself (see `limit`).
            let page = api.list_shards(stream, token.as_deref()).await?;
            shards.extend(page.shards);
            match page.next_token {
                Some(next) => token = Some(next),
                None => return Ok(shards),
            }
        }
    };
    let policy = Policy { cancel: stop, backoff: &mut backoff };
    let listed = retry(policy, all_pages, |err: &ApiError, delay, _| {
        if first {
            warn!(error = %err, ?delay, "ListShards failed; retrying");
            Retried::Again
        } else {
            warn!(error = %err, "ListShards failed; trying again at the next discovery");
            Retried::GiveUp
        }
    })
    .await;
    match listed {
        None => Ok(Listing::Cancelled),
        Some(Ok(shards)) => Ok(Listing::Shards(shards)),
        Some(Err(err)) if err.is_retryable() => Ok(Listing::Unavailable),
        Some(Err(err)) => {
            let kind =
                if err.kind() == ApiErrorKind::NotFound { ErrorKind::StreamNotFound } else { ErrorKind::Kinesis };
            let what = if first { "ListShards failed" } else { "ListShards failed while scanning" };
            Err(Error::new(kind, what).with_source(err).at(stream, None))
        }
    }
}

/// What the consumer knows of the stream's shards in this run.
#[derive(Debug, Default)]
pub(crate) struct Shards {
    /// The shards of the last listing (plus children GetRecords reported since).
    known: HashMap<String, ShardInfo>,
    /// Children GetRecords reported that no listing had yet: a listing that started before they were created (its
    /// answer can arrive after a parent's end, the relist runs beside the shard tasks) does not drop them.
    reported: HashMap<String, ShardInfo>,
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
        let known = &mut self.known;
        self.reported.retain(|id, child| {
            let listed = known.contains_key(id);
            if !listed {
                known.insert(id.clone(), child.clone());
            }
            !listed
        });
        if self.initial.is_none() {
            info!(shards = self.known.len(), "shards listed");
            self.initial = Some(self.known.keys().cloned().collect());
        }
    }

    /// Adds children that GetRecords reported at the end of a parent.
    pub(crate) fn add_children(&mut self, children: Vec<ShardInfo>) {
        for child in children {
            if !self.known.contains_key(&child.shard_id) {
                self.reported.insert(child.shard_id.clone(), child.clone());
                self.known.insert(child.shard_id.clone(), child);
            }
        }
    }

    /// Whether a known shard names `shard_id` as a parent (Kinesis lists a split's two children together, so then all
    /// of its children are known).
    pub(crate) fn children_known(&self, shard_id: &str) -> bool {
        self.known.values().any(|s| s.parents().any(|p| p == shard_id))
    }

    /// The shards that can start now, with how they start: not running, not finished, and every parent finished or
    /// gone from the listing (past the stream's retention) and not running (a parent that left the listing while its
    /// task still hands out the records it fetched finishes first). Marks them running.
    pub(crate) fn take_ready(&mut self) -> Vec<(String, StartHint)> {
        let mut ready: Vec<(String, StartHint)> = self
            .known
            .values()
            .filter(|s| !self.running.contains(&s.shard_id) && !self.finished.contains(&s.shard_id))
            .filter(|s| {
                s.parents()
                    .all(|p| self.finished.contains(p) || (!self.known.contains_key(p) && !self.running.contains(p)))
            })
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
    fn a_running_parent_that_left_the_listing_still_holds_its_children_back() {
        let mut s = Shards::default();
        s.update(vec![shard("p", &[], true), shard("c", &["p"], false)]);
        assert_eq!(ids(&s.take_ready()), ["p"]);
        // The parent passes the retention while its task still hands out the records it fetched.
        s.update(vec![shard("c", &["p"], false)]);
        assert!(s.take_ready().is_empty(), "the child waits for its running parent");
        s.exited("p", &ended());
        assert_eq!(ids(&s.take_ready()), ["c"]);
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
    fn a_listing_without_the_reported_children_keeps_them_until_one_lists_them() {
        let mut s = Shards::default();
        s.update(vec![shard("a", &[], false), shard("b", &[], false)]);
        assert_eq!(ids(&s.take_ready()), ["a", "b"]);
        assert!(!s.children_known("a"));
        s.exited("a", &ended());
        s.add_children(vec![shard("m", &["a", "b"], false)]);
        assert!(s.children_known("a") && s.children_known("b"));
        // A listing made before the merge answers late: m is kept.
        s.update(vec![shard("a", &[], false), shard("b", &[], false)]);
        assert!(s.children_known("b"));
        s.exited("b", &ended());
        assert_eq!(ids(&s.take_ready()), ["m"]);
        // Once listed, m is the listing's like any shard: a later listing without it (past retention) drops it.
        s.update(vec![shard("m", &["a", "b"], false)]);
        s.update(vec![]);
        assert!(!s.children_known("a"));
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
