//! The io_uring server: completion-based I/O. Instead of asking "which sockets are
//! ready?" and then calling `read` and `write` on each (the event and reactor models),
//! the loop queues requests ("accept connections on this listener", "receive whatever
//! arrives on this socket", "send these bytes") in a ring shared with the kernel, and
//! reads their results from a second ring. One `io_uring_enter` submits the whole batch
//! and waits for completions: system calls per message drop from three to a fraction of
//! one.
//!
//! Trade-off: fewer kernel crossings and no readiness step; but buffers are lent to the
//! kernel for the life of a request, so the program must own its memory differently
//! (the unsafe part lives in `echolab_sys::uring`), and containers often forbid io_uring
//! (`serve` checks with [`probe`] before announcing the port).
//!
//! # The requests
//!
//! - One multishot accept per loop on the shared listener: armed once, it delivers a
//!   completion per connection. The loops' accepts all wait on the one listener, and the
//!   kernel hands each connection to one of them. If it ends (or cannot be armed again),
//!   the loop arms it again, after a pause if descriptors ran out.
//! - One receive at a time per connection, into one of the ring's provided buffers, asking
//!   for at most the connection's room: the kernel picks a free buffer when bytes arrive,
//!   so an idle connection holds no buffer.
//! - At most one send per connection at a time, from a buffer the ring owns until it
//!   completes; bytes the echo produces meanwhile wait in the connection's [`Echo`].
//!
//! Backpressure: a connection holds at most [`crate::echo::MAX_OWED`] bytes (owed by its
//! echo plus its send in flight), like in every model. A multishot receive cannot keep
//! that bound: it keeps delivering until a cancel lands, and the kernel completed up to
//! half a megabyte per connection in one turn before it did (issue 9). So every receive is
//! a single one, for at most the room left (and at most one buffer), armed again only
//! when the connection has room for a whole buffer. Batching keeps the cost: the re-armed
//! receives of a turn reach the kernel together with its sends, in one system call.
//!
//! When the pool runs dry, the kernel ends the receives that find no buffer (`ENOBUFS`);
//! the loop arms them again at once. The new request reaches the kernel with the next
//! batch, after every buffer of this turn has gone back to the pool.
//!
//! Fairness: a turn hands each connection at most one receive buffer, so a streaming
//! client gets 16 KiB per turn like everyone else.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use echolab_sys::uring::{Completion, RecvBuf, Ring};

use crate::accept;
use crate::admission::{Admission, ConnCap};
use crate::conn::{self, End};
use crate::echo::{Echo, EchoConfig, EchoError, MAX_OWED};
use crate::shutdown::Shutdown;
use crate::{cores, net, runner, Server};

/// Requests the submission queue holds before it is handed to the kernel.
const RING_ENTRIES: u32 = 1024;

/// The receive buffers of one loop: 256 of 16 KiB. A receive takes a whole buffer
/// whatever it carries, and the loop gives it back within the same turn, once the echo
/// has the bytes. So 256 buffers serve 256 completions per turn across the loop's
/// connections; beyond that receives end with `ENOBUFS` and are armed again for the next
/// turn. 16 KiB take a 16 KiB message in one completion and one send. Only pages the
/// kernel has written count as resident memory: small messages touch one page per buffer.
const N_BUFS: u16 = 256;
const BUF_SIZE: u32 = 16 * 1024;

/// A receive is armed once the connection has room for this much: one whole buffer, so
/// that a receive is not wasted on a few bytes.
const REARM_ROOM: usize = if (BUF_SIZE as usize) < MAX_OWED {
    BUF_SIZE as usize
} else {
    MAX_OWED
};

/// The most bytes one send carries.
const MAX_SEND: usize = MAX_OWED;

/// Send buffers kept for reuse per loop, instead of freed and allocated again.
const SEND_POOL: usize = 64;

/// Only send buffers up to this capacity go back to the pool: one receive buffer's worth,
/// so that a stream of 16 KiB messages allocates nothing per message, while a burst's
/// larger buffers are freed. An idle loop holds at most `SEND_POOL` × 16 KiB (1 MiB).
const SEND_POOL_CAPACITY: usize = BUF_SIZE as usize;

/// Tags: a connection's slot in the low 24 bits, the slot's 32-bit generation above (56
/// bits, what the ring leaves its caller), so that a completion for a connection that has
/// closed is never applied to its slot's next one.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The tag of the shutdown pipe's poll.
const SHUTDOWN_TAG: u64 = SLOT_MASK;
/// Connections one loop can hold: every slot number below the shutdown pipe's. A loop at
/// the limit refuses the next connection as `--max-conns` does.
const MAX_SLOTS: usize = SLOT_MASK as usize;

/// The models that run where io_uring does not.
const OTHER_MODELS: &str = "reactor, async, event, thread, prethreaded, process, iterative";

/// Checks that this kernel lets the process use io_uring with what the model uses:
/// provided-buffer rings (Linux 5.19) and multishot receive (6.0, which also brings
/// multishot accept), by building a small ring and receiving on it once. The error is one
/// line, naming the models that will work.
pub fn probe(_server: &Server) -> Result<(), String> {
    let supported = Ring::new(8, 8, 64).and_then(|mut ring| ring.supports_multishot_recv());
    match supported {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("this kernel's io_uring lacks multishot receive (needs Linux 6.0 or later); models that work here: {OTHER_MODELS}")),
        Err(err) => {
            let why = match err.raw_os_error() {
                Some(libc::EPERM) => "io_uring is not permitted here (EPERM: disabled by kernel.io_uring_disabled or a seccomp policy, common in containers)".to_string(),
                Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS)".to_string(),
                Some(libc::EINVAL) => "this kernel's io_uring lacks provided-buffer rings (EINVAL; needs Linux 5.19 or later, 6.0 for multishot receive)".to_string(),
                _ => format!("cannot set up io_uring: {}", net::describe(&err)),
            };
            Err(format!("{why}; models that work here: {OTHER_MODELS}"))
        }
    }
}

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listener,
        config,
        shutdown,
        cap,
    } = server;
    let n_loops = config.workers.unwrap_or_else(cores).max(1);
    let shared = Shared {
        echo: config.echo,
        idle_timeout: config.idle_timeout,
        cap,
        shutdown: &shutdown,
        listener: listener.as_raw_fd(),
        rings_ready: StartGate::new(n_loops),
    };
    let shared = &shared;
    let result = runner::run_loops(
        "uring",
        vec![(); n_loops],
        &shutdown,
        &|()| run_loop(shared),
        &|never| shared.rings_ready.abandon(never),
    );
    // The listener closes only now that no ring can accept on it any more.
    drop(listener);
    result
}

/// What every loop shares with the others.
#[derive(Debug)]
struct Shared<'a> {
    echo: EchoConfig,
    idle_timeout: Option<Duration>,
    /// `--max-conns` and `--max-conns-per-ip`, across all loops.
    cap: Arc<ConnCap>,
    /// Watched by every loop; the first loop that fails fires it so the others stop too.
    shutdown: &'a Shutdown,
    /// The one listener every loop accepts on; it outlives the loops.
    listener: RawFd,
    /// Every loop builds its ring (a ring belongs to the thread that made it) before any
    /// loop accepts: a loop that accepted first could take the descriptors the others
    /// need for their rings.
    rings_ready: StartGate,
}

/// A barrier that also says whether every party made it: loops wait here until all have
/// built their rings, and all stop if one could not.
#[derive(Debug)]
struct StartGate {
    /// Parties still to arrive, and whether one failed or will never come.
    state: Mutex<(usize, bool)>,
    all_arrived: Condvar,
}

impl StartGate {
    fn new(parties: usize) -> StartGate {
        StartGate {
            state: Mutex::new((parties, false)),
            all_arrived: Condvar::new(),
        }
    }

    /// Arrives (`ok`: this party is ready) and waits for the others; true if all are ready.
    fn arrive(&self, ok: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        state.1 |= !ok;
        self.all_arrived.notify_all();
        // Bounded: every party arrives or is abandoned, and each arrival notifies.
        while state.0 > 0 {
            state = self
                .all_arrived
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        !state.1
    }

    /// `parties` will never arrive (their threads could not start): the others stop.
    fn abandon(&self, parties: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(parties);
        state.1 = true;
        self.all_arrived.notify_all();
    }
}

fn run_loop(shared: &Shared<'_>) -> io::Result<()> {
    let uring_loop = UringLoop::new(shared);
    let all_ready = shared.rings_ready.arrive(uring_loop.is_ok());
    if uring_loop.is_ok() && !all_ready {
        return Ok(()); // Another loop failed and reports it.
    }
    uring_loop.and_then(|mut uring_loop| uring_loop.run())
}

/// One connection of a loop.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    echo: Echo,
    last_active: Instant,
    /// A send is in flight; the echo's writer takes nothing until it completes.
    sending: bool,
    /// Bytes of the send in flight not yet confirmed sent (0 when none is). They count
    /// against the connection's bound like the echo's owed bytes: the room to read is
    /// `echo.read_room()` minus this.
    send_len: usize,
    /// Bytes the kernel confirmed sent, for the close log. The echo counts a byte as out
    /// when it enters the send buffer, which is too early if the send then fails.
    bytes_sent: u64,
    /// A receive is armed and its completion has not arrived.
    recv_armed: bool,
    /// Its place under `--max-conns`, freed when the connection drops.
    _admission: Admission,
}

impl Conn {
    /// How many more bytes this connection may take before it holds `MAX_OWED`.
    fn room(&self) -> usize {
        self.echo.read_room().saturating_sub(self.send_len)
    }
}

/// What a completion hands to [`UringLoop::pump`].
#[derive(Debug)]
enum Input {
    /// Nothing new arrived (a send completed, a receive found no buffer).
    Nothing,
    /// Bytes arrived in a receive buffer.
    Bytes(RecvBuf),
    /// The peer shut down its write side.
    End,
}

/// A slot of the connection table; the generation survives the connection.
#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

struct UringLoop<'a> {
    ring: Ring,
    shared: &'a Shared<'a>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Emptied send buffers of at most `SEND_POOL_CAPACITY`, ready for the next send.
    send_pool: Vec<Vec<u8>>,
    accept_armed: bool,
    /// Out of descriptors: accept is armed again at this time.
    accept_paused_until: Option<Instant>,
    next_sweep: Option<Instant>,
}

impl<'a> UringLoop<'a> {
    fn new(shared: &'a Shared<'a>) -> io::Result<UringLoop<'a>> {
        let mut ring = Ring::new(RING_ENTRIES, N_BUFS, BUF_SIZE)?;
        ring.poll_readable(shared.shutdown.fd().as_raw_fd(), SHUTDOWN_TAG)?;
        Ok(UringLoop {
            ring,
            shared,
            slots: Vec::new(),
            free: Vec::new(),
            send_pool: Vec::new(),
            accept_armed: false,
            accept_paused_until: None,
            next_sweep: None,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut completions = Vec::new();
        let mut now = Instant::now();
        loop {
            if !self.accept_armed && !matches!(self.accept_paused_until, Some(until) if until > now)
            {
                self.accept_paused_until = None;
                match self.ring.accept_multi(self.shared.listener) {
                    Ok(()) => self.accept_armed = true,
                    // Open connections are still served; accepting is tried again later.
                    Err(err) => {
                        accept::warn_pausing(&format!(
                            "cannot arm accept: {}",
                            net::describe(&err)
                        ));
                        self.accept_paused_until = Some(now + accept::OUT_OF_DESCRIPTORS_PAUSE);
                    }
                }
            }
            let timeout = self.timeout(now);
            self.ring.submit_and_wait(timeout)?;
            let stopping = self.shared.shutdown.is_triggered();
            now = Instant::now();
            self.ring.completions(&mut completions);
            // The completions already posted count before a shutdown closes everything:
            // a send the peer has received is in the close line's bytes out.
            for completion in completions.drain(..) {
                self.on_completion(completion, now);
            }
            if stopping {
                self.close_all();
                return Ok(());
            }
            if self.next_sweep.is_some_and(|at| at <= now) {
                self.sweep_idle(now);
            }
        }
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        let deadline = match (self.next_sweep, self.accept_paused_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        deadline.map(|deadline| deadline.saturating_duration_since(now))
    }

    fn on_completion(&mut self, completion: Completion, now: Instant) {
        match completion {
            Completion::Accepted { result, more } => {
                self.accept_armed = more;
                match result {
                    Ok(fd) => self.admit(fd, now),
                    // Out of descriptors: the accept is armed again after the pause.
                    Err(err) => self.accept_paused_until = accept::after_accept_error(&err),
                }
            }
            Completion::Received { tag, result, more } => {
                let Some(conn_idx) = self.live(tag) else {
                    if let Ok(Some(buf)) = result {
                        self.ring.recycle(buf); // For a connection that has closed.
                    }
                    return;
                };
                let conn = self.slots[conn_idx].conn.as_mut().expect("live slot");
                if !more {
                    conn.recv_armed = false;
                }
                conn.last_active = now;
                match result {
                    Ok(Some(buf)) => self.pump(conn_idx, Input::Bytes(buf)),
                    Ok(None) => self.pump(conn_idx, Input::End),
                    // Out of buffers (or cancelled): `pump` arms the receive again; the
                    // buffers are all back in the pool by the time it reaches the kernel.
                    Err(err)
                        if matches!(err.raw_os_error(), Some(libc::ECANCELED | libc::ENOBUFS)) =>
                    {
                        self.pump(conn_idx, Input::Nothing)
                    }
                    Err(err) => self.close(conn_idx, End::Failed(err.into())),
                }
            }
            Completion::Sent {
                tag,
                result,
                buf,
                start,
            } => {
                let Some(conn_idx) = self.live(tag) else {
                    self.reuse(buf);
                    return;
                };
                let conn = self.slots[conn_idx].conn.as_mut().expect("live slot");
                conn.last_active = now;
                if let Ok(n) = result {
                    conn.bytes_sent += n as u64;
                    conn.send_len = conn.send_len.saturating_sub(n);
                }
                match result {
                    Ok(n) if start + n < buf.len() => {
                        // A short send: the rest goes next, from the same buffer.
                        let fd = conn.stream.as_raw_fd();
                        if let Err(err) = self.ring.send(fd, tag, buf, start + n) {
                            self.close(conn_idx, End::Failed(err.into()));
                        }
                    }
                    Ok(_) => {
                        conn.sending = false;
                        conn.send_len = 0;
                        self.reuse(buf);
                        self.pump(conn_idx, Input::Nothing);
                    }
                    Err(err) => {
                        self.reuse(buf);
                        self.close(conn_idx, End::Failed(err.into()));
                    }
                }
            }
            Completion::Readable { .. } => {
                // The shutdown pipe. A poll completes once: if it woke without the flag
                // (spuriously), watch again, or the loop would never see the shutdown.
                if !self.shared.shutdown.is_triggered() {
                    let fd = self.shared.shutdown.fd().as_raw_fd();
                    if let Err(err) = self.ring.poll_readable(fd, SHUTDOWN_TAG) {
                        log::warn!(
                            "cannot watch the shutdown pipe again: {}",
                            net::describe(&err)
                        );
                        self.shared.shutdown.trigger();
                    }
                }
            }
        }
    }

    /// The slot a tag names, if its connection is still the one that sent the request.
    fn live(&self, tag: u64) -> Option<usize> {
        let conn_idx = (tag & SLOT_MASK) as usize;
        let slot = self.slots.get(conn_idx)?;
        (slot.conn.is_some() && u64::from(slot.generation) == tag >> SLOT_BITS).then_some(conn_idx)
    }

    fn tag(&self, conn_idx: usize) -> u64 {
        u64::from(self.slots[conn_idx].generation) << SLOT_BITS | conn_idx as u64
    }

    fn reuse(&mut self, mut buf: Vec<u8>) {
        if self.send_pool.len() < SEND_POOL && buf.capacity() <= SEND_POOL_CAPACITY {
            buf.clear();
            self.send_pool.push(buf);
        }
    }

    fn admit(&mut self, fd: OwnedFd, now: Instant) {
        let stream = TcpStream::from(fd);
        if self.free.is_empty() && self.slots.len() >= MAX_SLOTS {
            log::warn!(
                "conn {} refused: this loop holds {MAX_SLOTS} connections, all its tags",
                peer_of(&stream)
            );
            return;
        }
        // Multishot accept does not return the peer; the cap needs it.
        let peer = peer_of(&stream);
        let admission = match self.shared.cap.admit(peer) {
            Ok(admission) => admission,
            Err(why) => return self.shared.cap.refuse(stream, peer, why),
        };
        if let Err(err) = net::configure(&stream) {
            crate::stats::global().dropped();
            log::warn!(
                "conn {peer} dropped: cannot configure it: {}",
                net::describe(&err)
            );
            return;
        }
        conn::log_opened(peer);
        let conn_idx = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            self.slots.len() - 1
        });
        let fd = stream.as_raw_fd();
        self.slots[conn_idx].conn = Some(Conn {
            stream,
            peer,
            echo: Echo::new(self.shared.echo),
            last_active: now,
            sending: false,
            send_len: 0,
            bytes_sent: 0,
            recv_armed: true,
            _admission: admission,
        });
        let tag = self.tag(conn_idx);
        if let Err(err) = self.ring.recv_limited(fd, tag, BUF_SIZE) {
            self.close(conn_idx, End::Failed(err.into()));
            return;
        }
        if let Some(timeout) = self.shared.idle_timeout {
            self.next_sweep.get_or_insert(now + timeout);
        }
    }

    /// Moves a connection forward after any completion: feeds new bytes to the echo,
    /// starts a send, arms or cancels the receive, closes the connection when it is done.
    fn pump(&mut self, conn_idx: usize, input: Input) {
        let tag = self.tag(conn_idx);
        let Some(conn) = self.slots[conn_idx].conn.as_mut() else {
            if let Input::Bytes(buf) = input {
                self.ring.recycle(buf);
            }
            return;
        };
        let mut outbox = Outbox {
            sending: conn.sending,
            buf: None,
            pool: &mut self.send_pool,
        };
        let mut failed: Option<EchoError> = None;
        if !conn.sending && conn.echo.wants_write() {
            if let Err(err) = conn.echo.flush(&mut outbox) {
                failed = Some(err.into());
            }
        }
        match input {
            Input::Nothing => {}
            Input::Bytes(buf) => {
                // The receive asked for at most the room: the echo stays within its bound.
                if failed.is_none() {
                    let data = self.ring.recv_data(&buf);
                    log::trace!("server received {} bytes", data.len());
                    if let Err(err) = conn.echo.on_input(data, &mut outbox) {
                        failed = Some(err);
                    }
                }
                self.ring.recycle(buf);
            }
            Input::End => {
                if failed.is_none() {
                    if let Err(err) = conn.echo.on_eof(&mut outbox) {
                        failed = Some(err);
                    }
                }
            }
        }
        let outgoing = outbox.buf.take().filter(|buf| !buf.is_empty());
        if let Some(err) = failed {
            if let Some(buf) = outgoing {
                self.reuse(buf);
            }
            return self.close(conn_idx, End::Failed(err));
        }
        let fd = conn.stream.as_raw_fd();
        let mut result = Ok(());
        if let Some(buf) = outgoing {
            conn.sending = true;
            conn.send_len = buf.len();
            result = self.ring.send(fd, tag, buf, 0);
        }
        let room = conn.room();
        // With a send in flight, its completion comes back here with more room; without
        // one, nothing would: any room is armed then (a partial line can leave less than
        // a buffer's worth, and it waits for its newline).
        let worth_arming = room >= REARM_ROOM || (room > 0 && !conn.sending);
        if result.is_ok() && !conn.recv_armed && worth_arming {
            conn.recv_armed = true;
            let asked = room.min(BUF_SIZE as usize) as u32;
            result = self.ring.recv_limited(fd, tag, asked);
        }
        if let Err(err) = result {
            return self.close(conn_idx, End::Failed(err.into()));
        }
        if conn.echo.is_finished() && !conn.sending {
            self.close(conn_idx, End::PeerClosed);
        }
    }

    fn close(&mut self, conn_idx: usize, end: End) {
        let slot = &mut self.slots[conn_idx];
        let Some(conn) = slot.conn.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(conn_idx);
        let Conn {
            stream,
            peer,
            echo,
            bytes_sent,
            recv_armed,
            sending,
            _admission,
            ..
        } = conn;
        if recv_armed || sending {
            // An armed request holds the socket open past `close`; shutting it down ends
            // the requests (their completions find the slot's generation moved on) and
            // sends the peer its FIN.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.ring.close(OwnedFd::from(stream));
        // Its place under the cap is free before the close line.
        drop(_admission);
        conn::log_closed_counts(peer, echo.bytes_in(), bytes_sent, &end);
    }

    fn sweep_idle(&mut self, now: Instant) {
        let Some(timeout) = self.shared.idle_timeout else {
            self.next_sweep = None;
            return;
        };
        let last_active = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(conn_idx, slot)| {
                slot.conn.as_ref().map(|conn| (conn_idx, conn.last_active))
            });
        let (expired, next) = conn::idle_sweep(last_active, timeout, now);
        for conn_idx in expired {
            self.close(conn_idx, End::Idle(timeout));
        }
        self.next_sweep = next;
    }

    fn close_all(&mut self) {
        for conn_idx in 0..self.slots.len() {
            self.close(conn_idx, End::Shutdown);
        }
        // Hand the closes to the kernel now; dropping the ring then cancels what is left.
        let _ = self.ring.submit();
    }
}

/// The echo's writer in this model: bytes go into a send buffer that becomes the
/// connection's next send. It takes nothing while a send is in flight (one send at a
/// time keeps the bytes in order), and at most [`MAX_SEND`] bytes.
struct Outbox<'a> {
    sending: bool,
    buf: Option<Vec<u8>>,
    pool: &'a mut Vec<Vec<u8>>,
}

impl Write for Outbox<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.sending {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let pool = &mut self.pool;
        let buf = self
            .buf
            .get_or_insert_with(|| pool.pop().unwrap_or_default());
        let n = bytes.len().min(MAX_SEND - buf.len());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        buf.extend_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The peer of a connection, for a log line; the unspecified address if it is gone.
fn peer_of(stream: &TcpStream) -> SocketAddr {
    stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
