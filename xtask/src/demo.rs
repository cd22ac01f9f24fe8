//! `cargo xtask demo`: the example producer and consumer end to end against kinesalite.
//!
//! The contract with the examples: `producer` puts every line of its stdin as one record
//! (creating the stream and waiting for ACTIVE), and `consumer` prints each record's data as
//! one line on stdout (logs go to stderr) and exits 0 on SIGINT.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use kc_test_support::process::ChildGuard;
use xshell::{cmd, Shell};

use crate::{
    cargo, emulator_aws_env,
    emulators::{self, KINESALITE},
    project_root, target_dir,
};

const STREAM: &str = "demo";
const INPUT: &str = "examples/users.txt";
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) fn run(sh: &Shell) -> Result<()> {
    let input = sh.read_file(project_root().join(INPUT)).with_context(|| format!("reading {INPUT}"))?;
    let expected: Vec<&str> =
        input.lines().map(|line| line.trim_end_matches('\r')).filter(|line| !line.is_empty()).collect();
    if expected.is_empty() {
        bail!("{INPUT} has no non-empty line: nothing to demo");
    }

    emulators::ensure_installed(sh)?;
    let kinesalite = emulators::start(&KINESALITE)?;
    let endpoint = kinesalite.endpoint();

    println!("building the example binaries");
    let cargo = cargo();
    cmd!(sh, "{cargo} build -p kc-examples --bins").run()?;
    let bin_dir = target_dir(sh)?.join("debug");

    println!("producing {} records from {INPUT} into stream `{STREAM}` (2 shards)", expected.len());
    let producer = bin_dir.join("producer");
    cmd!(sh, "{producer} --stream {STREAM} --endpoint {endpoint} --shards 2")
        .stdin(&input)
        .envs(emulator_aws_env())
        .run()?;

    println!("consuming stream `{STREAM}` from TRIM_HORIZON with app `demo`");
    let consumer_bin = bin_dir.join("consumer");
    let child = Command::new(&consumer_bin)
        .args(["--stream", STREAM, "--endpoint", &endpoint, "--app", "demo", "--iterator-type", "TRIM_HORIZON"])
        .envs(emulator_aws_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", consumer_bin.display()))?;
    let mut consumer = ChildGuard::new("consumer", child);
    let stdout = consumer.child_mut().stdout.take().context("consumer stdout was not piped")?;
    let (lines_tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut tally = Tally::new(&expected);
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while tally.missing > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => tally.see(line.context("reading the consumer's stdout")?),
            Err(RecvTimeoutError::Timeout) => bail!(
                "the consumer printed only {} of {} records within {}s; missing: {}",
                expected.len() - tally.missing,
                expected.len(),
                CONSUME_TIMEOUT.as_secs(),
                tally.missing_lines()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = consumer.child_mut().wait()?;
                bail!(
                    "the consumer exited ({status}) before printing every record; missing: {}",
                    tally.missing_lines()
                );
            }
        }
    }

    let pid = consumer.id().to_string();
    println!("all {} records consumed: sending SIGINT to the consumer (pid {pid})", expected.len());
    cmd!(sh, "kill -INT {pid}").run()?;
    let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
    let status = loop {
        if let Some(status) = consumer.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the consumer did not exit within {}s of SIGINT", SHUTDOWN_TIMEOUT.as_secs());
        }
        while let Ok(line) = lines.try_recv() {
            tally.see(line.context("reading the consumer's stdout")?);
        }
        thread::sleep(Duration::from_millis(100));
    };
    // The reader thread ends at EOF, which follows the exit.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
        tally.see(line.context("reading the consumer's stdout")?);
    }
    if !status.success() {
        bail!("the consumer exited with {status} after SIGINT, expected exit status 0");
    }
    println!("consumer exited cleanly ({status})");
    if !tally.unexpected.is_empty() {
        bail!(
            "the consumer printed {} line(s) that {INPUT} does not have (or has fewer times): {:?}",
            tally.unexpected.len(),
            tally.unexpected
        );
    }
    drop(kinesalite);
    println!("demo ok: {} records produced and consumed", expected.len());
    Ok(())
}

/// The expected lines as a multiset, ticked off as the consumer prints them.
struct Tally<'a> {
    remaining: HashMap<&'a str, usize>,
    missing: usize,
    unexpected: Vec<String>,
}

impl<'a> Tally<'a> {
    fn new(expected: &[&'a str]) -> Self {
        let mut remaining = HashMap::new();
        for line in expected {
            *remaining.entry(*line).or_insert(0) += 1;
        }
        Tally { remaining, missing: expected.len(), unexpected: Vec::new() }
    }

    fn see(&mut self, line: String) {
        match self.remaining.get_mut(line.as_str()) {
            Some(count) if *count > 0 => {
                *count -= 1;
                self.missing -= 1;
                println!("  consumed: {line}");
            }
            _ => {
                println!("  consumed (unexpected): {line}");
                self.unexpected.push(line);
            }
        }
    }

    fn missing_lines(&self) -> String {
        let mut missing: Vec<String> = self
            .remaining
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(line, count)| if *count > 1 { format!("{line:?} x{count}") } else { format!("{line:?}") })
            .collect();
        missing.sort();
        let shown = missing.len().min(20);
        let more = missing.len() - shown;
        let mut text = missing[..shown].join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_a_multiset() {
        let mut tally = Tally::new(&["ann", "bob", "ann"]);
        assert_eq!(tally.missing, 3);
        tally.see("ann".to_owned());
        tally.see("zed".to_owned());
        tally.see("bob".to_owned());
        tally.see("bob".to_owned());
        assert_eq!(tally.missing, 1);
        assert_eq!(tally.missing_lines(), "\"ann\"");
        assert_eq!(tally.unexpected, ["zed", "bob"]);
        tally.see("ann".to_owned());
        assert_eq!(tally.missing, 0);
    }
}
