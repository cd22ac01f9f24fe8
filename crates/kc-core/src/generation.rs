//! Which stream the checkpoints belong to when a stream was deleted and created again under the same name.
//!
//! A stream created again has the same shard ids (`shardId-000000000000`, ...) but none of the old records, so the
//! old stream's checkpoints (a `ShardEnd`, a sequence number that no longer exists) must not apply to it. The first
//! time an app's checkpoints (or a group's leases) meet a stream, the stream's creation time is recorded beside them:
//! a marker. A later start that finds the marker and a stream created at another time knows that the stream is a new
//! one and keys its checkpoints (or leases) by `{stream}@{creation ms}` instead of `{stream}`, so it starts at the
//! initial position; the old stream's checkpoints stay as they were. `@` is not allowed in stream names or ARNs, so
//! no stream has such a key. A stream named by its ARN is keyed by its ARN (`{arn}@{creation ms}` when created
//! again).
//!
//! Where the marker lives, without a change of schema in any backend:
//! - a checkpoint store: the checkpoint of the shard [`MARKER`] of the stream, a sequence number that is the creation
//!   time in ms (written once, when missing);
//! - a group's lease table: an entry keyed by the stream (name or ARN, as given) in the scope (group, [`MARKER`]), the
//!   creation time in its parents (set by `create`, which only one worker wins).
//!
//! Checkpoints written before markers existed are the stream's: with no marker there is no way to tell, and the
//! marker is written then. An implementation of `KinesisApi` that does not tell the creation time gets the plain key.

use std::sync::Arc;

use kc_checkpoint::lease::{LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, ErrorKind};

/// The shard id of the marker in a checkpoint store, and the stream name of its scope in a lease table (`#` is not
/// allowed in shard ids or stream names).
pub(crate) const MARKER: &str = "#created";

/// Where the marker is kept.
pub(crate) enum MarkerAt<'a> {
    /// The consumer's checkpoint store.
    Store(&'a dyn CheckpointStore),
    /// A group's lease table, and the group's name.
    Leases(&'a dyn LeaseTable, &'a str),
}

/// The key of the stream's checkpoints or leases: the stream as given (its name or its ARN), or
/// `{stream}@{creation ms}` when the stream was created again since the marker was written. `created_ms` is the
/// stream's creation time as DescribeStreamSummary told it (`None`: unknown, the plain key). `None` if `cancel` fired
/// meanwhile.
pub(crate) async fn stream_key(
    cfg: &Config,
    created_ms: Option<u64>,
    cancel: &CancellationToken,
    at: MarkerAt<'_>,
) -> Result<Option<Arc<str>>, Error> {
    let stream = cfg.stream.as_str();
    let Some(created) = created_ms else {
        return Ok(Some(Arc::from(stream)));
    };
    // A stop does not wait for the marker's calls (each bounded by the store timeout): nothing started yet.
    let marker = async {
        match at {
            MarkerAt::Store(store) => from_store(cfg, store, created).await,
            MarkerAt::Leases(table, group) => from_leases(cfg, table, group, created).await,
        }
    };
    let first = tokio::select! {
        biased;
        _ = cancel.cancelled() => return Ok(None),
        first = marker => first?,
    };
    if first == created {
        return Ok(Some(Arc::from(stream)));
    }
    let key = format!("{stream}@{created}");
    warn!(
        created_ms = created,
        first_created_ms = first,
        key = %key,
        "the stream was deleted and created again since its checkpoints were first written: the old checkpoints are \
         not used, the new stream's are kept under their own key"
    );
    Ok(Some(Arc::from(key)))
}

fn store_error(cfg: &Config, what: &str, e: kc_checkpoint::Error) -> Error {
    Error::new(ErrorKind::Checkpoint, format!("checkpoint store: {what} the stream's creation marker failed"))
        .with_source(e)
        .at(&cfg.stream, None)
}

/// The creation time in the store's marker; written (and flushed) as `created` when missing.
async fn from_store(cfg: &Config, store: &dyn CheckpointStore, created: u64) -> Result<u64, Error> {
    let key = ShardKey::new(cfg.app.as_str(), cfg.stream.as_str(), MARKER);
    match store.get(&key).await.map_err(|e| store_error(cfg, "reading", e))? {
        Some(Checkpoint::At { sequence, .. }) => Ok(sequence.as_str().parse().unwrap_or(created)),
        // Not written by this crate: the plain key, as before markers.
        Some(Checkpoint::ShardEnd) => Ok(created),
        None => {
            let marker = SequenceNumber::parse(created.to_string()).map_err(|e| store_error(cfg, "writing", e))?;
            store.set(&key, Checkpoint::at(marker)).await.map_err(|e| store_error(cfg, "writing", e))?;
            store.flush().await.map_err(|e| store_error(cfg, "writing", e))?;
            info!(created_ms = created, "recorded the stream's creation time beside its checkpoints");
            Ok(created)
        }
    }
}

/// The creation time in the group's marker; created as `created` when missing (the first worker's wins).
async fn from_leases(cfg: &Config, table: &dyn LeaseTable, group: &str, created: u64) -> Result<u64, Error> {
    let scope = LeaseScope::new(group, MARKER);
    let stream = cfg.stream.as_str();
    let lease_error = |what: &str, e: kc_checkpoint::Error| {
        Error::new(ErrorKind::Checkpoint, format!("lease table: {what} the stream's creation marker failed"))
            .with_source(e)
            .at(stream, None)
    };
    let read = |lease: Option<kc_checkpoint::lease::Lease>| {
        lease.and_then(|l| l.parents.first().and_then(|p| p.parse::<u64>().ok()))
    };
    if let Some(first) = read(table.get(&scope, stream).await.map_err(|e| lease_error("reading", e))?) {
        return Ok(first);
    }
    table.create(&scope, stream, &[created.to_string()]).await.map_err(|e| lease_error("writing", e))?;
    let first = read(table.get(&scope, stream).await.map_err(|e| lease_error("reading", e))?);
    Ok(first.unwrap_or(created))
}
