//! Exactly-once effects in PostgreSQL: each record's row and its checkpoint are written in ONE transaction, so a
//! crash at any point leaves both or neither, and a restart resumes right after the last committed record.
//!
//! ```text
//! cargo run -p kc-examples --bin consumer-postgres-tx -- --stream demo --iterator-type TRIM_HORIZON
//! ```
//!
//! Each record becomes a row of `--events-table` (created if missing). `--crash-after N` aborts the process after
//! writing the N-th row and before committing it (to show, and test, that nothing is lost or doubled).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use kc_examples::consumer_cli::{print_record, ConsumerArgs};
use kinesis_consumer::postgres::PostgresStore;
use kinesis_consumer::{Outcome, Record};

/// Writes every record of a Kinesis stream to a PostgreSQL table, exactly once.
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
    /// The table the records are written to (created if missing).
    #[arg(long, default_value = "kc_example_events", value_parser = identifier)]
    events_table: String,
    /// Abort the process after writing the N-th row, before its commit.
    #[arg(long)]
    crash_after: Option<u64>,
}

/// Table names are put into SQL text: letters, digits and `_` only.
fn identifier(s: &str) -> Result<String, String> {
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 63;
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a plain SQL identifier"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kc_examples::init_logging();
    let args = Args::parse();
    let store = Arc::new(PostgresStore::connect(&args.database_url, &args.table).await.context("connecting")?);
    store.create_table_if_missing().await.context("creating the checkpoint table")?;
    let events = args.events_table.clone();
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {events} (shard_id text NOT NULL, sequence_number numeric NOT NULL, \
         sub_sequence_number bigint, data text NOT NULL)"
    );
    sqlx::query(&create).execute(store.pool()).await.context("creating the events table")?;

    let insert = Arc::new(format!(
        "INSERT INTO {events} (shard_id, sequence_number, sub_sequence_number, data) VALUES ($1, $2::numeric, $3, $4)"
    ));
    let written = Arc::new(AtomicU64::new(0));
    let crash_after = args.crash_after;
    let delay = std::time::Duration::from_millis(args.consumer.delay_ms);
    anyhow::ensure!(
        args.consumer.stream.len() == 1,
        "this example's table holds the records of one stream: give one --stream"
    );
    let consumer = args.consumer.builder().await?.shared_store(store.clone()).build().await?;
    let handler_store = store.clone();
    let (app, stream): (Arc<str>, Arc<str>) = (consumer.app().into(), consumer.stream().into());
    let result = consumer
        .scan(move |record: Record| {
            let (store, insert, written) = (handler_store.clone(), insert.clone(), written.clone());
            let key = kinesis_consumer::ShardKey::new(&*app, &*stream, record.shard_id());
            async move {
                let mut tx = store.pool().begin().await?;
                sqlx::query(&insert)
                    .bind(record.shard_id())
                    .bind(record.sequence_number().as_str())
                    .bind(record.sub_sequence_number().and_then(|s| i64::try_from(s).ok()))
                    .bind(String::from_utf8_lossy(record.data()).into_owned())
                    .execute(&mut *tx)
                    .await?;
                if crash_after == Some(written.fetch_add(1, Ordering::SeqCst) + 1) {
                    tracing::warn!("--crash-after reached: aborting before the commit");
                    std::process::abort();
                }
                store.checkpoint_in_tx(&mut tx, &key, &record.checkpoint()).await?;
                tx.commit().await?;
                print_record(record).await?;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // The checkpoint is already committed with the row; the consumer's own (later) write of the same
                // position is a no-op in the store, so either outcome is right. Checkpoint keeps "shard finished".
                Ok::<_, kinesis_consumer::BoxError>(Outcome::Checkpoint)
            }
        })
        .await;
    store.shutdown().await.context("flushing the checkpoints")?;
    result.context("scanning the stream")
}
