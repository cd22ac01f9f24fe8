//! Shared code of the example binaries: clients for a local emulator or for AWS, logging, signals.

#![allow(clippy::print_stdout)]

pub mod consumer_cli;

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use tokio_util::sync::CancellationToken;

/// The endpoint the examples use unless told otherwise: `$KINESIS_ENDPOINT`, else kinesalite's usual port.
pub fn default_endpoint() -> String {
    std::env::var("KINESIS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4567".to_owned())
}

/// A Kinesis client for `endpoint`, or for AWS itself when `endpoint` is `"aws"`.
///
/// For an emulator endpoint the AWS credential chain is not consulted (it could reach for the EC2 metadata service):
/// credentials come from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` when set, else static dummy ones, and the region
/// from `AWS_REGION`, else `us-east-1`. Emulators accept anything.
pub async fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    if endpoint == "aws" {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        return aws_sdk_kinesis::Client::new(&config);
    }
    let (credentials, region) = emulator_credentials();
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// A DynamoDB client for `endpoint` (dynalite), or for AWS itself when `endpoint` is `"aws"`; credentials as for
/// [`kinesis_client`].
pub async fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    if endpoint == "aws" {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        return aws_sdk_dynamodb::Client::new(&config);
    }
    let (credentials, region) = emulator_credentials();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

fn emulator_credentials() -> (Credentials, Region) {
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "dummy".to_owned());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "dummy".to_owned());
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
    (Credentials::new(key, secret, None, None, "kc-examples"), Region::new(region))
}

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// A token cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!("received {name}: shutting down gracefully");
        t.cancel();
    });
    Ok(token)
}

/// Creates `stream` (a name, or an ARN) with `shards` shards unless it exists, then waits until it is ACTIVE. A stream
/// named by ARN is described by its ARN and created by the ARN's name: in the client's own account and region.
pub async fn ensure_stream(client: &aws_sdk_kinesis::Client, stream: &str, shards: i32) -> anyhow::Result<()> {
    use aws_sdk_kinesis::types::StreamStatus;
    let id = kinesis_consumer::StreamId::parse(stream)?;
    let describe = || {
        let request = client.describe_stream_summary();
        match id.arn() {
            Some(arn) => request.stream_arn(arn),
            None => request.stream_name(stream),
        }
    };
    let exists = match describe().send().await {
        Ok(_) => true,
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => false,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("describing stream {stream}"))),
    };
    if !exists {
        tracing::info!(stream, shards, "creating stream");
        client
            .create_stream()
            .stream_name(id.name())
            .shard_count(shards)
            .send()
            .await
            .with_context(|| format!("creating stream {stream}"))?;
    }
    for _ in 0..600 {
        let summary = describe().send().await.with_context(|| format!("describing stream {stream}"))?;
        let status = summary.stream_description_summary().map(|d| d.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("stream {stream} did not become ACTIVE within 60 s")
}

/// Puts every `(partition key, data)` on `stream` (a name, or an ARN) with PutRecords, in batches of up to 500 entries and 5 MiB, resending the
/// entries a batch reports as failed (throttled) with a growing pause until every one was accepted.
///
/// Entries of one batch that failed are resent after the ones that succeeded: for strict per-key order put one
/// record at a time.
pub async fn put_all(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<(String, bytes::Bytes)>,
) -> anyhow::Result<usize> {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    const MAX_ENTRIES: usize = 500;
    const MAX_BYTES: usize = 5 * 1024 * 1024;
    let total = entries.len();
    let mut pending = entries.into_iter().peekable();
    while pending.peek().is_some() {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((key, data)) = pending.peek() {
            let size = key.len() + data.len();
            if batch.len() == MAX_ENTRIES || (!batch.is_empty() && bytes + size > MAX_BYTES) {
                break;
            }
            bytes += size;
            batch.push((key.clone(), data.clone()));
            pending.next();
        }
        let mut attempt = 0u32;
        while !batch.is_empty() {
            let request: Vec<PutRecordsRequestEntry> = batch
                .iter()
                .map(|(key, data)| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(key)
                        .data(Blob::new(data.to_vec()))
                        .build()
                        .context("building a PutRecords entry")
                })
                .collect::<anyhow::Result<_>>()?;
            let put = client.put_records();
            let put = if stream.starts_with("arn:") { put.stream_arn(stream) } else { put.stream_name(stream) };
            let out = put.set_records(Some(request)).send().await.with_context(|| format!("PutRecords to {stream}"))?;
            if out.failed_record_count().unwrap_or(0) == 0 {
                break;
            }
            let failed: Vec<(String, bytes::Bytes)> = batch
                .into_iter()
                .zip(out.records())
                .filter(|(_, result)| result.error_code().is_some())
                .map(|(entry, _)| entry)
                .collect();
            attempt += 1;
            anyhow::ensure!(attempt <= 30, "{} records still failing after {attempt} attempts", failed.len());
            tracing::warn!(failed = failed.len(), attempt, "PutRecords entries failed; resending them");
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(20)))).await;
            batch = failed;
        }
    }
    Ok(total)
}
