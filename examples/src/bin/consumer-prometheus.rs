//! The `consumer` example with its metrics exposed to Prometheus: `GET http://ADDR/metrics` (any path answers) on
//! `--metrics-addr` (default 127.0.0.1:9898) while it prints each record's data on its own line.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer-prometheus -- --stream demo --iterator-type TRIM_HORIZON \
//!     --metrics-addr 127.0.0.1:9898
//! curl -s http://127.0.0.1:9898/metrics | grep kinesis_consumer_
//! ```
//!
//! The consumer reports through the `metrics` facade; installing `metrics-exporter-prometheus` as the recorder is all
//! an application does. The names and labels: `kinesis_consumer::metrics`, and `grafana/kinesis-consumer.json` for a
//! dashboard.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kc_examples::consumer_cli::{ConsumerArgs, FailureArgs};
use kinesis_consumer::MemoryStore;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Prints every record of a Kinesis stream and serves the consumer's metrics to Prometheus.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    failure: FailureArgs,
    /// Where the Prometheus scrape endpoint listens.
    #[arg(long, default_value = "127.0.0.1:9898")]
    metrics_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    PrometheusBuilder::new()
        .with_http_listener(args.metrics_addr)
        .install()
        .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    tracing::info!(addr = %args.metrics_addr, "Prometheus metrics at http://{}/metrics", args.metrics_addr);
    args.consumer.print_records_failing(Arc::new(MemoryStore::new()), &args.failure).await
}
