//! The plumbing under the `uring` model (`model/uring.rs` keeps only its completion-driven
//! loop): the connection table and its completion tags, the accept arming and its
//! failures, the send buffers and the echo's writer, the start gate of the loops, the
//! support probe, and the faults the tests inject.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use echolab_sys::uring::Ring;

use crate::admission::{Admission, ConnCap};
use crate::conn::{self, End};
use crate::echo::{Echo, EchoConfig};
use crate::{accept, net};

/// Tags: a connection's slot in the low 24 bits, the slot's 32-bit generation above (56
/// bits, what the ring leaves its caller), so that a completion for a connection that has
/// closed is never applied to its slot's next one.
pub const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The tag of the shutdown pipe's poll: a slot number no connection gets.
pub const SHUTDOWN_TAG: u64 = SLOT_MASK;
/// Connections one loop can hold: every slot number below the shutdown pipe's.
pub const MAX_SLOTS: usize = SLOT_MASK as usize;

/// The connections of one loop, by slot, each named in its requests by a tag.
#[derive(Debug)]
pub struct ConnTable<C> {
    slots: Vec<Slot<C>>,
    free: Vec<usize>,
    /// Slots the table may grow to (at most [`MAX_SLOTS`]).
    limit: usize,
}

/// A slot of the table; the generation survives the connection.
#[derive(Debug)]
struct Slot<C> {
    generation: u32,
    conn: Option<C>,
}

impl<C> ConnTable<C> {
    /// A table of at most `limit` connections, and never more than [`MAX_SLOTS`].
    pub fn new(limit: usize) -> ConnTable<C> {
        ConnTable {
            slots: Vec::new(),
            free: Vec::new(),
            limit: limit.min(MAX_SLOTS),
        }
    }

    /// Puts `conn` in a free slot and returns the slot, or gives `conn` back when every
    /// slot up to the limit is taken.
    pub fn insert(&mut self, conn: C) -> Result<usize, C> {
        let conn_idx = match self.free.pop() {
            Some(conn_idx) => conn_idx,
            None if self.slots.len() < self.limit => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                self.slots.len() - 1
            }
            None => return Err(conn),
        };
        self.slots[conn_idx].conn = Some(conn);
        Ok(conn_idx)
    }

    /// The tag a request for the connection in `conn_idx` carries.
    pub fn tag(&self, conn_idx: usize) -> u64 {
        u64::from(self.slots[conn_idx].generation) << SLOT_BITS | conn_idx as u64
    }

    /// The slot a tag names, if its connection is still the one that sent the request.
    pub fn live(&self, tag: u64) -> Option<usize> {
        let conn_idx = (tag & SLOT_MASK) as usize;
        let slot = self.slots.get(conn_idx)?;
        (slot.conn.is_some() && u64::from(slot.generation) == tag >> SLOT_BITS).then_some(conn_idx)
    }

    pub fn get_mut(&mut self, conn_idx: usize) -> Option<&mut C> {
        self.slots.get_mut(conn_idx)?.conn.as_mut()
    }

    /// Takes the connection out of its slot; the slot's tags go stale.
    pub fn remove(&mut self, conn_idx: usize) -> Option<C> {
        let slot = self.slots.get_mut(conn_idx)?;
        let conn = slot.conn.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(conn_idx);
        Some(conn)
    }

    /// Every connection, with its slot.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &C)> {
        let slots = self.slots.iter().enumerate();
        slots.filter_map(|(conn_idx, slot)| Some((conn_idx, slot.conn.as_ref()?)))
    }
}

/// One connection of a uring loop.
#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub echo: Echo,
    /// Bytes of the send in flight not yet confirmed sent; `None` when no send is. They
    /// count against the bound like the echo's owed bytes.
    pub sending: Option<usize>,
    /// Bytes the kernel confirmed sent, for the close log (the echo counts a byte out when
    /// it enters the send buffer, too early if the send then fails).
    pub bytes_sent: u64,
    /// A receive is armed and its completion has not arrived.
    pub recv_armed: bool,
    /// Its place under `--max-conns`, freed when the connection drops.
    admission: Admission,
}

impl Conn {
    /// A connection whose first receive is about to be armed.
    pub fn new(stream: TcpStream, peer: SocketAddr, echo: Echo, admission: Admission) -> Conn {
        Conn {
            stream,
            peer,
            echo,
            sending: None,
            bytes_sent: 0,
            recv_armed: true,
            admission,
        }
    }

    /// A connection the multishot accept delivered, admitted under `cap` and configured;
    /// `None` (logged) if it is refused or cannot be configured.
    pub fn admit(fd: OwnedFd, cap: &Arc<ConnCap>, echo: EchoConfig) -> Option<Conn> {
        let stream = TcpStream::from(fd);
        // Multishot accept does not return the peer; the cap needs it.
        let peer = peer_of(&stream);
        let admission = match cap.admit(peer) {
            Ok(admission) => admission,
            Err(why) => {
                cap.refuse(stream, peer, why);
                return None;
            }
        };
        if let Err(err) = net::configure(&stream) {
            crate::conn::log_dropped(peer, &err);
            return None;
        }
        Some(Conn::new(stream, peer, Echo::new(echo), admission))
    }

    /// How many more bytes this connection may take before it holds `MAX_OWED`: the
    /// echo's room less the send in flight.
    pub fn room(&self) -> usize {
        self.echo
            .read_room()
            .saturating_sub(self.sending.unwrap_or(0))
    }

    /// Closes the connection through `ring` and logs it, its place under the cap freed
    /// first.
    pub fn close(self, ring: &mut Ring, end: &End) {
        let Conn {
            stream,
            peer,
            echo,
            bytes_sent,
            recv_armed,
            sending,
            admission,
            ..
        } = self;
        if recv_armed || sending.is_some() {
            // An armed request holds the socket open past `close`; shutting it down ends
            // the requests (their completions find the tag stale) and sends the FIN.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        ring.close(OwnedFd::from(stream));
        drop(admission);
        conn::log_closed_counts(peer, echo.bytes_in(), bytes_sent, end);
    }
}

/// Consecutive failures to arm accept, other than running out of descriptors or memory,
/// after which a loop gives up: about two seconds of pauses.
pub const MAX_ACCEPT_FAILURES: u32 = 20;

/// The multishot accept of one loop: armed, paused after a failure, or given up.
#[derive(Debug, Default)]
pub struct AcceptState {
    armed: bool,
    /// Accept is armed again at this time (after a failure).
    paused_until: Option<Instant>,
    /// Failures in a row that pausing does not explain (not EMFILE and the like).
    failures: u32,
}

impl AcceptState {
    /// Arms the accept (with `arm`) if it is not armed and no pause holds it back. A
    /// failure pauses it; [`MAX_ACCEPT_FAILURES`] in a row end the loop with an error.
    pub fn arm_if_due(
        &mut self,
        now: Instant,
        arm: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        if self.armed || self.paused_until.is_some_and(|until| until > now) {
            return Ok(());
        }
        self.paused_until = None;
        let armed = if faults().accept_arm_fails() {
            Err(io::Error::other("injected by ECHOLAB_FAULT_URING"))
        } else {
            arm()
        };
        match armed {
            Ok(()) => {
                self.armed = true;
                Ok(())
            }
            Err(err) => self.failed(&err, now),
        }
    }

    /// An accept completion: `more` whether the accept is still armed, `error` its error.
    /// A connection that went away before it was taken re-arms at once; running out of
    /// descriptors or memory pauses; any other error counts as a failure, like an arm.
    pub fn completed(
        &mut self,
        more: bool,
        error: Option<&io::Error>,
        now: Instant,
    ) -> io::Result<()> {
        self.armed = more;
        match error {
            None => {
                self.failures = 0;
                Ok(())
            }
            Some(err)
                if net::out_of_resources(err)
                    || net::aborted_before_accept(err)
                    || net::would_block(err)
                    || net::interrupted(err) =>
            {
                self.paused_until = accept::after_accept_error(err);
                Ok(())
            }
            Some(err) => self.failed(err, now),
        }
    }

    fn failed(&mut self, err: &io::Error, now: Instant) -> io::Result<()> {
        self.failures += 1;
        if self.failures >= MAX_ACCEPT_FAILURES {
            return Err(io::Error::new(
                err.kind(),
                format!(
                    "cannot accept {} times in a row, stopping: {}",
                    self.failures,
                    net::describe(err)
                ),
            ));
        }
        accept::warn_pausing(&format!("cannot accept: {}", net::describe(err)));
        self.paused_until = Some(now + accept::OUT_OF_DESCRIPTORS_PAUSE);
        Ok(())
    }

    /// When the loop must wake to arm the accept again.
    pub fn wake_at(&self) -> Option<Instant> {
        self.paused_until
    }
}

/// Send buffers kept for reuse per loop, instead of freed and allocated again.
const SEND_POOL: usize = 64;

/// Emptied send buffers of one loop, ready for the next send.
#[derive(Debug)]
pub struct SendPool {
    bufs: Vec<Vec<u8>>,
    /// Only buffers up to this capacity come back: one receive buffer's worth, so that a
    /// stream of such messages allocates nothing per message while a burst's larger
    /// buffers are freed. An idle loop holds at most `SEND_POOL` times this.
    max_capacity: usize,
}

impl SendPool {
    pub fn new(max_capacity: usize) -> SendPool {
        SendPool {
            bufs: Vec::new(),
            max_capacity,
        }
    }

    /// An empty buffer, kept or new.
    pub fn take(&mut self) -> Vec<u8> {
        self.bufs.pop().unwrap_or_default()
    }

    /// Keeps `buf` for a later send if the pool has room and it is not too large.
    pub fn reuse(&mut self, mut buf: Vec<u8>) {
        if self.bufs.len() < SEND_POOL && buf.capacity() <= self.max_capacity {
            buf.clear();
            self.bufs.push(buf);
        }
    }
}

/// The echo's writer in the uring model: bytes go into a send buffer that becomes the
/// connection's next send. It takes nothing while a send is in flight (one send at a time
/// keeps the bytes in order), and at most `max_send` bytes.
///
/// Bytes that lie in `received` (the receive buffer the echo is given, where lending is
/// allowed) and start its send are not copied: the outbox records how many (`lent`), and
/// the receive buffer itself becomes the send. It takes what follows them in the same
/// buffer, and nothing else (the echo keeps that owed, in order).
#[derive(Debug)]
pub struct Outbox<'a> {
    pub sending: bool,
    pub max_send: usize,
    pub buf: Option<Vec<u8>>,
    pub pool: &'a mut SendPool,
    /// The received bytes that may be sent where they are (`None`: copy everything).
    pub received: Option<&'a [u8]>,
    /// How many bytes from the start of `received` the send takes from it.
    pub lent: Option<usize>,
}

impl Outbox<'_> {
    /// Whether `bytes` (about to be written) continue the lent run of `received`; takes
    /// them if so and returns how many.
    fn lend(&mut self, bytes: &[u8]) -> Option<usize> {
        let received = self.received?;
        let taken = self.lent.unwrap_or(0);
        let next = received.as_ptr() as usize + taken;
        if self.buf.is_some() || bytes.as_ptr() as usize != next || bytes.is_empty() {
            return None;
        }
        let n = bytes
            .len()
            .min(received.len() - taken)
            .min(self.max_send.saturating_sub(taken));
        self.lent = Some(taken + n);
        Some(n)
    }
}

impl Write for Outbox<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.sending {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if let Some(n) = self.lend(bytes) {
            return match n {
                0 => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            };
        }
        if self.lent.is_some() {
            // Bytes from elsewhere cannot follow a lent run in the same send.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let pool = &mut self.pool.bufs;
        let buf = self
            .buf
            .get_or_insert_with(|| pool.pop().unwrap_or_default());
        let n = bytes.len().min(self.max_send.saturating_sub(buf.len()));
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

/// Whether a loop with `lent` of its `n_bufs` receive buffers held by sends may lend one
/// more: at most half, so that sends stuck on clients that do not read (a send holds its
/// buffer until the socket takes it) never leave receives without buffers; past that,
/// bytes are copied into send buffers as before.
pub fn may_lend(lent: usize, n_bufs: usize) -> bool {
    lent < n_bufs / 2
}

/// A barrier that also says whether every party made it: loops wait here until all have
/// built their rings, and all stop if one could not.
#[derive(Debug)]
pub struct StartGate {
    /// Parties still to arrive, and whether one failed or will never come.
    state: Mutex<(usize, bool)>,
    all_arrived: Condvar,
}

impl StartGate {
    pub fn new(parties: usize) -> StartGate {
        StartGate {
            state: Mutex::new((parties, false)),
            all_arrived: Condvar::new(),
        }
    }

    /// Arrives (`ok`: this party is ready) and waits for the others; true if all are ready.
    pub fn arrive(&self, ok: bool) -> bool {
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
    pub fn abandon(&self, parties: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(parties);
        state.1 = true;
        self.all_arrived.notify_all();
    }
}

/// The models that run where io_uring does not.
const OTHER_MODELS: &str = "reactor, async, event, thread, prethreaded, process, iterative";

/// Checks that this kernel lets the process use io_uring with what the model uses:
/// provided-buffer rings (Linux 5.19) and multishot receive (6.0, which also brings
/// multishot accept), by building a small ring and receiving on it once. The error is one
/// line, naming the models that will work.
pub fn probe() -> Result<(), String> {
    let supported = Ring::new(8, 8, 64).and_then(|mut ring| ring.supports_multishot_recv());
    match supported {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("this kernel's io_uring lacks multishot receive (needs Linux 6.0 or later); models that work here: {OTHER_MODELS}")),
        Err(err) => Err(unsupported_because(&err)),
    }
}

/// The one line that says why io_uring cannot be set up (`err`), naming the models that
/// will work.
fn unsupported_because(err: &io::Error) -> String {
    let why = match err.raw_os_error() {
        Some(libc::EPERM) => "io_uring is not permitted here (EPERM: disabled by kernel.io_uring_disabled or a seccomp policy, common in containers)".to_string(),
        Some(libc::ENOSYS) => "this kernel has no io_uring (ENOSYS)".to_string(),
        Some(libc::EINVAL) => "this kernel's io_uring lacks provided-buffer rings (EINVAL; needs Linux 5.19 or later, 6.0 for multishot receive)".to_string(),
        _ => format!("cannot set up io_uring: {}", net::describe(err)),
    };
    format!("{why}; models that work here: {OTHER_MODELS}")
}

/// The peer of a connection, for a log line; the unspecified address if it is gone.
pub fn peer_of(stream: &TcpStream) -> SocketAddr {
    stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// How long a loop waits for completions: the shorter of `wait` (the idle deadlines') and
/// the time until `wake_at` (the accept's pause); `None`: until a completion arrives.
pub fn wait_for(
    wait: Option<Duration>,
    wake_at: Option<Instant>,
    now: Instant,
) -> Option<Duration> {
    let until_wake = wake_at.map(|at| at.saturating_duration_since(now));
    crate::event_loop::earliest(wait, until_wake)
}

/// The `(total, per_turn)` of a limited multishot receive (`Ring::recv_multi_limited`)
/// that delivers at most `room` bytes, at most `buf_size` per receive: the kernel ends it
/// once `total` is reached or crossed, and the receive that crosses it can bring up to
/// `per_turn - 1` more. `per_turn` is also the single receive's length where there is no
/// limit. `room` is at least 1.
pub fn multishot_limits(room: usize, buf_size: u32) -> (u32, u32) {
    let room = u32::try_from(room).unwrap_or(u32::MAX).max(1);
    let per_turn = room.min(buf_size);
    (room - per_turn + 1, per_turn)
}

/// Faults the contract tests inject into the uring model, from `ECHOLAB_FAULT_URING`
/// (debug builds only; release builds read nothing): `accept-arm=N` makes the first `N`
/// arms of accept fail, `enter=NEEDLE` makes the wait fail with `EFAULT` in the turn after
/// a receive brings `NEEDLE`, `bufs=N` gives each loop `N` receive buffers (a power of
/// two) instead of its usual pool, `short-sends=N` makes every send take at most `N` bytes
/// (as a socket with little room does), so the short-send paths run on every send, and
/// `lent-delay-ms=N` holds every send from a receive buffer `N` ms before it starts (as a
/// send to a client that does not read does), so the cap on buffers held by sends binds.
#[derive(Debug, Default)]
pub struct Faults {
    accept_arm_failures: std::sync::atomic::AtomicU32,
    enter_needle: Option<Vec<u8>>,
    recv_bufs: Option<u16>,
    send_limit: Option<u32>,
    lent_send_delay: Option<std::time::Duration>,
}

impl Faults {
    fn parse(spec: &str) -> Faults {
        let mut faults = Faults::default();
        for item in spec.split(',') {
            match item.split_once('=') {
                Some(("accept-arm", n)) => {
                    faults.accept_arm_failures = n.parse().unwrap_or(0).into();
                }
                Some(("enter", needle)) if !needle.is_empty() => {
                    faults.enter_needle = Some(needle.as_bytes().to_vec());
                }
                Some(("bufs", n)) => {
                    faults.recv_bufs = n.parse().ok().filter(|n: &u16| n.is_power_of_two());
                }
                Some(("short-sends", n)) => {
                    faults.send_limit = n.parse().ok().filter(|n: &u32| *n > 0);
                }
                Some(("lent-delay-ms", n)) => {
                    faults.lent_send_delay = n.parse().ok().map(std::time::Duration::from_millis);
                }
                _ => {}
            }
        }
        faults
    }

    /// Whether this arm of accept is to fail (counts the injected failures down).
    fn accept_arm_fails(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.accept_arm_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The receive buffers each loop gets instead of its usual pool, if a test says.
    pub fn recv_bufs(&self) -> Option<u16> {
        self.recv_bufs
    }

    /// The most bytes a send may take, if a test says.
    pub fn send_limit(&self) -> Option<u32> {
        self.send_limit
    }

    /// How long each send from a receive buffer waits before it starts, if a test says.
    pub fn lent_send_delay(&self) -> Option<std::time::Duration> {
        self.lent_send_delay
    }

    /// Whether received `data` asks for the next wait to fail.
    pub fn enter_fails_after(&self, data: &[u8]) -> bool {
        self.enter_needle
            .as_deref()
            .is_some_and(|needle| memchr::memmem::find(data, needle).is_some())
    }
}

/// The faults of this process (none in release builds).
pub fn faults() -> &'static Faults {
    static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();
    FAULTS.get_or_init(|| {
        let spec = std::env::var("ECHOLAB_FAULT_URING").ok();
        match spec {
            Some(spec) if cfg!(debug_assertions) => Faults::parse(&spec),
            _ => Faults::default(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_names_its_connection_until_it_closes() {
        let mut table = ConnTable::new(MAX_SLOTS);
        let a = table.insert("a").unwrap();
        let b = table.insert("b").unwrap();
        assert_eq!((a, b), (0, 1));
        let tag_a = table.tag(a);
        assert_eq!(table.live(tag_a), Some(a));
        assert_eq!(table.live(table.tag(b)), Some(b));
        assert_eq!(table.remove(a), Some("a"));
        assert_eq!(table.remove(a), None);
        assert_eq!(table.live(tag_a), None, "a closed connection's tag");
        // The slot is reused, under a new generation: the old tag stays stale.
        assert_eq!(table.insert("c").unwrap(), a);
        assert_eq!(table.live(tag_a), None);
        assert_eq!(table.live(table.tag(a)), Some(a));
        assert_eq!(table.tag(a), 1 << SLOT_BITS);
        assert_eq!(table.get_mut(a), Some(&mut "c"));
        let open: Vec<(usize, &&str)> = table.iter().collect();
        assert_eq!(open, [(0, &"c"), (1, &"b")]);
        table.remove(1);
        assert_eq!(table.iter().count(), 1);
        assert_eq!(table.live(5), None, "a slot never used");
    }

    #[test]
    fn the_table_refuses_past_its_limit_and_the_limit_is_the_tag_space() {
        let mut table = ConnTable::new(2);
        assert_eq!(table.insert(1), Ok(0));
        assert_eq!(table.insert(2), Ok(1));
        assert_eq!(table.insert(3), Err(3));
        table.remove(0);
        assert_eq!(table.insert(4), Ok(0));
        // However large the asked limit, slots stop below the shutdown pipe's tag.
        let big: ConnTable<()> = ConnTable::new(usize::MAX);
        assert_eq!(big.limit, MAX_SLOTS);
        assert_eq!(MAX_SLOTS, (1 << 24) - 1);
        assert_eq!(SHUTDOWN_TAG as usize, MAX_SLOTS);
        // Generation and slot fit the ring's 56 bits of tag.
        let max_tag = u64::from(u32::MAX) << SLOT_BITS | SLOT_MASK;
        assert_eq!(max_tag >> 56, 0);
    }

    #[test]
    fn a_wrapped_generation_still_tells_connections_apart() {
        let mut table = ConnTable::new(1);
        table.insert(0).unwrap();
        table.slots[0].generation = u32::MAX;
        let old = table.tag(0);
        table.remove(0);
        table.insert(1).unwrap();
        assert_eq!(table.tag(0), 0);
        assert_eq!(table.live(old), None);
    }

    #[test]
    fn the_outbox_takes_at_most_max_send_and_nothing_while_sending() {
        let mut pool = SendPool::new(16);
        let mut outbox = Outbox {
            sending: false,
            max_send: 5,
            buf: None,
            pool: &mut pool,
            received: None,
            lent: None,
        };
        assert_eq!(outbox.write(b"abc").unwrap(), 3);
        assert_eq!(outbox.write(b"defg").unwrap(), 2);
        assert_eq!(
            outbox.write(b"h").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        outbox.flush().unwrap();
        assert_eq!(outbox.buf.as_deref(), Some(&b"abcde"[..]));
        outbox.sending = true;
        outbox.buf = None;
        assert_eq!(
            outbox.write(b"x").unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(outbox.buf.is_none());
    }

    #[test]
    fn the_outbox_lends_the_received_bytes_that_start_its_send_and_copies_nothing() {
        let mut pool = SendPool::new(16);
        let received = b"abcdefgh".to_vec();
        let mut outbox = Outbox {
            sending: false,
            max_send: 6,
            buf: None,
            pool: &mut pool,
            received: Some(&received),
            lent: None,
        };
        // The start of the received bytes, then what follows them: lent, not copied.
        assert_eq!(outbox.write(&received[..3]).unwrap(), 3);
        assert_eq!(outbox.lent, Some(3));
        assert_eq!(outbox.write(&received[3..5]).unwrap(), 2);
        assert_eq!((outbox.lent, outbox.buf.is_some()), (Some(5), false));
        // At most `max_send`, and nothing from elsewhere or out of order behind a lent run.
        assert_eq!(outbox.write(&received[5..]).unwrap(), 1);
        assert_eq!(outbox.lent, Some(6));
        let would_block = |outbox: &mut Outbox, bytes: &[u8]| {
            outbox.write(bytes).unwrap_err().kind() == io::ErrorKind::WouldBlock
        };
        assert!(would_block(&mut outbox, &received[6..]));
        outbox.max_send = 64;
        assert!(would_block(&mut outbox, b"elsewhere"));
        assert!(would_block(&mut outbox, &received[7..]), "a gap");
        assert!(would_block(&mut outbox, &received[..2]), "bytes again");
        assert_eq!(outbox.write(&received[6..]).unwrap(), 2);
        assert_eq!(outbox.lent, Some(8));
        assert!(would_block(&mut outbox, &received[8..]), "past the end");
        assert!(outbox.buf.is_none());
        // Bytes that start where the received ones end are not theirs (the next buffer of
        // the pool, say): the run stops at the end of the received bytes.
        let memory = b"abcdXYZ".to_vec();
        let mut outbox = Outbox {
            sending: false,
            max_send: 64,
            buf: None,
            pool: &mut pool,
            received: Some(&memory[..4]),
            lent: None,
        };
        assert_eq!(outbox.write(&memory[..4]).unwrap(), 4);
        assert!(
            would_block(&mut outbox, &memory[4..]),
            "beyond the received bytes"
        );
        assert_eq!(outbox.lent, Some(4));
        // Received bytes that do not start the send (owed bytes went first) are copied.
        let mut outbox = Outbox {
            sending: false,
            max_send: 64,
            buf: None,
            pool: &mut pool,
            received: Some(&received),
            lent: None,
        };
        assert_eq!(outbox.write(b"owed").unwrap(), 4);
        assert_eq!(outbox.write(&received).unwrap(), 8);
        assert_eq!(outbox.lent, None);
        assert_eq!(outbox.buf.as_deref(), Some(&b"owedabcdefgh"[..]));
        // Received bytes from the middle of the buffer start no lent run.
        let mut outbox = Outbox {
            sending: false,
            max_send: 64,
            buf: None,
            pool: &mut pool,
            received: Some(&received),
            lent: None,
        };
        assert_eq!(outbox.write(&received[1..]).unwrap(), 7);
        assert_eq!(outbox.lent, None);
        // Nothing while a send is in flight, lent or not; nothing lent when not allowed.
        let mut outbox = Outbox {
            sending: true,
            max_send: 64,
            buf: None,
            pool: &mut pool,
            received: Some(&received),
            lent: None,
        };
        assert!(would_block(&mut outbox, &received));
        assert_eq!(outbox.lent, None);
        outbox.sending = false;
        outbox.received = None;
        assert_eq!(outbox.write(&received).unwrap(), 8);
        assert_eq!(
            (outbox.lent, outbox.buf.map(|buf| buf.len())),
            (None, Some(8))
        );
    }

    #[test]
    fn sends_hold_at_most_half_the_receive_buffers() {
        assert!(may_lend(0, 64));
        assert!(may_lend(31, 64));
        assert!(!may_lend(32, 64));
        assert!(!may_lend(33, 64));
        assert!(may_lend(0, 2));
        assert!(!may_lend(1, 2));
        assert!(!may_lend(0, 1), "a pool of one buffer lends none");
    }

    #[test]
    fn the_pool_keeps_small_buffers_up_to_its_size() {
        let mut pool = SendPool::new(16);
        pool.reuse(Vec::with_capacity(17));
        assert!(pool.bufs.is_empty(), "a large buffer is freed");
        pool.reuse(b"full".to_vec());
        assert_eq!(pool.bufs.len(), 1);
        assert!(pool.bufs[0].is_empty(), "a kept buffer is emptied");
        let taken = pool.take();
        assert!(
            taken.is_empty() && taken.capacity() >= 4,
            "the kept one, empty"
        );
        assert!(pool.take().is_empty(), "a new one when none is kept");
        pool.reuse(taken);
        for _ in 0..100 {
            pool.reuse(Vec::with_capacity(16));
        }
        assert_eq!(pool.bufs.len(), SEND_POOL);
        let mut outbox = Outbox {
            sending: false,
            max_send: 4,
            buf: None,
            pool: &mut pool,
            received: None,
            lent: None,
        };
        assert_eq!(outbox.write(b"x").unwrap(), 1);
        assert_eq!(
            pool.bufs.len(),
            SEND_POOL - 1,
            "the outbox takes a kept one"
        );
    }

    #[test]
    fn the_gate_opens_when_all_arrive_and_says_if_one_failed() {
        let gate = StartGate::new(2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| gate.arrive(true));
            assert!(gate.arrive(true));
            assert!(other.join().unwrap());
        });
        let gate = StartGate::new(2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| gate.arrive(true));
            assert!(!gate.arrive(false));
            assert!(!other.join().unwrap());
        });
        let gate = StartGate::new(3);
        gate.abandon(2);
        assert!(!gate.arrive(true), "abandoned parties fail the start");
        // A party waits for the last one: nothing comes back before it arrives.
        let gate = StartGate::new(2);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| tx.send(gate.arrive(true)).unwrap());
            let early = rx.recv_timeout(Duration::from_millis(50));
            assert!(early.is_err(), "returned before the others arrived");
            assert!(gate.arrive(true));
            assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap());
        });
    }

    #[test]
    fn the_wait_ends_at_the_earliest_wake() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wait_for(None, None, now), None);
        assert_eq!(wait_for(Some(ms(5)), None, now), Some(ms(5)));
        assert_eq!(wait_for(None, Some(now + ms(4)), now), Some(ms(4)));
        assert_eq!(wait_for(Some(ms(9)), Some(now + ms(3)), now), Some(ms(3)));
        assert_eq!(wait_for(Some(ms(2)), Some(now + ms(3)), now), Some(ms(2)));
        assert_eq!(wait_for(None, Some(now - ms(1)), now), Some(ms(0)));
    }

    #[test]
    fn a_limited_multishot_receive_never_brings_more_than_the_room() {
        // The kernel's worst case: receives of `per_turn` until the total is reached or
        // crossed.
        let worst = |(total, per_turn): (u32, u32)| {
            let mut delivered = 0;
            while delivered < total {
                delivered += per_turn;
            }
            // The crossing receive, short of a whole one: at most `total - 1 + per_turn`.
            delivered.max(total - 1 + per_turn)
        };
        assert_eq!(multishot_limits(65536, 16384), (49153, 16384));
        assert_eq!(multishot_limits(100, 16384), (1, 100));
        assert_eq!(multishot_limits(16384, 16384), (1, 16384));
        assert_eq!(multishot_limits(0, 16384), (1, 1));
        for room in [1, 2, 100, 16383, 16384, 16385, 50000, 65536] {
            let limits = multishot_limits(room, 16384);
            assert!(worst(limits) as usize <= room, "room {room}: {limits:?}");
            assert!(limits.1 as usize <= room.min(16384));
        }
    }

    #[test]
    fn a_refusal_is_one_line_naming_the_cause_and_the_models_that_work() {
        let because = |errno| unsupported_because(&io::Error::from_raw_os_error(errno));
        assert!(because(libc::EPERM).starts_with("io_uring is not permitted here (EPERM"));
        assert!(because(libc::ENOSYS).starts_with("this kernel has no io_uring (ENOSYS)"));
        assert!(because(libc::EINVAL).contains("lacks provided-buffer rings (EINVAL"));
        assert!(because(libc::ENOMEM).starts_with("cannot set up io_uring: cannot allocate memory"));
        for errno in [libc::EPERM, libc::ENOSYS, libc::EINVAL, libc::ENOMEM] {
            let line = because(errno);
            assert!(!line.contains('\n'), "{line}");
            assert!(
                line.ends_with(&format!("; models that work here: {OTHER_MODELS}")),
                "{line}"
            );
        }
        // This kernel allows io_uring (else the contract tests say SKIPPED): no refusal.
        if Ring::new(8, 8, 64).is_ok() {
            assert_eq!(probe(), Ok(()));
        }
    }

    #[test]
    fn fault_specs_parse() {
        let faults = Faults::parse("accept-arm=2,enter=boom,junk");
        assert!(faults.accept_arm_fails());
        assert!(faults.accept_arm_fails());
        assert!(!faults.accept_arm_fails());
        assert!(faults.enter_fails_after(b"x boom y"));
        assert!(!faults.enter_fails_after(b"bo om"));
        let none = Faults::parse("enter=");
        assert!(!none.accept_arm_fails());
        assert!(!none.enter_fails_after(b""));
        assert_eq!(none.recv_bufs(), None);
        assert_eq!(Faults::parse("bufs=4").recv_bufs(), Some(4));
        assert_eq!(Faults::parse("bufs=1").recv_bufs(), Some(1));
        assert_eq!(Faults::parse("short-sends=100").send_limit(), Some(100));
        assert_eq!(none.send_limit(), None);
        for refused in ["short-sends=0", "short-sends=-1", "short-sends=x"] {
            assert_eq!(Faults::parse(refused).send_limit(), None, "{refused}");
        }
        for refused in ["bufs=3", "bufs=0", "bufs=65536", "bufs=x"] {
            assert_eq!(Faults::parse(refused).recv_bufs(), None, "{refused}");
        }
    }

    #[test]
    fn accept_failures_pause_then_give_up_and_a_success_resets_them() {
        let mut state = AcceptState::default();
        let now = Instant::now();
        let err = io::Error::from_raw_os_error(libc::EMFILE);
        state.completed(false, Some(&err), now).unwrap();
        assert!(!state.armed);
        assert!(state.wake_at().is_some_and(|at| at > now), "EMFILE pauses");
        state.completed(true, None, now).unwrap();
        assert!(state.armed);
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        state.completed(false, Some(&aborted), now).unwrap();
        assert_eq!(
            state.wake_at(),
            None,
            "a connection gone before accept: at once"
        );
        assert_eq!(state.failures, 0, "neither counts as a failure");
        // Out of descriptors for longer than the failures allowed: paused, never stopped.
        for _ in 0..2 * MAX_ACCEPT_FAILURES {
            state.completed(false, Some(&err), now).unwrap();
            state
                .arm_if_due(now + Duration::from_secs(1), || Ok(()))
                .unwrap();
        }
        assert_eq!(state.failures, 0);
        let einval = io::Error::from_raw_os_error(libc::EINVAL);
        state.completed(false, Some(&einval), now).unwrap();
        assert_eq!(state.failures, 1, "an unexplained error counts");
        assert_eq!(
            state.wake_at(),
            Some(now + accept::OUT_OF_DESCRIPTORS_PAUSE)
        );
        state.completed(true, None, now).unwrap();
        assert_eq!(state.failures, 0);
    }

    #[test]
    fn a_failed_arm_pauses_and_is_retried_and_too_many_stop_the_loop() {
        let mut state = AcceptState::default();
        let mut now = Instant::now();
        let fail = || Err(io::Error::from_raw_os_error(libc::EBADF));
        state.arm_if_due(now, fail).unwrap();
        assert!(!state.armed);
        let until = state.wake_at().unwrap();
        assert_eq!(until, now + accept::OUT_OF_DESCRIPTORS_PAUSE);
        // Not retried during the pause.
        state
            .arm_if_due(now, || panic!("armed during the pause"))
            .unwrap();
        now = until;
        state.arm_if_due(now, || Ok(())).unwrap();
        assert!(state.armed && state.wake_at().is_none());
        state.arm_if_due(now, || panic!("armed twice")).unwrap();
        state.completed(false, None, now).unwrap();
        assert_eq!(state.failures, 0);
        for n in 1..MAX_ACCEPT_FAILURES {
            state.arm_if_due(now, fail).unwrap();
            assert_eq!(state.failures, n);
            now = state.wake_at().unwrap();
        }
        let err = state.arm_if_due(now, fail).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot accept 20 times in a row"),
            "{err}"
        );
    }
}
