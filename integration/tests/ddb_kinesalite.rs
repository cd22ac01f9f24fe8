//! The consumer with the DynamoDB checkpoint store, against kinesalite and dynalite (both started by
//! `cargo xtask integration`): a restarted consumer with a new store instance resumes after the checkpoints the first
//! one flushed.

use std::sync::Arc;

use kc_integration::{dynamodb, new_stream, put_numbered, scan_with_store};
use kinesis_consumer::ddb::DynamoDbStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddb_store_restart_resumes_after_the_flushed_checkpoints() {
    let (client, stream) = new_stream("ddb-restart", 2).await;
    let table = format!("kc-it-e2e-{stream}");

    let first = put_numbered(&client, &stream, "a", 0..300, 10).await.expect("put");
    let store = Arc::new(DynamoDbStore::new(dynamodb().await, &table).expect("store"));
    store.create_table_if_missing().await.expect("create table");
    let (seen, result) = scan_with_store(&stream, store.clone(), first.len()).await;
    result.expect("first run");
    seen.assert_exactly_once(&first);
    store.shutdown().await.expect("shutdown");

    // A new process: a new store instance on the same table.
    let second = put_numbered(&client, &stream, "b", 300..500, 10).await.expect("put");
    let store = Arc::new(DynamoDbStore::new(dynamodb().await, &table).expect("store"));
    let (seen, result) = scan_with_store(&stream, store.clone(), second.len()).await;
    result.expect("second run");
    seen.assert_exactly_once(&second);
    store.shutdown().await.expect("shutdown");

    let items = dynamodb().await.scan().table_name(&table).consistent_read(true).send().await.expect("scan");
    // One per shard, and the stream's creation marker (the shard `#created`: kc_core's "a stream created again").
    assert_eq!(items.count(), 3, "one item per shard and the marker: {:?}", items.items());
    dynamodb().await.delete_table().table_name(&table).send().await.expect("delete table");
}
