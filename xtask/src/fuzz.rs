//! `cargo xtask fuzz [-- SECONDS]`: the kc-deagg `decode` fuzz target for a bounded time (default 60 s).
//!
//! Not part of `ci` (it needs cargo-fuzz and minutes of CPU); a nightly-style command. cargo-fuzz needs nightly
//! compiler flags: `RUSTC_BOOTSTRAP=1` lets the stable toolchain accept them. libFuzzer's output is passed through
//! and read for the figures printed at the end: executions, and crashes (new files in `fuzz/artifacts/decode/`).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::cargo;

/// What one fuzz run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FuzzFigures {
    pub(crate) seconds: u64,
    /// Executions of the target, from libFuzzer's `Done N runs` (or its last `#N` status line).
    pub(crate) executions: Option<u64>,
    /// Crash, leak, timeout and out-of-memory inputs libFuzzer wrote during the run.
    pub(crate) crashes: usize,
}

pub(crate) fn run(sh: &Shell, extra: &[String]) -> Result<()> {
    let seconds: u64 = match extra {
        [] => 60,
        [s] => s.parse().with_context(|| format!("`{s}` is not a number of seconds"))?,
        _ => anyhow::bail!("usage: cargo xtask fuzz [-- SECONDS]"),
    };
    let figures = fuzz(sh, seconds)?;
    print_figures(&figures);
    anyhow::ensure!(figures.crashes == 0, "the fuzzer found {} crashing input(s)", figures.crashes);
    Ok(())
}

pub(crate) fn print_figures(f: &FuzzFigures) {
    let execs = f.executions.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    println!("fuzz kc-deagg decode: {} s, {execs} executions, {} crashes", f.seconds, f.crashes);
}

/// Runs the target for `seconds`; an error only when the fuzzer could not run (a crash is in the figures).
pub(crate) fn fuzz(sh: &Shell, seconds: u64) -> Result<FuzzFigures> {
    let cargo = cargo();
    if cmd!(sh, "{cargo} fuzz --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        println!("cargo-fuzz is not installed: installing it (cargo install cargo-fuzz --locked)");
        cmd!(sh, "{cargo} install cargo-fuzz --locked").run()?;
    }
    let dir = sh.current_dir().join("crates/kc-deagg");
    let _in_crate = sh.push_dir(&dir);
    sh.create_dir("fuzz/corpus/decode")?;
    for entry in sh.read_dir("tests/data")? {
        if entry.extension().is_some_and(|e| e == "bin") {
            if let Some(name) = entry.file_name() {
                sh.copy_file(&entry, dir.join("fuzz/corpus/decode").join(name))?;
            }
        }
    }
    let artifacts = dir.join("fuzz/artifacts/decode");
    let before = artifact_count(&artifacts);
    println!("fuzzing kc-deagg decode for {seconds} s (crashes go to crates/kc-deagg/fuzz/artifacts/decode/)");
    println!("$ cargo fuzz run decode fuzz/corpus/decode -- -max_total_time={seconds} -dict=fuzz/decode.dict");
    let mut child = Command::new(&cargo)
        .args(["fuzz", "run", "decode", "fuzz/corpus/decode", "--"])
        .arg(format!("-max_total_time={seconds}"))
        .arg("-dict=fuzz/decode.dict")
        .current_dir(&dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo fuzz")?;
    let mut executions = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading the fuzzer's output")?;
            eprintln!("{line}");
            if let Some(n) = executions_in(&line) {
                executions = Some(n);
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let crashes = artifact_count(&artifacts).saturating_sub(before);
    if !status.success() && crashes == 0 {
        anyhow::bail!("cargo fuzz failed ({status}) without writing a crashing input: see its output above");
    }
    Ok(FuzzFigures { seconds, executions, crashes })
}

/// The executions a libFuzzer line reports: `Done 123 runs in 60 second(s)` or a status line `#123\t...`.
fn executions_in(line: &str) -> Option<u64> {
    if let Some(rest) = line.strip_prefix("Done ") {
        return rest.split_whitespace().next()?.parse().ok();
    }
    let rest = line.strip_prefix('#')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with(char::is_whitespace) {
        return None;
    }
    digits.parse().ok()
}

fn artifact_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|entries| entries.filter_map(Result::ok).count()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures() {
        assert_eq!(
            executions_in("#123456\tpulse  cov: 300 ft: 900 corp: 80/2Kb exec/s: 40000 rss: 60Mb"),
            Some(123456)
        );
        assert_eq!(executions_in("Done 2400000 runs in 61 second(s)"), Some(2400000));
        assert_eq!(executions_in("#2\tINITED cov: 10"), Some(2));
        assert_eq!(executions_in("INFO: Seed: 42"), None);
        assert_eq!(executions_in("#x"), None);
    }
}
