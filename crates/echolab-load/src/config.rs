//! A bench run's plain configuration ([`BenchConfig`]), the three ways of loading a server
//! ([`Workload`]), and the limits every configuration is checked against.
//!
//! This module depends on nothing else in the crate: the engine reads it, the report
//! renders it, the command line builds it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

/// The shortest measured window: below it a run measures the clock, not the server (a
/// few hundred echoes at best), and its figures would contradict each other.
pub const MIN_DURATION: Duration = Duration::from_millis(100);

/// The shortest interval between two progress lines: a line costs a write to stderr,
/// and at a microsecond interval the lines themselves slow the load (by 30 to 45%).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The most messages a run keeps track of at once (in flight or held back), over all
/// connections: each holds its intended send time (16 bytes), so this bounds the
/// bookkeeping at 16 MiB.
pub const MAX_PENDING: usize = 1 << 20;

/// The default `--starve-after`: well under any useful run, well over any healthy
/// round trip.
pub const DEFAULT_STARVE_AFTER: Duration = Duration::from_secs(1);

/// A checked bench configuration.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server.
    pub addr: SocketAddr,
    /// Connections (churn: connections in progress at once), at least 1.
    pub n_conns: usize,
    /// Bytes per message, at least 1.
    pub msg_size: usize,
    /// The measured window, at least [`MIN_DURATION`].
    pub duration: Duration,
    /// Load before the window, excluded from every figure (may be zero).
    pub warmup: Duration,
    /// Worker threads; capped at `n_conns`.
    pub n_threads: usize,
    /// Why `n_threads` has its value: given, or a default for a local or remote server.
    pub threads_from: ThreadsFrom,
    /// Messages in flight per connection (closed loop) or at most in flight (open loop);
    /// `n_conns * pipeline` is at most [`MAX_PENDING`].
    pub pipeline: usize,
    /// Open loop: messages per second over all connections.
    pub rate: Option<f64>,
    /// Connect, one echo, close, repeat.
    pub churn: bool,
    /// Every message is a line ending in `\n`, for line-mode servers.
    pub lines: bool,
    /// How long establishing the connections may take.
    pub connect_timeout: Duration,
    /// A connection owed an echo that makes no progress for this long is a timeout error
    /// and is closed.
    pub stall_timeout: Duration,
    /// `bench --json-stream`: the workers also record the window's latencies per interval,
    /// for the progress callback ([`crate::engine::Progress::interval_latency`]).
    pub interval_latency: bool,
    /// A connection owed an echo that makes no progress for this long is starved: an
    /// error of its own kind, counted once per connection; it stays open.
    pub starve_after: Duration,
    /// `--hdr-log`: keep the latency histogram per interval of this length (zero: one
    /// interval, the window).
    pub hdr_interval: Option<Duration>,
}

/// Where the worker thread count came from, for the report to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadsFrom {
    /// `--threads` on the command line.
    Given,
    /// The default for a server on this machine: half of `cores`, at least 1, so that the
    /// server keeps the other half.
    LocalDefault { cores: usize },
    /// The default for a server elsewhere: every one of `cores`.
    RemoteDefault { cores: usize },
}

impl ThreadsFrom {
    /// The default for a server at `addr` on a machine with `cores` cores: the thread
    /// count and where it came from.
    pub fn default_for(addr: SocketAddr, cores: usize) -> (usize, ThreadsFrom) {
        let cores = cores.max(1);
        if is_local(addr.ip()) {
            ((cores / 2).max(1), ThreadsFrom::LocalDefault { cores })
        } else {
            (cores, ThreadsFrom::RemoteDefault { cores })
        }
    }

    /// A phrase for the report: "given", "default: half of 2 cores, the server is on
    /// this machine".
    pub fn describe(self) -> String {
        match self {
            ThreadsFrom::Given => "given".to_string(),
            ThreadsFrom::LocalDefault { cores } => format!(
                "default: half of {cores} cores, at least 1, leaving the rest to the server on this machine"
            ),
            ThreadsFrom::RemoteDefault { cores } => {
                format!("default: one per core ({cores}), the server is on another machine")
            }
        }
    }
}

/// True when `ip` is this machine: a loopback address, or one a socket can bind to (an
/// address of one of its interfaces).
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind((ip, 0)).is_ok()
}

/// The ways of loading a server, each run by its own driver in the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// Send, wait for the whole echo, send the next.
    Closed,
    /// Send at a constant rate (messages per second over all connections), measure from
    /// the intended send time.
    Open { rate: f64 },
    /// Connect, one echo, close.
    Churn,
}

impl Workload {
    /// The name in the JSON document: `closed`, `open` or `churn`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Closed => "closed",
            Workload::Open { .. } => "open",
            Workload::Churn => "churn",
        }
    }

    /// A phrase for the summary's first line.
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
        let (n_threads, threads_from) = ThreadsFrom::default_for(addr, cores());
        BenchConfig {
            addr,
            n_conns,
            msg_size,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            n_threads,
            threads_from,
            pipeline: 1,
            rate: None,
            churn: false,
            lines: false,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(10),
            starve_after: DEFAULT_STARVE_AFTER,
            interval_latency: false,
            hdr_interval: None,
        }
    }

    /// The workload the flags ask for.
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

    /// The most messages one connection keeps pending (in flight plus held back): its
    /// share of [`MAX_PENDING`], and never less than its pipeline.
    pub fn max_pending_per_conn(&self) -> usize {
        (MAX_PENDING / self.n_conns.max(1)).max(self.pipeline)
    }
}

/// The machine's cores (as the scheduler lets this process use them), at least 1.
pub fn cores() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_server_gets_half_the_cores_and_a_remote_one_all() {
        let local: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert_eq!(
            ThreadsFrom::default_for(local, 8),
            (4, ThreadsFrom::LocalDefault { cores: 8 })
        );
        assert_eq!(ThreadsFrom::default_for(local, 2).0, 1);
        assert_eq!(ThreadsFrom::default_for(local, 1).0, 1);
        assert_eq!(ThreadsFrom::default_for(local, 3).0, 1);
        // TEST-NET-1 (RFC 5737) is never an address of this machine.
        let remote: SocketAddr = "192.0.2.1:7".parse().unwrap();
        assert_eq!(
            ThreadsFrom::default_for(remote, 8),
            (8, ThreadsFrom::RemoteDefault { cores: 8 })
        );
        assert!(ThreadsFrom::LocalDefault { cores: 2 }
            .describe()
            .contains("half of 2 cores"));
    }

    #[test]
    fn pending_messages_are_bounded_over_all_connections() {
        let addr: SocketAddr = "127.0.0.1:7".parse().unwrap();
        let mut config = BenchConfig::new(addr, 4, 64);
        assert_eq!(config.max_pending_per_conn(), MAX_PENDING / 4);
        config.n_conns = MAX_PENDING;
        config.pipeline = 1;
        assert_eq!(config.max_pending_per_conn(), 1);
        config.n_conns = 3;
        config.pipeline = 1;
        assert_eq!(config.max_pending_per_conn(), MAX_PENDING / 3);
    }
}
