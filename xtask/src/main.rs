//! Developer tasks for the kinesis-consumer workspace, run as `cargo xtask <command>`.
//!
//! The alias lives in `.cargo/config.toml`. Every command says what it does before it does it;
//! commands run through `xshell` are echoed to stderr as `$ cmd`. `cargo xtask help` lists them.

// The xtask talks to a person on a terminal: printing is its job.
#![allow(clippy::print_stdout)]

mod bench;
mod ci;
mod codegen;
mod databases;
mod demo;
mod emulators;
mod fuzz;
mod integration;
mod reliability;
mod tls_databases;
mod unused_deps;
mod workspace;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

const HELP: &str = "\
cargo xtask <command> [-- <args>]

Commands:
  help          Print this list.
  emulators     Install the Node.js emulators (kinesalite, dynalite, kinesis-local) in .emulators (npm ci).
  kinesalite    Start kinesalite on a free 127.0.0.1 port and print its endpoint; Ctrl-C stops it.
  dynalite      Same for dynalite (DynamoDB).
  kinesis-local Same for kinesis-local (kinesis-mock: Kinesis with enhanced fan-out, plain HTTP).
  demo          Build the examples, produce examples/users.txt into kinesalite with `producer`,
                read it back with `consumer` (TRIM_HORIZON), stop it with SIGINT, check every line.
  integration   Start kinesalite, dynalite and kinesis-local, make sure PostgreSQL (5432) and MariaDB (3306) are up,
                start a second PostgreSQL and MariaDB that require TLS (temporary folders, a throwaway CA made
                with `openssl`, free 127.0.0.1 ports; removed afterwards), then `cargo test -p kc-integration`
                with KINESIS_ENDPOINT, DYNAMODB_ENDPOINT, KINESIS_LOCAL_ENDPOINT,
                DATABASE_URL_POSTGRES, DATABASE_URL_MYSQL, DATABASE_URL_POSTGRES_TLS, DATABASE_URL_MYSQL_TLS,
                KC_TLS_CA and KC_TLS_OTHER_CA set. Arguments after `--` go to
                `cargo test`, e.g. `cargo xtask integration -- --test kinesalite -- --nocapture`.
  ci            What CI runs, stopping at the first failure: fmt, unused dependencies, clippy, unit and doc
                tests, integration, rustdoc, cargo package (every publishable crate), cargo-deny (bans,
                licenses, sources). Prints a timing table.
  unused-deps   Fail when a workspace crate declares a dependency its code never names (xtask/src/unused_deps.rs:
                how it reads, and the allow-list). Nothing downloaded, nothing compiled.
  codegen       Generate kc-deagg's prost types (crates/kc-deagg/src/kpl_generated.rs) from its .proto with a
                vendored protoc; a test fails when the checked-in file is stale.
  fuzz          Fuzz kc-deagg's decoder for a bounded time (`-- SECONDS`, default 60); installs cargo-fuzz
                if missing. Not part of `ci`.
  reliability   Start the servers as `integration` does and run only integration/tests/reliability.rs
                (faults through a proxy, kinesalite restarts, database outage, kill -9, 1,000 shards,
                bad input) and integration/tests/group.rs (group workers killed, stopped, cut off
                from the lease table); prints a table: scenario, faults injected, records produced, handled,
                lost, duplicates, result. Arguments after `--` go to `cargo test`.
  nightly       `reliability`, then `fuzz` for a bounded time (`-- SECONDS`, default 300); prints
                the table, the fuzzer's executions and crashes. Not part of `ci`.
  bench         Run the benchmarks listed in xtask/src/bench.rs, starting kinesalite for those that
                need it. Arguments after `--` go to every `cargo bench`.

Emulators listen on 127.0.0.1 only and log to .emulators/run/<name>-<port>.log.
";

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
enum Task {
    Help,
    Emulators,
    Serve(&'static emulators::Kind),
    Demo,
    Integration { extra: Vec<String> },
    Ci,
    Codegen,
    UnusedDeps,
    Bench { extra: Vec<String> },
    Fuzz { extra: Vec<String> },
    Reliability { extra: Vec<String> },
    Nightly { extra: Vec<String> },
}

fn parse_args(args: &[String]) -> Result<Task> {
    let Some((name, rest)) = args.split_first() else {
        return Ok(Task::Help);
    };
    // Only `integration` and `bench` take arguments, and only after `--`.
    let extra = match rest.split_first() {
        None => None,
        Some((sep, extra)) if sep == "--" => Some(extra.to_vec()),
        Some((arg, _)) => {
            bail!("unexpected argument `{arg}` for `{name}` (see `cargo xtask help`)")
        }
    };
    let no_extra = |task: Task| match &extra {
        None => Ok(task),
        Some(_) => bail!("`{name}` takes no arguments (see `cargo xtask help`)"),
    };
    match name.as_str() {
        "help" | "-h" | "--help" => no_extra(Task::Help),
        "emulators" => no_extra(Task::Emulators),
        "kinesalite" => no_extra(Task::Serve(&emulators::KINESALITE)),
        "dynalite" => no_extra(Task::Serve(&emulators::DYNALITE)),
        "kinesis-local" => no_extra(Task::Serve(&emulators::KINESIS_LOCAL)),
        "demo" => no_extra(Task::Demo),
        "ci" => no_extra(Task::Ci),
        "codegen" => no_extra(Task::Codegen),
        "unused-deps" => no_extra(Task::UnusedDeps),
        "integration" => Ok(Task::Integration { extra: extra.unwrap_or_default() }),
        "bench" => Ok(Task::Bench { extra: extra.unwrap_or_default() }),
        "fuzz" => Ok(Task::Fuzz { extra: extra.unwrap_or_default() }),
        "reliability" => Ok(Task::Reliability { extra: extra.unwrap_or_default() }),
        "nightly" => Ok(Task::Nightly { extra: extra.unwrap_or_default() }),
        other => bail!("unknown command `{other}`\n\n{HELP}"),
    }
}

fn main() -> ExitCode {
    // The guards inside `run` (emulators, child processes) have dropped by the time this prints.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = parse_args(&args)?;
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match task {
        Task::Help => {
            print!("{HELP}");
            Ok(())
        }
        Task::Emulators => emulators::ensure_installed(&sh),
        Task::Serve(kind) => emulators::serve(&sh, kind),
        Task::Demo => demo::run(&sh),
        Task::Integration { extra } => integration::run(&sh, &extra),
        Task::Ci => ci::run(&sh),
        Task::Codegen => codegen::run(&project_root()),
        Task::UnusedDeps => unused_deps::run(&project_root()),
        Task::Bench { extra } => bench::run(&sh, &extra),
        Task::Fuzz { extra } => fuzz::run(&sh, &extra),
        Task::Reliability { extra } => reliability::run(&sh, &extra),
        Task::Nightly { extra } => reliability::nightly(&sh, &extra),
    }
}

/// The workspace root: the parent of this crate's folder.
fn project_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// The cargo that runs us (`cargo xtask` sets `$CARGO`), or the one on `PATH`.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Cargo's target directory, as cargo itself resolves it (`CARGO_TARGET_DIR`, config, default).
fn target_dir(sh: &Shell) -> Result<PathBuf> {
    let cargo = cargo();
    let metadata = cmd!(sh, "{cargo} metadata --format-version 1 --no-deps").quiet().read()?;
    json_string_field(&metadata, "target_directory")
        .map(PathBuf::from)
        .context("`cargo metadata` printed no target_directory")
}

/// The first string value of `"key":` in a JSON text. Enough for `cargo metadata` without serde.
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let start = json.find(&needle)? + needle.len();
    let mut chars = json[start..].trim_start().strip_prefix('"')?.chars();
    let mut value = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                escaped => value.push(escaped), // `\"`, `\\`, `\/`
            },
            c => value.push(c),
        }
    }
}

/// Fake credentials and a region for clients that talk to the local emulators, so the SDK's
/// default chain never looks further (profile files, instance metadata).
fn emulator_aws_env() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", "xtask-local"),
        ("AWS_SECRET_ACCESS_KEY", "xtask-local"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// `12.3s` or `4m 05.6s`.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let minutes = (secs / 60.0).floor();
        format!("{minutes:.0}m {:04.1}s", secs - minutes * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_commands() {
        let ok = [
            ("", Task::Help),
            ("help", Task::Help),
            ("--help", Task::Help),
            ("ci", Task::Ci),
            ("unused-deps", Task::UnusedDeps),
            ("demo", Task::Demo),
            ("emulators", Task::Emulators),
            ("kinesalite", Task::Serve(&emulators::KINESALITE)),
            ("kinesis-local", Task::Serve(&emulators::KINESIS_LOCAL)),
            ("integration", Task::Integration { extra: vec![] }),
            ("integration --", Task::Integration { extra: vec![] }),
            (
                "integration -- --test kinesalite -- --nocapture",
                Task::Integration { extra: args("--test kinesalite -- --nocapture") },
            ),
            ("bench -- --quiet", Task::Bench { extra: args("--quiet") }),
            ("reliability", Task::Reliability { extra: vec![] }),
            ("nightly -- 30", Task::Nightly { extra: args("30") }),
        ];
        for (line, want) in ok {
            assert_eq!(parse_args(&args(line)).ok(), Some(want), "{line:?}");
        }
        for bad in ["frobnicate", "ci --fast", "ci -- x", "integration --nocapture"] {
            assert!(parse_args(&args(bad)).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn reads_json_string_fields() {
        let json = r#"{"packages":[],"target_directory": "/w/t\"a\\b\u00e9","version":1}"#;
        assert_eq!(json_string_field(json, "target_directory").as_deref(), Some("/w/t\"a\\bé"));
        assert_eq!(json_string_field(json, "version"), None);
        assert_eq!(json_string_field(json, "missing"), None);
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m 05.0s");
    }
}
