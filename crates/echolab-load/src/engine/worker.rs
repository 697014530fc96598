//! One worker thread: its connections, its mio event loop, and the I/O and verification
//! every workload shares. When a connection sends its next message is the business of the
//! drivers (`closed.rs`, `open.rs`, `churn.rs`); this file calls them at
//! four points: the start of the run, every pass of the loop, a completed echo, and the
//! end of the window.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};

use super::conn::{describe, interrupted, split_token, token, would_block, Conn, State};
use super::{BenchError, Published, WorkerResult};
use crate::config::{BenchConfig, Workload, MAX_PENDING};
use crate::latency::Latency;
use crate::pattern::{Pattern, CHUNK};
use crate::report::{ErrorCounts, ErrorKind, MismatchAt, Unfinished};
use crate::schedule::RateSchedule;

/// How long the final drain waits for pending echoes: long enough for a healthy server on
/// a loaded machine, short enough not to matter after a stall (it runs only while
/// something is pending).
const DRAIN: Duration = Duration::from_secs(1);

/// The most connects a worker keeps in progress at once, so a slow acceptor's listen
/// backlog (1024 in echolab's servers) never overflows into SYN retransmits.
const CONNECT_WINDOW: usize = 256;

/// The most full reads one connection gets per pass of the loop. A connection whose
/// server echoes as fast as it is fed would otherwise keep the read loop to itself (each
/// completion sends more, so the socket never empties): the other connections starve and
/// the loop never looks at the clock. One left with bytes unread goes on the backlog and
/// is read again on the next pass, without waiting for an edge that may not come.
const READS_PER_PASS: usize = 4;

/// The token of a worker's timerfd (the open loop's clock).
pub(super) const TIMER: Token = Token(usize::MAX);

/// One worker thread's connections and event loop.
pub(super) struct Worker<'a> {
    pub(super) config: &'a BenchConfig,
    pattern: &'a Pattern,
    /// The user's stop flag (Ctrl-C) and the engine's abort flag (start-up failed).
    stop: [&'a AtomicBool; 2],
    published: &'a Published,
    pub(super) poll: Poll,
    pub(super) workload: Workload,
    /// The open loop's clock, registered under [`TIMER`], armed for the next due message.
    pub(super) timer: Option<TimerFd>,
    /// When the timer is armed for, so that it is set once per due message, not per pass.
    pub(super) timer_armed_for: Option<Instant>,
    /// The open loop's share of the aggregate schedule.
    pub(super) schedule: Option<RateSchedule>,
    /// Which share this worker sends: (`k`, `n`), message `i * n + k` of the aggregate.
    pub(super) share: (usize, usize),
    /// The open loop's next connection to receive a message (round robin).
    pub(super) next_conn: usize,
    pub(super) conns: Vec<Conn>,
    /// The global index of `conns[0]`, for stream numbers and reports.
    first_conn_idx: usize,
    pub(super) msg_size: u64,
    pub(super) depth: u64,
    /// The most messages one connection keeps pending (in flight plus held).
    pub(super) max_pending: usize,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    scratch: Vec<u8>,
    /// New messages are issued (closed loop, churn) or taken from the schedule (open loop)
    /// only while running.
    pub(super) running: bool,
    measuring: bool,
    /// The measured window: from `t_meas` to `window_end` (the planned end, or earlier
    /// when the run is cut short). A message belongs to the window when its start does.
    t_meas: Option<Instant>,
    pub(super) window_end: Option<Instant>,
    latency: Latency,
    pub(super) connect_latency: Latency,
    messages: u64,
    pub(super) unfinished: Unfinished,
    /// Start times of messages lost with a failed connection, with the time of the
    /// failure (at most [`MAX_PENDING`]).
    lost: Vec<(Instant, Instant)>,
    errors: ErrorCounts,
    error_samples: BTreeMap<ErrorKind, String>,
    first_mismatch: Option<MismatchAt>,
    pub(super) established: u64,
    n_connecting: usize,
    /// Connections not dead (not churn): zero means the server is gone.
    n_live: usize,
    bytes_received: u64,
    interrupted: bool,
    /// Churn: connects refused since the last one that succeeded, to tell a stopped
    /// server from a busy one.
    pub(super) refused_in_a_row: u64,
    /// The server closed, reset or refused everything before the end.
    pub(super) server_gone: bool,
    /// When the last echo of the run completed.
    last_echo: Option<Instant>,
    /// Connections (slot, generation, peer closed) that stopped reading at
    /// [`READS_PER_PASS`] with bytes left: read again on the next pass.
    backlog: Vec<(usize, u32, bool)>,
    /// When every connection had failed, if that happened before the planned end.
    all_failed_at: Option<Instant>,
    /// Connections failed, or owing an echo unanswered for longer than `--starve-after`
    /// (or never answered in the window), at the end.
    conns_stopped: u64,
}

impl std::fmt::Debug for Worker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("first_conn_idx", &self.first_conn_idx)
            .field("n_conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Worker<'a> {
    /// Worker `share.0` of `share.1`, for connections `first_conn_idx..+n_conns`.
    pub(super) fn new(
        config: &'a BenchConfig,
        pattern: &'a Pattern,
        stop: [&'a AtomicBool; 2],
        published: &'a Published,
        share: (usize, usize),
        first_conn_idx: usize,
        n_conns: usize,
    ) -> Result<Worker<'a>, BenchError> {
        let poll = Poll::new().map_err(|source| BenchError::Setup {
            what: "cannot create an epoll instance",
            source,
        })?;
        let now = Instant::now();
        let workload = config.workload();
        let mut timer = None;
        if let Workload::Open { .. } = workload {
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
            .map(|i| Conn::new((first_conn_idx + i) as u64, now))
            .collect();
        let buf_len = CHUNK
            .min(config.msg_size.max(1) * config.pipeline.max(1))
            .max(4096);
        Ok(Worker {
            config,
            pattern,
            stop,
            published,
            poll,
            workload,
            timer,
            timer_armed_for: None,
            schedule: None,
            share,
            next_conn: 0,
            conns,
            first_conn_idx,
            msg_size: config.msg_size.max(1) as u64,
            depth: config.pipeline.max(1) as u64,
            max_pending: config.max_pending_per_conn(),
            rbuf: vec![0; CHUNK],
            wbuf: vec![0; buf_len],
            scratch: vec![0; buf_len],
            running: false,
            measuring: false,
            t_meas: None,
            window_end: None,
            latency: Latency::new(),
            connect_latency: Latency::new(),
            messages: 0,
            unfinished: Unfinished::default(),
            lost: Vec::new(),
            errors: ErrorCounts::default(),
            error_samples: BTreeMap::new(),
            first_mismatch: None,
            established: 0,
            n_connecting: 0,
            n_live: n_conns,
            bytes_received: 0,
            interrupted: false,
            refused_in_a_row: 0,
            server_gone: false,
            last_echo: None,
            backlog: Vec::new(),
            all_failed_at: None,
            conns_stopped: 0,
        })
    }

    fn stopped(&self) -> bool {
        self.stop.iter().any(|flag| flag.load(Ordering::Relaxed))
    }

    /// Establishes every connection before the clock starts, a window at a time, until
    /// the connect timeout; a connection still pending then is a connect error.
    pub(super) fn connect_all(&mut self, events: &mut Events) {
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
                || self.stopped()
            {
                break;
            }
            self.poll_once(events, (deadline - now).min(Duration::from_millis(50)));
        }
        if self.stopped() {
            // Stopped while connecting (a signal): what is pending was interrupted, not
            // timed out; the run reports itself interrupted.
            self.interrupted = true;
            for i in 0..self.conns.len() {
                if self.conns[i].state == State::Connecting {
                    self.close(i, None);
                }
            }
            return;
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
    }

    /// Starts a non-blocking connect on slot `i`; a slot's every connection after its
    /// first sends a stream of its own.
    pub(super) fn start_connect(&mut self, i: usize, now: Instant) {
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
        let n_conns = self.config.n_conns as u64;
        let conn = &mut self.conns[i];
        conn.connect_start = now;
        conn.last_progress = now;
        match result {
            Ok((stream, generation)) => {
                let stream_no = if conn.generation == 0 {
                    conn.stream_no
                } else {
                    conn.stream_no + n_conns
                };
                conn.stream = Some(stream);
                conn.generation = generation;
                conn.state = State::Connecting;
                conn.reset_stream(stream_no);
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
        if self.workload == Workload::Churn {
            self.churn_connected(i, now);
        }
    }

    /// The main phase: warm-up, then the measured window, then the drain and the
    /// accounting of every message left unfinished.
    pub(super) fn run(&mut self, events: &mut Events, t0: Instant) {
        let t_meas = t0 + self.config.warmup;
        let t_end = t_meas + self.config.duration;
        self.t_meas = Some(t_meas);
        self.window_end = Some(t_end);
        if let Some(every) = self.config.hdr_interval {
            self.latency = Latency::with_intervals(t_meas, every, self.config.duration);
        }
        self.running = true;
        match self.workload {
            Workload::Closed => self.closed_start(t0),
            Workload::Open { rate } => self.open_start(t0, rate),
            Workload::Churn => self.churn_start(t0),
        }
        let sweep_every = (self.config.starve_after / 4).min(Duration::from_millis(100));
        let mut last_sweep = t0;
        loop {
            let now = Instant::now();
            if self.stopped() {
                self.interrupted = true;
                self.end_window(now);
                break;
            }
            if now >= t_end {
                self.end_window(t_end);
                break;
            }
            self.measuring = now >= t_meas;
            let mut wake_soon = false;
            match self.workload {
                Workload::Closed => {}
                Workload::Open { .. } => self.open_tick(now),
                Workload::Churn => {
                    if self.churn_gone() {
                        self.end_window(now);
                        break;
                    }
                    wake_soon = self.restart_idle(now);
                }
            }
            if now - last_sweep >= sweep_every {
                self.sweep_stalled(now);
                last_sweep = now;
            }
            if self.workload != Workload::Churn && self.n_live == 0 {
                let e = &self.errors;
                self.server_gone = e.eof + e.reset > 0 && e.mismatch + e.extra == 0;
                // The window keeps its planned length: the rest of it was time the
                // server served nothing, and the rates are over the whole of it.
                if now < t_end {
                    self.all_failed_at = Some(now);
                }
                self.end_window(t_end);
                break;
            }
            let mut timeout = (t_end - now).min(Duration::from_millis(50));
            if !self.measuring {
                timeout = timeout.min(t_meas - now);
            }
            if wake_soon {
                timeout = timeout.min(Duration::from_millis(1));
            }
            self.poll_once(events, timeout);
            self.published
                .messages
                .store(self.messages, Ordering::Relaxed);
            self.published
                .errors
                .store(self.errors.total(), Ordering::Relaxed);
        }
        self.running = false;
        self.measuring = false;
        self.drain(events);
        self.account_unfinished();
        self.published
            .messages
            .store(self.messages, Ordering::Relaxed);
    }

    /// Ends the window at `end` (the planned end, or earlier).
    fn end_window(&mut self, end: Instant) {
        let end = self.window_end.map_or(end, |planned| planned.min(end));
        self.window_end = Some(end);
        if let Workload::Open { .. } = self.workload {
            self.open_end(end);
        }
    }

    /// True when `start` falls in the measured window.
    pub(super) fn in_window(&self, start: Instant) -> bool {
        match (self.t_meas, self.window_end) {
            (Some(from), Some(to)) => from <= start && start < to,
            _ => false,
        }
    }

    /// True when a message started at `start` and still outstanding at `at` belongs to
    /// the window: it started before the window's end, and was outstanding at some point
    /// of the window (`at` is not before its start). A message issued in the warm-up and
    /// still owed when the window opens belongs to it, with its whole wait: a stall that
    /// began in the warm-up is not hidden from the figures.
    pub(super) fn belongs(&self, start: Instant, at: Instant) -> bool {
        match (self.t_meas, self.window_end) {
            (Some(from), Some(to)) => from <= to && start < to && at >= from,
            _ => false,
        }
    }

    /// Counts every message of the window still pending after the drain (held back or in
    /// flight) or lost with a failed connection as incomplete, and records each in the
    /// latency with the time it had waited by the end of the window: at least that long.
    /// A connection that had messages of the window pending at the end and completed none
    /// of them is counted starved (once), however short the window.
    fn account_unfinished(&mut self) {
        let Some(end) = self.window_end else { return };
        let waiting: Vec<Instant> = self
            .conns
            .iter()
            .flat_map(|c| c.starts.iter().copied())
            .collect();
        for start in waiting {
            if self.belongs(start, end) {
                self.unfinished.waiting += 1;
                self.latency
                    .record_at(end.saturating_duration_since(start), end);
            }
        }
        for (start, failed_at) in std::mem::take(&mut self.lost) {
            if self.belongs(start, failed_at) {
                self.unfinished.lost += 1;
                self.latency
                    .record_at(end.saturating_duration_since(start), end);
            }
        }
        if self.workload == Workload::Churn {
            return;
        }
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            let pending = conn.starts.iter().any(|s| self.belongs(*s, end));
            if conn.state == State::Active
                && pending
                && conn.completed_in_window == 0
                && !conn.starved
            {
                let conn_idx = self.first_conn_idx + i;
                self.conns[i].starved = true;
                self.errors.count(ErrorKind::Starved);
                self.sample(
                    ErrorKind::Starved,
                    format!("conn {conn_idx} completed no echo in the window"),
                );
            }
        }
        let starve_after = self.config.starve_after;
        self.conns_stopped = self
            .conns
            .iter()
            .filter(|c| match c.state {
                State::Dead => true,
                State::Active => {
                    let owes = c.starts.iter().any(|s| self.belongs(*s, end));
                    owes && (c.completed_in_window == 0
                        || end.saturating_duration_since(c.last_progress) > starve_after)
                }
                _ => false,
            })
            .count() as u64;
    }

    /// Times out connections owed an echo (or still connecting) without progress, and
    /// counts a connection starved (once) when it waited longer than `--starve-after`.
    fn sweep_stalled(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let conn = &self.conns[i];
            let stalled_for = now - conn.last_progress;
            let owes = conn.in_flight(self.msg_size) > 0;
            match conn.state {
                State::Active
                    if (owes || conn.closing) && stalled_for > self.config.stall_timeout =>
                {
                    let secs = stalled_for.as_secs_f64();
                    let what = if conn.closing {
                        format!("no end of stream for {secs:.1} s after the echo")
                    } else {
                        let owed = conn.issued - conn.recvd;
                        format!("no echo for {secs:.1} s with {owed} bytes owed")
                    };
                    self.fail(i, ErrorKind::Timeout, what);
                }
                State::Active
                    if owes && !conn.starved && stalled_for > self.config.starve_after =>
                {
                    let conn_idx = self.first_conn_idx + i;
                    let secs = self.config.starve_after.as_secs_f64();
                    self.conns[i].starved = true;
                    self.errors.count(ErrorKind::Starved);
                    self.sample(
                        ErrorKind::Starved,
                        format!("conn {conn_idx} waited more than {secs:.2} s for an echo"),
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
    pub(super) fn poll_once(&mut self, events: &mut Events, timeout: Duration) {
        let backlog = std::mem::take(&mut self.backlog);
        // With bytes still to read, only look for events: do not wait.
        let timeout = if backlog.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
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
                    // Consume the expiry (non-blocking); the next arming raises a new edge.
                    let _ = timer.wait();
                    self.timer_armed_for = None;
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
                        // The same event may announce bytes already (a server that speaks
                        // first) or its close: with edge-triggered readiness no later edge
                        // would, and they would wait unread while the connection starves.
                        if self.conns[i].state == State::Active
                            && (event.is_readable() || event.is_read_closed())
                        {
                            let closed = event.is_read_closed() || event.is_error();
                            self.on_readable(i, closed, &mut now);
                        }
                    }
                }
                State::Active => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        // A FIN queued behind the data raises no edge of its own: when
                        // the event says the peer closed, read on to the end of stream.
                        let closed = event.is_read_closed() || event.is_error();
                        self.on_readable(i, closed, &mut now);
                    }
                    if event.is_writable() && self.conns[i].state == State::Active {
                        self.flush(i);
                    }
                }
                State::Idle { .. } | State::Dead => {}
            }
        }
        for (i, generation, closed) in backlog {
            let conn = &self.conns[i];
            if conn.generation == generation && conn.stream.is_some() && conn.state == State::Active
            {
                self.on_readable(i, closed, &mut now);
            }
        }
    }

    /// Adds a message to conn `i` with start time `start`, and issues it if the pipeline
    /// has room.
    pub(super) fn issue(&mut self, i: usize, start: Instant) {
        let conn = &mut self.conns[i];
        if conn.in_flight(self.msg_size) == 0 {
            conn.last_progress = start;
        }
        conn.starts.push_back(start);
        self.release(i);
    }

    /// Issues held messages of conn `i` while the pipeline has room; true if any was.
    pub(super) fn release(&mut self, i: usize) -> bool {
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

    /// Writes what is issued but not yet sent, until the socket takes no more.
    pub(super) fn flush(&mut self, i: usize) {
        loop {
            let conn = &mut self.conns[i];
            if conn.sent >= conn.issued {
                return;
            }
            let Some(stream) = conn.stream.as_mut() else {
                return;
            };
            let want = (conn.issued - conn.sent).min(self.wbuf.len() as u64) as usize;
            let bytes = &mut self.wbuf[..want];
            self.pattern.fill(conn.stream_no, conn.sent, bytes);
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

    /// Reads, verifies and completes messages until the socket is empty; when `closed`
    /// (the event reported the peer's end of stream or an error), until the read returns
    /// end of stream or an error, since no further edge will come.
    fn on_readable(&mut self, i: usize, closed: bool, now: &mut Instant) {
        for _ in 0..READS_PER_PASS {
            let Some(stream) = self.conns[i].stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.rbuf) {
                Ok(0) => {
                    let conn = &self.conns[i];
                    if conn.closing {
                        self.churn_closed(i, *now);
                        return;
                    }
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
            if n < self.rbuf.len() && !closed {
                // A short read emptied the socket; the next byte raises a new edge.
                return;
            }
        }
        // Bytes may be left: read on at the next pass, after the other connections.
        let generation = self.conns[i].generation;
        if !self
            .backlog
            .iter()
            .any(|&(j, g, _)| j == i && g == generation)
        {
            self.backlog.push((i, generation, closed));
        }
    }

    /// Verifies `n` bytes just read into `rbuf` on conn `i` and completes the messages
    /// they finish; false if the connection failed or closed.
    fn on_bytes(&mut self, i: usize, n: usize, now: Instant) -> bool {
        self.bytes_received += n as u64;
        let conn = &mut self.conns[i];
        let owed = (conn.sent - conn.recvd) as usize;
        let checked = n.min(owed);
        if let Err(mismatch) = self.pattern.verify(
            conn.stream_no,
            conn.recvd,
            &self.rbuf[..checked],
            &mut self.scratch,
        ) {
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
        conn.recvd += checked as u64;
        conn.last_progress = now;
        let (t_meas, window_end) = (self.t_meas, self.window_end);
        // A message belongs to the window when it started before its end and completes
        // after its start (see `belongs`).
        let belongs = |start: Instant| match (t_meas, window_end) {
            (Some(from), Some(to)) => from <= to && start < to && now >= from,
            _ => false,
        };
        let mut completed = 0;
        while (conn.done + 1) * self.msg_size <= conn.recvd {
            let start = conn
                .starts
                .pop_front()
                .expect("a start time for every issued message");
            conn.done += 1;
            completed += 1;
            // Any whole echo, warm-up included: a server that stopped before the window
            // opened is said as such (a negative `last_echo_secs`).
            self.last_echo = Some(now);
            if belongs(start) {
                let latency = now.saturating_duration_since(start);
                self.latency.record_at(latency, now);
                if let Some(interval) = &self.published.interval {
                    interval
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(latency);
                }
                self.messages += 1;
                conn.completed_in_window += 1;
            }
        }
        if n > owed {
            // Checked after completing what was owed, so that the echo itself counts.
            let at = conn.recvd;
            let what = if conn.closing || self.workload == Workload::Churn {
                format!("the server sent bytes after the echo, from stream offset {at}")
            } else {
                format!("the server sent bytes never sent to it, from stream offset {at}")
            };
            self.fail(i, ErrorKind::Extra, what);
            return false;
        }
        if completed == 0 {
            return true;
        }
        match self.workload {
            Workload::Closed => self.closed_completed(i, completed, now),
            Workload::Open { .. } => {
                self.release(i);
            }
            Workload::Churn => return self.churn_completed(i, now),
        }
        self.flush(i);
        self.conns[i].state == State::Active
    }

    /// After the end: stops issuing and lets pending echoes come back (held messages of
    /// the window are still released), for at most [`DRAIN`], so the connections close
    /// without resetting the server and near-end messages complete.
    fn drain(&mut self, events: &mut Events) {
        // Churn too: a connection closed with its echo still unread makes the kernel
        // reset it, and the server would log a reset the server did not cause.
        let deadline = Instant::now() + DRAIN;
        loop {
            let busy = self
                .conns
                .iter()
                .any(|c| c.state == State::Active && !c.starts.is_empty());
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

    /// Counts an error on conn `i` and closes it (for good, or until a retry in churn);
    /// the messages it still owed are lost.
    pub(super) fn fail(&mut self, i: usize, kind: ErrorKind, what: String) {
        self.errors.count(kind);
        self.sample(kind, what);
        let now = Instant::now();
        let conn = &mut self.conns[i];
        let counted = match (self.t_meas, self.window_end) {
            (Some(from), Some(to)) => now >= from && from <= to,
            _ => false,
        };
        for start in conn.starts.drain(..) {
            if self.lost.len() < MAX_PENDING {
                self.lost.push((start, now));
            } else if counted && Some(start) < self.window_end {
                // Past the bound the message is counted without its wait.
                self.unfinished.lost += 1;
            }
        }
        let retry_at = Instant::now() + Duration::from_millis(1);
        let churn = self.workload == Workload::Churn;
        self.close(i, churn.then_some(retry_at));
    }

    pub(super) fn sample(&mut self, kind: ErrorKind, what: String) {
        self.error_samples.entry(kind).or_insert(what);
    }

    /// Closes conn `i`: idle until `retry_at` (churn), else dead.
    pub(super) fn close(&mut self, i: usize, retry_at: Option<Instant>) {
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
            None if self.workload == Workload::Churn => State::Idle {
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

    pub(super) fn close_all(&mut self) {
        for conn in &mut self.conns {
            conn.stream = None;
        }
    }

    pub(super) fn into_result(self) -> WorkerResult {
        let per_conn: Vec<u64> = self.conns.iter().map(|c| c.completed_in_window).collect();
        let window = self.t_meas.zip(self.window_end).filter(|(a, b)| a <= b);
        WorkerResult {
            latency: self.latency,
            connect_latency: self.connect_latency,
            messages: self.messages,
            unfinished: self.unfinished,
            window,
            errors: self.errors,
            first_mismatch: self.first_mismatch,
            error_samples: self.error_samples,
            established: self.established,
            echoed: per_conn.iter().filter(|n| **n > 0).count() as u64,
            bytes_received: self.bytes_received,
            first_conn_idx: self.first_conn_idx,
            per_conn,
            interrupted: self.interrupted,
            server_gone: self.server_gone,
            last_echo_secs: self
                .t_meas
                .zip(self.last_echo)
                .map(|(from, at)| signed_secs(from, at)),
            ended_early_secs: self
                .t_meas
                .zip(self.all_failed_at)
                .map(|(from, at)| signed_secs(from, at)),
            conns_stopped: self.conns_stopped,
        }
    }
}

/// `at - from` in seconds, negative when `at` is earlier.
fn signed_secs(from: Instant, at: Instant) -> f64 {
    if at >= from {
        (at - from).as_secs_f64()
    } else {
        -(from - at).as_secs_f64()
    }
}
