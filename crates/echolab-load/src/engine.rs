//! The load engine: worker threads, each running one mio event loop over its share of the
//! connections, sending the [`Pattern`] stream and verifying every byte of the echo.
//!
//! Trade-off: an event loop per thread keeps the tool off the critical path (a message
//! costs one `epoll_wait` share, one `read`, one `write`, like loadgen) at the price of a
//! state machine per connection instead of straight-line blocking code.
//!
//! The rules the loop follows:
//! - Sockets are registered once, edge-triggered, for both directions, so the loop never
//!   changes its interest (no `epoll_ctl` per message).
//! - Reads continue until `WouldBlock` or a short read: a read that returns less than the
//!   buffer has emptied the socket, and new bytes raise a new edge.
//! - Partial reads and writes are normal: a connection's state is counted in stream bytes
//!   (`issued`, `sent`, `recvd`), never in "messages read".
//! - Every connection is established before the clock starts (not in churn), warm-up
//!   completions are not recorded, and in-flight echoes are drained (bounded, 300 ms) after
//!   the end so the connections close cleanly.
//! - Every loop is bounded: the run ends at its deadline, on the stop flag, or when every
//!   connection is gone.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Barrier};
use std::time::{Duration, Instant};
use std::{fmt, thread};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

use crate::latency::Latency;
use crate::pattern::{Pattern, CHUNK};
use crate::report::{BenchReport, ErrorCounts, ErrorKind, MismatchAt};
use crate::schedule::RateSchedule;

/// How long the final drain waits for in-flight echoes.
const DRAIN: Duration = Duration::from_millis(300);

/// The most connects a worker keeps in progress at once, so a slow acceptor's listen
/// backlog (1024 in echolab's servers) never overflows into SYN retransmits.
const CONNECT_WINDOW: usize = 256;

/// Open loop: the most messages a connection holds back (due but not yet sent because the
/// pipeline is full). Past this the server is hopelessly behind; further due messages are
/// counted as unsent instead of growing memory without bound.
const MAX_HELD: usize = 1 << 16;

/// The token of a worker's timerfd (the open loop's clock).
const TIMER: Token = Token(usize::MAX);

/// A checked bench configuration.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub addr: SocketAddr,
    /// Connections (churn: connections in progress at once).
    pub n_conns: usize,
    /// Bytes per message, at least 1.
    pub msg_size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Worker threads; capped at `n_conns`.
    pub n_threads: usize,
    /// Messages in flight per connection (closed loop) or at most in flight (open loop).
    pub pipeline: usize,
    /// Open loop: messages per second over all connections.
    pub rate: Option<f64>,
    /// Connect, one echo, close, repeat.
    pub churn: bool,
    /// Every message is a line ending in `\n`, for line-mode servers.
    pub lines: bool,
    /// How long establishing the connections may take.
    pub connect_timeout: Duration,
    /// A connection owed an echo that makes no progress for this long is a timeout error.
    pub stall_timeout: Duration,
}

/// The three ways of loading a server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Send, wait for the whole echo, send the next.
    Closed,
    /// Send at a constant rate, measure from the intended send time.
    Open { rate: f64 },
    /// Connect, one echo, close.
    Churn,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Closed => "closed",
            Workload::Open { .. } => "open",
            Workload::Churn => "churn",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Workload::Closed => "closed loop".to_string(),
            Workload::Open { rate } => format!("open loop at {rate:.0} messages/s"),
            Workload::Churn => "churn (connect, one echo, close)".to_string(),
        }
    }
}

impl BenchConfig {
    /// A closed-loop run of `n_conns` connections with `msg_size`-byte messages against
    /// `addr`, with the command line's other defaults.
    pub fn new(addr: SocketAddr, n_conns: usize, msg_size: usize) -> BenchConfig {
        BenchConfig {
            addr,
            n_conns,
            msg_size,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            n_threads: default_threads(),
            pipeline: 1,
            rate: None,
            churn: false,
            lines: false,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(10),
        }
    }

    pub fn workload(&self) -> Workload {
        match (self.churn, self.rate) {
            (true, _) => Workload::Churn,
            (false, Some(rate)) => Workload::Open { rate },
            (false, None) => Workload::Closed,
        }
    }

    /// The worker threads the run uses: never more than connections.
    pub fn effective_threads(&self) -> usize {
        self.n_threads.clamp(1, self.n_conns.max(1))
    }
}

/// The default `--threads`: one per CPU.
pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why a run could not take place at all.
#[derive(Debug)]
pub enum BenchError {
    /// Not one connection could be established.
    Connect { addr: SocketAddr, reason: String },
    /// The machinery could not be set up (epoll, timerfd, threads).
    Setup {
        what: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Connect { addr, reason } => write!(f, "cannot connect to {addr}: {reason}"),
            BenchError::Setup { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for BenchError {}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    WarmUp,
    Measuring,
}

/// What the run has measured so far, handed to the progress callback.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    /// Time since the measured window began (zero during warm-up).
    pub measured: Duration,
    /// Completed echoes (churn: connections) in the measured window so far.
    pub messages: u64,
    pub errors: u64,
}

/// Counters a worker publishes for the progress display, one cache line each so that two
/// workers never write the same line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Published {
    messages: AtomicU64,
    errors: AtomicU64,
    established: AtomicU64,
}

/// Runs one bench: connects, loads the server for the warm-up then the measured window,
/// and merges what every worker saw. `stop` ends the run early (Ctrl-C) with the figures
/// measured so far; `on_tick` is called about every `tick` with the progress.
pub fn run(
    config: &BenchConfig,
    stop: &AtomicBool,
    tick: Duration,
    mut on_tick: impl FnMut(&Progress),
) -> Result<BenchReport, BenchError> {
    let pattern = Pattern::new(config.msg_size, config.lines);
    let n_threads = config.effective_threads();
    if config.churn {
        // Churn has no connect phase to fail in: check once that anyone is listening, so
        // an unreachable server is a clear error rather than a run of connect errors.
        std::net::TcpStream::connect_timeout(&config.addr, config.connect_timeout).map_err(
            |err| BenchError::Connect {
                addr: config.addr,
                reason: describe(&err),
            },
        )?;
    }
    let published: Vec<Published> = (0..n_threads).map(|_| Published::default()).collect();
    let mut workers = Vec::with_capacity(n_threads);
    let mut first_conn_idx = 0;
    for (worker_idx, published) in published.iter().enumerate() {
        let n = config.n_conns / n_threads + usize::from(worker_idx < config.n_conns % n_threads);
        workers.push(Worker::new(
            config,
            &pattern,
            stop,
            published,
            first_conn_idx,
            n,
        )?);
        first_conn_idx += n;
    }
    let barrier = Barrier::new(n_threads + 1);
    thread::scope(|scope| {
        let (result_tx, result_rx) = mpsc::channel();
        let mut start_txs = Vec::with_capacity(n_threads);
        for mut worker in workers {
            let (start_tx, start_rx) = mpsc::channel::<Option<Instant>>();
            start_txs.push(start_tx);
            let (barrier, result_tx) = (&barrier, result_tx.clone());
            thread::Builder::new()
                .name("bench-worker".to_string())
                .spawn_scoped(scope, move || {
                    let mut events = Events::with_capacity(1024);
                    if !worker.churn {
                        worker.connect_all(&mut events);
                    }
                    barrier.wait();
                    if let Ok(Some(t0)) = start_rx.recv() {
                        worker.run(&mut events, t0);
                    }
                    worker.close_all();
                    // The receiver outlives every worker (same scope), so this cannot fail.
                    let _ = result_tx.send(worker.into_result());
                })
                .map_err(|source| BenchError::Setup {
                    what: "cannot start a worker thread",
                    source,
                })?;
        }
        drop(result_tx);
        barrier.wait();
        let established: u64 = published
            .iter()
            .map(|p| p.established.load(Ordering::Relaxed))
            .sum();
        let t0 = (config.churn || established > 0).then(Instant::now);
        for start_tx in &start_txs {
            let _ = start_tx.send(t0);
        }
        let mut results = Vec::with_capacity(n_threads);
        let t_meas = t0.map(|t0| t0 + config.warmup);
        while results.len() < n_threads {
            match result_rx.recv_timeout(tick) {
                Ok(result) => results.push(result),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let Some(t_meas) = t_meas else { continue };
                    on_tick(&Progress {
                        phase: if now < t_meas {
                            Phase::WarmUp
                        } else {
                            Phase::Measuring
                        },
                        measured: now.saturating_duration_since(t_meas),
                        messages: published
                            .iter()
                            .map(|p| p.messages.load(Ordering::Relaxed))
                            .sum(),
                        errors: published
                            .iter()
                            .map(|p| p.errors.load(Ordering::Relaxed))
                            .sum(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut report = merge(results, config);
        if config.churn {
            report.time_wait = crate::report::time_wait_to(config.addr);
        }
        if t0.is_none() {
            let reason = report
                .error_samples
                .get(&ErrorKind::Connect)
                .cloned()
                .unwrap_or_else(|| "no connection was established".to_string());
            return Err(BenchError::Connect {
                addr: config.addr,
                reason,
            });
        }
        Ok(report)
    })
}

/// What one worker measured.
#[derive(Debug)]
struct WorkerResult {
    latency: Latency,
    connect_latency: Latency,
    messages: u64,
    /// The worker's measured window, if it reached it.
    window: Option<(Instant, Instant)>,
    errors: ErrorCounts,
    first_mismatch: Option<MismatchAt>,
    error_samples: BTreeMap<ErrorKind, String>,
    established: u64,
    echoed: u64,
    unsent: u64,
    interrupted: bool,
    server_gone: bool,
}

fn merge(results: Vec<WorkerResult>, config: &BenchConfig) -> BenchReport {
    let mut latency = Latency::new();
    let mut connect_latency = Latency::new();
    let mut report = BenchReport {
        messages: 0,
        seconds: 0.0,
        latency: Default::default(),
        connect_latency: None,
        errors: ErrorCounts::default(),
        first_mismatch: None,
        error_samples: BTreeMap::new(),
        conns_established: 0,
        conns_echoed: 0,
        unsent: 0,
        interrupted: false,
        server_gone: !results.is_empty(),
        time_wait: None,
    };
    for r in &results {
        latency.merge(&r.latency);
        connect_latency.merge(&r.connect_latency);
        report.messages += r.messages;
        if let Some((from, to)) = r.window {
            report.seconds = report.seconds.max(to.duration_since(from).as_secs_f64());
        }
        report.errors.add(&r.errors);
        report.first_mismatch = report.first_mismatch.or(r.first_mismatch);
        for (kind, sample) in &r.error_samples {
            report
                .error_samples
                .entry(*kind)
                .or_insert_with(|| sample.clone());
        }
        report.conns_established += r.established;
        report.conns_echoed += r.echoed;
        report.unsent += r.unsent;
        report.interrupted |= r.interrupted;
        report.server_gone &= r.server_gone;
    }
    report.latency = latency.summary();
    if config.churn {
        report.connect_latency = Some(connect_latency.summary());
    }
    report
}

/// A connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; churn reconnects it at `retry_at`.
    Idle {
        retry_at: Instant,
    },
    Connecting,
    Active,
    /// Failed or closed for good; never reused (not churn).
    Dead,
}

/// One connection and where its byte stream stands. `issued` bytes are the messages
/// handed to the socket; `sent <= issued` of them are written; `recvd <= sent` are echoed
/// and verified.
#[derive(Debug)]
struct Conn {
    stream: Option<TcpStream>,
    state: State,
    /// Bumped on every new socket of this slot, so a stale event for a closed socket
    /// (same slot, same batch) is recognised and skipped.
    generation: u32,
    /// Where this connection's stream starts in the pattern.
    offset: usize,
    issued: u64,
    sent: u64,
    recvd: u64,
    /// Messages completed (their whole echo received and verified).
    done: u64,
    /// The start time of every message not yet completed, oldest first: the first
    /// `in_flight()` were issued, the rest are held back by the pipeline (open loop).
    starts: VecDeque<Instant>,
    connect_start: Instant,
    /// The last time this connection got a byte back, connected, or started owing one.
    last_progress: Instant,
    echoed_once: bool,
}

impl Conn {
    fn in_flight(&self, msg_size: u64) -> u64 {
        self.issued / msg_size - self.done
    }
}

/// One worker thread's connections and event loop.
struct Worker<'a> {
    config: &'a BenchConfig,
    pattern: &'a Pattern,
    stop: &'a AtomicBool,
    published: &'a Published,
    poll: Poll,
    /// The open loop's periodic clock, registered under [`TIMER`].
    timer: Option<TimerFd>,
    schedule: Option<RateSchedule>,
    /// The open loop's next connection to receive a message (round robin).
    next_conn: usize,
    conns: Vec<Conn>,
    /// The global index of `conns[0]`, for offsets and reports.
    first_conn_idx: usize,
    churn: bool,
    msg_size: u64,
    depth: u64,
    buf: Vec<u8>,
    /// New messages are issued (closed loop) or released (open loop) only while running.
    running: bool,
    measuring: bool,
    window: Option<(Instant, Instant)>,
    latency: Latency,
    connect_latency: Latency,
    messages: u64,
    errors: ErrorCounts,
    error_samples: BTreeMap<ErrorKind, String>,
    first_mismatch: Option<MismatchAt>,
    established: u64,
    n_connecting: usize,
    /// Connections not dead (not churn): zero means the server is gone.
    n_live: usize,
    unsent: u64,
    interrupted: bool,
    /// Churn: connects refused since the last one that succeeded, to tell a stopped
    /// server from a busy one.
    refused_in_a_row: u64,
    /// The server closed, reset or refused everything before the end.
    server_gone: bool,
}

impl fmt::Debug for Worker<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("first_conn_idx", &self.first_conn_idx)
            .field("n_conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn token(conn: usize, generation: u32) -> Token {
    Token(conn | (generation as usize) << 32)
}

fn split_token(token: Token) -> (usize, u32) {
    (token.0 & 0xffff_ffff, (token.0 >> 32) as u32)
}

fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}

/// An OS error as a short lowercase phrase ("connection refused"), without "(os error N)".
pub fn describe(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

impl<'a> Worker<'a> {
    fn new(
        config: &'a BenchConfig,
        pattern: &'a Pattern,
        stop: &'a AtomicBool,
        published: &'a Published,
        first_conn_idx: usize,
        n_conns: usize,
    ) -> Result<Worker<'a>, BenchError> {
        let poll = Poll::new().map_err(|source| BenchError::Setup {
            what: "cannot create an epoll instance",
            source,
        })?;
        let now = Instant::now();
        let mut timer = None;
        if config.rate.is_some() {
            let fd = TimerFd::new(
                ClockId::CLOCK_MONOTONIC,
                TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
            )
            .map_err(|errno| BenchError::Setup {
                what: "cannot create a timerfd",
                source: errno.into(),
            })?;
            poll.registry()
                .register(
                    &mut SourceFd(&fd.as_fd().as_raw_fd()),
                    TIMER,
                    Interest::READABLE,
                )
                .map_err(|source| BenchError::Setup {
                    what: "cannot register the timerfd",
                    source,
                })?;
            timer = Some(fd);
        }
        let conns = (0..n_conns)
            .map(|i| Conn {
                stream: None,
                state: State::Idle { retry_at: now },
                generation: 0,
                offset: pattern.conn_offset(first_conn_idx + i),
                issued: 0,
                sent: 0,
                recvd: 0,
                done: 0,
                starts: VecDeque::new(),
                connect_start: now,
                last_progress: now,
                echoed_once: false,
            })
            .collect();
        Ok(Worker {
            config,
            pattern,
            stop,
            published,
            poll,
            timer,
            schedule: None,
            next_conn: 0,
            conns,
            first_conn_idx,
            churn: config.churn,
            msg_size: config.msg_size.max(1) as u64,
            depth: config.pipeline.max(1) as u64,
            buf: vec![0; CHUNK],
            running: false,
            measuring: false,
            window: None,
            latency: Latency::new(),
            connect_latency: Latency::new(),
            messages: 0,
            errors: ErrorCounts::default(),
            error_samples: BTreeMap::new(),
            first_mismatch: None,
            established: 0,
            n_connecting: 0,
            n_live: n_conns,
            unsent: 0,
            interrupted: false,
            refused_in_a_row: 0,
            server_gone: false,
        })
    }

    /// Establishes every connection before the clock starts, a window at a time, until
    /// the connect timeout; a connection still pending then is a connect error.
    fn connect_all(&mut self, events: &mut Events) {
        let deadline = Instant::now() + self.config.connect_timeout;
        let mut next = 0;
        loop {
            let now = Instant::now();
            while next < self.conns.len() && self.n_connecting < CONNECT_WINDOW {
                self.start_connect(next, now);
                next += 1;
            }
            if (next == self.conns.len() && self.n_connecting == 0)
                || now >= deadline
                || self.stop.load(Ordering::Relaxed)
            {
                break;
            }
            self.poll_once(events, (deadline - now).min(Duration::from_millis(50)));
        }
        for i in 0..self.conns.len() {
            if matches!(self.conns[i].state, State::Connecting | State::Idle { .. }) {
                let timeout = self.config.connect_timeout.as_secs_f64();
                self.fail(
                    i,
                    ErrorKind::Connect,
                    format!("not established within {timeout:.1} s"),
                );
            }
        }
        self.published
            .established
            .store(self.established, Ordering::Relaxed);
    }

    /// Starts a non-blocking connect on slot `i`.
    fn start_connect(&mut self, i: usize, now: Instant) {
        let result = TcpStream::connect(self.config.addr).and_then(|mut stream| {
            stream.set_nodelay(true)?;
            let generation = self.conns[i].generation.wrapping_add(1);
            self.poll.registry().register(
                &mut stream,
                token(i, generation),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok((stream, generation))
        });
        let conn = &mut self.conns[i];
        conn.connect_start = now;
        conn.last_progress = now;
        match result {
            Ok((stream, generation)) => {
                conn.stream = Some(stream);
                conn.generation = generation;
                conn.state = State::Connecting;
                conn.issued = 0;
                conn.sent = 0;
                conn.recvd = 0;
                conn.done = 0;
                conn.starts.clear();
                self.n_connecting += 1;
            }
            Err(err) => self.connect_failed(i, &err),
        }
    }

    fn connect_failed(&mut self, i: usize, err: &io::Error) {
        if err.kind() == io::ErrorKind::ConnectionRefused {
            self.refused_in_a_row += 1;
        }
        self.fail(i, ErrorKind::Connect, describe(err));
    }

    /// Slot `i` reported writable (or an error) while connecting.
    fn finish_connect(&mut self, i: usize, now: Instant) {
        let Some(stream) = self.conns[i].stream.as_ref() else {
            return;
        };
        let outcome = match stream.take_error() {
            Ok(Some(err)) | Err(err) => Err(err),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(()),
                // A spurious wake-up: still connecting.
                Err(err) if err.kind() == io::ErrorKind::NotConnected => return,
                Err(err) => Err(err),
            },
        };
        if let Err(err) = outcome {
            self.connect_failed(i, &err);
            return;
        }
        self.n_connecting -= 1;
        self.established += 1;
        self.refused_in_a_row = 0;
        let conn = &mut self.conns[i];
        conn.state = State::Active;
        conn.last_progress = now;
        if self.churn && self.running {
            let connect_start = conn.connect_start;
            if self.measuring {
                self.connect_latency.record(now - connect_start);
            }
            // Churn's latency is the whole connection: from the connect to the echo.
            self.issue(i, connect_start);
            self.flush(i);
        }
    }

    /// The main phase: warm-up, then the measured window, then the drain.
    fn run(&mut self, events: &mut Events, t0: Instant) {
        let t_meas = t0 + self.config.warmup;
        let t_end = t_meas + self.config.duration;
        self.running = true;
        if let Some(rate) = self.config.rate {
            self.start_clock(t0, rate);
        }
        for i in 0..self.conns.len() {
            match self.conns[i].state {
                State::Active if self.schedule.is_none() => {
                    for _ in 0..self.depth {
                        self.issue(i, t0);
                    }
                    self.flush(i);
                }
                State::Idle { .. } if self.churn => self.start_connect(i, t0),
                _ => {}
            }
        }
        let mut last_sweep = t0;
        loop {
            let now = Instant::now();
            if self.stop.load(Ordering::Relaxed) {
                self.interrupted = true;
                self.end_window(now);
                break;
            }
            if now >= t_end {
                self.end_window(now);
                break;
            }
            if !self.measuring && now >= t_meas {
                self.measuring = true;
                self.window = Some((now, now));
                self.latency.clear();
                self.connect_latency.clear();
                self.messages = 0;
            }
            if self.schedule.is_some() {
                self.release_due(now);
            }
            let mut retry_soon = false;
            if self.churn {
                retry_soon = self.restart_idle(now);
                // On loopback a refused connect means nobody listens: once every slot has
                // been refused twice in a row, the server is gone. (A full backlog drops
                // SYNs instead, which is slow, not refused.)
                if self.refused_in_a_row >= 2 * self.conns.len() as u64 {
                    self.server_gone = true;
                    self.end_window(now);
                    break;
                }
            }
            if now - last_sweep >= Duration::from_millis(100) {
                self.sweep_stalled(now);
                last_sweep = now;
            }
            if !self.churn && self.n_live == 0 {
                let e = &self.errors;
                self.server_gone = e.eof + e.reset > 0 && e.mismatch + e.extra == 0;
                self.end_window(now);
                break;
            }
            let mut timeout = (t_end - now).min(Duration::from_millis(50));
            if !self.measuring {
                timeout = timeout.min(t_meas - now);
            }
            if retry_soon {
                timeout = timeout.min(Duration::from_millis(1));
            }
            self.poll_once(events, timeout);
            if self.measuring {
                self.published
                    .messages
                    .store(self.messages, Ordering::Relaxed);
            }
            self.published
                .errors
                .store(self.errors.total(), Ordering::Relaxed);
        }
        self.published
            .messages
            .store(self.messages, Ordering::Relaxed);
        self.running = false;
        self.measuring = false;
        self.drain(events);
    }

    fn end_window(&mut self, now: Instant) {
        if let Some((from, _)) = self.window {
            self.window = Some((from, now));
        }
    }

    /// Open loop: this worker's share of the rate, on a periodic timerfd. The period is
    /// the message interval, but at least 20 µs: at higher rates the loop is never idle
    /// and releases due messages on every pass anyway.
    fn start_clock(&mut self, t0: Instant, rate: f64) {
        let share = rate * self.conns.len() as f64 / self.config.n_conns as f64;
        self.schedule = Some(RateSchedule::new(t0, share.max(1e-3)));
        // The kernel may delay a timer by the thread's slack (50 µs by default), which the
        // open loop would measure as latency; 1 µs is enough here.
        let _ = nix::sys::prctl::set_timerslack(1_000);
        let period = Duration::from_secs_f64(1.0 / share.max(1e-3)).max(Duration::from_micros(20));
        if let Some(timer) = &self.timer {
            let period = TimeSpec::from_duration(period);
            let _ = timer.set(
                Expiration::IntervalDelayed(period, period),
                TimerSetTimeFlags::empty(),
            );
        }
    }

    /// Open loop: hands every message now due to the next connection in turn.
    fn release_due(&mut self, now: Instant) {
        let n = self.conns.len();
        let Some(schedule) = self.schedule.as_mut() else {
            return;
        };
        let mut touched = false;
        while let Some((_, intended)) = schedule.pop_due(now) {
            // The next connection in turn that can still take a message.
            let mut target = None;
            for k in 0..n {
                let i = (self.next_conn + k) % n;
                if self.conns[i].state == State::Active && self.conns[i].starts.len() < MAX_HELD {
                    target = Some(i);
                    break;
                }
            }
            self.next_conn = (self.next_conn + 1) % n;
            match target {
                Some(i) => {
                    let conn = &mut self.conns[i];
                    if conn.starts.is_empty() {
                        conn.last_progress = now;
                    }
                    conn.starts.push_back(intended);
                    touched = true;
                }
                None => self.unsent += 1,
            }
        }
        if touched {
            for i in 0..n {
                if self.conns[i].state == State::Active && self.release(i) {
                    self.flush(i);
                }
            }
        }
    }

    /// Issues held messages of conn `i` while the pipeline has room; true if any was.
    fn release(&mut self, i: usize) -> bool {
        let conn = &mut self.conns[i];
        let mut released = false;
        while conn.in_flight(self.msg_size) < self.depth
            && (conn.starts.len() as u64) > conn.in_flight(self.msg_size)
        {
            conn.issued += self.msg_size;
            released = true;
        }
        released
    }

    /// Churn: reconnects idle slots whose retry time has come; true if one still waits.
    fn restart_idle(&mut self, now: Instant) -> bool {
        let mut waiting = false;
        for i in 0..self.conns.len() {
            if let State::Idle { retry_at } = self.conns[i].state {
                if now >= retry_at {
                    self.start_connect(i, now);
                } else {
                    waiting = true;
                }
            }
        }
        waiting
    }

    /// Times out connections owed an echo (or still connecting) without progress.
    fn sweep_stalled(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            let stalled_for = now - conn.last_progress;
            match conn.state {
                State::Active
                    if conn.in_flight(self.msg_size) > 0
                        && stalled_for > self.config.stall_timeout =>
                {
                    let (secs, owed) = (stalled_for.as_secs_f64(), conn.issued - conn.recvd);
                    self.fail(
                        i,
                        ErrorKind::Timeout,
                        format!("no echo for {secs:.1} s with {owed} bytes owed"),
                    );
                }
                State::Connecting if stalled_for > self.config.connect_timeout => {
                    let secs = self.config.connect_timeout.as_secs_f64();
                    self.fail(
                        i,
                        ErrorKind::Connect,
                        format!("not established within {secs:.1} s"),
                    );
                }
                _ => {}
            }
        }
    }

    /// Waits up to `timeout` for events and handles them.
    fn poll_once(&mut self, events: &mut Events, timeout: Duration) {
        if let Err(err) = self.poll.poll(events, Some(timeout)) {
            if !interrupted(&err) {
                // epoll_wait fails only on programming errors (EBADF, EINVAL); stop this
                // worker's traffic rather than spin on it.
                self.sample(ErrorKind::Connect, format!("epoll_wait failed: {err}"));
                self.stop_all();
            }
            return;
        }
        let mut now = Instant::now();
        for event in events.iter() {
            if event.token() == TIMER {
                if let Some(timer) = &self.timer {
                    // Consume the expiry count (non-blocking); the next expiry raises a
                    // new edge.
                    let _ = timer.wait();
                }
                continue;
            }
            let (i, generation) = split_token(event.token());
            let Some(conn) = self.conns.get(i) else {
                continue;
            };
            if conn.generation != generation || conn.stream.is_none() {
                continue;
            }
            match conn.state {
                State::Connecting => {
                    if event.is_writable()
                        || event.is_error()
                        || event.is_write_closed()
                        || event.is_read_closed()
                    {
                        self.finish_connect(i, now);
                    }
                }
                State::Active => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.on_readable(i, &mut now);
                    }
                    if event.is_writable() && self.conns[i].state == State::Active {
                        self.flush(i);
                    }
                }
                State::Idle { .. } | State::Dead => {}
            }
        }
    }

    /// Adds a message to conn `i` with start time `start`, and issues it if the pipeline
    /// has room.
    fn issue(&mut self, i: usize, start: Instant) {
        let conn = &mut self.conns[i];
        if conn.in_flight(self.msg_size) == 0 {
            conn.last_progress = start;
        }
        conn.starts.push_back(start);
        self.release(i);
    }

    /// Writes what is issued but not yet sent, until the socket takes no more.
    fn flush(&mut self, i: usize) {
        loop {
            let conn = &mut self.conns[i];
            if conn.sent >= conn.issued {
                return;
            }
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            let want = (conn.issued - conn.sent).min(CHUNK as u64) as usize;
            let bytes = self.pattern.slice(conn.offset, conn.sent, want);
            match stream.write(bytes) {
                Ok(n) => conn.sent += n as u64,
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => {}
                Err(err) => {
                    self.fail_io(i, &err);
                    return;
                }
            }
        }
    }

    /// Reads, verifies and completes messages until the socket is empty.
    fn on_readable(&mut self, i: usize, now: &mut Instant) {
        loop {
            let Some(stream) = self.conns[i].stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.buf) {
                Ok(0) => {
                    let conn = &self.conns[i];
                    let owed = conn.sent - conn.recvd;
                    let what = if owed > 0 {
                        format!("the server closed the connection with {owed} bytes still owed")
                    } else {
                        "the server closed the connection".to_string()
                    };
                    self.fail(i, ErrorKind::Eof, what);
                    return;
                }
                Ok(n) => n,
                Err(err) if would_block(&err) => return,
                Err(err) if interrupted(&err) => continue,
                Err(err) => {
                    self.fail_io(i, &err);
                    return;
                }
            };
            *now = Instant::now();
            if !self.on_bytes(i, n, *now) {
                return;
            }
            if n < self.buf.len() {
                // A short read emptied the socket; the next byte raises a new edge.
                return;
            }
        }
    }

    /// Verifies `n` bytes just read into `buf` on conn `i` and completes the messages they
    /// finish; false if the connection failed.
    fn on_bytes(&mut self, i: usize, n: usize, now: Instant) -> bool {
        let conn = &mut self.conns[i];
        let owed = (conn.sent - conn.recvd) as usize;
        let checked = n.min(owed);
        if let Err(mismatch) = self
            .pattern
            .verify(conn.offset, conn.recvd, &self.buf[..checked])
        {
            let at = MismatchAt {
                conn_idx: self.first_conn_idx + i,
                mismatch,
            };
            self.first_mismatch.get_or_insert(at);
            self.fail(
                i,
                ErrorKind::Mismatch,
                format!("conn {}: {mismatch}", at.conn_idx),
            );
            return false;
        }
        if n > owed {
            let at = conn.recvd + owed as u64;
            self.fail(
                i,
                ErrorKind::Extra,
                format!("the server sent bytes never sent to it, from stream offset {at}"),
            );
            return false;
        }
        conn.recvd += n as u64;
        conn.last_progress = now;
        let mut completed = 0;
        while (conn.done + 1) * self.msg_size <= conn.recvd {
            let start = conn
                .starts
                .pop_front()
                .expect("a start time for every issued message");
            conn.done += 1;
            conn.echoed_once = true;
            completed += 1;
            if self.measuring {
                self.latency.record(now.saturating_duration_since(start));
                self.messages += 1;
            }
        }
        if completed == 0 {
            return true;
        }
        if self.churn {
            self.close(i, None);
            if self.running {
                self.start_connect(i, now);
            }
            return false;
        }
        if self.running {
            if self.schedule.is_none() {
                for _ in 0..completed {
                    self.issue(i, now);
                }
            } else {
                self.release(i);
            }
        }
        self.flush(i);
        self.conns[i].state == State::Active
    }

    /// After the end: stops issuing and lets in-flight echoes come back, for at most
    /// [`DRAIN`], so the connections close without resetting the server.
    fn drain(&mut self, events: &mut Events) {
        for conn in &self.conns {
            if conn.state == State::Active {
                self.unsent += conn.starts.len() as u64 - conn.in_flight(self.msg_size);
            }
        }
        // Churn too: a connection closed with its echo still unread makes the kernel
        // reset it, and the server would log a reset the server did not cause.
        let deadline = Instant::now() + DRAIN;
        loop {
            let busy = self
                .conns
                .iter()
                .any(|c| c.state == State::Active && c.in_flight(self.msg_size) > 0);
            let now = Instant::now();
            if !busy || now >= deadline {
                return;
            }
            self.poll_once(events, (deadline - now).min(Duration::from_millis(10)));
        }
    }

    fn fail_io(&mut self, i: usize, err: &io::Error) {
        let kind = match err.kind() {
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Reset,
        };
        let what = describe(err);
        self.fail(i, kind, what);
    }

    /// Counts an error on conn `i` and closes it: for good, or until a retry in churn.
    fn fail(&mut self, i: usize, kind: ErrorKind, what: String) {
        self.errors.count(kind);
        self.sample(kind, what);
        let retry_at = Instant::now() + Duration::from_millis(1);
        self.close(i, self.churn.then_some(retry_at));
    }

    fn sample(&mut self, kind: ErrorKind, what: String) {
        self.error_samples.entry(kind).or_insert(what);
    }

    /// Closes conn `i`: idle until `retry_at` (churn), else dead.
    fn close(&mut self, i: usize, retry_at: Option<Instant>) {
        let conn = &mut self.conns[i];
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        if conn.state == State::Connecting {
            self.n_connecting -= 1;
        }
        let was_live = conn.state != State::Dead;
        conn.state = match retry_at {
            Some(retry_at) => State::Idle { retry_at },
            None if self.churn => State::Idle {
                retry_at: Instant::now(),
            },
            None => State::Dead,
        };
        if was_live && conn.state == State::Dead {
            self.n_live -= 1;
        }
    }

    fn stop_all(&mut self) {
        self.running = false;
        for i in 0..self.conns.len() {
            if self.conns[i].stream.is_some() {
                let conn = &mut self.conns[i];
                conn.stream = None;
                if conn.state != State::Dead {
                    conn.state = State::Dead;
                    self.n_live = self.n_live.saturating_sub(1);
                }
            }
        }
    }

    fn close_all(&mut self) {
        for conn in &mut self.conns {
            conn.stream = None;
        }
    }

    fn into_result(self) -> WorkerResult {
        let echoed = self.conns.iter().filter(|c| c.echoed_once).count() as u64;
        WorkerResult {
            latency: self.latency,
            connect_latency: self.connect_latency,
            messages: self.messages,
            window: self.window,
            errors: self.errors,
            first_mismatch: self.first_mismatch,
            error_samples: self.error_samples,
            established: self.established,
            echoed,
            unsent: self.unsent,
            interrupted: self.interrupted,
            server_gone: self.server_gone,
        }
    }
}
