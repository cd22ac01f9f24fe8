//! The DynamoDB checkpoint store against dynalite (started by `cargo xtask integration`, which sets
//! `DYNAMODB_ENDPOINT`). Every test uses a table of its own and deletes it at the end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::TableStatus;
use kc_integration::CutProxy;
use kc_store_ddb::DynamoDbStore;
use kinesis_consumer::checkpoint::{Checkpoint, CheckpointStore, ErrorKind, SequenceNumber, ShardKey};

/// A real (56-digit) Kinesis sequence number.
const REAL: &str = "49590338271490256608559692538361571095921575989136588898";

fn endpoint() -> String {
    std::env::var("DYNAMODB_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .expect("DYNAMODB_ENDPOINT is not set: run `cargo xtask integration`, or start dynalite and set it")
}

/// Counts the PutItem requests a client sends.
#[derive(Debug, Default, Clone)]
struct CountPuts(Arc<AtomicUsize>);

impl Intercept for CountPuts {
    fn name(&self) -> &'static str {
        "CountPuts"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.request().headers().get("x-amz-target").is_some_and(|t| t.ends_with(".PutItem")) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A client for `endpoint` with static dummy credentials (never the default credential chain) and no SDK retries
/// (the store's own bounded retries are what the tests exercise).
fn client_at(endpoint: &str, puts: Option<CountPuts>) -> aws_sdk_dynamodb::Client {
    let mut config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("dummy", "dummy", None, None, "kc-integration"))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .timeout_config(TimeoutConfig::builder().operation_timeout(Duration::from_secs(5)).build());
    if let Some(puts) = puts {
        config = config.interceptor(puts);
    }
    aws_sdk_dynamodb::Client::from_conf(config.build())
}

fn client() -> aws_sdk_dynamodb::Client {
    client_at(&endpoint(), None)
}

fn unique_table(prefix: &str) -> String {
    kc_integration::unique_table(&format!("kc-it-{prefix}")).replace('_', "-")
}

/// A store on a new table (created through the store's helper).
async fn new_table(prefix: &str) -> (String, DynamoDbStore) {
    let table = unique_table(prefix);
    let store = DynamoDbStore::new(client(), &table).expect("store");
    store.create_table_if_missing().await.expect("create table");
    (table, store)
}

async fn delete_table(table: &str) {
    client().delete_table().table_name(table).send().await.expect("delete table");
}

fn seq(s: &str) -> SequenceNumber {
    SequenceNumber::parse(s).expect("valid sequence number")
}

fn key(shard: &str) -> ShardKey {
    ShardKey::new("app", "stream", shard)
}

/// What a fresh store (no pending checkpoints) reads from the table.
async fn stored(table: &str, key: &ShardKey) -> Option<Checkpoint> {
    DynamoDbStore::new(client(), table).expect("store").get(key).await.expect("get")
}

/// Writes `cp` through a store of its own, so that only the database's condition can reject it.
async fn write_through(table: &str, key: &ShardKey, cp: Checkpoint) {
    let store = DynamoDbStore::new(client(), table).expect("store");
    store.set(key, cp).await.expect("set");
    store.flush().await.expect("flush");
}

#[tokio::test]
async fn round_trip_and_restart() {
    let (table, store) = new_table("round").await;
    let k = key("shardId-000000000000");
    assert_eq!(store.get(&k).await.expect("get"), None, "no item is Ok(None)");
    let cp = Checkpoint::at(seq(REAL));
    store.set(&k, cp.clone()).await.expect("set");
    assert_eq!(store.get(&k).await.expect("get"), Some(cp.clone()), "pending is visible");
    assert_eq!(stored(&table, &k).await, None, "nothing written before a flush");
    store.flush().await.expect("flush");
    assert_eq!(stored(&table, &k).await, Some(cp.clone()), "a new store reads what the first flushed");
    assert_eq!(stored(&table, &ShardKey::new("other-app", "stream", k.shard())).await, None, "namespaced by app");

    // The Go library's layout: namespace `{app}-{stream}`, sort key shard_id, sequence_number as a string.
    let item = client()
        .get_item()
        .table_name(&table)
        .key("namespace", aws_sdk_dynamodb::types::AttributeValue::S("app-stream".into()))
        .key("shard_id", aws_sdk_dynamodb::types::AttributeValue::S(k.shard().into()))
        .send()
        .await
        .expect("get item");
    let item = item.item().expect("item exists");
    assert_eq!(item.get("sequence_number").and_then(|v| v.as_s().ok()).map(String::as_str), Some(REAL));
    assert_eq!(item.get("finished").and_then(|v| v.as_bool().ok()), Some(&false));
    assert!(!item.contains_key("sub_sequence_number"));
    store.shutdown().await.expect("shutdown");
    delete_table(&table).await;
}

#[tokio::test]
async fn older_checkpoint_is_ignored_by_the_database() {
    let (table, store) = new_table("mono").await;
    let k = key("shard-1");
    write_through(&table, &k, Checkpoint::at(seq("1000"))).await;
    write_through(&table, &k, Checkpoint::at(seq("999"))).await;
    write_through(&table, &k, Checkpoint::at(seq("1000"))).await;
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq("1000"))));
    // Within one store: the buffer keeps the max.
    store.set(&k, Checkpoint::at(seq("2000"))).await.expect("set");
    store.set(&k, Checkpoint::at(seq("1500"))).await.expect("set");
    store.flush().await.expect("flush");
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq("2000"))));
    delete_table(&table).await;
}

#[tokio::test]
async fn numeric_not_string_order() {
    let (table, _store) = new_table("order").await;
    let k = key("shard-1");
    write_through(&table, &k, Checkpoint::at(seq("10"))).await;
    write_through(&table, &k, Checkpoint::at(seq("9"))).await;
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq("10"))), "9 < 10");

    let k = key("shard-2");
    let longer = format!("1{}", "0".repeat(56)); // 57 digits, smaller as a string than REAL
    write_through(&table, &k, Checkpoint::at(seq(&longer))).await;
    write_through(&table, &k, Checkpoint::at(seq(REAL))).await;
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq(&longer))), "57 digits > 56 digits");

    let k = key("shard-3");
    let max = "9".repeat(129);
    write_through(&table, &k, Checkpoint::at(seq(&max))).await;
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq(&max))), "129 digits survive");
    delete_table(&table).await;
}

#[tokio::test]
async fn sub_sequences_and_shard_end() {
    let (table, _store) = new_table("sub").await;
    let k = key("shard-1");
    let next = "49590338271490256608559692538361571095921575989136588899";
    let ordered = [
        Checkpoint::at_sub(seq(REAL), 0),
        Checkpoint::at_sub(seq(REAL), 9),
        Checkpoint::at_sub(seq(REAL), 10),
        Checkpoint::at(seq(REAL)),
        Checkpoint::at_sub(seq(next), 0),
        Checkpoint::at(seq(next)),
        Checkpoint::ShardEnd,
    ];
    for (i, cp) in ordered.iter().enumerate() {
        write_through(&table, &k, cp.clone()).await;
        assert_eq!(stored(&table, &k).await.as_ref(), Some(cp), "moved forward to {cp:?}");
        for older in &ordered[..i] {
            write_through(&table, &k, older.clone()).await;
            assert_eq!(stored(&table, &k).await.as_ref(), Some(cp), "{older:?} does not replace {cp:?}");
        }
    }
    delete_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_keep_the_max() {
    let (table, _store) = new_table("conc").await;
    let k = key("shard-1");
    let a = Arc::new(DynamoDbStore::new(client(), &table).expect("store a"));
    let b = Arc::new(DynamoDbStore::new(client(), &table).expect("store b"));
    let run = |store: Arc<DynamoDbStore>, parity: u64| {
        let k = k.clone();
        tokio::spawn(async move {
            for i in (0..60u64).filter(|i| i % 2 == parity) {
                // Crosses 9 -> 10 -> 100 digits boundaries as strings would order them wrongly.
                let n = 95 + i;
                store.set(&k, Checkpoint::at(seq(&n.to_string()))).await.expect("set");
                store.flush().await.expect("flush");
            }
        })
    };
    let (ra, rb) = tokio::join!(run(Arc::clone(&a), 0), run(Arc::clone(&b), 1));
    ra.expect("task a");
    rb.expect("task b");
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq("154"))));
    delete_table(&table).await;
}

#[tokio::test]
async fn missing_table_is_permanent_until_created() {
    let table = unique_table("missing");
    let store = DynamoDbStore::new(client(), &table).expect("store");
    let k = key("shard-1");
    let err = store.get(&k).await.expect_err("get on a missing table");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(std::error::Error::source(&err).is_some(), "SDK error kept as source");

    let cp = Checkpoint::at_sub(seq(REAL), 3);
    store.set(&k, cp.clone()).await.expect("set buffers");
    let err = store.flush().await.expect_err("flush to a missing table");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains(&table) && err.to_string().contains("create_table_if_missing"), "{err}");

    store.create_table_if_missing().await.expect("create");
    store.create_table_if_missing().await.expect("idempotent");
    store.flush().await.expect("pending kept across the failure");
    assert_eq!(stored(&table, &k).await, Some(cp));
    delete_table(&table).await;
}

/// A table deleted a moment ago is still DELETING for a while (dynalite: 50 ms): `create_table_if_missing` waits
/// until it is gone and creates it again, instead of taking it for existing and failing when it disappears.
#[tokio::test]
async fn a_table_being_deleted_is_created_again() {
    let (table, store) = new_table("recreate").await;
    let k = key("shard-1");
    let mut seen_deleting = 0;
    for round in 0..10u64 {
        delete_table(&table).await;
        let status = client().describe_table().table_name(&table).send().await.ok();
        if status.and_then(|d| d.table().and_then(|t| t.table_status().cloned())) == Some(TableStatus::Deleting) {
            seen_deleting += 1;
        }
        store.create_table_if_missing().await.expect("created again");
        let cp = Checkpoint::at(seq(&round.to_string()));
        store.set(&k, cp.clone()).await.expect("set");
        store.flush().await.expect("the new table takes writes");
        assert_eq!(stored(&table, &k).await, Some(cp), "round {round}");
    }
    // How often the call above began on a DELETING table (always, unless the machine is slower than dynalite's
    // 50 ms): printed, not asserted, so a slow machine does not fail the test.
    eprintln!("a DELETING table was seen in {seen_deleting} of 10 rounds");
    store.shutdown().await.expect("shutdown");
    delete_table(&table).await;
}

#[tokio::test]
async fn invalid_table_name_is_rejected() {
    for bad in ["ab", "with space", "a/b"] {
        let err = DynamoDbStore::new(client(), bad).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}");
    }
}

#[tokio::test]
async fn shutdown_twice_and_background_flush() {
    let table = unique_table("bg");
    let store =
        DynamoDbStore::builder(client(), &table).flush_interval(Duration::from_millis(100)).build().expect("store");
    store.create_table_if_missing().await.expect("create");
    let k = key("shard-1");
    store.set(&k, Checkpoint::at(seq("42"))).await.expect("set");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&table, &k).await.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "background task never flushed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.set(&k, Checkpoint::ShardEnd).await.expect("set");
    store.shutdown().await.expect("first shutdown flushes");
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::ShardEnd));
    store.shutdown().await.expect("second shutdown is a no-op");
    delete_table(&table).await;
}

#[tokio::test]
async fn thousand_sets_three_items_three_writes() {
    let (table, _store) = new_table("many").await;
    let puts = CountPuts::default();
    let store = DynamoDbStore::new(client_at(&endpoint(), Some(puts.clone())), &table).expect("store");
    let shards = [key("shard-0"), key("shard-1"), key("shard-2")];
    for i in 0..1000u64 {
        store.set(&shards[(i % 3) as usize], Checkpoint::at(seq(&(1000 + i).to_string()))).await.expect("set");
    }
    assert_eq!(puts.0.load(Ordering::SeqCst), 0, "set only buffers");
    store.flush().await.expect("flush");
    assert_eq!(puts.0.load(Ordering::SeqCst), 3, "one write per shard");
    store.flush().await.expect("flush again");
    assert_eq!(puts.0.load(Ordering::SeqCst), 3, "nothing pending, nothing written");
    let scan = client().scan().table_name(&table).consistent_read(true).send().await.expect("scan");
    assert_eq!(scan.count(), 3);
    for (i, k) in shards.iter().enumerate() {
        let last = (0..1000u64).filter(|n| (n % 3) as usize == i).max().expect("some") + 1000;
        assert_eq!(stored(&table, k).await, Some(Checkpoint::at(seq(&last.to_string()))));
    }
    delete_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_unavailable_keeps_pending_until_restored() {
    let (table, _store) = new_table("down").await;
    let target = endpoint().trim_start_matches("http://").trim_end_matches('/').to_owned();
    let proxy = CutProxy::start(&target).await.expect("proxy");
    let store = DynamoDbStore::builder(client_at(&format!("http://{}", proxy.addr()), None), &table)
        .max_attempts(3)
        .build()
        .expect("store");
    let k = key("shard-1");
    store.set(&k, Checkpoint::at(seq("7"))).await.expect("set");
    store.flush().await.expect("flush through the proxy");

    proxy.cut();
    store.set(&k, Checkpoint::at_sub(seq(REAL), 1)).await.expect("set");
    let err = store.flush().await.expect_err("flush while the server is unreachable");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    let err = store.get(&k).await.expect_err("get while the server is unreachable is an error, not None");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at(seq("7"))), "nothing written while cut");

    proxy.restore();
    store.flush().await.expect("flush after restore");
    assert_eq!(stored(&table, &k).await, Some(Checkpoint::at_sub(seq(REAL), 1)), "pending kept, then written");
    store.shutdown().await.expect("shutdown");
    delete_table(&table).await;
}

#[tokio::test]
async fn many_shards_one_flush() {
    let (table, _store) = new_table("wide").await;
    let puts = CountPuts::default();
    let store = DynamoDbStore::new(client_at(&endpoint(), Some(puts.clone())), &table).expect("store");
    let shards: Vec<ShardKey> = (0..50).map(|i| key(&format!("shardId-{i:012}"))).collect();
    for (i, k) in shards.iter().enumerate() {
        store.set(k, Checkpoint::at_sub(seq(REAL), i as u64)).await.expect("set");
    }
    store.flush().await.expect("flush");
    assert_eq!(puts.0.load(Ordering::SeqCst), 50);
    for (i, k) in shards.iter().enumerate() {
        assert_eq!(stored(&table, k).await, Some(Checkpoint::at_sub(seq(REAL), i as u64)), "{k:?}");
    }
    delete_table(&table).await;
}

/// A background flush that fails for good (the table was deleted while running) is reported by the next `set`, so a
/// consumer stops instead of running on while nothing is saved; once the table is back, a flush clears it.
#[tokio::test]
async fn permanent_background_flush_failure_is_reported_by_the_next_set() {
    let (table, _first) = new_table("kc-ddb-bgfail").await;
    let store =
        DynamoDbStore::builder(client(), &table).flush_interval(Duration::from_millis(100)).build().expect("store");
    store.set(&key("s"), Checkpoint::at(seq("1"))).await.expect("set");
    delete_table(&table).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match store.set(&key("s"), Checkpoint::at(seq("2"))).await {
            Err(e) => break e,
            Ok(()) => {
                assert!(tokio::time::Instant::now() < deadline, "set never reported the failed background flush");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("background flush"), "{err}");
    store.create_table_if_missing().await.expect("table back");
    store.flush().await.expect("the pending checkpoint is written now");
    store.set(&key("s"), Checkpoint::at(seq("3"))).await.expect("set works again");
    store.shutdown().await.expect("shutdown");
    assert_eq!(stored(&table, &key("s")).await, Some(Checkpoint::at(seq("3"))));
    delete_table(&table).await;
}
