//! A TCP proxy on 127.0.0.1 to a database server that a test can switch to **hold**: from then on it accepts
//! connections and reads what either side sends, and forwards nothing, in either direction, on the connections open
//! at the switch and on new ones; nor does it pass a close on. To the client the server looks like a host that
//! vanished without a reset: every statement in flight, and every statement sent later, waits for an answer that
//! never comes, and a new connection never gets past its handshake. (Compare [`CutProxy`](crate::CutProxy), whose
//! cut closes connections: a failure the client sees at once.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use kc_test_support::check::lock;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct Shared {
    holding: AtomicBool,
    /// Bytes read and not forwarded since the switch.
    held: AtomicU64,
    /// The connections' tasks, aborted when the proxy is dropped.
    conns: Mutex<Vec<AbortHandle>>,
}

/// The proxy: see the [module docs](self). Forwards until [`hold`](Self::hold); stops (closing every connection)
/// when dropped.
pub struct HoldProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    /// Starts a proxy to `target` (`host:port`) on a free port of 127.0.0.1.
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind hold proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let conn = tokio::spawn(serve(client, target.clone(), Arc::clone(&s)));
                let mut conns = lock(&s.conns);
                conns.retain(|c| !c.is_finished());
                conns.push(conn.abort_handle());
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (`scheme://[user@]host:port[/path]`) with its `host:port` replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        url.replacen(crate::authority(url), &self.addr.to_string(), 1)
    }

    /// From now on nothing is forwarded, in either direction, on any connection (open or new); there is no way
    /// back (what was read meanwhile is gone).
    pub fn hold(&self) {
        self.shared.holding.store(true, Ordering::SeqCst);
    }

    /// The bytes read from either side and not forwarded since [`hold`](Self::hold): more than zero once a client
    /// (or the server) sent something into the void.
    pub fn held_bytes(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.task.abort();
        for conn in lock(&self.shared.conns).drain(..) {
            conn.abort();
        }
    }
}

/// One client connection: connected to the server unless holding, then pumped both ways.
async fn serve(client: TcpStream, target: String, shared: Arc<Shared>) {
    let (client_read, client_write) = client.into_split();
    if shared.holding.load(Ordering::SeqCst) {
        // A new connection while holding: accepted, read, never answered.
        return pump(client_read, None, &shared).await;
    }
    let Ok(server) = TcpStream::connect(&target).await else { return };
    let (server_read, server_write) = server.into_split();
    // Each direction keeps its write half until the proxy is dropped if it ends while holding.
    tokio::join!(pump(client_read, Some(server_write), &shared), pump(server_read, Some(client_write), &shared));
}

/// Copies `from` to `to` until `from` ends, or, once holding, reads and drops everything. A side that ends (or
/// fails) while holding is not passed on: `to` stays open, as if the other end had vanished.
async fn pump(mut from: OwnedReadHalf, mut to: Option<OwnedWriteHalf>, shared: &Shared) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.holding.load(Ordering::SeqCst) {
            shared.held.fetch_add(n as u64, Ordering::SeqCst);
            continue;
        }
        let Some(out) = &mut to else { continue };
        if out.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if shared.holding.load(Ordering::SeqCst) {
        // Keep `to` (and so the connection) open, silent, until the proxy is dropped.
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server on 127.0.0.1; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        conn.write_all(msg).await.expect("write");
        let mut buf = vec![0; msg.len()];
        let read = tokio::time::timeout(Duration::from_millis(300), conn.read_exact(&mut buf)).await;
        read.ok().map(|r| r.map(|_| buf).expect("the connection stays open"))
    }

    #[tokio::test]
    async fn forwards_then_holds_open_and_new_connections_without_closing_them() {
        let proxy = HoldProxy::start(&echo_server().await.to_string()).await.expect("proxy");
        assert_eq!(proxy.url("postgres://u@127.0.0.1:5432/test"), format!("postgres://u@{}/test", proxy.addr()));
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut open, b"ping").await.as_deref(), Some(&b"ping"[..]));

        proxy.hold();
        assert_eq!(round_trip(&mut open, b"held").await, None, "no answer on an open connection");
        let mut new = TcpStream::connect(proxy.addr()).await.expect("a new connection is accepted");
        assert_eq!(round_trip(&mut new, b"new!").await, None, "no answer on a new connection");
        assert_eq!(proxy.held_bytes(), 8, "both messages read and dropped");
        // Neither connection was closed: a read still waits.
        let mut byte = [0; 1];
        assert!(tokio::time::timeout(Duration::from_millis(200), open.read(&mut byte)).await.is_err());
        assert!(tokio::time::timeout(Duration::from_millis(200), new.read(&mut byte)).await.is_err());
    }
}
