//! The example binaries as a user runs them, against kinesalite. `cargo xtask integration` builds them and passes
//! their folder in `KC_EXAMPLES_BIN_DIR`.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use kc_integration::{example_bin, kinesis_endpoint, postgres_url, unique_stream};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

async fn produce(stream: &str, lines: &[String], extra: &[&str]) {
    let mut child = Command::new(example_bin("producer"))
        .args(["--stream", stream, "--endpoint", &kinesis_endpoint(), "--shards", "2"])
        .args(extra)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn producer");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all((lines.join("\n") + "\n").as_bytes()).await.expect("write stdin");
    drop(stdin);
    let status =
        tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("producer finishes").expect("wait");
    assert!(status.success(), "producer failed: {status}");
}

fn consumer(stream: &str, extra: &[&str]) -> Child {
    Command::new(example_bin("consumer"))
        .args(["--stream", stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn consumer")
}

/// Reads `n` lines of the consumer's stdout, then sends `signal` and expects exit status 0; returns the lines plus
/// anything printed after the signal.
async fn read_then_stop(mut child: Child, n: usize, signal: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut out = Vec::new();
    let read = async {
        while out.len() < n {
            match lines.next_line().await.expect("read stdout") {
                Some(line) => out.push(line),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("consumer printed every record in time");
    // Anything extra (a duplicate) would arrive now.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = child.id().expect("running").to_string();
    let kill = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill");
    assert!(kill.success());
    let status =
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("graceful stop").expect("wait");
    assert!(status.success(), "consumer exited with {status} after {signal}");
    while let Ok(Some(line)) = lines.next_line().await {
        out.push(line);
    }
    out
}

fn multiset(v: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for s in v {
        *m.entry(s.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_round_trip_with_sigint() {
    let stream = unique_stream("ex-plain");
    let lines: Vec<String> = include_str!("../../examples/users.txt").lines().map(str::to_owned).collect();
    produce(&stream, &lines, &["--partition-key-from-line"]).await;
    let printed = read_then_stop(consumer(&stream, &[]), lines.len(), "-INT").await;
    assert_eq!(multiset(&printed), multiset(&lines));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_consumer_of_two_streams_with_stream_given_twice() {
    let (first, second) = (unique_stream("ex-two-a"), unique_stream("ex-two-b"));
    let lines_a: Vec<String> = (0..200).map(|i| format!("a-{i}")).collect();
    let lines_b: Vec<String> = (0..300).map(|i| format!("b-{i}")).collect();
    produce(&first, &lines_a, &[]).await;
    produce(&second, &lines_b, &[]).await;
    let all = [lines_a, lines_b].concat();
    let printed = read_then_stop(consumer(&first, &["--stream", &second]), all.len(), "-INT").await;
    assert_eq!(multiset(&printed), multiset(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_producer_and_deaggregating_consumer_with_sigterm() {
    let stream = unique_stream("ex-kpl");
    let lines: Vec<String> = (0..1000).map(|i| format!("user-record-{i}")).collect();
    produce(&stream, &lines, &["--aggregate", "64"]).await;
    let printed = read_then_stop(consumer(&stream, &["--aggregation"]), lines.len(), "-TERM").await;
    assert_eq!(printed.len(), lines.len(), "exactly the user records, no aggregate and no duplicate");
    assert_eq!(multiset(&printed), multiset(&lines));
}

fn tx_consumer(stream: &str, tables: &(String, String), crash_after: Option<u64>) -> Child {
    let mut cmd = Command::new(example_bin("consumer-postgres-tx"));
    cmd.args(["--stream", stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
        .args(["--database-url", &postgres_url(), "--table", &tables.0, "--events-table", &tables.1])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(n) = crash_after {
        cmd.args(["--crash-after", &n.to_string()]);
    }
    cmd.spawn().expect("spawn consumer-postgres-tx")
}

/// The transactional example: the process aborts between a row's INSERT and its COMMIT; after a restart the events
/// table holds every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_postgres_checkpoints_give_exactly_once_effects_across_a_crash() {
    let stream = unique_stream("ex-tx");
    let suffix = stream.replace('-', "_");
    let tables = (format!("kc_tx_cp_{suffix}"), format!("kc_tx_ev_{suffix}"));
    let lines: Vec<String> = (0..200).map(|i| format!("event-{i}")).collect();
    produce(&stream, &lines, &[]).await;
    let pool = sqlx::PgPool::connect(&postgres_url()).await.expect("connect");

    // First run: aborts (SIGABRT) after writing the 57th row, before committing it.
    let mut crashing = tx_consumer(&stream, &tables, Some(57));
    let status = tokio::time::timeout(Duration::from_secs(60), crashing.wait()).await.expect("crashes").expect("wait");
    assert!(!status.success(), "the first run must crash, got {status}");
    let count = |pool: sqlx::PgPool, table: String| async move {
        let sql = format!("SELECT count(*) FROM {table}");
        sqlx::query_scalar::<_, i64>(&sql).fetch_one(&pool).await.expect("count")
    };
    // Shards are read concurrently: besides the 57th row, another shard's row written but not yet committed when
    // the process aborted is rolled back too (a CI run saw 55), so up to 56 rows are committed.
    let committed = count(pool.clone(), tables.1.clone()).await;
    assert!((1..=56).contains(&committed), "{committed} committed rows: the 57th (at least) was rolled back");
    let committed = usize::try_from(committed).expect("a small count");

    // Second run: resumes after the committed checkpoints.
    let child = tx_consumer(&stream, &tables, None);
    let printed = read_then_stop(child, lines.len() - committed, "-INT").await;
    assert_eq!(
        printed.len(),
        lines.len() - committed,
        "only the records not committed before the crash are handled again"
    );
    let dupes_sql = format!("SELECT count(*) FROM (SELECT data FROM {} GROUP BY data HAVING count(*) > 1) d", tables.1);
    let dupes: i64 = sqlx::query_scalar(&dupes_sql).fetch_one(&pool).await.expect("dupes");
    assert_eq!(dupes, 0, "no record's effect twice");
    let distinct_sql = format!("SELECT count(DISTINCT data) FROM {}", tables.1);
    let distinct: i64 = sqlx::query_scalar(&distinct_sql).fetch_one(&pool).await.expect("distinct");
    assert_eq!(distinct, 200, "every record's effect once");
    for table in [&tables.0, &tables.1] {
        sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
    }
}

/// `consumer-postgres`, `consumer-mysql` and `consumer-ddb` stopped with SIGTERM and started again: the second
/// process prints only the records put after the first one stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_consumers_resume_across_processes() {
    let stores = [
        ("consumer-postgres", "--database-url", "DATABASE_URL_POSTGRES"),
        ("consumer-mysql", "--database-url", "DATABASE_URL_MYSQL"),
        ("consumer-ddb", "--dynamodb-endpoint", "DYNAMODB_ENDPOINT"),
    ];
    for (bin_name, url_flag, url_var) in stores {
        let url = kc_test_support::env::required(url_var);
        let stream = unique_stream("ex-store");
        let table = format!("kc_ex_{}", stream.replace('-', "_"));
        let first: Vec<String> = (0..40).map(|i| format!("first-{i}")).collect();
        produce(&stream, &first, &[]).await;
        let run = || {
            Command::new(example_bin(bin_name))
                .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
                .args([url_flag, &url, "--table", &table])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn")
        };
        let printed = read_then_stop(run(), first.len(), "-TERM").await;
        assert_eq!(multiset(&printed), multiset(&first), "{bin_name}: first run");
        let second: Vec<String> = (0..25).map(|i| format!("second-{i}")).collect();
        produce(&stream, &second, &[]).await;
        let printed = read_then_stop(run(), second.len(), "-TERM").await;
        assert_eq!(multiset(&printed), multiset(&second), "{bin_name}: the restart resumes after the checkpoints");
        let drop = format!("DROP TABLE {table}");
        if url_var == "DYNAMODB_ENDPOINT" {
            let client = kc_examples::dynamodb_client(&url).await;
            client.delete_table().table_name(&table).send().await.expect("delete table");
        } else if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&url).await.expect("connect");
            sqlx::query(&drop).execute(&pool).await.expect("drop");
        } else {
            let pool = sqlx::MySqlPool::connect(&url).await.expect("connect");
            sqlx::query(&drop).execute(&pool).await.expect("drop");
        }
    }
}

/// KPL across processes: `consumer-postgres --aggregation` is stopped (SIGTERM) in the middle of an aggregate, after
/// handling and checkpointing some of its user records; a new process delivers exactly the rest of that aggregate and
/// the following ones, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_restart_mid_aggregate_across_processes() {
    let url = postgres_url();
    let stream = unique_stream("ex-kpl-restart");
    let table = format!("kc_ex_{}", stream.replace('-', "_"));
    let lines: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    produce(&stream, &lines, &["--aggregate", "100"]).await;
    let run = || {
        Command::new(example_bin("consumer-postgres"))
            .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
            .args(["--database-url", &url, "--table", &table, "--aggregation", "--delay-ms", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn")
    };
    // The 3 aggregates of 100 user records are on 2 shards, read concurrently at 20 records/s each: stopped after
    // about 30 records per shard, each shard is in the middle of an aggregate.
    let first = read_then_stop(run(), 30, "-TERM").await;
    assert!(first.len() < 150, "stopped inside the first aggregates: {} records", first.len());
    let rest = read_then_stop(run(), lines.len() - first.len(), "-TERM").await;
    let mut all = first.clone();
    all.extend(rest.iter().cloned());
    assert_eq!(all.len(), lines.len(), "{} + {} records: none lost or repeated", first.len(), rest.len());
    assert_eq!(multiset(&all), multiset(&lines));
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_example_sends_records_it_fails_on_to_a_dead_letter_stream() {
    let stream = unique_stream("ex-fail");
    let (client, dead_letters) = kc_integration::new_stream("ex-dlq", 1).await;
    let mut lines: Vec<String> = (0..20).map(|i| format!("line {i}")).collect();
    lines.insert(7, "a bad line".to_owned());
    produce(&stream, &lines, &["--partition-key-from-line"]).await;
    let flags = ["--fail-on", "bad", "--max-attempts", "2", "--dead-letter-stream", dead_letters.as_str()];
    let printed = read_then_stop(consumer(&stream, &flags), lines.len() - 1, "-INT").await;
    let good: Vec<String> = lines.iter().filter(|l| !l.contains("bad")).cloned().collect();
    assert_eq!(multiset(&printed), multiset(&good), "every other line printed once");
    let shard = client.list_shards().stream_name(&dead_letters).send().await.expect("list").shards.unwrap_or_default();
    let iterator = client
        .get_shard_iterator()
        .stream_name(&dead_letters)
        .shard_id(shard[0].shard_id.clone())
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("iterator")
        .shard_iterator
        .expect("an iterator");
    let records = client.get_records().shard_iterator(iterator).send().await.expect("get records").records;
    assert_eq!(records.len(), 1, "the bad line, dead-lettered once");
    let json = String::from_utf8(records[0].data.clone().into_inner()).expect("text");
    assert!(json.contains("\"attempts\":2"), "{json}");
    assert!(json.contains("contains it"), "the handler's error: {json}");
}

/// `consumer-postgres` killed with SIGKILL while it retries a record (issue 14): nothing after the record was
/// checkpointed, and the next process delivers it again (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_retries_checkpoints_nothing_past_the_record_and_the_restart_delivers_it() {
    use kc_integration::sql::{pool, stored};
    use kinesis_consumer::postgres::PostgresStore;
    use kinesis_consumer::{Checkpoint, SequenceNumber, ShardKey};
    let url = postgres_url();
    let stream = unique_stream("ex-kill");
    let table = format!("kc_ex_{}", stream.replace('-', "_"));
    let good: Vec<String> = (0..30).map(|i| format!("good-{i}")).collect();
    let mut lines = good.clone();
    lines.push("the bad one".to_owned());
    produce(&stream, &lines, &[]).await;
    let run = |extra: &[&str]| {
        Command::new(example_bin("consumer-postgres"))
            .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
            .args(["--database-url", &url, "--table", &table, "--flush-interval-ms", "100"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn")
    };
    let mut child = run(&["--fail-on", "bad", "--max-attempts", "1000000"]);
    let stdout = child.stdout.take().expect("stdout");
    let mut out = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let read = async {
        while printed.len() < good.len() {
            printed.push(out.next_line().await.expect("read").expect("a line"));
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the good lines");
    // Retrying the bad one (100 ms to 10 s apart); flushes every 100 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().expect("kill").success());
    let _ = child.wait().await;

    // Where the bad record is, read with the SDK.
    let client = kc_integration::kinesis().await;
    let mut bad = None;
    let shards = client.list_shards().stream_name(&stream).send().await.expect("list").shards.unwrap_or_default();
    for shard in &shards {
        let iterator = client
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id.clone())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator
            .expect("an iterator");
        let records = client.get_records().shard_iterator(iterator).send().await.expect("records").records;
        for r in records {
            if r.data.as_ref() == b"the bad one" {
                bad = Some((shard.shard_id.clone(), r.sequence_number.clone()));
            }
        }
    }
    let (bad_shard, bad_sequence) = bad.expect("the bad record in the stream");
    let bad_at = Checkpoint::at(SequenceNumber::parse(&bad_sequence).expect("sequence"));
    let pool = pool::<PostgresStore>().await;
    let key = ShardKey::new("kc-example-consumer", stream.as_str(), bad_shard.as_str());
    let saved = stored::<PostgresStore>(&pool, &table, &key).await;
    assert!(saved.as_ref().is_none_or(|c| *c < bad_at), "checkpointed past the record being retried: {saved:?}");

    // The next process (without --fail-on) delivers it (after the records of its batch before it: they were not
    // checkpointed either).
    let mut child = run(&[]);
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let until_bad = async {
        while let Some(line) = out.next_line().await.expect("read") {
            if line == "the bad one" {
                return true;
            }
        }
        false
    };
    let delivered = tokio::time::timeout(Duration::from_secs(60), until_bad).await.expect("in time");
    assert!(delivered, "the record being retried at the kill was delivered again");
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("stops").expect("wait");
    assert!(status.success(), "{status}");
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.expect("drop");
}

/// A scrape of `addr` (HTTP/1.0: the body unchunked, the connection closed after it).
async fn scrape(addr: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect to the metrics endpoint");
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.expect("send the scrape");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("read the scrape");
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The sum of the samples of `metric` whose labels include `stream="{stream}"`.
fn sum_for_stream(exposition: &str, metric: &str, stream: &str) -> f64 {
    let label = format!("stream=\"{stream}\"");
    exposition
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")) && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Prometheus example serves the consumer's metrics while it runs: once every record was printed, a scrape of
/// `--metrics-addr` counts them all under the stream's label, and shows each shard's MillisBehindLatest gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_example_serves_the_consumer_metrics_during_a_run() {
    let stream = unique_stream("ex-prom");
    let lines: Vec<String> = (0..40).map(|i| format!("prom-{i}")).collect();
    produce(&stream, &lines, &[]).await;
    let addr = format!("127.0.0.1:{}", kc_test_support::net::free_port().expect("free port"));
    let mut child = Command::new(example_bin("consumer-prometheus"))
        .args(["--stream", &stream, "--endpoint", &kinesis_endpoint(), "--iterator-type", "TRIM_HORIZON"])
        .args(["--metrics-addr", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn consumer-prometheus");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    let read = async {
        while printed.len() < lines.len() {
            match out.next_line().await.expect("read stdout") {
                Some(line) => printed.push(line),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("every record printed in time");
    assert_eq!(multiset(&printed), multiset(&lines));

    // The counter is added to once a record's handler returned: wait for the last ones (bounded, not timed).
    let mut exposition = String::new();
    for _ in 0..100 {
        exposition = scrape(&addr).await;
        if sum_for_stream(&exposition, "kinesis_consumer_records_total", &stream) >= lines.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sum_for_stream(&exposition, "kinesis_consumer_records_total", &stream),
        lines.len() as f64,
        "{exposition}"
    );
    let gauges = exposition
        .lines()
        .filter(|l| l.starts_with("kinesis_consumer_millis_behind_latest{") && l.contains(&stream))
        .count();
    assert_eq!(gauges, 2, "one MillisBehindLatest gauge per shard:\n{exposition}");

    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status =
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("graceful stop").expect("wait");
    assert!(status.success(), "consumer-prometheus exited with {status}");
}
