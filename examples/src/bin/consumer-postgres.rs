//! Like `consumer`, with checkpoints in PostgreSQL: a restart resumes where the last run stopped.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer-postgres -- --stream demo --iterator-type TRIM_HORIZON \
//!     --database-url postgres://postgres@127.0.0.1:5432/test --table kinesis_consumer
//! ```
//!
//! The table is created if missing. SIGINT or SIGTERM stops it gracefully: checkpoints are flushed, exit 0.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kc_examples::consumer_cli::ConsumerArgs;
use kinesis_consumer::postgres::PostgresStore;

/// Prints every record of a Kinesis stream, checkpointing in PostgreSQL.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
    /// The database.
    #[arg(long, env = "DATABASE_URL_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// The checkpoint table (created if missing).
    #[arg(long, default_value = "kinesis_consumer")]
    table: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let store =
        Arc::new(PostgresStore::connect(&args.database_url, &args.table).await.context("connecting the store")?);
    store.create_table_if_missing().await.context("creating the checkpoint table")?;
    let scanned = args.consumer.print_records(store.clone()).await;
    store.shutdown().await.context("flushing the checkpoints")?;
    scanned
}
