//! The `echolab serve` command line: arguments, their checks, and the run.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use echolab_cli::units;

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
/// Prints `listening on ADDR (model MODEL)` on stderr once bound (a line per --listen
/// address), then logs each connection. SIGINT or SIGTERM stops it: it stops accepting, closes every connection,
/// ends its threads or child processes, and exits 0. SIGUSR1 prints one stats line on
/// stderr (uptime, connections open, total and refused, bytes in and out of closed
/// connections, accept pauses, ends and errors by kind) and the server keeps serving.
///
/// Exit status: 0 after a clean shutdown; 1 a failure while serving (a panic in any thread
/// stops the server); 2 bad argument or setting (such as a port in use); 101 a panic that
/// unwound out of the main thread.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The concurrency model. Default: reactor (one epoll loop per core).
    #[arg(long, short = 'm', value_enum)]
    pub model: Option<Model>,

    /// Address to listen on: IPv4 or IPv6 with a port, or a host name with a port
    /// (localhost:7007 is 127.0.0.1:7007: a name is one address, its first IPv4 one, else
    /// its first); port 0 picks a free one. Give it several times for several addresses,
    /// served by one server under one --max-conns: `--listen 127.0.0.1:7007 --listen
    /// [::1]:7007` (IPv4 and IPv6 loopback), or `--listen 0.0.0.0:7007 --listen [::]:7007
    /// --ipv6-only` (every address of both families). One `listening on ADDR` line per
    /// address, in this order. [::]:PORT takes IPv4 connections too on Linux (dual-stack,
    /// unless sysctl net.ipv6.bindv6only=1), so beside 0.0.0.0:PORT it needs --ipv6-only;
    /// --ipv6-only makes it IPv6 only. The same address twice is refused (exit 2), and so
    /// are several with --udp or --udp-only. Ignored when systemd passes a listening socket
    /// (socket activation, LISTEN_FDS); several are then refused.
    #[arg(long, short = 'l', default_value = "127.0.0.1:7007", value_parser = parse_addr, allow_negative_numbers = true, action = clap::ArgAction::Append, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// An IPv6 --listen address takes no IPv4 connections (IPV6_V6ONLY), and with --udp
    /// or --udp-only no IPv4 datagrams. Default: the kernel's choice, dual-stack on Linux,
    /// for TCP and UDP alike.
    #[arg(long)]
    pub ipv6_only: bool,

    /// bytes: echo every byte back (RFC 862). lines: echo each line when its newline arrives.
    #[arg(long, value_enum, default_value_t = Mode::Bytes)]
    pub mode: Mode,

    /// Lines mode: the longest line accepted, in bytes (or with a unit: 8K), not counting
    /// its newline; at most 65536 (a partial line counts against the 64 KiB a connection
    /// may hold).
    #[arg(long, value_name = "SIZE", default_value_t = DEFAULT_MAX_LINE, value_parser = parse_max_line, allow_negative_numbers = true)]
    pub max_line: usize,

    /// Lines mode: what a line longer than --max-line does. close: closes its connection.
    /// split: goes back in pieces of --max-line bytes as each fills, like CS:APP's
    /// rio_readlineb; `--long-line split --max-line 8191` serves the book's echoclient
    /// (MAXLINE 8192), which sends a long line in 8,191-byte pieces and waits for each echo.
    #[arg(long, value_enum, default_value_t = LongLine::Close, allow_negative_numbers = true)]
    pub long_line: LongLine,

    /// Close a connection after this long without a byte in either direction; 0 never. A
    /// duration: 500ms, 30s, 5m (a bare number is seconds); at least 1ms, at most 3650d
    /// (ten years).
    #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = parse_idle_timeout, allow_negative_numbers = true)]
    pub idle_timeout: Duration,

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

    /// Run the model (reactor or uring) in this many worker processes, each with its own
    /// SO_REUSEPORT listener, under a supervisor that restarts a dead worker and forwards
    /// SIGTERM/SIGINT; --max-conns is split among them. For more connections than one
    /// process's descriptor limit. At most 256. Not with --udp or --udp-only: one UDP
    /// socket serves every client, so UDP needs no more descriptors (--workers spreads it
    /// over SO_REUSEPORT sockets).
    #[arg(long, value_parser = parse_processes, value_name = "N", allow_negative_numbers = true)]
    pub processes: Option<usize>,

    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics: connections,
    /// bytes, refusals, ends and errors, with a `model` label. Port 0 picks a free one (the
    /// address is printed: `metrics on http://ADDR/metrics`). Not with --model process,
    /// which must stay single-threaded to fork (use kill -USR1 there).
    #[arg(long, value_name = "ADDR", value_parser = parse_addr, allow_negative_numbers = true)]
    pub metrics: Option<SocketAddr>,

    /// Log the stats line (the one `kill -USR1` prints) at info level this often (60s,
    /// 5m); 0 never (at most ten years).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = parse_stats_interval, allow_negative_numbers = true)]
    pub stats_interval: Duration,

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

// The values' grammar and messages live in echolab_cli::units, shared with client, bench,
// lab and the UDP flags; here are only each flag's range.

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    units::addr(text)
}

/// 0 (never), or from a millisecond to [`MAX_IDLE_TIMEOUT_SECS`].
fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    units::duration_or_zero(
        text,
        Duration::from_millis(1),
        Duration::from_secs(MAX_IDLE_TIMEOUT_SECS),
    )
}

/// The summary's period: 0 (never) or at least a second (a faster one floods the log),
/// at most ten years.
fn parse_stats_interval(text: &str) -> Result<Duration, String> {
    units::duration_or_zero(
        text,
        Duration::from_secs(1),
        Duration::from_secs(MAX_IDLE_TIMEOUT_SECS),
    )
}

fn parse_max_conns(text: &str) -> Result<usize, String> {
    units::count(text, 1, MAX_CONNS_CEILING as u64).map(|n| n as usize)
}

fn parse_workers(text: &str) -> Result<usize, String> {
    units::count(text, 1, MAX_WORKERS as u64).map(|n| n as usize)
}

fn parse_processes(text: &str) -> Result<usize, String> {
    units::count(text, 1, crate::supervisor::MAX_PROCESSES as u64).map(|n| n as usize)
}

/// From 1 byte to [`MAX_LINE_CEILING`]: a partial line counts against the 64 KiB a
/// connection may hold.
fn parse_max_line(text: &str) -> Result<usize, String> {
    units::size(text, 1, MAX_LINE_CEILING as u64).map(|n| n as usize)
}

/// The flags only the TCP server reads, by clap id; the bool says whether the flag takes a
/// value. Several have defaults, which cannot be told from a value given, so
/// [`tcp_only_flag_given`] asks where each value came from.
const TCP_ONLY: [(&str, &str, bool); 5] = [
    ("max_conns", "--max-conns", true),
    ("max_conns_per_ip", "--max-conns-per-ip", true),
    ("idle_timeout", "--idle-timeout", true),
    ("max_line", "--max-line", true),
    ("long_line", "--long-line", true),
];

/// A flag only the TCP server reads that `matches` (the `serve` arguments) got from the
/// command line, as it was given (`--idle-timeout 5s`), for `serve --udp-only` to refuse:
/// it ignored them without a word. `--mode` counts only as `lines` (UDP echoes bytes).
pub fn tcp_only_flag_given(matches: &clap::ArgMatches) -> Option<String> {
    use clap::parser::ValueSource;
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    if given("mode") && matches.get_one::<Mode>("mode") == Some(&Mode::Lines) {
        return Some("--mode lines".to_string());
    }
    let (id, flag, takes_value) = TCP_ONLY.into_iter().find(|(id, _, _)| given(id))?;
    let value = matches
        .get_raw(id)
        .into_iter()
        .flatten()
        .next()
        .filter(|_| takes_value);
    Some(match value {
        Some(value) => format!("{flag} {}", value.to_string_lossy()),
        None => flag.to_string(),
    })
}

impl ServeArgs {
    /// The first `--listen` address (clap's default when none was given).
    pub fn first_listen(&self) -> SocketAddr {
        self.listen
            .first()
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7007)))
    }

    /// The checked configuration these arguments describe.
    pub fn config(&self) -> ServeConfig {
        let model = self.model.unwrap_or(Model::DEFAULT);
        ServeConfig {
            model,
            listen: self.first_listen(),
            also_listen: self.listen.iter().skip(1).copied().collect(),
            echo: EchoConfig {
                mode: self.mode,
                max_line: self.max_line,
                long_line: self.long_line,
            },
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_conns: self.max_conns.unwrap_or(model.default_max_conns()),
            max_conns_per_ip: self.max_conns_per_ip,
            workers: self.workers,
            stats_interval: (!self.stats_interval.is_zero()).then_some(self.stats_interval),
            metrics: self.metrics,
            ipv6_only: self.ipv6_only,
        }
    }
}

/// Why `--processes n` cannot run with `config`: a worker's share of `--max-conns` would
/// be 0 (it would refuse every connection hashed to it), `--metrics` would be one endpoint
/// per worker, a passed socket (LISTEN_FDS) would be served by nobody.
fn processes_conflict(config: &ServeConfig, n: usize) -> Option<String> {
    if config.max_conns < n {
        return Some(format!(
            "--max-conns {}: fewer than --processes {n} (each worker needs a share of at least 1)",
            config.max_conns
        ));
    }
    if let Some(addr) = config.metrics {
        return Some(format!(
            "--metrics {addr}: not with --processes {n} (each worker would need its own endpoint; kill -USR1 reaches every worker)"
        ));
    }
    if crate::activation::tcp_listener().is_some() {
        return Some(format!(
            "--processes {n}: not with the listening socket passed by the service manager (LISTEN_FDS): each worker binds its own"
        ));
    }
    None
}

/// Why the `--listen` addresses of `config` cannot be served: the same address twice
/// (the second bind would fail with a less helpful "address already in use", or with
/// SO_REUSEPORT share the port with itself), or several beside a listening socket passed
/// by the service manager (`passed`), which replaces --listen.
pub fn listen_conflict(config: &ServeConfig, passed: bool) -> Option<String> {
    let addrs: Vec<SocketAddr> = config.listens().collect();
    for (idx, addr) in addrs.iter().enumerate() {
        if addrs[..idx].contains(addr) {
            return Some(format!(
                "--listen {addr}: given twice (each --listen is one more address)"
            ));
        }
    }
    if passed && addrs.len() > 1 {
        return Some(format!(
            "--listen given {} times: not with the listening socket passed by the service manager (LISTEN_FDS), which replaces --listen",
            addrs.len()
        ));
    }
    // A flag that would do nothing is a mistake to report (as --workers is).
    if config.ipv6_only && !passed && !addrs.iter().any(SocketAddr::is_ipv6) {
        return Some(format!(
            "--ipv6-only: no --listen address is IPv6 ({}): it applies to [::]:PORT or another IPv6 address",
            addrs[0]
        ));
    }
    None
}

/// Runs `echolab serve`: 0 after a clean shutdown, 2 for a bad setting (such as a port in
/// use), 1 for a failure while serving.
pub fn run(args: ServeArgs) -> ExitCode {
    let config = args.config();
    if let Some(workers) = config.workers.filter(|_| !config.model.has_workers()) {
        // A value that would do nothing is a mistake to report, not to ignore (finding 11).
        echolab_cli::say!(
            "echolab serve: --workers {workers}: the {} model has no worker threads (only prethreaded, reactor, uring and async take --workers)",
            config.model
        );
        return ExitCode::from(2);
    }
    if let (Some(addr), Model::Process) = (config.metrics, config.model) {
        echolab_cli::say!(
            "echolab serve: --metrics {addr}: the process model forks only while it has one thread, and the endpoint needs one (use kill -USR1 for its figures)"
        );
        return ExitCode::from(2);
    }
    if let Some(message) = listen_conflict(&config, crate::activation::tcp_passed()) {
        echolab_cli::say!("echolab serve: {message}");
        return ExitCode::from(2);
    }
    if let Some(n) = args.processes {
        if let Some(message) = processes_conflict(&config, n) {
            echolab_cli::say!("echolab serve: {message}");
            return ExitCode::from(2);
        }
    }
    logging::init(args.quiet, args.verbose);
    let model = config.model;
    if let Some(n) = args.processes {
        return crate::supervisor::run(config, n, |addrs| {
            // One write: the workers' log lines must not split the lines scripts read.
            let lines = listening_lines(addrs, &format!("model {model}, {n} processes"));
            let _ = std::io::Write::write_all(&mut std::io::stderr(), lines.as_bytes());
        });
    }
    let result = crate::serve(config, |addrs| {
        // One write, every line: a script waiting for the second never sees half of it.
        let lines = listening_lines(addrs, &format!("model {model}"));
        echolab_cli::announce(lines.trim_end_matches('\n'));
    });
    match result {
        Ok(()) => {
            log::info!("server stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            echolab_cli::say!("echolab serve: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// `listening on ADDR (WHAT)`, one line per address, in `--listen` order: a script that
/// reads the first line gets the first address, as with one --listen.
pub fn listening_lines(addrs: &[SocketAddr], what: &str) -> String {
    addrs
        .iter()
        .map(|addr| format!("listening on {addr} ({what})\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, String> {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        Serve::try_parse_from(argv)
            .map(|s| s.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn processes_need_a_share_of_at_least_one_connection_each() {
        let conflict = |args: &[&str], n| processes_conflict(&serve(args).unwrap().config(), n);
        assert_eq!(conflict(&["--max-conns", "2"], 2), None);
        let refused = conflict(&["--max-conns", "1"], 2).unwrap();
        assert!(refused.starts_with("--max-conns 1: "), "{refused}");
        let refused = conflict(&["--metrics", "127.0.0.1:0"], 2).unwrap();
        assert!(refused.starts_with("--metrics 127.0.0.1:0: "), "{refused}");
    }

    #[test]
    fn the_idle_timeout_is_a_duration_and_0_is_never() {
        let default = serve(&[]).unwrap().config().idle_timeout;
        assert_eq!(
            default,
            Some(Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS))
        );
        let half = serve(&["--idle-timeout", "0.5"]).unwrap().config();
        assert_eq!(half.idle_timeout, Some(Duration::from_millis(500)));
        let never = serve(&["--idle-timeout", "0"]).unwrap().config();
        assert_eq!(never.idle_timeout, None);
        let ceiling = format!("{MAX_IDLE_TIMEOUT_SECS}");
        assert!(serve(&["--idle-timeout", &ceiling]).is_ok());
        assert!(serve(&["--idle-timeout", "3650d"]).is_ok());
        let over = format!("{}", MAX_IDLE_TIMEOUT_SECS + 1);
        assert!(serve(&["--idle-timeout", &over]).is_err());
        assert!(serve(&["--idle-timeout", "999us"]).is_err());
        // --stats-interval likewise: 0 is never.
        let every = serve(&["--stats-interval", "5s"]).unwrap().config();
        assert_eq!(every.stats_interval, Some(Duration::from_secs(5)));
        let never = serve(&["--stats-interval", "0"]).unwrap().config();
        assert_eq!(never.stats_interval, None);
    }

    #[test]
    fn counts_and_sizes_keep_their_ceilings() {
        assert_eq!(serve(&["--max-line", "64K"]).unwrap().max_line, 65_536);
        assert!(serve(&["--max-line", "65537"]).is_err());
        let conns = format!("{MAX_CONNS_CEILING}");
        assert!(serve(&["--max-conns", &conns]).is_ok());
        assert!(serve(&["--max-conns-per-ip", &format!("{}", MAX_CONNS_CEILING + 1)]).is_err());
        assert!(serve(&["--workers", "1024"]).is_ok());
        assert!(serve(&["--workers", "1025"]).is_err());
        assert!(serve(&["--listen", "localhost:0"])
            .unwrap()
            .first_listen()
            .ip()
            .is_loopback());
    }

    #[test]
    fn listen_may_be_given_several_times_and_the_default_is_one_address() {
        let default = serve(&[]).unwrap().config();
        assert_eq!(default.listen, "127.0.0.1:7007".parse().unwrap());
        assert!(default.also_listen.is_empty());
        let args = [
            "-l",
            "127.0.0.1:7",
            "--listen",
            "[::1]:7",
            "-l",
            "localhost:8",
        ];
        let config = serve(&args).unwrap().config();
        let all: Vec<SocketAddr> = config.listens().collect();
        let want: Vec<SocketAddr> = ["127.0.0.1:7", "[::1]:7", "127.0.0.1:8"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(all, want);
        assert_eq!(listen_conflict(&config, false), None);
        let refused = listen_conflict(&config, true).unwrap();
        assert!(refused.starts_with("--listen given 3 times: "), "{refused}");
        // One --listen beside a passed socket: ignored, as before (logged at the start).
        assert_eq!(listen_conflict(&serve(&[]).unwrap().config(), true), None);
        let twice = serve(&["-l", "127.0.0.1:7", "-l", "[::1]:7", "-l", "localhost:7"]);
        let refused = listen_conflict(&twice.unwrap().config(), false).unwrap();
        assert!(
            refused.starts_with("--listen 127.0.0.1:7: given twice"),
            "{refused}"
        );
    }

    #[test]
    fn ipv6_only_without_an_ipv6_address_is_refused() {
        let config = serve(&["-l", "127.0.0.1:7", "--ipv6-only"])
            .unwrap()
            .config();
        let refused = listen_conflict(&config, false).unwrap();
        assert!(
            refused.starts_with("--ipv6-only: no --listen address is IPv6 (127.0.0.1:7)"),
            "{refused}"
        );
        // The default address is IPv4 too.
        assert!(listen_conflict(&serve(&["--ipv6-only"]).unwrap().config(), false).is_some());
        let both = serve(&["-l", "0.0.0.0:7", "-l", "[::]:7", "--ipv6-only"]);
        assert_eq!(listen_conflict(&both.unwrap().config(), false), None);
    }

    #[test]
    fn every_address_gets_its_listening_line_in_order() {
        let addrs: Vec<SocketAddr> =
            vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()];
        assert_eq!(
            listening_lines(&addrs, "model event"),
            "listening on 127.0.0.1:1 (model event)\nlistening on [::1]:2 (model event)\n"
        );
    }

    #[test]
    fn a_tcp_only_flag_counts_as_given_only_from_the_command_line() {
        use clap::CommandFactory;
        let given = |args: &[&str]| {
            let argv = std::iter::once("serve").chain(args.iter().copied());
            tcp_only_flag_given(&Serve::command().get_matches_from(argv))
        };
        assert_eq!(given(&[]), None);
        // The defaults, given: still given (`--udp-only` must refuse what it ignores).
        assert_eq!(
            given(&["--idle-timeout", "300s"]).as_deref(),
            Some("--idle-timeout 300s")
        );
        assert_eq!(
            given(&["--max-line", "8K"]).as_deref(),
            Some("--max-line 8K")
        );
        assert_eq!(
            given(&["--long-line", "close"]).as_deref(),
            Some("--long-line close")
        );
        // --ipv6-only applies to UDP too.
        assert_eq!(given(&["--ipv6-only"]), None);
        assert_eq!(given(&["--workers", "2", "-q"]), None);
        assert_eq!(
            given(&["--max-conns", "5"]).as_deref(),
            Some("--max-conns 5")
        );
        // --mode counts only as lines: bytes is what UDP echoes.
        assert_eq!(given(&["--mode", "lines"]).as_deref(), Some("--mode lines"));
        assert_eq!(given(&["--mode", "bytes"]), None);
    }
}
