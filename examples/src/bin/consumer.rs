//! Reads a Kinesis stream and prints each record's data on its own line (checkpoints in memory).
//!
//! ```text
//! cargo run -p kc-examples --bin consumer -- --stream demo --iterator-type TRIM_HORIZON
//! ```
//!
//! Logs go to stderr; SIGINT or SIGTERM stops it gracefully (the record in hand is finished and checkpointed) and it
//! exits 0.

use std::sync::Arc;

use clap::Parser;
use kc_examples::consumer_cli::ConsumerArgs;
use kinesis_consumer::MemoryStore;

/// Prints every record of a Kinesis stream.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    args.consumer.print_records(Arc::new(MemoryStore::new())).await
}
