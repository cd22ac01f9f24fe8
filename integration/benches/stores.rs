//! Checkpoint stores: time per flush of 1,000 shards' checkpoints, and a consumer's records/s with each store against
//! the memory store over the same kinesalite stream (alternating runs; ratio of medians).
//!
//! Run by `cargo xtask bench` (servers started, endpoints in the environment). Prints figures; asserts nothing about
//! time.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kc_test_support::check::{median, quick_bench};
use kc_test_support::env::required as env;
use kc_test_support::names::unique_stream;
use kc_test_support::time_scan;
use kinesis_consumer::ddb::DynamoDbStore;
use kinesis_consumer::mysql::MySqlStore;
use kinesis_consumer::postgres::PostgresStore;
use kinesis_consumer::{Checkpoint, CheckpointStore, Consumer, InitialPosition, MemoryStore, SequenceNumber, ShardKey};

/// Seconds per flush of `shards` pending checkpoints (each round moves every shard forward).
async fn flush_time(store: &dyn CheckpointStore, shards: usize, rounds: u64) -> Vec<f64> {
    let mut times = Vec::new();
    for round in 1..=rounds {
        for shard in 0..shards {
            let key = ShardKey::new("bench", "flush", format!("shardId-{shard:012}"));
            let seq = SequenceNumber::parse(format!("49{:054}", round * 1_000_000 + shard as u64)).expect("seq");
            store.set(&key, Checkpoint::at(seq)).await.expect("set");
        }
        let start = Instant::now();
        store.flush().await.expect("flush");
        times.push(start.elapsed().as_secs_f64());
    }
    times
}

async fn consume(client: &aws_sdk_kinesis::Client, stream: &str, store: Arc<dyn CheckpointStore>, n: usize) -> f64 {
    let consumer = Consumer::builder(stream)
        .client(client.clone())
        .shared_store(store)
        .app_name(unique_stream("bench"))
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .await
        .expect("build");
    n as f64 / time_scan(consumer, n).await.to_nth.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = quick_bench();
    if quick && std::env::var("KINESIS_ENDPOINT").is_err() {
        println!("stores: servers not configured, skipped (run `cargo xtask bench`)");
        return;
    }
    let (shards, rounds, records, runs) = if quick { (50, 1, 2_000, 1) } else { (1_000, 5, 50_000, 5) };
    let suffix = std::process::id();
    let pg = Arc::new(
        PostgresStore::connect(&env("DATABASE_URL_POSTGRES"), &format!("kc_bench_{suffix}")).await.expect("pg"),
    );
    pg.create_table_if_missing().await.expect("pg table");
    let my =
        Arc::new(MySqlStore::connect(&env("DATABASE_URL_MYSQL"), &format!("kc_bench_{suffix}")).await.expect("my"));
    my.create_table_if_missing().await.expect("mysql table");
    let ddb_client = kc_examples::dynamodb_client(&env("DYNAMODB_ENDPOINT")).await;
    let ddb_table = format!("kc-bench-{suffix}");
    let ddb = Arc::new(DynamoDbStore::new(ddb_client.clone(), &ddb_table).expect("ddb"));
    ddb.create_table_if_missing().await.expect("ddb table");
    let stores: Vec<(&str, Arc<dyn CheckpointStore>)> =
        vec![("postgres", pg.clone()), ("mysql", my.clone()), ("dynamodb", ddb.clone())];

    println!("flush of {shards} shards' checkpoints ({rounds} rounds, each moves every shard forward):");
    for (name, store) in &stores {
        let t = flush_time(&**store, shards, rounds).await;
        println!("  {name:<9} median {:.1} ms per flush ({})", median(t.clone()) * 1e3, fmt_ms(&t));
    }

    let client = kc_examples::kinesis_client(&env("KINESIS_ENDPOINT")).await;
    let stream = format!("bench-stores-{suffix}");
    kc_examples::ensure_stream(&client, &stream, 2).await.expect("stream");
    let payload = Bytes::from(vec![b'x'; 100]);
    let entries = (0..records).map(|i| (format!("k{}", i % 100), payload.clone())).collect();
    kc_examples::put_all(&client, &stream, entries).await.expect("put");
    println!(
        "consumer over kinesalite, 2 shards, {records} x 100-byte records, no-op handler, {runs} alternating runs:"
    );
    for (name, store) in &stores {
        let (mut mem, mut with) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            mem.push(consume(&client, &stream, Arc::new(MemoryStore::new()), records).await);
            with.push(consume(&client, &stream, store.clone(), records).await);
        }
        let (m, w) = (median(mem), median(with));
        println!("  {name:<9} {w:.0} records/s vs memory store {m:.0} records/s: ratio {:.3} (target >= 0.95)", w / m);
    }
    pg.shutdown().await.expect("pg shutdown");
    my.shutdown().await.expect("mysql shutdown");
    ddb.shutdown().await.expect("ddb shutdown");
    let _ = ddb_client.delete_table().table_name(&ddb_table).send().await;
    for (url, name) in [(env("DATABASE_URL_POSTGRES"), "pg"), (env("DATABASE_URL_MYSQL"), "my")] {
        let drop = format!("DROP TABLE kc_bench_{suffix}");
        if name == "pg" {
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            sqlx::query(&drop).execute(&pool).await.expect("drop");
        } else {
            let pool = sqlx::MySqlPool::connect(&url).await.expect("connect");
            sqlx::query(&drop).execute(&pool).await.expect("drop");
        }
    }
    let _ = client.delete_stream().stream_name(&stream).send().await;
}

fn fmt_ms(v: &[f64]) -> String {
    v.iter().map(|x| format!("{:.1}", x * 1e3)).collect::<Vec<_>>().join(", ")
}
