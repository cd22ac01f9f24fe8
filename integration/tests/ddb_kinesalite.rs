//! The consumer with the DynamoDB checkpoint store, against kinesalite and dynalite (both started by
//! `cargo xtask integration`): a restarted consumer with a new store instance resumes after the checkpoints the first
//! one flushed.

use std::sync::Arc;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use kc_integration::{create_stream, kinesis, put_numbered, scan_with_store, unique_stream};
use kinesis_consumer::ddb::DynamoDbStore;

/// A DynamoDB client for `$DYNAMODB_ENDPOINT` with static dummy credentials (never the default credential chain).
fn dynamodb() -> aws_sdk_dynamodb::Client {
    let endpoint = std::env::var("DYNAMODB_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .expect("DYNAMODB_ENDPOINT is not set: run `cargo xtask integration`, or start dynalite and set it");
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("dummy", "dummy", None, None, "kc-integration"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddb_store_restart_resumes_after_the_flushed_checkpoints() {
    let client = kinesis().await;
    let stream = unique_stream("ddb-restart");
    create_stream(&client, &stream, 2).await.expect("create stream");
    let table = format!("kc-it-e2e-{stream}");

    let first = put_numbered(&client, &stream, "a", 0..300, 10).await.expect("put");
    let store = Arc::new(DynamoDbStore::new(dynamodb(), &table).expect("store"));
    store.create_table_if_missing().await.expect("create table");
    let (seen, result) = scan_with_store(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    // A new process: a new store instance on the same table.
    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(DynamoDbStore::new(dynamodb(), &table).expect("store"));
    let (seen, result) = scan_with_store(&stream, store.clone(), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);
    store.shutdown().await.expect("shutdown");

    let items = dynamodb().scan().table_name(&table).consistent_read(true).send().await.expect("scan");
    assert_eq!(items.count(), 2, "one item per shard");
    dynamodb().delete_table().table_name(&table).send().await.expect("delete table");
}
