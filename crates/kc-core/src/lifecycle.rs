//! Shard lifecycle events, outside the record path.

use crate::api::StartingPosition;

/// Receives shard lifecycle events. Every method has a no-op default; implement the ones you need.
///
/// Methods are called from the shard's task: keep them short (send to a channel for real work).
pub trait Lifecycle: Send + Sync + 'static {
    /// The consumer started reading `shard_id` at `position` (its checkpoint or the initial position).
    fn shard_started(&self, shard_id: &str, position: &StartingPosition) {
        let _ = (shard_id, position);
    }

    /// `shard_id` was read to its end: its last record was handled and its end was recorded in the checkpoint store.
    fn shard_closed(&self, shard_id: &str) {
        let _ = shard_id;
    }

    /// The consumer stopped reading `shard_id` before its end (cancelled, or the scan stopped on an error).
    fn shard_stopped(&self, shard_id: &str) {
        let _ = shard_id;
    }

    /// Consumer groups: this worker took the lease of `shard_id` and starts reading it.
    fn lease_gained(&self, shard_id: &str) {
        let _ = shard_id;
    }

    /// Consumer groups: this worker lost the lease of `shard_id` (another worker took it, or it could not be renewed
    /// within the lease duration). The shard was stopped without a further checkpoint.
    fn lease_lost(&self, shard_id: &str) {
        let _ = shard_id;
    }
}

/// The default: ignores every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLifecycle;

impl Lifecycle for NoLifecycle {}

/// A [`Lifecycle`] that calls a function when a shard is closed (see [`ConsumerBuilder::on_shard_closed`]).
///
/// [`ConsumerBuilder::on_shard_closed`]: crate::ConsumerBuilder::on_shard_closed
pub(crate) struct OnShardClosed<F>(pub(crate) F);

impl<F: Fn(&str) + Send + Sync + 'static> Lifecycle for OnShardClosed<F> {
    fn shard_closed(&self, shard_id: &str) {
        (self.0)(shard_id)
    }
}
