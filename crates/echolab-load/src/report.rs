//! What a bench run measured: the figures, the errors by kind, and their two renderings
//! (a human summary and one JSON document).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde_json::json;

use crate::config::{BenchConfig, ThreadsFrom, Workload};
use crate::latency::LatencySummary;
use crate::pattern::Mismatch;

/// Errors of a run, counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ErrorCounts {
    /// A connection could not be established (refused, timed out, no local port left).
    pub connect: u64,
    /// The server reset a connection (ECONNRESET, EPIPE).
    pub reset: u64,
    /// The server closed a connection while echoes were owed or before any was asked.
    pub eof: u64,
    /// A connection made no progress for `--timeout` while echoes were owed.
    pub timeout: u64,
    /// An echoed byte differed from the byte sent at that position.
    pub mismatch: u64,
    /// The server sent more bytes than it was sent (churn: any byte after the echo).
    pub extra: u64,
    /// A connection waited longer than `--starve-after` for an echo (counted once per
    /// connection; the connection stays open).
    pub starved: u64,
}

/// One kind of error, as [`ErrorCounts`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    Connect,
    Reset,
    Eof,
    Timeout,
    Mismatch,
    Extra,
    Starved,
}

impl ErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Reset => "reset",
            ErrorKind::Eof => "eof",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::Extra => "extra",
            ErrorKind::Starved => "starved",
        }
    }
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.reset
            + self.eof
            + self.timeout
            + self.mismatch
            + self.extra
            + self.starved
    }

    pub fn count(&mut self, kind: ErrorKind) {
        *match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::Eof => &mut self.eof,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Mismatch => &mut self.mismatch,
            ErrorKind::Extra => &mut self.extra,
            ErrorKind::Starved => &mut self.starved,
        } += 1;
    }

    pub fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.reset += other.reset;
        self.eof += other.eof;
        self.timeout += other.timeout;
        self.mismatch += other.mismatch;
        self.extra += other.extra;
        self.starved += other.starved;
    }
}

impl fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total() == 0 {
            return f.write_str("none");
        }
        write!(
            f,
            "{} (connect {}, reset {}, eof {}, timeout {}, mismatch {}, extra {}, starved {})",
            self.total(),
            self.connect,
            self.reset,
            self.eof,
            self.timeout,
            self.mismatch,
            self.extra,
            self.starved
        )
    }
}

/// Messages of the measured window that did not complete, by where they were at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unfinished {
    /// Handed to a connection and still pending after the drain: held back by the
    /// pipeline, or sent and not (wholly) echoed.
    pub waiting: u64,
    /// Pending on a connection that failed (reset, closed, timed out, mismatched).
    pub lost: u64,
    /// Open loop: due when no connection could take it (every one failed or full).
    pub unsent: u64,
}

impl Unfinished {
    /// Every incomplete message.
    pub fn total(&self) -> u64 {
        self.waiting + self.lost + self.unsent
    }

    pub fn add(&mut self, other: &Unfinished) {
        self.waiting += other.waiting;
        self.lost += other.lost;
        self.unsent += other.unsent;
    }
}

/// How evenly the connections were served: messages of the window per connection.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Fairness {
    pub min: u64,
    /// The middle count (the mean of the two middle ones for an even number).
    pub median: f64,
    pub max: u64,
    /// Jain's fairness index, `(Σx)² / (n·Σx²)`: 1 when every connection completed as
    /// many messages, `1/n` when one connection got them all; `None` when none got any.
    pub jain: Option<f64>,
}

impl Fairness {
    /// The fairness of `counts` (one per connection); `None` for no connection.
    pub fn of(counts: &[u64]) -> Option<Fairness> {
        if counts.is_empty() {
            return None;
        }
        let mut sorted = counts.to_vec();
        sorted.sort_unstable();
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2] as f64
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
        };
        let sum: f64 = sorted.iter().map(|x| *x as f64).sum();
        let sum_sq: f64 = sorted.iter().map(|x| (*x as f64) * (*x as f64)).sum();
        Some(Fairness {
            min: sorted[0],
            median,
            max: sorted[n - 1],
            jain: (sum_sq > 0.0).then(|| sum * sum / (n as f64 * sum_sq)),
        })
    }
}

/// The first byte mismatch of a run, with the connection it happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MismatchAt {
    pub conn_idx: usize,
    #[serde(flatten)]
    pub mismatch: Mismatch,
}

/// Everything one bench run measured. Messages, rates and latencies cover the messages
/// whose start (open loop: intended send time) falls in the measured window: warm-up
/// messages are excluded, and window messages that complete in the final drain count.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Completed echoes of the measured window (churn: completed connections).
    pub messages: u64,
    /// Messages of the window that did not complete; `messages + unfinished.total()` is
    /// every message of the window.
    pub unfinished: Unfinished,
    /// The measured window, in seconds (shorter than asked when interrupted).
    pub seconds: f64,
    /// Round-trip latency in microseconds: closed loop from the send, open loop from the
    /// intended send time, churn from the start of the connect to the end of the echo.
    /// Incomplete messages handed to a connection count with their wait until the end of
    /// the window (a lower bound).
    pub latency: LatencySummary,
    /// Churn only: from the start of the connect to the connection being established.
    pub connect_latency: Option<LatencySummary>,
    pub errors: ErrorCounts,
    pub first_mismatch: Option<MismatchAt>,
    /// The first message of each kind of error, for the summary.
    pub error_samples: BTreeMap<ErrorKind, String>,
    /// Connections established (churn: in total, over the run).
    pub conns_established: u64,
    /// Connections that completed at least one echo of the window (not churn).
    pub conns_echoed: u64,
    /// Bytes that came back over the whole run, verified or not.
    pub bytes_received: u64,
    /// Messages of the window each connection completed (churn: each slot), by index.
    pub per_conn: Vec<u64>,
    /// The run was stopped by SIGINT/SIGTERM before its end.
    pub interrupted: bool,
    /// Every connection was closed or reset by the server before the end.
    pub server_gone: bool,
    /// Seconds from the window's start to the last completed echo (negative: during the
    /// warm-up); `None` when nothing completed.
    pub last_echo_secs: Option<f64>,
    /// Seconds into the window when every connection had failed, when that ended the run
    /// before its planned end (the window keeps its planned length: rates are over it).
    pub ended_early_secs: Option<f64>,
    /// Connections (not churn) that at the end had failed, or owed an echo unanswered
    /// for longer than `--starve-after` or all window long.
    pub conns_stopped: u64,
    /// Churn only: this machine's connections to the server waiting in TIME_WAIT at the
    /// end (each holds an ephemeral port), when /proc/net/tcp could be read.
    pub time_wait: Option<u64>,
    /// The latency histogram behind `latency` (and its intervals with `--hdr-log`).
    pub latency_hist: crate::latency::Latency,
}

impl BenchReport {
    /// A report of nothing yet, for `n_conns` connections.
    pub fn empty(n_conns: usize) -> BenchReport {
        BenchReport {
            messages: 0,
            unfinished: Unfinished::default(),
            seconds: 0.0,
            latency: LatencySummary::default(),
            connect_latency: None,
            errors: ErrorCounts::default(),
            first_mismatch: None,
            error_samples: BTreeMap::new(),
            conns_established: 0,
            conns_echoed: 0,
            bytes_received: 0,
            per_conn: vec![0; n_conns],
            interrupted: false,
            server_gone: false,
            last_echo_secs: None,
            ended_early_secs: None,
            conns_stopped: 0,
            time_wait: None,
            latency_hist: crate::latency::Latency::new(),
        }
    }

    /// Every message of the window: completed plus incomplete.
    pub fn intended(&self) -> u64 {
        self.messages + self.unfinished.total()
    }

    /// Completed messages per second of the window.
    pub fn messages_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.messages as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// Payload megabytes (10^6) per second, one way, like loadgen's `mbps`.
    pub fn mb_per_sec(&self, msg_size: usize) -> f64 {
        self.messages_per_sec() * msg_size as f64 / 1e6
    }

    /// True when not one byte came back over the whole run from established
    /// connections: the server accepted them and kept the bytes (a `--mode lines` server
    /// waiting for a `\n`, an iterative server busy with another client).
    pub fn nothing_echoed(&self) -> bool {
        self.bytes_received == 0 && self.conns_established > 0 && !self.interrupted
    }

    /// True when the window completed no message although it was not interrupted: a run
    /// that measured nothing is not a clean run.
    pub fn nothing_completed(&self) -> bool {
        self.messages == 0 && !self.interrupted
    }

    /// Per-connection fairness over the window (`None` in churn's sense is never: slots).
    pub fn fairness(&self) -> Option<Fairness> {
        Fairness::of(&self.per_conn)
    }

    /// The exit status of `echolab bench` for this run: 3 for a byte mismatch; 1 for any
    /// other error (starved connections included), an incomplete message, a server gone,
    /// or a window that completed nothing; 130 when interrupted; 0 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.errors.mismatch > 0 {
            3
        } else if self.errors.total() > 0
            || self.unfinished.total() > 0
            || self.server_gone
            || self.nothing_completed()
        {
            1
        } else if self.interrupted {
            130
        } else {
            0
        }
    }

    /// The run as one JSON document: the configuration and every figure. The top-level
    /// keys `messages_per_sec`, `mb_per_sec`, `p50_us`, `p99_us`, `p999_us` and `errors`
    /// (the total) are a contract with scripts.
    pub fn to_json(&self, config: &BenchConfig) -> serde_json::Value {
        let samples: BTreeMap<&str, &str> = self
            .error_samples
            .iter()
            .map(|(k, v)| (k.name(), v.as_str()))
            .collect();
        json!({
            "config": config_json(config),
            "workload": config.workload().name(),
            "messages": self.messages,
            "intended": self.intended(),
            "completed": self.messages,
            "incomplete": self.unfinished.total(),
            "incomplete_by_state": self.unfinished,
            "seconds": self.seconds,
            "messages_per_sec": self.messages_per_sec(),
            "mb_per_sec": self.mb_per_sec(config.msg_size),
            "connections_per_sec": matches!(config.workload(), Workload::Churn).then(|| self.messages_per_sec()),
            "mean_us": self.latency.mean_us,
            "p50_us": self.latency.p50_us,
            "p90_us": self.latency.p90_us,
            "p99_us": self.latency.p99_us,
            "p999_us": self.latency.p999_us,
            "max_us": self.latency.max_us,
            "connect_latency": self.connect_latency,
            "errors": self.errors.total(),
            "errors_by_kind": self.errors,
            "first_mismatch": self.first_mismatch,
            "error_samples": samples,
            "conns_established": self.conns_established,
            "conns_echoed": self.conns_echoed,
            "starved": self.errors.starved,
            "fairness": self.fairness(),
            "bytes_received": self.bytes_received,
            "unsent": self.unfinished.unsent,
            "interrupted": self.interrupted,
            "server_gone": self.server_gone,
            "last_echo_secs": self.last_echo_secs,
            "ended_early_secs": self.ended_early_secs,
            "conns_stopped": self.conns_stopped,
            "nothing_echoed": self.nothing_echoed(),
            "nothing_completed": self.nothing_completed(),
            "time_wait": self.time_wait,
            "histogram": crate::hdr::encode(self.latency_hist.histogram()),
        })
    }

    /// The human summary, several lines, the way loadgen prints its own. Every sentence
    /// is computed from the figures it names.
    pub fn to_text(&self, config: &BenchConfig) -> String {
        let mut out = String::new();
        let workload = config.workload();
        let _ = writeln!(
            out,
            "echolab bench {}: {}, {}, {} B messages{}, pipeline {}, {} ({}), warm-up {:.1} s, measured {:.2} s{}",
            config.addr,
            workload.describe(),
            echolab_cli::counted(config.n_conns, "conn"),
            config.msg_size,
            if config.lines { " (lines)" } else { "" },
            config.pipeline,
            echolab_cli::counted(config.effective_threads(), "thread"),
            if config.effective_threads() < config.n_threads {
                match config.threads_from {
                    ThreadsFrom::Given => {
                        format!("given {}, at most one per connection", config.n_threads)
                    }
                    from => format!("{}, at most one per connection", from.describe()),
                }
            } else {
                config.threads_from.describe()
            },
            config.warmup.as_secs_f64(),
            self.seconds,
            if self.interrupted { " (interrupted)" } else { "" },
        );
        let churn = matches!(workload, Workload::Churn);
        let unit = if churn { "connections" } else { "messages" };
        let _ = writeln!(
            out,
            "  {unit}/s: {:.0}   payload MB/s (one way): {:.2}",
            self.messages_per_sec(),
            self.mb_per_sec(config.msg_size)
        );
        let u = &self.unfinished;
        let _ = writeln!(
            out,
            "  {unit} of the window: {} = {} completed + {} incomplete ({} waiting at the end, {} lost with a failed connection, {} never sent)",
            self.intended(),
            self.messages,
            u.total(),
            u.waiting,
            u.lost,
            u.unsent
        );
        let l = &self.latency;
        let floor = u.waiting + u.lost;
        let _ = writeln!(
            out,
            "  latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={}{})",
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.count,
            if floor > 0 {
                format!(", {floor} of them incomplete, counted with their wait until the end")
            } else {
                String::new()
            }
        );
        if let Some(c) = &self.connect_latency {
            let _ = writeln!(
                out,
                "  connect latency us: p50 {:.1}  p99 {:.1}  max {:.1}",
                c.p50_us, c.p99_us, c.max_us
            );
        }
        let _ = writeln!(out, "  errors: {}", self.errors);
        for (kind, sample) in &self.error_samples {
            let _ = writeln!(out, "    first {}: {sample}", kind.name());
        }
        if let Some(m) = &self.first_mismatch {
            let _ = writeln!(out, "  MISMATCH on conn {}: {}", m.conn_idx, m.mismatch);
        }
        if !churn {
            let _ = writeln!(
                out,
                "  connections: {} of {} established, {} completed at least one echo of the window",
                self.conns_established, config.n_conns, self.conns_echoed
            );
        }
        if let Some(f) = self.fairness() {
            let per = if churn { "slot" } else { "connection" };
            let jain = f
                .jain
                .map_or("n/a (nothing completed)".to_string(), |j| format!("{j:.3}"));
            let _ = writeln!(
                out,
                "  per {per}: min {}  median {}  max {} {unit}; Jain's fairness index {jain}",
                f.min, f.median, f.max
            );
        }
        if let Some(sentence) = self.stopped_sentence(config) {
            let _ = writeln!(out, "  {sentence}");
        }
        if let Some(at) = self.ended_early_secs {
            let secs = self.seconds;
            let _ = if at < 0.0 {
                writeln!(
                    out,
                    "  every connection had failed {:.2} s before the {secs:.2} s window opened; \
                     the window served nothing and the rates are over the whole window",
                    -at
                )
            } else {
                writeln!(
                    out,
                    "  the run ended {at:.2} s into the {secs:.2} s window, when every connection \
                     had failed; the rest of the window served nothing and the rates are over \
                     the whole window"
                )
            };
        }
        if let (Some(time_wait), Some(ports)) = (self.time_wait, ephemeral_ports()) {
            // Past about half the range, connects spend their time searching for a port.
            if time_wait * 2 > ports {
                let _ = writeln!(
                    out,
                    "  {time_wait} connections to {} wait in TIME_WAIT, of {ports} ephemeral ports: \
                     each close leaves one, and connects then search the range for a free port, \
                     which slows them and caps connections/s (a limit of this client's kernel, \
                     not of the server; it clears within a minute)",
                    config.addr
                );
            }
        }
        if u.total() > 0 {
            let _ = writeln!(
                out,
                "  INCOMPLETE: {} of the window's {} {unit} did not complete ({} waiting at the end, \
                 {} lost with a failed connection, {} never sent)",
                u.total(),
                self.intended(),
                u.waiting,
                u.lost,
                u.unsent
            );
        }
        if let Some(sentence) = self.late_completion_sentence(unit) {
            let _ = writeln!(out, "  {sentence}");
        }
        // Only when no whole message ever came back (warm-up included): a server that
        // echoed whole messages before is not a lines server.
        let hint = if config.lines || self.last_echo_secs.is_some() {
            ""
        } else {
            "; a --mode lines server echoes only complete lines: try --lines"
        };
        if self.server_gone {
            let _ = writeln!(
                out,
                "  the server closed or reset every connection: it stopped or crashed, or \
                 refused what it was sent (in lines mode, a line longer than its --max-line)"
            );
        } else if self.nothing_echoed() {
            let _ = writeln!(
                out,
                "  no byte came back on {} established connections in {:.2} s: the server \
                 accepted them but sent nothing back{hint}",
                self.conns_established, self.seconds
            );
        } else if self.nothing_completed() && self.errors.total() == self.errors.starved {
            let _ = writeln!(
                out,
                "  {} bytes came back but no message of the window completed in {:.2} s{hint}",
                self.bytes_received, self.seconds
            );
        }
        out
    }
}

impl BenchReport {
    /// The window's echoes took until [`Self::last_echo_secs`] to complete. When that is
    /// well past the window (more than half a window more: a latency of the order of the
    /// window, as 1 MiB messages on 1,000 connections in a 0.2 s window), the rate above,
    /// messages of the window per second of it, is not what the server sustained: the
    /// sentence gives the rate over the span they took, from the figures.
    pub fn late_completion_sentence(&self, unit: &str) -> Option<String> {
        let last = self.last_echo_secs?;
        if self.messages == 0 || self.seconds <= 0.0 || last <= self.seconds * 1.5 {
            return None;
        }
        Some(format!(
            "NOTE: the window's {unit} kept completing until {last:.2} s, {:.1}× the {:.2} s \
             window: {unit}/s above is the {unit} of the window per second of it; over the \
             {last:.2} s they took, {:.0} {unit}/s (latency p50 {:.0} us): use a window many \
             times the latency",
            last / self.seconds,
            self.seconds,
            self.messages as f64 / last,
            self.latency.p50_us,
        ))
    }

    /// The sentence about connections left without echoes, computed from the figures:
    /// when every connection stopped getting echoes (failed or unanswered at the end),
    /// the server stopped answering, with when; when some did and others were served to
    /// the end, the server serves fewer connections than it accepts.
    pub fn stopped_sentence(&self, config: &BenchConfig) -> Option<String> {
        if matches!(config.workload(), Workload::Churn) || self.server_gone {
            return None;
        }
        let n = config.n_conns as u64;
        let starve = config.starve_after.as_secs_f64();
        // Bench closes a connection whose echo was wrong (a differing or an extra byte):
        // that is not the server going quiet.
        if self.conns_stopped >= n
            && n > 0
            && self.conns_established > 0
            && self.errors.mismatch == 0
            && self.errors.extra == 0
        {
            return Some(match self.last_echo_secs {
                None if self.bytes_received > 0 => format!(
                    "the server answered none of the {n} connections with a whole message: \
                     {} bytes came back, then nothing",
                    self.bytes_received
                ),
                None => {
                    format!("the server answered none of the {n} connections: no message completed")
                }
                Some(at) if at < 0.0 => format!(
                    "the server stopped answering before the window began ({:.2} s before it): \
                     none of the {n} connections got an echo in the {:.2} s window",
                    -at, self.seconds
                ),
                Some(at) => format!(
                    "the server stopped answering {at:.2} s into the {:.2} s window: every one of \
                     the {n} connections failed or went without an echo from then on",
                    self.seconds
                ),
            });
        }
        if self.errors.starved == 0 {
            return None;
        }
        // Served to the end: neither starved (at any time) nor stopped. A connection that
        // starved and then got echoes again was paused, not left out.
        let served = n
            .saturating_sub(self.conns_stopped)
            .min(n.saturating_sub(self.errors.starved));
        if served == 0 {
            return Some(format!(
                "{} of {n} connections starved (waited more than {starve:.2} s for an echo) and \
                 none was served without a wait that long: the server paused for every \
                 connection, not for some",
                self.errors.starved
            ));
        }
        Some(format!(
            "{} of {n} connections starved (waited more than {starve:.2} s, or the whole window, \
             for an echo) while {served} {were} served to the end: an iterative server, or a pool \
             with fewer workers than connections, leaves the rest waiting",
            self.errors.starved,
            were = if served == 1 { "was" } else { "were" },
        ))
    }
}

/// The number of local ports the kernel hands out to `connect` (its ephemeral range).
fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    port_range_size(&text)
}

/// The number of ports in a range as /proc prints it ("32768\t60999\n"), if it is one.
fn port_range_size(text: &str) -> Option<u64> {
    let mut bounds = text.split_whitespace().map(|n| n.parse::<u64>().ok());
    let (low, high) = (bounds.next()??, bounds.next()??);
    (high >= low).then(|| high - low + 1)
}

/// Connections to `addr` in TIME_WAIT on this machine, from /proc/net/tcp or tcp6.
pub fn time_wait_to(addr: std::net::SocketAddr) -> Option<u64> {
    let (table, remote) = proc_net_addr(addr);
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).ok()?;
    Some(count_time_wait(&text, &remote))
}

/// The /proc/net table that lists connections to `addr`, and `addr` the way it prints it:
/// each 32-bit word of the address as held in memory, in hex, then the port
/// (`0100007F:1B5F` for 127.0.0.1:7007 on a little-endian machine).
fn proc_net_addr(addr: std::net::SocketAddr) -> (&'static str, String) {
    let words = |octets: &[u8]| -> String {
        octets
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect()
    };
    match addr {
        std::net::SocketAddr::V4(a) => (
            "tcp",
            format!("{}:{:04X}", words(&a.ip().octets()), a.port()),
        ),
        std::net::SocketAddr::V6(a) => (
            "tcp6",
            format!("{}:{:04X}", words(&a.ip().octets()), a.port()),
        ),
    }
}

/// The lines of a /proc/net/tcp listing whose remote address is `remote` (as the kernel
/// prints it, `0100007F:1B5F`) and whose state is TIME_WAIT (`06`).
fn count_time_wait(listing: &str, remote: &str) -> u64 {
    listing
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(2);
            fields.next() == Some(remote) && fields.next() == Some("06")
        })
        .count() as u64
}

fn config_json(config: &BenchConfig) -> serde_json::Value {
    json!({
        "addr": config.addr.to_string(),
        "conns": config.n_conns,
        "size": config.msg_size,
        "duration_secs": config.duration.as_secs_f64(),
        "warmup_secs": config.warmup.as_secs_f64(),
        "threads": config.effective_threads(),
        "pipeline": config.pipeline,
        "rate": config.rate,
        "churn": config.churn,
        "lines": config.lines,
        "connect_timeout_secs": config.connect_timeout.as_secs_f64(),
        "timeout_secs": config.stall_timeout.as_secs_f64(),
        "starve_after_secs": config.starve_after.as_secs_f64(),
        "threads_from": config.threads_from.describe(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_wait_is_counted_per_remote_address() {
        let listing = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9C40 0100007F:1B5F 06 00000000:00000000 03:00000F8C 00000000     0        0 0 3
   1: 0100007F:9C41 0100007F:1B5F 01 00000000:00000000 00:00000000 00000000     0        0 77 1
   2: 0100007F:9C42 0100007F:1B60 06 00000000:00000000 03:00000F8C 00000000     0        0 0 3
   3: 0100007F:9C43 0100007F:1B5F 06 00000000:00000000 03:00000F8C 00000000     0        0 0 3";
        let addr: std::net::SocketAddr = "127.0.0.1:7007".parse().unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_addr(addr), ("tcp", "0100007F:1B5F".to_string()));
            let v6: std::net::SocketAddr = "[::1]:7007".parse().unwrap();
            assert_eq!(proc_net_addr(v6).1, "00000000000000000000000001000000:1B5F");
        }
        assert_eq!(count_time_wait(listing, "0100007F:1B5F"), 2);
        assert_eq!(count_time_wait(listing, "0100007F:1B60"), 1);
        assert!(time_wait_to(addr).is_some(), "/proc/net/tcp is readable");
    }

    fn config() -> BenchConfig {
        BenchConfig::new("127.0.0.1:7007".parse().unwrap(), 4, 64)
    }

    #[test]
    fn threads_capped_at_the_connections_say_so() {
        let mut config = config();
        config.n_threads = 8;
        config.threads_from = ThreadsFrom::Given;
        let text = clean().to_text(&config);
        assert!(
            text.contains("4 threads (given 8, at most one per connection)"),
            "{text}"
        );
        config.n_threads = 2;
        let text = clean().to_text(&config);
        assert!(text.contains("2 threads (given)"), "{text}");
        // One of each: singular ("1 conns" and "1 threads" were printed).
        config.n_conns = 1;
        config.n_threads = 1;
        let text = clean().to_text(&config);
        assert!(text.contains(", 1 conn, 64 B messages"), "{text}");
        assert!(text.contains(", 1 thread (given)"), "{text}");
    }

    /// A clean run's report: 4 connections, 100 messages each, in 1 s.
    fn clean() -> BenchReport {
        let mut report = BenchReport::empty(4);
        report.messages = 400;
        report.seconds = 1.0;
        report.conns_established = 4;
        report.conns_echoed = 4;
        report.bytes_received = 400 * 64;
        report.per_conn = vec![100; 4];
        report
    }

    #[test]
    fn fairness_of_known_spreads() {
        assert_eq!(Fairness::of(&[]), None);
        let even = Fairness::of(&[5, 5, 5, 5]).unwrap();
        assert_eq!((even.min, even.median, even.max), (5, 5.0, 5));
        assert_eq!(even.jain, Some(1.0));
        // One connection got everything: 1/n.
        let one = Fairness::of(&[0, 12, 0, 0]).unwrap();
        assert_eq!((one.min, one.median, one.max), (0, 0.0, 12));
        assert_eq!(one.jain, Some(0.25));
        // (1+2+3)² / (3·(1+4+9)) = 36/42; odd count: the middle one.
        let spread = Fairness::of(&[3, 1, 2]).unwrap();
        assert_eq!((spread.min, spread.median, spread.max), (1, 2.0, 3));
        assert!((spread.jain.unwrap() - 36.0 / 42.0).abs() < 1e-12);
        // Even count: the mean of the two middle ones; odd: the middle one.
        assert_eq!(Fairness::of(&[1, 4, 2, 9]).unwrap().median, 3.0);
        assert_eq!(Fairness::of(&[1, 3]).unwrap().median, 2.0);
        assert_eq!(Fairness::of(&[7]).unwrap().median, 7.0);
        assert_eq!(Fairness::of(&[5, 1, 4, 2, 3]).unwrap().median, 3.0);
        assert_eq!(Fairness::of(&[0, 0]).unwrap().jain, None);
    }

    #[test]
    fn unfinished_messages_add_up_to_the_intended() {
        let mut report = clean();
        report.unfinished = Unfinished {
            waiting: 3,
            lost: 2,
            unsent: 1,
        };
        let mut more = Unfinished {
            waiting: 10,
            lost: 20,
            unsent: 30,
        };
        more.add(&report.unfinished);
        assert_eq!(
            more,
            Unfinished {
                waiting: 13,
                lost: 22,
                unsent: 31
            }
        );
        assert_eq!(report.unfinished.total(), 6);
        assert_eq!(report.intended(), 406);
        let doc = report.to_json(&config());
        assert_eq!(doc["intended"], 406);
        assert_eq!(doc["completed"], 400);
        assert_eq!(doc["incomplete"], 6);
        assert_eq!(doc["incomplete_by_state"]["lost"], 2);
        assert_eq!(doc["unsent"], 1);
        let text = report.to_text(&config());
        assert!(
            text.contains("messages of the window: 406 = 400 completed + 6 incomplete (3 waiting at the end, 2 lost with a failed connection, 1 never sent)"),
            "{text}"
        );
        assert!(
            text.contains("INCOMPLETE: 6 of the window's 406 messages"),
            "{text}"
        );
        assert!(text.contains("5 of them incomplete"), "{text}");
        assert_eq!(report.exit_code(), 1);
    }

    #[test]
    fn rates_are_per_second_of_the_window() {
        let mut r = clean();
        r.seconds = 2.0;
        assert_eq!(r.messages_per_sec(), 200.0);
        assert_eq!(r.mb_per_sec(1_000_000), 200.0);
        r.seconds = 0.0;
        assert_eq!(r.messages_per_sec(), 0.0);
    }

    #[test]
    fn exit_codes_follow_the_figures() {
        assert_eq!(clean().exit_code(), 0);
        let mut r = clean();
        r.interrupted = true;
        assert_eq!(r.exit_code(), 130);
        r.errors.count(ErrorKind::Starved);
        assert_eq!(r.exit_code(), 1);
        r.errors.count(ErrorKind::Mismatch);
        assert_eq!(r.exit_code(), 3);
        let mut r = clean();
        r.server_gone = true;
        assert_eq!(r.exit_code(), 1);
        let mut r = clean();
        r.messages = 0;
        assert!(r.nothing_completed());
        assert_eq!(r.exit_code(), 1);
        r.interrupted = true;
        assert!(!r.nothing_completed());
        assert_eq!(r.exit_code(), 130);
        let mut r = clean();
        r.unfinished.unsent = 1;
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn each_verdict_is_computed_from_the_figures_it_names() {
        let config = config();
        let text = clean().to_text(&config);
        for absent in [
            "no byte came back",
            "bytes came back",
            "starved",
            "INCOMPLETE",
            "stopped or crashed",
        ] {
            assert!(!text.contains(absent), "{absent}: {text}");
        }
        assert!(text.contains("messages/s: 400"), "{text}");
        assert!(text.contains("Jain's fairness index 1.000"), "{text}");
        assert!(
            text.contains("per connection: min 100  median 100  max 100 messages"),
            "{text}"
        );
        // Nothing came back at all: said, with the hint for a lines server.
        let mut r = clean();
        r.messages = 0;
        r.bytes_received = 0;
        r.per_conn = vec![0; 4];
        let text = r.to_text(&config);
        assert!(
            text.contains("no byte came back on 4 established connections in 1.00 s"),
            "{text}"
        );
        assert!(text.contains("try --lines"), "{text}");
        assert!(text.contains("n/a (nothing completed)"), "{text}");
        assert_eq!(r.to_json(&config)["nothing_echoed"], true);
        // With no connection established there was nobody to echo: not that verdict.
        r.conns_established = 0;
        assert!(!r.nothing_echoed());
        r.conns_established = 4;
        // Bytes came back but no message completed: not "nothing came back".
        r.bytes_received = 15;
        let text = r.to_text(&config);
        assert!(!text.contains("no byte came back"), "{text}");
        assert!(text.contains("15 bytes came back but no message"), "{text}");
        assert!(text.contains("try --lines"), "{text}");
        // Whole echoes before the window (the warm-up): the server stopped, no lines hint.
        r.last_echo_secs = Some(-1.2);
        let text = r.to_text(&config);
        assert!(!text.contains("try --lines"), "{text}");
        r.last_echo_secs = None;
        assert_eq!(r.to_json(&config)["nothing_echoed"], false);
        // A mismatch: bytes came back, so neither sentence; the mismatch is named.
        let mut r = clean();
        r.messages = 0;
        r.errors.count(ErrorKind::Mismatch);
        r.first_mismatch = Some(MismatchAt {
            conn_idx: 2,
            mismatch: Mismatch {
                offset: 70,
                expected: 1,
                got: 2,
            },
        });
        let text = r.to_text(&config);
        assert!(!text.contains("came back"), "{text}");
        assert!(
            text.contains(
                "MISMATCH on conn 2: byte mismatch at offset 70: expected 0x01, got 0x02"
            ),
            "{text}"
        );
        // Starved connections: the count and the threshold, from the figures.
        // Two of four starved, two served to the end: the pool sentence.
        let mut r = clean();
        r.errors.count(ErrorKind::Starved);
        r.errors.count(ErrorKind::Starved);
        r.conns_stopped = 2;
        let text = r.to_text(&config);
        assert!(
            text.contains(
                "2 of 4 connections starved (waited more than 1.00 s, or the whole window, \
                 for an echo) while 2 were served to the end: an iterative server"
            ),
            "{text}"
        );
        assert_eq!(r.to_json(&config)["starved"], 2);
        // Every connection starved once and was served again (a pause of the whole server):
        // no word of a pool, whatever `conns_stopped` says.
        let mut paused = clean();
        for _ in 0..4 {
            paused.errors.count(ErrorKind::Starved);
        }
        paused.conns_stopped = 0;
        let text = paused.to_text(&config);
        assert!(
            text.contains(
                "4 of 4 connections starved (waited more than 1.00 s for an echo) and none was \
                 served without a wait that long: the server paused for every connection"
            ),
            "{text}"
        );
        assert!(!text.contains("iterative"), "{text}");
        // Three starved, none stopped: one was served to the end, not four.
        paused.errors.starved = 3;
        let text = paused.to_text(&config);
        assert!(text.contains("while 1 was served to the end"), "{text}");
        // An early end before the window opened is said as such, never a negative time.
        let mut early = clean();
        early.ended_early_secs = Some(-0.3);
        let text = early.to_text(&config);
        assert!(
            text.contains("every connection had failed 0.30 s before the 1.00 s window opened"),
            "{text}"
        );
        assert!(!text.contains("-0.30"), "{text}");
        // Mismatched echoes end every connection, but the server did answer.
        let mut wrong = clean();
        wrong.errors.count(ErrorKind::Mismatch);
        wrong.conns_stopped = 4;
        wrong.last_echo_secs = Some(0.0);
        assert_eq!(wrong.stopped_sentence(&config), None);
        // So do bytes never sent (a server that appends to each echo): it answered too.
        let mut extra = clean();
        extra.errors.count(ErrorKind::Extra);
        extra.conns_stopped = 4;
        extra.last_echo_secs = Some(-1.0);
        assert_eq!(extra.stopped_sentence(&config), None);
        // All four stopped getting echoes: the server stopped answering, and when; no
        // word of a pool.
        r.errors.count(ErrorKind::Starved);
        r.errors.count(ErrorKind::Starved);
        r.conns_stopped = 4;
        r.last_echo_secs = Some(1.5);
        r.seconds = 6.0;
        let text = r.to_text(&config);
        assert!(
            text.contains(
                "the server stopped answering 1.50 s into the 6.00 s window: every one of \
                 the 4 connections failed or went without an echo from then on"
            ),
            "{text}"
        );
        assert!(!text.contains("iterative"), "{text}");
        r.last_echo_secs = Some(-0.25);
        let text = r.to_text(&config);
        assert!(
            text.contains(
                "the server stopped answering before the window began (0.25 s before it)"
            ),
            "{text}"
        );
        r.last_echo_secs = None;
        let text = r.to_text(&config);
        assert!(
            text.contains("the server answered none of the 4 connections"),
            "{text}"
        );
        // Part of a message came back, then nothing: said with the bytes, never "none".
        let bytes = r.bytes_received;
        r.bytes_received = 20;
        let text = r.to_text(&config);
        assert!(
            text.contains(
                "the server answered none of the 4 connections with a whole message: 20 bytes \
                 came back, then nothing"
            ),
            "{text}"
        );
        r.bytes_received = 0;
        let text = r.to_text(&config);
        assert!(
            text.contains("the server answered none of the 4 connections: no message completed"),
            "{text}"
        );
        r.bytes_received = bytes;
        // Every connection failed 2.11 s into a 6 s window: the early end is said.
        r.ended_early_secs = Some(2.11);
        let text = r.to_text(&config);
        assert!(
            text.contains(
                "the run ended 2.11 s into the 6.00 s window, when every connection had failed"
            ),
            "{text}"
        );
        assert_eq!(r.to_json(&config)["ended_early_secs"], 2.11);
        // The server gone: that sentence, not "nothing came back".
        let mut r = clean();
        r.server_gone = true;
        r.bytes_received = 0;
        let text = r.to_text(&config);
        assert!(
            text.contains("stopped or crashed") && !text.contains("no byte"),
            "{text}"
        );
    }

    #[test]
    fn the_json_carries_the_configuration() {
        let config = config();
        let doc = clean().to_json(&config);
        assert_eq!(doc["config"]["conns"], 4);
        assert_eq!(doc["config"]["size"], 64);
        assert_eq!(doc["config"]["addr"], "127.0.0.1:7007");
        assert_eq!(doc["config"]["starve_after_secs"], 1.0);
        assert_eq!(doc["workload"], "closed");
    }

    #[test]
    fn churn_speaks_of_connections_and_slots() {
        let mut config = config();
        config.churn = true;
        let text = clean().to_text(&config);
        assert!(text.contains("connections/s: 400"), "{text}");
        assert!(text.contains("per slot: min 100"), "{text}");
        assert!(!text.contains("established"), "{text}");
        let text = clean().to_text(&self::config());
        assert!(text.contains("connections: 4 of 4 established"), "{text}");
    }

    #[test]
    fn port_ranges_and_the_time_wait_warning() {
        assert_eq!(port_range_size("32768\t60999\n"), Some(28_232));
        assert_eq!(port_range_size("7 7"), Some(1));
        assert_eq!(port_range_size("9 7"), None);
        assert_eq!(port_range_size("x 7"), None);
        assert_eq!(port_range_size("7"), None);
        // The warning shows past half this machine's range, read here from /proc.
        let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
            echolab_cli::say!(
                "skipped the warning's half: /proc/sys/net/ipv4/ip_local_port_range is unreadable"
            );
            return;
        };
        let ports = port_range_size(&range).expect("a port range");
        assert_eq!(ephemeral_ports(), Some(ports));
        let mut r = clean();
        r.time_wait = Some(ports / 2 + 1);
        let text = r.to_text(&config());
        let expected = format!(
            "{} connections to 127.0.0.1:7007 wait in TIME_WAIT, of {ports} ephemeral ports",
            ports / 2 + 1
        );
        assert!(text.contains(&expected), "{text}");
        r.time_wait = Some(ports / 2);
        assert!(!r.to_text(&config()).contains("TIME_WAIT"));
    }

    #[test]
    fn time_wait_is_counted_on_this_machine() {
        // Two connections closed by this side first each leave one socket in TIME_WAIT
        // towards the listener's address; the kernel makes the change on its own, so the
        // count is polled, for at most 20 s.
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        for _ in 0..2 {
            let conn = TcpStream::connect(addr).unwrap();
            let (mut accepted, _) = listener.accept().unwrap();
            drop(conn);
            // The server side reads the end of stream and closes too.
            let _ = std::io::Read::read(&mut accepted, &mut [0u8; 1]);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut seen = None;
        while std::time::Instant::now() < deadline {
            seen = time_wait_to(addr);
            if seen >= Some(2) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(seen, Some(2));
    }

    #[test]
    fn errors_add_up_and_print_by_kind() {
        let mut a = ErrorCounts::default();
        assert_eq!(a.to_string(), "none");
        a.count(ErrorKind::Reset);
        a.count(ErrorKind::Mismatch);
        let mut b = ErrorCounts::default();
        b.count(ErrorKind::Reset);
        a.add(&b);
        assert_eq!(a.total(), 3);
        assert_eq!(a.reset, 2);
        assert!(a.to_string().contains("reset 2"));
        // Every kind counts in its own field, adds, and shows by its name.
        let kinds = [
            ErrorKind::Connect,
            ErrorKind::Reset,
            ErrorKind::Eof,
            ErrorKind::Timeout,
            ErrorKind::Mismatch,
            ErrorKind::Extra,
            ErrorKind::Starved,
        ];
        let mut all = ErrorCounts::default();
        for (k, kind) in kinds.iter().enumerate() {
            for _ in 0..=k {
                all.count(*kind);
            }
        }
        let mut twice = all;
        twice.add(&all);
        assert_eq!(twice.total(), 2 * all.total());
        assert_eq!(all.total(), 28);
        assert_eq!(
            all.to_string(),
            "28 (connect 1, reset 2, eof 3, timeout 4, mismatch 5, extra 6, starved 7)"
        );
        assert_eq!(
            (
                twice.connect,
                twice.eof,
                twice.timeout,
                twice.extra,
                twice.starved
            ),
            (2, 6, 8, 12, 14)
        );
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            ["connect", "reset", "eof", "timeout", "mismatch", "extra", "starved"]
        );
    }

    /// Known figures: 1,000 messages of a 0.20 s window whose last echo came at 1.98 s
    /// (1 MiB messages on 1,000 connections): the note gives 1,000 / 1.98 = 505 per second
    /// and the ratio 9.9; at 1.5 windows or less, or with nothing completed, no note.
    #[test]
    fn echoes_completing_long_after_the_window_are_said_with_the_rate_over_their_span() {
        let mut r = BenchReport::empty(1000);
        r.messages = 1000;
        r.seconds = 0.2;
        r.latency.p50_us = 1_966_080.0;
        r.last_echo_secs = Some(1.98);
        assert_eq!(
            r.late_completion_sentence("messages").unwrap(),
            "NOTE: the window's messages kept completing until 1.98 s, 9.9× the 0.20 s window: \
             messages/s above is the messages of the window per second of it; over the 1.98 s \
             they took, 505 messages/s (latency p50 1966080 us): use a window many times the \
             latency"
        );
        r.last_echo_secs = Some(0.3);
        assert_eq!(r.late_completion_sentence("messages"), None);
        r.last_echo_secs = Some(0.31);
        assert!(r.late_completion_sentence("messages").is_some());
        r.messages = 0;
        assert_eq!(r.late_completion_sentence("messages"), None);
        r.messages = 1000;
        r.last_echo_secs = None;
        assert_eq!(r.late_completion_sentence("messages"), None);
        r.last_echo_secs = Some(1.98);
        r.seconds = 0.0;
        assert_eq!(r.late_completion_sentence("messages"), None);
    }
}
