//! The reactor UDP server: N event loops (mio, so epoll), each with its own SO_REUSEPORT
//! socket on the same port; the kernel spreads sources over the sockets by a hash of
//! their addresses. Each loop echoes in batches (`recvmmsg`/`sendmmsg`).
//!
//! Trade-off: scales over cores with no shared socket and no lock on the data path except
//! the guard's (one lock per batch, so that a source has one token bucket whichever loop
//! its datagrams reach); one busy source still lands on one loop.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use mio::{Events, Interest, Poll, Token};

use crate::batch::{Batch, BATCH};
use crate::guard::Guard;
use crate::TICK;

const SOCKET: Token = Token(0);

/// Batches per wake-up before polling again (a bounded amount of work per turn).
const BUDGET: usize = 64;

/// Runs one loop on `socket` until `stop` is set, then echoes what is already queued
/// (bounded).
pub fn serve(socket: UdpSocket, guard: &Mutex<Guard>, stop: &AtomicBool) -> std::io::Result<()> {
    socket.set_nonblocking(true)?;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    let fd = socket.as_raw_fd();
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut socket, SOCKET, Interest::READABLE)?;
    let mut events = Events::with_capacity(8);
    let mut batch = Batch::new();
    while !stop.load(Ordering::SeqCst) {
        match poll.poll(&mut events, Some(TICK)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        if events.is_empty() {
            continue;
        }
        // mio is edge-triggered: drain until the socket is empty, or spend the budget.
        let mut drained = false;
        for _ in 0..BUDGET {
            if batch.echo_once(fd, guard)? < BATCH {
                drained = true;
                break;
            }
        }
        if !drained {
            // Datagrams are left and no new edge will say so: re-registering re-arms the
            // readiness, so the next poll returns at once.
            poll.registry()
                .reregister(&mut socket, SOCKET, Interest::READABLE)?;
        }
    }
    for _ in 0..BUDGET {
        if batch.echo_once(fd, guard)? == 0 {
            break;
        }
    }
    Ok(())
}
