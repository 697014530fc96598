//! Running as a systemd service: listening sockets passed by the service manager (socket
//! activation, `LISTEN_FDS`/`LISTEN_PID`), and readiness (`sd_notify`: `READY=1` once
//! listening, `STOPPING=1` once the server stops serving) when `NOTIFY_SOCKET` is set.
//!
//! The passed sockets are taken once, at the first [`take`], and kept in a process-wide
//! slot until the TCP server ([`tcp_listener`]) and the UDP server ([`udp_socket`]) ask
//! for theirs: every TCP listener passed (one per `ListenStream=`, all served, as several
//! `--listen` addresses are) and at most one UDP socket.

use std::io;
use std::net::{TcpListener, UdpSocket};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The sockets the service manager passed, not yet taken by a server.
#[derive(Debug, Default)]
struct Passed {
    /// In `LISTEN_FDS` order.
    tcp: Vec<TcpListener>,
    udp: Option<UdpSocket>,
}

static PASSED: OnceLock<Mutex<Passed>> = OnceLock::new();

/// Reads `LISTEN_FDS` (for this process: `LISTEN_PID` is ours or absent) and keeps the
/// sockets for [`tcp_listener`] and [`udp_socket`]; returns how many were passed. Call it
/// once, early, while the process has one thread (it removes the variables, so that a
/// child does not take them for its own). Later calls return 0.
///
/// A descriptor that is neither a TCP listener nor a UDP socket, or a second UDP socket,
/// is an error naming it.
pub fn take() -> io::Result<usize> {
    let mut found = Passed::default();
    let mut fds = listenfd::ListenFd::from_env();
    let n = fds.len();
    for idx in 0..n {
        let fd = 3 + idx;
        if let Ok(Some(listener)) = fds.take_tcp_listener(idx) {
            found.tcp.push(listener);
        } else if let Ok(Some(socket)) = fds.take_udp_socket(idx) {
            if found.udp.replace(socket).is_some() {
                return Err(io::Error::other(format!(
                    "LISTEN_FDS: descriptor {fd} is a second UDP socket (echolab serves one)"
                )));
            }
        } else {
            return Err(io::Error::other(format!(
                "LISTEN_FDS: descriptor {fd} is neither a TCP nor a UDP socket of IPv4 or IPv6"
            )));
        }
    }
    if PASSED.set(Mutex::new(found)).is_err() {
        return Ok(0);
    }
    Ok(n)
}

fn slot() -> std::sync::MutexGuard<'static, Passed> {
    PASSED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The TCP listeners the service manager passed (logged; every one, in `LISTEN_FDS`
/// order), or else `config.listen` bound as [`crate::net::bind`] binds it.
pub fn tcp_listener_or_bind(config: &crate::ServeConfig) -> io::Result<Vec<TcpListener>> {
    let passed = std::mem::take(&mut slot().tcp);
    if !passed.is_empty() {
        log::info!(
            "serving the listening socket passed by the service manager (LISTEN_FDS), not --listen"
        );
        return Ok(passed);
    }
    crate::net::bind(
        config.listen,
        matches!(config.model, crate::Model::Reactor | crate::Model::Uring),
        config.ipv6_only,
    )
    .map(|listener| vec![listener])
}

/// Whether the service manager passed a TCP listener not yet taken.
pub fn tcp_passed() -> bool {
    !slot().tcp.is_empty()
}

/// The first TCP listener the service manager passed, once (then `None`).
pub fn tcp_listener() -> Option<TcpListener> {
    let mut passed = slot();
    (!passed.tcp.is_empty()).then(|| passed.tcp.remove(0))
}

/// The address of the first TCP listener the service manager passed, without taking it: where
/// `--udp` binds when no UDP socket was passed (the same port as TCP, not `--listen`).
pub fn tcp_listener_addr() -> Option<std::net::SocketAddr> {
    slot().tcp.first().and_then(|l| l.local_addr().ok())
}

/// The UDP socket the service manager passed, once (then `None`).
pub fn udp_socket() -> Option<UdpSocket> {
    slot().udp.take()
}

/// Tells the service manager the server is listening (`READY=1`); nothing without
/// `NOTIFY_SOCKET`. A failure is logged, never fatal: the server serves either way.
pub fn notify_ready() {
    notify(sd_notify::NotifyState::Ready);
}

/// Tells the service manager the server is stopping (`STOPPING=1`), as [`notify_ready`].
pub fn notify_stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

fn notify(state: sd_notify::NotifyState<'_>) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(err) = sd_notify::notify(&[state]) {
        log::warn!("sd_notify failed: {err}");
    }
}
