//! The reactor UDP server: N loops, each with its own SO_REUSEPORT socket on the same port;
//! the kernel spreads sources over the sockets by a hash of their addresses (that hash is
//! the reactor's demultiplexer here: it decides which loop a datagram's event goes to).
//! Each loop echoes in batches (`recvmmsg`/`sendmmsg`).
//!
//! A loop has one descriptor, so its readiness wait is the receive itself: `recvmmsg`
//! sleeps until the first datagram, then takes what else is queued (`MSG_WAITFORONE`), and
//! the batch is echoed: two system calls per batch. Asking epoll first whether the only
//! descriptor is readable was a third call per batch, and cost 1.04–1.06× `ref_udp`'s CPU
//! per datagram against 1.00–1.02× without (scripts/bench-udp.py). The wait ends at least
//! every [`TICK`] (the socket's receive timeout) so that the loop sees the stop flag.
//!
//! Trade-off: scales over cores with no shared socket and no lock on the data path except
//! the guard's (one lock per batch, so that a source has one token bucket whichever loop
//! its datagrams reach); one busy source still lands on one loop.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::batch::Batch;
use crate::guard::Guard;
use crate::TICK;

/// Batches echoed once the stop flag is seen, at most (what is already queued).
const FINAL_BATCHES: usize = 64;

/// Runs one loop on `socket` until `stop` is set, then echoes what is already queued
/// (bounded).
pub fn serve(socket: UdpSocket, guard: &Mutex<Guard>, stop: &AtomicBool) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(TICK))?;
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    while !stop.load(Ordering::SeqCst) {
        // At most one batch per call: the stop flag is read between batches, even under
        // a flood.
        batch.echo_waiting(fd, guard)?;
    }
    for _ in 0..FINAL_BATCHES {
        if batch.echo_once(fd, guard)? == 0 {
            break;
        }
    }
    Ok(())
}
