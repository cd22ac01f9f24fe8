//! The example binaries as a user runs them, against kinesalite. `cargo xtask integration` builds them and passes
//! their folder in `KC_EXAMPLES_BIN_DIR`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use kc_integration::{kinesis_endpoint, unique_stream};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var("KC_EXAMPLES_BIN_DIR").unwrap_or_else(|_| {
        panic!("KC_EXAMPLES_BIN_DIR is not set: run the integration tests with `cargo xtask integration`")
    });
    let path = PathBuf::from(dir).join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the examples (`cargo build -p kc-examples --bins`)",
        path.display()
    );
    path
}

async fn produce(stream: &str, lines: &[String], extra: &[&str]) {
    let mut child = Command::new(bin("producer"))
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
    Command::new(bin("consumer"))
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
async fn aggregated_producer_and_deaggregating_consumer_with_sigterm() {
    let stream = unique_stream("ex-kpl");
    let lines: Vec<String> = (0..1000).map(|i| format!("user-record-{i}")).collect();
    produce(&stream, &lines, &["--aggregate", "64"]).await;
    let printed = read_then_stop(consumer(&stream, &["--aggregation"]), lines.len(), "-TERM").await;
    assert_eq!(printed.len(), lines.len(), "exactly the user records, no aggregate and no duplicate");
    assert_eq!(multiset(&printed), multiset(&lines));
}
