//! A stream deleted and created again under the same name (issue 12, defect 9), on kinesalite with the checkpoints in
//! PostgreSQL and with a group's leases in PostgreSQL: the new stream's shards have the old ids, and the old
//! stream's checkpoints (the split parent's `ShardEnd`, sequence numbers of records that are gone) must not apply.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use kc_integration::{consumer_builder, create_stream, new_stream, postgres_url, put_numbered, split, unique_table};
use kc_test_support::collect_until;
use kinesis_consumer::postgres::{PostgresLeaseTable, PostgresStore};
use kinesis_consumer::{ConsumerBuilder, Group};

/// The old stream: one shard, `old0..old9`, split, `old10..old19` on the children. Returns its records.
async fn old_stream(client: &aws_sdk_kinesis::Client, stream: &str) -> BTreeSet<String> {
    let mut old = put_numbered(client, stream, "old", 0..10, 4).await.expect("put");
    split(client, stream, "shardId-000000000000").await.expect("split");
    old.extend(put_numbered(client, stream, "old", 10..20, 4).await.expect("put"));
    old.into_iter().collect()
}

/// Deletes `stream`, waits until it is gone, creates it again with one shard (`shardId-000000000000` again) and
/// puts `new0..new9`. Returns its records.
async fn recreate(client: &aws_sdk_kinesis::Client, stream: &str) -> BTreeSet<String> {
    client.delete_stream().stream_name(stream).send().await.expect("DeleteStream");
    for _ in 0..200 {
        match client.describe_stream_summary().stream_name(stream).send().await {
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("ResourceNotFoundException") => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    create_stream(client, stream, 1).await.expect("create again");
    let shards = client.list_shards().stream_name(stream).send().await.expect("ListShards");
    let ids: Vec<&str> = shards.shards().iter().map(|s| s.shard_id()).collect();
    assert_eq!(ids, ["shardId-000000000000"], "the new stream numbers its shards from 0 again");
    put_numbered(client, stream, "new", 0..10, 4).await.expect("put").into_iter().collect()
}

/// Reads `want` records with `builder` (then half a second for anything more); what was handled.
async fn read(builder: ConsumerBuilder, want: usize) -> BTreeSet<String> {
    let consumer = builder.build().await.expect("build");
    let (seen, result) = collect_until(consumer, want).await;
    result.expect("scan");
    let data = seen.data();
    let distinct: BTreeSet<String> = data.iter().cloned().collect();
    assert_eq!(distinct.len(), data.len(), "nothing handled twice: {data:?}");
    distinct
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_again_is_read_from_its_start_with_postgres_checkpoints() {
    let (client, stream) = new_stream("recreated", 1).await;
    let table = unique_table("kc_recreated");
    let store = || async {
        let store = PostgresStore::connect(&postgres_url(), &table).await.expect("connect");
        store.create_table_if_missing().await.expect("create table");
        store
    };
    let old = old_stream(&client, &stream).await;
    assert_eq!(read(consumer_builder(&stream).await.store(store().await), old.len()).await, old);
    let new = recreate(&client, &stream).await;
    // Before the fix: the new shard 0 was skipped as finished (the old split parent's ShardEnd under its id).
    assert_eq!(read(consumer_builder(&stream).await.store(store().await), new.len()).await, new);
    // A restart on the new stream resumes from its own checkpoints.
    let more: BTreeSet<String> =
        put_numbered(&client, &stream, "more", 0..3, 4).await.expect("put").into_iter().collect();
    assert_eq!(read(consumer_builder(&stream).await.store(store().await), more.len()).await, more);
    let pool = sqlx::PgPool::connect(&postgres_url()).await.expect("connect");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_a_stream_created_again_reads_it_from_its_start_with_postgres_leases() {
    let (client, stream) = new_stream("recreated-group", 1).await;
    let table = unique_table("kc_recreated_leases");
    let group = || async {
        let leases = PostgresLeaseTable::connect(&postgres_url(), &table).await.expect("connect");
        leases.create_table_if_missing().await.expect("create table");
        Group::new("g", leases).worker_id("w1").lease_duration(Duration::from_secs(2))
    };
    let old = old_stream(&client, &stream).await;
    assert_eq!(read(consumer_builder(&stream).await.group(group().await), old.len()).await, old);
    let new = recreate(&client, &stream).await;
    assert_eq!(read(consumer_builder(&stream).await.group(group().await), new.len()).await, new);
    let more: BTreeSet<String> =
        put_numbered(&client, &stream, "more", 0..3, 4).await.expect("put").into_iter().collect();
    assert_eq!(read(consumer_builder(&stream).await.group(group().await), more.len()).await, more);
    let pool = sqlx::PgPool::connect(&postgres_url()).await.expect("connect");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
}
