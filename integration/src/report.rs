//! The reliability table: each fault scenario (in `tests/reliability.rs` and the group scenarios of
//! `tests/group.rs`) prints one row of figures and appends it to the file named by `KC_RELIABILITY_REPORT`, which
//! `cargo xtask reliability` prints as a table.

use std::io::Write as _;

pub use kc_test_support::check::tally;

/// One line of the reliability table.
#[derive(Debug)]
pub struct Row {
    /// Sorts the table: `1 …` to `7 …` for the single-consumer scenarios, `G…` for consumer groups.
    pub scenario: String,
    /// What was injected, and the scenario's own figures (times, bounds).
    pub faults: String,
    /// Records put on the stream.
    pub produced: usize,
    /// Handler calls (a record handled twice counts twice).
    pub handled: usize,
    /// Records produced and never handled.
    pub lost: usize,
    /// Handler calls beyond the first for a record.
    pub duplicates: usize,
    /// Whether every check of the scenario held.
    pub ok: bool,
}

impl Row {
    /// Prints the row and appends it to `$KC_RELIABILITY_REPORT` (when set).
    ///
    /// # Panics
    /// When the report file is set but cannot be appended to.
    #[allow(clippy::print_stdout)] // Printing the figures is the point.
    pub fn report(&self) {
        let result = if self.ok { "pass" } else { "FAIL" };
        println!(
            "[reliability] {} | faults: {} | produced {} | handled {} | lost {} | duplicates {} | {result}",
            self.scenario, self.faults, self.produced, self.handled, self.lost, self.duplicates
        );
        if let Ok(path) = std::env::var("KC_RELIABILITY_REPORT") {
            if path.is_empty() {
                return;
            }
            let line = format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{result}\n",
                self.scenario, self.faults, self.produced, self.handled, self.lost, self.duplicates
            );
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
            // One write of a short line to an O_APPEND file: rows of concurrent tests do not interleave.
            let written = file.and_then(|mut f| f.write_all(line.as_bytes()));
            assert!(written.is_ok(), "cannot append to KC_RELIABILITY_REPORT={path}: {written:?}");
        }
    }
}
