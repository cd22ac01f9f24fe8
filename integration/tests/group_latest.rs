//! A new consumer group under `Latest` on a stream that was resharded before the group started (as every on-demand
//! stream is), against kinesalite and a PostgreSQL lease table: the children of the closed parent start from when
//! the group first listed the shards, not from TRIM_HORIZON (which would replay the whole retention). The same on
//! the in-process fake: kc-core's tests/group_latest.rs.

use std::sync::Arc;
use std::time::Duration;

use kc_integration::{new_stream, postgres_url, put_numbered, split, unique_table, Wait};
use kc_test_support::{checkpoint, spawn_collecting};
use kinesis_consumer::postgres::PostgresLeaseTable;
use kinesis_consumer::{Consumer, Group, InitialPosition};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_group_under_latest_does_not_replay_the_children_of_a_split_before_it() {
    let (client, stream) = new_stream("grp-latest", 1).await;
    put_numbered(&client, &stream, "old-parent-", 0..20, 10).await.expect("put");
    split(&client, &stream, "shardId-000000000000").await.expect("split");
    put_numbered(&client, &stream, "old-child-", 0..40, 10).await.expect("put");
    // The leases' creation times and kinesalite's arrival times are both this machine's clock: leave a clear gap.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let table = unique_table("kc_grp_latest");
    let leases = PostgresLeaseTable::connect(&postgres_url(), &table).await.expect("lease table");
    leases.create_table_if_missing().await.expect("create");
    let group = Group::new("g", Arc::new(leases) as Arc<dyn kinesis_consumer::checkpoint::lease::LeaseTable>)
        .worker_id("w1")
        .lease_duration(Duration::from_secs(3));
    let consumer = Consumer::builder(&stream)
        .client(client.clone())
        .initial_position(InitialPosition::Latest)
        .discovery_interval(Duration::from_secs(1))
        // kinesalite holds an AT_TIMESTAMP GetShardIterator until a record at or after the time exists.
        .call_timeout(Duration::from_secs(2))
        .group(group)
        .build()
        .await
        .expect("build");
    let worker = spawn_collecting(consumer, Duration::ZERO, checkpoint);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new = put_numbered(&client, &stream, "new-", 0..40, 10).await.expect("put");
    Wait::real(Duration::from_secs(90))
        .expect("every new record", || new.iter().all(|d| worker.seen.data().contains(d)) || worker.task.is_finished())
        .await;
    // Time for anything older to show up too, if it were read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, result) = worker.stop(Duration::from_secs(30)).await;
    result.expect("scan");
    let old: Vec<String> = seen.data().into_iter().filter(|d| d.starts_with("old-")).collect();
    assert!(old.is_empty(), "records put before the group started were read: {old:?}");
    seen.assert_all_handled(&new);
}
