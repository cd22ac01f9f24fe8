//! Reads lines from stdin and puts each as one record on a Kinesis stream (or, with `--aggregate`, packs them into
//! KPL aggregates).
//!
//! ```text
//! cargo run -p kc-examples --bin producer -- --stream demo --shards 2 < examples/users.txt
//! ```

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use kinesis_consumer::deagg::Aggregator;
use tokio::io::AsyncBufReadExt as _;

/// Puts stdin's lines on a Kinesis stream, one record per line.
#[derive(Debug, Parser)]
struct Args {
    /// The stream's name or ARN.
    #[arg(long)]
    stream: String,
    /// The Kinesis endpoint (`aws` for AWS itself, with the usual credential chain).
    #[arg(long, default_value_t = kc_examples::default_endpoint())]
    endpoint: String,
    /// Create the stream with this many shards if it does not exist (and wait until it is ACTIVE).
    #[arg(long)]
    shards: Option<i32>,
    /// Use each line as its own partition key (default: a random key per record).
    #[arg(long)]
    partition_key_from_line: bool,
    /// Pack the lines into KPL aggregated records of up to this many user records each.
    #[arg(long, value_name = "RECORDS_PER_AGGREGATE", num_args = 0..=1, default_missing_value = "100")]
    aggregate: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let client = kc_examples::kinesis_client(&args.endpoint).await;
    if let Some(shards) = args.shards {
        kc_examples::ensure_stream(&client, &args.stream, shards).await?;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut user_records = Vec::new();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        let key = if args.partition_key_from_line && !line.is_empty() {
            line.chars().take(256).collect()
        } else {
            format!("{:016x}", fastrand::u64(..))
        };
        user_records.push((key, Bytes::from(line)));
    }
    let lines = user_records.len();
    let entries = match args.aggregate {
        None => user_records,
        Some(per_aggregate) => aggregate(user_records, per_aggregate.max(1)),
    };
    let records = entries.len();
    kc_examples::put_all(&client, &args.stream, entries).await?;
    tracing::info!(stream = %args.stream, lines, records, "put every line");
    Ok(())
}

/// Packs user records into aggregates of at most `per_aggregate` records and under 1 MiB (the Kinesis record limit,
/// with room for the partition key).
fn aggregate(user_records: Vec<(String, Bytes)>, per_aggregate: usize) -> Vec<(String, Bytes)> {
    const LIMIT: usize = 1024 * 1024 - 1024;
    let mut out = Vec::new();
    let mut agg = Aggregator::new();
    let mut outer_key = String::new();
    for (key, data) in user_records {
        let full = agg.len() >= per_aggregate || agg.size_bytes_with(&key, None, data.len()) > LIMIT;
        if full && !agg.is_empty() {
            out.push((std::mem::take(&mut outer_key), std::mem::take(&mut agg).finish()));
        }
        if agg.is_empty() {
            outer_key = key.clone();
        }
        agg.add(&key, None, &data);
    }
    if !agg.is_empty() {
        out.push((outer_key, agg.finish()));
    }
    out
}
