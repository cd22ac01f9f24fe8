//! The polling source: a shard iterator and GetRecords, paced (at once when behind, else the scan interval, growing
//! to the idle interval while answers are empty and caught up; never under the 5 calls/s per shard limit), with
//! expired iterators replaced after the last record fetched (every record before it is handled, or in the reader's
//! hands: the batch being delivered while the next is prefetched).

use std::sync::Arc;
use std::time::Duration;

use kc_checkpoint::Checkpoint;
// Tokio's clock, which the pacing sleeps on: the same instant in production, paused time in the tests.
use tokio::time::Instant;
use tracing::warn;

use super::{Context, Fetched};
use crate::api::{ApiErrorKind, KinesisApi, RecordBatch, StartingPosition};
use crate::error::Error;

/// The polling source of one shard.
pub(crate) struct Polling {
    start: StartingPosition,
    iterator: Option<String>,
    /// When the previous GetRecords started, and whether the shard was behind after it.
    previous: Option<(Instant, bool)>,
    /// How many answers in a row were empty and caught up (MillisBehindLatest 0): the shard is idle.
    empty: u32,
    /// The sequence number of the last record fetched: where an expired iterator is replaced.
    last_fetched: Option<kc_checkpoint::SequenceNumber>,
}

/// How long an idle shard waits before its next GetRecords after `empty` empty, caught-up answers in a row: the scan
/// interval, doubled after each further empty answer up to `max_idle` (never below the scan interval).
pub(crate) fn idle_wait(scan_interval: Duration, max_idle: Duration, empty: u32) -> Duration {
    let doublings = empty.saturating_sub(1).min(31);
    scan_interval.saturating_mul(1 << doublings).min(max_idle.max(scan_interval))
}

impl Polling {
    pub(crate) fn new(start: StartingPosition) -> Self {
        Self { start, iterator: None, previous: None, empty: 0, last_fetched: None }
    }

    /// The next batch; `None` when cancelled. An expired iterator is replaced after the last record fetched, or at
    /// the start when none was (the last handled record, `_last_handled`, is never later than that).
    pub(crate) async fn next(
        &mut self,
        cx: &mut Context,
        _last_handled: Option<&Checkpoint>,
    ) -> Result<Option<Fetched>, Error> {
        if let Some((started, behind)) = self.previous {
            let floor = cx.cfg.min_poll_interval.saturating_sub(started.elapsed());
            let wait = if behind {
                floor
            } else {
                idle_wait(cx.cfg.scan_interval, cx.cfg.max_idle_interval, self.empty).max(floor)
            };
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
                    let position = match &self.last_fetched {
                        Some(sequence) => StartingPosition::AfterSequenceNumber(sequence.clone()),
                        None => self.start.clone(),
                    };
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
            if let Some(last) = records.last() {
                // Checked again (and reported) when the reader expands the batch; an invalid one is an error there.
                if let Ok(sequence) = kc_checkpoint::SequenceNumber::parse(&last.sequence_number) {
                    self.last_fetched = Some(sequence);
                }
            }
            let behind = fetched > 0 && (millis_behind_latest.unwrap_or(0) > 0 || fetched >= limit as usize);
            self.previous = Some((call_started, behind));
            // Empty and caught up: idle, poll less and less often. Records (or an empty answer that is behind,
            // as AWS gives while it walks a shard) bring the pace back at once.
            let caught_up = millis_behind_latest.unwrap_or(0) <= 0;
            self.empty = if fetched == 0 && caught_up { self.empty.saturating_add(1) } else { 0 };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_waits_grow_from_the_scan_interval_to_the_cap() {
        let ms = Duration::from_millis;
        let cases = [
            // (scan interval, cap, empty answers in a row, wait)
            (ms(250), ms(1000), 0, ms(250)),
            (ms(250), ms(1000), 1, ms(250)),
            (ms(250), ms(1000), 2, ms(500)),
            (ms(250), ms(1000), 3, ms(1000)),
            (ms(250), ms(1000), 4, ms(1000)),
            (ms(250), ms(1000), u32::MAX, ms(1000)),
            (ms(300), ms(1000), 3, ms(1000)),
            // A cap at or below the scan interval turns the backoff off.
            (ms(250), ms(250), 5, ms(250)),
            (ms(2000), ms(1000), 5, ms(2000)),
            (crate::MAX_DURATION, crate::MAX_DURATION, u32::MAX, crate::MAX_DURATION),
        ];
        for (scan, cap, empty, want) in cases {
            assert_eq!(idle_wait(scan, cap, empty), want, "scan {scan:?}, cap {cap:?}, {empty} empty");
        }
    }
}
