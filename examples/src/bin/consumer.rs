//! Reads a Kinesis stream and prints each record's data on its own line (checkpoints in memory).
//!
//! ```text
//! cargo run -p kc-examples --bin consumer -- --stream demo --iterator-type TRIM_HORIZON
//! # several streams, one consumer:
//! cargo run -p kc-examples --bin consumer -- --stream demo --stream demo2 --iterator-type TRIM_HORIZON
//! # enhanced fan-out (against AWS, or kinesis-local from `cargo xtask kinesis-local`):
//! cargo run -p kc-examples --bin consumer -- --stream demo --fan-out my-app --endpoint http://127.0.0.1:PORT
//! # the failure policy: records containing "bad" fail; 3 attempts, then to the stream demo-dlq (which must exist)
//! cargo run -p kc-examples --bin consumer -- --stream demo --fail-on bad --max-attempts 3 --dead-letter-stream demo-dlq
//! # up to 8 records of a shard at once (never two of one partition key), with a slow handler
//! cargo run -p kc-examples --bin consumer -- --stream demo --max-in-flight-per-shard 8 --delay-ms 50
//! ```
//!
//! Logs go to stderr; SIGINT or SIGTERM stops it gracefully (the record in hand is finished and checkpointed) and it
//! exits 0.

use std::sync::Arc;

use clap::Parser;
use kc_examples::consumer_cli::{ConsumerArgs, FailureArgs};
use kinesis_consumer::MemoryStore;

/// Prints every record of a Kinesis stream.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    failure: FailureArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    args.consumer.print_records_failing(Arc::new(MemoryStore::new()), &args.failure).await
}
