//! Like `consumer`, with checkpoints in DynamoDB: a restart resumes where the last run stopped.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer-ddb -- --stream demo --iterator-type TRIM_HORIZON \
//!     --dynamodb-endpoint http://127.0.0.1:PORT --table kinesis-consumer-checkpoint
//! ```
//!
//! The table is created if missing. SIGINT or SIGTERM stops it gracefully: checkpoints are flushed, exit 0.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kc_examples::consumer_cli::ConsumerArgs;
use kinesis_consumer::ddb::DynamoDbStore;

/// Prints every record of a Kinesis stream, checkpointing in DynamoDB.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
    /// The DynamoDB endpoint (`aws` for AWS itself).
    #[arg(long, env = "DYNAMODB_ENDPOINT", default_value = "http://127.0.0.1:8000")]
    dynamodb_endpoint: String,
    /// The checkpoint table (created if missing).
    #[arg(long, default_value = "kinesis-consumer-checkpoint")]
    table: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let client = kc_examples::dynamodb_client(&args.dynamodb_endpoint).await;
    let store = Arc::new(DynamoDbStore::new(client, &args.table).context("configuring the store")?);
    store.create_table_if_missing().await.context("creating the checkpoint table")?;
    let scanned = args.consumer.print_records(store.clone()).await;
    store.shutdown().await.context("flushing the checkpoints")?;
    scanned
}
