//! The command lines of `echolab client`, `echolab bench` and `echolab compare`, and the
//! checks that turn them into plain configurations. A bad value is one line naming it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use echolab_cli::units;

use crate::config::{cores, BenchConfig, ThreadsFrom, MAX_PENDING, MIN_DURATION, MIN_INTERVAL};
use crate::threshold::Thresholds;

/// Send stdin (or a file) to an echo server and print or verify what comes back.
///
/// Interactive: each line typed goes to the server and its echo is printed (and checked:
/// a byte that differs from the one sent ends the session, exit 3). At the end of
/// input (Ctrl-D) the client shuts down its sending side and prints every byte still owed;
/// a server that closes or resets early is reported as an error, never printed as an echo.
///
/// Exit status: 0 everything sent came back; 1 an error (reset, timeout, early end of
/// file); 2 bad argument; 3 an echoed byte differs from the one sent; 141 stdout closed by
/// its reader (`| head`: the session ends).
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server: IP:PORT or HOST:PORT.
    #[arg(default_value = "127.0.0.1:7007", value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Send this file instead of stdin, check every byte of the echo, print nothing but
    /// the verdict.
    #[arg(long, value_name = "FILE")]
    pub send: Option<PathBuf>,

    /// Give up after this long without progress (connecting, or waiting for an owed echo).
    /// A duration: 500ms, 2s, 1m; a bare number is seconds; at least 1ms, at most 1d.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Duration,
}

/// Load an echo server and measure it: messages/s, latency percentiles, errors by kind.
///
/// Closed loop by default (each connection sends a message, waits for the whole echo,
/// checks every byte, sends the next). --rate makes it an open loop measured from the
/// intended send times (no coordinated omission); --churn measures connections per second.
///
/// Every message of the measured window is accounted for: completed, or incomplete
/// (still waiting at the end, lost with a failed connection, or never sent).
///
/// Exit status: 0 clean run; 1 errors (connect, reset, eof, timeout, extra bytes, starved
/// connections), incomplete messages, a server gone, or nothing completed; 2 bad argument;
/// 3 byte mismatch; 99 a threshold broken (--max-p99, --min-rate, --max-errors), named
/// on stderr with its figure; 130 interrupted; 141 stdout closed by its reader (`| head`;
/// --json-stream stops the run at the first object nobody reads).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The server: IP:PORT or HOST:PORT.
    #[arg(value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Connections (with --churn: connections in progress at once).
    #[arg(long, short = 'c', default_value_t = 64, value_name = "N", value_parser = parse_conns, allow_negative_numbers = true)]
    pub conns: usize,

    /// Message size: bytes, or with a unit (1.5K, 16KiB = 16384, 16KB = 16000, 1M); at most
    /// 64 MiB.
    #[arg(long, short = 's', default_value = "64", value_name = "SIZE", value_parser = parse_size, allow_negative_numbers = true)]
    pub size: usize,

    /// The measured window (after the warm-up), at least 100ms. A duration: 500ms, 2s, 1m;
    /// a bare number is seconds.
    #[arg(long, short = 'd', default_value = "5s", value_name = "DURATION", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Duration,

    /// Load before measuring, excluded from every figure; 0 for none.
    #[arg(long, short = 'w', default_value = "1s", value_name = "DURATION", value_parser = parse_secs_or_zero, allow_negative_numbers = true)]
    pub warmup: Duration,

    /// Worker threads, each with its own event loop. Default: half the cores (at least 1)
    /// when the server is on this machine, so it keeps the other half; every core when it
    /// is elsewhere.
    #[arg(long, short = 't', value_name = "N", value_parser = parse_threads, allow_negative_numbers = true)]
    pub threads: Option<usize>,

    /// Messages in flight per connection (with --rate: at most in flight).
    #[arg(long, short = 'P', default_value_t = 1, value_name = "DEPTH", value_parser = parse_pipeline, allow_negative_numbers = true)]
    pub pipeline: usize,

    /// Open loop: send this many messages per second in total, spread over the connections,
    /// and measure latency from each message's intended send time.
    #[arg(long, short = 'r', value_name = "MSGS_PER_SEC", value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: Option<f64>,

    /// Connection churn: connect, one echo, close, repeat; reports connections/s.
    #[arg(long)]
    pub churn: bool,

    /// Line mode: every message ends in '\n' and holds no other (for --mode lines servers).
    #[arg(long)]
    pub lines: bool,

    /// Print one JSON document on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// For CI: one JSON object per line on stdout, one per --interval of the window
    /// (`{"interval": N, "t_secs", "secs", "messages", "rate_per_sec", "errors",
    /// "latency_us": {"p50", "p90", "p99", "p999", "max"}}`: figures of that interval
    /// alone), then the --json document on one line.
    #[arg(long)]
    pub json_stream: bool,

    /// Fail the run (exit 99) when the window's p99 latency is above this duration (250us,
    /// 5ms, 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_max_p99, allow_negative_numbers = true)]
    pub max_p99: Option<Duration>,

    /// Fail the run (exit 99) when it completed fewer messages (--churn: connections) per
    /// second than this.
    #[arg(long, value_name = "PER_SEC", value_parser = parse_rate, allow_negative_numbers = true)]
    pub min_rate: Option<f64>,

    /// Fail the run (exit 99) with more than N errors (all kinds but corrupt bytes, which
    /// always exit 3). Given, it judges errors instead of the rule that any error exits 1:
    /// up to N errors, and the messages lost with their connections, pass. 0 to 10^12.
    #[arg(long, value_name = "N", value_parser = parse_max_errors, allow_negative_numbers = true)]
    pub max_errors: Option<u64>,

    /// Time between progress lines when stderr is not a terminal: 0 for none, else at
    /// least 100ms.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_interval, allow_negative_numbers = true)]
    pub interval: Duration,

    /// Time allowed to establish the connections (at least 1ms).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub connect_timeout: Duration,

    /// A connection owed an echo that makes no progress for this long counts as a timeout
    /// error and is closed (at least 1ms).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Duration,

    /// A connection owed an echo that waits this long without progress is starved: an
    /// error (exit 1), counted once per connection, which stays open (at least 1ms).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub starve_after: Duration,

    /// Also write the latency as an HdrHistogram interval log (V2 compressed, values in
    /// nanoseconds), one histogram per --interval of the measured window (the whole window
    /// when --interval is 0); `echolab merge` adds such logs from several load machines.
    #[arg(long, value_name = "FILE")]
    pub hdr_log: Option<PathBuf>,

    /// Hold this many idle connections, each verified by one 8-byte echo, while --active
    /// connections run the measured ping-pong; reports established, failed by kind, time
    /// to establish and connect rate. Past this process's descriptor limit (RLIMIT_NOFILE)
    /// the hold is split among worker processes of bench itself, one line each.
    #[arg(long, value_name = "N", value_parser = parse_hold, allow_negative_numbers = true)]
    pub hold: Option<u64>,

    /// With --hold: the measured ping-pong connections beside the held ones (default:
    /// --conns); 0 holds them idle for --duration.
    #[arg(long, value_name = "K", value_parser = parse_active, allow_negative_numbers = true, requires = "hold")]
    pub active: Option<usize>,

    /// With --hold: local addresses to spread the held connections over, a range and/or
    /// a list (127.0.0.2-127.0.0.20,127.0.1.1); within 127.0.0.0/8 for a loopback server.
    #[arg(
        long,
        value_name = "A-B|LIST",
        requires = "hold",
        allow_negative_numbers = true
    )]
    pub source_ip: Option<String>,

    /// With --hold: connects per second (default: as fast as 1024 in flight allow).
    #[arg(long, value_name = "PER_SEC", value_parser = parse_rate, allow_negative_numbers = true, requires = "hold")]
    pub connect_rate: Option<f64>,
}

/// `--hold`: at least 1, at most ten million.
fn parse_hold(text: &str) -> Result<u64, String> {
    units::count(text, 1, 10_000_000)
}

/// `--active`: 0 (hold only) up to the connection limit.
fn parse_active(text: &str) -> Result<usize, String> {
    units::count(text, 0, MAX_PENDING as u64).map(|n| n as usize)
}

impl BenchArgs {
    /// The thresholds given (`--max-p99`, `--min-rate`, `--max-errors`).
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            max_p99: self.max_p99,
            min_rate: self.min_rate,
            max_errors: self.max_errors,
        }
    }

    /// The checked configuration, or one line naming the conflict.
    pub fn config(&self) -> Result<BenchConfig, String> {
        if self.json_stream && self.interval.is_zero() {
            return Err("--json-stream needs an --interval (0 means no intervals)".to_string());
        }
        if self.churn && self.rate.is_some() {
            return Err(
                "--churn cannot be combined with --rate: churn is a closed loop of connects"
                    .to_string(),
            );
        }
        if self.churn && self.pipeline > 1 {
            return Err(format!(
                "--pipeline {} cannot be combined with --churn: a churned connection carries one echo",
                self.pipeline
            ));
        }
        // Each message in flight holds its send time: bound them all, not each factor.
        if self.conns.saturating_mul(self.pipeline) > MAX_PENDING {
            return Err(format!(
                "--conns {} x --pipeline {} = {} messages in flight, at most {MAX_PENDING}",
                self.conns,
                self.pipeline,
                self.conns.saturating_mul(self.pipeline)
            ));
        }
        if let Some(rate) = self.rate {
            let window = self.duration.as_secs_f64();
            if rate * window < 1.0 {
                return Err(format!(
                    "--rate {rate:?} sends no message in a {window} s window: at least {} per second",
                    1.0 / window
                ));
            }
        }
        if self.hold.is_some() && self.json_stream {
            return Err(
                "--json-stream cannot be combined with --hold: use --json (one document)"
                    .to_string(),
            );
        }
        if self.hold.is_some() && self.active == Some(0) && self.thresholds().any() {
            return Err(
                "--max-p99, --min-rate and --max-errors judge the active connections: --active 0 measures none"
                    .to_string(),
            );
        }
        if self.hold.is_some() && self.active == Some(0) && self.hdr_log.is_some() {
            return Err(
                "--hdr-log records the active connections' latency: --active 0 measures none"
                    .to_string(),
            );
        }
        if let (Some(n), Some(rate)) = (self.hold, self.connect_rate) {
            // Connects are paced from the first: n of them take (n - 1) / rate seconds.
            let secs = n.saturating_sub(1) as f64 / rate;
            if secs > MAX_SECS.as_secs_f64() {
                return Err(format!(
                    "--connect-rate {rate:?} takes {secs:.3e} s to open --hold {n} connections: at most a day ({:.3e} per second or more)",
                    (n - 1) as f64 / MAX_SECS.as_secs_f64()
                ));
            }
        }
        let (n_threads, threads_from) = match self.threads {
            Some(n) => (n, ThreadsFrom::Given),
            None => ThreadsFrom::default_for(self.addr, cores()),
        };
        Ok(BenchConfig {
            addr: self.addr,
            n_conns: self.conns,
            msg_size: self.size,
            duration: self.duration,
            warmup: self.warmup,
            n_threads,
            threads_from,
            pipeline: self.pipeline,
            rate: self.rate,
            churn: self.churn,
            lines: self.lines,
            connect_timeout: self.connect_timeout,
            stall_timeout: self.timeout,
            starve_after: self.starve_after,
            interval_latency: self.json_stream,
            hdr_interval: self.hdr_log.as_ref().map(|_| self.interval),
        })
    }
}

/// Run every model under the same load and write tables and charts.
///
/// Starts each model as `echolab serve --model M --listen 127.0.0.1:0` (this executable),
/// runs the workload matrix against all of them alternately, reads each server's CPU time,
/// memory, threads and processes from /proc, and writes results.json, summary.md, SVG
/// charts and index.html (tables and charts on one page). Models that fail to start are
/// reported and left out.
///
/// Exit status: 0 every started model ran cleanly; 1 a run had errors, no model started,
/// or the results could not be written; 2 bad argument (or --out cannot be created); 130
/// interrupted.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Models to compare, comma-separated. Default: every model that starts.
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = parse_model, allow_negative_numbers = true)]
    pub models: Option<Vec<String>>,

    /// Where to write index.html (tables and charts on one page), results.json, summary.md
    /// and the SVG charts.
    #[arg(long, default_value = "target/echolab-compare", value_name = "DIR")]
    pub out: PathBuf,

    /// A reduced matrix (1, 8, 64 connections; the pinned pair; UDP; 500 idle) that runs in
    /// about two minutes on 2 cores (for CI and a first look).
    #[arg(long)]
    pub quick: bool,

    /// Runs of each (workload, model) pair; the tables show medians. Default: 3; at most
    /// 1000.
    #[arg(long, value_name = "N", value_parser = parse_repeats, allow_negative_numbers = true)]
    pub repeats: Option<usize>,

    /// Folder of the reference C servers (ref_epoll, ref_threads) that
    /// scripts/build-ref.sh builds; they run every TCP workload and are drawn dashed.
    /// Default: target/ref, when they are there (none found: none run); a folder given
    /// that holds neither is a bad argument (exit 2).
    #[arg(long, value_name = "DIR")]
    pub ref_dir: Option<PathBuf>,
}

/// The models `echolab serve --model` accepts, in the lecture's order, then the fast ones.
/// compare talks to servers only through that command line, so it names them as it does
/// (a test checks this list against the server crate's).
pub const MODELS: [&str; 8] = [
    "iterative",
    "process",
    "event",
    "thread",
    "prethreaded",
    "reactor",
    "uring",
    "async",
];

fn parse_model(text: &str) -> Result<String, String> {
    let name = text.trim();
    if MODELS.contains(&name) {
        Ok(name.to_string())
    } else {
        Err(format!(
            "unknown model {name:?} (models: {})",
            MODELS.join(", ")
        ))
    }
}

// The values' grammar and messages live in echolab_cli::units, shared with serve, lab and
// the UDP flags; here are only each flag's range.

/// The longest duration any of these flags takes: a day.
const MAX_SECS: Duration = Duration::from_secs(86_400);

/// The server's address with a port: `127.0.0.1:7007`, `[::1]:7007`, or a host name to
/// resolve; not port 0.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    units::destination(text)
}

fn count(text: &str, max: usize) -> Result<usize, String> {
    units::count(text, 1, max as u64).map(|n| n as usize)
}

/// Runs of each pair: a thousand already takes days; more would overflow the step count.
fn parse_repeats(text: &str) -> Result<usize, String> {
    count(text, 1_000)
}

fn parse_conns(text: &str) -> Result<usize, String> {
    count(text, MAX_PENDING)
}

fn parse_threads(text: &str) -> Result<usize, String> {
    count(text, 4_096)
}

fn parse_pipeline(text: &str) -> Result<usize, String> {
    // A bound on a bound: each message in flight holds its start time.
    count(text, 65_536)
}

/// The most bytes in one message: 64 MiB.
const MAX_MSG_SIZE: u64 = 64 << 20;

/// A message size: 1 byte to 64 MiB, with a unit or without (bytes).
pub fn parse_size(text: &str) -> Result<usize, String> {
    units::size(text, 1, MAX_MSG_SIZE).map(|n| n as usize)
}

/// A duration of more than 0, at most a day: a bare number is seconds (`0.5`), or it
/// carries its unit (`500ms`, `2s`, `1m`).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    units::duration(text, Duration::from_nanos(1), MAX_SECS)
}

/// A timeout: a millisecond to a day, as `client --udp`'s ([`units::timeout`]).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    units::timeout(text)
}

fn parse_secs_or_zero(text: &str) -> Result<Duration, String> {
    units::duration(text, Duration::ZERO, MAX_SECS)
}

/// The measured window: at least [`MIN_DURATION`] (a shorter one measures the clock, not
/// the server).
fn parse_duration(text: &str) -> Result<Duration, String> {
    units::duration(text, MIN_DURATION, MAX_SECS)
}

/// A p99 limit: from a microsecond (the histogram's resolution is finer, a server's is
/// not) to 100 s (the longest latency the histogram tells apart).
fn parse_max_p99(text: &str) -> Result<Duration, String> {
    units::duration(text, Duration::from_micros(1), Duration::from_secs(100))
}

/// 0 to a trillion (2^64-1 is refused, as everywhere).
fn parse_max_errors(text: &str) -> Result<u64, String> {
    units::count(text, 0, 1_000_000_000_000)
}

/// The progress interval: 0 (none) or at least [`MIN_INTERVAL`].
fn parse_interval(text: &str) -> Result<Duration, String> {
    units::duration_or_zero(text, MIN_INTERVAL, MAX_SECS)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("not a rate in messages per second: {text:?}"))?;
    if !rate.is_finite() || rate <= 0.0 || rate > 1e9 {
        return Err(format!(
            "a rate must be more than 0 and at most 1e9 messages/s, got {text:?}"
        ));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Bench {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// `echolab bench 127.0.0.1:9 ARGS...`, or clap's error line.
    fn bench(args: &[&str]) -> Result<BenchArgs, String> {
        let argv = ["bench", "127.0.0.1:9"].iter().chain(args);
        Bench::try_parse_from(argv)
            .map(|b| b.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = bench(&[]).unwrap();
        assert_eq!(args.size, 64);
        assert_eq!(args.duration, Duration::from_secs(5));
        assert_eq!(args.warmup, Duration::from_secs(1));
        assert_eq!(args.interval, Duration::from_secs(1));
        assert_eq!(args.connect_timeout, Duration::from_secs(5));
        assert_eq!(args.timeout, Duration::from_secs(10));
        assert_eq!(args.starve_after, crate::config::DEFAULT_STARVE_AFTER);
    }

    /// Every flag's range, both ends: the ceilings of issue 9 kept, units now accepted.
    #[test]
    fn each_flag_keeps_its_range() {
        let ok: &[(&str, &str)] = &[
            ("--size", "1"),
            ("--size", "64MiB"),
            ("--size", "1.5K"),
            ("--duration", "100ms"),
            ("--duration", "0.1"),
            ("--duration", "1d"),
            ("--warmup", "0"),
            ("--interval", "0"),
            ("--interval", "100ms"),
            ("--timeout", "1ms"),
            ("--connect-timeout", "0.001"),
            ("--starve-after", "1ms"),
            ("--conns", "1048576"),
            ("--threads", "4096"),
            ("--pipeline", "65536"),
        ];
        for (flag, value) in ok {
            assert!(bench(&[flag, value]).is_ok(), "{flag} {value}");
        }
        let refused: &[(&str, &str)] = &[
            ("--size", "0"),
            ("--size", "64.5MiB"),
            ("--size", "1G"),
            ("--duration", "99ms"),
            ("--duration", "1e-10"),
            ("--duration", "86401"),
            ("--interval", "99ms"),
            ("--timeout", "999us"),
            ("--starve-after", "0"),
            ("--warmup", "-1"),
            ("--conns", "1048577"),
            ("--conns", "0"),
            ("--threads", "4097"),
            ("--pipeline", "65537"),
            ("--pipeline", "18446744073709551615"),
        ];
        for (flag, value) in refused {
            let err = bench(&[flag, value]).unwrap_err();
            assert!(
                err.contains(flag) && err.contains(value),
                "{flag} {value}: {err}"
            );
        }
    }

    #[test]
    fn the_client_timeout_takes_units() {
        #[derive(Debug, Parser)]
        struct Client {
            #[command(flatten)]
            args: ClientArgs,
        }
        let timeout =
            |t: &str| Client::try_parse_from(["c", "--timeout", t]).map(|c| c.args.timeout);
        assert_eq!(timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(timeout("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(
            Client::try_parse_from(["c"]).unwrap().args.timeout,
            Duration::from_secs(10)
        );
        assert!(timeout("0").is_err());
    }

    #[test]
    fn models_are_the_servers_models() {
        let server: Vec<&str> = echolab_server::Model::ALL
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(server, MODELS);
        assert!(parse_model("fork").unwrap_err().contains("fork"));
    }
}
