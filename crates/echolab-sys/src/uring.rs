//! A small safe face on io_uring for the `uring` server model: one ring, a ring of
//! provided receive buffers, and send buffers that the ring owns while the kernel uses
//! them.
//!
//! The `io-uring` crate makes pushing a request `unsafe` because a request names memory
//! (a buffer to fill or to send) that the kernel touches later, after the call that
//! queued it has returned. The safety argument of this module is one rule: **memory named
//! by a request belongs to the [`Ring`] until the request's last completion arrives.**
//! - Receive buffers are one allocation owned by the ring, handed to the kernel through a
//!   registered buffer ring. The kernel picks a buffer, fills it and names it in a
//!   completion; from then on the buffer is the caller's ([`RecvBuf`]) until
//!   [`Ring::recycle`] gives it back. The caller reads it only through [`Ring::recv_data`].
//! - Send buffers ([`SendBuf`]) are moved into the ring by [`Ring::send`] and moved back
//!   out in the send's completion ([`Completion::Sent`]); nobody else can touch them
//!   between. A send buffer is a `Vec<u8>` or a filled receive buffer ([`RecvBuf`]), sent
//!   as it is: while its send is in flight it is in neither the caller's hands nor the
//!   buffer ring, so the kernel does not fill it, and it goes back to the buffer ring only
//!   once the completion has handed it back and the caller recycles it.
//! - On drop, the ring cancels every request and waits for them; if it cannot be sure the
//!   kernel is done, it leaks the memory rather than freeing what the kernel may write.
//!
//! Descriptors are passed as raw numbers: the kernel takes its own reference to the file
//! when it starts a request, so a closed descriptor is never a memory hazard. The caller
//! must still not close a descriptor while a request naming it waits unsubmitted in the
//! queue (see [`Ring::push_pending`]), or the kernel resolves the number to whatever file
//! reuses it.

use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::provided::ProvidedBuffers;
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

/// The buffer group of the ring's receive buffers (one group per ring).
const BUF_GROUP: u16 = 0;

/// The kind of a request, in the top byte of its `user_data`; the rest is a tag.
const KIND_SHIFT: u32 = 56;
const TAG_MASK: u64 = (1 << KIND_SHIFT) - 1;
const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_POLL: u64 = 4;
const KIND_CANCEL: u64 = 5;
const KIND_CLOSE: u64 = 6;

/// Tells rings apart, so a [`RecvBuf`] is only ever given back to its own ring.
static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

/// What a completion reported. Tags are the caller's (at most 56 bits).
#[derive(Debug)]
pub enum Completion {
    /// The multishot accept armed with `tag` produced a connection or failed. `more`: the
    /// accept is still armed; when false the caller arms it again (after a pause if
    /// descriptors ran out).
    Accepted {
        tag: u64,
        result: io::Result<OwnedFd>,
        more: bool,
    },
    /// A multishot receive delivered bytes (`Ok(Some)`), end of input (`Ok(None)`) or an
    /// error. `more`: the receive is still armed. `ENOBUFS`: the provided buffers ran out
    /// and the receive stopped; `ECANCELED`: [`Ring::cancel_recv`] stopped it.
    Received {
        tag: u64,
        result: io::Result<Option<RecvBuf>>,
        more: bool,
    },
    /// A send finished: `Ok(n)` bytes of `buf[start..]` were sent. The buffer comes back
    /// (a receive buffer to be recycled or sent again).
    Sent {
        tag: u64,
        result: io::Result<usize>,
        buf: SendBuf,
        start: usize,
    },
    /// The descriptor watched by [`Ring::poll_readable`] became readable.
    Readable { tag: u64 },
}

/// A filled receive buffer, lent to the caller until [`Ring::recycle`].
///
/// Dropping it without recycling only loses the buffer to the ring; it is never reused.
#[derive(Debug)]
pub struct RecvBuf {
    ring_id: u64,
    bid: u16,
    len: u32,
}

impl RecvBuf {
    /// How many bytes the kernel put in it.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the first `len` bytes (a send of a prefix); never grows.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(u32::try_from(len).unwrap_or(u32::MAX));
    }
}

/// The bytes of a send: a buffer of the caller's, or a filled receive buffer sent where
/// the kernel put its bytes (no copy), which stays out of the buffer ring until the send
/// completes.
#[derive(Debug)]
pub enum SendBuf {
    Owned(Vec<u8>),
    Received(RecvBuf),
}

impl SendBuf {
    /// The bytes it holds (a send sends them from some start on).
    pub fn len(&self) -> usize {
        match self {
            SendBuf::Owned(buf) => buf.len(),
            SendBuf::Received(buf) => buf.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One io_uring instance and the memory its requests use.
pub struct Ring {
    ring: IoUring,
    id: u64,
    /// The registered buffer ring (entries for the kernel to pick from) and the buffers.
    bufs: ProvidedBuffers,
    /// Send buffers in flight, by slot; a slot's number is its send's tag in `user_data`.
    /// Invariant: `Some` from [`Ring::send`] until that send's completion.
    sends: Vec<Option<InFlightSend>>,
    free_sends: Vec<usize>,
    /// Sends in flight from a receive buffer: buffers out of the buffer ring until then.
    lent: usize,
    /// The most bytes one send asks the kernel to take ([`Ring::limit_sends`]).
    send_limit: u32,
    /// How long a send from a receive buffer waits before it starts
    /// ([`Ring::delay_lent_sends`]); boxed, so the kernel reads it where it was put.
    lent_delay: Option<Box<Timespec>>,
    /// Requests pushed whose last completion has not arrived (a multishot request counts
    /// once). Drop waits for this to reach zero before freeing memory.
    in_flight: usize,
    /// Completions taken from the queue but not yet handed out.
    scratch: Vec<cqueue::Entry>,
    /// Descriptors whose close could not be queued (the queue was full and could not be
    /// submitted). They stay open, so their numbers cannot be reused while requests that
    /// name them wait in the queue, and their close is queued again on the next submit.
    /// Dropped (closed) after the ring, when nothing can name them any more.
    close_later: Vec<OwnedFd>,
    /// `Ring` is `!Send` on purpose: the ring is set up with `SINGLE_ISSUER` and
    /// `DEFER_TASKRUN`, so the kernel accepts submissions only from the thread that made it.
    /// (The raw pointers of `ProvidedBuffers` already imply this; this states it.)
    _single_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("id", &self.id)
            .field("in_flight", &self.in_flight)
            .field("n_bufs", &self.bufs.n_bufs)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct InFlightSend {
    buf: SendBuf,
    start: usize,
    tag: u64,
}

impl Ring {
    /// A ring with room for `entries` queued requests and `n_bufs` receive buffers of
    /// `buf_size` bytes (`n_bufs` a power of two, at most 32768).
    ///
    /// Fails as the kernel does: `EPERM` or `ENOSYS` where io_uring is disabled (common in
    /// containers), `EINVAL` on kernels without buffer rings (before 5.19).
    pub fn new(entries: u32, n_bufs: u16, buf_size: u32) -> io::Result<Ring> {
        if !n_bufs.is_power_of_two() || n_bufs > 32768 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "n_bufs must be a power of two",
            ));
        }
        let (ring, bufs) =
            crate::provided::ring_with_buffers(entries, n_bufs, buf_size, BUF_GROUP)?;
        Ok(Ring {
            ring,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            bufs,
            sends: Vec::new(),
            free_sends: Vec::new(),
            lent: 0,
            send_limit: u32::MAX,
            lent_delay: None,
            in_flight: 0,
            scratch: Vec::new(),
            close_later: Vec::new(),
            _single_thread: PhantomData,
        })
    }

    /// Arms a multishot accept on `listener`; connections arrive as
    /// [`Completion::Accepted`] with `tag` (which listener, when a ring accepts on several).
    pub fn accept_multi(&mut self, listener: RawFd, tag: u64) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(KIND_ACCEPT << KIND_SHIFT | (tag & TAG_MASK));
        self.push(entry)
    }

    /// Arms a multishot receive on `fd` into the provided buffers.
    pub fn recv_multi(&mut self, fd: RawFd, tag: u64) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(fd), BUF_GROUP)
            .build()
            .user_data(KIND_RECV << KIND_SHIFT | (tag & TAG_MASK));
        self.push(entry)
    }

    /// Arms one receive of at most `len` bytes on `fd` into a provided buffer (a buffer
    /// holds at most its size whatever `len` says). It reports once, as a
    /// [`Completion::Received`] with `more` false: for a socket that may hold more bytes
    /// than the caller has room for, where a multishot receive would take them all.
    pub fn recv_limited(&mut self, fd: RawFd, tag: u64, len: u32) -> io::Result<()> {
        let entry = opcode::Recv::new(Fd(fd), ptr::null_mut(), len)
            .buf_group(BUF_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(KIND_RECV << KIND_SHIFT | (tag & TAG_MASK));
        self.push(entry)
    }

    /// Arms a multishot receive on `fd` that ends by itself once it has delivered `total`
    /// bytes or more (Linux 6.16's receive limit, checked after each receive: the receive
    /// that crosses it is whole, so up to `total - 1 + per_turn` bytes arrive), each receive
    /// taking at most `per_turn` bytes. Its completions are [`Completion::Received`]; the
    /// last has `more` false. Only where [`Ring::supports_multishot_limit`] says so: an
    /// older kernel ignores the limit.
    pub fn recv_multi_limited(
        &mut self,
        fd: RawFd,
        tag: u64,
        total: u32,
        per_turn: u32,
    ) -> io::Result<()> {
        let entry = opcode::RecvMulti::new(Fd(fd), BUF_GROUP)
            .len(per_turn)
            .build()
            .user_data(KIND_RECV << KIND_SHIFT | (tag & TAG_MASK));
        self.push(with_optlen(entry, total))
    }

    /// Asks the kernel to stop the multishot receive armed with `tag`. Its final
    /// completion (`ECANCELED`, or whatever it delivered first) still arrives.
    pub fn cancel_recv(&mut self, tag: u64) -> io::Result<()> {
        let target = KIND_RECV << KIND_SHIFT | (tag & TAG_MASK);
        let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(target))
            .build()
            .user_data(KIND_CANCEL << KIND_SHIFT);
        self.push(entry)
    }

    /// Sends `buf[start..]` on `fd`. The buffer is the ring's until [`Completion::Sent`]
    /// returns it, with how much was sent (a stream socket may take less).
    pub fn send(&mut self, fd: RawFd, tag: u64, buf: SendBuf, start: usize) -> io::Result<()> {
        let start = start.min(buf.len());
        let slot = self.free_sends.pop().unwrap_or(self.sends.len());
        let len = u32::try_from(buf.len() - start)
            .unwrap_or(u32::MAX)
            .min(self.send_limit);
        let ptr = match &buf {
            // The pointer is taken from the Vec's heap allocation, which does not move when
            // the Vec itself moves into `sends` below.
            SendBuf::Owned(bytes) => bytes[start..].as_ptr(),
            // The receive buffer's bytes, in the ring's allocation (`recv_data` checks the
            // buffer is this ring's); the kernel does not write there until it is recycled,
            // which needs the `RecvBuf` back from the completion.
            SendBuf::Received(received) => self.recv_data(received)[start..].as_ptr(),
        };
        let lent = matches!(buf, SendBuf::Received(_));
        if let Some(delay) = self.lent_delay.as_deref().filter(|_| lent) {
            // A timeout hard-linked before the send: the send starts when it expires (an
            // expiry is an error result, which a hard link does not let end the chain).
            // Its completion is ignored as a cancel's is. Were the send's push to fail
            // below, the send would just not be delayed.
            let wait = opcode::Timeout::new(delay as *const Timespec)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(KIND_CANCEL << KIND_SHIFT);
            self.push(wait)?;
        }
        let entry = opcode::Send::new(Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(KIND_SEND << KIND_SHIFT | slot as u64);
        let in_flight = Some(InFlightSend {
            buf,
            start,
            tag: tag & TAG_MASK,
        });
        if slot == self.sends.len() {
            self.sends.push(in_flight);
        } else {
            self.sends[slot] = in_flight;
        }
        if let Err(err) = self.push(entry) {
            // Never queued: the buffer was not lent to the kernel; a receive buffer goes
            // back to the kernel's pool.
            if let Some(Some(InFlightSend {
                buf: SendBuf::Received(received),
                ..
            })) = self.sends.get_mut(slot).map(Option::take)
            {
                self.recycle(received);
            }
            self.sends[slot] = None;
            self.free_sends.push(slot);
            return Err(err);
        }
        self.lent += usize::from(lent);
        Ok(())
    }

    /// Makes every send ask the kernel to take at most `limit` bytes (at least 1), so that
    /// sends come back short as on a socket with little room: for tests of the short-send
    /// paths, which a loopback socket takes only when its buffer happens to fill.
    pub fn limit_sends(&mut self, limit: u32) {
        self.send_limit = limit.max(1);
    }

    /// Makes every send from a receive buffer wait `delay` before it starts, holding its
    /// buffer all that time, as a send to a client that does not read does: for tests of
    /// the cap on receive buffers held by sends, which a loopback socket reaches only when
    /// its buffer happens to fill exactly at a send.
    pub fn delay_lent_sends(&mut self, delay: std::time::Duration) {
        self.lent_delay = Some(Box::new(
            Timespec::new()
                .sec(delay.as_secs())
                .nsec(delay.subsec_nanos()),
        ));
    }

    /// Receive buffers held by sends in flight (out of the kernel's pool until they end).
    pub fn recv_bufs_in_sends(&self) -> usize {
        self.lent
    }

    /// The receive buffers of this ring, lent or not.
    pub fn recv_bufs(&self) -> usize {
        usize::from(self.bufs.n_bufs)
    }

    /// Completes once `fd` is readable ([`Completion::Readable`]).
    pub fn poll_readable(&mut self, fd: RawFd, tag: u64) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(KIND_POLL << KIND_SHIFT | (tag & TAG_MASK));
        self.push(entry)
    }

    /// Closes `fd` through the ring, in order after the requests already queued for it,
    /// without a system call of its own. If the queue cannot take it, the descriptor stays
    /// open until the next submit queues its close: closing it now would let its number be
    /// reused while queued requests still name it (bytes sent to the wrong connection).
    ///
    /// A socket with a receive still armed stays open (the request holds the file) until
    /// that receive ends: shut the socket down first to end it.
    pub fn close(&mut self, fd: OwnedFd) {
        if let Err(fd) = self.push_close(fd) {
            self.close_later.push(fd);
        }
    }

    /// Queues the close of `fd`, or gives it back if the queue cannot take it.
    fn push_close(&mut self, fd: OwnedFd) -> Result<(), OwnedFd> {
        let entry = opcode::Close::new(Fd(fd.as_raw_fd()))
            .build()
            .user_data(KIND_CLOSE << KIND_SHIFT);
        match self.push(entry) {
            Ok(()) => {
                // The ring's close now owns the descriptor.
                let _ = fd.into_raw_fd();
                Ok(())
            }
            Err(_) => Err(fd),
        }
    }

    /// Queues the closes that an earlier full queue refused, behind the requests queued
    /// before them; those still refused wait for the next submit.
    fn retry_closes(&mut self) {
        while let Some(fd) = self.close_later.pop() {
            if let Err(fd) = self.push_close(fd) {
                self.close_later.push(fd);
                return;
            }
        }
    }

    /// Requests queued but not yet submitted.
    pub fn push_pending(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Submits every queued request and waits for at least one completion, or until
    /// `timeout` passes (`None`: no limit). One system call for the whole batch.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.retry_closes();
        let result = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(timeout) => {
                let ts = Timespec::new()
                    .sec(timeout.as_secs())
                    .nsec(timeout.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match result {
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

    /// Submits every queued request without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.retry_closes();
        self.ring.submit().map(drop)
    }

    /// Whether this kernel supports multishot receive with provided buffers (Linux 6.0),
    /// which the `uring` model depends on: the opcode is the plain receive's with a flag,
    /// so an opcode probe cannot tell, and older kernels reject the flag with `EINVAL`.
    /// Tries it once on a local socket pair holding one byte.
    pub fn supports_multishot_recv(&mut self) -> io::Result<bool> {
        // Dropped after `self`'s requests are done with them (the ring's own drop cancels
        // the armed receive); the kernel holds its own reference meanwhile anyway.
        let (mut writer, reader) = UnixStream::pair()?;
        writer.write_all(&[0])?;
        self.recv_multi(reader.as_raw_fd(), 0)?;
        let mut completions = Vec::new();
        // Bounded: the byte is already there, so the first completion is immediate.
        for _ in 0..10 {
            self.submit_and_wait(Some(Duration::from_millis(100)))?;
            self.completions(&mut completions);
            for completion in completions.drain(..) {
                if let Completion::Received { result, more, .. } = completion {
                    if more {
                        let _ = self.cancel_recv(0);
                        let _ = self.submit();
                    }
                    return match result {
                        Ok(Some(buf)) => {
                            self.recycle(buf);
                            Ok(true)
                        }
                        Ok(None) => Ok(true),
                        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(false),
                        Err(err) => Err(err),
                    };
                }
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "io_uring multishot receive probe got no completion",
        ))
    }

    /// Whether this kernel ends a multishot receive at the byte limit that
    /// [`Ring::recv_multi_limited`] gives it (Linux 6.16): armed on a local socket pair
    /// holding three times the limit, the receive must end after exactly the limit.
    pub fn supports_multishot_limit(&mut self) -> io::Result<bool> {
        self.multishot_ends_at(3, 3)
    }

    /// Whether a multishot receive armed with `sent` as its limit ends after exactly
    /// `limit` bytes of three times that many waiting. A test sends 0 (no limit) to see
    /// what a kernel without the limit would answer.
    fn multishot_ends_at(&mut self, sent: u32, limit: usize) -> io::Result<bool> {
        let (mut writer, reader) = UnixStream::pair()?;
        writer.write_all(&vec![7; 3 * limit])?;
        self.recv_multi_limited(reader.as_raw_fd(), 0, sent, 1)?;
        let mut completions = Vec::new();
        let mut received = 0;
        // Bounded: the bytes are already there, so completions are immediate.
        for _ in 0..10 {
            self.submit_and_wait(Some(Duration::from_millis(100)))?;
            self.completions(&mut completions);
            for completion in completions.drain(..) {
                let Completion::Received { result, more, .. } = completion else {
                    continue;
                };
                if let Ok(Some(buf)) = result {
                    received += buf.len();
                    self.recycle(buf);
                } else if let Err(err) = result {
                    return match err.raw_os_error() {
                        Some(libc::EINVAL) => Ok(false),
                        _ => Err(err),
                    };
                }
                if !more || received > limit {
                    if more {
                        let _ = self.cancel_recv(0);
                        let _ = self.submit();
                    }
                    return Ok(!more && received == limit);
                }
            }
        }
        Ok(false)
    }

    /// Moves every available completion into `out` (which is cleared first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        self.scratch.clear();
        self.scratch.extend(self.ring.completion());
        for entry_idx in 0..self.scratch.len() {
            let cqe = self.scratch[entry_idx].clone();
            if let Some(completion) = self.complete(&cqe) {
                out.push(completion);
            }
        }
    }

    /// The bytes of a filled receive buffer.
    pub fn recv_data(&self, buf: &RecvBuf) -> &[u8] {
        assert_eq!(
            buf.ring_id, self.id,
            "a receive buffer was given to another ring"
        );
        let offset = buf.bid as usize * self.bufs.buf_size as usize;
        // SAFETY: `bid` came from a completion of this ring (checked above), so the buffer
        // lies inside `data`, and `len` is at most `buf_size` as the kernel reported it.
        // The kernel does not write into a buffer between the completion that named it
        // and its recycling, and `recycle` takes `&mut self`, so it cannot happen while
        // this slice lives.
        unsafe { std::slice::from_raw_parts(self.bufs.data.as_ptr().add(offset), buf.len as usize) }
    }

    /// Gives a receive buffer back to the kernel.
    pub fn recycle(&mut self, buf: RecvBuf) {
        assert_eq!(
            buf.ring_id, self.id,
            "a receive buffer was given to another ring"
        );
        self.bufs.push(buf.bid);
        self.bufs.publish();
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        // SAFETY: every request built by this module names either no memory (accept,
        // receive into provided buffers, poll, cancel) or a send buffer that `send` has
        // just moved into `self.sends`, where it stays until the completion.
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

    /// Turns one completion into what the caller sees, taking back any memory it releases.
    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Completion> {
        let more = cqueue::more(cqe.flags());
        if !more {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let kind = cqe.user_data() >> KIND_SHIFT;
        let tag = cqe.user_data() & TAG_MASK;
        let res = cqe.result();
        let error = || io::Error::from_raw_os_error(-res);
        match kind {
            KIND_ACCEPT => {
                let result = if res >= 0 {
                    // SAFETY: a successful accept completion carries a new descriptor that
                    // nothing else owns.
                    Ok(unsafe { OwnedFd::from_raw_fd(res) })
                } else {
                    Err(error())
                };
                Some(Completion::Accepted { tag, result, more })
            }
            KIND_RECV => {
                let buf = cqueue::buffer_select(cqe.flags()).map(|bid| RecvBuf {
                    ring_id: self.id,
                    bid,
                    len: res.max(0) as u32,
                });
                let result = match (res, buf) {
                    (n, Some(buf)) if n > 0 => Ok(Some(buf)),
                    (n, buf) => {
                        // A buffer named by a completion without bytes goes straight back.
                        if let Some(buf) = buf {
                            self.recycle(buf);
                        }
                        if n == 0 {
                            Ok(None)
                        } else {
                            Err(error())
                        }
                    }
                };
                Some(Completion::Received { tag, result, more })
            }
            KIND_SEND => {
                let slot = tag as usize;
                let send = self.sends.get_mut(slot).and_then(Option::take)?;
                self.free_sends.push(slot);
                if matches!(send.buf, SendBuf::Received(_)) {
                    self.lent -= 1;
                }
                let result = if res >= 0 {
                    Ok(res as usize)
                } else {
                    Err(error())
                };
                Some(Completion::Sent {
                    tag: send.tag,
                    result,
                    buf: send.buf,
                    start: send.start,
                })
            }
            KIND_POLL => Some(Completion::Readable { tag }),
            _ => None, // Cancel results: the cancelled request reports for itself.
        }
    }
}

/// `entry` with the kernel's `sqe->optlen` (bytes 44..48 of the 64-byte `io_uring_sqe`)
/// set to `optlen`: for a multishot receive, the bytes after which it ends. The io-uring
/// crate has no setter for it yet.
fn with_optlen(entry: squeue::Entry, optlen: u32) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`
    // (size checked above), which is plain integers: every bit pattern is valid, and the
    // four bytes at offset 44 are the `optlen` member of its last-but-one union.
    unsafe {
        let mut raw: [u8; 64] = std::mem::transmute(entry);
        raw[44..48].copy_from_slice(&optlen.to_ne_bytes());
        std::mem::transmute::<[u8; 64], squeue::Entry>(raw)
    }
}

impl Drop for Ring {
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
                    if let Completion::Received {
                        result: Ok(Some(buf)),
                        ..
                    } = completion
                    {
                        self.recycle(buf);
                    }
                }
                if self.in_flight == 0 {
                    break;
                }
                let _ = self.submit_and_wait(Some(Duration::from_millis(10)));
            }
        }
        if self.in_flight > 0
            || self
                .ring
                .submitter()
                .unregister_buf_ring(BUF_GROUP)
                .is_err()
        {
            // The kernel may still write into the buffers or read the sends: leak them.
            self.bufs.registered = true;
            std::mem::forget(std::mem::take(&mut self.sends));
            return;
        }
        self.bufs.registered = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring, or `None` (said as SKIPPED, with why) where io_uring is refused.
    fn ring(test: &str) -> Option<Ring> {
        match Ring::new(8, 8, 64) {
            Ok(ring) => Some(ring),
            Err(err) => {
                let _ = writeln!(
                    io::stderr(),
                    "SKIPPED uring::{test}: io_uring refused: {err}"
                );
                None
            }
        }
    }

    #[test]
    fn a_limited_multishot_receive_ends_at_its_limit_and_an_unlimited_one_does_not() {
        let test = "a_limited_multishot_receive_ends_at_its_limit_and_an_unlimited_one_does_not";
        let Some(mut ring) = ring(test) else {
            return;
        };
        // Linux 6.16 brought the limit: from there on the probe must find it.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = numbers.next().unwrap().parse().unwrap();
        let minor: u32 = numbers.next().unwrap().parse().unwrap();
        let supported = ring.supports_multishot_limit().unwrap();
        if (major, minor) < (6, 16) {
            let _ = writeln!(
                io::stderr(),
                "SKIPPED uring::{test}: kernel {release} before 6.16"
            );
            return;
        }
        assert!(
            supported,
            "kernel {release}: the multishot receive limit was not found"
        );
        // A kernel that ignored the limit (here: none sent) is told apart.
        // (A fresh ring each: 8 buffers, one per byte received.)
        let fresh = || Ring::new(8, 8, 64).unwrap();
        assert!(!fresh().multishot_ends_at(0, 2).unwrap());
        assert!(
            !fresh().multishot_ends_at(3, 2).unwrap(),
            "ends past the limit"
        );
        assert!(fresh().multishot_ends_at(5, 5).unwrap());
        // The known answers, 9 bytes waiting: a limit of 3 taken a byte at a time delivers
        // exactly 3 and ends; taken 64 at a time, the one receive that crosses the limit
        // delivers all 9 and ends (the limit is checked after each receive).
        let received = |ring: &mut Ring, limit: u32, per_turn: u32| -> (usize, bool) {
            let (mut writer, reader) = UnixStream::pair().unwrap();
            writer.write_all(&[1; 9]).unwrap();
            ring.recv_multi_limited(reader.as_raw_fd(), 5, limit, per_turn)
                .unwrap();
            let (mut total, mut ended) = (0, false);
            let mut completions = Vec::new();
            for _ in 0..5 {
                ring.submit_and_wait(Some(Duration::from_millis(20)))
                    .unwrap();
                ring.completions(&mut completions);
                for completion in completions.drain(..) {
                    if let Completion::Received { tag, result, more } = completion {
                        assert_eq!(tag, 5);
                        if let Ok(Some(buf)) = result {
                            total += buf.len();
                            ring.recycle(buf);
                        }
                        ended |= !more;
                    }
                }
            }
            if !ended {
                ring.cancel_recv(5).unwrap();
                ring.submit().unwrap();
            }
            (total, ended)
        };
        assert_eq!(received(&mut ring, 3, 1), (3, true));
        assert_eq!(received(&mut ring, 3, 64), (9, true));
        assert_eq!(received(&mut ring, 8, 4), (8, true), "4 + 4 reach 8");
        assert_eq!(received(&mut ring, 7, 4), (8, true), "4 + 4 cross 7");
        // No limit (0): everything waiting, and still armed.
        assert_eq!(received(&mut ring, 0, 64), (9, false));
    }
    /// The buffer-lifetime rule for a receive buffer sent as it is: it stays out of the
    /// kernel's pool until its send completes. A pool of one buffer: a send of it that
    /// waits on a full socket leaves the next receive without a buffer (`ENOBUFS`, never
    /// a refill of the bytes being sent), and the peer gets exactly those bytes.
    #[test]
    fn a_receive_buffer_being_sent_is_not_refilled_until_the_send_completes() {
        use std::io::Read;
        let test = "a_receive_buffer_being_sent_is_not_refilled_until_the_send_completes";
        let Ok(mut ring) = Ring::new(8, 1, 64) else {
            let _ = writeln!(io::stderr(), "SKIPPED uring::{test}: io_uring refused");
            return;
        };
        let wait = |ring: &mut Ring, out: &mut Vec<Completion>| {
            ring.submit_and_wait(Some(Duration::from_millis(100)))
                .unwrap();
            ring.completions(out);
        };
        let (mut writer, reader) = UnixStream::pair().unwrap();
        writer.write_all(b"first").unwrap();
        ring.recv_limited(reader.as_raw_fd(), 1, 64).unwrap();
        let mut completions = Vec::new();
        let mut received = None;
        for _ in 0..10 {
            wait(&mut ring, &mut completions);
            if let Some(Completion::Received { result, .. }) = completions.pop() {
                received = Some(result.unwrap().unwrap());
                break;
            }
        }
        let received = received.expect("no receive completion");
        assert_eq!(ring.recv_data(&received), b"first");
        // A socket whose peer does not read: filled until even one byte would block.
        let (full, mut drain) = UnixStream::pair().unwrap();
        full.set_nonblocking(true).unwrap();
        let mut filler = 0;
        for chunk in [4096, 1] {
            // Bounded: the socket's buffer is finite.
            for _ in 0..1_000_000 {
                match (&full).write(&vec![b'.'; chunk]) {
                    Ok(n) => filler += n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("fill: {err}"),
                }
            }
        }
        ring.send(full.as_raw_fd(), 2, SendBuf::Received(received), 0)
            .unwrap();
        wait(&mut ring, &mut completions);
        assert!(
            completions.is_empty(),
            "the send did not wait: {completions:?}"
        );
        assert_eq!(ring.recv_bufs_in_sends(), 1);
        // More bytes arrive while the only buffer is out with the send.
        writer.write_all(b"SECOND").unwrap();
        ring.recv_limited(reader.as_raw_fd(), 1, 64).unwrap();
        wait(&mut ring, &mut completions);
        match completions.pop() {
            Some(Completion::Received {
                result: Err(err), ..
            }) => {
                assert_eq!(err.raw_os_error(), Some(libc::ENOBUFS), "{err}");
            }
            other => panic!("the buffer being sent was taken by a receive: {other:?}"),
        }
        // The peer reads: the send goes out, with its own bytes.
        drain.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut sent = None;
        for _ in 0..100 {
            let mut chunk = [0; 65536];
            while let Ok(n) = drain.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            if sent.is_some() && got.len() == filler + 5 {
                break;
            }
            wait(&mut ring, &mut completions);
            for completion in completions.drain(..) {
                if let Completion::Sent {
                    tag, result, buf, ..
                } = completion
                {
                    assert_eq!((tag, result.unwrap()), (2, 5));
                    sent = Some(buf);
                }
            }
        }
        let Some(SendBuf::Received(buf)) = sent else {
            panic!("no send completion, or not the receive buffer back");
        };
        assert_eq!(ring.recv_bufs_in_sends(), 0);
        assert_eq!(got.len(), filler + 5);
        assert_eq!(&got[filler..], b"first");
        ring.recycle(buf);
    }
}
