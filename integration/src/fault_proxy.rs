//! A fault-injecting HTTP/1.1 proxy between an AWS SDK client and kinesalite (or dynalite).
//!
//! The proxy listens on 127.0.0.1, reads each request (head and `Content-Length` body), takes the operation from the
//! `X-Amz-Target` header (`Kinesis_20131202.GetRecords` → `GetRecords`) and asks its [`FaultPlan`] whether to answer
//! with a [`Fault`] instead of forwarding. Errors are written in the wire format the SDK parses for the request's
//! protocol: awsJson 1.1 (`{"__type":..,"message":..}` with an `x-amzn-ErrorType` header) or, if the request was
//! CBOR (`application/x-amz-cbor-1.1`), a CBOR map with the same two keys. Every injected fault is counted per kind
//! ([`FaultProxy::counts`]).
//!
//! The plan is deterministic given its seed: decision `n` (the `n`-th request the plan applies to) depends only on the
//! seed and `n`, from a small splitmix64 generator; no global randomness. (Which request is the `n`-th depends on the
//! order concurrent clients' requests arrive in.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kc_test_support::check::lock;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy answers instead of forwarding a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// 400 `ProvisionedThroughputExceededException`.
    Throughput,
    /// 400 `LimitExceededException`.
    LimitExceeded,
    /// 400 `ExpiredIteratorException` (only ever injected into GetRecords).
    ExpiredIterator,
    /// 500 `InternalFailure`.
    Status500,
    /// 503 `ServiceUnavailable`.
    Status503,
    /// The request is forwarded, and the answer sent only after the plan's slow delay.
    Slow,
    /// The connection is closed without an answer after the request was read.
    Drop,
}

impl Fault {
    /// Every kind, in a fixed order.
    pub const ALL: [Fault; 7] = [
        Fault::Throughput,
        Fault::LimitExceeded,
        Fault::ExpiredIterator,
        Fault::Status500,
        Fault::Status503,
        Fault::Slow,
        Fault::Drop,
    ];

    /// A short name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Throughput => "throughput",
            Fault::LimitExceeded => "limit",
            Fault::ExpiredIterator => "expired",
            Fault::Status500 => "500",
            Fault::Status503 => "503",
            Fault::Slow => "slow",
            Fault::Drop => "drop",
        }
    }

    /// The HTTP status and error code of an error answer; `None` for [`Fault::Slow`] and [`Fault::Drop`].
    pub fn error(self) -> Option<(u16, &'static str)> {
        match self {
            Fault::Throughput => Some((400, "ProvisionedThroughputExceededException")),
            Fault::LimitExceeded => Some((400, "LimitExceededException")),
            Fault::ExpiredIterator => Some((400, "ExpiredIteratorException")),
            Fault::Status500 => Some((500, "InternalFailure")),
            Fault::Status503 => Some((503, "ServiceUnavailable")),
            Fault::Slow | Fault::Drop => None,
        }
    }
}

/// splitmix64: a tiny, seedable generator (enough for fault plans; not for cryptography).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0.0..1.0`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }
}

/// When the proxy injects which fault.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// Operations the plan applies to (empty: all).
    ops: Vec<String>,
    mode: Mode,
    slow: Duration,
    /// The decisions made so far (for the rate mode: the generator's state and an ongoing burst).
    state: PlanState,
}

#[derive(Clone, Debug)]
enum Mode {
    None,
    Script(Vec<Option<Fault>>),
    Rate { rate: f64, faults: Vec<Fault>, max_burst: u64 },
}

#[derive(Clone, Debug)]
struct PlanState {
    n: u64,
    rng: SplitMix64,
    burst: Option<(Fault, u64)>,
}

impl FaultPlan {
    /// Forwards everything.
    pub fn none() -> Self {
        Self::with_mode(Mode::None, 0)
    }

    /// The `n`-th request the plan applies to gets `script[n]` (`None`: forwarded); requests after the script are
    /// forwarded.
    pub fn script(script: Vec<Option<Fault>>) -> Self {
        Self::with_mode(Mode::Script(script), 0)
    }

    /// Each request the plan applies to starts a fault with probability `rate` (0.0..=1.0), picked uniformly from
    /// `faults`; a fault lasts a burst of 1 to [`burst`](Self::burst) consecutive requests (default 1).
    /// [`Fault::ExpiredIterator`] is only injected into GetRecords (other requests are forwarded instead).
    pub fn rate(seed: u64, rate: f64, faults: &[Fault]) -> Self {
        Self::with_mode(Mode::Rate { rate: rate.clamp(0.0, 1.0), faults: faults.to_vec(), max_burst: 1 }, seed)
    }

    fn with_mode(mode: Mode, seed: u64) -> Self {
        Self {
            ops: Vec::new(),
            mode,
            slow: Duration::from_secs(3),
            state: PlanState { n: 0, rng: SplitMix64::new(seed), burst: None },
        }
    }

    /// Bursts of up to `max` consecutive faults (rate mode).
    pub fn burst(mut self, max: u64) -> Self {
        if let Mode::Rate { max_burst, .. } = &mut self.mode {
            *max_burst = max.max(1);
        }
        self
    }

    /// Only these operations (e.g. `["GetRecords"]`) are subject to the plan; others are always forwarded.
    pub fn only(mut self, ops: &[&str]) -> Self {
        self.ops = ops.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// How long a [`Fault::Slow`] answer is held back. Default 3 s.
    pub fn slow_delay(mut self, delay: Duration) -> Self {
        self.slow = delay;
        self
    }

    /// Whether the plan applies to `op`.
    fn applies(&self, op: &str) -> bool {
        self.ops.is_empty() || self.ops.iter().any(|o| o == op)
    }

    /// The decision for the next request of operation `op`.
    pub fn decide(&mut self, op: &str) -> Option<Fault> {
        if !self.applies(op) {
            return None;
        }
        let n = self.state.n;
        self.state.n += 1;
        let fault = match &self.mode {
            Mode::None => None,
            Mode::Script(script) => script.get(n as usize).copied().flatten(),
            Mode::Rate { rate, faults, max_burst } => {
                let st = &mut self.state;
                // Draw the same numbers for every request, whatever happens, so decision n depends on n only.
                let start = st.rng.next_f64() < *rate;
                let pick = st.rng.range(0, faults.len() as u64) as usize;
                let len = st.rng.range(1, max_burst + 1);
                match st.burst.take() {
                    Some((fault, left)) => {
                        if left > 1 {
                            st.burst = Some((fault, left - 1));
                        }
                        Some(fault)
                    }
                    None if start && !faults.is_empty() => {
                        let fault = faults[pick];
                        if len > 1 {
                            st.burst = Some((fault, len - 1));
                        }
                        Some(fault)
                    }
                    None => None,
                }
            }
        };
        // An expired iterator only makes sense for GetRecords.
        fault.filter(|f| *f != Fault::ExpiredIterator || op == "GetRecords")
    }
}

/// What the proxy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Injected faults per kind.
    pub injected: BTreeMap<Fault, u64>,
    /// Requests forwarded per operation (including [`Fault::Slow`] ones).
    pub forwarded: BTreeMap<String, u64>,
}

impl FaultCounts {
    /// Every injected fault.
    pub fn total(&self) -> u64 {
        self.injected.values().sum()
    }

    /// Forwarded requests.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.values().sum()
    }

    /// `throughput=3 500=2 ...`, for reports.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.injected.iter().map(|(f, n)| format!("{}={n}", f.name())).collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    plan: Mutex<FaultPlan>,
    counts: Mutex<FaultCounts>,
}

/// The proxy: see the [module docs](self). Stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT` or `127.0.0.1:PORT`) with `plan`.
    pub async fn start(upstream: &str, plan: FaultPlan) -> anyhow::Result<Self> {
        let target = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = target.parse().with_context(|| format!("upstream {upstream:?} is not IP:PORT"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind fault proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            plan: Mutex::new(plan),
            counts: Mutex::new(FaultCounts::default()),
        });
        let s = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    // A failed connection only ends that connection; the client sees it closed.
                    let _ = serve(client, s).await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`, for a client's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the plan (its decision counter starts again).
    pub fn set_plan(&self, plan: FaultPlan) {
        *lock(&self.shared.plan) = plan;
    }

    /// Points the proxy at another upstream (new connections only).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *lock(&self.shared.upstream) = upstream;
    }

    /// What was injected and forwarded so far.
    pub fn counts(&self) -> FaultCounts {
        lock(&self.shared.counts).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP request as read from the client.
struct Request {
    /// Head and body, to forward as they are.
    raw: Vec<u8>,
    op: String,
    /// The request's Content-Type: errors are answered in the same protocol (awsJson 1.0 for DynamoDB, 1.1 for
    /// Kinesis, or CBOR).
    content_type: String,
}

/// Serves one client connection: requests in order, each forwarded on the connection's own upstream connection.
async fn serve(mut client: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut upstream: Option<TcpStream> = None;
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_message(&mut client, &mut buf).await? else { return Ok(()) };
        let op = request_op(&request);
        let (fault, slow) = {
            let mut plan = lock(&shared.plan);
            (plan.decide(&op.op), plan.slow)
        };
        if let Some(f) = fault {
            *lock(&shared.counts).injected.entry(f).or_default() += 1;
        }
        match fault {
            Some(Fault::Drop) => return Ok(()),
            Some(Fault::Slow) | None => {}
            Some(f) => {
                let answer = error_response(f, &op.content_type);
                client.write_all(&answer).await?;
                continue;
            }
        }
        *lock(&shared.counts).forwarded.entry(op.op.clone()).or_default() += 1;
        let conn = match &mut upstream {
            Some(c) => c,
            None => {
                let addr = *lock(&shared.upstream);
                upstream.insert(TcpStream::connect(addr).await.context("connect upstream")?)
            }
        };
        conn.write_all(&op.raw).await?;
        let mut ubuf = Vec::new();
        let Some(response) = read_message(conn, &mut ubuf).await? else {
            return Ok(()); // upstream closed: so does the client's connection
        };
        if fault == Some(Fault::Slow) {
            tokio::time::sleep(slow).await;
        }
        client.write_all(&response).await?;
    }
}

fn request_op(raw: &[u8]) -> Request {
    let head_end = find(raw, b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let target = header("x-amz-target").unwrap_or_default();
    let op = target.rsplit('.').next().unwrap_or_default().to_owned();
    let content_type = header("content-type").unwrap_or_else(|| "application/x-amz-json-1.1".to_owned());
    Request { raw: raw.to_vec(), op, content_type }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one HTTP/1.1 message (head, then a `Content-Length` or chunked body) from `stream`; `None` when the stream
/// closed before a new message began. Bytes read past the message stay in `buf` for the next one.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Vec<u8>>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await? {
            anyhow::ensure!(buf.is_empty(), "connection closed inside a message head");
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()));
    let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let end = if chunked {
        // Chunks until the zero-sized one and its trailing CRLF.
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                anyhow::ensure!(fill(stream, buf).await?, "connection closed inside a chunk size");
            };
            let size_text = String::from_utf8_lossy(&buf[pos..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size {size_text:?}"))?;
            let next = line_end + 2 + size + 2;
            while buf.len() < next {
                anyhow::ensure!(fill(stream, buf).await?, "connection closed inside a chunk");
            }
            pos = next;
            if size == 0 {
                break pos;
            }
        }
    } else {
        let end = head_end + length.unwrap_or(0);
        while buf.len() < end {
            anyhow::ensure!(fill(stream, buf).await?, "connection closed inside a body");
        }
        end
    };
    let message: Vec<u8> = buf.drain(..end).collect();
    Ok(Some(message))
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// The HTTP answer of an error fault to a request of `content_type`: a CBOR map for `application/x-amz-cbor-1.1`,
/// else awsJson (`application/x-amz-json-1.0` or `-1.1`, echoed).
pub fn error_response(fault: Fault, content_type: &str) -> Vec<u8> {
    let Some((status, code)) = fault.error() else { return Vec::new() };
    let message = format!("injected by kc-integration's fault proxy ({})", fault.name());
    let (content_type, body) = if content_type.contains("cbor") {
        let mut b = vec![0xa2];
        for s in ["__type", code, "message", &message] {
            cbor_text(&mut b, s);
        }
        ("application/x-amz-cbor-1.1", b)
    } else {
        let body = format!("{{\"__type\":\"{code}\",\"message\":\"{message}\"}}");
        let json = if content_type.contains("json-1.0") { content_type } else { "application/x-amz-json-1.1" };
        (json, body.into_bytes())
    };
    let reason = match status {
        400 => "Bad Request",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nx-amzn-ErrorType: {code}\r\n\
         x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// A CBOR text string (major type 3).
fn cbor_text(out: &mut Vec<u8>, s: &str) {
    let len = s.len();
    if len < 24 {
        out.push(0x60 | len as u8);
    } else if len < 256 {
        out.extend_from_slice(&[0x78, len as u8]);
    } else {
        out.push(0x79);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decisions(mut plan: FaultPlan, ops: &[&str], n: usize) -> Vec<Option<Fault>> {
        (0..n).map(|i| plan.decide(ops[i % ops.len()])).collect()
    }

    #[test]
    fn rate_plans_are_deterministic_given_the_seed() {
        let faults = [Fault::Throughput, Fault::Status500, Fault::Drop];
        let a = decisions(FaultPlan::rate(7, 0.2, &faults).burst(3), &["GetRecords"], 2000);
        let b = decisions(FaultPlan::rate(7, 0.2, &faults).burst(3), &["GetRecords"], 2000);
        let c = decisions(FaultPlan::rate(8, 0.2, &faults).burst(3), &["GetRecords"], 2000);
        assert_eq!(a, b, "same seed, same decisions");
        assert_ne!(a, c, "another seed, other decisions");
        let injected = a.iter().flatten().count();
        // 20% starts, bursts of 1..=3 (mean 2) on top: roughly a third of the calls, never none or all.
        assert!((300..900).contains(&injected), "{injected} faults in 2000 calls");
        for f in faults {
            assert!(a.contains(&Some(f)), "{f:?} is picked");
        }
        let longest = a.split(Option::is_none).map(<[_]>::len).max().unwrap_or(0);
        assert!(longest >= 3, "bursts happen: longest run {longest}");
    }

    #[test]
    fn scripts_filters_and_expired_iterators() {
        let plan = FaultPlan::script(vec![Some(Fault::Throughput), None, Some(Fault::Status503)]).only(&["GetRecords"]);
        let got = decisions(plan, &["GetRecords", "ListShards"], 8);
        assert_eq!(got, [Some(Fault::Throughput), None, None, None, Some(Fault::Status503), None, None, None]);
        let got = decisions(FaultPlan::rate(1, 1.0, &[Fault::ExpiredIterator]), &["GetShardIterator", "GetRecords"], 4);
        assert_eq!(got, [None, Some(Fault::ExpiredIterator), None, Some(Fault::ExpiredIterator)]);
        assert_eq!(decisions(FaultPlan::none(), &["GetRecords"], 3), [None, None, None]);
    }

    #[test]
    fn error_answers_in_both_protocols() {
        let json = String::from_utf8(error_response(Fault::Throughput, "application/x-amz-json-1.1")).expect("text");
        assert!(json.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{json}");
        assert!(json.contains("x-amzn-ErrorType: ProvisionedThroughputExceededException\r\n"));
        assert!(json.ends_with(r#"{"__type":"ProvisionedThroughputExceededException","message":"injected by kc-integration's fault proxy (throughput)"}"#));
        let dynamo = String::from_utf8(error_response(Fault::Throughput, "application/x-amz-json-1.0")).expect("text");
        assert!(dynamo.contains("Content-Type: application/x-amz-json-1.0\r\n"), "{dynamo}");
        let cbor = error_response(Fault::Status503, "application/x-amz-cbor-1.1");
        let text = String::from_utf8_lossy(&cbor);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("application/x-amz-cbor-1.1"));
        let body = &cbor[find(&cbor, b"\r\n\r\n").expect("head") + 4..];
        assert_eq!(&body[..8], b"\xa2\x66__type");
        assert_eq!(&body[8..27], b"\x72ServiceUnavailable");
        assert!(error_response(Fault::Drop, "application/x-amz-json-1.1").is_empty());
    }

    async fn client(endpoint: &str) -> aws_sdk_kinesis::Client {
        kc_examples::kinesis_client(endpoint).await
    }

    /// A throttling answer reaches the SDK as a ProvisionedThroughputExceededException (after the SDK's own retries
    /// of the scripted faults), and the request after the script is forwarded; needs no server for the faults, but
    /// forwards to a tiny HTTP server for the last call.
    #[tokio::test]
    async fn the_sdk_parses_injected_errors() {
        // A fake upstream that answers every request with an empty ListShards result.
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up_addr = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut c, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Ok(Some(_)) = read_message(&mut c, &mut buf).await {
                        let body = r#"{"Shards":[],"Records":[],"NextShardIterator":"it"}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if c.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        // The SDK tries 3 times by default: 3 throttles reach the caller as one throttling error.
        let script = vec![Some(Fault::Throughput); 3];
        let proxy = FaultProxy::start(&up_addr.to_string(), FaultPlan::script(script)).await.expect("proxy");
        let kinesis = client(&proxy.endpoint()).await;
        let err = kinesis.get_records().shard_iterator("it").send().await.expect_err("throttled");
        let service = err.as_service_error().expect("a service error");
        assert!(service.is_provisioned_throughput_exceeded_exception(), "{service:?}");
        let err = kinesis_consumer::api::ApiError::from_sdk(err);
        assert_eq!(err.kind(), kinesis_consumer::api::ApiErrorKind::Throttled);
        // The fourth request is forwarded.
        let out = kinesis.list_shards().stream_name("s").send().await.expect("forwarded");
        assert!(out.shards().is_empty());
        let counts = proxy.counts();
        assert_eq!(counts.injected.get(&Fault::Throughput), Some(&3));
        assert_eq!(counts.forwarded.get("ListShards"), Some(&1));
        assert_eq!(counts.forwarded.get("GetRecords"), None);

        // An expired iterator is not retried by the SDK: one injection, one error the consumer recognises.
        proxy.set_plan(FaultPlan::script(vec![Some(Fault::ExpiredIterator)]));
        let err = kinesis.get_records().shard_iterator("it").send().await.expect_err("expired");
        assert!(err.as_service_error().is_some_and(|e| e.is_expired_iterator_exception()));
        assert_eq!(proxy.counts().injected.get(&Fault::ExpiredIterator), Some(&1));

        // DynamoDB (awsJson 1.0): the SDK reads the injected code too.
        proxy.set_plan(FaultPlan::script(vec![Some(Fault::Throughput); 3]));
        let dynamo = kc_examples::dynamodb_client(&proxy.endpoint()).await;
        let err = dynamo.list_tables().send().await.expect_err("throttled");
        use aws_sdk_dynamodb::error::ProvideErrorMetadata as _;
        assert_eq!(err.code(), Some("ProvisionedThroughputExceededException"), "{err:?}");

        // 503 and a dropped connection are transient for the consumer; LimitExceeded is throttling.
        for (fault, kind) in [
            (Fault::Status503, kinesis_consumer::api::ApiErrorKind::Transient),
            (Fault::Drop, kinesis_consumer::api::ApiErrorKind::Transient),
            (Fault::LimitExceeded, kinesis_consumer::api::ApiErrorKind::Throttled),
        ] {
            proxy.set_plan(FaultPlan::script(vec![Some(fault); 3]));
            let err = kinesis.list_shards().stream_name("s").send().await.expect_err("fault");
            assert_eq!(kinesis_consumer::api::ApiError::from_sdk(err).kind(), kind, "{fault:?}");
        }
    }
}
