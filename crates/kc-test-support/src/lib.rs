//! The test helpers of the kinesis-consumer workspace, written once and used by kc-core's tests and benchmarks,
//! by `kc-integration` (tests against real servers, benchmarks) and by `xtask`.
//!
//! Without features the crate is std only, for `xtask` as much as for tests:
//! - [`names`]: stream, table and folder names no other test or run uses;
//! - [`net::free_port`], [`env::required`] (a server's address from the environment, or a loud failure);
//! - [`process::ChildGuard`] and [`emulator`]: the Node.js emulators (kinesalite, dynalite, kinesis-local) started on
//!   127.0.0.1 and waited for;
//! - [`check`]: lost and duplicate counts, numbered data, medians for benchmarks, a poison-tolerant lock.
//!
//! Feature `consumer` adds what needs a consumer (kc-core, Tokio): [`Seen`] (what a handler saw, with the per-key
//! order and exactly-once checks), [`Wait`] (polling on Tokio's clock, so the same helper serves paused-time tests
//! and real-time ones with another period and limit), collecting scans ([`spawn_collecting`], [`Collect`],
//! [`collect_until`]) and [`time_scan`] for benchmarks. Feature `fake` adds helpers for kc-core's in-process fake
//! Kinesis and a debugging metrics recorder.
//!
//! ```
//! use kc_test_support::check::tally;
//! use kc_test_support::names::unique_table;
//!
//! let table = unique_table("kc_doc");
//! assert!(table.starts_with("kc_doc_"));
//! assert_ne!(table, unique_table("kc_doc"));
//! // Records `b` and `c` produced, `a` and `b` twice handled: `c` lost, `b` once too often.
//! assert_eq!(tally(&["b", "c"], &["a", "b", "b"]), (1, 1));
//! ```

pub mod check;
pub mod emulator;
pub mod env;
pub mod names;
pub mod net;
pub mod process;

#[cfg(feature = "consumer")]
mod scan;
#[cfg(feature = "consumer")]
mod seen;
#[cfg(feature = "consumer")]
mod tracker;
#[cfg(feature = "consumer")]
mod wait;

#[cfg(feature = "fake")]
pub mod fake;

#[cfg(feature = "consumer")]
pub use scan::{
    cancel_after, checkpoint, collect_until, scan_failing_at, spawn_collecting, spawn_recording, time_scan, Collect,
    Collecting, Timed,
};
#[cfg(feature = "consumer")]
pub use seen::{Seen, SeenRecord};
#[cfg(feature = "consumer")]
pub use tracker::Tracker;
#[cfg(feature = "consumer")]
pub use wait::{wait_for, Wait};
