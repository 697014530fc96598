//! The `echolab serve` command line: arguments, their checks, and the run.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::echo::{EchoConfig, LongLine, Mode, DEFAULT_MAX_LINE, MAX_LINE_CEILING};
use crate::{logging, Model, ServeConfig};

/// The default `--idle-timeout`, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

/// The longest `--idle-timeout`, in seconds: ten years. A longer one is refused (exit 2)
/// rather than overflow a clock (issue 9: 2^64-1 seconds panicked three models); 0 already
/// means never.
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 10 * 365 * 86_400;

/// The most `--workers`: far more threads than any machine here has cores, and few enough
/// that the vectors sized by it cannot overflow.
pub const MAX_WORKERS: usize = 1024;

/// The most `--max-conns` and `--max-conns-per-ip`: 2^20, more descriptors than a
/// process here may open. A larger value would never be reached, so it is refused as a
/// mistake rather than accepted silently (finding 11: 2^64-1 was taken).
pub const MAX_CONNS_CEILING: usize = 1 << 20;

/// The default `--max-conns` of the models that spend little per connection (see
/// [`Model::default_max_conns`]).
pub const DEFAULT_MAX_CONNS: usize = 10_000;

/// Serve TCP echo with one of the lecture's concurrency models.
///
/// Prints `listening on ADDR (model MODEL)` on stderr once bound. SIGINT or SIGTERM stops
/// it: it stops accepting, closes every connection, ends its threads or child processes,
/// and exits 0. SIGUSR1 prints one stats line on stderr (uptime, connections open, total
/// and refused, bytes in and out of closed connections, accept pauses, ends and errors by
/// kind) and the server keeps serving.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The concurrency model. Default: reactor (one epoll loop per core).
    #[arg(long, short = 'm', value_enum)]
    pub model: Option<Model>,

    /// Address to listen on: IPv4 or IPv6 with a port, or a host name with a port
    /// (localhost:7007 is 127.0.0.1:7007: a name's first IPv4 address, else its first);
    /// port 0 picks a free one. [::]:PORT takes IPv4 connections too on Linux (dual-stack,
    /// unless sysctl net.ipv6.bindv6only=1); --ipv6-only makes it IPv6 only. Ignored when
    /// systemd passes a listening socket (socket activation, LISTEN_FDS).
    #[arg(long, short = 'l', default_value = "127.0.0.1:7007", value_parser = parse_addr)]
    pub listen: SocketAddr,

    /// An IPv6 --listen address takes no IPv4 connections (IPV6_V6ONLY). Default: the
    /// kernel's choice, dual-stack on Linux. (UDP on IPv6 is always IPv6 only.)
    #[arg(long)]
    pub ipv6_only: bool,

    /// bytes: echo every byte back (RFC 862). lines: echo each line when its newline arrives.
    #[arg(long, value_enum, default_value_t = Mode::Bytes)]
    pub mode: Mode,

    /// Lines mode: the longest line accepted, in bytes, not counting its newline; at most
    /// 65536 (a partial line counts against the 64 KiB a connection may hold).
    #[arg(long, default_value_t = DEFAULT_MAX_LINE, value_parser = parse_max_line, allow_negative_numbers = true)]
    pub max_line: usize,

    /// Lines mode: what a line longer than --max-line does. close: closes its connection.
    /// split: goes back in pieces of --max-line bytes as each fills, like CS:APP's
    /// rio_readlineb; `--long-line split --max-line 8191` serves the book's echoclient
    /// (MAXLINE 8192), which sends a long line in 8,191-byte pieces and waits for each echo.
    #[arg(long, value_enum, default_value_t = LongLine::Close)]
    pub long_line: LongLine,

    /// Close a connection after this many seconds without a byte in either direction; 0 never
    /// (at most 315360000, ten years).
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT_SECS, value_name = "SECS", value_parser = parse_idle_timeout, allow_negative_numbers = true)]
    pub idle_timeout: u64,

    /// The most connections open at once. The next one is accepted and closed at once (the
    /// client sees end-of-file without an echo), and a warning is logged (at most one line
    /// a second, with a count of the others). Default: 256 for process, 1024 for thread,
    /// 10000 for the other models; at most 1048576.
    #[arg(long, value_parser = parse_max_conns, value_name = "N", allow_negative_numbers = true)]
    pub max_conns: Option<usize>,

    /// The most connections open at once from one IP address, refused like --max-conns.
    /// Default: no limit (a benchmark opens all its connections from one address); at most
    /// 1048576.
    #[arg(long, value_parser = parse_max_conns, value_name = "N", allow_negative_numbers = true)]
    pub max_conns_per_ip: Option<usize>,

    /// Worker threads (prethreaded: default 4 per core; reactor, uring, async: one per core;
    /// at most 1024). The other models have no workers and refuse it.
    #[arg(long, value_parser = parse_workers, value_name = "N", allow_negative_numbers = true)]
    pub workers: Option<usize>,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics: connections,
    /// bytes, refusals, ends and errors, with a `model` label. Port 0 picks a free one (the
    /// address is printed: `metrics on http://ADDR/metrics`). Not with --model process,
    /// which must stay single-threaded to fork (use kill -USR1 there).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub metrics: Option<SocketAddr>,

    /// Log the stats line (the one `kill -USR1` prints) at info level every SECS seconds;
    /// 0 never (at most 315360000, ten years).
    #[arg(long, default_value_t = crate::stats::DEFAULT_SUMMARY_INTERVAL.as_secs(), value_name = "SECS", value_parser = parse_stats_interval, allow_negative_numbers = true)]
    pub stats_interval: u64,

    /// Log only warnings and errors (the listening line is still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// More log: -v adds every connection's open and close lines (RUST_LOG=debug), -vv
    /// also every read, "server received N bytes" (RUST_LOG=trace). Without -q or -v,
    /// RUST_LOG decides (RUST_LOG=echolab=debug: only echolab's own lines); default info:
    /// start, stop, warnings, errors, and the stats summary every --stats-interval.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    crate::net::resolve_listen(text)
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("not a whole number: {text:?}")),
    }
}

fn parse_idle_timeout(text: &str) -> Result<u64, String> {
    let secs: u64 = text
        .parse()
        .map_err(|_| format!("not a whole number of seconds: {text:?}"))?;
    if secs > MAX_IDLE_TIMEOUT_SECS {
        return Err(format!(
            "at most {MAX_IDLE_TIMEOUT_SECS} seconds (ten years); 0 means never"
        ));
    }
    Ok(secs)
}

fn parse_stats_interval(text: &str) -> Result<u64, String> {
    let secs: u64 = text
        .parse()
        .map_err(|_| format!("not a whole number of seconds: {text:?}"))?;
    if secs > MAX_IDLE_TIMEOUT_SECS {
        return Err(format!(
            "at most {MAX_IDLE_TIMEOUT_SECS} seconds (ten years); 0 means never"
        ));
    }
    Ok(secs)
}

fn parse_max_conns(text: &str) -> Result<usize, String> {
    let n = parse_positive(text)?;
    if n > MAX_CONNS_CEILING {
        return Err(format!("at most {MAX_CONNS_CEILING}"));
    }
    Ok(n)
}

fn parse_workers(text: &str) -> Result<usize, String> {
    let n = parse_positive(text)?;
    if n > MAX_WORKERS {
        return Err(format!("at most {MAX_WORKERS}"));
    }
    Ok(n)
}

fn parse_max_line(text: &str) -> Result<usize, String> {
    let n = parse_positive(text)?;
    if n > MAX_LINE_CEILING {
        return Err(format!(
            "at most {MAX_LINE_CEILING} bytes (a partial line counts against the 64 KiB a connection may hold)"
        ));
    }
    Ok(n)
}

impl ServeArgs {
    /// The checked configuration these arguments describe.
    pub fn config(&self) -> ServeConfig {
        let model = self.model.unwrap_or(Model::DEFAULT);
        ServeConfig {
            model,
            listen: self.listen,
            echo: EchoConfig {
                mode: self.mode,
                max_line: self.max_line,
                long_line: self.long_line,
            },
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
            max_conns: self.max_conns.unwrap_or(model.default_max_conns()),
            max_conns_per_ip: self.max_conns_per_ip,
            workers: self.workers,
            stats_interval: (self.stats_interval > 0)
                .then(|| Duration::from_secs(self.stats_interval)),
            metrics: self.metrics,
            ipv6_only: self.ipv6_only,
        }
    }
}

/// Runs `echolab serve`: 0 after a clean shutdown, 2 for a bad setting (such as a port in
/// use), 1 for a failure while serving.
pub fn run(args: ServeArgs) -> ExitCode {
    let config = args.config();
    if let Some(workers) = config.workers.filter(|_| !config.model.has_workers()) {
        // A value that would do nothing is a mistake to report, not to ignore (finding 11).
        eprintln!(
            "echolab serve: --workers {workers}: the {} model has no worker threads (only prethreaded, reactor, uring and async take --workers)",
            config.model
        );
        return ExitCode::from(2);
    }
    if let (Some(addr), Model::Process) = (config.metrics, config.model) {
        eprintln!(
            "echolab serve: --metrics {addr}: the process model forks only while it has one thread, and the endpoint needs one (use kill -USR1 for its figures)"
        );
        return ExitCode::from(2);
    }
    logging::init(args.quiet, args.verbose);
    let model = config.model;
    let result = crate::serve(config, |addr| {
        eprintln!("listening on {addr} (model {model})");
    });
    match result {
        Ok(()) => {
            log::info!("server stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("echolab serve: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
