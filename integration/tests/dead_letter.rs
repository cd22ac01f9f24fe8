//! The failure policy's Kinesis dead-letter destination against kinesalite (issue 14): a poison record on one shard
//! of four is retried while the other shards go on, then put on the dead-letter stream (read back with the SDK) with
//! its error and attempts; its shard continues after it, and a restart does not deliver it again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kc_integration::{consumer_builder, new_stream, put_numbered, read_all_records, wait_for};
use kc_test_support::Seen;
use kinesis_consumer::{Consumer, FailurePolicy, KinesisDeadLetter, MemoryStore, Outcome, Record};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const POISON: &str = "poison";

/// What a scan saw: the records handled, and each attempt at the poison (when, and on which shard).
#[derive(Clone, Default)]
struct Log {
    seen: Seen,
    poison: Arc<Mutex<Vec<(Instant, String, String)>>>,
}

impl Log {
    fn attempts(&self) -> Vec<(Instant, String, String)> {
        self.poison.lock().expect("lock").clone()
    }
}

/// A scan in a task of its own, and its shutdown token.
struct Running {
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), kinesis_consumer::Error>>,
}

impl Running {
    /// Stops the scan gracefully; it must return `Ok` within 10 s.
    async fn stop(self) {
        self.token.cancel();
        let joined = tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("stopped within 10 s");
        joined.expect("scan task").expect("scan");
    }
}

fn spawn_failing(consumer: Consumer, log: &Log) -> Running {
    let log = log.clone();
    let token = consumer.shutdown_token();
    let task = tokio::spawn(async move {
        consumer
            .scan(move |r: Record| {
                let log = log.clone();
                async move {
                    if r.data() == POISON.as_bytes() {
                        let at = (Instant::now(), r.shard_id().to_owned(), r.sequence_number().to_string());
                        log.poison.lock().expect("lock").push(at);
                        return Err(std::io::Error::other("poisoned: no such customer"));
                    }
                    log.seen.push(&r);
                    Ok(Outcome::Checkpoint)
                }
            })
            .await
    });
    Running { token, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_on_one_shard_of_four_goes_to_the_dead_letter_stream_and_not_again_after_a_restart() {
    let (client, stream) = new_stream("dl-src", 4).await;
    let (_, dead_letters) = new_stream("dl-dlq", 1).await;
    let before = put_numbered(&client, &stream, "a", 0..200, 40).await.expect("put");
    client
        .put_record()
        .stream_name(&stream)
        .partition_key("the-poisoned-key")
        .data(aws_sdk_kinesis::primitives::Blob::new(POISON))
        .send()
        .await
        .expect("put the poison");
    let store = MemoryStore::new();
    // Three attempts, 2 to 4 s apart: the retries last at least 4 s.
    let policy = FailurePolicy::dead_letter(KinesisDeadLetter::new(client.clone(), dead_letters.clone()))
        .max_attempts(3)
        .retry_backoff(Duration::from_secs(4), Duration::from_secs(4));
    let consumer = consumer_builder(&stream).await.store(store.clone()).on_handler_error(policy.clone());
    let log = Log::default();
    let running = spawn_failing(consumer.build().await.expect("build"), &log);
    wait_for("the first attempt at the poison", WAIT, || !log.attempts().is_empty()).await;
    let poison_shard = log.attempts()[0].1.clone();
    // Put while the poison is retried: those on the other shards are handled meanwhile.
    let during = put_numbered(&client, &stream, "b", 200..300, 40).await.expect("put");
    wait_for("every record", WAIT, || log.seen.len() >= before.len() + during.len()).await;
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 3, "max_attempts");
    let last_attempt = attempts[2].0;
    let all = log.seen.all();
    let (on_poison_shard, elsewhere): (Vec<_>, Vec<_>) =
        all.iter().filter(|r| r.data.starts_with('b')).partition(|r| r.shard == poison_shard);
    let first_elsewhere = elsewhere.iter().map(|r| r.at.into_std()).min().expect("later records on other shards");
    assert!(first_elsewhere < last_attempt, "the other shards were handled during the retries");
    for r in on_poison_shard {
        assert!(r.at.into_std() >= last_attempt, "{} was handled before the poison was settled", r.data);
    }
    let mut produced = before.clone();
    produced.extend(during.iter().cloned());
    running.stop().await;
    let letters = read_all_records(&client, &dead_letters).await;
    // The row of the reliability table: every record but the poison handled once, the poison dead-lettered.
    let (lost, duplicates) = kc_integration::report::tally(&produced, &log.seen.data());
    let dead_lettered = letters.len();
    kc_integration::report::Row {
        scenario: "P1 poison record".to_owned(),
        faults: format!(
            "1 poison record on 1 of 4 shards, {} attempts, dead-lettered to a Kinesis stream: {dead_lettered}",
            attempts.len()
        ),
        produced: produced.len() + 1,
        handled: log.seen.len() + attempts.len(),
        lost: lost + usize::from(dead_lettered == 0),
        duplicates,
        ok: lost == 0 && duplicates == 0 && dead_lettered == 1,
    }
    .report();
    log.seen.assert_exactly_once(&produced);
    log.seen.assert_shard_order();

    // The dead-letter stream holds the poison, with its error and attempts.
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &letters[0];
    assert_eq!(letter.partition_key(), Some("the-poisoned-key"), "the original partition key");
    let json: serde_json::Value = serde_json::from_slice(letter.data().as_ref()).expect("JSON");
    assert_eq!(json["stream"], stream.as_str());
    assert_eq!(json["shard"], poison_shard.as_str());
    assert_eq!(json["sequence_number"], attempts[0].2.as_str());
    assert_eq!(json["sub_sequence_number"], serde_json::Value::Null);
    assert_eq!(json["partition_key"], "the-poisoned-key");
    assert_eq!(json["error"], "poisoned: no such customer");
    assert_eq!(json["attempts"], 3);
    let arrived = json["approximate_arrival_ms"].as_u64().expect("arrival time");
    assert!(json["first_failure_ms"].as_u64().expect("first failure") + 1_000 >= arrived, "{json}");
    let data = aws_smithy_types::base64::decode(json["data"].as_str().expect("data")).expect("base64");
    assert_eq!(data, POISON.as_bytes());

    // A restart does not deliver the poison again.
    let after = put_numbered(&client, &stream, "c", 300..340, 40).await.expect("put");
    let consumer = consumer_builder(&stream).await.store(store.clone()).on_handler_error(policy);
    let log = Log::default();
    let running = spawn_failing(consumer.build().await.expect("build"), &log);
    wait_for("the records put after", WAIT, || log.seen.len() >= after.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.stop().await;
    assert!(log.attempts().is_empty(), "the dead-lettered record came again");
    log.seen.assert_exactly_once(&after);
    assert_eq!(read_all_records(&client, &dead_letters).await.len(), 1, "nothing more dead-lettered");
}

/// Scans `stream` with `policy` until the record after the poison was handled, then stops; returns the poison's
/// shard and sequence number. Then scans again (the same store) with `policy`: the poison must not come again.
async fn dead_letter_once(stream: &str, policy: FailurePolicy) -> (String, String) {
    let store = MemoryStore::new();
    let consumer = consumer_builder(stream).await.store(store.clone()).on_handler_error(policy.clone());
    let log = Log::default();
    let running = spawn_failing(consumer.build().await.expect("build"), &log);
    wait_for("the record after the poison", WAIT, || log.seen.data().contains(&"after".to_owned())).await;
    running.stop().await;
    let attempts = log.attempts();
    assert_eq!(attempts.len(), 2, "max_attempts");
    let (_, shard, sequence) = attempts[0].clone();
    let consumer = consumer_builder(stream).await.store(store).on_handler_error(policy);
    let log = Log::default();
    let client = kc_integration::kinesis().await;
    put_numbered(&client, stream, "later", 0..1, 1).await.expect("put");
    let running = spawn_failing(consumer.build().await.expect("build"), &log);
    wait_for("the record put later", WAIT, || log.seen.data().contains(&"later0".to_owned())).await;
    running.stop().await;
    assert!(log.attempts().is_empty(), "the dead-lettered record came again");
    (shard, sequence)
}

/// A stream of one shard: a record, the poison (key "the-poisoned-key"), a record "after".
async fn poisoned_stream(prefix: &str) -> String {
    let (client, stream) = new_stream(prefix, 1).await;
    for (key, data) in [("k", "before"), ("the-poisoned-key", POISON), ("k", "after")] {
        let blob = aws_sdk_kinesis::primitives::Blob::new(data);
        client.put_record().stream_name(&stream).partition_key(key).data(blob).send().await.expect("put");
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_dead_letter_table_is_created_once_under_concurrent_calls_and_holds_the_poison() {
    use kinesis_consumer::postgres::{PostgresDeadLetter, PostgresStore};
    let pool = kc_integration::sql::pool::<PostgresStore>().await;
    let table = kc_integration::unique_table("dl_pg");
    let destination = PostgresDeadLetter::new(pool.clone(), &table).expect("valid name");
    let creations: Vec<_> = (0..8)
        .map(|_| {
            let d = destination.clone();
            tokio::spawn(async move { d.create_table_if_missing().await })
        })
        .collect();
    for c in creations {
        c.await.expect("task").expect("created (or found) under concurrency");
    }
    let stream = poisoned_stream("dl-pg").await;
    let policy = FailurePolicy::dead_letter(destination).max_attempts(2);
    let (shard, sequence) = dead_letter_once(&stream, policy).await;
    let sql = format!(
        "SELECT stream_name, shard_id, sequence_number::text, sub_sequence_number, partition_key, data, error, \
         attempts, approximate_arrival_ms, first_failure_ms FROM {table}"
    );
    type Row = (String, String, String, Option<i64>, String, Vec<u8>, String, i32, Option<i64>, i64);
    let rows: Vec<Row> = sqlx::query_as(&sql).fetch_all(&pool).await.expect("select");
    assert_eq!(rows.len(), 1, "one dead letter");
    let (s, sh, seq, sub, key, data, error, attempts, arrived, first) = rows[0].clone();
    assert_eq!(
        (s.as_str(), sh.as_str(), seq.as_str(), sub),
        (stream.as_str(), shard.as_str(), sequence.as_str(), None)
    );
    assert_eq!((key.as_str(), data.as_slice()), ("the-poisoned-key", POISON.as_bytes()));
    assert_eq!((error.as_str(), attempts), ("poisoned: no such customer", 2));
    assert!(arrived.is_some_and(|a| a > 0 && first + 1_000 >= a), "{arrived:?} {first}");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_dead_letter_table_is_created_once_under_concurrent_calls_and_holds_the_poison() {
    use kinesis_consumer::mysql::{MySqlDeadLetter, MySqlStore};
    let pool = kc_integration::sql::pool::<MySqlStore>().await;
    let table = kc_integration::unique_table("dl_my");
    let destination = MySqlDeadLetter::new(pool.clone(), &table).expect("valid name");
    let creations: Vec<_> = (0..8)
        .map(|_| {
            let d = destination.clone();
            tokio::spawn(async move { d.create_table_if_missing().await })
        })
        .collect();
    for c in creations {
        c.await.expect("task").expect("created (or found) under concurrency");
    }
    let stream = poisoned_stream("dl-my").await;
    let policy = FailurePolicy::dead_letter(destination).max_attempts(2);
    let (shard, sequence) = dead_letter_once(&stream, policy).await;
    let sql = format!(
        "SELECT stream_name, shard_id, sequence_number, sub_sequence_number, partition_key, data, error, attempts, \
         approximate_arrival_ms, first_failure_ms FROM {table}"
    );
    type Row = (String, String, String, Option<u64>, String, Vec<u8>, String, u32, Option<i64>, i64);
    let rows: Vec<Row> = sqlx::query_as(&sql).fetch_all(&pool).await.expect("select");
    assert_eq!(rows.len(), 1, "one dead letter");
    let (s, sh, seq, sub, key, data, error, attempts, arrived, first) = rows[0].clone();
    assert_eq!(
        (s.as_str(), sh.as_str(), seq.as_str(), sub),
        (stream.as_str(), shard.as_str(), sequence.as_str(), None)
    );
    assert_eq!((key.as_str(), data.as_slice()), ("the-poisoned-key", POISON.as_bytes()));
    assert_eq!((error.as_str(), attempts), ("poisoned: no such customer", 2));
    assert!(arrived.is_some_and(|a| a > 0 && first + 1_000 >= a), "{arrived:?} {first}");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
}

/// The dead-letter table unreachable (a proxy cut) for 10 s: the shard holds at the poison, nothing is checkpointed
/// past it until the row is written, then everything goes on and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_table_unreachable_for_10_s_holds_the_shard_until_the_record_is_written() {
    use kc_integration::CutProxy;
    use kinesis_consumer::postgres::{PostgresDeadLetter, PostgresStore};
    use kinesis_consumer::{Checkpoint, CheckpointStore, SequenceNumber, ShardKey};
    let direct = kc_integration::sql::pool::<PostgresStore>().await;
    let table = kc_integration::unique_table("dl_cut");
    PostgresDeadLetter::new(direct.clone(), &table).expect("name").create_table_if_missing().await.expect("create");
    let url = kc_integration::postgres_url();
    let authority = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("host:port in the URL");
    let proxy = CutProxy::start(authority).await.expect("proxy");
    let proxied_url = url.replacen(authority, &proxy.addr().to_string(), 1);
    let proxied = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&proxied_url)
        .expect("pool");
    let destination = PostgresDeadLetter::new(proxied, &table).expect("name");
    proxy.cut();

    let stream = poisoned_stream("dl-cut").await;
    let store = MemoryStore::new();
    let policy = FailurePolicy::dead_letter(destination)
        .max_attempts(1)
        .retry_backoff(Duration::from_millis(200), Duration::from_secs(1));
    let consumer = consumer_builder(&stream).await.store(store.clone()).on_handler_error(policy);
    let log = Log::default();
    let running = spawn_failing(consumer.build().await.expect("build"), &log);
    wait_for("the poison", WAIT, || !log.attempts().is_empty()).await;
    let (_, shard, sequence) = log.attempts()[0].clone();
    let poison_at = Checkpoint::at(SequenceNumber::parse(&sequence).expect("sequence"));
    let key = ShardKey::new("it", stream.as_str(), shard.as_str());
    let cut_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < cut_until {
        let saved = store.get(&key).await.expect("get");
        assert!(saved.as_ref().is_none_or(|c| *c < poison_at), "checkpointed past the unsettled record: {saved:?}");
        assert!(!log.seen.data().contains(&"after".to_owned()), "handled past the unsettled record");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.restore();
    wait_for("the record after the poison", WAIT, || log.seen.data().contains(&"after".to_owned())).await;
    running.stop().await;
    assert_eq!(log.seen.data(), ["before", "after"], "nothing lost, nothing twice");
    assert_eq!(log.attempts().len(), 1, "the handler was not called again: the destination was");
    let saved = store.get(&key).await.expect("get").expect("checkpoint");
    assert!(saved > poison_at, "checkpointed past it once written: {saved:?}");
    let (rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {table} WHERE error LIKE 'poisoned%'"))
        .fetch_one(&direct)
        .await
        .expect("count");
    assert_eq!(rows, 1, "written once");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&direct).await.expect("drop");
}
