//! Batched datagram I/O, `recvmmsg(2)` and `sendmmsg(2)`, over buffers and headers made
//! once: a batch of datagrams is received into fixed buffers and echoed from them, each to
//! the source address exactly as the kernel wrote it. Per batch the only work besides the
//! two calls is resetting the receive lengths and pointing a send header at each reply;
//! nothing is allocated or converted (a source becomes a [`SocketAddr`] only when asked).
//!
//! Safety: every `iovec` and `mmsghdr` points into vectors owned by the [`Datagrams`],
//! never resized (their heap memory does not move when the struct does), each pointer
//! taken from its vector's `as_mut_ptr` (no reference to the whole vector is made after,
//! so that the pointers stay valid under Rust's aliasing rules, for Miri as for the
//! compiler); the kernel uses them only for the length of a call made through `&mut self`.
//!
//! [`send_each`] is the one loop that sends a prepared header array and skips a message
//! the kernel refuses (`sendmmsg` reports an error only for the first message of a call);
//! the io_uring UDP ring uses it too.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `count` datagram buffers of `buf_len` bytes each, with their source addresses and the
/// headers of one `recvmmsg` and one `sendmmsg`.
pub struct Datagrams {
    /// `count × buf_len` bytes, zeroed lazily by the allocator (pages are touched only as
    /// datagrams fill them).
    bufs: Vec<u8>,
    buf_len: usize,
    names: Vec<libc::sockaddr_storage>,
    recv_iovs: Vec<libc::iovec>,
    recv_hdrs: Vec<libc::mmsghdr>,
    send_iovs: Vec<libc::iovec>,
    send_hdrs: Vec<libc::mmsghdr>,
    /// Datagrams held from the last receive.
    held: usize,
}

impl std::fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datagrams")
            .field("count", &self.recv_hdrs.len())
            .field("buf_len", &self.buf_len)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Datagrams {
    /// Room for `count` datagrams (at least 1) of up to `buf_len` bytes (at least 1) each.
    /// Panics if `count × buf_len` bytes cannot be addressed.
    pub fn new(count: usize, buf_len: usize) -> Datagrams {
        let count = count.max(1);
        let buf_len = buf_len.max(1);
        // Checked, not wrapped (as a release build's `*` would): every I/O vector below
        // must lie inside `bufs`.
        let total = count
            .checked_mul(buf_len)
            .expect("count × buf_len overflows usize");
        // SAFETY (for the zeroed values below): all-zero sockaddr_storage, iovec and
        // mmsghdr are valid values (null pointers, zero lengths).
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut batch = Datagrams {
            bufs: vec![0u8; total],
            buf_len,
            names: vec![zero_name; count],
            recv_iovs: vec![zero_iov; count],
            recv_hdrs: vec![zero_hdr; count],
            send_iovs: vec![zero_iov; count],
            send_hdrs: vec![zero_hdr; count],
            held: 0,
        };
        let bufs = batch.bufs.as_mut_ptr();
        let names = batch.names.as_mut_ptr();
        let iovs = batch.recv_iovs.as_mut_ptr();
        for (idx, hdr) in batch.recv_hdrs.iter_mut().enumerate() {
            // SAFETY: idx < count, the length of `names` and `recv_iovs`; and
            // idx * buf_len + buf_len <= total (no overflow: checked above): inside `bufs`.
            unsafe {
                iovs.add(idx).write(libc::iovec {
                    iov_base: bufs.add(idx * buf_len).cast(),
                    iov_len: buf_len,
                });
                hdr.msg_hdr.msg_name = names.add(idx).cast();
                hdr.msg_hdr.msg_iov = iovs.add(idx);
            }
            hdr.msg_hdr.msg_iovlen = 1;
        }
        batch
    }

    /// Receives up to `count` ([`Datagrams::new`]) datagrams with one `recvmmsg(fd, flags)`
    /// (for instance `MSG_DONTWAIT`, or `MSG_WAITFORONE` on a blocking socket), replacing
    /// the ones held. Returns how many arrived.
    ///
    /// Errors: the call's, as `io::Error` (WouldBlock when a non-blocking call finds none;
    /// a timeout set with `SO_RCVTIMEO` also reads as WouldBlock); nothing is held then.
    pub fn recv(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        self.held = 0;
        let name_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        for hdr in self.recv_hdrs.iter_mut() {
            hdr.msg_hdr.msg_namelen = name_len;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        let count = u32::try_from(self.recv_hdrs.len()).unwrap_or(u32::MAX);
        // SAFETY: every header points at its own name, I/O vector and buffer, all owned by
        // `self` and alive for the call; the kernel writes at most the lengths given.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdrs.as_mut_ptr(),
                count,
                flags,
                std::ptr::null_mut(),
            )
        };
        // (`<=` would read a stale errno on 0, which recvmmsg returns only for a count
        // of 0: never here.)
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        self.held = got as usize;
        Ok(self.held)
    }

    /// Datagrams held from the last [`Datagrams::recv`].
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Datagram `idx`'s bytes (its first `buf_len` if it was larger: see
    /// [`Datagrams::truncated`]). Panics if `idx` is not held.
    pub fn payload(&self, idx: usize) -> &[u8] {
        assert!(idx < self.held, "datagram {idx} is not held");
        let len = (self.recv_hdrs[idx].msg_len as usize).min(self.buf_len);
        &self.bufs[idx * self.buf_len..idx * self.buf_len + len]
    }

    /// Whether datagram `idx` was larger than its buffer (`MSG_TRUNC`, or a buffer filled
    /// to the last byte): its bytes are not all here and it must not be echoed.
    pub fn truncated(&self, idx: usize) -> bool {
        assert!(idx < self.held, "datagram {idx} is not held");
        let hdr = &self.recv_hdrs[idx];
        hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || hdr.msg_len as usize >= self.buf_len
    }

    /// Datagram `idx`'s source, `None` for a family other than IPv4 and IPv6.
    pub fn source(&self, idx: usize) -> Option<SocketAddr> {
        assert!(idx < self.held, "datagram {idx} is not held");
        let len = (self.recv_hdrs[idx].msg_hdr.msg_namelen as usize)
            .min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `names[idx]` is a sockaddr_storage, plain bytes of at least `len`.
        let name = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&self.names[idx]).cast::<u8>(), len)
        };
        sockaddr_to_std(name)
    }

    /// Sends datagram `idx` back to its source, as received, for every `idx` of `which`,
    /// with `sendmmsg(MSG_DONTWAIT)` ([`send_each`]); `outcomes` gets one entry per
    /// `which` entry, in order: the bytes sent or the error. Panics if an `idx` is not
    /// held.
    pub fn echo(&mut self, fd: RawFd, which: &[usize], outcomes: &mut Vec<io::Result<usize>>) {
        outcomes.clear();
        let send_iovs = self.send_iovs.as_mut_ptr();
        for round in which.chunks(self.send_hdrs.len()) {
            for (slot, &idx) in round.iter().enumerate() {
                assert!(idx < self.held, "datagram {idx} is not held");
                let got = &self.recv_hdrs[idx];
                let iov = libc::iovec {
                    iov_base: self.recv_iovs[idx].iov_base,
                    iov_len: (got.msg_len as usize).min(self.buf_len),
                };
                let hdr = &mut self.send_hdrs[slot].msg_hdr;
                hdr.msg_name = got.msg_hdr.msg_name;
                hdr.msg_namelen = got.msg_hdr.msg_namelen;
                // SAFETY: slot < round.len() <= the length of `send_iovs`.
                unsafe {
                    send_iovs.add(slot).write(iov);
                    hdr.msg_iov = send_iovs.add(slot);
                }
                hdr.msg_iovlen = 1;
                self.send_hdrs[slot].msg_len = 0;
            }
            // SAFETY: the round's send headers point at held names and buffers and at
            // their own I/O vectors, all owned by `self` and alive for the call.
            unsafe { send_each(fd, &mut self.send_hdrs[..round.len()], outcomes) };
        }
    }
}

/// Sends every message of `hdrs` with `sendmmsg(fd, MSG_DONTWAIT)`, as many per call as
/// the kernel takes, and pushes one outcome per message onto `outcomes`, in order: the
/// bytes sent (`msg_len`) or the error. A message the kernel refuses (an ICMP error
/// queued on the socket, `EINVAL` for port 0, `EAGAIN` on a full buffer) is skipped and
/// the rest still go; an interrupted call is repeated.
///
/// # Safety
/// Every header must point at a name, I/O vectors and bytes valid for reads for the
/// whole call.
pub unsafe fn send_each(
    fd: RawFd,
    hdrs: &mut [libc::mmsghdr],
    outcomes: &mut Vec<io::Result<usize>>,
) {
    let mut start = 0;
    // Each round sends at least one message or skips one: bounded by the count.
    while start < hdrs.len() {
        let rest = &mut hdrs[start..];
        let n = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        // SAFETY: the caller's promise; the kernel only reads the messages and writes
        // each header's `msg_len`.
        let sent = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), n, libc::MSG_DONTWAIT) };
        if sent > 0 {
            for hdr in &rest[..sent as usize] {
                outcomes.push(Ok(hdr.msg_len as usize));
            }
            start += sent as usize;
            continue;
        }
        let err = if sent < 0 {
            io::Error::last_os_error()
        } else {
            // Nothing sent and no error said (the kernel does not do this for a non-empty
            // batch): skip the first, so that the loop still ends.
            io::Error::other("sendmmsg sent nothing")
        };
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        outcomes.push(Err(err));
        start += 1;
    }
}

/// A socket address as the kernel writes it (`sockaddr_in` or `sockaddr_in6`), as std's;
/// `None` for another family or a name too short for its family.
pub fn sockaddr_to_std(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match libc::c_int::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flowinfo = u32::from_ne_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flowinfo,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn pair() -> (UdpSocket, UdpSocket) {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (server, client)
    }

    /// Queued datagrams come back, each to its source, bytes and lengths unchanged (zero
    /// included); more than a batch takes two receives.
    #[test]
    fn a_batch_is_echoed_to_each_source_as_received() {
        let (server, client) = pair();
        let (_, other) = pair();
        let to = server.local_addr().unwrap();
        client.send_to(b"first", to).unwrap();
        other.send_to(b"", to).unwrap();
        client.send_to(b"third!", to).unwrap();
        let mut batch = Datagrams::new(2, 16);
        assert_eq!(
            batch.recv(server.as_raw_fd(), libc::MSG_DONTWAIT).unwrap(),
            2
        );
        assert_eq!((batch.len(), batch.is_empty()), (2, false));
        assert_eq!(
            format!("{batch:?}"),
            "Datagrams { count: 2, buf_len: 16, held: 2, .. }"
        );
        assert_eq!(batch.payload(0), b"first");
        assert_eq!(batch.payload(1), b"");
        assert_eq!(batch.source(0), Some(client.local_addr().unwrap()));
        assert_eq!(batch.source(1), Some(other.local_addr().unwrap()));
        assert!(!batch.truncated(0) && !batch.truncated(1));
        let mut outcomes = Vec::new();
        batch.echo(server.as_raw_fd(), &[1, 0], &mut outcomes);
        let sent: Vec<usize> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(sent, [0, 5]);
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"first");
        assert_eq!(other.recv(&mut buf).unwrap(), 0);
        assert_eq!(
            batch.recv(server.as_raw_fd(), libc::MSG_DONTWAIT).unwrap(),
            1
        );
        assert_eq!(batch.payload(0), b"third!");
        assert_eq!(batch.len(), 1);
        let err = batch
            .recv(server.as_raw_fd(), libc::MSG_DONTWAIT)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(batch.is_empty());
    }

    /// A datagram larger than its buffer is cut and said to be: one the buffer's size and
    /// one larger both count as truncated, one a byte shorter does not.
    #[test]
    fn a_datagram_that_fills_its_buffer_is_truncated() {
        let (server, client) = pair();
        let to = server.local_addr().unwrap();
        for len in [7, 8, 9] {
            client.send_to(&vec![b'x'; len], to).unwrap();
        }
        let mut batch = Datagrams::new(4, 8);
        assert_eq!(
            batch.recv(server.as_raw_fd(), libc::MSG_DONTWAIT).unwrap(),
            3
        );
        let cut: Vec<bool> = (0..3).map(|idx| batch.truncated(idx)).collect();
        assert_eq!(cut, [false, true, true]);
        assert_eq!(batch.payload(2).len(), 8);
    }

    /// A refused message is skipped and the ones after it still go: port 0 is no
    /// destination (EINVAL), so the middle of three fails.
    #[test]
    fn send_each_skips_a_refused_message_and_sends_the_rest() {
        let (server, client) = pair();
        let good = client.local_addr().unwrap();
        let to = server.local_addr().unwrap();
        client.send_to(b"a", to).unwrap();
        client.send_to(b"bb", to).unwrap();
        client.send_to(b"ccc", to).unwrap();
        let mut batch = Datagrams::new(4, 16);
        assert_eq!(
            batch.recv(server.as_raw_fd(), libc::MSG_DONTWAIT).unwrap(),
            3
        );
        // Rewrite the second source's port to 0, where the kernel wrote it.
        // SAFETY: the name holds a sockaddr_in (the server is IPv4), and nothing else
        // refers to it during the write.
        unsafe {
            let v4 = batch.recv_hdrs[1]
                .msg_hdr
                .msg_name
                .cast::<libc::sockaddr_in>();
            (*v4).sin_port = 0;
        }
        let mut outcomes = Vec::new();
        batch.echo(server.as_raw_fd(), &[0, 1, 2], &mut outcomes);
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0].as_ref().unwrap(), &1);
        assert_eq!(
            outcomes[1].as_ref().unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        assert_eq!(outcomes[2].as_ref().unwrap(), &3);
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf).unwrap(), 1);
        assert_eq!(client.recv(&mut buf).unwrap(), 3);
        assert_eq!(good, client.local_addr().unwrap());
    }

    /// A size that wraps (`count × buf_len` past usize::MAX) would leave the I/O vectors
    /// pointing past a small buffer for the kernel to write: it is refused instead.
    #[test]
    #[should_panic(expected = "count × buf_len overflows usize")]
    fn a_size_that_overflows_is_refused_not_wrapped() {
        let _ = Datagrams::new(usize::MAX / 2 + 1, 2);
    }

    #[test]
    fn names_of_other_families_or_too_short_are_none() {
        let mut v4 = Vec::new();
        v4.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4.extend_from_slice(&4567u16.to_be_bytes());
        v4.extend_from_slice(&[10, 1, 2, 3]);
        v4.extend_from_slice(&[0; 8]);
        assert_eq!(sockaddr_to_std(&v4), Some("10.1.2.3:4567".parse().unwrap()));
        assert_eq!(sockaddr_to_std(&v4[..6]), None);
        let mut unix = v4.clone();
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(sockaddr_to_std(&unix), None);
        assert_eq!(sockaddr_to_std(&[]), None);
        let mut v6 = Vec::new();
        v6.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6.extend_from_slice(&7u16.to_be_bytes());
        v6.extend_from_slice(&5u32.to_ne_bytes()); // flow info
        v6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&3u32.to_ne_bytes()); // scope id
        let want = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7, 5, 3);
        assert_eq!(sockaddr_to_std(&v6), Some(SocketAddr::V6(want)));
        assert_eq!(sockaddr_to_std(&v6[..27]), None);
    }
}
