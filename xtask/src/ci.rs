//! `cargo xtask ci`: every check CI runs, in order, timed, stopping at the first failure.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::{cargo, format_duration, integration, project_root, unused_deps, workspace};

/// The cargo-deny that `deny.toml` is written for; installed when `cargo deny` is missing.
const CARGO_DENY_VERSION: &str = "0.20.2";

struct Step {
    name: &'static str,
    run: fn(&Shell) -> Result<()>,
}

const STEPS: &[Step] = &[
    Step { name: "fmt", run: fmt },
    Step { name: "unused dependencies", run: |_| unused_deps::run(&project_root()) },
    Step { name: "clippy", run: clippy },
    Step { name: "test (unit + doc)", run: test },
    Step { name: "integration", run: |sh| integration::run(sh, &[]) },
    Step { name: "doc", run: doc },
    Step { name: "package", run: package },
    Step { name: "deny", run: deny },
];

fn fmt(sh: &Shell) -> Result<()> {
    let cargo = cargo();
    cmd!(sh, "{cargo} fmt --all -- --check").run()?;
    Ok(())
}

fn clippy(sh: &Shell) -> Result<()> {
    let cargo = cargo();
    cmd!(sh, "{cargo} clippy --workspace --all-targets --all-features -- -D warnings").run()?;
    Ok(())
}

fn test(sh: &Shell) -> Result<()> {
    let cargo = cargo();
    cmd!(sh, "{cargo} test --workspace --exclude kc-integration --all-features").run()?;
    Ok(())
}

fn doc(sh: &Shell) -> Result<()> {
    let cargo = cargo();
    cmd!(sh, "{cargo} doc --workspace --no-deps --all-features").env("RUSTDOCFLAGS", "-D warnings").run()?;
    Ok(())
}

/// Every crate that is not `publish = false` packaged as `cargo publish` would (README, manifest, versions of the
/// workspace dependencies), without building the packages: `--no-verify`. Verifying builds each package alone from
/// its `.crate` in a target directory of its own, a cold build of the AWS SDK and sqlx measured at many minutes
/// here against ~12 s (README, "Publishing"); the workspace build in the other steps compiles the same sources.
fn package(sh: &Shell) -> Result<()> {
    let cargo = cargo();
    let (published, unpublished) = workspace::publishable(&project_root())?;
    println!("packaging {}", published.join(", "));
    let excludes = unpublished.iter().flat_map(|name| ["--exclude", name.as_str()]);
    cmd!(sh, "{cargo} package --workspace --no-verify --allow-dirty {excludes...}").run()?;
    Ok(())
}

/// Advisories are left out: their database cannot be fetched here (see deny.toml).
fn deny(sh: &Shell) -> Result<()> {
    let cargo = cargo();
    if cmd!(sh, "{cargo} deny --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        println!("cargo-deny is not installed: installing cargo-deny {CARGO_DENY_VERSION} (takes a few minutes)");
        cmd!(sh, "{cargo} install cargo-deny --locked --version {CARGO_DENY_VERSION}").run()?;
    }
    cmd!(sh, "{cargo} deny check bans licenses sources").run()?;
    Ok(())
}

pub(crate) fn run(sh: &Shell) -> Result<()> {
    let started = Instant::now();
    let mut done: Vec<(&str, Duration, bool)> = Vec::new();
    for (index, step) in STEPS.iter().enumerate() {
        println!("\n==> [{}/{}] {}", index + 1, STEPS.len(), step.name);
        let step_started = Instant::now();
        let result = (step.run)(sh);
        let took = step_started.elapsed();
        done.push((step.name, took, result.is_ok()));
        match result {
            Ok(()) => println!("==> {} ok in {}", step.name, format_duration(took)),
            Err(err) => {
                eprintln!("==> {} FAILED after {}: {err:#}", step.name, format_duration(took));
                print_table(&done, started.elapsed());
                bail!("ci failed at step `{}`", step.name);
            }
        }
    }
    print_table(&done, started.elapsed());
    println!("ci ok");
    Ok(())
}

fn print_table(done: &[(&str, Duration, bool)], total: Duration) {
    let width = STEPS.iter().map(|step| step.name.len()).max().unwrap_or(0).max("total".len());
    println!("\n{:<width$}  {:>10}  result", "step", "duration");
    for (name, took, ok) in done {
        println!("{name:<width$}  {:>10}  {}", format_duration(*took), if *ok { "ok" } else { "FAILED" });
    }
    for step in &STEPS[done.len()..] {
        println!("{:<width$}  {:>10}  not run", step.name, "-");
    }
    println!("{:<width$}  {:>10}", "total", format_duration(total));
}
