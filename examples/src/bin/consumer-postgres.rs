//! Like `consumer`, with checkpoints in PostgreSQL: a restart resumes where the last run stopped.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer-postgres -- --stream demo --iterator-type TRIM_HORIZON \
//!     --database-url postgres://postgres@127.0.0.1:5432/test --table kinesis_consumer
//! ```
//!
//! The table is created if missing. SIGINT or SIGTERM stops it gracefully: checkpoints are flushed, exit 0.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kc_examples::consumer_cli::{ConsumerArgs, FailureArgs};
use kinesis_consumer::postgres::PostgresStore;

/// Prints every record of a Kinesis stream, checkpointing in PostgreSQL.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    failure: FailureArgs,
    /// The database.
    #[arg(long, env = "DATABASE_URL_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// The checkpoint table (created if missing).
    #[arg(long, default_value = "kinesis_consumer")]
    table: String,
    /// How often the store writes its pending checkpoints, in milliseconds (the store's default: 5000).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    flush_interval_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&args.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let store = PostgresStore::builder(pool, &args.table)
        .flush_interval(Duration::from_millis(args.flush_interval_ms))
        .build()
        .context("configuring the store")?;
    let store = Arc::new(store);
    store.create_table_if_missing().await.context("creating the checkpoint table")?;
    let scanned = args.consumer.print_records_failing(store.clone(), &args.failure).await;
    store.shutdown().await.context("flushing the checkpoints")?;
    scanned
}
