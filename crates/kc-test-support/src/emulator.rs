//! The Node.js emulators of AWS services (kinesalite, dynalite, kinesis-local), each run as a `node` child process on
//! 127.0.0.1 and waited for until it accepts connections. `xtask` starts them for the test runs (installing them with
//! npm first); the reliability suite starts a kinesalite of its own, with its state on disk, to kill and restart it.

use std::fmt;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::process::ChildGuard;

/// How long an emulator may take to accept TCP connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What the node script logs once its server is bound.
const LISTENING: &str = "listening on";

/// One emulator: its npm package and the options it is started with.
#[derive(Debug, PartialEq, Eq)]
pub struct Kind {
    /// The npm package.
    pub name: &'static str,
    /// A JavaScript object literal passed to the package's server factory; `None` for kinesis-local, which is a
    /// program configured by environment variables rather than a library.
    options: Option<&'static str>,
}

/// Kinesis, kept in memory (unless started with a state folder), with near-instant stream state changes. Its shard
/// limit counts every stream of the server: one run of the tests leaves many, and one of them has 1,000 shards.
pub const KINESALITE: Kind = Kind {
    name: "kinesalite",
    options: Some("{ createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 20000 }"),
};

/// DynamoDB, kept in memory (unless started with a state folder), with near-instant table state changes.
pub const DYNALITE: Kind =
    Kind { name: "dynalite", options: Some("{ createTableMs: 50, deleteTableMs: 50, updateTableMs: 50 }") };

/// Kinesis with enhanced fan-out (kinesis-mock, published as `kinesis-local`): RegisterStreamConsumer,
/// DescribeStreamConsumer, SubscribeToShard, which kinesalite lacks. Plain HTTP on our port (the SDK streams
/// SubscribeToShard over HTTP/1.1 chunked responses there); its TLS port gets a second free port.
pub const KINESIS_LOCAL: Kind = Kind { name: "kinesis-local", options: None };

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

/// Where and how to start an emulator.
#[derive(Clone, Debug)]
pub struct Launch<'a> {
    kind: &'static Kind,
    modules_dir: &'a Path,
    log_dir: &'a Path,
    port: Option<u16>,
    state_dir: Option<&'a Path>,
}

impl<'a> Launch<'a> {
    /// `kind`, run in `modules_dir` (the folder whose `node_modules` holds the emulators), logging to
    /// `log_dir/<name>-<port>.log`, on a free port, in memory.
    pub fn new(kind: &'static Kind, modules_dir: &'a Path, log_dir: &'a Path) -> Self {
        Self { kind, modules_dir, log_dir, port: None, state_dir: None }
    }

    /// On this port (e.g. the port of an emulator killed before), instead of a free one.
    #[must_use]
    pub fn port(self, port: u16) -> Self {
        Self { port: Some(port), ..self }
    }

    /// With its state kept in `dir` (kinesalite's and dynalite's `path`: LevelDB), so that it survives a restart.
    #[must_use]
    pub fn state_dir(self, dir: &'a Path) -> Self {
        Self { state_dir: Some(dir), ..self }
    }

    /// Starts the emulator and waits until it accepts TCP connections. On a free port, another one is tried when
    /// the port was taken between looking and binding.
    ///
    /// # Errors
    /// When node cannot be spawned, exits early, or does not listen within 30 s (its log is printed to stderr).
    pub fn start(&self) -> Result<Emulator, StartError> {
        let name = self.kind.name;
        if self.state_dir.is_some() && self.kind.options.is_none() {
            return Err(StartError::new(format!("{name} cannot keep its state in a folder")));
        }
        fs::create_dir_all(self.log_dir)
            .map_err(|e| StartError::io(format!("creating {}", self.log_dir.display()), e))?;
        const ATTEMPTS: u32 = 3;
        let attempts = if self.port.is_some() { 1 } else { ATTEMPTS };
        for attempt in 1..=attempts {
            let port = match self.port {
                Some(port) => port,
                None => free_port().map_err(|e| StartError::io("binding 127.0.0.1:0 to find a free port", e))?,
            };
            let log = self.log_dir.join(format!("{name}-{port}.log"));
            let mut emulator = Emulator { port, process: self.spawn(port, &log)?, log };
            match emulator.wait_until_listening() {
                Ok(()) => return Ok(emulator),
                Err(Listen::AddrInUse) if attempt < attempts => {
                    eprintln!("{name}: port {port} was taken meanwhile, trying another one");
                }
                Err(Listen::AddrInUse) => {
                    return Err(StartError::new(format!("{name}: port {port} (and every other one tried) was taken")))
                }
                Err(Listen::Failed(why)) => {
                    let Emulator { process, log, .. } = emulator;
                    drop(process);
                    let log_text = fs::read_to_string(&log).unwrap_or_default();
                    eprintln!("----- {} -----\n{}\n----- end of log -----", log.display(), log_text.trim_end());
                    return Err(StartError::new(format!(
                        "{name} did not start on 127.0.0.1:{port}: {why} (log above)"
                    )));
                }
            }
        }
        Err(StartError::new(format!("{name}: no attempt left")))
    }

    fn spawn(&self, port: u16, log: &Path) -> Result<ChildGuard, StartError> {
        let name = self.kind.name;
        let log_file = File::create(log).map_err(|e| StartError::io(format!("creating {}", log.display()), e))?;
        let log_err = log_file.try_clone().map_err(|e| StartError::io(format!("opening {}", log.display()), e))?;
        let mut command = Command::new("node");
        match self.kind.options {
            Some(options) => {
                // The emulators bind every interface unless told otherwise: listen on 127.0.0.1 only.
                // The script exits when its stdin closes, so node dies with its parent even on SIGKILL.
                let script = format!(
                    r#"
const options = Object.assign({options}, process.env.KC_EMULATOR_PATH ? {{ path: process.env.KC_EMULATOR_PATH }} : {{}});
const port = Number(process.env.KC_EMULATOR_PORT);
const server = require('{name}')(options);
server.on('error', (err) => {{ console.error('{name}: ' + (err.stack || err)); process.exit(1); }});
server.listen(port, '127.0.0.1', () => console.log('{name} {LISTENING} http://127.0.0.1:' + port));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
"#
                );
                command.arg("-e").arg(script);
                match self.state_dir {
                    Some(dir) => command.env("KC_EMULATOR_PATH", dir),
                    None => command.env_remove("KC_EMULATOR_PATH"),
                };
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
    if (a && a.port === plain) console.log('kinesis-local {LISTENING} http://' + a.address + ':' + a.port);
  }});
  return listen.apply(this, args);
}};
process.env.KINESIS_MOCK_CERT_PATH = require.resolve('kinesis-local/server.json');
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
require('kinesis-local/main.js');
"#
                );
                command.arg("-e").arg(script);
                let tls = free_port().map_err(|e| StartError::io("binding 127.0.0.1:0 to find a free port", e))?;
                command.env("KINESIS_MOCK_PLAIN_PORT", port.to_string());
                command.env("KINESIS_MOCK_TLS_PORT", tls.to_string());
                command.env("LOG_LEVEL", "WARN");
                for var in KINESIS_LOCAL_DURATIONS {
                    command.env(var, "100ms");
                }
            }
        }
        let child = command
            .env("KC_EMULATOR_PORT", port.to_string())
            .current_dir(self.modules_dir)
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| StartError::io(format!("spawning node for {name}"), e))?;
        Ok(ChildGuard::new(name, child))
    }
}

/// A running emulator. Dropping it kills the node process (SIGKILL) and waits for it.
#[derive(Debug)]
pub struct Emulator {
    port: u16,
    log: PathBuf,
    process: ChildGuard,
}

impl Emulator {
    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log file (stdout and stderr of node).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The node process's id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The node process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    fn wait_until_listening(&mut self) -> Result<(), Listen> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        loop {
            match self.process.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    let log = fs::read_to_string(&self.log).unwrap_or_default();
                    if log.contains("EADDRINUSE") {
                        return Err(Listen::AddrInUse);
                    }
                    return Err(Listen::Failed(format!("node exited early ({status})")));
                }
                Err(err) => return Err(Listen::Failed(format!("checking on node: {err}"))),
            }
            // Our node printed that it listens (so nobody else holds the port) and it answers.
            if fs::read_to_string(&self.log).is_ok_and(|log| log.contains(LISTENING))
                && TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Listen::Failed(format!(
                    "nothing accepted connections within {}s",
                    START_TIMEOUT.as_secs()
                )));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

enum Listen {
    AddrInUse,
    Failed(String),
}

/// Why an emulator did not start.
#[derive(Debug)]
pub struct StartError {
    message: String,
    source: Option<std::io::Error>,
}

impl StartError {
    fn new(message: String) -> Self {
        Self { message, source: None }
    }

    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self { message: what.into(), source: Some(source) }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}
