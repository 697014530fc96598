//! The UDP load engine (`echolab bench --udp`): N connected UDP sockets spread over a few
//! threads, each thread a mio loop; every datagram is built by [`crate::wire`] and every
//! echo judged by [`crate::account::Flow`]. Closed loop (one datagram outstanding per
//! socket: a lost one is waited for until `--timeout`) or open loop (`--rate`: a fixed
//! schedule per socket, latency from the intended send time).
//!
//! The engine never prints; [`UdpReport`] renders the text and the JSON.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use crate::account::{Counts, Echo, Flow};
use crate::wire::{self, Parsed};
use crate::BUF_LEN;

/// Datagrams one socket may send in one turn of its loop (open loop catching up).
const SEND_BUDGET: usize = 64;

/// Echoes read from one socket per readiness before the next socket's turn.
const RECV_BUDGET: usize = 256;

/// The longest a loop waits without looking at the clock and the stop flag.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// How long an interrupted run still waits for the echoes awaited (at most `--timeout`):
/// Ctrl-C must not wait out a long timeout (it waited the whole of `--timeout 20s`, and
/// a second Ctrl-C then exited without a report). What is still awaited then is counted
/// lost and given up.
const INTERRUPT_GRACE: Duration = Duration::from_secs(1);

/// A checked `bench --udp` configuration.
#[derive(Debug, Clone)]
pub struct UdpBenchConfig {
    pub addr: SocketAddr,
    /// Sockets, each its own flow (connection id = socket index).
    pub n_conns: usize,
    /// Datagram size in bytes, header included (at least [`wire::HEADER`]).
    pub size: usize,
    /// How long datagrams are sent.
    pub duration: Duration,
    /// Stop each socket after this many datagrams (even if `duration` has not passed).
    pub count: Option<u64>,
    /// Open loop: datagrams per second in total; `None` is the closed loop.
    pub rate: Option<f64>,
    /// An echo later than this after its intended send time is lost.
    pub timeout: Duration,
    /// Threads (at most `n_conns`).
    pub n_threads: usize,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct UdpReport {
    pub config: UdpBenchConfig,
    pub counts: Counts,
    /// From the first send to the last datagram resolved (echoed or lost).
    pub elapsed: Duration,
    /// Latencies of on-time echoes, in nanoseconds.
    pub latency: Histogram<u64>,
    /// The mean over sockets of their RFC 3550 jitter (sockets with two echoes or more).
    pub jitter: Duration,
    /// Send or receive errors from the socket layer (ICMP port unreachable arrives as
    /// ECONNREFUSED on a connected socket).
    pub socket_errors: u64,
    /// Those errors by what the kernel said (`connection refused`, `message too long`,
    /// ...), adding up to `socket_errors`.
    pub socket_error_kinds: BTreeMap<String, u64>,
    /// The sending window: from the start to `--duration`, or to the stop when
    /// interrupted. Open loop: every datagram due in it is accounted (sent or unsent).
    pub window: Duration,
    /// Whether SIGINT/SIGTERM cut the run short.
    pub interrupted: bool,
    /// From the start to the last send or on-time echo ([`Flow::last_active`]): the span
    /// of [`UdpReport::echoes_per_sec`].
    pub active: Duration,
}

impl UdpReport {
    /// On-time echoes per second of the active span (from the start to the last send or
    /// on-time echo): the wait for the last datagrams' timeouts is not in it, so a run
    /// that loses one datagram at its end is not reported at half its rate.
    pub fn echoes_per_sec(&self) -> f64 {
        let secs = self.active.as_secs_f64();
        if secs > 0.0 {
            self.counts.echoed as f64 / secs
        } else {
            0.0
        }
    }

    /// Datagrams due but never sent, as a fraction of those due (0 when none was due).
    pub fn unsent_ratio(&self) -> f64 {
        let intended = self.counts.intended();
        if intended == 0 {
            0.0
        } else {
            self.counts.unsent as f64 / intended as f64
        }
    }

    /// Datagrams sent per second of the sending window.
    pub fn sent_per_sec(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 {
            self.counts.sent as f64 / secs
        } else {
            0.0
        }
    }

    /// The exit status of the run and the sentence that says why, computed from its
    /// figures: 3 a corrupt echo; 1 datagrams due but never sent, nothing echoed (not
    /// interrupted), loss above `max_loss_percent`, or socket errors; 130 interrupted; 0.
    pub fn verdict(&self, max_loss_percent: f64) -> (u8, String) {
        let counts = &self.counts;
        let loss = 100.0 * counts.loss_ratio();
        if counts.corrupt > 0 {
            return (3, format!("FAIL: {} corrupt echoes", counts.corrupt));
        }
        if counts.unsent > 0 {
            let rate = self.config.rate.unwrap_or(0.0);
            let behind = counts.unsent.saturating_sub(counts.refused_sends);
            let refused = format!(
                "{} refused by the kernel ({})",
                counts.refused_sends,
                echolab_cli::counted(self.socket_errors, "socket error")
            );
            let why = match (behind, counts.refused_sends) {
                (_, 0) => format!(
                    "the generator sent {:.0}/s and could not keep --rate {rate}{}",
                    self.sent_per_sec(),
                    match self.socket_errors {
                        0 => String::new(),
                        n => format!(" ({n} socket errors)"),
                    }
                ),
                (0, _) => format!("their sends were {refused}"),
                (behind, _) => format!(
                    "{behind} because the generator fell behind (it sent {:.0}/s of --rate {rate}), {refused}",
                    self.sent_per_sec()
                ),
            };
            return (
                1,
                format!(
                    "FAIL: {} of {} datagrams due in the {:.2} s window ({:.1}%) were never sent: {why}",
                    counts.unsent,
                    counts.intended(),
                    self.window.as_secs_f64(),
                    100.0 * self.unsent_ratio(),
                ),
            );
        }
        if counts.echoed == 0 && !self.interrupted {
            return (1, "FAIL: no echo came back".to_string());
        }
        if loss > max_loss_percent {
            return (
                1,
                format!(
                    "FAIL: loss {loss:.3}% is above --max-loss {max_loss_percent}%{}",
                    match counts.bench_drops {
                        0 => String::new(),
                        // A dropped duplicate is no lost echo: no more than `lost` can be.
                        n => format!(
                            " (up to {} of the lost echoes were dropped by the bench's own receive queues)",
                            n.min(counts.lost)
                        ),
                    }
                ),
            );
        }
        if self.socket_errors > 0 {
            return (1, format!("FAIL: {} socket errors", self.socket_errors));
        }
        if self.interrupted {
            return (
                130,
                format!(
                    "interrupted after {:.2} s of {:.2} s: loss {loss:.3}% so far",
                    self.window.as_secs_f64(),
                    self.config.duration.as_secs_f64()
                ),
            );
        }
        (
            0,
            format!("ok: loss {loss:.3}% within --max-loss {max_loss_percent}%"),
        )
    }

    /// A latency quantile in microseconds (0 when nothing was echoed).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            0.0
        } else {
            self.latency.value_at_quantile(q) as f64 / 1000.0
        }
    }

    /// The run as a human reads it; every sentence computed from the figures.
    pub fn text(&self) -> String {
        let c = &self.counts;
        let cfg = &self.config;
        let shape = match cfg.rate {
            Some(rate) => format!("open loop at {rate} datagrams/s"),
            None => "closed loop (one outstanding per socket)".to_string(),
        };
        let mut out = format!(
            "udp bench {}: {} × {} B, {shape}, {:.2} s{}\n",
            cfg.addr,
            echolab_cli::counted(cfg.n_conns, "socket"),
            cfg.size,
            self.elapsed.as_secs_f64(),
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        out += &format!("  echoes/s    {:.0}\n", self.echoes_per_sec());
        out += &format!(
            "  datagrams   sent {}, echoed {}, lost {} ({:.3}%), late {}, duplicates {}, reordered {} (largest distance {}), corrupt {}\n",
            c.sent,
            c.echoed,
            c.lost,
            100.0 * c.loss_ratio(),
            c.late,
            c.duplicates,
            c.reordered,
            c.max_reorder_distance,
            c.corrupt
        );
        if c.given_up > 0 {
            out += &format!(
                "  interrupt   {} still awaited {:.2} s after the interrupt counted lost, before their --timeout of {:.2} s\n",
                echolab_cli::counted(c.given_up, "datagram"),
                cfg.timeout.min(INTERRUPT_GRACE).as_secs_f64(),
                cfg.timeout.as_secs_f64()
            );
        }
        if let Some(rate) = cfg.rate {
            out += &format!(
                "  schedule    {} due in the {:.2} s window at {rate}/s: sent {}, never sent {} ({:.1}%)\n",
                c.intended(),
                self.window.as_secs_f64(),
                c.sent,
                c.unsent,
                100.0 * self.unsent_ratio()
            );
            if c.refused_sends > 0 {
                out += &format!(
                    "              ({} of them refused by the kernel: see the errors line)\n",
                    c.refused_sends
                );
            }
            if c.unsent > c.refused_sends {
                out += "              (the generator fell behind its schedule: latency, loss and late are \
                        measured from the intended send times, so they include its own lag)\n";
            }
        }
        out += &format!(
            "  latency µs  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            self.quantile_us(0.5),
            self.quantile_us(0.9),
            self.quantile_us(0.99),
            self.quantile_us(0.999),
            self.latency.max() as f64 / 1000.0
        );
        out += &format!(
            "  jitter      {:.1} µs (RFC 3550, mean over sockets)\n",
            self.jitter.as_nanos() as f64 / 1000.0
        );
        // Only when something answered: with nothing listening the loss is no server's
        // refusal, and the errors line says so. With nothing back at all and no error,
        // no rate limit explains it (a bucket lets its first second's worth through).
        let answered = c.echoed + c.late + c.duplicates + c.corrupt + c.bench_drops;
        let unanswered = (c.lost - c.late).saturating_sub(c.bench_drops);
        if c.bench_drops > 0 {
            // The kernel counts datagrams: a dropped duplicate or late echo is one too.
            out += &format!(
                "  bench drops {} {} dropped by the bench's own receive queues (its sockets' \
                 drops in /proc/net/udp): {}\n",
                echolab_cli::counted(c.bench_drops, "datagram"),
                if c.bench_drops == 1 { "was" } else { "were" },
                match c.bench_drops.min(c.lost) {
                    0 => "no echo was lost, so none was an echo awaited (duplicates)".to_string(),
                    m => format!("the server sent up to {m} of the lost echoes"),
                }
            );
        }
        if c.sent > 0 && answered == 0 && self.socket_errors == 0 {
            out += &format!(
                "  note        nothing came back from {addr}: no server answered, or it answered from another \
                 address or port (the bench's sockets are connected to {addr}, and the kernel drops \
                 datagrams from anywhere else)\n",
                addr = cfg.addr
            );
        } else if unanswered > 0 && self.socket_errors == 0 {
            out += &format!(
                "  note        {} {} not echoed while the bench listened; an echolab server counts what it \
                 refuses: if its `rate-limited` count is not 0, its --udp-rate-per-source (per \
                 source address: {} from one address) dropped {}\n",
                echolab_cli::counted(unanswered, "lost datagram"),
                if unanswered == 1 { "was" } else { "were" },
                echolab_cli::counted(cfg.n_conns, "socket"),
                if unanswered == 1 { "it" } else { "them" }
            );
        }
        if self.socket_errors > 0 {
            out += &format!(
                "  errors      {}{}\n",
                echolab_cli::counted(self.socket_errors, "socket error"),
                self.error_kinds_text()
            );
        }
        out
    }

    /// The socket errors by kind, as the errors line says them: ` (3 connection refused:
    /// ICMP port unreachable, nothing listens on ADDR; 2 message too long)`, or nothing
    /// when no kind was recorded. Only the kernel's own words: what the errors were is
    /// never assumed.
    fn error_kinds_text(&self) -> String {
        if self.socket_error_kinds.is_empty() {
            return String::new();
        }
        let kinds: Vec<String> = self
            .socket_error_kinds
            .iter()
            .map(|(kind, n)| {
                if kind == REFUSED {
                    format!(
                        "{n} {kind}: ICMP port unreachable, nothing listens on {}",
                        self.config.addr
                    )
                } else {
                    format!("{n} {kind}")
                }
            })
            .collect();
        format!(" ({})", kinds.join("; "))
    }

    /// The run as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        let c = &self.counts;
        serde_json::json!({
            "proto": "udp",
            "addr": self.config.addr.to_string(),
            "conns": self.config.n_conns,
            "size": self.config.size,
            "rate": self.config.rate,
            "timeout_secs": self.config.timeout.as_secs_f64(),
            "elapsed_s": self.elapsed.as_secs_f64(),
            "active_s": self.active.as_secs_f64(),
            "echoes_per_sec": self.echoes_per_sec(),
            "window_s": self.window.as_secs_f64(),
            "intended": c.intended(),
            "sent": c.sent,
            "unsent": c.unsent,
            "given_up": c.given_up,
            "bench_drops": c.bench_drops,
            "refused_sends": c.refused_sends,
            "echoed": c.echoed,
            "lost": c.lost,
            "loss_ratio": c.loss_ratio(),
            "late": c.late,
            "duplicates": c.duplicates,
            "reordered": c.reordered,
            "max_reorder_distance": c.max_reorder_distance,
            "corrupt": c.corrupt,
            "corrupt_answers": c.corrupt_answers,
            "socket_errors": self.socket_errors,
            "socket_errors_by_kind": self.socket_error_kinds,
            "jitter_us": self.jitter.as_nanos() as f64 / 1000.0,
            "latency_us": {
                "p50": self.quantile_us(0.5),
                "p90": self.quantile_us(0.9),
                "p99": self.quantile_us(0.99),
                "p999": self.quantile_us(0.999),
                "max": self.latency.max() as f64 / 1000.0,
            },
            "interrupted": self.interrupted,
        })
    }
}

/// One socket and its flow.
struct Sock {
    socket: mio::net::UdpSocket,
    conn_id: u32,
    flow: Flow,
    /// Open loop: this socket's share of the schedule.
    schedule: Option<Schedule>,
    /// Open loop: the next intended send time (`schedule.intended(slots)`).
    next_send: Duration,
    /// Open loop: slots of the schedule used so far (sent, or failed to send).
    slots: u64,
}

/// One socket's share of the open loop's schedule, the same schedule as TCP bench's
/// (`echolab_load::schedule::RateSchedule`): datagram `j` of the aggregate is due `j /
/// rate` seconds after the start, and socket `phase` of `stride` sends datagrams `phase`,
/// `phase + stride`, ... of it. So `--rate 0.5` means one datagram every 2 s in total,
/// whatever the socket count, for UDP and TCP alike. Each time is computed from the slot
/// number, so rounding never accumulates (at 7e8/s a step of 1.43 ns is not rounded to
/// 1 ns once and added up).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    rate: f64,
    phase: u64,
    stride: u64,
}

impl Schedule {
    /// When this socket's slot `slot` is due, from the start.
    fn intended(&self, slot: u64) -> Duration {
        let aggregate = slot.saturating_mul(self.stride).saturating_add(self.phase);
        Duration::try_from_secs_f64(aggregate as f64 / self.rate).unwrap_or(Duration::MAX)
    }

    /// How many of this socket's slots from `first` on are due before `end`.
    fn due_before(&self, first: u64, end: Duration) -> u64 {
        // The first slot due at or after `end`, estimated, then corrected against
        // `intended` itself (the estimate can be off by a rounding step).
        let estimate = (end.as_secs_f64() * self.rate - self.phase as f64) / self.stride as f64;
        let guess = if estimate.is_finite() && estimate > 0.0 {
            estimate.ceil() as u64
        } else {
            0
        };
        self.first_due_at_or_after(end, guess.max(first), first) - first
    }

    /// The first slot from `first` on due at or after `end`, from `guess` (at least
    /// `first`) moved by at most [`Schedule::CORRECTION`] steps either way.
    fn first_due_at_or_after(&self, end: Duration, guess: u64, first: u64) -> u64 {
        let mut k = guess;
        for _ in 0..Self::CORRECTION {
            if k > first && self.intended(k - 1) >= end {
                k -= 1;
            } else if self.intended(k) < end {
                k += 1;
            } else {
                break;
            }
        }
        k
    }

    /// Steps the estimate of [`Schedule::due_before`] may be corrected by (it is off by
    /// one at most, from the rounding of `f64`).
    const CORRECTION: usize = 4;
}

/// What one thread measured.
struct Part {
    counts: Counts,
    latency: Histogram<u64>,
    jitters: Vec<Duration>,
    socket_errors: SocketErrors,
    /// When this thread stopped sending (the duration, or when it saw the stop flag).
    window: Duration,
    /// Its sockets' last send or on-time echo.
    active: Duration,
}

/// How `describe_io` says ECONNREFUSED (an ICMP port unreachable on a connected socket).
const REFUSED: &str = "connection refused";

/// One thread's socket errors, by what the kernel said.
#[derive(Debug, Default)]
struct SocketErrors {
    total: u64,
    by_kind: BTreeMap<String, u64>,
}

impl SocketErrors {
    fn count(&mut self, err: &io::Error) {
        self.total += 1;
        *self
            .by_kind
            .entry(echolab_cli::describe_io(err))
            .or_default() += 1;
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 1 hour at 3 significant figures; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram bounds")
}

/// The counts so far, as the progress lines see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Since the first send.
    pub elapsed: Duration,
    pub sent: u64,
    pub echoed: u64,
    pub lost: u64,
    pub socket_errors: u64,
}

impl Progress {
    /// The line `bench --udp --interval` prints: like TCP bench's (`bench: 2.0 s measured,
    /// 41000 messages/s, 0 errors`), with the echo rate since `before` (the previous line)
    /// and the loss so far.
    pub fn line(&self, before: &Progress) -> String {
        let dt = self.elapsed.saturating_sub(before.elapsed).as_secs_f64();
        let rate = self.echoed.saturating_sub(before.echoed) as f64 / dt.max(1e-3);
        format!(
            "bench: {:.1} s measured, {rate:.0} echoes/s, {} sent, {} lost, {} errors",
            self.elapsed.as_secs_f64(),
            self.sent,
            self.lost,
            self.socket_errors
        )
    }
}

/// One thread's counts, published for the progress lines.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    echoed: AtomicU64,
    lost: AtomicU64,
    socket_errors: AtomicU64,
}

/// How often a thread publishes its counts (at most; it also does at its end).
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// Runs the load until the duration (or count) is done and every datagram is resolved,
/// or `stop` is set (then it stops sending and still resolves what is outstanding).
///
/// Errors: creating or connecting a socket.
pub fn run(config: &UdpBenchConfig, stop: &AtomicBool) -> io::Result<UdpReport> {
    run_with_progress(config, stop, Duration::ZERO, |_, _| {})
}

/// [`run`], calling `progress(now, before)` every `interval` (never when it is zero) from
/// a thread of its own, with the counts so far and those of the previous call.
pub fn run_with_progress(
    config: &UdpBenchConfig,
    stop: &AtomicBool,
    interval: Duration,
    mut progress: impl FnMut(&Progress, &Progress) + Send,
) -> io::Result<UdpReport> {
    let local: IpAddr = if config.addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let n_threads = config.n_threads.clamp(1, config.n_conns.max(1));
    let mut groups: Vec<Vec<Sock>> = (0..n_threads).map(|_| Vec::new()).collect();
    // Open loop: socket i sends the aggregate's datagrams i, i + n_conns, ..., so that the
    // total is the rate, evenly spread.
    let open = config.rate.is_some();
    for conn_idx in 0..config.n_conns {
        let socket = mio::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
        // Best effort, as the server's: a small queue drops echoes of large datagrams
        // before the loop reads them (the default 208 KiB holds three of 64 KiB).
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(crate::RECV_BUFFER);
        socket.connect(config.addr)?;
        let schedule = config.rate.map(|rate| Schedule {
            rate,
            phase: conn_idx as u64,
            stride: config.n_conns as u64,
        });
        groups[conn_idx % n_threads].push(Sock {
            socket,
            conn_id: conn_idx as u32,
            flow: Flow::new(config.timeout),
            next_send: schedule.map_or(Duration::ZERO, |s| s.intended(0)),
            schedule,
            slots: 0,
        });
    }
    let tallies: Vec<Tally> = (0..n_threads).map(|_| Tally::default()).collect();
    let start = Instant::now();
    let parts: Vec<io::Result<Part>> = std::thread::scope(|scope| {
        // The reporter ticks until every driver has hung up its end of the channel.
        let (alive, all_done) = mpsc::channel::<()>();
        let handles: Vec<_> = groups
            .into_iter()
            .zip(&tallies)
            .map(|(socks, tally)| {
                let alive = alive.clone();
                scope.spawn(move || {
                    let part = drive(config, socks, open, start, stop, tally);
                    drop(alive);
                    part
                })
            })
            .collect();
        drop(alive);
        if !interval.is_zero() {
            let tallies = &tallies;
            scope.spawn(move || {
                let mut before = Progress::default();
                for tick in 1u32.. {
                    let due = interval.saturating_mul(tick);
                    let wait = due.saturating_sub(start.elapsed());
                    if all_done.recv_timeout(wait) != Err(mpsc::RecvTimeoutError::Timeout) {
                        break;
                    }
                    let now = Progress {
                        elapsed: start.elapsed(),
                        sent: tallies.iter().map(|t| t.sent.load(Ordering::Relaxed)).sum(),
                        echoed: tallies
                            .iter()
                            .map(|t| t.echoed.load(Ordering::Relaxed))
                            .sum(),
                        lost: tallies.iter().map(|t| t.lost.load(Ordering::Relaxed)).sum(),
                        socket_errors: tallies
                            .iter()
                            .map(|t| t.socket_errors.load(Ordering::Relaxed))
                            .sum(),
                    };
                    progress(&now, &before);
                    before = now;
                }
            });
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("bench thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut counts = Counts::default();
    let mut latency = new_histogram();
    let mut jitters = Vec::new();
    let mut socket_errors = 0;
    let mut socket_error_kinds = BTreeMap::new();
    let mut window = Duration::ZERO;
    let mut active = Duration::ZERO;
    for part in parts {
        let part = part?;
        window = window.max(part.window);
        active = active.max(part.active);
        counts.add(&part.counts);
        latency.add(&part.latency).map_err(io::Error::other)?;
        jitters.extend(part.jitters);
        socket_errors += part.socket_errors.total;
        for (kind, n) in part.socket_errors.by_kind {
            *socket_error_kinds.entry(kind).or_default() += n;
        }
    }
    let jitter = if jitters.is_empty() {
        Duration::ZERO
    } else {
        jitters.iter().sum::<Duration>() / jitters.len() as u32
    };
    Ok(UdpReport {
        config: config.clone(),
        counts,
        elapsed,
        latency,
        jitter,
        socket_errors,
        socket_error_kinds,
        window,
        interrupted: stop.load(Ordering::SeqCst),
        active,
    })
}

/// One thread's loop over its sockets.
fn drive(
    config: &UdpBenchConfig,
    mut socks: Vec<Sock>,
    open: bool,
    start: Instant,
    stop: &AtomicBool,
    tally: &Tally,
) -> io::Result<Part> {
    let mut poll = Poll::new()?;
    for (idx, sock) in socks.iter_mut().enumerate() {
        poll.registry()
            .register(&mut sock.socket, Token(idx), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(socks.len().max(1));
    let mut out = vec![0u8; config.size];
    let mut rx = RecvBufs {
        buf: vec![0u8; BUF_LEN],
        scratch: Vec::new(),
    };
    let mut latency = new_histogram();
    let mut socket_errors = SocketErrors::default();
    let mut window: Option<Duration> = None;
    let mut interrupted_at: Option<Duration> = None;
    let mut published = Duration::ZERO;
    loop {
        let now = start.elapsed();
        if now >= published + PUBLISH_EVERY {
            published = now;
            publish(&socks, socket_errors.total, tally);
        }
        let stopped = stop.load(Ordering::SeqCst);
        if stopped && interrupted_at.is_none() {
            interrupted_at = Some(now);
        }
        let sending = now < config.duration && !stopped;
        if !sending && window.is_none() {
            // The window ends. This turn still sends what any turn would have: the slots
            // due before the end, up to the turn's budget (the loop woke a little after
            // the end, as it wakes a little after every send time; a slot due then is
            // late, not unsent). Every slot due in the window and still not used is
            // counted unsent (a generator that fell behind must say so).
            let end = now.min(config.duration);
            window = Some(end);
            for sock in socks.iter_mut() {
                if let Some(schedule) = sock.schedule {
                    let before_end = |at: Duration| at < end;
                    send_due(
                        sock,
                        schedule,
                        config.count,
                        before_end,
                        now,
                        &mut out,
                        &mut socket_errors,
                    );
                    let due = schedule.due_before(sock.slots, end);
                    let left = config.count.map_or(due, |n| due.min(n - sock.slots));
                    sock.flow.not_sent(left);
                }
            }
        }
        // Sends.
        let mut next_wake: Option<Duration> = None;
        for sock in socks.iter_mut() {
            match sock.schedule {
                None => {
                    let may_send = sending && config.count.is_none_or(|n| sock.flow.next_seq() < n);
                    if may_send && sock.flow.outstanding() == 0 {
                        send(sock, now, now, &mut out, &mut socket_errors, false);
                    }
                }
                Some(schedule) => {
                    let may_send =
                        |sock: &Sock| sending && config.count.is_none_or(|n| sock.slots < n);
                    if sending {
                        let by_now = |at: Duration| at <= now;
                        send_due(
                            sock,
                            schedule,
                            config.count,
                            by_now,
                            now,
                            &mut out,
                            &mut socket_errors,
                        );
                    }
                    if may_send(sock) {
                        next_wake = earliest(next_wake, sock.next_send);
                    }
                }
            }
        }
        // Losses.
        let mut done = true;
        for sock in socks.iter_mut() {
            sock.flow.expire(now);
            if let Some(deadline) = sock.flow.next_deadline() {
                next_wake = earliest(next_wake, deadline);
            }
            let used = if open {
                sock.slots
            } else {
                sock.flow.next_seq()
            };
            let more_to_send = sending && config.count.is_none_or(|n| used < n);
            if more_to_send || sock.flow.outstanding() > 0 {
                done = false;
            }
        }
        if done {
            break;
        }
        if let Some(at) = interrupted_at {
            let give_up_at = at + config.timeout.min(INTERRUPT_GRACE);
            if now >= give_up_at {
                break;
            }
            next_wake = earliest(next_wake, give_up_at);
        }
        // Wait for echoes, a send time or a deadline.
        let mut wait = next_wake.map_or(MAX_WAIT, |at| at.saturating_sub(start.elapsed()));
        if sending {
            wait = wait.min(config.duration.saturating_sub(start.elapsed()));
        }
        match poll.poll(&mut events, Some(wait.min(MAX_WAIT))) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        for event in events.iter() {
            let Some(sock) = socks.get_mut(event.token().0) else {
                continue;
            };
            // Closed loop: once nothing is awaited, the next datagram is due before anything
            // else can arrive; reading on only to hear WouldBlock would cost a system call
            // per echo. (Epoll reports the next arrival as a new edge, so a stray duplicate
            // still queued is read then.)
            let while_awaited = !open;
            read_queued(
                sock,
                &mut rx,
                start,
                config.size,
                &mut latency,
                &mut socket_errors,
                while_awaited,
            );
        }
    }
    // What already arrived and was never read: the closed loop stops reading a socket
    // once nothing is awaited, so a duplicate of its last echo was left uncounted.
    for sock in socks.iter_mut() {
        let while_awaited = false;
        read_queued(
            sock,
            &mut rx,
            start,
            config.size,
            &mut latency,
            &mut socket_errors,
            while_awaited,
        );
    }
    for sock in socks.iter_mut() {
        sock.flow.give_up();
    }
    publish(&socks, socket_errors.total, tally);
    let mut counts = Counts::default();
    let inodes: Vec<u64> = socks
        .iter()
        .filter_map(|s| crate::drops::socket_inode(&s.socket))
        .collect();
    counts.bench_drops = crate::drops::drops(&inodes).unwrap_or(0);
    let mut jitters = Vec::new();
    for sock in &socks {
        counts.add(sock.flow.counts());
        if sock.flow.counts().echoed >= 2 {
            jitters.push(sock.flow.jitter());
        }
    }
    Ok(Part {
        counts,
        latency,
        jitters,
        socket_errors,
        window: window.unwrap_or_else(|| start.elapsed().min(config.duration)),
        active: socks
            .iter()
            .map(|s| s.flow.last_active())
            .max()
            .unwrap_or_default(),
    })
}

/// Accounts one datagram that came back on `sock` at `now`: an echo of its own (on time,
/// late, duplicate) or corrupt; an on-time echo's latency goes into `latency`.
/// A loop's receive buffer and the scratch [`wire::parse`] checks patterns in.
struct RecvBufs {
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

/// Reads what `sock` has queued, at most [`RECV_BUDGET`] datagrams, and judges each as it
/// arrives (time from `start`). `while_awaited`: stop as soon as the socket awaits no echo.
fn read_queued(
    sock: &mut Sock,
    rx: &mut RecvBufs,
    start: Instant,
    size: usize,
    latency: &mut Histogram<u64>,
    socket_errors: &mut SocketErrors,
    while_awaited: bool,
) {
    for _ in 0..RECV_BUDGET {
        if while_awaited && sock.flow.outstanding() == 0 {
            break;
        }
        match sock.socket.recv(&mut rx.buf) {
            Ok(len) => {
                let now = start.elapsed();
                judge(sock, &rx.buf[..len], now, size, &mut rx.scratch, latency);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => socket_errors.count(&err),
        }
    }
}

fn judge(
    sock: &mut Sock,
    datagram: &[u8],
    now: Duration,
    size: usize,
    scratch: &mut Vec<u8>,
    latency: &mut Histogram<u64>,
) {
    match wire::parse(datagram, size, scratch) {
        Parsed::Intact { conn_id, seq } if conn_id == sock.conn_id => {
            if let Echo::OnTime { latency: l } = sock.flow.echo(seq, true, now) {
                let _ = latency.record((l.as_nanos() as u64).max(1));
            }
        }
        Parsed::Damaged { conn_id, seq } if conn_id == sock.conn_id => {
            sock.flow.echo(seq, false, now);
        }
        _ => sock.flow.unreadable(),
    }
}

/// Stores one thread's counts so far where the progress lines read them.
fn publish(socks: &[Sock], socket_errors: u64, tally: &Tally) {
    let mut total = Counts::default();
    for sock in socks {
        total.add(sock.flow.counts());
    }
    tally.sent.store(total.sent, Ordering::Relaxed);
    tally.echoed.store(total.echoed, Ordering::Relaxed);
    tally.lost.store(total.lost, Ordering::Relaxed);
    tally.socket_errors.store(socket_errors, Ordering::Relaxed);
}

fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Sends, up to a turn's budget ([`SEND_BUDGET`]), the slots of `sock`'s schedule whose
/// intended time is `due` and that `count` (per socket) still allows, each at `now`.
fn send_due(
    sock: &mut Sock,
    schedule: Schedule,
    count: Option<u64>,
    due: impl Fn(Duration) -> bool,
    now: Duration,
    out: &mut [u8],
    errors: &mut SocketErrors,
) {
    for _ in 0..SEND_BUDGET {
        if count.is_some_and(|n| sock.slots >= n) || !due(sock.next_send) {
            break;
        }
        let intended = sock.next_send;
        sock.slots += 1;
        sock.next_send = schedule.intended(sock.slots);
        send(sock, intended, now, out, errors, true);
    }
}

/// Sends the socket's next datagram; a send error is counted and the datagram not
/// recorded as sent (it did not leave): in the open loop (`scheduled`) its slot of the
/// schedule is counted unsent.
fn send(
    sock: &mut Sock,
    intended: Duration,
    now: Duration,
    out: &mut [u8],
    errors: &mut SocketErrors,
    scheduled: bool,
) {
    let seq = sock.flow.next_seq();
    wire::encode(sock.conn_id, seq, out);
    match sock.socket.send(out) {
        Ok(_) => {
            sock.flow.sent(intended, now);
        }
        Err(err) => {
            errors.count(&err);
            if scheduled {
                sock.flow.send_refused();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(counts: Counts) -> UdpReport {
        UdpReport {
            config: UdpBenchConfig {
                addr: "127.0.0.1:9".parse().unwrap(),
                n_conns: 1,
                size: 64,
                duration: Duration::from_secs(2),
                count: None,
                rate: Some(1000.0),
                timeout: Duration::from_secs(1),
                n_threads: 1,
            },
            counts,
            elapsed: Duration::from_secs(2),
            latency: new_histogram(),
            jitter: Duration::ZERO,
            socket_errors: 0,
            socket_error_kinds: BTreeMap::new(),
            window: Duration::from_secs(2),
            interrupted: false,
            active: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_rate_limit_note_only_when_something_answered() {
        let counts = Counts {
            sent: 10,
            echoed: 8,
            lost: 2,
            ..Counts::default()
        };
        let mut r = report(counts);
        // One socket: "1 socket", not "1 sockets".
        assert!(r
            .text()
            .starts_with("udp bench 127.0.0.1:9: 1 socket × 64 B"));
        assert!(r
            .text()
            .contains("(per source address: 1 socket from one address)"));
        assert!(
            r.text().contains("2 lost datagrams were not echoed"),
            "{}",
            r.text()
        );
        // Nothing listening: the loss is no server's refusal.
        r.socket_errors = 3;
        r.socket_error_kinds = BTreeMap::from([(REFUSED.to_string(), 3)]);
        let text = r.text();
        assert!(!text.contains("--udp-rate-per-source"), "{text}");
        assert!(
            text.contains("errors      3 socket errors (3 connection refused: ICMP port unreachable, nothing listens on 127.0.0.1:9)\n"),
            "{text}"
        );
    }

    #[test]
    fn echoes_the_bench_itself_dropped_are_said_apart_from_the_servers() {
        // 4120 sent and echoed by the server, 3904 of the echoes dropped by the bench's
        // own receive queues (64 KiB datagrams, the default 208 KiB queue).
        let r = report(Counts {
            sent: 4120,
            echoed: 216,
            lost: 3904,
            bench_drops: 3904,
            ..Counts::default()
        });
        let text = r.text();
        assert!(
            text.contains(
                "  bench drops 3904 datagrams were dropped by the bench's own receive queues (its \
                 sockets' drops in /proc/net/udp): the server sent up to 3904 of the lost echoes\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("rate-limited"),
            "nothing is left to blame on the server: {text}"
        );
        assert!(!text.contains("nothing came back"), "{text}");
        assert!(r.verdict(0.0).1.ends_with(
            "(up to 3904 of the lost echoes were dropped by the bench's own receive queues)"
        ));
        assert_eq!(r.json()["bench_drops"], 3904);
        // More drops than losses (duplicates dropped too): no more than the lost are said
        // to be lost to the bench.
        let r = report(Counts {
            sent: 10,
            echoed: 7,
            lost: 3,
            duplicates: 2,
            bench_drops: 9,
            ..Counts::default()
        });
        assert!(
            r.text().contains(
                "  bench drops 9 datagrams were dropped by the bench's own receive queues (its \
             sockets' drops in /proc/net/udp): the server sent up to 3 of the lost echoes\n"
            ),
            "{}",
            r.text()
        );
        // One: its verb agrees.
        let one = report(Counts {
            sent: 10,
            echoed: 9,
            lost: 1,
            bench_drops: 1,
            ..Counts::default()
        });
        assert!(
            one.text()
                .contains("  bench drops 1 datagram was dropped by the bench's own receive queues"),
            "{}",
            one.text()
        );
        assert!(r.verdict(0.0).1.ends_with(
            "(up to 3 of the lost echoes were dropped by the bench's own receive queues)"
        ));
        // Some lost to the server too: the note counts only those.
        let r = report(Counts {
            sent: 100,
            echoed: 90,
            lost: 10,
            bench_drops: 4,
            ..Counts::default()
        });
        assert!(
            r.text()
                .contains("  note        6 lost datagrams were not echoed"),
            "{}",
            r.text()
        );
    }

    #[test]
    fn nothing_back_and_no_error_is_not_blamed_on_a_rate_limit() {
        let r = report(Counts {
            sent: 10,
            lost: 10,
            ..Counts::default()
        });
        let text = r.text();
        assert!(text.contains("note        nothing came back from 127.0.0.1:9: no server answered, or it answered from another address or port"), "{text}");
        assert!(!text.contains("rate-limited"), "{text}");
        // One echo back: the rate-limit note, not this one.
        let r = report(Counts {
            sent: 10,
            echoed: 1,
            lost: 9,
            ..Counts::default()
        });
        assert!(!r.text().contains("nothing came back"));
        assert!(r.text().contains("9 lost datagrams were not echoed"));
        // One lost: its verb agrees.
        let r = report(Counts {
            sent: 10,
            echoed: 9,
            lost: 1,
            ..Counts::default()
        });
        assert!(
            r.text()
                .contains("note        1 lost datagram was not echoed")
                && r.text().contains(") dropped it\n"),
            "{}",
            r.text()
        );
        // Nothing sent: nothing to say.
        assert!(!report(Counts::default()).text().contains("note"));
    }

    #[test]
    fn the_errors_line_says_what_the_kernel_said_never_a_guess() {
        let mut r = report(Counts {
            sent: 0,
            unsent: 10,
            ..Counts::default()
        });
        r.socket_errors = 10;
        r.socket_error_kinds = BTreeMap::from([
            ("message too long".to_string(), 9),
            (REFUSED.to_string(), 1),
        ]);
        let text = r.text();
        assert!(
            text.contains("errors      10 socket errors (1 connection refused: ICMP port unreachable, nothing listens on 127.0.0.1:9; 9 message too long)\n"),
            "{text}"
        );
        assert_eq!(r.json()["socket_errors_by_kind"]["message too long"], 9);
        // Message too long alone: nothing is said about a listener.
        r.socket_error_kinds = BTreeMap::from([("message too long".to_string(), 10)]);
        let text = r.text();
        assert!(!text.contains("listens"), "{text}");
        assert!(
            text.contains("10 socket errors (10 message too long)"),
            "{text}"
        );
    }

    #[test]
    fn a_progress_line_says_the_rate_since_the_previous_one() {
        let before = Progress {
            elapsed: Duration::from_millis(1_000),
            sent: 1_000,
            echoed: 990,
            lost: 3,
            socket_errors: 0,
        };
        let now = Progress {
            elapsed: Duration::from_millis(1_500),
            sent: 2_100,
            echoed: 2_090,
            lost: 5,
            socket_errors: 1,
        };
        assert_eq!(
            now.line(&before),
            "bench: 1.5 s measured, 2200 echoes/s, 2100 sent, 5 lost, 1 errors"
        );
        assert_eq!(
            before.line(&Progress::default()),
            "bench: 1.0 s measured, 990 echoes/s, 1000 sent, 3 lost, 0 errors"
        );
    }

    #[test]
    fn due_before_counts_the_send_times_in_the_window() {
        // 100 per second over 1 socket: 0, 10, ..., 90 ms are in a 100 ms window.
        let one = Schedule {
            rate: 100.0,
            phase: 0,
            stride: 1,
        };
        let ms = Duration::from_millis;
        assert_eq!(one.due_before(0, ms(100)), 10, "0, 10, ..., 90");
        assert_eq!(one.due_before(0, ms(101)), 11, "100 too");
        assert_eq!(one.due_before(3, ms(100)), 7, "30, ..., 90");
        assert_eq!(one.due_before(10, ms(100)), 0, "the end is outside");
        assert_eq!(one.due_before(15, ms(100)), 0);
        assert_eq!(one.due_before(0, Duration::ZERO), 0);
        // Socket 1 of 2 at 200 per second: 5, 15, ..., 95 ms.
        let second = Schedule {
            rate: 200.0,
            phase: 1,
            stride: 2,
        };
        assert_eq!(second.intended(0), ms(5));
        assert_eq!(second.due_before(0, ms(100)), 10);
        assert_eq!(second.due_before(0, ms(95)), 9);
    }

    #[test]
    fn a_guess_off_by_a_few_slots_is_corrected_against_the_times_themselves() {
        // 100 per second: slot 10 is the first at or after 100 ms.
        let one = Schedule {
            rate: 100.0,
            phase: 0,
            stride: 1,
        };
        let end = Duration::from_millis(100);
        for guess in 7..=13 {
            assert_eq!(
                one.first_due_at_or_after(end, guess, 0),
                10,
                "guess {guess}"
            );
        }
        // Never below `first`, even when every slot from there is due after `end`.
        assert_eq!(one.first_due_at_or_after(end, 12, 12), 12);
        assert_eq!(one.first_due_at_or_after(end, 14, 12), 12);
        // 101 ms: slot 10 (100 ms) is inside, 11 is the first outside.
        let end = Duration::from_millis(101);
        assert_eq!(one.first_due_at_or_after(end, 9, 0), 11);
        assert_eq!(one.first_due_at_or_after(end, 13, 0), 11);
    }

    #[test]
    fn an_extreme_rate_keeps_its_count_and_times_do_not_drift() {
        // 7e8 per second on one socket: a step of 1.43 ns. Rounded once to 1 ns and added
        // up, a millisecond would hold 1,000,000 slots; it holds 700,000.
        let fast = Schedule {
            rate: 7e8,
            phase: 0,
            stride: 1,
        };
        assert_eq!(fast.due_before(0, Duration::from_millis(1)), 700_000);
        assert_eq!(fast.intended(700_000), Duration::from_millis(1));
        // The slowest rate there is: 1e-9 per second is one datagram per 31.7 years.
        let slow = Schedule {
            rate: 1e-9,
            phase: 0,
            stride: 8,
        };
        assert_eq!(slow.due_before(0, Duration::from_secs(3600)), 1);
        let year_254 = Duration::from_secs(8_000_000_000);
        assert!(slow.intended(1).abs_diff(year_254) < Duration::from_micros(1));
    }

    #[test]
    fn half_a_datagram_per_second_means_one_every_two_seconds_in_total_as_tcp_bench() {
        // TCP bench's schedule: message j at j / rate (echolab_load::schedule). Over 8
        // sockets at --rate 0.5 the datagrams go at 0, 2, 4, ... s, one socket after
        // another, not 0.5 per second per socket.
        let times: Vec<Duration> = (0..8u64)
            .map(|phase| {
                Schedule {
                    rate: 0.5,
                    phase,
                    stride: 8,
                }
                .intended(0)
            })
            .collect();
        let expected: Vec<Duration> = (0..8).map(|j| Duration::from_secs(2 * j)).collect();
        assert_eq!(times, expected);
        let in_five_seconds: u64 = (0..8u64)
            .map(|phase| {
                Schedule {
                    rate: 0.5,
                    phase,
                    stride: 8,
                }
                .due_before(0, Duration::from_secs(5))
            })
            .sum();
        assert_eq!(in_five_seconds, 3, "0, 2 and 4 s");
    }

    #[test]
    fn the_verdict_follows_the_figures() {
        let ok = Counts {
            sent: 100,
            echoed: 100,
            ..Counts::default()
        };
        assert_eq!(report(ok.clone()).verdict(0.0).0, 0);
        let lossy = Counts {
            sent: 100,
            echoed: 90,
            lost: 10,
            ..Counts::default()
        };
        assert_eq!(report(lossy.clone()).verdict(0.0).0, 1);
        assert!(report(lossy.clone()).verdict(0.0).1.contains("10.000%"));
        assert_eq!(
            report(lossy.clone()).verdict(10.0).0,
            0,
            "exactly at the threshold passes"
        );
        assert_eq!(report(lossy).verdict(9.99).0, 1);
        let corrupt = Counts {
            corrupt: 1,
            ..ok.clone()
        };
        assert_eq!(report(corrupt).verdict(100.0).0, 3);
        assert_eq!(report(Counts::default()).verdict(100.0).0, 1);
        let mut errors = report(ok.clone());
        errors.socket_errors = 2;
        assert_eq!(errors.verdict(0.0).0, 1);
    }

    #[test]
    fn datagrams_never_sent_fail_the_run_in_a_computed_sentence() {
        // 2000 due in 2 s at 1000/s; 500 sent (all echoed), 1500 never sent.
        let r = report(Counts {
            sent: 500,
            echoed: 500,
            unsent: 1500,
            ..Counts::default()
        });
        let (code, sentence) = r.verdict(100.0);
        assert_eq!(code, 1);
        assert_eq!(
            sentence,
            "FAIL: 1500 of 2000 datagrams due in the 2.00 s window (75.0%) were never sent: \
             the generator sent 250/s and could not keep --rate 1000"
        );
        assert!(r.text().contains(
            "2000 due in the 2.00 s window at 1000/s: sent 500, never sent 1500 (75.0%)"
        ));
        let doc = r.json();
        assert_eq!(doc["intended"], 2000);
        assert_eq!(doc["unsent"], 1500);
        assert_eq!(doc["sent"], 500);
    }

    #[test]
    fn echoes_per_second_are_over_the_active_span_not_the_wait_for_timeouts() {
        // 1000/s for 1 s, every 10th lost: the run waits 1 s more for the last timeouts.
        let mut r = report(Counts {
            sent: 1000,
            echoed: 900,
            lost: 100,
            ..Counts::default()
        });
        r.elapsed = Duration::from_secs(2);
        r.active = Duration::from_millis(1_000);
        assert_eq!(r.echoes_per_sec(), 900.0, "not 450");
        assert!(r.text().contains("  echoes/s    900\n"), "{}", r.text());
        assert_eq!(r.json()["active_s"], 1.0);
        r.active = Duration::ZERO;
        assert_eq!(r.echoes_per_sec(), 0.0);
    }

    #[test]
    fn slots_the_kernel_refused_are_not_blamed_on_the_generator() {
        // 2000 due at 1000/s; 500 sent, 1500 refused by the kernel (a closed port: each
        // ICMP error comes out of the next send).
        let mut r = report(Counts {
            sent: 500,
            lost: 500,
            unsent: 1500,
            refused_sends: 1500,
            ..Counts::default()
        });
        r.socket_errors = 2000;
        let (code, sentence) = r.verdict(100.0);
        assert_eq!(code, 1);
        assert_eq!(
            sentence,
            "FAIL: 1500 of 2000 datagrams due in the 2.00 s window (75.0%) were never sent: \
             their sends were 1500 refused by the kernel (2000 socket errors)"
        );
        let text = r.text();
        assert!(!text.contains("fell behind"), "{text}");
        assert!(
            text.contains("(1500 of them refused by the kernel"),
            "{text}"
        );
        assert_eq!(r.json()["refused_sends"], 1500);
        // Both: each cause with its count.
        r.counts.refused_sends = 1000;
        let (_, sentence) = r.verdict(100.0);
        assert!(
            sentence.ends_with(
                "were never sent: 500 because the generator fell behind (it sent 250/s of \
                 --rate 1000), 1000 refused by the kernel (2000 socket errors)"
            ),
            "{sentence}"
        );
        assert!(r.text().contains("fell behind"));
    }

    #[test]
    fn a_scheduled_send_the_kernel_refuses_is_counted_refused() {
        // A datagram too large for IPv4, to an IPv4-mapped address: EMSGSIZE every time.
        let Ok(socket) = mio::net::UdpSocket::bind("[::]:0".parse().unwrap()) else {
            eprintln!("SKIPPED: no IPv6 socket here, so no IPv4-mapped destination");
            return;
        };
        socket
            .connect("[::ffff:127.0.0.1]:9".parse().unwrap())
            .unwrap();
        let mut sock = Sock {
            socket,
            conn_id: 0,
            flow: Flow::new(Duration::from_secs(1)),
            schedule: None,
            next_send: Duration::ZERO,
            slots: 0,
        };
        let mut out = vec![0u8; 65_527];
        let mut errors = SocketErrors::default();
        send(
            &mut sock,
            Duration::ZERO,
            Duration::ZERO,
            &mut out,
            &mut errors,
            true,
        );
        send(
            &mut sock,
            Duration::ZERO,
            Duration::ZERO,
            &mut out,
            &mut errors,
            false,
        );
        let c = sock.flow.counts();
        assert_eq!((c.sent, c.unsent, c.refused_sends), (0, 1, 1));
        assert_eq!(errors.total, 2);
        assert_eq!(
            errors.by_kind,
            BTreeMap::from([("message too long".to_string(), 2)])
        );
    }

    #[test]
    fn datagrams_with_no_echo_at_all_point_at_the_servers_refusal_count() {
        let mut r = report(Counts {
            sent: 100,
            echoed: 90,
            lost: 10,
            late: 4,
            ..Counts::default()
        });
        r.config.n_conns = 8;
        let text = r.text();
        assert!(
            text.contains("6 lost datagrams were not echoed while the bench listened")
                && text.contains("(per source address: 8 sockets from one address)"),
            "{text}"
        );
        r.counts.late = 10;
        assert!(!r.text().contains("not echoed while"));
    }

    #[test]
    fn an_interrupted_run_exits_130_unless_it_failed() {
        let mut r = report(Counts {
            sent: 100,
            echoed: 100,
            ..Counts::default()
        });
        r.interrupted = true;
        r.window = Duration::from_millis(1500);
        let (code, sentence) = r.verdict(0.0);
        assert_eq!(code, 130);
        assert_eq!(
            sentence,
            "interrupted after 1.50 s of 2.00 s: loss 0.000% so far"
        );
        // Nothing echoed before the interrupt is still just an interrupt.
        r.counts = Counts::default();
        assert_eq!(r.verdict(0.0).0, 130);
        // A failure is reported first.
        r.counts = Counts {
            sent: 100,
            echoed: 90,
            lost: 10,
            ..Counts::default()
        };
        assert_eq!(r.verdict(0.0).0, 1);
        r.counts.corrupt = 1;
        assert_eq!(r.verdict(0.0).0, 3);
    }
}
