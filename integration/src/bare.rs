//! The bare AWS SDK loops the benchmarks measure the consumer against: what a user without the consumer would write.
//! [`drain`] (many shards, issue 13): a fixed number of shards at a time, each read from TRIM_HORIZON until an empty
//! answer; [`read_one_shard`] (benches vs_sdk and throughput): one shard from TRIM_HORIZON to its nth record.

use std::sync::Arc;

use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Every shard's id, following NextToken.
///
/// # Panics
/// When a ListShards call fails.
pub async fn shard_ids(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let request = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = request.send().await.expect("ListShards");
        ids.extend(page.shards().iter().map(|s| s.shard_id().to_owned()));
        match page.next_token {
            Some(next) => token = Some(next),
            None => return ids,
        }
    }
}

/// Reads `shards` of `stream`, `concurrency` shards at a time: GetShardIterator at TRIM_HORIZON, then GetRecords
/// until an empty answer. Returns the number of records read.
///
/// # Panics
/// When a call fails.
pub async fn drain(client: &aws_sdk_kinesis::Client, stream: &str, shards: &[String], concurrency: usize) -> usize {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for shard in shards {
        let (client, stream, shard, permits) = (client.clone(), stream.to_owned(), shard.clone(), Arc::clone(&permits));
        tasks.spawn(async move {
            let _permit = permits.acquire().await.expect("semaphore");
            let mut it = client
                .get_shard_iterator()
                .stream_name(&stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("GetShardIterator")
                .shard_iterator
                .expect("iterator");
            let mut seen = 0;
            loop {
                let out = client.get_records().shard_iterator(&it).limit(10_000).send().await.expect("GetRecords");
                for r in &out.records {
                    std::hint::black_box(r.data.as_ref());
                }
                seen += out.records.len();
                match out.next_shard_iterator {
                    Some(next) if !out.records.is_empty() => it = next,
                    _ => return seen,
                }
            }
        });
    }
    let mut seen = 0;
    while let Some(read) = tasks.join_next().await {
        seen += read.expect("bare loop task");
    }
    seen
}

/// Records per second of a bare GetShardIterator (TRIM_HORIZON) + GetRecords (limit 10,000) loop over `shard` of
/// `stream` until `records` records, each record's data passed to [`std::hint::black_box`].
///
/// # Panics
/// When a call fails or the shard is closed before `records` records.
pub async fn read_one_shard(client: &aws_sdk_kinesis::Client, stream: &str, shard: &str, records: usize) -> f64 {
    let start = std::time::Instant::now();
    let mut it = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("GetShardIterator")
        .shard_iterator
        .expect("iterator");
    let mut seen = 0;
    while seen < records {
        let out = client.get_records().shard_iterator(&it).limit(10_000).send().await.expect("GetRecords");
        for r in &out.records {
            std::hint::black_box(r.data.as_ref());
        }
        seen += out.records.len();
        it = out.next_shard_iterator.expect("open shard");
    }
    records as f64 / start.elapsed().as_secs_f64()
}
