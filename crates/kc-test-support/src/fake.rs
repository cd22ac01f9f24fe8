//! Helpers for kc-core's tests against its in-process fake Kinesis (`kc_core::fake`, paused clock), and a debugging
//! metrics recorder.

use std::collections::HashMap;
use std::future::Future;

use kc_core::fake::FakeKinesis;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::CompositeKey;

/// The stream of the fake tests.
pub const STREAM: &str = "s";

/// Puts `{prefix}{i}` for i in `range` on [`STREAM`], with partition key `key-{i % 10}`; returns the data.
pub fn put_many(fake: &FakeKinesis, range: std::ops::Range<usize>, prefix: &str) -> Vec<String> {
    range
        .map(|i| {
            let data = format!("{prefix}{i}");
            fake.put(STREAM, &format!("key-{}", i % 10), data.clone());
            data
        })
        .collect()
}

/// Puts `{name}-{prefix}{i}` for i in `range` on the stream `name`, with partition key `{name}-k{i % 10}`; returns
/// the data (each record names its stream, for tests over several streams).
pub fn put_on_stream(fake: &FakeKinesis, name: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| {
            let data = format!("{name}-{prefix}{i}");
            fake.put(name, &format!("{name}-k{}", i % 10), data.clone());
            data
        })
        .collect()
}

/// The settings of the tests over several streams: the fake, `store`, app name `app`, from the oldest record,
/// discovery every second, 7 records per GetRecords.
pub fn several_streams(
    builder: kc_core::ConsumerBuilder,
    fake: &FakeKinesis,
    store: &kc_core::MemoryStore,
    app: &str,
) -> kc_core::ConsumerBuilder {
    builder
        .api(fake.clone())
        .store(store.clone())
        .app_name(app)
        .initial_position(kc_core::InitialPosition::TrimHorizon)
        .discovery_interval(std::time::Duration::from_secs(1))
        .max_records(7)
}

/// Puts `{prefix}{i}` for i in `0..n` on `shard` of `stream`, with partition key `k`.
pub fn put_to_shard(fake: &FakeKinesis, stream: &str, shard: &str, prefix: &str, n: usize) {
    for i in 0..n {
        fake.put_to_shard(stream, shard, "k", format!("{prefix}{i}"));
    }
}

/// One recorded metric: its key, and its value.
pub type Metric = (CompositeKey, DebugValue);

/// Installs a debugging recorder as the process's global one, runs `test` on a current-thread runtime with a paused
/// clock, and returns every metric recorded. A test binary can install a recorder once: one such test per binary.
///
/// # Panics
/// When a global recorder was installed before.
pub fn record_metrics<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Vec<Metric> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("first recorder");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime");
    rt.block_on(test());
    snapshotter.snapshot().into_vec().into_iter().map(|(key, _unit, _description, value)| (key, value)).collect()
}

/// The labels of a metric, by name.
pub fn labels(key: &CompositeKey) -> HashMap<String, String> {
    key.key().labels().map(|l| (l.key().to_owned(), l.value().to_owned())).collect()
}
