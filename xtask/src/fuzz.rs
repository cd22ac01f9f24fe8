//! `cargo xtask fuzz [-- SECONDS]`: the kc-deagg `decode` fuzz target for a bounded time (default 60 s).
//!
//! Not part of `ci` (it needs cargo-fuzz and minutes of CPU); a nightly-style command. cargo-fuzz needs nightly
//! compiler flags: `RUSTC_BOOTSTRAP=1` lets the stable toolchain accept them.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::cargo;

pub(crate) fn run(sh: &Shell, extra: &[String]) -> Result<()> {
    let seconds: u64 = match extra {
        [] => 60,
        [s] => s.parse().with_context(|| format!("`{s}` is not a number of seconds"))?,
        _ => anyhow::bail!("usage: cargo xtask fuzz [-- SECONDS]"),
    };
    let cargo = cargo();
    if cmd!(sh, "{cargo} fuzz --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        println!("cargo-fuzz is not installed: installing it (cargo install cargo-fuzz --locked)");
        cmd!(sh, "{cargo} install cargo-fuzz --locked").run()?;
    }
    let dir = sh.current_dir().join("crates/kc-deagg");
    let _in_crate = sh.push_dir(&dir);
    sh.create_dir("fuzz/corpus/decode")?;
    for entry in sh.read_dir("tests/data")? {
        if entry.extension().is_some_and(|e| e == "bin") {
            if let Some(name) = entry.file_name() {
                sh.copy_file(&entry, dir.join("fuzz/corpus/decode").join(name))?;
            }
        }
    }
    println!("fuzzing kc-deagg decode for {seconds} s (crashes go to crates/kc-deagg/fuzz/artifacts/decode/)");
    let max_time = format!("-max_total_time={seconds}");
    cmd!(sh, "{cargo} fuzz run decode fuzz/corpus/decode -- {max_time} -dict=fuzz/decode.dict")
        .env("RUSTC_BOOTSTRAP", "1")
        .run()?;
    println!("fuzz ok: no crash in {seconds} s (libFuzzer's last line above gives the executions)");
    Ok(())
}
