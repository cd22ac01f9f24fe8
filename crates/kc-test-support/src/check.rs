//! Checks and figures over what was produced and what was handled, for tests and benchmarks.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Records produced but never handled, and handlings beyond the first of a record.
#[must_use]
pub fn tally<P: AsRef<str>, H: AsRef<str>>(produced: &[P], handled: &[H]) -> (usize, usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for h in handled {
        *counts.entry(h.as_ref()).or_default() += 1;
    }
    let lost = produced.iter().filter(|p| !counts.contains_key(p.as_ref())).count();
    let duplicates = counts.values().map(|n| n - 1).sum();
    (lost, duplicates)
}

/// The number `i` of numbered data `{prefix}{i}` (the prefix has no digit).
///
/// # Panics
/// When `data` does not end in a number after its prefix.
pub fn number(data: &str) -> usize {
    let digits = data.trim_start_matches(|c: char| !c.is_ascii_digit());
    digits.parse().unwrap_or_else(|_| panic!("not numbered: {data}"))
}

/// The median of `values` (the upper one of an even count).
///
/// # Panics
/// When `values` is empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Whether a benchmark runs as a quick check: `cargo test --benches` runs it without `--bench`, `cargo bench` with.
pub fn quick_bench() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The endpoint benchmark `bench` reads from the environment variable `var` (set by `cargo xtask bench`); `None`,
/// after saying so, when it is run as a quick check without it.
///
/// # Panics
/// When `var` is not set in a real run (`--bench`).
#[allow(clippy::print_stdout)] // A skipped benchmark says so where its figures would be.
pub fn bench_endpoint(bench: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(endpoint) => Some(endpoint),
        Err(_) if quick_bench() => {
            println!("{bench}: {var} not set, skipped (run `cargo xtask bench`)");
            None
        }
        Err(_) => panic!("{var} is not set: run this bench with `cargo xtask bench`"),
    }
}

/// Locks `m`, also when a panicking thread poisoned it (a test's own assertion is the failure to report).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
