//! Where the servers are: `cargo xtask integration` (and `cargo xtask bench`) start them and pass their addresses in
//! the environment. A test whose server is missing fails loudly, it never passes.

/// The value of the environment variable `name`.
///
/// # Panics
/// When it is not set or empty, saying how to run the tests so that it is.
pub fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: run the integration tests with `cargo xtask integration` (benchmarks: `cargo xtask \
             bench`), which start the servers and set it"
        ),
    }
}

/// A count set in the environment variable `name` (a benchmark's knob), if it is set.
///
/// # Panics
/// When it is set to something that is not a count: a knob mistyped is not silently ignored.
pub fn count(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    Some(value.parse().unwrap_or_else(|_| panic!("{name}={value} is not a count")))
}
