//! The command lines of `echolab client`, `echolab bench` and `echolab compare`, and the
//! checks that turn them into plain configurations. A bad value is one line naming it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    cores, BenchConfig, ThreadsFrom, DEFAULT_STARVE_AFTER, MAX_PENDING, MIN_DURATION, MIN_INTERVAL,
};

/// Send stdin (or a file) to an echo server and print or verify what comes back.
///
/// Interactive: each line typed goes to the server and its echo is printed. At the end of
/// input (Ctrl-D) the client shuts down its sending side and prints every byte still owed;
/// a server that closes or resets early is reported as an error, never printed as an echo.
///
/// Exit status: 0 when everything sent came back, 1 on an error (reset, timeout, early
/// end of file), 2 for a bad argument, 3 when an echoed byte differs from the one sent.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server: IP:PORT or HOST:PORT.
    #[arg(default_value = "127.0.0.1:7007", value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Send this file instead of stdin, check every byte of the echo, print nothing but
    /// the verdict.
    #[arg(long, value_name = "FILE")]
    pub send: Option<PathBuf>,

    /// Give up after this many seconds without progress (connecting, or waiting for an
    /// owed echo).
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
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
/// 3 byte mismatch; 130 interrupted.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The server: IP:PORT or HOST:PORT.
    #[arg(value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Connections (with --churn: connections in progress at once).
    #[arg(long, short = 'c', default_value_t = 64, value_name = "N", value_parser = parse_conns, allow_negative_numbers = true)]
    pub conns: usize,

    /// Message size in bytes; K/KiB and M/MiB suffixes are accepted (16KiB).
    #[arg(long, short = 's', default_value = "64", value_name = "BYTES", value_parser = parse_size, allow_negative_numbers = true)]
    pub size: usize,

    /// Measured seconds (after the warm-up), at least 0.1.
    #[arg(long, short = 'd', default_value = "5", value_name = "SECS", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Duration,

    /// Seconds of load before measuring; excluded from every figure.
    #[arg(long, short = 'w', default_value = "1", value_name = "SECS", value_parser = parse_secs_or_zero, allow_negative_numbers = true)]
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

    /// Seconds between progress lines when stderr is not a terminal: 0 for none, else at
    /// least 0.1.
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = parse_interval, allow_negative_numbers = true)]
    pub interval: Duration,

    /// Seconds allowed to establish the connections.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub connect_timeout: Duration,

    /// A connection owed an echo that makes no progress for this many seconds counts as a
    /// timeout error and is closed.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Duration,

    /// A connection owed an echo that waits this many seconds without progress is
    /// starved: an error (exit 1), counted once per connection, which stays open.
    #[arg(long, default_value_t = DEFAULT_STARVE_AFTER.as_secs_f64(), value_name = "SECS", value_parser = parse_secs_f64, allow_negative_numbers = true)]
    pub starve_after: f64,
}

impl BenchArgs {
    /// The checked configuration, or one line naming the conflict.
    pub fn config(&self) -> Result<BenchConfig, String> {
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
            starve_after: Duration::from_secs_f64(self.starve_after),
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
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Models to compare, comma-separated. Default: every model that starts.
    #[arg(long, value_delimiter = ',', value_name = "LIST", value_parser = parse_model)]
    pub models: Option<Vec<String>>,

    /// Where to write index.html (tables and charts on one page), results.json, summary.md
    /// and the SVG charts.
    #[arg(long, default_value = "target/echolab-compare", value_name = "DIR")]
    pub out: PathBuf,

    /// A reduced matrix (1, 8, 64 connections; the pinned pair; UDP; 500 idle) that runs in
    /// about two minutes on 2 cores (for CI and a first look).
    #[arg(long)]
    pub quick: bool,

    /// Runs of each (workload, model) pair; the tables show medians. Default: 3.
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pub repeats: Option<usize>,

    /// Folder of the reference C servers (ref_epoll, ref_threads) that
    /// scripts/build-ref.sh builds; they run every TCP workload and are drawn dashed.
    /// Default: target/ref, when they are there (none found: none run).
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

/// An address with a port: `127.0.0.1:7007`, `[::1]:7007`, or a host name to resolve.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let usage = || format!("not an address with a port: {text:?} (try 127.0.0.1:7007)");
    // Tell the three ways a HOST:PORT goes wrong apart: no port, a bad port, a host name
    // that does not resolve.
    let (host, port) = text.rsplit_once(':').ok_or_else(usage)?;
    if host.is_empty() {
        return Err(usage());
    }
    if port.parse::<u16>().is_err() {
        return Err(match port.parse::<u64>() {
            Ok(_) => format!("port out of range (0 to 65535) in {text:?}"),
            Err(_) => usage(),
        });
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|_| format!("cannot resolve host {host:?} in {text:?}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err(format!("must be at least 1, got {text}")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("not a whole number: {text:?}")),
    }
}

fn parse_conns(text: &str) -> Result<usize, String> {
    let n = parse_positive(text)?;
    if n > MAX_PENDING {
        return Err(format!("at most {MAX_PENDING} connections, got {text}"));
    }
    Ok(n)
}

fn parse_threads(text: &str) -> Result<usize, String> {
    let n = parse_positive(text)?;
    const MAX: usize = 4_096;
    if n > MAX {
        return Err(format!("at most {MAX} threads, got {text}"));
    }
    Ok(n)
}

fn parse_pipeline(text: &str) -> Result<usize, String> {
    let depth = parse_positive(text)?;
    // A bound on a bound: each message in flight holds its start time.
    const MAX: usize = 65_536;
    if depth > MAX {
        return Err(format!("at most {MAX}, got {depth}"));
    }
    Ok(depth)
}

/// A size in bytes, with an optional K/KiB (1024) or M/MiB (1024²) suffix.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let scale: usize = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => {
            return Err(format!(
                "not a size in bytes: {text:?} (try 64, 16KiB or 1MiB)"
            ))
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("not a size in bytes: {text:?} (try 64, 16KiB or 1MiB)"))?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| format!("size too large: {text:?}"))?;
    const MAX: usize = 64 << 20;
    match bytes {
        0 => Err(format!("a message has at least 1 byte, got {text:?}")),
        b if b > MAX => Err(format!("at most 64 MiB per message, got {text:?}")),
        b => Ok(b),
    }
}

/// Seconds: a bare number (fractions allowed) or one with its unit, `s` or `ms` (`0.2`,
/// `0.2s` and `200ms` are the same), as `bench --udp` takes them.
fn parse_seconds(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let (number, scale) = match trimmed.strip_suffix("ms") {
        Some(ms) => (ms, 0.001),
        None => (trimmed.strip_suffix('s').unwrap_or(trimmed), 1.0),
    };
    let secs: f64 = number
        .trim()
        .parse::<f64>()
        .map(|value| value * scale)
        .map_err(|_| format!("not a number of seconds (or with a unit, ms or s): {text:?}"))?;
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("seconds must be between 0 and 86400, got {text:?}"));
    }
    Ok(secs)
}

/// Seconds, more than zero, fractions allowed (`0.5`).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs = parse_seconds(text)?;
    if secs == 0.0 {
        return Err(format!("must be more than 0 seconds, got {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_secs_f64(text: &str) -> Result<f64, String> {
    parse_timeout(text).map(|d| d.as_secs_f64())
}

/// A timeout: at least a millisecond (below that it would fire before a round trip).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_secs(text)?;
    if timeout < Duration::from_millis(1) {
        return Err(format!("at least 0.001 seconds, got {text:?}"));
    }
    Ok(timeout)
}

fn parse_secs_or_zero(text: &str) -> Result<Duration, String> {
    parse_seconds(text).map(Duration::from_secs_f64)
}

/// The measured window: at least [`MIN_DURATION`].
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_secs(text)?;
    if duration < MIN_DURATION {
        return Err(format!(
            "a window shorter than {} s measures the clock, not the server: got {text:?}",
            MIN_DURATION.as_secs_f64()
        ));
    }
    Ok(duration)
}

/// The progress interval: 0 (none) or at least [`MIN_INTERVAL`].
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_secs_or_zero(text)?;
    if !interval.is_zero() && interval < MIN_INTERVAL {
        return Err(format!(
            "progress lines at most every {} s (or 0 for none), got {text:?}",
            MIN_INTERVAL.as_secs_f64()
        ));
    }
    Ok(interval)
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

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert!(parse_size("0").unwrap_err().contains("\"0\""));
        assert!(parse_size("12 furlongs")
            .unwrap_err()
            .contains("12 furlongs"));
        assert!(parse_size("1G").is_err());
    }

    #[test]
    fn seconds_take_fractions_and_name_bad_values() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("2s"), Ok(Duration::from_secs(2)));
        // The unit `bench --udp` takes too: 200ms is 0.2 s, and a bare number is seconds.
        assert_eq!(parse_timeout("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_secs(" 1500ms "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("200"), Ok(Duration::from_secs(200)));
        assert!(parse_timeout("0.5ms").unwrap_err().contains("0.5ms"));
        assert!(parse_secs("5m").unwrap_err().contains("5m"));
        assert!(parse_secs("0").unwrap_err().contains("\"0\""));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").unwrap_err().contains("soon"));
        assert_eq!(parse_secs_or_zero("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn windows_and_intervals_have_a_floor_that_is_named() {
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        let err = parse_duration("1e-10").unwrap_err();
        assert!(err.contains("0.1 s") && err.contains("1e-10"), "{err}");
        assert!(parse_duration("0.099").is_err());
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("0.1"), Ok(Duration::from_millis(100)));
        let err = parse_interval("1e-6").unwrap_err();
        assert!(err.contains("0.1 s") && err.contains("1e-6"), "{err}");
        for absurd in ["NaN", "inf", "-inf", "18446744073709551615"] {
            assert!(parse_duration(absurd).unwrap_err().contains(absurd));
            assert!(parse_interval(absurd).unwrap_err().contains(absurd));
        }
    }

    #[test]
    fn timeouts_are_at_least_a_millisecond() {
        assert_eq!(parse_timeout("0.001"), Ok(Duration::from_millis(1)));
        assert!(parse_timeout("1e-10").unwrap_err().contains("1e-10"));
        assert!(parse_timeout("0.0009").is_err());
        assert_eq!(parse_secs_f64("0.25"), Ok(0.25));
        assert!(parse_secs_f64("1e-10").is_err());
    }

    #[test]
    fn counts_are_bounded_and_named() {
        assert_eq!(parse_conns("1"), Ok(1));
        assert_eq!(parse_conns("1048576"), Ok(MAX_PENDING));
        assert!(parse_conns("1048577").unwrap_err().contains("1048577"));
        assert!(parse_conns("18446744073709551615")
            .unwrap_err()
            .contains("18446744073709551615"));
        assert_eq!(parse_threads("4096"), Ok(4096));
        assert!(parse_threads("4097").unwrap_err().contains("4097"));
        assert!(parse_threads("0").unwrap_err().contains('0'));
    }

    #[test]
    fn addresses_need_a_port() {
        assert_eq!(parse_addr("127.0.0.1:7007").unwrap().port(), 7007);
        assert_eq!(parse_addr("[::1]:9").unwrap().port(), 9);
        assert!(parse_addr("127.0.0.1").unwrap_err().contains("127.0.0.1"));
        assert!(parse_addr("127.0.0.1:99999")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_addr("nonsense:abc")
            .unwrap_err()
            .contains("nonsense:abc"));
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
