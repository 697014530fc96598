//! The load engine: worker threads, each running one mio event loop over its share of the
//! connections, sending the [`crate::pattern`] streams and verifying every byte of the
//! echo.
//!
//! Trade-off: an event loop per thread keeps the tool off the critical path (a message
//! costs one `epoll_wait` share, one `read`, one `write`, like loadgen) at the price of a
//! state machine per connection instead of straight-line blocking code.
//!
//! Layout: this file starts the workers and merges what they measured; `worker` is one
//! worker's event loop and the I/O and verification every workload shares; `closed`,
//! `open` and `churn` are the three drivers, one per [`Workload`], each deciding when a
//! connection sends its next message; `conn` is one connection's state.
//! (`echolab compare`'s fourth load, idle connections held open, is [`crate::hold`].)
//!
//! The rules the loop follows:
//! - Sockets are registered once, edge-triggered, for both directions, so the loop never
//!   changes its interest (no `epoll_ctl` per message).
//! - Reads continue until `WouldBlock` or a short read: a read that returns less than the
//!   buffer has emptied the socket, and new bytes raise a new edge. Not when the event
//!   reported the peer's end of stream: a FIN that came with the last bytes raises no
//!   edge of its own, so the reads go on to the end of stream. A connection gets at most
//!   a few full reads per pass and goes on a backlog, read again next pass, so that one
//!   fast connection cannot keep the loop to itself.
//! - Partial reads and writes are normal: a connection's state is counted in stream bytes
//!   (`issued`, `sent`, `recvd`), never in "messages read".
//! - Every connection is established before the clock starts (not in churn).
//! - Every message that starts (open loop: falls due) before the window's end and is owed
//!   at some point of the window, warm-up messages still owed when it opens included, is
//!   accounted for: completed, or incomplete at the end (held back, in flight,
//!   lost with a failed connection, or never sent), and an incomplete message that had
//!   been handed to a connection counts in the latency with the time it waited until the
//!   window's end. In-flight echoes get a bounded drain (1 s) after the end.
//! - Every loop is bounded: the run ends at its deadline, on the stop flag, or when every
//!   connection is gone; start-up ends on the first failure.

mod churn;
mod closed;
mod conn;
mod open;
mod worker;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};
use std::{fmt, thread};

use mio::Events;

pub use conn::describe;

use crate::config::{BenchConfig, Workload};
use crate::latency::{Latency, LatencySummary};
use crate::pattern::Pattern;
use crate::report::{BenchReport, ErrorCounts, ErrorKind, MismatchAt, Unfinished};
use worker::Worker;

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
    /// Errors so far, all kinds.
    pub errors: u64,
    /// With [`BenchConfig::interval_latency`]: the latencies of the window's messages
    /// completed since the previous tick (the histograms are emptied by this tick).
    pub interval_latency: Option<LatencySummary>,
}

/// Counters a worker publishes for the progress display, one cache line each so that two
/// workers never write the same line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Published {
    messages: AtomicU64,
    errors: AtomicU64,
    /// With [`BenchConfig::interval_latency`]: the latencies since the last tick. The
    /// worker locks it once per completed message, the main thread once per tick to empty
    /// it; off (`None`) by default, so that a plain run pays nothing for it.
    interval: Option<Mutex<Latency>>,
}

/// When the progress ticks after `now`: every `tick` from `t0` during the warm-up, then
/// every `tick` from the window's opening `t_meas`, never at it. A tick counted from `t0`
/// through the opening (the default 1 s warm-up and 1 s interval put one there) measured
/// the window's first fraction of a millisecond as an interval of its own.
fn next_tick(t0: Instant, t_meas: Instant, tick: Duration, now: Instant) -> Instant {
    let tick = tick.max(Duration::from_millis(1));
    let after = |base: Instant| {
        let elapsed = now.saturating_duration_since(base);
        let k = (elapsed.as_nanos() / tick.as_nanos()).min(u128::from(u32::MAX - 1)) as u32;
        base + tick * (k + 1)
    };
    if now < t_meas {
        let warm = after(t0);
        if warm < t_meas {
            return warm;
        }
    }
    after(t_meas)
}

/// Runs one bench: connects, loads the server for the warm-up then the measured window,
/// and merges what every worker saw. `stop` ends the run early (Ctrl-C) with the figures
/// measured so far; `on_tick` is called about every `tick` with the progress.
///
/// Errors: [`BenchError::Connect`] when not one connection was established,
/// [`BenchError::Setup`] when an epoll instance, a timerfd or a worker thread cannot be
/// created (every worker already started is then stopped and joined before returning).
pub fn run(
    config: &BenchConfig,
    stop: &AtomicBool,
    tick: Duration,
    mut on_tick: impl FnMut(&Progress),
) -> Result<BenchReport, BenchError> {
    let pattern = Pattern::new(config.msg_size, config.lines);
    let n_threads = config.effective_threads();
    if config.workload() == Workload::Churn {
        // Churn has no connect phase to fail in: check once that anyone is listening, so
        // an unreachable server is a clear error rather than a run of connect errors.
        std::net::TcpStream::connect_timeout(&config.addr, config.connect_timeout).map_err(
            |err| BenchError::Connect {
                addr: config.addr,
                reason: describe(&err),
            },
        )?;
    }
    // Set when start-up fails: workers already started stop connecting and end.
    let abort = AtomicBool::new(false);
    let published: Vec<Published> = (0..n_threads)
        .map(|_| Published {
            interval: config.interval_latency.then(|| Mutex::new(Latency::new())),
            ..Published::default()
        })
        .collect();
    let mut workers = Vec::with_capacity(n_threads);
    let mut first_conn_idx = 0;
    for (worker_idx, published) in published.iter().enumerate() {
        let n = config.n_conns / n_threads + usize::from(worker_idx < config.n_conns % n_threads);
        workers.push(Worker::new(
            config,
            &pattern,
            [stop, &abort],
            published,
            (worker_idx, n_threads),
            first_conn_idx,
            n,
        )?);
        first_conn_idx += n;
    }
    thread::scope(|scope| {
        let (result_tx, result_rx) = mpsc::channel();
        // Each worker says how many connections it established, then waits for the start
        // time (None: do not start). No barrier: a worker that never starts cannot leave
        // the others waiting.
        let (ready_tx, ready_rx) = mpsc::channel::<u64>();
        let mut start_txs = Vec::with_capacity(n_threads);
        for (worker_idx, mut worker) in workers.into_iter().enumerate() {
            let (start_tx, start_rx) = mpsc::channel::<Option<Instant>>();
            let (ready_tx, result_tx) = (ready_tx.clone(), result_tx.clone());
            let spawned = match injected_spawn_error(worker_idx) {
                Some(err) => Err(err),
                None => thread::Builder::new()
                    .name("bench-worker".to_string())
                    .spawn_scoped(scope, move || {
                        let mut events = Events::with_capacity(1024);
                        if worker.workload != Workload::Churn {
                            worker.connect_all(&mut events);
                        }
                        let _ = ready_tx.send(worker.established);
                        if let Ok(Some(t0)) = start_rx.recv() {
                            worker.run(&mut events, t0);
                        }
                        worker.close_all();
                        // The receiver outlives every worker (same scope), so this cannot fail.
                        let _ = result_tx.send(worker.into_result());
                    }),
            };
            if let Err(source) = spawned {
                // The started workers see `abort`, stop connecting, find their start
                // channel closed and end; the scope joins them before this returns.
                abort.store(true, Ordering::Relaxed);
                drop(start_txs);
                return Err(BenchError::Setup {
                    what: "cannot start a worker thread",
                    source,
                });
            }
            start_txs.push(start_tx);
        }
        drop((ready_tx, result_tx));
        let mut established = 0;
        for _ in 0..n_threads {
            match ready_rx.recv() {
                Ok(n) => established += n,
                Err(_) => break,
            }
        }
        let t0 = (config.workload() == Workload::Churn || established > 0).then(Instant::now);
        for start_tx in &start_txs {
            let _ = start_tx.send(t0);
        }
        let mut results = Vec::with_capacity(n_threads);
        let t_meas = t0.map(|t0| t0 + config.warmup);
        let mut next = t0
            .zip(t_meas)
            .map(|(t0, t_meas)| next_tick(t0, t_meas, tick, t0));
        while results.len() < n_threads {
            let wait = next.map_or(tick, |at| at.saturating_duration_since(Instant::now()));
            match result_rx.recv_timeout(wait) {
                Ok(result) => results.push(result),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let (Some(t0), Some(t_meas)) = (t0, t_meas) else {
                        continue;
                    };
                    next = Some(next_tick(t0, t_meas, tick, now));
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
                        interval_latency: config
                            .interval_latency
                            .then(|| take_interval(&published).summary()),
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut report = merge(results, config);
        if config.workload() == Workload::Churn {
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

/// Empties every worker's interval histogram into one.
fn take_interval(published: &[Published]) -> Latency {
    let mut merged = Latency::new();
    for interval in published.iter().filter_map(|p| p.interval.as_ref()) {
        // A worker that panicked while holding the lock left a histogram still whole.
        let mut latency = interval.lock().unwrap_or_else(|e| e.into_inner());
        merged.merge(&latency);
        latency.reset();
    }
    merged
}

/// What one worker measured.
#[derive(Debug)]
struct WorkerResult {
    latency: Latency,
    connect_latency: Latency,
    messages: u64,
    unfinished: Unfinished,
    /// The worker's measured window, if it reached it.
    window: Option<(Instant, Instant)>,
    errors: ErrorCounts,
    first_mismatch: Option<MismatchAt>,
    error_samples: BTreeMap<ErrorKind, String>,
    established: u64,
    echoed: u64,
    bytes_received: u64,
    /// The global index of `per_conn[0]`.
    first_conn_idx: usize,
    /// Messages of the window each connection (slot, in churn) completed.
    per_conn: Vec<u64>,
    interrupted: bool,
    server_gone: bool,
    /// Seconds from the window's start to the last echo (negative: in the warm-up).
    last_echo_secs: Option<f64>,
    /// Seconds into the window when every connection had failed, if before the end.
    ended_early_secs: Option<f64>,
    conns_stopped: u64,
}

fn merge(results: Vec<WorkerResult>, config: &BenchConfig) -> BenchReport {
    let mut latency = Latency::new();
    let mut connect_latency = Latency::new();
    let mut report = BenchReport::empty(config.n_conns);
    report.server_gone = !results.is_empty();
    let mut ended_early = (!results.is_empty()).then_some(f64::NEG_INFINITY);
    for r in &results {
        latency.merge(&r.latency);
        connect_latency.merge(&r.connect_latency);
        report.messages += r.messages;
        report.unfinished.add(&r.unfinished);
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
        report.bytes_received += r.bytes_received;
        for (k, n) in r.per_conn.iter().enumerate() {
            report.per_conn[r.first_conn_idx + k] = *n;
        }
        report.interrupted |= r.interrupted;
        report.server_gone &= r.server_gone;
        report.conns_stopped += r.conns_stopped;
        if let Some(at) = r.last_echo_secs {
            report.last_echo_secs = Some(report.last_echo_secs.map_or(at, |was: f64| was.max(at)));
        }
        // The run ended early only when every worker's connections had all failed.
        ended_early = ended_early.zip(r.ended_early_secs).map(|(a, b)| a.max(b));
    }
    report.ended_early_secs = ended_early;
    report.latency = latency.summary();
    report.latency_hist = latency;
    if config.workload() == Workload::Churn {
        report.connect_latency = Some(connect_latency.summary());
    }
    report
}

/// Debug builds only: the error the spawn of worker `worker_idx` fails with when
/// `ECHOLAB_FAULT_BENCH` holds `spawn=N` and `worker_idx` is N (0-based), so a test can
/// make one worker thread fail to start after others have (an address-space limit does
/// the same, but where it bites depends on the allocator). Release builds: always None.
fn injected_spawn_error(worker_idx: usize) -> Option<io::Error> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let spec = std::env::var("ECHOLAB_FAULT_BENCH").ok()?;
    let n: usize = spec.strip_prefix("spawn=")?.parse().ok()?;
    (n == worker_idx).then(|| io::Error::from_raw_os_error(libc::EAGAIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_ticks_from_the_start_then_from_the_window_never_at_its_opening() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // The defaults: a 1 s warm-up and a 1 s interval. The first tick is the window's
        // first second, not its first instant.
        let t_meas = t0 + ms(1000);
        assert_eq!(next_tick(t0, t_meas, ms(1000), t0), t_meas + ms(1000));
        assert_eq!(
            next_tick(t0, t_meas, ms(1000), t_meas + ms(1003)),
            t_meas + ms(2000)
        );
        // A longer warm-up ticks through it, from its start.
        let t_meas = t0 + ms(2500);
        assert_eq!(next_tick(t0, t_meas, ms(1000), t0), t0 + ms(1000));
        assert_eq!(
            next_tick(t0, t_meas, ms(1000), t0 + ms(1001)),
            t0 + ms(2000)
        );
        // The next tick of the warm-up would fall in the window: the window's first instead.
        assert_eq!(
            next_tick(t0, t_meas, ms(1000), t0 + ms(2001)),
            t_meas + ms(1000)
        );
        // No warm-up: every tick from the window's opening.
        assert_eq!(next_tick(t0, t0, ms(500), t0), t0 + ms(500));
        assert_eq!(next_tick(t0, t0, ms(500), t0 + ms(500)), t0 + ms(1000));
    }
}
