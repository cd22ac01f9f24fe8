//! The flags and the scan loop shared by the `consumer*` examples: they differ only in their checkpoint store.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::ValueEnum;
use kinesis_consumer::{CheckpointStore, Consumer, ConsumerBuilder, InitialPosition, Outcome, Record};

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
    /// The stream's name.
    #[arg(long)]
    pub stream: String,
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
        let mut builder = Consumer::builder(&self.stream)
            .client(crate::kinesis_client(&self.endpoint).await)
            .app_name(&self.app)
            .initial_position(initial)
            .aggregation(self.aggregation)
            .shutdown(crate::shutdown_on_signals()?);
        builder = match &self.fan_out {
            Some(name) => builder.fan_out(name).deregister_on_shutdown(self.deregister_on_shutdown),
            None => builder.max_records(self.max_records),
        };
        Ok(builder)
    }

    /// Scans until SIGINT/SIGTERM, printing each record's data on its own line, checkpointing in `store`.
    pub async fn print_records(&self, store: Arc<dyn CheckpointStore>) -> anyhow::Result<()> {
        let consumer = self.builder().await?.shared_store(store).build().await.context("configuring the consumer")?;
        let delay = Duration::from_millis(self.delay_ms);
        let handler = move |record: Record| async move {
            let outcome = print_record(record).await?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(outcome)
        };
        consumer.scan(handler).await.context("scanning the stream")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Writes the record's data and a newline to stdout, flushed: a reader sees each record as soon as it was handled.
pub async fn print_record(record: Record) -> Result<Outcome, std::io::Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(record.data())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(Outcome::Checkpoint)
}
