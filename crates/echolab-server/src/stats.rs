//! The server's figures for operators: one [`Stats`] of atomic counters for the whole
//! process, fed by the shared layer (the open and close log lines of [`crate::conn`], the
//! cap's refusals, the accept pause), read by `kill -USR1` (one line on stderr), the
//! periodic summary at info level, and `--metrics` ([`crate::metrics`]).
//!
//! No lock on the echo path. Bytes are counted as they move (an open connection's bytes
//! show at once), by [`crate::echo::Echo`], into per-thread stripes: each thread adds to a
//! cache line of its own with one relaxed add per read or write, and a reader sums the
//! stripes. The rest is counted per connection (open, close, refusal). The counters live in
//! a `MAP_SHARED` mapping ([`echolab_sys::shared`]), so the process model's children,
//! forked after [`global`] first ran, add to the same counters the parent reports.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::admission::Refusal;
use crate::conn::End;
use crate::echo::EchoError;

/// One counter of [`Stats`]; its index in the shared array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counter {
    Opened,
    Closed,
    RefusedFull,
    RefusedPerPeer,
    Dropped,
    AcceptPauses,
    EndPeerClosed,
    EndIdle,
    EndShutdown,
    EndReset,
    EndBrokenPipe,
    EndLineTooLong,
    EndIoError,
    /// Not a figure: the next byte stripe to hand out (see [`stripe`]).
    NextStripe,
}

const N_COUNTERS: usize = Counter::NextStripe as usize + 1;

/// `AtomicU64`s in a cache line: a stripe's size, and the counters' region rounded up to it
/// so that the stripes after it start on a line of their own.
const LINE_WORDS: usize = 8;

/// Stripes of byte counters. Threads take them in turn (the 33rd shares the first's): a
/// reactor's or uring's loops, up to this many, never write to the same cache line.
const STRIPES: usize = 32;

/// Words before the first stripe.
const COUNTER_WORDS: usize = N_COUNTERS.div_ceil(LINE_WORDS) * LINE_WORDS;

/// Words of the whole mapping.
const ALL_WORDS: usize = COUNTER_WORDS + STRIPES * LINE_WORDS;

/// The word of a stripe that counts bytes received, and bytes sent.
const STRIPE_IN: usize = 0;
const STRIPE_OUT: usize = 1;

/// This thread's stripe: threads take them in the order they first count, from a counter
/// in the shared mapping, so the process model's children take different stripes too (a
/// counter in process memory would start every forked child at the same one).
fn stripe() -> usize {
    thread_local! {
        static STRIPE: usize = (global().counters[Counter::NextStripe as usize]
            .fetch_add(1, Ordering::Relaxed) as usize)
            % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

/// How a connection ended, as the figures count it: the three ordinary ends, then the
/// errors by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    PeerClosed,
    Idle,
    Shutdown,
    /// ECONNRESET: the peer reset the connection.
    Reset,
    /// EPIPE: the peer closed before taking its echo.
    BrokenPipe,
    /// Lines mode: a line past `--max-line` (with `--long-line close`).
    LineTooLong,
    /// Any other socket error.
    IoError,
}

impl EndKind {
    /// Every kind, in the order of the stats line.
    pub const ALL: [EndKind; 7] = [
        EndKind::PeerClosed,
        EndKind::Idle,
        EndKind::Shutdown,
        EndKind::Reset,
        EndKind::BrokenPipe,
        EndKind::LineTooLong,
        EndKind::IoError,
    ];

    /// The kind of `end`.
    pub fn of(end: &End) -> EndKind {
        match end {
            End::PeerClosed => EndKind::PeerClosed,
            End::Idle(_) => EndKind::Idle,
            End::Shutdown => EndKind::Shutdown,
            End::Failed(EchoError::LineTooLong { .. }) => EndKind::LineTooLong,
            End::Failed(EchoError::Io(err)) => match err.kind() {
                io::ErrorKind::ConnectionReset => EndKind::Reset,
                io::ErrorKind::BrokenPipe => EndKind::BrokenPipe,
                _ => EndKind::IoError,
            },
        }
    }

    /// The kind's name, as the stats line and the `reason` label spell it.
    pub fn name(self) -> &'static str {
        match self {
            EndKind::PeerClosed => "peer_closed",
            EndKind::Idle => "idle",
            EndKind::Shutdown => "shutdown",
            EndKind::Reset => "reset",
            EndKind::BrokenPipe => "broken_pipe",
            EndKind::LineTooLong => "line_too_long",
            EndKind::IoError => "io_error",
        }
    }

    /// Whether this end is an error (the others are a connection's ordinary ends).
    pub fn is_error(self) -> bool {
        !matches!(
            self,
            EndKind::PeerClosed | EndKind::Idle | EndKind::Shutdown
        )
    }

    fn counter(self) -> Counter {
        match self {
            EndKind::PeerClosed => Counter::EndPeerClosed,
            EndKind::Idle => Counter::EndIdle,
            EndKind::Shutdown => Counter::EndShutdown,
            EndKind::Reset => Counter::EndReset,
            EndKind::BrokenPipe => Counter::EndBrokenPipe,
            EndKind::LineTooLong => Counter::EndLineTooLong,
            EndKind::IoError => Counter::EndIoError,
        }
    }
}

/// The server's counters, one set per process (see [`global`]).
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    /// [`COUNTER_WORDS`] counters (by [`Counter`]), then [`STRIPES`] stripes of
    /// [`LINE_WORDS`] (bytes in, bytes out, unused), each on a cache line of its own.
    counters: &'static [AtomicU64],
}

/// The process's [`Stats`], created at the first call. [`crate::serve`] calls it before
/// any model runs, so that the process model's children share the parent's counters.
pub fn global() -> &'static Stats {
    static GLOBAL: OnceLock<Stats> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        // Without a shared mapping (no memory), the counters are this process's own: the
        // process model's children would then go uncounted, nothing else changes.
        // (The fallback's stripes may share cache lines: only a slower count.)
        let counters = echolab_sys::shared::shared_counters(ALL_WORDS)
            .unwrap_or_else(|_| Box::leak((0..ALL_WORDS).map(|_| AtomicU64::new(0)).collect()));
        Stats {
            started: Instant::now(),
            counters,
        }
    })
}

impl Stats {
    fn add(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// A connection was admitted and is being served.
    pub fn opened(&self) {
        self.add(Counter::Opened, 1);
    }

    /// `n` bytes were received from a connection (into this thread's stripe).
    pub fn received(&self, n: u64) {
        self.counters[COUNTER_WORDS + stripe() * LINE_WORDS + STRIPE_IN]
            .fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes were sent to a connection (into this thread's stripe).
    pub fn sent(&self, n: u64) {
        self.counters[COUNTER_WORDS + stripe() * LINE_WORDS + STRIPE_OUT]
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The sum of one word of every stripe.
    fn stripes_sum(&self, word: usize) -> u64 {
        self.counters[COUNTER_WORDS..]
            .chunks_exact(LINE_WORDS)
            .map(|stripe| stripe[word].load(Ordering::Relaxed))
            .sum()
    }

    /// A connection closed, ending as `end` (its bytes were counted as they moved).
    pub fn closed(&self, end: EndKind) {
        self.add(end.counter(), 1);
        // Last: a reader that sees the close sees how it ended.
        self.add(Counter::Closed, 1);
    }

    /// A connection was refused by the cap.
    pub fn refused(&self, why: Refusal) {
        match why {
            Refusal::Full { .. } => self.add(Counter::RefusedFull, 1),
            Refusal::PerPeer { .. } => self.add(Counter::RefusedPerPeer, 1),
        }
    }

    /// A connection accepted then dropped before it was served (it could not be
    /// configured, or no thread or process could be started for it).
    pub fn dropped(&self) {
        self.add(Counter::Dropped, 1);
    }

    /// Accepting paused (out of descriptors or memory).
    pub fn accept_paused(&self) {
        self.add(Counter::AcceptPauses, 1);
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        let closed = self.get(Counter::Closed);
        // Read the ends after the closes (see `closed`).
        let ends = EndKind::ALL.map(|kind| (kind, self.get(kind.counter())));
        Snapshot {
            uptime: self.started.elapsed(),
            opened: self.get(Counter::Opened),
            closed,
            refused_full: self.get(Counter::RefusedFull),
            refused_per_peer: self.get(Counter::RefusedPerPeer),
            dropped: self.get(Counter::Dropped),
            bytes_in: self.stripes_sum(STRIPE_IN),
            bytes_out: self.stripes_sum(STRIPE_OUT),
            accept_pauses: self.get(Counter::AcceptPauses),
            ends,
            udp: udp_figures(),
        }
    }
}

/// A UDP server's figures (from `echolab-udp`'s guard, which counts them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpFigures {
    pub received: u64,
    pub echoed: u64,
    /// Drops by reason (the guard's `DropReason` names).
    pub dropped: Vec<(&'static str, u64)>,
}

type UdpSource = Box<dyn Fn() -> Option<UdpFigures> + Send + Sync>;

static UDP_SOURCE: OnceLock<UdpSource> = OnceLock::new();

/// Makes the figures include a UDP server's: `source` is asked at every report (the
/// binary wires `echolab-udp` in here; the first call wins).
pub fn set_udp_source(source: impl Fn() -> Option<UdpFigures> + Send + Sync + 'static) {
    let _ = UDP_SOURCE.set(Box::new(source));
}

fn udp_figures() -> Option<UdpFigures> {
    UDP_SOURCE.get().and_then(|source| source())
}

/// The figures at one instant, plain numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uptime: Duration,
    /// Connections admitted since the start.
    pub opened: u64,
    /// Connections closed since the start.
    pub closed: u64,
    /// Refused by `--max-conns`.
    pub refused_full: u64,
    /// Refused by `--max-conns-per-ip`.
    pub refused_per_peer: u64,
    /// Accepted, then dropped before being served.
    pub dropped: u64,
    /// Bytes received and sent so far, by open connections too.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub accept_pauses: u64,
    /// Closed connections by how they ended.
    pub ends: [(EndKind, u64); 7],
    pub udp: Option<UdpFigures>,
}

impl Snapshot {
    /// Connections open now (a close is counted after its open, so never negative).
    pub fn open(&self) -> u64 {
        self.opened.saturating_sub(self.closed)
    }

    /// Connections refused, for any reason.
    pub fn refused(&self) -> u64 {
        self.refused_full + self.refused_per_peer
    }

    /// Closed connections that ended in an error.
    pub fn errors(&self) -> u64 {
        self.ends
            .iter()
            .filter(|(kind, _)| kind.is_error())
            .map(|(_, n)| n)
            .sum()
    }
}

impl fmt::Display for Snapshot {
    /// One line: `stats: up 12.5s; conns 2 open, 5 total, 1 refused (max-conns 1,
    /// max-conns-per-ip 0), 0 dropped; bytes 300 in, 300 out; accept pauses 0; ends
    /// peer_closed 3, idle 0, shutdown 0; errors 0 (reset 0, ...)[; udp ...]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ends = |errors: bool| {
            self.ends
                .iter()
                .filter(|(kind, _)| kind.is_error() == errors)
                .map(|(kind, n)| format!("{} {n}", kind.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "stats: up {:.1}s; conns {} open, {} total, {} refused (max-conns {}, max-conns-per-ip {}), {} dropped; bytes {} in, {} out; accept pauses {}; ends {}; errors {} ({})",
            self.uptime.as_secs_f64(),
            self.open(),
            self.opened,
            self.refused(),
            self.refused_full,
            self.refused_per_peer,
            self.dropped,
            self.bytes_in,
            self.bytes_out,
            self.accept_pauses,
            ends(false),
            self.errors(),
            ends(true),
        )?;
        if let Some(udp) = &self.udp {
            let total: u64 = udp.dropped.iter().map(|(_, n)| n).sum();
            let reasons: Vec<String> = udp
                .dropped
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            write!(
                f,
                "; udp {} received, {} echoed, {total} dropped ({})",
                udp.received,
                udp.echoed,
                reasons.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The default spacing of the periodic summary at info level (`--stats-interval`).
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// SIGUSR1 as a readable pipe (the read end; the handler owns the write end), installed
/// once per process by [`listen_for_usr1`]. Two descriptors in all: a server out of
/// descriptors has none to spare, so a [`ReporterThread`] is woken to stop by a SIGUSR1
/// too.
static USR1: OnceLock<UnixStream> = OnceLock::new();

/// Makes SIGUSR1 ask for a stats line instead of ending the process (its default). The
/// handler only writes a byte to a pipe; a [`Reporter`] prints. Idempotent.
pub fn listen_for_usr1() -> io::Result<()> {
    // The uptime's clock starts here at the latest: a server that listens for SIGUSR1 is
    // serving (a `--udp-only` server never calls `serve`, which starts it otherwise).
    global();
    if USR1.get().is_some() {
        return Ok(());
    }
    let (read_end, write_end) = UnixStream::pair()?;
    read_end.set_nonblocking(true)?;
    write_end.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(libc::SIGUSR1, write_end)?;
    let _ = USR1.set(read_end);
    Ok(())
}

/// Prints the stats line on SIGUSR1 (on stderr, whatever the log level) and the summary
/// every `interval` (at info level). Runs on a thread of its own ([`Reporter::spawn`]),
/// or inside the loop of a model that may not start threads (process).
#[derive(Debug)]
pub struct Reporter {
    usr1: Option<&'static UnixStream>,
    interval: Option<Duration>,
    next_summary: Option<Instant>,
}

impl Reporter {
    /// A reporter for the SIGUSR1 pipe of [`listen_for_usr1`] (none if it was not
    /// installed) and a summary every `interval` (`None`: never).
    pub fn new(interval: Option<Duration>) -> Reporter {
        Reporter {
            usr1: USR1.get(),
            interval,
            next_summary: interval.and_then(|i| Instant::now().checked_add(i)),
        }
    }

    /// The SIGUSR1 pipe, to poll for readability.
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.usr1.as_ref().map(|pipe| pipe.as_fd())
    }

    /// How long a poll may wait before the next summary is due (`None`: no summary).
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.next_summary
            .map(|due| due.saturating_duration_since(now))
    }

    /// After a poll: prints the stats line if SIGUSR1 came (once, however many came) and
    /// the summary if it is due.
    pub fn on_wake(&mut self, now: Instant) {
        if let Some(pipe) = self.usr1 {
            let mut buf = [0u8; 64];
            let mut signalled = false;
            while matches!((&*pipe).read(&mut buf), Ok(n) if n > 0) {
                signalled = true;
            }
            if signalled {
                // One write: worker processes share stderr, and eprintln! writes in pieces.
                let line = format!("echolab: {}\n", global().snapshot());
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            }
        }
        if let (Some(due), Some(interval)) = (self.next_summary, self.interval) {
            if now >= due {
                log::info!("{}", global().snapshot());
                self.next_summary = now.checked_add(interval);
            }
        }
    }

    /// Runs this reporter on a thread until the returned handle is dropped.
    pub fn spawn(mut self) -> io::Result<ReporterThread> {
        if self.usr1.is_none() {
            // Its stop is a SIGUSR1 (see `ReporterThread`).
            return Err(io::Error::other("SIGUSR1 is not listened for"));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || loop {
                let now = Instant::now();
                let timeout = self.timeout(now).map_or(PollTimeout::NONE, |t| {
                    PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX)
                });
                let mut fds: Vec<PollFd<'_>> = self
                    .fd()
                    .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                    .into_iter()
                    .collect();
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return,
                }
                drop(fds);
                // Before reading the pipe: the stop's wake-up byte is not a SIGUSR1.
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                self.on_wake(Instant::now());
            })?;
        Ok(ReporterThread {
            stop,
            thread: Some(thread),
        })
    }
}

/// A [`Reporter`] running on its own thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct ReporterThread {
    /// Set, then SIGUSR1 raised (its handler writes the pipe the thread polls), to stop
    /// the thread.
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ReporterThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The thread polls the SIGUSR1 pipe only if the handler is installed.
        if USR1.get().is_some() {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGUSR1);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            uptime: Duration::from_millis(12_345),
            opened: 5,
            closed: 3,
            refused_full: 1,
            refused_per_peer: 2,
            dropped: 0,
            bytes_in: 300,
            bytes_out: 299,
            accept_pauses: 4,
            ends: EndKind::ALL.map(|kind| (kind, if kind.is_error() { 1 } else { 0 })),
            udp: None,
        }
    }

    #[test]
    fn the_line_says_every_figure() {
        let line = snapshot().to_string();
        assert_eq!(
            line,
            "stats: up 12.3s; conns 2 open, 5 total, 3 refused (max-conns 1, max-conns-per-ip 2), 0 dropped; bytes 300 in, 299 out; accept pauses 4; ends peer_closed 0, idle 0, shutdown 0; errors 4 (reset 1, broken_pipe 1, line_too_long 1, io_error 1)"
        );
        let mut with_udp = snapshot();
        with_udp.udp = Some(UdpFigures {
            received: 10,
            echoed: 7,
            dropped: vec![("reserved-port", 2), ("rate-limited", 1)],
        });
        assert!(with_udp
            .to_string()
            .ends_with("; udp 10 received, 7 echoed, 3 dropped (reserved-port 2, rate-limited 1)"));
    }

    #[test]
    fn ends_are_classified_by_kind() {
        let io = |kind: io::ErrorKind| End::Failed(EchoError::Io(kind.into()));
        assert_eq!(EndKind::of(&End::PeerClosed), EndKind::PeerClosed);
        assert_eq!(EndKind::of(&End::Idle(Duration::ZERO)), EndKind::Idle);
        assert_eq!(EndKind::of(&End::Shutdown), EndKind::Shutdown);
        assert_eq!(
            EndKind::of(&io(io::ErrorKind::ConnectionReset)),
            EndKind::Reset
        );
        assert_eq!(
            EndKind::of(&io(io::ErrorKind::BrokenPipe)),
            EndKind::BrokenPipe
        );
        assert_eq!(EndKind::of(&io(io::ErrorKind::TimedOut)), EndKind::IoError);
        assert_eq!(
            EndKind::of(&End::Failed(EchoError::LineTooLong { limit: 1 })),
            EndKind::LineTooLong
        );
    }

    /// A Stats of its own (the global one is shared by the other tests of this binary).
    fn private_stats() -> Stats {
        Stats {
            started: Instant::now(),
            counters: Box::leak((0..ALL_WORDS).map(|_| AtomicU64::new(0)).collect()),
        }
    }

    #[test]
    fn bytes_count_per_thread_stripe_and_add_up_across_threads() {
        let stats = private_stats();
        let stripes: Vec<usize> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4u64)
                .map(|i| {
                    let stats = &stats;
                    scope.spawn(move || {
                        for _ in 0..1000 {
                            stats.received(i + 1);
                            stats.sent(1);
                        }
                        stripe()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        // 1000 x (1 + 2 + 3 + 4) in, 4000 out, whatever the stripes.
        let snap = stats.snapshot();
        assert_eq!((snap.bytes_in, snap.bytes_out), (10_000, 4000));
        // Threads that start one after another take different stripes.
        let mut distinct = stripes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{stripes:?}");
        // Each stripe is a cache line of its own, after the counters.
        assert_eq!(COUNTER_WORDS % LINE_WORDS, 0);
        const { assert!(COUNTER_WORDS >= N_COUNTERS) };
        for stripe in stripes {
            let word = |w: usize| {
                stats.counters[COUNTER_WORDS + stripe * LINE_WORDS + w].load(Ordering::Relaxed)
            };
            assert!(
                word(STRIPE_IN) > 0 && word(STRIPE_OUT) == 1000,
                "stripe {stripe}"
            );
        }
    }

    #[test]
    fn counters_add_up_by_kind() {
        let stats = private_stats();
        for _ in 0..3 {
            stats.opened();
        }
        stats.received(10);
        stats.sent(9);
        stats.closed(EndKind::PeerClosed);
        stats.received(5);
        stats.sent(5);
        stats.closed(EndKind::Reset);
        stats.refused(Refusal::Full { max_conns: 1 });
        stats.refused(Refusal::PerPeer { max_per_peer: 1 });
        stats.refused(Refusal::PerPeer { max_per_peer: 1 });
        stats.dropped();
        stats.accept_paused();
        let snap = stats.snapshot();
        assert_eq!((snap.opened, snap.closed, snap.open()), (3, 2, 1));
        assert_eq!((snap.bytes_in, snap.bytes_out), (15, 14));
        assert_eq!((snap.refused_full, snap.refused_per_peer), (1, 2));
        assert_eq!((snap.dropped, snap.accept_pauses), (1, 1));
        assert_eq!(snap.errors(), 1);
        assert_eq!(snap.ends[0], (EndKind::PeerClosed, 1));
        assert_eq!(snap.ends[3], (EndKind::Reset, 1));
    }

    #[test]
    fn usr1_is_listened_for_and_a_reporter_thread_ends_when_dropped() {
        listen_for_usr1().unwrap();
        assert!(USR1.get().is_some());
        let reporter = Reporter::new(None);
        assert!(reporter.fd().is_some());
        let running = reporter.spawn().unwrap();
        let stop = Arc::downgrade(&running.stop);
        drop(running);
        // Joined: the thread's own handle on the flag is gone with it.
        assert!(
            stop.upgrade().is_none(),
            "the stats thread outlived its handle"
        );
    }

    #[test]
    fn the_udp_source_is_asked_at_every_snapshot() {
        let figures = UdpFigures {
            received: 3,
            echoed: 2,
            dropped: vec![("truncated", 1)],
        };
        let answer = figures.clone();
        set_udp_source(move || Some(answer.clone()));
        assert_eq!(global().snapshot().udp, Some(figures));
    }

    #[test]
    fn the_summary_is_due_after_its_interval_and_not_before() {
        let mut reporter = Reporter {
            usr1: None,
            interval: Some(Duration::from_secs(60)),
            next_summary: None,
        };
        let t0 = Instant::now();
        reporter.next_summary = Some(t0 + Duration::from_secs(60));
        assert_eq!(reporter.timeout(t0), Some(Duration::from_secs(60)));
        reporter.on_wake(t0 + Duration::from_secs(59));
        assert_eq!(reporter.next_summary, Some(t0 + Duration::from_secs(60)));
        reporter.on_wake(t0 + Duration::from_secs(61));
        assert_eq!(reporter.next_summary, Some(t0 + Duration::from_secs(121)));
        let never = Reporter::new(None);
        assert_eq!(never.timeout(t0), None);
    }
}
