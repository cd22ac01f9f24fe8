//! The local PostgreSQL and MariaDB servers the store tests use: check them, start them if down.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

pub(crate) const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub(crate) const MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/test";

const START_TIMEOUT: Duration = Duration::from_secs(30);

struct Database {
    name: &'static str,
    port: u16,
    start: fn(&Shell) -> Result<()>,
}

const DATABASES: [Database; 2] = [
    Database { name: "PostgreSQL", port: 5432, start: start_postgres },
    Database { name: "MariaDB", port: 3306, start: start_mariadb },
];

/// Makes sure every database accepts TCP connections on 127.0.0.1, starting the ones that don't.
pub(crate) fn ensure_up(sh: &Shell) -> Result<()> {
    for db in &DATABASES {
        if accepts_connections(db.port) {
            println!("{} is up on 127.0.0.1:{}", db.name, db.port);
            continue;
        }
        println!("{} is not accepting connections on 127.0.0.1:{}: starting it", db.name, db.port);
        if let Err(err) = (db.start)(sh) {
            eprintln!("starting {}: {err:#}", db.name);
        }
        let started = Instant::now();
        while !accepts_connections(db.port) {
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{} is still not accepting connections on 127.0.0.1:{} after {}s: \
                     the store tests need it (see the messages above)",
                    db.name,
                    db.port,
                    START_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
        println!("{} is up on 127.0.0.1:{}", db.name, db.port);
    }
    Ok(())
}

fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// `pg_ctlcluster --skip-systemctl-redirect <version> main start` for each installed version.
fn start_postgres(sh: &Shell) -> Result<()> {
    let versions = sh.read_dir("/etc/postgresql").context("PostgreSQL is not installed (no /etc/postgresql)")?;
    for version in versions.iter().filter_map(|path| path.file_name()) {
        cmd!(sh, "pg_ctlcluster --skip-systemctl-redirect {version} main start").run()?;
    }
    Ok(())
}

fn start_mariadb(sh: &Shell) -> Result<()> {
    // /run is a tmpfs: after a reboot the socket and pid folder may be gone.
    if !Path::new("/run/mysqld").is_dir() {
        cmd!(sh, "install -d -o mysql -g mysql /run/mysqld").run()?;
    }
    cmd!(sh, "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd").run()?;
    Ok(())
}
