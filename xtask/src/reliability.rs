//! `cargo xtask reliability`: the fault, crash and bad-input scenarios of `integration/tests/reliability.rs`, the
//! consumer-group fault scenarios of `integration/tests/group.rs` and the poison records of
//! `integration/tests/dead_letter.rs`, with their figures in one table;
//! `cargo xtask nightly`: that, then the fuzzer for a bounded time.

use std::time::Instant;

use anyhow::Result;
use xshell::Shell;

use crate::{format_duration, fuzz, integration, target_dir};

/// The columns each scenario writes, tab-separated, one row per line, to the file named by `KC_RELIABILITY_REPORT`.
const COLUMNS: [&str; 7] = ["scenario", "faults injected", "produced", "handled", "lost", "duplicates", "result"];

/// Runs the reliability tests against fresh servers and prints their table (also when some failed).
pub(crate) fn run(sh: &Shell, extra: &[String]) -> Result<()> {
    let report = target_dir(sh)?.join("reliability-report.tsv");
    if report.exists() {
        std::fs::remove_file(&report)?;
    }
    // The single-consumer scenarios, the consumer-group ones (rows `G…`: a worker killed, stopped, cut off), and the
    // poison records of the failure policy (row `P1`).
    let mut args: Vec<String> =
        ["--test", "reliability", "--test", "group", "--test", "dead_letter"].map(String::from).into();
    args.extend(extra.iter().cloned());
    if !extra.iter().any(|a| a == "--") {
        args.extend(["--".into(), "--nocapture".into()]);
    }
    let started = Instant::now();
    let result = integration::run_with(sh, &args, &[("KC_RELIABILITY_REPORT", report.display().to_string())]);
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    println!("\nreliability scenarios ({}):\n", format_duration(started.elapsed()));
    print!("{}", table(&text));
    result
}

/// `cargo xtask nightly [-- FUZZ_SECONDS]`: reliability, then the fuzzer (default 300 s); prints both summaries.
pub(crate) fn nightly(sh: &Shell, extra: &[String]) -> Result<()> {
    let seconds: u64 = match extra {
        [] => 300,
        [s] => s.parse().map_err(|_| anyhow::anyhow!("`{s}` is not a number of seconds"))?,
        _ => anyhow::bail!("usage: cargo xtask nightly [-- FUZZ_SECONDS]"),
    };
    let reliability = run(sh, &[]);
    let figures = fuzz::fuzz(sh, seconds);
    println!("\nnightly summary:");
    match &reliability {
        Ok(()) => println!("  reliability: every scenario passed (table above)"),
        Err(e) => println!("  reliability: FAILED: {e:#}"),
    }
    match &figures {
        Ok(f) => {
            print!("  ");
            fuzz::print_figures(f);
        }
        Err(e) => println!("  fuzz: could not run: {e:#}"),
    }
    reliability?;
    let figures = figures?;
    anyhow::ensure!(figures.crashes == 0, "the fuzzer found {} crashing input(s)", figures.crashes);
    Ok(())
}

/// The report's rows as an aligned table.
fn table(report: &str) -> String {
    let mut rows: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| (*c).to_owned()).collect()];
    let mut lines: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    // The tests finish in any order: list them by scenario number.
    lines.sort_unstable();
    rows.extend(lines.into_iter().map(|l| l.split('\t').map(str::to_owned).collect()));
    if rows.len() == 1 {
        return "(no scenario wrote a row: see the test output above)\n".to_owned();
    }
    let mut widths = vec![0; COLUMNS.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let cell = row.get(i).map_or("", String::as_str);
                // Text columns left, figures right.
                if i == 0 || i == 1 || i == 6 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_rows_become_an_aligned_table() {
        let t = table("7 bad input\t-\t5\t4\t1\t0\tFAIL\n\n1 throttling\tthroughput=3\t100\t100\t0\t0\tpass\n");
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("scenario      faults injected"), "{t}");
        assert!(lines[1].ends_with("pass"), "{t}");
        assert!(lines[2].contains("7 bad input"), "{t}");
        assert!(table("").contains("no scenario"));
    }
}
