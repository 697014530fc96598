//! The event-driven UDP server: one thread waits in `poll(2)` for the socket to become
//! readable, then echoes batches of datagrams (`recvmmsg`/`sendmmsg`) until the socket
//! has none.
//!
//! Trade-off: one thread and few system calls per datagram, but still one core; with a
//! single socket there is nothing to multiplex, so the gain over iterative is the batching.

use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::batch::{Batch, BATCH};
use crate::guard::Guard;
use crate::TICK;

/// Batches per readiness before polling again (the fairness budget; with one socket it
/// only bounds how long the stop flag goes unread under a flood).
const BUDGET: usize = 64;

/// Serves `socket` until `stop` is set, then echoes what is already queued (bounded).
pub fn serve(socket: UdpSocket, guard: &Mutex<Guard>, stop: &AtomicBool) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let tick = PollTimeout::try_from(TICK.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, tick) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Err(err.into()),
        }
        for _ in 0..BUDGET {
            if batch.echo_once(fd, guard)? < BATCH {
                break;
            }
        }
    }
    for _ in 0..BUDGET {
        if batch.echo_once(fd, guard)? == 0 {
            break;
        }
    }
    Ok(())
}
