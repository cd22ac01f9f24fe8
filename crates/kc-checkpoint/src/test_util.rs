//! Conformance suites for the traits other crates implement (feature `test-util`): [`store_suite`] for
//! [`CheckpointStore`](crate::CheckpointStore)s and [`lease_suite`] for [`LeaseTable`](crate::lease::LeaseTable)s.
//!
//! A store or lease-table crate runs the suite in its tests, against a real server where it has one, to show that
//! it keeps the contract the consumer relies on (checkpoints never move backwards, failures are reported, writes
//! are fenced, ...). The in-memory implementations of this crate pass both. A check that fails makes the suite
//! panic with the list of failed checks and why, so a suite is called from a `#[tokio::test]`.
//!
//! The suites depend only on this crate and Tokio (which they use to spawn concurrent writers and to wait).

mod check;
pub mod lease_suite;
pub mod store_suite;
