//! `cargo xtask integration`: the kc-integration tests against real servers.

use anyhow::Result;
use xshell::{cmd, Shell};

use crate::{
    cargo, databases, emulator_aws_env,
    emulators::{self, DYNALITE, KINESALITE, KINESIS_LOCAL},
    target_dir,
    tls_databases::TlsDatabases,
};

/// Starts the emulators and the TLS-only databases, checks the databases, runs `cargo test -p kc-integration
/// <extra>`, and stops the emulators and the TLS-only databases again (also when the tests fail).
pub(crate) fn run(sh: &Shell, extra: &[String]) -> Result<()> {
    run_with(sh, extra, &[])
}

/// [`run`] with more environment variables for the tests.
pub(crate) fn run_with(sh: &Shell, extra: &[String], more_env: &[(&str, String)]) -> Result<()> {
    emulators::ensure_installed(sh)?;
    databases::ensure_up(sh)?;
    let cargo = cargo();
    // The example binaries, which tests/examples.rs runs as a user would.
    cmd!(sh, "{cargo} build -p kc-examples --bins").run()?;
    let bin_dir = target_dir(sh)?.join("debug");
    let kinesalite = emulators::start(&KINESALITE)?;
    let dynalite = emulators::start(&DYNALITE)?;
    // Enhanced fan-out (tests/fan_out.rs): kinesalite has no SubscribeToShard.
    let kinesis_local = emulators::start(&KINESIS_LOCAL)?;
    // tests/tls.rs: a second PostgreSQL and MariaDB that require TLS, removed when this returns.
    let tls_databases = TlsDatabases::start()?;

    let env = [
        ("KINESIS_ENDPOINT", kinesalite.endpoint()),
        ("DYNAMODB_ENDPOINT", dynalite.endpoint()),
        ("KINESIS_LOCAL_ENDPOINT", kinesis_local.endpoint()),
        ("DATABASE_URL_POSTGRES", databases::POSTGRES_URL.to_owned()),
        ("DATABASE_URL_MYSQL", databases::MYSQL_URL.to_owned()),
        ("KC_EXAMPLES_BIN_DIR", bin_dir.display().to_string()),
        // Where `require('kinesalite')` works: tests/reliability.rs starts, kills and restarts its own kinesalite.
        ("KC_EMULATORS_DIR", emulators::emulators_dir().display().to_string()),
    ];
    let env: Vec<(&str, String)> = env.into_iter().chain(tls_databases.env()).chain(more_env.iter().cloned()).collect();
    println!("running the integration tests with:");
    for (key, value) in &env {
        println!("  {key}={value}");
    }
    cmd!(sh, "{cargo} test -p kc-integration {extra...}")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(emulator_aws_env())
        .run()?;
    println!("integration tests passed");
    Ok(())
}
