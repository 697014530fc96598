//! Batched datagram I/O: up to [`BATCH`] datagrams per `recvmmsg(2)` and per
//! `sendmmsg(2)`, through nix's safe wrappers. Used by the models that can wait for
//! readiness (event, reactor); the iterative model is one datagram per call on purpose.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::time::Instant;

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

use crate::guard::{DropReason, Guard};
use crate::BUF_LEN;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// One received datagram: where its bytes are and who sent it.
#[derive(Debug, Clone, Copy)]
struct Received {
    len: usize,
    src: SocketAddr,
    truncated: bool,
}

/// The buffers and headers of one loop's batches, allocated once ([`BATCH`] ×
/// [`BUF_LEN`] bytes, 2 MiB).
pub struct Batch {
    bufs: [Vec<u8>; BATCH],
    received: Vec<Received>,
    recv_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
    /// Scratch kept between calls (cleared, never shrunk), so that a batch allocates
    /// nothing (the I/O vectors that borrow `bufs` are arrays on the stack): the indices
    /// admitted, the send outcomes and the reply addresses.
    admitted: Vec<usize>,
    outcomes: Vec<bool>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

/// The socket address nix gives back, as std's (None for an address family we do not
/// serve).
fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

impl Batch {
    /// Buffers for [`BATCH`] datagrams of up to [`BUF_LEN`] bytes.
    pub fn new() -> Batch {
        Batch {
            bufs: std::array::from_fn(|_| vec![0u8; BUF_LEN]),
            received: Vec::with_capacity(BATCH),
            recv_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
            admitted: Vec::with_capacity(BATCH),
            outcomes: Vec::with_capacity(BATCH),
            addrs: Vec::with_capacity(BATCH),
        }
    }

    /// One `recvmmsg` (non-blocking), then the guard's verdicts, then one or more
    /// `sendmmsg` for the admitted datagrams. Returns how many datagrams were received:
    /// 0 means the socket had none (WouldBlock), and fewer than [`BATCH`] that the call
    /// emptied the socket's queue (a non-blocking `recvmmsg` stops early only then), so
    /// that a caller need not make one more call just to hear WouldBlock.
    ///
    /// Errors: only a receive error other than WouldBlock/Interrupted; send errors are
    /// counted as [`DropReason::SendFailed`] and never stop the loop.
    pub fn echo_once(&mut self, fd: RawFd, guard: &std::sync::Mutex<Guard>) -> io::Result<usize> {
        self.echo(fd, guard, MsgFlags::MSG_DONTWAIT)
    }

    /// [`Batch::echo_once`] on a blocking socket: the `recvmmsg` sleeps until the first
    /// datagram arrives (or the socket's receive timeout, `SO_RCVTIMEO`, passes: then 0),
    /// then takes what else is queued without waiting (`MSG_WAITFORONE`). The readiness
    /// wait and the first read are one system call.
    pub fn echo_waiting(
        &mut self,
        fd: RawFd,
        guard: &std::sync::Mutex<Guard>,
    ) -> io::Result<usize> {
        self.echo(fd, guard, MsgFlags::MSG_WAITFORONE)
    }

    fn echo(
        &mut self,
        fd: RawFd,
        guard: &std::sync::Mutex<Guard>,
        recv_flags: MsgFlags,
    ) -> io::Result<usize> {
        self.received.clear();
        {
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                self.bufs.each_mut().map(|buf| [IoSliceMut::new(buf)]);
            let results = match recvmmsg(
                fd,
                &mut self.recv_headers,
                iovs.iter_mut(),
                recv_flags,
                None,
            ) {
                Ok(results) => results,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => return Ok(0),
                // An ICMP error queued on the socket: reported once, then gone.
                Err(nix::errno::Errno::ECONNREFUSED) => return Ok(0),
                Err(err) => return Err(err.into()),
            };
            for msg in results {
                let Some(src) = msg.address.as_ref().and_then(to_std) else {
                    continue;
                };
                self.received.push(Received {
                    len: msg.bytes,
                    src,
                    // Neither can happen with buffers larger than any datagram (so `||`
                    // and `&&` decide alike here, a surviving mutant); kept so that a
                    // smaller buffer could never echo a cut datagram.
                    truncated: msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes >= BUF_LEN,
                });
            }
        }
        let n_received = self.received.len();
        if n_received == 0 {
            return Ok(0);
        }
        // The guard's verdicts, under one lock for the whole batch.
        let now = Instant::now();
        let mut admitted = std::mem::take(&mut self.admitted);
        admitted.clear();
        {
            let mut guard = guard.lock().unwrap_or_else(|e| e.into_inner());
            for (idx, got) in self.received.iter().enumerate() {
                if got.truncated {
                    guard.count_drop(DropReason::Truncated, got.src, now);
                } else if guard.admit(got.src, now).is_ok() {
                    admitted.push(idx);
                }
            }
        }
        self.send_into(fd, &admitted);
        let mut guard = guard.lock().unwrap_or_else(|e| e.into_inner());
        for (idx, sent) in admitted.iter().zip(&self.outcomes) {
            let got = self.received[*idx];
            if *sent {
                guard.echoed(got.len, got.src);
            } else {
                guard.count_drop(DropReason::SendFailed, got.src, now);
            }
        }
        self.admitted = admitted;
        Ok(n_received)
    }

    /// [`Batch::send_into`], returning the outcomes (for the tests).
    #[cfg(test)]
    fn send(&mut self, fd: RawFd, which: &[usize]) -> Vec<bool> {
        self.send_into(fd, which);
        self.outcomes.clone()
    }

    /// Sends datagram `idx` back to its source for every `idx` of `which`; whether each
    /// went out lands in `self.outcomes` (in `which`'s order). A failed message is skipped
    /// and the rest retried: sendmmsg reports an error only for the first message of a
    /// call.
    fn send_into(&mut self, fd: RawFd, which: &[usize]) {
        let mut outcomes = std::mem::take(&mut self.outcomes);
        outcomes.clear();
        outcomes.resize(which.len(), false);
        let mut addrs = std::mem::take(&mut self.addrs);
        let mut start = 0;
        // Each round either sends at least one message or skips one: bounded by len.
        // (`<=` would only add one empty sendmmsg at the end: a surviving mutant.)
        while start < which.len() {
            let rest = &which[start..which.len().min(start + BATCH)];
            let mut iovs = [[IoSlice::new(&[])]; BATCH];
            for (iov, idx) in iovs.iter_mut().zip(rest) {
                *iov = [IoSlice::new(&self.bufs[*idx][..self.received[*idx].len])];
            }
            addrs.clear();
            addrs.extend(
                rest.iter()
                    .map(|idx| Some(SockaddrStorage::from(self.received[*idx].src))),
            );
            match sendmmsg(
                fd,
                &mut self.send_headers,
                iovs[..rest.len()].iter(),
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(results) => {
                    let n_sent = results.count().min(rest.len());
                    if n_sent == 0 {
                        // Nothing went out and no error was said (the kernel does not do
                        // this for a non-empty batch; no test can reach it): skip the
                        // first, so that the loop still ends.
                        start += 1;
                        continue;
                    }
                    for outcome in &mut outcomes[start..start + n_sent] {
                        *outcome = true;
                    }
                    start += n_sent;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => start += 1,
            }
        }
        self.outcomes = outcomes;
        self.addrs = addrs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::sync::Mutex;

    use crate::guard::Policy;

    /// A failed message in the middle of a batch is skipped; the ones after it still go.
    #[test]
    fn a_send_error_skips_one_datagram_and_the_rest_still_go() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let good = client.local_addr().unwrap();
        // Port 0 is no destination: sendmmsg fails on that message (EINVAL).
        let bad: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut batch = Batch::new();
        for (idx, dst) in [good, bad, good].into_iter().enumerate() {
            batch.bufs[idx][..3].copy_from_slice(&[idx as u8; 3]);
            batch.received.push(Received {
                len: 3,
                src: dst,
                truncated: false,
            });
        }
        let outcomes = batch.send(server.as_raw_fd(), &[0, 1, 2]);
        assert_eq!(outcomes, vec![true, false, true]);
        let mut buf = [0u8; 8];
        assert_eq!(client.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], &[0, 0, 0]);
        assert_eq!(client.recv(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], &[2, 2, 2]);
    }

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
}
