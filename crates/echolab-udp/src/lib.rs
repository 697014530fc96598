//! UDP echo (RFC 862) for echolab: server loops in the models that have something to say
//! about datagrams, one reflection guard that every loop obeys, and a UDP load generator
//! that measures what UDP can do to a message (lose, duplicate, reorder, corrupt, delay).
//!
//! UDP has no connections, so the lecture's question "how does the server schedule its
//! connections?" becomes "how does it wait for the next datagram?": blocked in `recvfrom`
//! (iterative), in `poll` (event), in one loop per core with a socket each, its receive
//! waiting for the first datagram of a batch (reactor),
//! in one io_uring per core with a multishot receive armed (uring), or in tokio's runtime
//! (async). Thread- and process-per-connection have nothing to hand
//! out and refuse `--udp` with a one-line reason ([`UdpModel::for_model`]).
//!
//! Architecture invariant: no loop sends a datagram that [`guard::Guard::admit`] has not
//! admitted, and the reply is always the received bytes unchanged (never larger).
//!
//! # Layout
//! - [`UdpServer`]: binds, starts a model's loops, stops them, returns their [`Stats`].
//! - [`guard`]: the reflection guard (reserved and privileged source ports, a token bucket
//!   per source address with a bounded table) and the drop counts by reason.
//! - The models: [`iterative`] (one blocking `recvfrom`/`sendto` at a time), [`event`]
//!   (`poll(2)` then batches), [`reactor`] (N loops, one SO_REUSEPORT socket each,
//!   `recvmmsg` waiting for a batch's first datagram),
//!   [`uring`] (N io_uring loops, one SO_REUSEPORT socket each, multishot `recvmsg`),
//!   [`async_tokio`] (tokio tasks on one socket).
//! - [`batch`]: `recvmmsg`/`sendmmsg` batches for the event and reactor loops.
//! - Load: [`wire`] (the bench datagram: connection id, sequence number, pattern),
//!   [`account`] (the pure accounting: loss, late, duplicates, reordering, corrupt,
//!   RFC 3550 jitter), [`bench`](mod@bench) (the load engine and its report), [`drops`] (the bench
//!   sockets' own receive-queue drops, from `/proc/net/udp`), [`client`]
//!   (`echolab client --udp`).
//! - [`cli`]: the flags of `serve --udp`, `bench --udp` and `client --udp`, their checks,
//!   and the run functions the binary calls.
#![forbid(unsafe_code)]

pub mod account;
pub mod async_tokio;
pub mod batch;
pub mod bench;
pub mod cli;
pub mod client;
pub mod drops;
pub mod event;
pub mod guard;
pub mod iterative;
pub mod reactor;
pub mod uring;
pub mod wire;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use guard::{DropReason, Guard, Policy, Stats};

/// The largest UDP payload over IPv4: 65,535 − 20 (IP header) − 8 (UDP header).
pub const MAX_PAYLOAD_V4: usize = 65_507;

/// The largest UDP payload over IPv6 (without jumbograms): 65,535 − 8.
pub const MAX_PAYLOAD_V6: usize = 65_527;

/// Every receive buffer's size: larger than any UDP payload, so a receive that fills it
/// can only be a truncated one (counted, never echoed).
pub const BUF_LEN: usize = 65_536;

/// How often a loop blocked in a receive looks at the stop flag: shutdown takes at most
/// this long, plus the final drain.
pub const TICK: Duration = Duration::from_millis(100);

/// The receive-queue size asked for (the kernel caps it at net.core.rmem_max): a burst of
/// datagrams waits in the kernel instead of being dropped there, unseen and uncounted.
const RECV_BUFFER: usize = 4 << 20;

// A receive that fills the buffer must mean truncation: no payload may fill it.
const _: () = assert!(BUF_LEN > MAX_PAYLOAD_V6 && MAX_PAYLOAD_V6 > MAX_PAYLOAD_V4);

/// The largest payload to `addr`: an IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]`)
/// is reached over IPv4, so it takes IPv4's limit (a larger send fails with EMSGSIZE).
pub fn max_payload(addr: &SocketAddr) -> usize {
    if addr.ip().to_canonical().is_ipv4() {
        MAX_PAYLOAD_V4
    } else {
        MAX_PAYLOAD_V6
    }
}

/// How a UDP server waits for datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpModel {
    /// One datagram at a time: a blocking `recvfrom`, then `sendto` (the natural UDP server).
    Iterative,
    /// `poll(2)` on the socket, then batches of `recvmmsg`/`sendmmsg`.
    Event,
    /// N mio event loops, each with its own SO_REUSEPORT socket, batched.
    Reactor,
    /// N io_uring loops, each with its own SO_REUSEPORT socket: multishot `recvmsg` into
    /// provided buffers, a turn's replies in one `sendmmsg` from those buffers.
    Uring,
    /// tokio's multi-threaded runtime: N tasks receiving on one shared socket.
    Async,
}

impl UdpModel {
    /// The UDP model for the TCP model named `name`, or the one-line reason it serves no
    /// UDP.
    pub fn for_model(name: &str) -> Result<UdpModel, String> {
        match name {
            "iterative" => Ok(UdpModel::Iterative),
            "event" => Ok(UdpModel::Event),
            "reactor" => Ok(UdpModel::Reactor),
            "async" => Ok(UdpModel::Async),
            "uring" => Ok(UdpModel::Uring),
            "thread" | "process" | "prethreaded" => Err(format!(
                "model {name} serves no UDP: it hands each connection to a {}, and UDP has no connections to hand out (use iterative, event, reactor, uring or async)",
                if name == "process" { "process" } else { "thread" }
            )),
            other => Err(format!("unknown model {other:?}")),
        }
    }

    /// The model's name, as `--model` spells it.
    pub fn name(self) -> &'static str {
        match self {
            UdpModel::Iterative => "iterative",
            UdpModel::Event => "event",
            UdpModel::Reactor => "reactor",
            UdpModel::Uring => "uring",
            UdpModel::Async => "async",
        }
    }
}

impl fmt::Display for UdpModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a UDP server needs, already checked.
#[derive(Debug, Clone)]
pub struct UdpConfig {
    pub model: UdpModel,
    /// The address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Loops (reactor, uring) or tasks (async); default: one per CPU. Ignored by iterative and
    /// event, which have one loop by definition.
    pub workers: Option<usize>,
    pub policy: Policy,
    /// An IPv6 `listen` address takes no IPv4 datagrams (IPV6_V6ONLY, serve's
    /// `--ipv6-only`); otherwise the kernel's default holds, as for TCP: on Linux `[::]`
    /// is dual-stack and IPv4 sources appear as `[::ffff:a.b.c.d]`.
    pub ipv6_only: bool,
}

/// Why a UDP server could not start or stopped with an error.
#[derive(Debug)]
pub enum UdpError {
    /// The address could not be bound.
    Bind { addr: SocketAddr, source: io::Error },
    /// A loop failed (a receive error other than the transient ones).
    Io(io::Error),
    /// The model cannot run on this machine (io_uring refused by the kernel): one line,
    /// naming the models that can.
    Unsupported { model: UdpModel, reason: String },
}

impl UdpError {
    /// The exit status: 2 for a setting that cannot work (bind), 1 for a failure while
    /// serving.
    pub fn exit_code(&self) -> u8 {
        match self {
            UdpError::Bind { .. } | UdpError::Unsupported { .. } => 2,
            UdpError::Io(_) => 1,
        }
    }
}

impl fmt::Display for UdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpError::Bind { addr, source } => {
                let why = echolab_cli::describe_io(source);
                write!(f, "cannot bind udp {addr}: {why}")
            }
            UdpError::Io(err) => write!(f, "udp: {}", echolab_cli::describe_io(err)),
            UdpError::Unsupported { model, reason } => {
                write!(f, "model {model} cannot run here (udp): {reason}")
            }
        }
    }
}

impl std::error::Error for UdpError {}

/// A UDP socket bound to `addr`, with SO_REUSEPORT when `reuse_port` (the reactor's
/// sockets share one port), the kernel's default family rule (dual-stack `[::]` on
/// Linux, as a TCP listener), and a large receive queue.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket, UdpError> {
    bind_family(addr, reuse_port, false)
}

/// [`bind`], IPv6-only (IPV6_V6ONLY) for an IPv6 `addr` when `ipv6_only`.
fn bind_family(addr: SocketAddr, reuse_port: bool, ipv6_only: bool) -> Result<UdpSocket, UdpError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| UdpError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() && ipv6_only {
        socket.set_only_v6(true).map_err(bind_err)?;
    }
    if reuse_port {
        socket.set_reuse_port(true).map_err(bind_err)?;
    }
    // Best effort: a smaller queue only means the kernel drops sooner under a burst.
    let _ = socket.set_recv_buffer_size(RECV_BUFFER);
    socket.bind(&addr.into()).map_err(bind_err)?;
    Ok(socket.into())
}

/// The first socket of a server on `addr`: [`bind`], but with `reuse_port` and a port
/// given, a plain bind first, so that a port another server already serves is "address
/// already in use". (Linux lets a second SO_REUSEPORT socket of the same user bind it,
/// and the two servers would split the datagrams without a word, as `net::bind` of
/// echolab-server explains for TCP.) The loops' other sockets then bind without it.
pub fn bind_first(
    addr: SocketAddr,
    reuse_port: bool,
    ipv6_only: bool,
) -> Result<UdpSocket, UdpError> {
    if reuse_port && addr.port() != 0 {
        drop(bind_family(addr, false, ipv6_only)?);
    }
    bind_family(addr, reuse_port, ipv6_only)
}

/// The default number of loops: one per CPU.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A socket passed by the service manager (socket activation), for the next
/// [`UdpServer::start`] to serve instead of binding one.
static PASSED: Mutex<Option<UdpSocket>> = Mutex::new(None);

/// Makes the next [`UdpServer::start`] serve `socket` (passed by the service manager)
/// instead of binding `--listen`. The reactor then runs one loop: the others could not
/// share the port without `SO_REUSEPORT` on the passed socket.
pub fn serve_passed_socket(socket: UdpSocket) {
    *PASSED.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket);
}

/// Whether a passed socket waits for the next [`UdpServer::start`] (which then binds
/// nothing, so `--listen` and `--ipv6-only` do not apply).
pub(crate) fn passed_pending() -> bool {
    PASSED.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// The guard of the UDP server started last in this process, for [`live_stats`].
static LIVE: Mutex<Option<std::sync::Weak<Mutex<Guard>>>> = Mutex::new(None);

/// The counts of the UDP server started last in this process, while it runs (the
/// operator's figures: `kill -USR1` and `--metrics` of `echolab serve --udp`).
pub fn live_stats() -> Option<Stats> {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    let guard = live.as_ref()?.upgrade()?;
    let stats = guard
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .stats()
        .clone();
    Some(stats)
}

/// A running UDP server: its loops run on threads of their own until [`UdpServer::stop`]
/// (or the stop flag it was given) and [`UdpServer::join`].
#[derive(Debug)]
pub struct UdpServer {
    addr: SocketAddr,
    /// Set to stop every loop; loops look at it at least every [`TICK`].
    stop: Arc<AtomicBool>,
    /// The loops; each returns its first fatal error.
    loops: Vec<JoinHandle<io::Result<()>>>,
    guard: Arc<Mutex<Guard>>,
}

impl UdpServer {
    /// Binds `config.listen` and starts the model's loops. The socket is bound before this
    /// returns, so a bind error is returned here, and [`UdpServer::local_addr`] is final.
    pub fn start(config: &UdpConfig, stop: Arc<AtomicBool>) -> Result<UdpServer, UdpError> {
        let guard = Arc::new(Mutex::new(Guard::new(config.policy)));
        *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&guard));
        let workers = config.workers.unwrap_or_else(default_workers).max(1);
        // The models with a loop per core give each loop its own socket on the same port
        // (not a socket the service manager passed: that one is shared by every loop).
        let per_loop = matches!(config.model, UdpModel::Reactor | UdpModel::Uring);
        let passed = PASSED.lock().unwrap_or_else(|e| e.into_inner()).take();
        let is_passed = passed.is_some();
        let first = match passed {
            Some(socket) => socket,
            None => bind_first(config.listen, per_loop, config.ipv6_only)?,
        };
        let addr = first.local_addr().map_err(UdpError::Io)?;
        let mut sockets = vec![first];
        if per_loop && !is_passed {
            // The other loops bind the port the first one got.
            for _ in 1..workers {
                sockets.push(bind_family(addr, true, config.ipv6_only)?);
            }
        }
        let mut loops = Vec::new();
        // Each uring loop makes its ring on its own thread (the ring accepts submissions
        // only from there) and says here whether the kernel allowed it.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(sockets.len());
        for (loop_idx, socket) in sockets.into_iter().enumerate() {
            let guard = Arc::clone(&guard);
            let stop = Arc::clone(&stop);
            let ready = ready_tx.clone();
            let model = config.model;
            let handle = std::thread::Builder::new()
                .name(format!("udp-{model}-{loop_idx}"))
                .spawn(move || match model {
                    UdpModel::Iterative => iterative::serve(socket, &guard, &stop),
                    UdpModel::Event => event::serve(socket, &guard, &stop),
                    UdpModel::Reactor => reactor::serve(socket, &guard, &stop),
                    UdpModel::Uring => uring::serve(socket, &guard, &stop, ready),
                    UdpModel::Async => async_tokio::serve(socket, workers, guard, stop),
                })
                .map_err(UdpError::Io)?;
            loops.push(handle);
        }
        drop(ready_tx);
        let server = UdpServer {
            addr,
            stop,
            loops,
            guard,
        };
        if config.model == UdpModel::Uring {
            for _ in 0..server.loops.len() {
                match ready_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        return Err(UdpError::Unsupported {
                            model: config.model,
                            reason: err.to_string(),
                        })
                    }
                    Err(_) => {
                        return Err(UdpError::Io(io::Error::other("a udp loop ended at start")))
                    }
                }
            }
        }
        Ok(server)
    }

    /// The bound address (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loops serving (reactor: one per socket).
    pub fn n_loops(&self) -> usize {
        self.loops.len()
    }

    /// Asks every loop to stop (they notice within [`TICK`]).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether the stop flag is set.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stats()
            .clone()
    }

    /// Stops the loops, waits for them, and returns the final counts, or the first loop's
    /// error.
    pub fn join(self) -> Result<Stats, UdpError> {
        self.stop();
        self.wait()
    }

    /// Waits for the loops to end on their own (the stop flag given to
    /// [`UdpServer::start`], set by a signal), then returns as [`UdpServer::join`].
    pub fn wait(mut self) -> Result<Stats, UdpError> {
        let mut first_err = None;
        for handle in self.loops.drain(..) {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a udp loop panicked")));
            if let Err(err) = result {
                first_err.get_or_insert(UdpError::Io(err));
            }
        }
        match first_err {
            Some(err) => Err(err),
            None => Ok(self.stats()),
        }
    }
}

impl Drop for UdpServer {
    /// No loop outlives its server.
    fn drop(&mut self) {
        self.stop();
        for handle in self.loops.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Whether a receive error only means "nothing yet" (a timeout, a signal, or an ICMP
/// error from an earlier send, which Linux reports on the next call).
pub(crate) fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
    )
}

/// The shared step of the one-datagram-at-a-time loops (iterative, async): judge a
/// received datagram and say whether to echo it. `len` is what the receive returned.
pub(crate) fn judge(guard: &Mutex<Guard>, src: SocketAddr, len: usize) -> bool {
    let now = std::time::Instant::now();
    let mut guard = guard.lock().unwrap_or_else(|e| e.into_inner());
    if len >= BUF_LEN {
        guard.count_drop(DropReason::Truncated, src, now);
        return false;
    }
    guard.admit(src, now).is_ok()
}

/// Counts the outcome of one echo's send.
pub(crate) fn sent(guard: &Mutex<Guard>, src: SocketAddr, len: usize, result: io::Result<usize>) {
    let mut guard = guard.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(n) if n == len => guard.echoed(len, src),
        _ => guard.count_drop(DropReason::SendFailed, src, std::time::Instant::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_without_connections_refuse_with_one_line() {
        for name in ["thread", "process", "prethreaded"] {
            let reason = UdpModel::for_model(name).unwrap_err();
            assert!(reason.contains(name) && !reason.contains('\n'), "{reason}");
        }
        for name in ["iterative", "event", "reactor", "uring", "async"] {
            assert_eq!(UdpModel::for_model(name).unwrap().name(), name);
        }
    }

    #[test]
    fn the_buffer_holds_the_largest_datagram_of_either_family_with_room_to_spare() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(max_payload(&v4), 65_507);
        assert_eq!(max_payload(&v6), 65_527);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert_eq!(max_payload(&mapped), 65_507, "an IPv4 path");
    }

    #[test]
    fn a_port_another_server_serves_is_refused_not_shared() {
        // Reactor and uring bind SO_REUSEPORT sockets; a second server on the port must
        // not join the first's group (the kernel would split the datagrams between them).
        for model in [UdpModel::Reactor, UdpModel::Iterative] {
            let config = |listen| UdpConfig {
                model: UdpModel::Reactor,
                listen,
                workers: Some(2),
                policy: Policy::default(),
                ipv6_only: false,
            };
            let first = UdpServer::start(
                &config("127.0.0.1:0".parse().unwrap()),
                Arc::new(AtomicBool::new(false)),
            )
            .unwrap();
            let mut second = config(first.local_addr());
            second.model = model;
            match UdpServer::start(&second, Arc::new(AtomicBool::new(false))) {
                Err(UdpError::Bind { source, .. }) => {
                    assert_eq!(source.kind(), io::ErrorKind::AddrInUse, "{model}: {source}")
                }
                other => panic!("{model}: a second server started: {other:?}"),
            }
            // Its own loops still share the port: two loops, one port.
            assert_eq!(first.n_loops(), 2);
        }
    }

    #[test]
    fn truncation_is_a_drop_never_an_echo() {
        let guard = Mutex::new(Guard::new(Policy::default()));
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert!(!judge(&guard, src, BUF_LEN));
        assert!(judge(&guard, src, BUF_LEN - 1));
        let stats = guard.lock().unwrap().stats().clone();
        assert_eq!(stats.dropped(DropReason::Truncated), 1);
        assert_eq!(stats.received, 2);
    }

    #[test]
    fn a_short_or_failed_send_is_counted_as_send_failed() {
        let guard = Mutex::new(Guard::new(Policy::default()));
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        sent(&guard, src, 10, Ok(10));
        sent(&guard, src, 10, Ok(9));
        sent(
            &guard,
            src,
            10,
            Err(io::ErrorKind::ConnectionRefused.into()),
        );
        let stats = guard.lock().unwrap().stats().clone();
        assert_eq!(stats.echoed, 1);
        assert_eq!(stats.dropped(DropReason::SendFailed), 2);
    }
}
