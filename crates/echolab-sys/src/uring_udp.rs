//! io_uring for the UDP `uring` model: one ring per socket, a multishot `recvmsg` into
//! provided buffers, and a turn's replies sent with one `sendmmsg(2)` straight from the
//! buffers the datagrams arrived in (no copy: the reply is the received bytes, to the
//! received address).
//!
//! Why the replies are not io_uring requests: a `sendmsg` request per reply costs a
//! submission entry to prepare and a completion to reap per datagram; skipping the
//! completions (`IOSQE_CQE_SKIP_SUCCESS`) would leave no sign of when the kernel has
//! finished reading a buffer (a send that would block completes later, from a poll
//! wake-up), so it could not be given back for the next datagram. `sendmmsg` copies every
//! payload before it returns: the buffers go back to the kernel at once, and the turn
//! costs one more system call, not a request per datagram. (Measured, the two cost the
//! same CPU per datagram on loopback: see `echolab_udp::uring`.)
//!
//! The safety argument is the one of [`crate::uring`]: **memory named by a request
//! belongs to the [`UdpRing`] until the request's last completion arrives.**
//! - Receive buffers are one allocation owned by the ring, handed to the kernel through a
//!   registered buffer ring. A completion names a filled buffer; from then on it is the
//!   caller's ([`Datagram`]) until [`UdpRing::recycle`] or [`UdpRing::reply_all`] takes it
//!   back. The caller reads it only through [`UdpRing::payload`].
//! - A reply's `mmsghdr` and `iovec` point into the lent buffer (its source address and
//!   its payload) for the length of the `sendmmsg` call; the buffer goes back to the
//!   kernel only after the call returns, so nothing rewrites it while the send reads it.
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
use std::net::SocketAddr;

use crate::mmsg::sockaddr_to_std;
use std::os::fd::RawFd;
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
const KIND_CANCEL: u64 = 3;

/// The `io_uring_recvmsg_out` header at the start of every filled buffer.
const OUT_HEADER: usize = 16;

/// Room for the source address in every buffer: a `sockaddr_in6` (a `sockaddr_in` is
/// smaller).
pub const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// Tells rings apart, so a [`Datagram`] is only ever given back to its own ring.
static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

/// A received datagram, lent to the caller until [`UdpRing::reply_all`] or
/// [`UdpRing::recycle`]. Dropping it without either only loses the buffer to the ring.
#[derive(Debug)]
pub struct Datagram {
    ring_id: u64,
    bid: u16,
    /// Where the payload starts in the buffer, and how many bytes of it are there.
    payload_at: usize,
    len: usize,
    /// The length of the source address as the kernel wrote it (for the reply).
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
    /// Scratch of [`UdpRing::reply_all`] (cleared, never shrunk): the headers and I/O
    /// vectors of one `sendmmsg`, pointing into lent buffers only during the call.
    send_hdrs: Vec<libc::mmsghdr>,
    send_iovs: Vec<libc::iovec>,
    /// Buffers lent out to the caller.
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
        Ok(UdpRing {
            ring,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            fd,
            fixed,
            bufs,
            recv_hdr,
            send_hdrs: Vec::new(),
            send_iovs: Vec::new(),
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

    /// Sends every datagram of `datagrams` back to its source, from its own buffer, with
    /// one `sendmmsg(2)` (`MSG_DONTWAIT`), then gives every buffer back to the kernel.
    /// `outcomes` gets, in `datagrams`' order, the bytes each reply sent or why it was not
    /// sent. A message the kernel refuses (an ICMP error queued by an earlier send, a full
    /// send queue: `EAGAIN`) is skipped and the call repeated for the rest: `sendmmsg`
    /// reports an error only for the first message of a call.
    pub fn reply_all(
        &mut self,
        datagrams: &mut Vec<Datagram>,
        outcomes: &mut Vec<io::Result<usize>>,
    ) {
        outcomes.clear();
        self.send_hdrs.clear();
        self.send_iovs.clear();
        for datagram in datagrams.iter() {
            self.check_owner(datagram);
            let base = self.bufs.buf(datagram.bid);
            // SAFETY: the offset lies inside buffer `bid` (see `payload`).
            let payload = unsafe { base.add(datagram.payload_at) };
            self.send_iovs.push(libc::iovec {
                iov_base: payload.cast(),
                iov_len: datagram.len,
            });
        }
        // The headers point at the I/O vectors: made once those stop moving.
        for (datagram, iov) in datagrams.iter().zip(self.send_iovs.iter_mut()) {
            // SAFETY: an all-zero mmsghdr is a valid value (null pointers, zero lengths).
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            // SAFETY: the name lies inside buffer `bid`, right after the header.
            hdr.msg_hdr.msg_name = unsafe { self.bufs.buf(datagram.bid).add(OUT_HEADER) }.cast();
            hdr.msg_hdr.msg_namelen = datagram.name_len;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            self.send_hdrs.push(hdr);
        }
        // SAFETY: every header points at a lent buffer's name and payload and at its own
        // I/O vector, all alive and unmoved for the call; the buffers go back only after it.
        unsafe { crate::mmsg::send_each(self.fd, &mut self.send_hdrs, outcomes) };
        self.send_hdrs.clear();
        self.send_iovs.clear();
        for datagram in datagrams.drain(..) {
            self.give_back(datagram.bid);
        }
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
    /// one), or until `timeout` passes. One system call.
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
        // ring (for the life of the ring).
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
        if let Some(UdpCompletion::Received { result, .. }) = completions.drain(..).next() {
            return multishot_verdict(result.map(|datagram| ring.recycle(datagram)));
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
            // The kernel may still write into the buffers or read the receive's header:
            // leak them.
            self.bufs.registered = true;
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
        let mut got = receive(&mut ring, 3);
        assert_eq!(got.len(), 3);
        assert_eq!(ring.bufs_free(), 1);
        let lens: Vec<usize> = got.iter().map(Datagram::len).collect();
        assert_eq!(lens, vec![3, 0, 5]);
        let empties: Vec<bool> = got.iter().map(Datagram::is_empty).collect();
        assert_eq!(empties, vec![false, true, false]);
        assert_eq!(ring.payload(&got[2]), b"three");
        for datagram in &got {
            assert_eq!(datagram.src, Some(client.local_addr().unwrap()));
            assert!(!datagram.truncated);
        }
        let mut outcomes = Vec::new();
        ring.reply_all(&mut got, &mut outcomes);
        let sent: Vec<usize> = outcomes.into_iter().map(Result::unwrap).collect();
        assert_eq!(sent, vec![3, 0, 5]);
        assert!(got.is_empty());
        assert_eq!(
            ring.bufs_free(),
            4,
            "every buffer is back after the replies"
        );
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"", b"three"] {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
            assert_eq!(from, server.local_addr().unwrap());
        }
    }

    /// A reply the kernel refuses (here: to port 0, EINVAL) is skipped and said; the
    /// replies after it in the same batch still go, and every buffer is given back.
    #[test]
    fn a_refused_reply_is_skipped_and_the_rest_still_go() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let Some(mut ring) = ring_on(&server, 4, 64) else {
            return;
        };
        for message in [&b"a"[..], b"bb", b"ccc", b"dddd"] {
            client
                .send_to(message, server.local_addr().unwrap())
                .unwrap();
        }
        let mut got = receive(&mut ring, 4);
        assert_eq!(got.len(), 4);
        // The second and third sources become port 0 (the port's bytes of the address the
        // kernel wrote): no destination.
        for datagram in &got[1..3] {
            // SAFETY: the datagram is lent to this test; its name lies in its buffer.
            unsafe {
                let name = ring.bufs.buf(datagram.bid).add(OUT_HEADER);
                name.add(2).write(0);
                name.add(3).write(0);
            }
        }
        let mut outcomes = Vec::new();
        ring.reply_all(&mut got, &mut outcomes);
        let errnos: Vec<Result<usize, Option<i32>>> = outcomes
            .into_iter()
            .map(|o| o.map_err(|e| e.raw_os_error()))
            .collect();
        assert_eq!(
            errnos,
            vec![
                Ok(1),
                Err(Some(libc::EINVAL)),
                Err(Some(libc::EINVAL)),
                Ok(4)
            ]
        );
        assert_eq!(ring.bufs_free(), 4);
        let mut buf = [0u8; 16];
        for want in [&b"a"[..], b"dddd"] {
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
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
}
