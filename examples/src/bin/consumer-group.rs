//! A worker of a consumer group: run several, each reads its share of the shards; leases (and checkpoints) in
//! PostgreSQL, MySQL/MariaDB or DynamoDB. Prints one `worker shard data` line per record. `--stream` given more than
//! once: the group reads every stream (one lease table, a fair share counted over all of them), lines are then
//! `worker stream/shard data`.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer-group -- --stream demo --iterator-type TRIM_HORIZON \
//!     --group billing --worker-id w1 --lease-backend postgres \
//!     --database-url postgres://postgres@127.0.0.1:5432/test --table kinesis_consumer_leases
//! ```
//!
//! The lease table is created if missing. SIGINT or SIGTERM stops it gracefully: every shard finishes its record in
//! hand, checkpoints and releases its lease (other workers take over from there), exit 0.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use kc_examples::consumer_cli::ConsumerArgs;
use kinesis_consumer::checkpoint::lease::LeaseTable;
use kinesis_consumer::ddb::DynamoDbLeaseTable;
use kinesis_consumer::mysql::MySqlLeaseTable;
use kinesis_consumer::postgres::PostgresLeaseTable;
use kinesis_consumer::{Group, Outcome, Record};

/// `--lease-backend`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// DynamoDB (`--dynamodb-endpoint`, `--table`).
    Ddb,
    /// PostgreSQL (`--database-url`, `--table`).
    Postgres,
    /// MySQL or MariaDB (`--mysql-url`, `--table`).
    Mysql,
}

/// Prints the records of the shards this worker holds leases of, as `worker shard data` lines.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    consumer: ConsumerArgs,
    /// The consumer group's name.
    #[arg(long)]
    group: String,
    /// This worker's id (default: hostname-pid-random).
    #[arg(long)]
    worker_id: Option<String>,
    /// Where the leases are.
    #[arg(long, value_enum)]
    lease_backend: Backend,
    /// PostgreSQL: the database.
    #[arg(long, env = "DATABASE_URL_POSTGRES", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// MySQL/MariaDB: the database.
    #[arg(long, env = "DATABASE_URL_MYSQL", default_value = "mysql://root@127.0.0.1:3306/test")]
    mysql_url: String,
    /// DynamoDB: the endpoint (`aws` for AWS itself).
    #[arg(long, env = "DYNAMODB_ENDPOINT", default_value = "http://127.0.0.1:8000")]
    dynamodb_endpoint: String,
    /// The lease table (created if missing). Default: `kinesis_consumer_leases` (PostgreSQL, MySQL),
    /// `kinesis-consumer-leases` (DynamoDB).
    #[arg(long)]
    table: Option<String>,
    /// The lease duration, in milliseconds (renewals every third of it, take cycles every two).
    #[arg(long, default_value_t = 10_000)]
    lease_duration_ms: u64,
    /// The take/balance interval, in milliseconds (default: twice the lease duration).
    #[arg(long)]
    take_interval_ms: Option<u64>,
    /// The most leases this worker holds.
    #[arg(long)]
    max_leases: Option<usize>,
    /// How often the shard list is refreshed, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    discovery_interval_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let table: Arc<dyn LeaseTable> = match args.lease_backend {
        Backend::Postgres => {
            let name = args.table.as_deref().unwrap_or("kinesis_consumer_leases");
            let t = PostgresLeaseTable::connect(&args.database_url, name).await.context("connecting PostgreSQL")?;
            t.create_table_if_missing().await.context("creating the lease table")?;
            Arc::new(t)
        }
        Backend::Mysql => {
            let name = args.table.as_deref().unwrap_or("kinesis_consumer_leases");
            let t = MySqlLeaseTable::connect(&args.mysql_url, name).await.context("connecting MySQL")?;
            t.create_table_if_missing().await.context("creating the lease table")?;
            Arc::new(t)
        }
        Backend::Ddb => {
            let name = args.table.as_deref().unwrap_or("kinesis-consumer-leases");
            let client = kc_examples::dynamodb_client(&args.dynamodb_endpoint).await;
            let t = DynamoDbLeaseTable::new(client, name).context("configuring the lease table")?;
            t.create_table_if_missing().await.context("creating the lease table")?;
            Arc::new(t)
        }
    };
    let mut group = Group::new(&args.group, table).lease_duration(Duration::from_millis(args.lease_duration_ms));
    if let Some(id) = &args.worker_id {
        group = group.worker_id(id);
    }
    if let Some(ms) = args.take_interval_ms {
        group = group.take_interval(Duration::from_millis(ms));
    }
    if let Some(max) = args.max_leases {
        group = group.max_leases(max);
    }
    let consumer = args
        .consumer
        .builder()
        .await?
        .discovery_interval(Duration::from_millis(args.discovery_interval_ms))
        .group(group)
        .build()
        .await
        .context("configuring the consumer")?;
    let worker: Arc<str> = Arc::from(consumer.worker_id().unwrap_or("?"));
    // With several streams a shard is named `stream/shard` (shard ids repeat across streams).
    let several = args.consumer.stream.len() > 1;
    tracing::info!(worker = %worker, "starting");
    let delay = Duration::from_millis(args.consumer.delay_ms);
    let handler = move |record: Record| {
        let worker = Arc::clone(&worker);
        async move {
            {
                let mut out = std::io::stdout().lock();
                let data = String::from_utf8_lossy(record.data());
                if several {
                    writeln!(out, "{worker} {}/{} {data}", record.stream(), record.shard_id())?;
                } else {
                    writeln!(out, "{worker} {} {data}", record.shard_id())?;
                }
                out.flush()?;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(Outcome::Checkpoint)
        }
    };
    consumer.scan(handler).await.context("scanning the stream")?;
    tracing::info!("stopped");
    Ok(())
}
