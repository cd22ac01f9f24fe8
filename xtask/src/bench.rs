//! `cargo xtask bench`: the benchmarks, each with the servers it needs.

use anyhow::Result;
use xshell::{cmd, Shell};

use crate::{
    cargo, databases, emulator_aws_env,
    emulators::{self, Emulator, DYNALITE, KINESALITE, KINESIS_LOCAL},
};

struct Bench {
    package: &'static str,
    /// `--bench <name>`, or every bench target of the package when `None`.
    bench: Option<&'static str>,
    /// Package features the bench target requires (its `required-features`).
    features: &'static [&'static str],
    /// Started once, for the first bench that needs it; exported as `KINESIS_ENDPOINT` (with dynalite as
    /// `DYNAMODB_ENDPOINT` and the databases' URLs).
    needs_kinesalite: bool,
    /// Started once, for the first bench that needs it; exported as `KINESIS_LOCAL_ENDPOINT` (enhanced fan-out).
    needs_kinesis_local: bool,
}

/// Run in this order. Add a line here for a new benchmark.
#[rustfmt::skip]
const BENCHES: &[Bench] = &[
    Bench { package: "kc-core", bench: Some("scan_loop"), features: &["test-util"], needs_kinesalite: false, needs_kinesis_local: false },
    // Issue 15: per-key parallelism inside a shard, n = 1, 4, 16, 64.
    Bench { package: "kc-core", bench: Some("per_key"), features: &["test-util"], needs_kinesalite: false, needs_kinesis_local: false },
    Bench { package: "kc-integration", bench: Some("vs_sdk"), features: &[], needs_kinesalite: true, needs_kinesis_local: false },
    // Issue 15: one shard with and without prefetch, three handlers, on kinesalite and on a memory-speed server.
    Bench { package: "kc-integration", bench: Some("throughput"), features: &[], needs_kinesalite: true, needs_kinesis_local: false },
    // Issue 13: N = 100, 400, 1,000 shards, the consumer next to a bare SDK loop; idle calls per shard.
    Bench { package: "kc-integration", bench: Some("many_shards"), features: &[], needs_kinesalite: true, needs_kinesis_local: false },
    // Issue 13 at memory speed: N = 1,000, 4,000, 10,000 shards on a server of its own; CPU seconds and peak RSS.
    Bench { package: "kc-integration", bench: Some("memory_shards"), features: &[], needs_kinesalite: false, needs_kinesis_local: false },
    Bench { package: "kc-integration", bench: Some("stores"), features: &[], needs_kinesalite: true, needs_kinesis_local: false },
    // 16 workers x 4,096 leases over the in-process fake Kinesis, against PostgreSQL, MariaDB and dynalite.
    Bench { package: "kc-integration", bench: Some("group"), features: &[], needs_kinesalite: true, needs_kinesis_local: false },
    // Put-to-handler latency, polling vs enhanced fan-out, both against kinesis-local.
    Bench { package: "kc-integration", bench: Some("latency"), features: &[], needs_kinesalite: false, needs_kinesis_local: true },
    Bench { package: "kc-deagg", bench: None, features: &[], needs_kinesalite: false, needs_kinesis_local: false },
];

pub(crate) fn run(sh: &Shell, extra: &[String]) -> Result<()> {
    let cargo = cargo();
    let mut kinesalite: Option<Emulator> = None;
    let mut dynalite: Option<Emulator> = None;
    let mut kinesis_local: Option<Emulator> = None;
    for bench in BENCHES {
        let package = bench.package;
        let mut target: Vec<String> = Vec::new();
        if let Some(name) = bench.bench {
            target.extend(["--bench".to_owned(), name.to_owned()]);
        }
        if !bench.features.is_empty() {
            target.extend(["--features".to_owned(), bench.features.join(",")]);
        }
        let mut command = cmd!(sh, "{cargo} bench -p {package} {target...} {extra...}");
        if bench.needs_kinesalite {
            let emulator = match &mut kinesalite {
                Some(emulator) => emulator,
                None => {
                    emulators::ensure_installed(sh)?;
                    kinesalite.insert(emulators::start(&KINESALITE)?)
                }
            };
            let ddb = match &mut dynalite {
                Some(emulator) => emulator,
                None => dynalite.insert(emulators::start(&DYNALITE)?),
            };
            command = command
                .env("DYNAMODB_ENDPOINT", ddb.endpoint())
                .env("KINESIS_ENDPOINT", emulator.endpoint())
                .env("DATABASE_URL_POSTGRES", databases::POSTGRES_URL)
                .env("DATABASE_URL_MYSQL", databases::MYSQL_URL)
                .envs(emulator_aws_env());
        }
        if bench.needs_kinesis_local {
            let emulator = match &mut kinesis_local {
                Some(emulator) => emulator,
                None => {
                    emulators::ensure_installed(sh)?;
                    kinesis_local.insert(emulators::start(&KINESIS_LOCAL)?)
                }
            };
            command = command.env("KINESIS_LOCAL_ENDPOINT", emulator.endpoint()).envs(emulator_aws_env());
        }
        let name = bench.bench.map(|name| format!(" / {name}")).unwrap_or_default();
        println!("benchmark {package}{name}");
        command.run()?;
    }
    println!("benchmarks done: {} run", BENCHES.len());
    Ok(())
}
