//! Ports on 127.0.0.1.

use std::net::{Ipv4Addr, TcpListener};

/// A port the kernel just handed out on 127.0.0.1 and that nobody listens on. It is free when we look, not
/// necessarily when a server binds it: whoever starts a server on it retries on a lost race
/// ([`crate::emulator::Launch::start`] does).
///
/// # Errors
/// When 127.0.0.1:0 cannot be bound.
pub fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
