//! The accept loop of the blocking models: waits for a connection or the shutdown
//! signal, whichever comes first, and survives running out of descriptors.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::net;
use crate::shutdown::Shutdown;

/// How long accepting pauses after EMFILE/ENFILE. Retrying at once would spin the CPU:
/// the pending connection keeps the listener readable, and every accept fails again
/// until a connection closes.
pub const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(100);

/// What to do after `accept` failed with `err`: `None` to accept again at once (nothing
/// to accept now, or a connection that went away before we took it), or the instant until
/// which accepting pauses (out of descriptors or memory; logged).
///
/// Every model's accept loop goes through here, so that they all treat EMFILE alike.
pub fn after_accept_error(err: &std::io::Error) -> Option<Instant> {
    if net::would_block(err) || net::interrupted(err) || net::aborted_before_accept(err) {
        return None;
    }
    log::warn!(
        "accept failed: {}; pausing accept for {} ms, open connections are still served",
        net::describe(err),
        OUT_OF_DESCRIPTORS_PAUSE.as_millis()
    );
    Some(Instant::now() + OUT_OF_DESCRIPTORS_PAUSE)
}

/// Accepts connections until shutdown.
#[derive(Debug)]
pub struct Acceptor<'a> {
    listener: &'a TcpListener,
    shutdown: &'a Shutdown,
    /// While set, the listener is not polled: we are out of descriptors.
    paused_until: Option<Instant>,
}

impl<'a> Acceptor<'a> {
    pub fn new(listener: &'a TcpListener, shutdown: &'a Shutdown) -> std::io::Result<Acceptor<'a>> {
        listener.set_nonblocking(true)?;
        Ok(Acceptor {
            listener,
            shutdown,
            paused_until: None,
        })
    }

    /// The next connection, configured (blocking, `TCP_NODELAY`), or `None` once the
    /// server is shutting down.
    pub fn accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            if self.shutdown.is_triggered() {
                return None;
            }
            let now = Instant::now();
            let paused = self.paused_until.filter(|until| *until > now);
            let timeout = match paused {
                Some(until) => PollTimeout::try_from(until - now).unwrap_or(PollTimeout::MAX),
                None => PollTimeout::NONE,
            };
            let listener_events = if paused.is_some() {
                PollFlags::empty()
            } else {
                PollFlags::POLLIN
            };
            let mut fds = [
                PollFd::new(self.listener.as_fd(), listener_events),
                PollFd::new(self.shutdown.fd(), PollFlags::POLLIN),
            ];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(err) => {
                    log::error!("poll on the listener failed: {err}");
                    std::thread::sleep(OUT_OF_DESCRIPTORS_PAUSE);
                }
            }
            if paused.is_some() {
                continue;
            }
            self.paused_until = None;
            match self.listener.accept() {
                Ok((conn, peer)) => match conn
                    .set_nonblocking(false)
                    .and_then(|()| net::configure(&conn))
                {
                    Ok(()) => return Some((conn, peer)),
                    Err(err) => log::warn!(
                        "conn {peer} dropped: cannot configure it: {}",
                        net::describe(&err)
                    ),
                },
                Err(err) => self.paused_until = after_accept_error(&err),
            }
        }
    }
}
