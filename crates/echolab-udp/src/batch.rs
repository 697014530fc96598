//! Batched datagram I/O: up to [`BATCH`] datagrams per `recvmmsg(2)` and per
//! `sendmmsg(2)`, through [`echolab_sys::mmsg`] (buffers and headers made once; a reply
//! goes to the source address exactly as the kernel wrote it). Used by the models that can
//! wait for readiness (event, reactor); the iterative model is one datagram per call on
//! purpose. This file holds what the models share: the guard's verdicts and the counts.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::Instant;

use echolab_sys::mmsg::Datagrams;
use nix::libc;

use crate::guard::{DropReason, Guard};
use crate::BUF_LEN;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// The buffers and headers of one loop's batches, allocated once ([`BATCH`] ×
/// [`BUF_LEN`] bytes, 2 MiB, touched only as datagrams fill them), and scratch kept
/// between batches (cleared, never shrunk), so that a batch allocates nothing.
pub struct Batch {
    datagrams: Datagrams,
    /// Each held datagram's source (`None`: a family that is neither IPv4 nor IPv6).
    sources: Vec<Option<SocketAddr>>,
    /// The indices the guard admitted, and the outcome of each one's send.
    admitted: Vec<usize>,
    outcomes: Vec<io::Result<usize>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("received", &self.datagrams.len())
            .finish_non_exhaustive()
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

impl Batch {
    /// Buffers for [`BATCH`] datagrams of up to [`BUF_LEN`] bytes.
    pub fn new() -> Batch {
        Batch {
            datagrams: Datagrams::new(BATCH, BUF_LEN),
            sources: Vec::with_capacity(BATCH),
            admitted: Vec::with_capacity(BATCH),
            outcomes: Vec::with_capacity(BATCH),
        }
    }

    /// One `recvmmsg` (non-blocking), then the guard's verdicts, then one or more
    /// `sendmmsg` for the admitted datagrams. Returns how many datagrams were received:
    /// 0 means the socket had none (WouldBlock), and fewer than [`BATCH`] that the call
    /// emptied the socket's queue or met a socket error (which the next call reports), so
    /// that a caller need not make one more call just to hear WouldBlock (a level-triggered
    /// wait sees whatever is left).
    ///
    /// Errors: only a receive error other than WouldBlock/Interrupted/ConnectionRefused;
    /// send errors are counted as [`DropReason::SendFailed`] and never stop the loop.
    pub fn echo_once(&mut self, fd: RawFd, guard: &Mutex<Guard>) -> io::Result<usize> {
        self.echo(fd, guard, libc::MSG_DONTWAIT)
    }

    /// [`Batch::echo_once`] on a blocking socket: the `recvmmsg` sleeps until the first
    /// datagram arrives (or the socket's receive timeout, `SO_RCVTIMEO`, passes: then 0),
    /// then takes what else is queued without waiting (`MSG_WAITFORONE`). The readiness
    /// wait and the first read are one system call.
    pub fn echo_waiting(&mut self, fd: RawFd, guard: &Mutex<Guard>) -> io::Result<usize> {
        self.echo(fd, guard, libc::MSG_WAITFORONE)
    }

    fn echo(
        &mut self,
        fd: RawFd,
        guard: &Mutex<Guard>,
        recv_flags: libc::c_int,
    ) -> io::Result<usize> {
        let n_received = match self.datagrams.recv(fd, recv_flags) {
            Ok(n) => n,
            Err(err) => {
                return match err.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                    // An ICMP error queued on the socket: reported once, then gone.
                    Some(libc::ECONNREFUSED) => Ok(0),
                    _ => Err(err),
                };
            }
        };
        if n_received == 0 {
            return Ok(0);
        }
        self.sources.clear();
        self.sources
            .extend((0..n_received).map(|idx| self.datagrams.source(idx)));
        // The guard's verdicts, under one lock for the whole batch.
        let now = Instant::now();
        self.admitted.clear();
        {
            let mut guard = guard.lock().unwrap_or_else(|e| e.into_inner());
            for (idx, src) in self.sources.iter().enumerate() {
                let Some(src) = *src else {
                    // Not IPv4 or IPv6: cannot happen on an inet socket; nothing to reply to.
                    continue;
                };
                if self.datagrams.truncated(idx) {
                    guard.count_drop(DropReason::Truncated, src, now);
                } else if guard.admit(src, now).is_ok() {
                    self.admitted.push(idx);
                }
            }
        }
        if self.admitted.is_empty() {
            return Ok(n_received);
        }
        // The send runs without the guard's lock (the other loops judge meanwhile).
        self.datagrams.echo(fd, &self.admitted, &mut self.outcomes);
        let mut guard = guard.lock().unwrap_or_else(|e| e.into_inner());
        for (idx, outcome) in self.admitted.iter().zip(&self.outcomes) {
            let len = self.datagrams.payload(*idx).len();
            let Some(src) = self.sources[*idx] else {
                continue;
            };
            match outcome {
                Ok(sent) if *sent == len => guard.echoed(len, src),
                _ => guard.count_drop(DropReason::SendFailed, src, now),
            }
        }
        Ok(n_received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;

    use crate::guard::Policy;

    /// The reactor's receive: on a blocking socket it waits for the first datagram, takes
    /// what else is queued without waiting, and ends empty at the receive timeout.
    #[test]
    fn a_waiting_batch_takes_what_is_queued_and_ends_at_the_receive_timeout() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let guard = Mutex::new(Guard::new(Policy::default()));
        let mut batch = Batch::new();
        // Nothing queued: the wait ends at the timeout, with nothing.
        let started = Instant::now();
        assert_eq!(batch.echo_waiting(server.as_raw_fd(), &guard).unwrap(), 0);
        assert!(started.elapsed() >= std::time::Duration::from_millis(15));
        // Three queued, and a long timeout: the call waits only for the first datagram,
        // not for a full batch (that would take the 10 s timeout). Loopback delivers
        // within the send; a datagram still on its way is taken by a later call.
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        for idx in 0..3u8 {
            client
                .send_to(&[idx; 4], server.local_addr().unwrap())
                .unwrap();
        }
        let started = Instant::now();
        let mut got = 0;
        for _ in 0..3 {
            got += batch.echo_waiting(server.as_raw_fd(), &guard).unwrap();
            if got == 3 {
                break;
            }
        }
        assert_eq!(got, 3);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let mut buf = [0u8; 8];
        for idx in 0..3u8 {
            assert_eq!(client.recv(&mut buf).unwrap(), 4);
            assert_eq!(buf[..4], [idx; 4]);
        }
        assert_eq!(guard.lock().unwrap().stats().echoed, 3);
    }

    #[test]
    fn a_batch_says_how_many_it_holds_when_debugged() {
        let batch = Batch::new();
        assert_eq!(format!("{batch:?}"), "Batch { received: 0, .. }");
    }

    #[test]
    fn a_batch_echoes_what_the_guard_admits_and_counts_the_rest() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        for size in [0usize, 5, 1400] {
            client
                .send_to(&vec![7u8; size], server.local_addr().unwrap())
                .unwrap();
        }
        let guard = Mutex::new(Guard::new(Policy::default()));
        let mut batch = Batch::new();
        // Loopback delivery normally completes within the send; read until all three
        // are in, in a bounded number of calls, in case one is still on its way.
        let mut got = 0;
        for _ in 0..1000 {
            got += batch.echo_once(server.as_raw_fd(), &guard).unwrap();
            if got == 3 {
                break;
            }
        }
        assert_eq!(got, 3);
        let mut buf = vec![0u8; 2048];
        for size in [0usize, 5, 1400] {
            assert_eq!(client.recv(&mut buf).unwrap(), size);
        }
        let stats = guard.lock().unwrap().stats().clone();
        assert_eq!((stats.received, stats.echoed), (3, 3));
        assert_eq!(batch.echo_once(server.as_raw_fd(), &guard).unwrap(), 0);
    }

    /// An ICMP error queued on the socket (a reply to a closed port, reported because the
    /// socket asks for errors: `IP_RECVERR`) comes out of the next receive as
    /// ECONNREFUSED: that batch is empty, and the loop goes on echoing.
    #[test]
    fn an_icmp_error_on_the_socket_does_not_stop_the_loop() {
        use nix::sys::socket::{setsockopt, sockopt::Ipv4RecvErr};
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt(&server, Ipv4RecvErr, &true).unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        // Loopback answers at once with port unreachable, queued on `server`.
        server.send_to(b"x", closed_addr).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        client
            .send_to(b"after", server.local_addr().unwrap())
            .unwrap();
        let guard = Mutex::new(Guard::new(Policy::default()));
        let mut batch = Batch::new();
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(batch.echo_waiting(server.as_raw_fd(), &guard).unwrap());
            if got.last() == Some(&1) {
                break;
            }
        }
        assert_eq!(got, [0, 1], "the error's batch, then the datagram");
        let mut buf = [0u8; 8];
        assert_eq!(client.recv(&mut buf).unwrap(), 5);
    }
}
