//! Reads a Kinesis stream and prints each record's data on its own line.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer -- --stream demo --iterator-type TRIM_HORIZON
//! ```
//!
//! Logs go to stderr; SIGINT or SIGTERM stops it gracefully (the record in hand is finished and checkpointed) and it
//! exits 0.

#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kinesis_consumer::{Consumer, InitialPosition, Outcome, Record};

#[derive(Clone, Copy, Debug, ValueEnum)]
#[value(rename_all = "SCREAMING_SNAKE_CASE")]
enum IteratorType {
    Latest,
    TrimHorizon,
    AtTimestamp,
}

/// Prints every record of a Kinesis stream.
#[derive(Debug, Parser)]
struct Args {
    /// The stream's name.
    #[arg(long)]
    stream: String,
    /// The Kinesis endpoint (`aws` for AWS itself, with the usual credential chain).
    #[arg(long, default_value_t = kc_examples::default_endpoint())]
    endpoint: String,
    /// The app name (checkpoint namespace).
    #[arg(long, default_value = "kc-example-consumer")]
    app: String,
    /// Where shards without a checkpoint start.
    #[arg(long, value_enum, default_value = "LATEST")]
    iterator_type: IteratorType,
    /// With AT_TIMESTAMP: the time, in seconds since the Unix epoch (fractions allowed).
    #[arg(long)]
    timestamp: Option<f64>,
    /// Split KPL aggregated records into their user records.
    #[arg(long)]
    aggregation: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let initial = match (args.iterator_type, args.timestamp) {
        (IteratorType::Latest, _) => InitialPosition::Latest,
        (IteratorType::TrimHorizon, _) => InitialPosition::TrimHorizon,
        (IteratorType::AtTimestamp, Some(t)) if t.is_finite() && t >= 0.0 => {
            InitialPosition::AtTimestamp(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t))
        }
        (IteratorType::AtTimestamp, _) => anyhow::bail!("AT_TIMESTAMP needs --timestamp SECONDS_SINCE_EPOCH"),
    };
    let shutdown = kc_examples::shutdown_on_signals()?;
    let client = kc_examples::kinesis_client(&args.endpoint).await;
    let consumer = Consumer::builder(&args.stream)
        .client(client)
        .app_name(&args.app)
        .initial_position(initial)
        .aggregation(args.aggregation)
        .shutdown(shutdown)
        .build()
        .await
        .context("configuring the consumer")?;
    consumer
        .scan(|record: Record| async move {
            // One write and flush per record: a reader of our stdout sees each record as soon as it was handled.
            let mut out = std::io::stdout().lock();
            out.write_all(record.data())?;
            out.write_all(b"\n")?;
            out.flush()?;
            Ok::<_, std::io::Error>(Outcome::Checkpoint)
        })
        .await
        .context("scanning the stream")?;
    tracing::info!("stopped");
    Ok(())
}
