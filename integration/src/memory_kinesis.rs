//! [`MemoryKinesis`]: a Kinesis endpoint that answers from responses built in memory at start-up, for the benchmark
//! of many shards at memory speed (`benches/memory_shards.rs`, issue 13). It is part of that benchmark's set-up, like
//! kinesalite is of the others: not a test double of the consumer, which talks to it through the AWS SDK as to any
//! endpoint.
//!
//! One stream of `shards` shards (`shardId-000000000000`, ..., open, no parents, hash key ranges splitting the space
//! evenly), each holding `records` records of 100 bytes. It speaks awsJson 1.1 over HTTP/1.1 with keep-alive on
//! 127.0.0.1, and answers what the consumer and a bare SDK loop call:
//! - `DescribeStreamSummary` (the consumer asks for the stream's creation time);
//! - `ListShards`, paged: `MaxResults` honoured (1,000 by default, 10,000 at most, as AWS), `NextToken` the index
//!   of the page's first shard;
//! - `GetShardIterator` (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` as the horizon, `AT_`/`AFTER_SEQUENCE_NUMBER`):
//!   an iterator is `{shard}/{position}`;
//! - `GetRecords`: each shard's whole answer from its start, and its empty answer once read (the same iterator,
//!   `MillisBehindLatest` 0), are serialized once, HTTP head included, at start-up; any other position or a smaller
//!   `Limit` is built on the call.
//!
//! Anything else is answered 400 with the error AWS would give. Calls are counted per operation
//! ([`MemoryKinesis::calls`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The payload of every record (before base64).
const PAYLOAD: usize = 100;
/// ListShards' page size when the request names none, and its maximum (AWS's).
const DEFAULT_PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;
/// Every record's arrival time and the stream's creation time, in seconds since the epoch (2026-01-01).
const EPOCH_SECONDS: u64 = 1_767_225_600;

/// The operations counted, in [`MemoryKinesis::calls`]'s order.
const OPS: [&str; 5] = ["DescribeStreamSummary", "ListShards", "GetShardIterator", "GetRecords", "Other"];

/// The server: see the [module docs](self). Stops when dropped.
pub struct MemoryKinesis {
    addr: SocketAddr,
    data: Arc<Data>,
    task: tokio::task::JoinHandle<()>,
}

/// What the server answers from, built at start-up.
struct Data {
    stream: String,
    shards: usize,
    records: usize,
    describe: Vec<u8>,
    /// Per shard: the whole answer of GetRecords from the shard's start.
    full: Vec<Vec<u8>>,
    /// Per shard: the answer of GetRecords after the last record.
    empty: Vec<Vec<u8>>,
    calls: [AtomicU64; OPS.len()],
}

impl MemoryKinesis {
    /// Builds every answer and listens on a free port of 127.0.0.1.
    pub async fn start(stream: &str, shards: usize, records: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(shards > 0, "a stream has at least one shard");
        let describe = ok(format!(
            r#"{{"StreamDescriptionSummary":{{"StreamName":"{stream}","StreamARN":"{}","StreamStatus":"ACTIVE","StreamModeDetails":{{"StreamMode":"PROVISIONED"}},"RetentionPeriodHours":24,"StreamCreationTimestamp":{EPOCH_SECONDS},"EnhancedMonitoring":[{{"ShardLevelMetrics":[]}}],"EncryptionType":"NONE","OpenShardCount":{shards},"ConsumerCount":0}}}}"#,
            arn(stream)
        ));
        let full = (0..shards).map(|s| ok(records_body(s, 0, records, records))).collect();
        let empty = (0..shards).map(|s| ok(records_body(s, records, records, records))).collect();
        let data = Arc::new(Data {
            stream: stream.to_owned(),
            shards,
            records,
            describe,
            full,
            empty,
            calls: Default::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the memory Kinesis")?;
        let addr = listener.local_addr()?;
        let d = Arc::clone(&data);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = conn.set_nodelay(true);
                let d = Arc::clone(&d);
                // A failed connection only ends that connection.
                tokio::spawn(async move { serve(conn, &d).await });
            }
        });
        Ok(Self { addr, data, task })
    }

    /// `http://127.0.0.1:PORT`, for a client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The calls answered so far, by operation (`Other`: anything not served).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        OPS.iter().zip(&self.data.calls).map(|(op, n)| (*op, n.load(Ordering::Relaxed))).collect()
    }
}

impl Drop for MemoryKinesis {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn arn(stream: &str) -> String {
    format!("arn:aws:kinesis:us-east-1:000000000000:stream/{stream}")
}

/// A record's sequence number: increasing within a shard, unique in the stream.
fn sequence(shard: usize, position: usize) -> String {
    format!("4959{shard:012}{position:010}")
}

/// The position of `sequence` in `shard`, if it is one of the shard's.
fn position_of(shard: usize, sequence: &str) -> Option<usize> {
    let rest = sequence.strip_prefix("4959")?;
    let (s, p) = rest.split_at_checked(12)?;
    (s.parse::<usize>().ok()? == shard).then_some(())?;
    p.parse().ok()
}

fn shard_id(shard: usize) -> String {
    format!("shardId-{shard:012}")
}

/// The GetRecords answer at `position` of `shard` (of `records`), with at most `limit` records.
fn records_body(shard: usize, position: usize, records: usize, limit: usize) -> String {
    let end = records.min(position.saturating_add(limit));
    let mut body = String::from(r#"{"Records":["#);
    for p in position..end {
        if p > position {
            body.push(',');
        }
        // 100 bytes of "x": base64 is "eHh4" repeated, then the padding of the last 1 byte.
        let data = "eHh4".repeat(PAYLOAD / 3) + "eA==";
        let _ = write!(
            body,
            r#"{{"SequenceNumber":"{}","ApproximateArrivalTimestamp":{EPOCH_SECONDS},"Data":"{data}","PartitionKey":"k{shard}-{p}"}}"#,
            sequence(shard, p)
        );
    }
    let _ = write!(body, r#"],"NextShardIterator":"{shard}/{end}","MillisBehindLatest":0}}"#);
    body
}

/// A 200 answer with `body`.
fn ok(body: String) -> Vec<u8> {
    answer(200, &[], body.as_bytes())
}

/// A 400 answer with the AWS error `code`.
fn error(code: &str, message: &str) -> Vec<u8> {
    let body = format!(r#"{{"__type":"{code}","message":"{message}"}}"#);
    answer(400, &[("x-amzn-ErrorType", code)], body.as_bytes())
}

fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let reason = if status == 200 { "OK" } else { "Bad Request" };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Serves one connection: requests in order, until the client closes it.
async fn serve(mut conn: TcpStream, data: &Data) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if conn.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).context("request head")?;
        let mut target = "";
        let mut length = 0;
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("x-amz-target") {
                target = value.trim();
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("content-length")?;
            }
        }
        let op = target.rsplit('.').next().unwrap_or_default().to_owned();
        while buf.len() < head_end + length {
            if conn.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        buf.drain(..head_end + length);
        match respond(data, &op, &body) {
            Answer::Built(bytes) => conn.write_all(bytes).await?,
            Answer::Made(bytes) => conn.write_all(&bytes).await?,
        }
    }
}

enum Answer<'a> {
    /// Built at start-up.
    Built(&'a [u8]),
    /// Made for this call.
    Made(Vec<u8>),
}

fn respond<'a>(data: &'a Data, op: &str, body: &Value) -> Answer<'a> {
    let index = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
    data.calls[index].fetch_add(1, Ordering::Relaxed);
    let text = |key: &str| body.get(key).and_then(Value::as_str);
    let stream_ok = |name: Option<&str>| name.is_none_or(|n| n == data.stream);
    let missing = || Answer::Made(error("ResourceNotFoundException", "no such stream or shard"));
    let invalid = |what: &str| Answer::Made(error("InvalidArgumentException", what));
    match op {
        "DescribeStreamSummary" => {
            if !stream_ok(text("StreamName")) {
                return missing();
            }
            Answer::Built(&data.describe)
        }
        "ListShards" => {
            if !stream_ok(text("StreamName")) {
                return missing();
            }
            let first = match text("NextToken") {
                None => 0,
                Some(token) => match token.parse::<usize>() {
                    Ok(first) if first < data.shards => first,
                    _ => return invalid("bad NextToken"),
                },
            };
            let page = body.get("MaxResults").and_then(Value::as_u64).map_or(DEFAULT_PAGE, |n| n as usize);
            let end = data.shards.min(first + page.clamp(1, MAX_PAGE));
            Answer::Made(ok(list_page(data, first, end)))
        }
        "GetShardIterator" => {
            if !stream_ok(text("StreamName")) {
                return missing();
            }
            let Some(shard) = text("ShardId").and_then(|id| shard_index(data, id)) else { return missing() };
            let sequence = || text("StartingSequenceNumber").and_then(|s| position_of(shard, s));
            let position = match text("ShardIteratorType") {
                Some("TRIM_HORIZON" | "AT_TIMESTAMP") => 0,
                Some("LATEST") => data.records,
                Some("AT_SEQUENCE_NUMBER") => match sequence() {
                    Some(p) => p,
                    None => return invalid("bad StartingSequenceNumber"),
                },
                Some("AFTER_SEQUENCE_NUMBER") => match sequence() {
                    Some(p) => p + 1,
                    None => return invalid("bad StartingSequenceNumber"),
                },
                _ => return invalid("bad ShardIteratorType"),
            };
            Answer::Made(ok(format!(r#"{{"ShardIterator":"{shard}/{}"}}"#, position.min(data.records))))
        }
        "GetRecords" => {
            let parsed = text("ShardIterator").and_then(|it| {
                let (s, p) = it.split_once('/')?;
                let (s, p) = (s.parse::<usize>().ok()?, p.parse::<usize>().ok()?);
                (s < data.shards && p <= data.records).then_some((s, p))
            });
            let Some((shard, position)) = parsed else { return invalid("bad ShardIterator") };
            let limit = body.get("Limit").and_then(Value::as_u64).map_or(10_000, |n| n as usize);
            if position == data.records {
                Answer::Built(&data.empty[shard])
            } else if position == 0 && limit >= data.records {
                Answer::Built(&data.full[shard])
            } else {
                Answer::Made(ok(records_body(shard, position, data.records, limit.max(1))))
            }
        }
        _ => Answer::Made(error("UnknownOperationException", "not served by the memory Kinesis")),
    }
}

fn shard_index(data: &Data, id: &str) -> Option<usize> {
    let shard = id.strip_prefix("shardId-")?.parse::<usize>().ok()?;
    (shard < data.shards).then_some(shard)
}

/// The ListShards page of shards `first..end`.
fn list_page(data: &Data, first: usize, end: usize) -> String {
    let width = u128::MAX / data.shards as u128;
    let mut body = String::from(r#"{"Shards":["#);
    for s in first..end {
        if s > first {
            body.push(',');
        }
        let low = width * s as u128;
        let high = if s + 1 == data.shards { u128::MAX } else { low + width - 1 };
        let _ = write!(
            body,
            r#"{{"ShardId":"{}","HashKeyRange":{{"StartingHashKey":"{low}","EndingHashKey":"{high}"}},"SequenceNumberRange":{{"StartingSequenceNumber":"{}"}}}}"#,
            shard_id(s),
            sequence(s, 0)
        );
    }
    body.push(']');
    if end < data.shards {
        let _ = write!(body, r#","NextToken":"{end}""#);
    }
    body.push('}');
    body
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::types::ShardIteratorType;

    use super::*;

    #[tokio::test]
    async fn the_sdk_reads_every_shard_through_every_page() {
        let server = MemoryKinesis::start("s", 2_500, 3).await.expect("start");
        let client = kc_examples::kinesis_client(&server.endpoint()).await;
        let summary = client.describe_stream_summary().stream_name("s").send().await.expect("describe");
        assert_eq!(summary.stream_description_summary().map(|s| s.open_shard_count()), Some(2_500));
        let mut ids = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let request = match &token {
                Some(t) => client.list_shards().next_token(t),
                None => client.list_shards().stream_name("s"),
            };
            let page = request.send().await.expect("ListShards");
            assert!(page.shards().len() <= DEFAULT_PAGE);
            ids.extend(page.shards().iter().map(|s| s.shard_id().to_owned()));
            match page.next_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(ids.len(), 2_500);
        assert_eq!(ids[2_499], "shardId-000000002499");
        let page = client.list_shards().stream_name("s").max_results(10_000).send().await.expect("one page");
        assert_eq!((page.shards().len(), page.next_token()), (2_500, None));

        for id in ["shardId-000000000000", "shardId-000000002499"] {
            let iterator = client
                .get_shard_iterator()
                .stream_name("s")
                .shard_id(id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("iterator")
                .shard_iterator
                .expect("an iterator");
            // Two records, then the rest, then empty answers with the same iterator.
            let first = client.get_records().shard_iterator(&iterator).limit(2).send().await.expect("records");
            assert_eq!(first.records().len(), 2);
            assert_eq!(first.records()[0].data().as_ref(), &[b'x'; PAYLOAD][..]);
            let next = first.next_shard_iterator().expect("next");
            let rest = client.get_records().shard_iterator(next).send().await.expect("records");
            assert_eq!(rest.records().len(), 1);
            assert_eq!(rest.millis_behind_latest(), Some(0));
            let end = rest.next_shard_iterator().expect("end").to_owned();
            let empty = client.get_records().shard_iterator(&end).send().await.expect("empty");
            assert!(empty.records().is_empty());
            assert_eq!(empty.next_shard_iterator(), Some(end.as_str()));
            // Resuming after the first record reads the other two.
            let after = client
                .get_shard_iterator()
                .stream_name("s")
                .shard_id(id)
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(first.records()[0].sequence_number())
                .send()
                .await
                .expect("iterator after");
            let again = client.get_records().shard_iterator(after.shard_iterator().expect("it")).send().await;
            assert_eq!(again.expect("records").records().len(), 2);
        }
        let whole = client
            .get_shard_iterator()
            .stream_name("s")
            .shard_id("shardId-000000000007")
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator");
        let all = client.get_records().shard_iterator(whole.shard_iterator().expect("it")).send().await;
        assert_eq!(all.expect("records").records().len(), 3);

        let unknown = client
            .get_shard_iterator()
            .stream_name("s")
            .shard_id("shardId-000000002500")
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await;
        assert!(unknown.is_err(), "no shard 2500");
        let calls = server.calls();
        assert_eq!(calls["GetRecords"], 9);
        assert_eq!(calls["Other"], 0);
    }
}
