//! What a check of the suites returns: `Ok(())` or a [`Failure`] saying what went wrong, built with [`ensure!`],
//! [`fail!`] or [`Context`] (a small stand-in for `anyhow`, which a library does not put in its dependencies).

use std::fmt;

use crate::Error;

/// Why a check failed: one line of text, with the kind and the sources of a store error in it.
#[derive(Debug)]
pub(crate) struct Failure(String);

/// The result of one check.
pub(crate) type Outcome = Result<(), Failure>;

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// The error, its kind when it is a store [`Error`], and its sources, on one line.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = match err.downcast_ref::<Error>() {
        Some(e) => format!("{:?} error: {e}", e.kind()),
        None => err.to_string(),
    };
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Self(describe(&err))
    }
}

/// Adds what was being done to an error or a missing value.
pub(crate) trait Context<T> {
    /// `Err` or `None` become a failure starting with `what`.
    fn context(self, what: impl fmt::Display) -> Result<T, Failure>;

    /// Like [`Context::context`], with `what` computed only on failure.
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, Failure>;
}

impl<T, E: std::error::Error + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{what}: {}", describe(&e))))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, Failure> {
        self.map_err(|e| Failure(format!("{}: {}", what(), describe(&e))))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.ok_or_else(|| Failure(what.to_string()))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, Failure> {
        self.ok_or_else(|| Failure(what().to_string()))
    }
}

/// A [`Failure`] from a format string.
macro_rules! fail {
    ($($arg:tt)+) => {
        $crate::test_util::check::Failure::new(format!($($arg)+))
    };
}

/// Returns a [`Failure`] from the enclosing check unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::test_util::check::fail!($($arg)+));
        }
    };
}

pub(crate) use {ensure, fail};
