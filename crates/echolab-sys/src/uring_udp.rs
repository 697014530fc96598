//! io_uring for the UDP `uring` model: one ring per socket, a multishot `recvmsg` into
//! provided buffers, and replies sent with `sendmsg` straight from the buffer the datagram
//! arrived in (no copy: the reply is the received bytes, to the received address).
//!
//! The safety argument is the one of [`crate::uring`]: **memory named by a request
//! belongs to the [`UdpRing`] until the request's last completion arrives.**
//! - Receive buffers are one allocation owned by the ring, handed to the kernel through a
//!   registered buffer ring. A completion names a filled buffer; from then on it is the
//!   caller's ([`Datagram`]) until [`UdpRing::recycle`] or [`UdpRing::reply`] takes it
//!   back. The caller reads it only through [`UdpRing::payload`].
//! - A reply's `msghdr` and `iovec` live in a slot per buffer, allocated once, and point
//!   into that buffer (its source address and its payload); the buffer goes back to the
//!   kernel only in the reply's completion, so nothing rewrites it while the send reads it.
//! - The receive's `msghdr` (which tells the kernel the name and control lengths) is a box
//!   owned by the ring.
//! - On drop, the ring cancels every request and waits for them; if it cannot be sure the
//!   kernel is done, it leaks the memory rather than freeing what the kernel may use.
//!
//! Layout of one receive buffer, as the kernel writes it for a multishot `recvmsg`:
//! `io_uring_recvmsg_out` (16 bytes), the source address ([`NAME_LEN`] bytes, room for a
//! `sockaddr_in6`), then the payload (up to the capacity given to [`UdpRing::new`]).

use std::io;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::provided::ProvidedBuffers;
use io_uring::types::{CancelBuilder, Fd, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring};

/// The buffer group of the ring's receive buffers (one group per ring).
const BUF_GROUP: u16 = 0;

/// The kind of a request, in the top byte of its `user_data`; the rest is a buffer id.
const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_CANCEL: u64 = 3;

/// The `io_uring_recvmsg_out` header at the start of every filled buffer.
const OUT_HEADER: usize = 16;

/// Room for the source address in every buffer: a `sockaddr_in6` (a `sockaddr_in` is
/// smaller).
pub const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Tells rings apart, so a [`Datagram`] is only ever given back to its own ring.
static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

/// A received datagram, lent to the caller until [`UdpRing::reply`] or
/// [`UdpRing::recycle`]. Dropping it without either only loses the buffer to the ring.
#[derive(Debug)]
pub struct Datagram {
    ring_id: u64,
    bid: u16,
    /// Where the payload starts in the buffer, and how many bytes of it are there.
    payload_at: usize,
    len: usize,
    /// The source address as the kernel wrote it (for the reply), and its length.
    name_len: u32,
    /// The source, `None` for an address family other than IPv4 and IPv6.
    pub src: Option<SocketAddr>,
    /// The datagram was larger than the buffer's payload room (`MSG_TRUNC`): only its
    /// first bytes are here, and it must not be echoed.
    pub truncated: bool,
}

impl Datagram {
    /// The payload bytes held (all of them unless [`Datagram::truncated`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a completion reported.
#[derive(Debug)]
pub enum UdpCompletion {
    /// The multishot receive delivered a datagram (`Ok`) or failed. `more`: still armed;
    /// when false the caller arms it again with [`UdpRing::recv_multi`] (`ENOBUFS`: every
    /// buffer was lent out; `ECANCELED`: [`UdpRing::cancel_recv`] stopped it).
    Received {
        result: io::Result<Datagram>,
        more: bool,
    },
    /// A reply finished: `Ok(n)` bytes went out. Its buffer is back with the kernel.
    Replied { tag: u64, result: io::Result<usize> },
}

/// One reply's kernel-visible arguments, pointing into the buffer being echoed.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    tag: u64,
}

/// One io_uring instance serving one UDP socket, and the memory its requests use.
pub struct UdpRing {
    ring: IoUring,
    id: u64,
    fd: RawFd,
    /// `fd` is the ring's registered file 0: requests name it by index, and the kernel
    /// looks it up once, not once per request.
    fixed: bool,
    bufs: ProvidedBuffers,
    /// The receive's template: only `msg_namelen` and `msg_controllen` matter. Boxed so
    /// that its address stays put while the kernel may read it.
    recv_hdr: Box<libc::msghdr>,
    /// One slot per buffer: buffer `bid`'s reply uses `sends[bid]`. Never resized.
    sends: Box<[SendSlot]>,
    /// Buffers lent out (to the caller or to a reply in flight).
    lent: usize,
    /// Whether the multishot receive is armed (its last completion has not arrived).
    recv_armed: bool,
    /// Requests pushed whose last completion has not arrived (a multishot request counts
    /// once). Drop waits for this to reach zero before freeing memory.
    in_flight: usize,
    scratch: Vec<cqueue::Entry>,
    /// `!Send`: the ring is set up with `SINGLE_ISSUER`, so only its own thread may submit.
    _single_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for UdpRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpRing")
            .field("fd", &self.fd)
            .field("in_flight", &self.in_flight)
            .field("lent", &self.lent)
            .finish_non_exhaustive()
    }
}

impl UdpRing {
    /// A ring for the UDP socket `fd` with `n_bufs` receive buffers (a power of two, at
    /// most 32768), each with room for `payload` bytes; a larger datagram is reported
    /// [`Datagram::truncated`].
    ///
    /// Fails as the kernel does: `EPERM` or `ENOSYS` where io_uring is disabled (common in
    /// containers), `EINVAL` on kernels without buffer rings (before 5.19).
    pub fn new(fd: RawFd, n_bufs: u16, payload: usize) -> io::Result<UdpRing> {
        let buf_size = u32::try_from(OUT_HEADER + NAME_LEN + payload)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "payload room too large"))?;
        if !n_bufs.is_power_of_two() || n_bufs > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "n_bufs must be a power of two, at most 32768",
            ));
        }
        // Replies and receives for a whole turn fit in the queue; completions are many more
        // (a multishot receive reports each datagram).
        let entries = u32::from(n_bufs).max(8);
        let (ring, bufs) =
            crate::provided::ring_with_buffers(entries, n_bufs, buf_size, BUF_GROUP)?;
        // A kernel or limit that refuses the registration leaves the plain descriptor.
        let fixed = ring.submitter().register_files(&[fd]).is_ok();
        // SAFETY: an all-zero msghdr is a valid value (null pointers, zero lengths).
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let sends = (0..n_bufs)
            .map(|_| SendSlot {
                // SAFETY: as above; filled in by `reply` before use.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: ptr::null_mut(),
                    iov_len: 0,
                },
                tag: 0,
            })
            .collect();
        Ok(UdpRing {
            ring,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            fd,
            fixed,
            bufs,
            recv_hdr,
            sends,
            lent: 0,
            recv_armed: false,
            in_flight: 0,
            scratch: Vec::new(),
            _single_thread: PhantomData,
        })
    }

    /// Arms the multishot receive (no-op if it is armed). Datagrams arrive as
    /// [`UdpCompletion::Received`].
    pub fn recv_multi(&mut self) -> io::Result<()> {
        if self.recv_armed {
            return Ok(());
        }
        let entry = if self.fixed {
            opcode::RecvMsgMulti::new(Fixed(0), &*self.recv_hdr, BUF_GROUP)
        } else {
            opcode::RecvMsgMulti::new(Fd(self.fd), &*self.recv_hdr, BUF_GROUP)
        }
        .build()
        .user_data(KIND_RECV << KIND_SHIFT);
        self.push(entry)?;
        self.recv_armed = true;
        Ok(())
    }

    /// Whether the multishot receive is armed.
    pub fn recv_armed(&self) -> bool {
        self.recv_armed
    }

    /// Buffers the kernel can fill now (the others are lent out).
    pub fn bufs_free(&self) -> usize {
        usize::from(self.bufs.n_bufs) - self.lent
    }

    /// Asks the kernel to stop the multishot receive. Its last completion (`ECANCELED`,
    /// or whatever it delivered first) still arrives.
    pub fn cancel_recv(&mut self) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(KIND_RECV << KIND_SHIFT)
            .build()
            .user_data(KIND_CANCEL << KIND_SHIFT);
        self.push(entry)
    }

    /// The payload bytes of a received datagram.
    pub fn payload(&self, datagram: &Datagram) -> &[u8] {
        self.check_owner(datagram);
        let offset = datagram.bid as usize * self.bufs.buf_size as usize + datagram.payload_at;
        // SAFETY: `bid` came from a completion of this ring (checked above), and
        // `payload_at + len` is within the buffer (parsed from what the kernel wrote,
        // bounded by the completion's length). The kernel does not write a buffer between
        // the completion that named it and its return, which needs `&mut self`.
        unsafe { std::slice::from_raw_parts(self.bufs.data.as_ptr().add(offset), datagram.len) }
    }

    /// Sends `datagram`'s payload back to its source with `sendmsg`, from its own buffer;
    /// the buffer returns to the kernel when the reply completes
    /// ([`UdpCompletion::Replied`] with `tag`). On error the buffer is returned at once.
    pub fn reply(&mut self, datagram: Datagram, tag: u64) -> io::Result<()> {
        self.check_owner(&datagram);
        let bid = datagram.bid;
        let base = self.bufs.buf(bid);
        let slot = &mut self.sends[bid as usize];
        // SAFETY: both offsets lie inside buffer `bid` (see `payload`).
        unsafe {
            slot.iov.iov_base = base.add(datagram.payload_at).cast();
            slot.hdr.msg_name = base.add(OUT_HEADER).cast();
        }
        slot.iov.iov_len = datagram.len;
        slot.hdr.msg_namelen = datagram.name_len;
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        slot.tag = tag;
        let entry = if self.fixed {
            opcode::SendMsg::new(Fixed(0), &slot.hdr)
        } else {
            opcode::SendMsg::new(Fd(self.fd), &slot.hdr)
        }
        .build()
        .user_data(KIND_SEND << KIND_SHIFT | u64::from(bid));
        if let Err(err) = self.push(entry) {
            // Never queued: the buffer was not lent to the kernel.
            self.recycle(datagram);
            return Err(err);
        }
        Ok(())
    }

    /// Gives a datagram's buffer back to the kernel without replying.
    pub fn recycle(&mut self, datagram: Datagram) {
        self.check_owner(&datagram);
        self.give_back(datagram.bid);
    }

    fn check_owner(&self, datagram: &Datagram) {
        assert_eq!(
            datagram.ring_id, self.id,
            "a datagram was given to another ring"
        );
    }

    fn give_back(&mut self, bid: u16) {
        self.bufs.push(bid);
        self.bufs.publish();
        self.lent -= 1;
    }

    /// Submits every queued request and waits for at least `want` completions (at least
    /// one), or until `timeout` passes. One system call for the whole turn.
    ///
    /// A caller that has just queued replies can ask for one more completion than it has
    /// replies in flight: each reply completes (at once, for UDP), so the wait ends with
    /// the next datagram instead of waking the thread once for the replies and again for
    /// the datagram.
    pub fn submit_and_wait(&mut self, timeout: Duration, want: usize) -> io::Result<()> {
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(want.max(1), &args) {
            Ok(_) => Ok(()),
            // The timeout passed, or a signal arrived: both just end the wait.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Moves every available completion into `out` (which is cleared first).
    pub fn completions(&mut self, out: &mut Vec<UdpCompletion>) {
        out.clear();
        self.scratch.clear();
        self.scratch.extend(self.ring.completion());
        for idx in 0..self.scratch.len() {
            let cqe = self.scratch[idx].clone();
            if let Some(completion) = self.complete(&cqe) {
                out.push(completion);
            }
        }
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: every request built here names memory the ring owns and keeps in place
        // until the request's last completion: the receive's boxed msghdr and the buffer
        // ring (for the life of the ring), or a send slot and the buffer it points into
        // (lent to the send until its completion).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            // The queue is full: hand the batch to the kernel and retry once.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Turns one completion into what the caller sees, taking back what it releases.
    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<UdpCompletion> {
        let more = cqueue::more(cqe.flags());
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let kind = cqe.user_data() >> KIND_SHIFT;
        let res = cqe.result();
        match kind {
            KIND_RECV => {
                if !more {
                    self.recv_armed = false;
                }
                let result = match cqueue::buffer_select(cqe.flags()) {
                    Some(bid) => {
                        self.lent += 1;
                        self.parse(bid, res)
                    }
                    None if res < 0 => Err(io::Error::from_raw_os_error(-res)),
                    None => Err(io::Error::other(
                        "io_uring recvmsg completed without a buffer",
                    )),
                };
                Some(UdpCompletion::Received { result, more })
            }
            KIND_SEND => {
                let bid = (cqe.user_data() & 0xffff) as u16;
                let tag = self.sends[bid as usize].tag;
                self.give_back(bid);
                let result = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                Some(UdpCompletion::Replied { tag, result })
            }
            _ => None, // Cancel results: the cancelled receive reports for itself.
        }
    }

    /// The datagram in buffer `bid`, which the kernel filled with `res` bytes (header,
    /// name and payload). A buffer that holds no datagram goes straight back.
    fn parse(&mut self, bid: u16, res: i32) -> io::Result<Datagram> {
        let filled = usize::try_from(res).unwrap_or(0);
        let parsed = {
            // SAFETY: buffer `bid` was just named by a completion, so the kernel is done
            // with it; `filled` is what it wrote, at most the buffer's size.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    self.bufs.buf(bid),
                    filled.min(self.bufs.buf_size as usize),
                )
            };
            RecvMsgOut::parse(bytes, &self.recv_hdr).map(|out| {
                (
                    out.payload_data().len(),
                    out.is_payload_truncated(),
                    out.incoming_name_len().min(NAME_LEN as u32),
                    sockaddr_to_std(out.name_data()),
                )
            })
        };
        match parsed {
            Ok((len, truncated, name_len, src)) if res >= 0 => Ok(Datagram {
                ring_id: self.id,
                bid,
                payload_at: OUT_HEADER + NAME_LEN,
                len,
                name_len,
                src,
                truncated,
            }),
            _ => {
                self.give_back(bid);
                Err(if res < 0 {
                    io::Error::from_raw_os_error(-res)
                } else {
                    io::Error::other("io_uring recvmsg wrote a short buffer")
                })
            }
        }
    }
}

/// Whether this kernel supports multishot `recvmsg` (Linux 6.0), which
/// [`UdpRing::recv_multi`] arms. Buffer rings came in 5.19, so [`UdpRing::new`] succeeds
/// there, and the opcode is plain `recvmsg`'s with a flag, so an opcode probe cannot tell:
/// a 5.19 kernel rejects the flag (`EINVAL`) only when the receive runs. This tries it
/// once, on a private local datagram socket pair holding one datagram.
///
/// Errors: those of [`UdpRing::new`] (io_uring refused), and `TimedOut` if the kernel
/// answers nothing within a second.
pub fn supports_multishot_recvmsg() -> io::Result<bool> {
    let (writer, reader) = std::os::unix::net::UnixDatagram::pair()?;
    writer.send(&[0])?;
    // Dropped after `ring` (declared later): the ring's drop ends its requests first.
    let mut ring = UdpRing::new(std::os::fd::AsRawFd::as_raw_fd(&reader), 1, 64)?;
    ring.recv_multi()?;
    let mut completions = Vec::new();
    // Bounded: the datagram is already queued, so the first completion is immediate.
    for _ in 0..10 {
        ring.submit_and_wait(Duration::from_millis(100), 1)?;
        ring.completions(&mut completions);
        for completion in completions.drain(..) {
            if let UdpCompletion::Received { result, .. } = completion {
                return multishot_verdict(result.map(|datagram| ring.recycle(datagram)));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "io_uring multishot recvmsg probe got no completion",
    ))
}

/// What the probe's first receive says: a datagram (supported), `EINVAL` (a kernel that
/// does not know the multishot flag: not supported), or another error (returned).
fn multishot_verdict(received: io::Result<()>) -> io::Result<bool> {
    match received {
        Ok(()) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(err) => Err(err),
    }
}

/// A socket address as the kernel writes it (`sockaddr_in` or `sockaddr_in6`), as std's.
fn sockaddr_to_std(name: &[u8]) -> Option<SocketAddr> {
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

impl Drop for UdpRing {
    fn drop(&mut self) {
        // Stop everything still armed and wait for the kernel to let go of our memory.
        let _ = self.ring.submit();
        if self.in_flight > 0 {
            let timeout = Timespec::new().sec(1);
            let _ = self
                .ring
                .submitter()
                .register_sync_cancel(Some(timeout), CancelBuilder::any());
            let mut sink = Vec::new();
            for _ in 0..100 {
                self.completions(&mut sink);
                for completion in sink.drain(..) {
                    if let UdpCompletion::Received {
                        result: Ok(datagram),
                        ..
                    } = completion
                    {
                        self.recycle(datagram);
                    }
                }
                if self.in_flight == 0 {
                    break;
                }
                let _ = self.submit_and_wait(Duration::from_millis(10), 1);
            }
        }
        if self.in_flight > 0
            || self
                .ring
                .submitter()
                .unregister_buf_ring(BUF_GROUP)
                .is_err()
        {
            // The kernel may still write into the buffers or read the send slots: leak
            // them.
            self.bufs.registered = true;
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::replace(
                &mut self.recv_hdr,
                // SAFETY: an all-zero msghdr is a valid value.
                Box::new(unsafe { std::mem::zeroed() }),
            ));
            return;
        }
        self.bufs.registered = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A ring on a fresh socket, or None (with the reason printed) where io_uring is
    /// refused.
    fn ring_on(socket: &UdpSocket, n_bufs: u16, payload: usize) -> Option<UdpRing> {
        match UdpRing::new(socket.as_raw_fd(), n_bufs, payload) {
            Ok(ring) => Some(ring),
            Err(err) => {
                eprintln!("SKIPPED: io_uring refused here: {err}");
                None
            }
        }
    }

    /// Turns until `want` datagrams are received (bounded in turns and time); also the
    /// errors of the receive's completions, as errno values.
    fn receive_noting_errors(ring: &mut UdpRing, want: usize) -> (Vec<Datagram>, Vec<i32>) {
        let mut got = Vec::new();
        let mut errors = Vec::new();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if ring.bufs_free() > 0 {
                ring.recv_multi().unwrap();
                assert!(ring.recv_armed());
            }
            ring.submit_and_wait(Duration::from_millis(100), 1).unwrap();
            ring.completions(&mut out);
            for completion in out.drain(..) {
                match completion {
                    UdpCompletion::Received {
                        result: Ok(datagram),
                        ..
                    } => got.push(datagram),
                    UdpCompletion::Received {
                        result: Err(err), ..
                    } => errors.push(err.raw_os_error().unwrap_or(0)),
                    UdpCompletion::Replied { .. } => {}
                }
            }
            if got.len() >= want {
                break;
            }
        }
        (got, errors)
    }

    fn receive(ring: &mut UdpRing, want: usize) -> Vec<Datagram> {
        receive_noting_errors(ring, want).0
    }

    #[test]
    fn a_datagram_is_received_with_its_source_and_echoed_from_its_own_buffer() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let Some(mut ring) = ring_on(&server, 4, 2048) else {
            return;
        };
        assert!(!ring.recv_armed());
        assert!(ring.fixed, "the socket is the ring's registered file");
        assert_eq!(
            format!("{ring:?}"),
            format!(
                "UdpRing {{ fd: {}, in_flight: 0, lent: 0, .. }}",
                server.as_raw_fd()
            )
        );
        for message in [&b"one"[..], b"", b"three"] {
            client
                .send_to(message, server.local_addr().unwrap())
                .unwrap();
        }
        let got = receive(&mut ring, 3);
        assert_eq!(got.len(), 3);
        assert_eq!(ring.bufs_free(), 1);
        let lens: Vec<usize> = got.iter().map(Datagram::len).collect();
        assert_eq!(lens, vec![3, 0, 5]);
        let empties: Vec<bool> = got.iter().map(Datagram::is_empty).collect();
        assert_eq!(empties, vec![false, true, false]);
        assert_eq!(ring.payload(&got[2]), b"three");
        for (tag, datagram) in got.into_iter().enumerate() {
            assert_eq!(datagram.src, Some(client.local_addr().unwrap()));
            assert!(!datagram.truncated);
            ring.reply(datagram, tag as u64 + 10).unwrap();
        }
        let mut tags = Vec::new();
        let mut out = Vec::new();
        for _ in 0..100 {
            ring.submit_and_wait(Duration::from_millis(100), 1).unwrap();
            ring.completions(&mut out);
            for completion in out.drain(..) {
                if let UdpCompletion::Replied { tag, result } = completion {
                    tags.push((tag, result.unwrap()));
                }
            }
            if tags.len() == 3 {
                break;
            }
        }
        tags.sort_unstable();
        assert_eq!(tags, vec![(10, 3), (11, 0), (12, 5)]);
        assert_eq!(ring.bufs_free(), 4, "every buffer is back after its reply");
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"", b"three"] {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(from, server.local_addr().unwrap());
        }
    }

    #[test]
    fn a_datagram_larger_than_the_room_is_marked_truncated() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let Some(mut ring) = ring_on(&server, 2, 16) else {
            return;
        };
        client
            .send_to(&[7u8; 16], server.local_addr().unwrap())
            .unwrap();
        client
            .send_to(&[7u8; 17], server.local_addr().unwrap())
            .unwrap();
        let got = receive(&mut ring, 2);
        assert_eq!(got.len(), 2);
        assert!(!got[0].truncated && got[0].len() == 16);
        assert!(got[1].truncated && got[1].len() == 16);
        for datagram in got {
            ring.recycle(datagram);
        }
        assert_eq!(ring.bufs_free(), 2);
    }

    #[test]
    fn the_receive_stops_when_every_buffer_is_lent_and_rearms_after() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let Some(mut ring) = ring_on(&server, 1, 64) else {
            return;
        };
        for idx in 0..2u8 {
            client
                .send_to(&[idx], server.local_addr().unwrap())
                .unwrap();
        }
        // The second datagram finds no buffer: the receive ends (ENOBUFS) and the datagram
        // stays queued in the socket.
        let mut first = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..3 {
            let (got, errs) = receive_noting_errors(&mut ring, 1);
            first.extend(got);
            errors.extend(errs);
            if !ring.recv_armed() && !first.is_empty() {
                break;
            }
        }
        assert_eq!(first.len(), 1);
        assert_eq!(ring.bufs_free(), 0);
        assert!(!ring.recv_armed());
        assert_eq!(errors, vec![libc::ENOBUFS]);
        assert_eq!(ring.payload(&first[0]), &[0]);
        for datagram in first {
            ring.recycle(datagram);
        }
        let second = receive(&mut ring, 1);
        assert_eq!(ring.payload(&second[0]), &[1]);
    }

    #[test]
    fn a_cancelled_receive_ends_with_ecanceled_and_can_be_armed_again() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let Some(mut ring) = ring_on(&server, 2, 64) else {
            return;
        };
        let in_flight = |ring: &UdpRing| {
            let debug = format!("{ring:?}");
            debug
                .contains("in_flight: ")
                .then(|| debug.split("in_flight: ").nth(1).unwrap()[..1].to_string())
        };
        ring.recv_multi().unwrap();
        ring.submit_and_wait(Duration::from_millis(1), 1).unwrap();
        assert!(ring.recv_armed());
        assert_eq!(in_flight(&ring).as_deref(), Some("1"), "the armed receive");
        ring.cancel_recv().unwrap();
        let mut errors = Vec::new();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ring.recv_armed() && std::time::Instant::now() < deadline {
            ring.submit_and_wait(Duration::from_millis(100), 1).unwrap();
            ring.completions(&mut out);
            for completion in out.drain(..) {
                if let UdpCompletion::Received {
                    result: Err(err), ..
                } = completion
                {
                    errors.push(err.raw_os_error());
                }
            }
        }
        assert!(!ring.recv_armed());
        assert_eq!(errors, vec![Some(libc::ECANCELED)]);
        // The receive and the cancel request have both ended (the cancel's completion
        // may come in a later turn).
        for _ in 0..10 {
            if in_flight(&ring).as_deref() == Some("0") {
                break;
            }
            ring.submit_and_wait(Duration::from_millis(10), 1).unwrap();
            ring.completions(&mut out);
        }
        assert_eq!(in_flight(&ring).as_deref(), Some("0"));
        client
            .send_to(b"again", server.local_addr().unwrap())
            .unwrap();
        let got = receive(&mut ring, 1);
        assert_eq!(ring.payload(&got[0]), b"again");
    }

    #[test]
    fn a_datagram_is_only_read_through_its_own_ring() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (Some(mut ring), Some(mut other_ring)) =
            (ring_on(&server, 2, 64), ring_on(&other, 2, 64))
        else {
            return;
        };
        client
            .send_to(b"mine", server.local_addr().unwrap())
            .unwrap();
        let mut got = receive(&mut ring, 1);
        let datagram = got.pop().unwrap();
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            other_ring.payload(&datagram).len()
        }));
        assert!(read.is_err(), "another ring read the datagram");
        let recycled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            other_ring.recycle(datagram)
        }));
        assert!(recycled.is_err(), "another ring took the buffer back");
        assert_eq!(other_ring.bufs_free(), 2);
    }

    #[test]
    fn a_wait_that_times_out_is_not_an_error() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let Some(mut ring) = ring_on(&server, 2, 64) else {
            return;
        };
        // Nothing queued and nothing to complete: the kernel says ETIME.
        ring.submit_and_wait(Duration::from_millis(1), 1).unwrap();
        let mut out = Vec::new();
        ring.completions(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn ipv6_sources_are_read_whole() {
        let Ok(server) = UdpSocket::bind("[::1]:0") else {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        };
        let client = UdpSocket::bind("[::1]:0").unwrap();
        let Some(mut ring) = ring_on(&server, 2, 64) else {
            return;
        };
        client.send_to(b"v6", server.local_addr().unwrap()).unwrap();
        let got = receive(&mut ring, 1);
        assert_eq!(got[0].src, Some(client.local_addr().unwrap()));
        for datagram in got {
            ring.recycle(datagram);
        }
    }

    #[test]
    fn this_kernel_supports_multishot_recvmsg_where_it_allows_io_uring() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        if ring_on(&server, 2, 64).is_none() {
            return;
        }
        // The receive the probe armed is cancelled by the ring's drop: no request is left.
        assert!(supports_multishot_recvmsg().unwrap());
    }

    #[test]
    fn the_probe_reads_einval_as_no_multishot_and_other_errors_as_errors() {
        assert!(multishot_verdict(Ok(())).unwrap());
        assert!(!multishot_verdict(Err(io::Error::from_raw_os_error(libc::EINVAL))).unwrap());
        let err = multishot_verdict(Err(io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert_eq!(err.unwrap_err().raw_os_error(), Some(libc::ENOBUFS));
    }

    #[test]
    fn a_socket_address_of_another_family_is_none() {
        assert_eq!(sockaddr_to_std(&[]), None);
        let mut unix = [0u8; 16];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(sockaddr_to_std(&unix), None);
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&7u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 2]);
        assert_eq!(sockaddr_to_std(&v4), Some("127.0.0.2:7".parse().unwrap()));
    }
}
