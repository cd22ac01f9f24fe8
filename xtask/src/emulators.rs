//! The Node.js emulators of AWS services (kinesalite, dynalite, kinesis-local): installing them with npm from
//! `.emulators/package-lock.json`, and running one per test run on a free 127.0.0.1 port (the launcher itself is
//! `kc_test_support::emulator`, which the reliability suite uses too).

use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use kc_test_support::emulator::Launch;
pub(crate) use kc_test_support::emulator::{Emulator, Kind, DYNALITE, KINESALITE, KINESIS_LOCAL};
use xshell::{cmd, Shell};

use crate::project_root;

/// dynalite 4 requires Node.js 20; kinesalite 3 runs on it too.
const MIN_NODE_MAJOR: u32 = 20;
const SIGINT: i32 = 2;

pub(crate) fn emulators_dir() -> PathBuf {
    project_root().join(".emulators")
}

/// Checks that node and npm are there, and runs `npm ci` unless node_modules is up to date.
pub(crate) fn ensure_installed(sh: &Shell) -> Result<()> {
    let node_version = tool_version("node")?;
    tool_version("npm")?;
    let major = node_version.trim_start_matches('v').split('.').next().and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if major >= MIN_NODE_MAJOR => {}
        _ => bail!("Node.js {node_version} is too old for the emulators: they need Node.js {MIN_NODE_MAJOR} or newer"),
    }

    let dir = emulators_dir();
    let modules = dir.join("node_modules");
    let installed =
        ["kinesalite", "dynalite", "kinesis-local"].iter().all(|pkg| modules.join(pkg).join("package.json").is_file());
    // npm writes node_modules/.package-lock.json on every install: older than the lock = stale.
    let fresh = match (modified(&modules.join(".package-lock.json")), modified(&dir.join("package-lock.json"))) {
        (Some(installed_at), Some(locked_at)) => installed_at >= locked_at,
        _ => false,
    };
    if installed && fresh {
        println!("emulators already installed in .emulators/node_modules (node {node_version})");
        return Ok(());
    }
    println!("installing the emulators from .emulators/package-lock.json (node {node_version})");
    let _dir = sh.push_dir(&dir);
    // No install scripts: they only build LevelDB bindings for on-disk storage, and the
    // emulators run in memory.
    cmd!(sh, "npm ci --no-audit --no-fund --ignore-scripts")
        .run()
        .context("`npm ci` in .emulators failed: is the npm registry reachable?")?;
    Ok(())
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn tool_version(tool: &str) -> Result<String> {
    let output = match Command::new(tool).arg("--version").stdin(Stdio::null()).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "`{tool}` is not on PATH: the emulators (kinesalite, dynalite) run on Node.js {MIN_NODE_MAJOR}+ with npm; \
             install both (e.g. `apt-get install nodejs npm`) and retry"
        ),
        Err(err) => return Err(err).with_context(|| format!("running `{tool} --version`")),
    };
    if !output.status.success() {
        bail!("`{tool} --version` failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Starts `kind` on a free port of 127.0.0.1 and waits until it accepts TCP connections; logs to
/// `.emulators/run/<name>-<port>.log`. Call [`ensure_installed`] first.
pub(crate) fn start(kind: &'static Kind) -> Result<Emulator> {
    let dir = emulators_dir();
    let emulator = Launch::new(kind, &dir, &dir.join("run")).start()?;
    println!(
        "started {} at {} (pid {}, log {})",
        kind.name,
        emulator.endpoint(),
        emulator.pid(),
        log_display(&emulator)
    );
    Ok(emulator)
}

fn log_display(emulator: &Emulator) -> String {
    let log = emulator.log();
    log.strip_prefix(project_root()).unwrap_or(log).display().to_string()
}

/// `cargo xtask kinesalite|dynalite|kinesis-local`: run one emulator until Ctrl-C.
pub(crate) fn serve(sh: &Shell, kind: &'static Kind) -> Result<()> {
    ensure_installed(sh)?;
    let mut emulator = start(kind)?;
    println!("{} endpoint: {}", kind.name, emulator.endpoint());
    println!("press Ctrl-C to stop it");
    // Ctrl-C reaches node too (same process group), and node also exits when our end of its
    // stdin closes: either way this wait returns or the xtask is gone.
    let child = emulator.process().child_mut();
    // `Child::wait` closes the child's stdin first, which would end the script: keep it open.
    let _stdin = child.stdin.take();
    let status = child.wait()?;
    if status.success() || status.signal() == Some(SIGINT) {
        println!("{} stopped", kind.name);
        return Ok(());
    }
    bail!("{} exited ({status}); log: {}", kind.name, log_display(&emulator))
}
