//! Streams named by ARN against real servers (issue 17): kinesis-local (kinesis-mock, `KINESIS_LOCAL_ENDPOINT`)
//! accepts `StreamARN`, so a consumer of one stream by ARN and another by name reads both, with the MySQL store,
//! and resumes from its checkpoints (keyed by the stream as given) after a restart. kinesalite (`KINESIS_ENDPOINT`)
//! knows only `StreamName`: a stream named by ARN fails at its first call with a clear error, not a hang or a panic.
//! Both started by `cargo xtask integration`. The same on the fake: crates/kc-core/tests/arn_streams.rs.

use std::collections::HashMap;
use std::time::Duration;

use kc_integration::{
    collect_until, create_stream, kinesis, kinesis_local, mysql_url, put_numbered, unique_stream, unique_table,
};
use kinesis_consumer::mysql::MySqlStore;
use kinesis_consumer::{Consumer, ErrorKind, InitialPosition, StreamId};

/// The ARN of `stream` as the server reports it.
async fn arn_of(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<String> {
    let out = client.describe_stream_summary().stream_name(stream).send().await?;
    Ok(out.stream_description_summary().map(|d| d.stream_arn().to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_named_by_arn_and_by_name_on_kinesis_local_with_mysql_resume_after_a_restart() -> anyhow::Result<()> {
    let client = kinesis_local().await;
    let (by_arn, by_name) = (unique_stream("arn-a"), unique_stream("arn-b"));
    create_stream(&client, &by_arn, 2).await?;
    create_stream(&client, &by_name, 1).await?;
    let arn = arn_of(&client, &by_arn).await?;
    let name_arn = arn_of(&client, &by_name).await?;
    assert_eq!(StreamId::parse(&arn)?.name(), by_arn, "kinesis-local's ARN is a valid stream ARN: {arn}");
    // Put by ARN too (the examples' PutRecords sends StreamARN for an ARN). Data `{stream}/r{i}`.
    let mut first = put_numbered(&client, &arn, &format!("{by_arn}/r"), 0..60, 6).await?;
    first.extend(put_numbered(&client, &by_name, &format!("{by_name}/r"), 0..30, 3).await?);

    let table = unique_table("kc_arn");
    let consumer = || async {
        let store = MySqlStore::connect(&mysql_url(), &table).await.expect("store");
        store.create_table_if_missing().await.expect("table");
        Consumer::builder_for_streams([arn.clone(), by_name.clone()])
            .client(client.clone())
            .store(store)
            .app_name("it")
            .initial_position(InitialPosition::TrimHorizon)
            .scan_interval(Duration::from_millis(50))
            .discovery_interval(Duration::from_secs(1))
            .build()
            .await
            .expect("build")
    };
    let (seen, result) = collect_until(consumer().await, first.len()).await;
    result?;
    // (Not per key: both streams use the keys `key-{i}`.)
    seen.assert_exactly_once(&first);
    let given: HashMap<&str, (&str, &str)> =
        [(by_arn.as_str(), (arn.as_str(), arn.as_str())), (by_name.as_str(), (by_name.as_str(), name_arn.as_str()))]
            .into();
    for r in seen.all() {
        let stream = r.data.split_once('/').map(|(s, _)| s).unwrap_or_default();
        assert_eq!(Some(&(r.stream.as_str(), r.stream_arn.as_str())), given.get(stream), "record {}", r.data);
    }

    // A restart: only the new records, from the checkpoints in MySQL (keyed by the ARN for the stream named by it).
    let mut second = put_numbered(&client, &arn, &format!("{by_arn}/s"), 0..40, 6).await?;
    second.extend(put_numbered(&client, &by_name, &format!("{by_name}/s"), 0..20, 3).await?);
    let (seen, result) = collect_until(consumer().await, second.len()).await;
    result?;
    seen.assert_exactly_once(&second);
    let pool = sqlx::MySqlPool::connect(&mysql_url()).await?;
    let namespaces: Vec<String> =
        sqlx::query_scalar(&format!("SELECT DISTINCT CAST(namespace AS CHAR) FROM {table} ORDER BY 1"))
            .fetch_all(&pool)
            .await?;
    let mut want = vec![format!("it-{arn}"), format!("it-{by_name}")];
    want.sort();
    assert_eq!(namespaces, want);
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesalite_refuses_a_stream_named_by_arn_with_a_clear_error() -> anyhow::Result<()> {
    let client = kinesis().await;
    let stream = unique_stream("arn-kinesalite");
    create_stream(&client, &stream, 1).await?;
    let arn = arn_of(&client, &stream).await?;
    let consumer = Consumer::builder(arn.as_str())
        .client(client)
        .app_name("it")
        .initial_position(InitialPosition::TrimHorizon)
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .await?;
    let scan = consumer
        .scan(|_: kinesis_consumer::Record| async { Ok::<_, std::io::Error>(kinesis_consumer::Outcome::Checkpoint) });
    let e = tokio::time::timeout(Duration::from_secs(30), scan).await?.expect_err("kinesalite has no StreamARN");
    let source = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
    eprintln!("kinesalite, stream named by ARN: {e}: {source}");
    assert_eq!(e.kind(), ErrorKind::Kinesis, "{e}");
    assert_eq!(e.stream(), Some(arn.as_str()));
    assert!(e.to_string().contains("DescribeStreamSummary failed"), "{e}");
    assert!(source.contains("ValidationException"), "{source}");
    Ok(())
}
