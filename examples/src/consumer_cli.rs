//! The flags and the scan loop shared by the `consumer*` examples: they differ only in their checkpoint store.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::ValueEnum;
use kinesis_consumer::{
    CheckpointStore, Consumer, ConsumerBuilder, FailurePolicy, InitialPosition, KinesisDeadLetter, Outcome, Record,
};

/// `--iterator-type`.
#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IteratorType {
    /// Only records put after the start.
    Latest,
    /// The oldest record in the stream.
    TrimHorizon,
    /// The first record at or after `--timestamp`.
    AtTimestamp,
}

/// The flags of every consumer example.
#[derive(Debug, clap::Args)]
pub struct ConsumerArgs {
    /// The stream's name or ARN (a stream of another account or region); give it more than once to read several
    /// streams with one consumer.
    #[arg(long, required = true)]
    pub stream: Vec<String>,
    /// The Kinesis endpoint (`aws` for AWS itself, with the usual credential chain).
    #[arg(long, default_value_t = crate::default_endpoint())]
    pub endpoint: String,
    /// The app name (checkpoint namespace).
    #[arg(long, default_value = "kc-example-consumer")]
    pub app: String,
    /// Where shards without a checkpoint start.
    #[arg(long, value_enum, default_value = "LATEST")]
    pub iterator_type: IteratorType,
    /// With AT_TIMESTAMP: the time, in seconds since the Unix epoch (fractions allowed).
    #[arg(long)]
    pub timestamp: Option<f64>,
    /// Split KPL aggregated records into their user records.
    #[arg(long)]
    pub aggregation: bool,
    /// Sleep this long after printing each record (a slow handler, to watch a graceful shutdown mid-batch).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// The most records one GetRecords call returns (1 to 10000); checkpoints are handed to the store once per batch.
    #[arg(long, default_value_t = 10_000, conflicts_with = "fan_out")]
    pub max_records: i32,
    /// Read with enhanced fan-out (SubscribeToShard) as the stream consumer NAME, registered if missing, instead of
    /// polling with GetRecords. Needs an endpoint with fan-out (AWS, or kinesis-local: `cargo xtask kinesis-local`).
    #[arg(long, value_name = "NAME")]
    pub fan_out: Option<String>,
    /// With --fan-out: deregister the stream consumer when stopping.
    #[arg(long, requires = "fan_out")]
    pub deregister_on_shutdown: bool,
    /// Handler calls of one shard at once, never two of one partition key (1: each shard's records in turn).
    #[arg(long, default_value_t = 1)]
    pub max_in_flight_per_shard: usize,
    /// Fetch a shard's next batch only when the current one is handled (prefetch is on by default).
    #[arg(long, conflicts_with = "fan_out")]
    pub no_prefetch: bool,
}

impl ConsumerArgs {
    /// A consumer builder configured from the flags, with a shutdown token cancelled by SIGINT/SIGTERM.
    pub async fn builder(&self) -> anyhow::Result<ConsumerBuilder> {
        let initial = match (self.iterator_type, self.timestamp) {
            (IteratorType::Latest, _) => InitialPosition::Latest,
            (IteratorType::TrimHorizon, _) => InitialPosition::TrimHorizon,
            (IteratorType::AtTimestamp, Some(t)) if t.is_finite() && t >= 0.0 => {
                InitialPosition::AtTimestamp(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t))
            }
            (IteratorType::AtTimestamp, _) => anyhow::bail!("AT_TIMESTAMP needs --timestamp SECONDS_SINCE_EPOCH"),
        };
        let builder = match self.stream.as_slice() {
            [one] => Consumer::builder(one),
            several => Consumer::builder_for_streams(several),
        };
        let mut builder = builder
            .client(crate::kinesis_client(&self.endpoint).await)
            .app_name(&self.app)
            .initial_position(initial)
            .aggregation(self.aggregation)
            .shutdown(crate::shutdown_on_signals()?);
        builder = match &self.fan_out {
            Some(name) => builder.fan_out(name).deregister_on_shutdown(self.deregister_on_shutdown),
            None if self.no_prefetch => builder.max_records(self.max_records).prefetch(false),
            None => builder.max_records(self.max_records),
        };
        Ok(builder.max_in_flight_per_shard(self.max_in_flight_per_shard))
    }

    /// Scans until SIGINT/SIGTERM, printing each record's data on its own line, checkpointing in `store`.
    pub async fn print_records(&self, store: Arc<dyn CheckpointStore>) -> anyhow::Result<()> {
        self.print_records_failing(store, &FailureArgs::default()).await
    }

    /// Like [`print_records`](Self::print_records), with a handler that fails as `failure` says and the failure
    /// policy it asks for.
    pub async fn print_records_failing(
        &self,
        store: Arc<dyn CheckpointStore>,
        failure: &FailureArgs,
    ) -> anyhow::Result<()> {
        let builder = failure.apply(self.builder().await?, &self.endpoint).await;
        let consumer = builder.shared_store(store).build().await.context("configuring the consumer")?;
        let delay = Duration::from_millis(self.delay_ms);
        let fail_on: Option<Arc<str>> = failure.fail_on.as_deref().map(Arc::from);
        let handler = move |record: Record| {
            let fail_on = fail_on.clone();
            async move {
                if let Some(needle) = fail_on.as_deref().filter(|n| contains(record.data(), n.as_bytes())) {
                    return Err(std::io::Error::other(format!("--fail-on {needle:?}: the record contains it")));
                }
                let outcome = print_record(record).await?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, std::io::Error>(outcome)
            }
        };
        consumer.scan(handler).await.context("scanning the stream")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The flags of the failure policy (the `consumer` and `consumer-postgres` examples).
#[derive(Debug, clap::Args)]
pub struct FailureArgs {
    /// Make the handler fail on every record whose data contains SUBSTRING (to watch the failure policy).
    #[arg(long, value_name = "SUBSTRING")]
    pub fail_on: Option<String>,
    /// The most handler calls per record, the first included (retries with backoff, 100 ms to 10 s); then the
    /// record is dead-lettered (--dead-letter-stream), skipped (--skip-failed) or the consumer stops.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// When the attempts are used up: log, count and skip the record instead of stopping.
    #[arg(long, conflicts_with = "dead_letter_stream")]
    pub skip_failed: bool,
    /// When the attempts are used up: put the record (as JSON) on the stream NAME (or ARN; it must exist), and go
    /// on.
    #[arg(long, value_name = "NAME")]
    pub dead_letter_stream: Option<String>,
}

impl Default for FailureArgs {
    /// What no flag asks for: the default policy (stop at the first error), no failing records.
    fn default() -> Self {
        Self { fail_on: None, max_attempts: 1, skip_failed: false, dead_letter_stream: None }
    }
}

impl FailureArgs {
    /// `builder` with the failure policy the flags ask for (a Kinesis client of `endpoint` for a dead-letter stream).
    pub async fn apply(&self, builder: ConsumerBuilder, endpoint: &str) -> ConsumerBuilder {
        let policy = match (&self.dead_letter_stream, self.skip_failed) {
            (Some(stream), _) => {
                FailurePolicy::dead_letter(KinesisDeadLetter::new(crate::kinesis_client(endpoint).await, stream))
            }
            (None, true) => FailurePolicy::skip(),
            (None, false) => FailurePolicy::stop(),
        };
        builder.on_handler_error(policy.max_attempts(self.max_attempts))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Writes the record's data and a newline to stdout, flushed: a reader sees each record as soon as it was handled.
pub async fn print_record(record: Record) -> Result<Outcome, std::io::Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(record.data())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(Outcome::Checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        failure: FailureArgs,
    }

    #[test]
    fn the_default_failure_flags_are_what_no_flag_gives() {
        let parsed = Flags::parse_from(["consumer"]).failure;
        let default = FailureArgs::default();
        assert_eq!(
            (parsed.fail_on, parsed.max_attempts, parsed.skip_failed, parsed.dead_letter_stream),
            (default.fail_on, default.max_attempts, default.skip_failed, default.dead_letter_stream)
        );
        assert!(Flags::try_parse_from(["consumer", "--max-attempts", "0"]).is_err());
        assert!(Flags::try_parse_from(["consumer", "--skip-failed", "--dead-letter-stream", "d"]).is_err());
    }
}
