//! Consumer groups at scale: 16 workers sharing 4,096 shards (256 each when balanced) in one process, over the
//! in-process fake Kinesis (idle shards, polled every second), against each real lease backend: PostgreSQL,
//! MariaDB and dynalite. Per backend it prints the time to full coverage and to balance (+/-1) after a
//! simultaneous start, the failover time after one worker is dropped without releasing its leases, the lease-table
//! calls per second at steady state, and the CPU per worker.
//!
//! Run by `cargo xtask bench` (servers started, endpoints in the environment). Prints figures; asserts nothing about
//! time. Run as a test (`cargo test --benches`, without `--bench`) it is a quick check: 4 workers x 64 shards, 3 s leases.

#![allow(clippy::print_stdout, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kc_checkpoint::layer::{Around, BoxFuture, Layered};
use kc_checkpoint::lease::{LeaseScope, LeaseTable};
use kc_checkpoint::Error as StoreError;
use kc_core::fake::FakeKinesis;
use kc_test_support::check::quick_bench;
use kinesis_consumer::ddb::DynamoDbLeaseTable;
use kinesis_consumer::mysql::MySqlLeaseTable;
use kinesis_consumer::postgres::PostgresLeaseTable;
use kinesis_consumer::{Consumer, Group, InitialPosition, Lifecycle, Outcome, Record};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STREAM: &str = "bench";
const GROUP: &str = "bench";

/// Counts the calls of every worker's lease table, per call (`"lease table renew"`, ...), and the renewals per
/// 100 ms since `origin` (how bursty they are).
struct Calls(Mutex<BTreeMap<&'static str, u64>>, AtomicU64, Mutex<BTreeMap<u64, u64>>, Instant);

impl Default for Calls {
    fn default() -> Self {
        Self(Mutex::default(), AtomicU64::default(), Mutex::default(), Instant::now())
    }
}

/// The [`Around`] of a worker's table: counts into the shared [`Calls`].
struct Counting(Arc<Calls>);

#[async_trait]
impl Around for Counting {
    async fn around<'a, T: Send + 'a>(
        &'a self,
        what: &'static str,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        *self.0 .0.lock().expect("calls").entry(what).or_default() += 1;
        self.0 .1.fetch_add(1, Ordering::Relaxed);
        if what == "lease table renew" {
            let tick = u64::try_from(self.0 .3.elapsed().as_millis() / 100).unwrap_or(u64::MAX);
            *self.0 .2.lock().expect("ticks").entry(tick).or_default() += 1;
        }
        call.await
    }
}

impl Calls {
    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().expect("calls").clone()
    }

    /// Renewals per second in each 100 ms between `from` and `to`, sorted: (p50, p99, max).
    fn renewal_bursts(&self, from: Instant, to: Instant) -> (f64, f64, f64) {
        let tick = |t: Instant| u64::try_from(t.duration_since(self.3).as_millis() / 100).unwrap_or(u64::MAX);
        let ticks = self.2.lock().expect("ticks");
        let mut rates: Vec<f64> =
            (tick(from)..tick(to)).map(|t| ticks.get(&t).copied().unwrap_or(0) as f64 * 10.0).collect();
        if rates.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        rates.sort_by(f64::total_cmp);
        let at = |q: f64| rates[((rates.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.99), at(1.0))
    }
}

/// The leases each worker says it holds, from its lifecycle events (no call to the lease table): the observer's
/// view between the listings that confirm it.
#[derive(Default)]
struct Held(Mutex<HashMap<String, HashSet<String>>>);

impl Held {
    /// Leases per worker, under `""` the shards nobody says it holds; `without` left out (a dropped worker, whose
    /// events stopped).
    fn view(&self, shards: usize, without: Option<&str>) -> HashMap<String, usize> {
        let held = self.0.lock().expect("held");
        let mut all = HashSet::new();
        let mut per: HashMap<String, usize> = HashMap::new();
        for (worker, leases) in held.iter().filter(|(w, _)| Some(w.as_str()) != without) {
            if !leases.is_empty() {
                per.insert(worker.clone(), leases.len());
            }
            all.extend(leases.iter().map(String::as_str));
        }
        if all.len() < shards {
            per.insert(String::new(), shards - all.len());
        }
        per
    }
}

/// One worker's events into [`Held`].
struct Track(Arc<Held>, String);

impl Track {
    fn set(&self, shard_id: &str, held: bool) {
        let mut all = self.0 .0.lock().expect("held");
        let mine = all.entry(self.1.clone()).or_default();
        if held {
            mine.insert(shard_id.to_owned());
        } else {
            mine.remove(shard_id);
        }
    }
}

impl Lifecycle for Track {
    fn lease_gained(&self, shard_id: &str) {
        self.set(shard_id, true);
    }
    fn lease_lost(&self, shard_id: &str) {
        self.set(shard_id, false);
    }
    // A handoff (or a stop) stops the shard, then releases its lease.
    fn shard_stopped(&self, shard_id: &str) {
        self.set(shard_id, false);
    }
    fn shard_closed(&self, shard_id: &str) {
        self.set(shard_id, false);
    }
}

struct Worker {
    id: String,
    token: CancellationToken,
    task: JoinHandle<Result<(), kc_core::Error>>,
}

fn start(fake: &FakeKinesis, table: Arc<dyn LeaseTable>, id: &str, lease: Duration, held: &Arc<Held>) -> Worker {
    let token = CancellationToken::new();
    let builder = Consumer::builder(STREAM)
        .api(fake.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .scan_interval(Duration::from_secs(1))
        .lifecycle(Track(Arc::clone(held), id.to_owned()))
        .shutdown(token.clone())
        .group(Group::new(GROUP, table).worker_id(id).lease_duration(lease));
    let task = tokio::spawn(async move {
        let consumer = builder.build().await?;
        consumer.scan(|_r: Record| async { Ok::<_, std::io::Error>(Outcome::Checkpoint) }).await
    });
    Worker { id: id.to_owned(), token, task }
}

/// Unfinished leases per owner ("" for none).
async fn owners(table: &dyn LeaseTable) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    match table.list(&LeaseScope::new(GROUP, STREAM)).await {
        Ok(leases) => {
            for l in leases.into_iter().filter(|l| !l.is_finished()) {
                *per.entry(l.owner.unwrap_or_default()).or_default() += 1;
            }
        }
        Err(e) => println!("    (observer: listing failed: {e})"),
    }
    per
}

/// Process CPU time (user + system) from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

struct Figures {
    coverage: Option<Duration>,
    balanced: Option<Duration>,
    failover: Option<Duration>,
    calls_per_s: f64,
    per_call: BTreeMap<&'static str, f64>,
    /// Renewals per second measured over each 100 ms of the steady window: p50, p99, max.
    renew_bursts: (f64, f64, f64),
    cpu_per_worker: f64,
}

/// What the bench watches: the lease table (the truth) and the workers' own view of it ([`Held`]).
struct Observer<'a> {
    table: &'a dyn LeaseTable,
    held: &'a Held,
    shards: usize,
}

impl Observer<'_> {
    /// How long since `origin` until `done` holds, up to `limit` after `origin`: watched on the workers' view (every
    /// 50 ms) and confirmed by a listing of the lease table when the view says so, at most once a second. Polling the
    /// table alone would weigh on a single-threaded server (dynalite takes seconds to list 4,096 leases while the
    /// group renews them) as much as what it measures. The time reported is when the view first held, in the streak
    /// the listing confirmed. `without`: a dropped worker, whose leases count as nobody's.
    async fn until(
        &self,
        origin: Instant,
        without: Option<&str>,
        limit: Duration,
        done: impl Fn(&HashMap<String, usize>) -> bool,
    ) -> Option<Duration> {
        let mut since: Option<Duration> = None;
        let mut listed_at: Option<Instant> = None;
        while origin.elapsed() < limit {
            if done(&self.held.view(self.shards, without)) {
                let at = *since.get_or_insert(origin.elapsed());
                if listed_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    listed_at = Some(Instant::now());
                    let mut listed = owners(self.table).await;
                    if let Some(n) = without.and_then(|w| listed.remove(w)) {
                        *listed.entry(String::new()).or_default() += n;
                    }
                    if done(&listed) {
                        return Some(at);
                    }
                }
            } else {
                since = None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

async fn run(
    backend: &str,
    tables: Vec<Arc<dyn LeaseTable>>,
    observer: Arc<dyn LeaseTable>,
    shards: usize,
    lease: Duration,
    steady: Duration,
) -> Figures {
    let workers_n = tables.len();
    let fake = FakeKinesis::new();
    fake.create_stream(STREAM, shards);
    let calls = Arc::new(Calls::default());
    let held = Arc::new(Held::default());
    let started = Instant::now();
    let mut workers: Vec<Worker> = tables
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let counted: Arc<dyn LeaseTable> = Arc::new(Layered::new(t, Counting(Arc::clone(&calls))));
            start(&fake, counted, &format!("{backend}-w{i:02}"), lease, &held)
        })
        .collect();
    let limit = lease * 12;
    let watch = Observer { table: &*observer, held: &held, shards };
    let coverage =
        watch.until(started, None, limit, |o| o.get("").is_none() && o.values().sum::<usize>() == shards).await;
    let balanced = watch
        .until(started, None, limit * 2, |o| {
            let counts: Vec<usize> = o.iter().filter(|(w, _)| !w.is_empty()).map(|(_, n)| *n).collect();
            !o.contains_key("")
                && counts.len() == workers_n
                && counts.iter().max().zip(counts.iter().min()).is_some_and(|(a, b)| a - b <= 1)
        })
        .await;

    // Steady state: calls and CPU over a quiet window.
    let (calls0, cpu0, t0) = (calls.snapshot(), cpu_seconds(), Instant::now());
    tokio::time::sleep(steady).await;
    let (calls1, cpu1, window) = (calls.snapshot(), cpu_seconds(), t0.elapsed().as_secs_f64());
    let renew_bursts = calls.renewal_bursts(t0, Instant::now());
    let per_call: BTreeMap<&'static str, f64> = calls1
        .iter()
        .map(|(what, n)| (*what, (n - calls0.get(what).copied().unwrap_or(0)) as f64 / window))
        .filter(|(_, rate)| *rate > 0.0)
        .collect();
    let calls_per_s = per_call.values().sum();
    let cpu_per_worker = (cpu1 - cpu0) / window / workers_n as f64;

    // Failover: one worker dropped without releasing (its task aborted: renewals stop, nothing is written).
    let dropped = workers.remove(0);
    dropped.task.abort();
    let _ = dropped.task.await;
    let dropped_at = Instant::now();
    let failover = watch.until(dropped_at, Some(&dropped.id), limit, |o| !o.contains_key("")).await;

    for w in &workers {
        w.token.cancel();
    }
    for w in workers {
        match w.task.await {
            Ok(Ok(())) => {}
            other => println!("    worker {} ended with {other:?}", w.id),
        }
    }
    Figures { coverage, balanced, failover, calls_per_s, per_call, renew_bursts, cpu_per_worker }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("not reached".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = quick_bench();
    if quick && std::env::var("DYNAMODB_ENDPOINT").is_err() {
        println!("group: servers not configured, skipped (run `cargo xtask bench`)");
        return;
    }
    let only = std::env::var("KC_BENCH_GROUP_BACKENDS").unwrap_or_else(|_| "postgres,mysql,dynamodb".to_owned());
    let (workers, mut shards, mut lease, steady) = if quick {
        (4, 64, Duration::from_secs(3), Duration::from_secs(5))
    } else {
        (16, 4096, Duration::from_secs(10), Duration::from_secs(20))
    };
    // Fewer (or more) shards, e.g. to see a backend below its capacity: dynalite answers about 1,230 renewals/s, and
    // 4,096 leases renewed every third of 10 s ask it for all of them (`KC_BENCH_GROUP_SHARDS=2048`).
    if let Some(n) = kc_test_support::env::count("KC_BENCH_GROUP_SHARDS") {
        shards = n.max(workers);
    }
    // Or longer leases (renewed every third of it): the goals are in lease durations and take intervals.
    if let Some(s) = kc_test_support::env::count("KC_BENCH_GROUP_LEASE_SECS") {
        lease = Duration::from_secs(s.max(1) as u64);
    }
    let take = lease * 2;
    println!(
        "consumer group: {workers} workers x {} shards ({shards} leases) in one process, fake Kinesis (idle, polled \
         every 1 s), lease {lease:?}, take interval {take:?}, watch interval 500 ms",
        shards / workers
    );
    println!("goals: coverage within 2 take cycles, balanced within 3, failover within 2 lease durations");
    let suffix = std::process::id();
    for backend in only.split(',') {
        let name = format!("kc_bench_group_{suffix}");
        let (tables, observer): (Vec<Arc<dyn LeaseTable>>, Arc<dyn LeaseTable>) = match backend {
            // One pool per backend for the 16 workers of this process (16 connections), as one process hosting
            // them would; a worker per process would have a pool each.
            "postgres" => {
                let url = kc_test_support::env::required("DATABASE_URL_POSTGRES");
                let pool = sqlx::postgres::PgPoolOptions::new().max_connections(16).connect(&url).await.expect("pg");
                let t = PostgresLeaseTable::new(pool.clone(), &name).expect("pg table");
                t.create_table_if_missing().await.expect("pg create");
                let tables = (0..workers)
                    .map(|_| Arc::new(PostgresLeaseTable::new(pool.clone(), &name).expect("t")) as Arc<dyn LeaseTable>)
                    .collect();
                (tables, Arc::new(PostgresLeaseTable::connect(&url, &name).await.expect("observer")))
            }
            "mysql" => {
                let url = kc_test_support::env::required("DATABASE_URL_MYSQL");
                let pool = sqlx::mysql::MySqlPoolOptions::new().max_connections(16).connect(&url).await.expect("my");
                let t = MySqlLeaseTable::new(pool.clone(), &name).expect("my table");
                t.create_table_if_missing().await.expect("my create");
                let tables = (0..workers)
                    .map(|_| Arc::new(MySqlLeaseTable::new(pool.clone(), &name).expect("t")) as Arc<dyn LeaseTable>)
                    .collect();
                (tables, Arc::new(MySqlLeaseTable::connect(&url, &name).await.expect("observer")))
            }
            "dynamodb" => {
                let client = kc_examples::dynamodb_client(&kc_test_support::env::required("DYNAMODB_ENDPOINT")).await;
                let ddb_name = name.replace('_', "-");
                let t = DynamoDbLeaseTable::new(client.clone(), &ddb_name).expect("ddb table");
                t.create_table_if_missing().await.expect("ddb create");
                let tables = (0..workers)
                    .map(|_| {
                        Arc::new(DynamoDbLeaseTable::new(client.clone(), &ddb_name).expect("t")) as Arc<dyn LeaseTable>
                    })
                    .collect();
                (tables, Arc::new(t))
            }
            other => panic!("unknown backend {other} in KC_BENCH_GROUP_BACKENDS"),
        };
        let f = run(backend, tables, observer, shards, lease, steady).await;
        println!("  {backend}:");
        println!(
            "    coverage {} ({:.1} take cycles), balanced +/-1 {} ({:.1} take cycles), failover after a drop {} \
             ({:.1} lease durations)",
            secs(f.coverage),
            f.coverage.map_or(f64::NAN, |d| d.as_secs_f64() / take.as_secs_f64()),
            secs(f.balanced),
            f.balanced.map_or(f64::NAN, |d| d.as_secs_f64() / take.as_secs_f64()),
            secs(f.failover),
            f.failover.map_or(f64::NAN, |d| d.as_secs_f64() / lease.as_secs_f64()),
        );
        let detail: Vec<String> =
            f.per_call.iter().map(|(what, r)| format!("{} {r:.0}", what.trim_start_matches("lease table "))).collect();
        // Leases read: a listing returns every lease of the scope, a `get` one (the change marker or a sentinel).
        let rate = |what: &str| f.per_call.get(what).copied().unwrap_or(0.0);
        let read = rate("lease table list") * shards as f64 + rate("lease table get");
        println!(
            "    steady state: {:.0} lease-table calls/s ({}), {read:.0} leases read/s, CPU per worker {:.1}% of a core",
            f.calls_per_s,
            detail.join(", "),
            f.cpu_per_worker * 100.0
        );
        let (p50, p99, max) = f.renew_bursts;
        println!(
            "    renewals per 100 ms, as a rate: mean {:.0}/s, p50 {p50:.0}/s, p99 {p99:.0}/s, max {max:.0}/s",
            rate("lease table renew")
        );
        drop_table(backend, &name).await;
    }
}

async fn drop_table(backend: &str, name: &str) {
    let drop = format!("DROP TABLE IF EXISTS {name}");
    match backend {
        "postgres" => {
            let pool = sqlx::PgPool::connect(&kc_test_support::env::required("DATABASE_URL_POSTGRES")).await;
            if let Ok(pool) = pool {
                let _ = sqlx::query(&drop).execute(&pool).await;
            }
        }
        "mysql" => {
            let pool = sqlx::MySqlPool::connect(&kc_test_support::env::required("DATABASE_URL_MYSQL")).await;
            if let Ok(pool) = pool {
                let _ = sqlx::query(&drop).execute(&pool).await;
            }
        }
        _ => {
            let client = kc_examples::dynamodb_client(&kc_test_support::env::required("DYNAMODB_ENDPOINT")).await;
            let _ = client.delete_table().table_name(name.replace('_', "-")).send().await;
        }
    }
}
