//! The group's change marker: one entry of the lease table whose counter a worker bumps after it released leases or
//! asked for some, and that every worker reads every watch interval. A change makes the readers run a take cycle at
//! once, so that a released lease is taken, and a request is seen by the lease's owner, within the watch interval
//! rather than at the next take cycle (up to twice the lease duration later).
//!
//! The marker is a lease like the others (the same four calls: `get`, `create`, and `take` to bump the counter), in a
//! scope of its own, [`SCOPE_STREAM`] beside the group's name, keyed by the stream's name: it never appears in the
//! listing of the stream's leases, and a table of any backend holds it without a change of schema. Its owner is the
//! last worker that bumped it; nothing reads the owner.

use std::sync::Arc;

use kc_checkpoint::lease::{LeaseScope, LeaseTable};
use kc_checkpoint::ErrorKind as StoreErrorKind;
use tracing::{debug, warn};

/// The stream name of the markers' scope: `#` is not allowed in a Kinesis stream name, so no stream's leases share
/// the scope.
pub(crate) const SCOPE_STREAM: &str = "#changes";

pub(crate) struct Changes {
    table: Arc<dyn LeaseTable>,
    scope: LeaseScope,
    id: String,
    worker: String,
    /// The marker's counter when this worker last read it.
    seen: Option<u64>,
}

impl Changes {
    pub(crate) fn new(table: Arc<dyn LeaseTable>, group: &str, stream: &str, worker: &str) -> Self {
        Self {
            table,
            scope: LeaseScope::new(group, SCOPE_STREAM),
            id: stream.to_owned(),
            worker: worker.to_owned(),
            seen: None,
        }
    }

    /// Whether another worker bumped the marker since this one last read it (false at the first read, and when the
    /// marker cannot be read: the take cycles go on at their own pace).
    pub(crate) async fn changed(&mut self) -> bool {
        match self.table.get(&self.scope, &self.id).await {
            Ok(Some(marker)) => {
                let changed = self.seen.is_some_and(|seen| seen != marker.counter);
                self.seen = Some(marker.counter);
                changed
            }
            Ok(None) => {
                if let Err(e) = self.table.create(&self.scope, &self.id, &[]).await {
                    debug!(error = %e, "creating the group's change marker failed");
                }
                false
            }
            Err(e) => {
                debug!(error = %e, "reading the group's change marker failed");
                false
            }
        }
    }

    /// Tells the other workers to look at the leases now. Best effort: a marker that cannot be written leaves them to
    /// their next take cycle.
    pub(crate) async fn bump(&mut self) {
        for _ in 0..3 {
            let marker = match self.table.get(&self.scope, &self.id).await {
                Ok(Some(marker)) => marker,
                Ok(None) => match self.table.create(&self.scope, &self.id, &[]).await {
                    Ok(_) => continue,
                    Err(e) => return warn!(error = %e, "creating the group's change marker failed"),
                },
                Err(e) => return warn!(error = %e, "reading the group's change marker failed"),
            };
            match self.table.take(&self.scope, &self.id, marker.counter, &self.worker).await {
                Ok(bumped) => {
                    // This worker's own change does not wake it; one by another worker since its last read still does.
                    if self.seen == Some(marker.counter) {
                        self.seen = Some(bumped.counter);
                    }
                    return;
                }
                // Bumped by another worker meanwhile: read it again and bump once more, so that readers that saw that
                // bump also see this one.
                Err(e) if e.kind() == StoreErrorKind::Fenced => {}
                Err(e) => return warn!(error = %e, "bumping the group's change marker failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::lease::MemoryLeaseTable;

    #[tokio::test]
    async fn a_bump_is_seen_by_the_others_once_and_not_by_the_bumper() {
        let table = Arc::new(MemoryLeaseTable::new());
        let mut a = Changes::new(Arc::clone(&table) as Arc<dyn LeaseTable>, "g", "st", "a");
        let mut b = Changes::new(Arc::clone(&table) as Arc<dyn LeaseTable>, "g", "st", "b");
        let mut other_stream = Changes::new(Arc::clone(&table) as Arc<dyn LeaseTable>, "g", "st2", "c");
        assert!(!a.changed().await, "missing: created");
        assert!(!a.changed().await && !b.changed().await && !other_stream.changed().await, "first reads");
        a.bump().await;
        assert!(!a.changed().await, "its own bump");
        assert!(b.changed().await, "seen by another worker");
        assert!(!b.changed().await, "once");
        assert!(!other_stream.changed().await, "a marker per stream");
        // A bump by b between a's read and a's own bump still wakes a.
        b.bump().await;
        a.bump().await;
        assert!(a.changed().await);
        assert!(table.list(&LeaseScope::new("g", "st")).await.expect("list").is_empty(), "not among the leases");
    }
}
