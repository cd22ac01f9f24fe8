//! The TLS-only PostgreSQL and MariaDB of integration/tests/tls.rs: a second instance of each, started for one
//! integration run in a temporary folder with a throwaway CA and a server certificate for 127.0.0.1 (made with the
//! `openssl` command), listening on a free port of 127.0.0.1 only, refusing every connection without TLS. Dropping
//! [`TlsDatabases`] stops both servers and removes their folders, on success, error or panic.
//!
//! When the xtask runs as root, the servers (which refuse to run as root) and their set-up run as the `postgres` and
//! `mysql` users of the Debian packages, through `setpriv`, which execs the server in place: the process the guard
//! stops is the server itself.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use kc_test_support::{names::temp_dir, net::free_port, process::ChildGuard};

/// The Debian packages' PostgreSQL binaries (`initdb`, `postgres`), which are not on `PATH`.
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts at starting a server on a free port (another process may bind it between our look and the server's).
const START_ATTEMPTS: usize = 3;

/// The running TLS-only servers and their certificates; dropped: stopped and removed.
pub(crate) struct TlsDatabases {
    // Fields drop in this order: the servers stop before the certificates' folder goes.
    postgres: Server,
    mariadb: Server,
    certs: TempDir,
}

impl TlsDatabases {
    /// Makes the certificates and starts both servers.
    pub(crate) fn start() -> Result<Self> {
        let certs = TempDir::new("tls-certs")?;
        make_certificates(&certs.0).context("making the test CA and server certificate with `openssl`")?;
        let postgres = start_postgres(&certs.0).context("starting the TLS-only PostgreSQL")?;
        let mariadb = start_mariadb(&certs.0).context("starting the TLS-only MariaDB")?;
        Ok(Self { postgres, mariadb, certs })
    }

    /// What integration/tests/tls.rs reads: the two URLs (no TLS options: the tests add them) and the CAs.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL_POSTGRES_TLS", format!("postgres://postgres@127.0.0.1:{}/postgres", self.postgres.port)),
            ("DATABASE_URL_MYSQL_TLS", format!("mysql://root@127.0.0.1:{}/test", self.mariadb.port)),
            ("KC_TLS_CA", self.certs.0.join("ca.pem").display().to_string()),
            ("KC_TLS_OTHER_CA", self.certs.0.join("other-ca.pem").display().to_string()),
        ]
    }
}

/// A server process and its folder: dropped, the server is asked to stop (`signal`), killed if it has not stopped
/// within [`STOP_TIMEOUT`], and its folder removed.
struct Server {
    name: &'static str,
    port: u16,
    /// The signal of a clean, fast shutdown (PostgreSQL: SIGINT, MariaDB: SIGTERM).
    signal: &'static str,
    process: Option<ChildGuard>,
    dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let Some(mut process) = self.process.take() else { return };
        let pid = process.id().to_string();
        if matches!(process.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-s", self.signal, &pid]).status();
            let asked = Instant::now();
            while matches!(process.try_wait(), Ok(None)) && asked.elapsed() < STOP_TIMEOUT {
                thread::sleep(Duration::from_millis(100));
            }
        }
        // Kills it if it is still running, reaps it, says so.
        drop(process);
        println!("stopped the TLS-only {} on 127.0.0.1:{}; removing {}", self.name, self.port, self.dir.0.display());
    }
}

/// A folder in the system's temporary folder, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<Self> {
        let dir = temp_dir(what);
        // Readable by the server users when we run as root (`temp_dir` makes it 0700 under some umasks).
        run(Command::new("chmod").arg("755").arg(&dir))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {err}", self.0.display());
        }
    }
}

/// A CA, a server certificate for IP 127.0.0.1 signed by it (EC P-256, valid 2 days), and a second CA that signed
/// nothing here (the "wrong CA" of the tests).
fn make_certificates(dir: &Path) -> Result<()> {
    let ca_config = "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n\
                     [dn]\nCN = kc-integration test CA\n\
                     [ext]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
                     subjectKeyIdentifier = hash\n";
    let other_config = ca_config.replace("kc-integration test CA", "kc-integration other CA");
    let server_config = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = 127.0.0.1\n\
                         [ext]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n\
                         authorityKeyIdentifier = keyid\nsubjectKeyIdentifier = hash\n";
    fs::write(dir.join("ca.cnf"), ca_config)?;
    fs::write(dir.join("other-ca.cnf"), other_config)?;
    fs::write(dir.join("server.cnf"), server_config)?;
    let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (config, key, cert) = (format!("{ca}.cnf"), format!("{ca}.key"), format!("{ca}.pem"));
        run(openssl(dir)
            .args(["req", "-x509", "-config", &config])
            .args(new_key)
            .args(["-keyout", &key, "-out", &cert, "-days", "2"]))?;
    }
    run(openssl(dir).args(["req", "-new", "-config", "server.cnf"]).args(new_key).args([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]))?;
    run(openssl(dir).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.cnf",
        "-extensions",
        "ext",
    ]))?;
    Ok(())
}

fn openssl(dir: &Path) -> Command {
    let mut command = Command::new("openssl");
    command.current_dir(dir);
    command
}

/// initdb into a new folder; `postgres` with `ssl=on`, on 127.0.0.1 only (no Unix socket), hba: `hostssl` trusted,
/// everything else rejected.
fn start_postgres(certs: &Path) -> Result<Server> {
    let dir = TempDir::new("tls-postgres")?;
    let user = server_user("postgres")?;
    let key = private_key_for(certs, &dir.0, user)?;
    let data = dir.0.join("data");
    let initdb = Path::new(POSTGRES_BIN).join("initdb");
    run(as_user(&initdb, user).arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
    ]))?;
    fs::write(data.join("pg_hba.conf"), "hostssl all all 127.0.0.1/32 trust\nhostnossl all all all reject\n")?;
    let postgres = Path::new(POSTGRES_BIN).join("postgres");
    let log = dir.0.join("postgres.log");
    let start = |port: u16| {
        let mut command = as_user(&postgres, user);
        command.arg("-D").arg(&data).arg("-p").arg(port.to_string());
        for setting in [
            "listen_addresses=127.0.0.1".to_owned(),
            "unix_socket_directories=".to_owned(),
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", certs.join("server.pem").display()),
            format!("ssl_key_file={}", key.display()),
            "fsync=off".to_owned(),
        ] {
            command.arg("-c").arg(setting);
        }
        command
    };
    start_server("PostgreSQL", "INT", dir, &log, start)
}

/// mariadb-install-db into a new folder; `mariadbd` with `require_secure_transport=ON`, on 127.0.0.1 only and a
/// socket in the folder (through which the xtask creates the `test` database).
fn start_mariadb(certs: &Path) -> Result<Server> {
    let dir = TempDir::new("tls-mariadb")?;
    let user = server_user("mysql")?;
    let key = private_key_for(certs, &dir.0, user)?;
    let data = dir.0.join("data");
    let socket = dir.0.join("mariadbd.sock");
    let pid_file = dir.0.join("mariadbd.pid");
    let mut install = Command::new("mariadb-install-db");
    install.arg("--no-defaults").arg(format!("--datadir={}", data.display())).args([
        "--auth-root-authentication-method=normal",
        "--skip-name-resolve",
        "--skip-test-db",
    ]);
    if let Some(user) = user {
        install.arg(format!("--user={user}"));
    }
    run(&mut install)?;
    let log = dir.0.join("mariadbd.log");
    let start = |port: u16| {
        let mut command = Command::new("mariadbd");
        command.arg("--no-defaults");
        if let Some(user) = user {
            command.arg(format!("--user={user}"));
        }
        command
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .args(["--bind-address=127.0.0.1", "--skip-networking=0", "--skip-name-resolve", "--skip-log-bin"])
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .args(["--require-secure-transport=ON", "--innodb-buffer-pool-size=32M"])
            .arg(format!("--ssl-cert={}", certs.join("server.pem").display()))
            .arg(format!("--ssl-key={}", key.display()))
            .arg(format!("--ssl-ca={}", certs.join("ca.pem").display()));
        command
    };
    let server = start_server("MariaDB", "TERM", dir, &log, start)?;
    // The socket counts as a secure transport.
    let create = || {
        run(Command::new("mariadb").arg("--no-defaults").arg(format!("--socket={}", socket.display())).args([
            "-u",
            "root",
            "-e",
            "CREATE DATABASE IF NOT EXISTS test",
        ]))
    };
    let started = Instant::now();
    while let Err(err) = create() {
        if started.elapsed() > START_TIMEOUT {
            return Err(err.context("creating the `test` database of the TLS-only MariaDB"));
        }
        thread::sleep(Duration::from_millis(250));
    }
    Ok(server)
}

/// Starts `command(port)` on a free port with its output in `log`, and waits until it accepts TCP connections;
/// on another port if it exits first (a lost race for the port), at most [`START_ATTEMPTS`] times.
fn start_server(
    name: &'static str,
    signal: &'static str,
    dir: TempDir,
    log: &Path,
    command: impl Fn(u16) -> Command,
) -> Result<Server> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port()?;
        let out = fs::File::create(log)?;
        let child = command(port)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        let mut process = ChildGuard::new(format!("TLS-only {name}"), child);
        let started = Instant::now();
        loop {
            if accepts_connections(port) {
                println!(
                    "started the TLS-only {name} on 127.0.0.1:{port} (pid {}, log {})",
                    process.id(),
                    log.display()
                );
                return Ok(Server { name, port, signal, process: Some(process), dir });
            }
            if let Some(status) = process.try_wait()? {
                let tail = log_tail(log);
                if attempt == START_ATTEMPTS {
                    bail!("{name} exited ({status}) before accepting connections on 127.0.0.1:{port}; log:\n{tail}");
                }
                eprintln!("{name} exited ({status}) on 127.0.0.1:{port}, trying another port; log:\n{tail}");
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{name} does not accept connections on 127.0.0.1:{port} after {START_TIMEOUT:?}; log:\n{}",
                    log_tail(log)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn accepts_connections(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(1)).is_ok()
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The user the servers run as: `postgres`/`mysql` when we are root (both refuse to run as root), else ourselves.
fn server_user(name: &'static str) -> Result<Option<&'static str>> {
    let output = Command::new("id").arg("-u").output().context("running `id -u`")?;
    Ok((String::from_utf8_lossy(&output.stdout).trim() == "0").then_some(name))
}

/// `program` as `user` (setpriv execs it in place: the process is the program), or as ourselves.
fn as_user(program: &Path, user: Option<&str>) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command.arg(format!("--reuid={user}")).arg(format!("--regid={user}")).arg("--init-groups").arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The server's private key copied into its folder, which (and whose key, mode 0600) the server user owns: both
/// servers refuse a key others can read.
fn private_key_for(certs: &Path, dir: &Path, user: Option<&str>) -> Result<PathBuf> {
    let key = dir.join("server.key");
    fs::copy(certs.join("server.key"), &key)?;
    run(Command::new("chmod").arg("600").arg(&key))?;
    if let Some(user) = user {
        run(Command::new("chown").arg("-R").arg(format!("{user}:{user}")).arg(dir))?;
    }
    Ok(key)
}

/// Runs `command` to its end; its output is shown only if it fails.
fn run(command: &mut Command) -> Result<()> {
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
