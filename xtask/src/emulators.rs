//! The Node.js emulators of AWS services (kinesalite, dynalite, kinesis-local): installing them with npm from
//! `.emulators/package-lock.json`, and running one per test run on a free 127.0.0.1 port.

use std::{
    fs::{self, File},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::{process::ChildGuard, project_root};

/// How long an emulator may take to accept TCP connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// dynalite 4 requires Node.js 20; kinesalite 3 runs on it too.
const MIN_NODE_MAJOR: u32 = 20;
const SIGINT: i32 = 2;
/// What the node script logs once its server is bound.
const LISTENING: &str = "listening on";

/// One emulator: its npm package and the options it is started with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Kind {
    pub(crate) name: &'static str,
    /// A JavaScript object literal passed to the package's server factory; `None` for kinesis-local, which is a
    /// program configured by environment variables rather than a library.
    options: Option<&'static str>,
}

/// Kinesis, kept in memory (no `path`), with near-instant stream state changes.
pub(crate) const KINESALITE: Kind = Kind {
    name: "kinesalite",
    options: Some("{ createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 1000 }"),
};

/// DynamoDB, kept in memory (no `path`), with near-instant table state changes.
pub(crate) const DYNALITE: Kind =
    Kind { name: "dynalite", options: Some("{ createTableMs: 50, deleteTableMs: 50, updateTableMs: 50 }") };

/// Kinesis with enhanced fan-out (kinesis-mock, published as `kinesis-local`): RegisterStreamConsumer,
/// DescribeStreamConsumer, SubscribeToShard, which kinesalite lacks. Plain HTTP on our port (the SDK streams
/// SubscribeToShard over HTTP/1.1 chunked responses there); its TLS port gets a second free port.
pub(crate) const KINESIS_LOCAL: Kind = Kind { name: "kinesis-local", options: None };

/// kinesis-mock's state changes (CREATING -> ACTIVE and the like), kept short for tests.
const KINESIS_LOCAL_DURATIONS: [&str; 10] = [
    "CREATE_STREAM_DURATION",
    "DELETE_STREAM_DURATION",
    "REGISTER_STREAM_CONSUMER_DURATION",
    "DEREGISTER_STREAM_CONSUMER_DURATION",
    "MERGE_SHARDS_DURATION",
    "SPLIT_SHARD_DURATION",
    "UPDATE_SHARD_COUNT_DURATION",
    "UPDATE_STREAM_MODE_DURATION",
    "START_STREAM_ENCRYPTION_DURATION",
    "STOP_STREAM_ENCRYPTION_DURATION",
];

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

/// A running emulator. Dropping it kills the node process and waits for it.
pub(crate) struct Emulator {
    port: u16,
    log: PathBuf,
    process: ChildGuard,
}

impl Emulator {
    /// Starts `kind` on a free port of 127.0.0.1 and waits until it accepts TCP connections.
    /// Call [`ensure_installed`] first.
    pub(crate) fn start(kind: &'static Kind) -> Result<Emulator> {
        let run_dir = emulators_dir().join("run");
        fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        // The port is free when we look, not necessarily when node binds it: retry on a lost race.
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let port = free_port()?;
            let log = run_dir.join(format!("{}-{port}.log", kind.name));
            let mut emulator = Emulator { port, process: spawn(kind, port, &log)?, log };
            match emulator.wait_until_listening() {
                Ok(()) => {
                    println!(
                        "started {} at {} (pid {}, log {})",
                        kind.name,
                        emulator.endpoint(),
                        emulator.process.id(),
                        emulator.log_display()
                    );
                    return Ok(emulator);
                }
                Err(StartError::AddrInUse) if attempt < ATTEMPTS => {
                    println!("{}: port {port} was taken meanwhile, trying another one", kind.name);
                }
                Err(StartError::AddrInUse) => bail!("{}: every port tried was taken", kind.name),
                Err(StartError::Failed(why)) => {
                    let Emulator { process, log, .. } = emulator;
                    drop(process);
                    let log_text = fs::read_to_string(&log).unwrap_or_default();
                    eprintln!("----- {} -----\n{}\n----- end of log -----", log.display(), log_text.trim_end());
                    bail!("{} did not start on 127.0.0.1:{port}: {why} (log above)", kind.name);
                }
            }
        }
        bail!("{}: no attempt left", kind.name)
    }

    /// `http://127.0.0.1:PORT`
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_display(&self) -> String {
        let log = self.log.strip_prefix(project_root()).unwrap_or(&self.log);
        log.display().to_string()
    }

    fn wait_until_listening(&mut self) -> Result<(), StartError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        loop {
            match self.process.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let log = fs::read_to_string(&self.log).unwrap_or_default();
                    if log.contains("EADDRINUSE") {
                        return Err(StartError::AddrInUse);
                    }
                    return Err(StartError::Failed(format!("node exited early ({status})")));
                }
                Err(err) => return Err(StartError::Failed(format!("checking on node: {err}"))),
            }
            // Our node printed that it listens (so nobody else holds the port) and it answers.
            if fs::read_to_string(&self.log).is_ok_and(|log| log.contains(LISTENING))
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::Failed(format!(
                    "nothing accepted connections within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

enum StartError {
    AddrInUse,
    Failed(String),
}

/// A port the kernel just handed out on 127.0.0.1 and that nobody listens on.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn spawn(kind: &Kind, port: u16, log: &Path) -> Result<ChildGuard> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = Command::new("node");
    match kind.options {
        Some(options) => {
            // The emulators bind every interface unless told otherwise: listen on 127.0.0.1 only.
            // The script exits when its stdin closes, so node dies with the xtask even on SIGKILL.
            let script = format!(
                r#"
const port = Number(process.env.XTASK_EMULATOR_PORT);
const server = require('{name}')({options});
server.on('error', (err) => {{ console.error('{name}: ' + (err.stack || err)); process.exit(1); }});
server.listen(port, '127.0.0.1', () => console.log('{name} {listening} http://127.0.0.1:' + port));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
"#,
                name = kind.name,
                listening = LISTENING,
            );
            command.arg("-e").arg(script);
        }
        None => {
            // kinesis-mock binds 0.0.0.0 with no setting to change it: wrap net.Server#listen so that both of its
            // servers (plain and TLS) bind 127.0.0.1 only, then run its main script.
            let script = format!(
                r#"
const net = require('net');
const plain = Number(process.env.KINESIS_MOCK_PLAIN_PORT);
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {{
  if (args[0] !== null && typeof args[0] === 'object') {{
    args[0] = Object.assign({{}}, args[0], {{ host: '127.0.0.1' }});
  }} else if (typeof args[1] === 'string') {{
    args[1] = '127.0.0.1';
  }} else {{
    args.splice(1, 0, '127.0.0.1');
  }}
  this.once('listening', () => {{
    const a = this.address();
    if (a && a.port === plain) console.log('kinesis-local {listening} http://' + a.address + ':' + a.port);
  }});
  return listen.apply(this, args);
}};
process.env.KINESIS_MOCK_CERT_PATH = require.resolve('kinesis-local/server.json');
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
require('kinesis-local/main.js');
"#,
                listening = LISTENING,
            );
            command.arg("-e").arg(script);
            command.env("KINESIS_MOCK_PLAIN_PORT", port.to_string());
            command.env("KINESIS_MOCK_TLS_PORT", free_port()?.to_string());
            command.env("LOG_LEVEL", "WARN");
            for var in KINESIS_LOCAL_DURATIONS {
                command.env(var, "100ms");
            }
        }
    }
    let child = command
        .env("XTASK_EMULATOR_PORT", port.to_string())
        .current_dir(emulators_dir())
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("spawning node for {}", kind.name))?;
    Ok(ChildGuard::new(kind.name, child))
}

/// `cargo xtask kinesalite|dynalite|kinesis-local`: run one emulator until Ctrl-C.
pub(crate) fn serve(sh: &Shell, kind: &'static Kind) -> Result<()> {
    ensure_installed(sh)?;
    let mut emulator = Emulator::start(kind)?;
    println!("{} endpoint: {}", kind.name, emulator.endpoint());
    println!("press Ctrl-C to stop it");
    // Ctrl-C reaches node too (same process group), and node also exits when our end of its
    // stdin closes: either way this wait returns or the xtask is gone.
    let child = emulator.process.child_mut();
    // `Child::wait` closes the child's stdin first, which would end the script: keep it open.
    let _stdin = child.stdin.take();
    let status = child.wait()?;
    if status.success() || status.signal() == Some(SIGINT) {
        println!("{} stopped", kind.name);
        return Ok(());
    }
    bail!("{} exited ({status}); log: {}", kind.name, emulator.log_display())
}
