//! The contract of a shard task, between whoever starts it (the scan's supervisor, a group's worker) and the reader
//! that runs it: how a shard with no checkpoint starts, and how its task ended.

use crate::api::ShardInfo;

/// How a shard with no checkpoint starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StartHint {
    /// Start at TRIM_HORIZON: the shard appeared while running, or one of its parents was read in this run.
    pub(crate) trim_horizon: bool,
    /// Parents to look up in the store: if any has a checkpoint, the shard starts at TRIM_HORIZON too.
    pub(crate) parents: Vec<String>,
    /// The shard is closed: with [`InitialPosition::Latest`](crate::InitialPosition::Latest) there is nothing to read, it is skipped.
    pub(crate) closed: bool,
    /// With [`InitialPosition::Latest`](crate::InitialPosition::Latest): start at AT_TIMESTAMP of this time instead of LATEST (a consumer group
    /// taking over a lease that has no checkpoint yet).
    pub(crate) latest_since: Option<std::time::SystemTime>,
}

/// How a shard task ended without error.
#[derive(Debug)]
pub(crate) enum ShardExit {
    /// Read to its end (now or in an earlier run); `children` as GetRecords reported them.
    Ended { children: Vec<ShardInfo> },
    /// Closed, no checkpoint, initial position LATEST: nothing to read.
    Skipped,
    /// Stopped before its end by cancellation.
    Stopped,
}

/// What delivery and the failure policy see of the shard they deliver: names for logs and errors, the shard's
/// cancellation (a stop, or a lost lease) and its metrics.
pub(crate) struct ShardCx<'a> {
    /// This reader of the shard, unique in the process (a shard read again has a new one).
    pub(crate) reader: u64,
    pub(crate) stream: &'a str,
    pub(crate) id: &'a std::sync::Arc<str>,
    pub(crate) cancel: &'a tokio_util::sync::CancellationToken,
    pub(crate) metrics: &'a crate::metrics::ShardMetrics,
}
