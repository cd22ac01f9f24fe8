//! The polling source: a shard iterator and GetRecords, paced (at once when behind, else the scan interval, never
//! under the 5 calls/s per shard limit), with expired iterators replaced after the last handled record.

use std::sync::Arc;

use kc_checkpoint::Checkpoint;
// Tokio's clock, which the pacing sleeps on: the same instant in production, paused time in the tests.
use tokio::time::Instant;
use tracing::warn;

use super::{resume_position, Context, Fetched};
use crate::api::{ApiErrorKind, KinesisApi, RecordBatch, StartingPosition};
use crate::error::Error;

/// The polling source of one shard.
pub(crate) struct Polling {
    start: StartingPosition,
    iterator: Option<String>,
    /// When the previous GetRecords started, and whether the shard was behind after it.
    previous: Option<(Instant, bool)>,
}

impl Polling {
    pub(crate) fn new(start: StartingPosition) -> Self {
        Self { start, iterator: None, previous: None }
    }

    /// The next batch; `None` when cancelled.
    pub(crate) async fn next(
        &mut self,
        cx: &mut Context,
        last_handled: Option<&Checkpoint>,
    ) -> Result<Option<Fetched>, Error> {
        if let Some((started, behind)) = self.previous {
            let floor = cx.cfg.min_poll_interval.saturating_sub(started.elapsed());
            let wait = if behind { floor } else { cx.cfg.scan_interval.max(floor) };
            if !wait.is_zero() && !cx.sleep(wait).await {
                return Ok(None);
            }
        }
        let mut iterator = match self.iterator.take() {
            Some(it) => it,
            None => match cx.iterator(&self.start).await? {
                Some(it) => it,
                None => return Ok(None),
            },
        };
        let limit = cx.cfg.max_records;
        loop {
            let call_started = Instant::now();
            let current = Arc::<str>::from(iterator.as_str());
            let fetch = |api: Arc<dyn KinesisApi>| {
                let current = Arc::clone(&current);
                async move { api.get_records(&current, limit).await }
            };
            let batch = match cx.call(fetch).await {
                Some(Ok(batch)) => batch,
                Some(Err(e)) if e.kind() == ApiErrorKind::ExpiredIterator => {
                    let position = resume_position(&self.start, last_handled);
                    warn!(position = ?position, "shard iterator expired; getting a new one");
                    cx.metrics.retry("expired_iterator");
                    match cx.iterator(&position).await? {
                        Some(it) => {
                            iterator = it;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                Some(Err(e)) => return Err(cx.api_error("GetRecords", e)),
                None => return Ok(None),
            };
            let RecordBatch { records, next_shard_iterator, millis_behind_latest, child_shards } = batch;
            let fetched = records.len();
            let behind = fetched > 0 && (millis_behind_latest.unwrap_or(0) > 0 || fetched >= limit as usize);
            self.previous = Some((call_started, behind));
            let end = match next_shard_iterator {
                Some(next) => {
                    self.iterator = Some(next);
                    None
                }
                None => Some(child_shards),
            };
            return Ok(Some(Fetched { records, millis_behind_latest, end }));
        }
    }
}
