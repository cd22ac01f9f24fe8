//! Metrics, through the [`metrics`] facade: install any recorder (Prometheus, StatsD, ...) to collect them.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `kinesis_consumer_records_total` | counter | app, stream, shard | records handed to the handler (the Go library's `records`) |
//! | `kinesis_consumer_checkpoints_total` | counter | app, stream, shard | checkpoints written to the store (the Go library's `checkpoints`) |
//! | `kinesis_consumer_millis_behind_latest` | gauge | app, stream, shard | MillisBehindLatest of the shard's last GetRecords; 0 once this process stops reading the shard (ended, lease lost, scan stopped) |
//! | `kinesis_consumer_retries_total` | counter | app, stream, shard, reason | Kinesis calls retried (`throttled`, `transient`, `expired_iterator`), handler calls retried by the [failure policy](crate::FailurePolicy) (`handler`), sends to a dead-letter destination retried (`dead_letter`) |
//! | `kinesis_consumer_handler_errors_total` | counter | app, stream, shard | handler calls that returned an error (every attempt) |
//! | `kinesis_consumer_skipped_total` | counter | app, stream, shard | records skipped by the failure policy after their attempts were used up |
//! | `kinesis_consumer_dead_lettered_total` | counter | app, stream, shard | records a dead-letter destination accepted |
//! | `kinesis_consumer_handler_stalls_total` | counter | app, stream, shard | handler calls that ran longer than the [handler timeout](crate::ConsumerBuilder::handler_timeout) |
//! | `kinesis_consumer_deaggregation_errors_total` | counter | app, stream, shard | corrupt KPL aggregates delivered as one record |
//! | `kinesis_consumer_checkpoints_past_retention_total` | counter | app, stream, shard | checkpoints (or positions) no longer in the shard (past the retention): read from TRIM_HORIZON instead |
//! | `kinesis_consumer_shards_gone_total` | counter | app, stream, shard | shards finished because they left the stream (past its retention) before they were read to their end |
//!
//! | `kinesis_consumer_leases_held` | gauge | group, stream, worker | leases this worker holds (consumer groups) |
//! | `kinesis_consumer_leases_taken_total` | counter | group, stream, worker | leases this worker took |
//! | `kinesis_consumer_leases_lost_total` | counter | group, stream, worker | leases taken from this worker, or not renewed in time |
//! | `kinesis_consumer_workers` | gauge | group, stream, worker | live workers this worker sees in its group |
//!
//! Handles are registered once per shard, so the per-record cost is one atomic add per batch.

use std::sync::Arc;

use metrics::{Counter, Gauge};

/// Metric names, for recorders and dashboards.
pub mod names {
    /// Records handed to the handler.
    pub const RECORDS: &str = "kinesis_consumer_records_total";
    /// Checkpoints written to the store.
    pub const CHECKPOINTS: &str = "kinesis_consumer_checkpoints_total";
    /// MillisBehindLatest of a shard's last GetRecords.
    pub const MILLIS_BEHIND_LATEST: &str = "kinesis_consumer_millis_behind_latest";
    /// Kinesis calls retried.
    pub const RETRIES: &str = "kinesis_consumer_retries_total";
    /// Corrupt KPL aggregates delivered as one record.
    pub const DEAGGREGATION_ERRORS: &str = "kinesis_consumer_deaggregation_errors_total";
    /// Checkpoints no longer in the shard (past the retention), read from TRIM_HORIZON instead.
    pub const CHECKPOINTS_PAST_RETENTION: &str = "kinesis_consumer_checkpoints_past_retention_total";
    /// Shards finished because they left the stream (past its retention) before they were read to their end.
    pub const SHARDS_GONE: &str = "kinesis_consumer_shards_gone_total";
    /// Handler calls that returned an error.
    pub const HANDLER_ERRORS: &str = "kinesis_consumer_handler_errors_total";
    /// Records skipped by the failure policy.
    pub const SKIPPED: &str = "kinesis_consumer_skipped_total";
    /// Records a dead-letter destination accepted.
    pub const DEAD_LETTERED: &str = "kinesis_consumer_dead_lettered_total";
    /// Handler calls that ran longer than the handler timeout.
    pub const HANDLER_STALLS: &str = "kinesis_consumer_handler_stalls_total";
    /// Leases a group worker holds.
    pub const LEASES_HELD: &str = "kinesis_consumer_leases_held";
    /// Leases a group worker took.
    pub const LEASES_TAKEN: &str = "kinesis_consumer_leases_taken_total";
    /// Leases a group worker lost.
    pub const LEASES_LOST: &str = "kinesis_consumer_leases_lost_total";
    /// Live workers a group worker sees.
    pub const WORKERS: &str = "kinesis_consumer_workers";
}

/// The metrics of a worker in a consumer group.
pub(crate) struct GroupMetrics {
    held: Gauge,
    taken: Counter,
    lost: Counter,
    workers: Gauge,
}

impl GroupMetrics {
    pub(crate) fn new(group: &str, stream: &str, worker: &str) -> Self {
        let labels = [("group", group.to_owned()), ("stream", stream.to_owned()), ("worker", worker.to_owned())];
        Self {
            held: metrics::gauge!(names::LEASES_HELD, &labels),
            taken: metrics::counter!(names::LEASES_TAKEN, &labels),
            lost: metrics::counter!(names::LEASES_LOST, &labels),
            workers: metrics::gauge!(names::WORKERS, &labels),
        }
    }

    pub(crate) fn held(&self, n: usize) {
        self.held.set(n as f64);
    }

    pub(crate) fn taken(&self, held: usize) {
        self.taken.increment(1);
        self.held(held);
    }

    pub(crate) fn lost(&self) {
        self.lost.increment(1);
    }

    pub(crate) fn workers(&self, n: usize) {
        self.workers.set(n as f64);
    }
}

#[derive(Clone)]
pub(crate) struct ShardMetrics {
    labels: [(&'static str, String); 3],
    records: Counter,
    checkpoints: Counter,
    millis_behind: Gauge,
    deaggregation_errors: Counter,
    /// Shared by the clones: the last one dropped clears the lag gauge.
    _clear: Arc<ClearOnDrop>,
}

/// Sets a shard's MillisBehindLatest gauge to 0 when the last handle of its reader goes (the shard ended, its lease
/// was lost or handed over, the scan stopped): the `metrics` facade cannot unregister a gauge, and the last lag
/// would otherwise stay in the export of a process that no longer reads the shard. If the same process reads the
/// shard again at once (a lease taken back), its next fetch sets the gauge again.
struct ClearOnDrop(Gauge);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

impl ShardMetrics {
    pub(crate) fn new(app: &str, stream: &str, shard: &str) -> Self {
        let labels = [("app", app.to_owned()), ("stream", stream.to_owned()), ("shard", shard.to_owned())];
        let millis_behind = metrics::gauge!(names::MILLIS_BEHIND_LATEST, &labels);
        Self {
            records: metrics::counter!(names::RECORDS, &labels),
            checkpoints: metrics::counter!(names::CHECKPOINTS, &labels),
            _clear: Arc::new(ClearOnDrop(millis_behind.clone())),
            millis_behind,
            deaggregation_errors: metrics::counter!(names::DEAGGREGATION_ERRORS, &labels),
            labels,
        }
    }

    pub(crate) fn records(&self, n: u64) {
        self.records.increment(n);
    }

    pub(crate) fn checkpoint(&self) {
        self.checkpoints.increment(1);
    }

    pub(crate) fn millis_behind_latest(&self, ms: i64) {
        self.millis_behind.set(ms as f64);
    }

    pub(crate) fn deaggregation_error(&self) {
        self.deaggregation_errors.increment(1);
    }

    /// A checkpoint no longer in the shard (rare: the handle is looked up).
    pub(crate) fn past_retention(&self) {
        metrics::counter!(names::CHECKPOINTS_PAST_RETENTION, &self.labels).increment(1);
    }

    /// The shard left the stream before it was read to its end (rare: the handle is looked up).
    pub(crate) fn gone(&self) {
        metrics::counter!(names::SHARDS_GONE, &self.labels).increment(1);
    }

    /// A handler call failed (rare: the handle is looked up).
    pub(crate) fn handler_error(&self) {
        metrics::counter!(names::HANDLER_ERRORS, &self.labels).increment(1);
    }

    /// Records skipped by the failure policy (rare: the handle is looked up).
    pub(crate) fn skipped(&self, n: u64) {
        metrics::counter!(names::SKIPPED, &self.labels).increment(n);
    }

    /// A record went to the dead-letter destination (rare: the handle is looked up).
    pub(crate) fn dead_lettered(&self) {
        metrics::counter!(names::DEAD_LETTERED, &self.labels).increment(1);
    }

    /// A handler call ran longer than the handler timeout (rare: the handle is looked up).
    pub(crate) fn stall(&self) {
        metrics::counter!(names::HANDLER_STALLS, &self.labels).increment(1);
    }

    /// Retries are rare: the handle is looked up each time.
    pub(crate) fn retry(&self, reason: &'static str) {
        let [app, stream, shard] = &self.labels;
        metrics::counter!(names::RETRIES, &[app.clone(), stream.clone(), shard.clone(), ("reason", reason.to_owned())])
            .increment(1);
    }
}
