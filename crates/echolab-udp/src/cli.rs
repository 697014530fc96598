//! The UDP command lines: the flags `echolab serve` gains (`--udp`, `--udp-only`, the
//! guard's settings), and the whole of `echolab bench --udp` and `echolab client --udp`,
//! which have flags of their own (a loss timeout, a loss threshold) and so are parsed here
//! when `--udp` is among the arguments ([`dispatch`]).
//!
//! A bad value is one line naming it, exit 2 (and with `bench --udp --json`, a JSON
//! document `{"error": ..., "exit_code": 2}` on stdout, as TCP bench prints).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use echolab_cli::units;

use crate::bench::UdpBenchConfig;
use crate::guard::{Policy, DEFAULT_RATE_PER_SOURCE};
use crate::{UdpConfig, UdpModel, UdpServer};

// The UDP flags of `echolab serve`. (A plain comment: a doc comment here would become
// `serve --help`'s description, replacing the TCP flags' one with its exit statuses.)
#[derive(Debug, Clone, clap::Args)]
pub struct UdpServeArgs {
    /// Also serve UDP echo (RFC 862) on the --listen address (same port as TCP). Models:
    /// iterative, event, reactor, uring, async (uring exits 2 where the kernel refuses
    /// io_uring).
    #[arg(long, conflicts_with = "udp_only")]
    pub udp: bool,

    /// Serve UDP echo only (no TCP listener). The TCP settings are refused with it (one
    /// line, exit 2): --mode lines, --max-line, --long-line, --idle-timeout, --max-conns,
    /// --max-conns-per-ip, --processes, --listen given more than once. An IPv6 --listen
    /// address takes IPv4 datagrams too (dual-stack [::] on Linux) unless --ipv6-only.
    #[arg(long)]
    pub udp_only: bool,

    /// UDP replies per second per source address (token bucket, burst one second's worth);
    /// `off` for no limit. Datagrams over the limit are dropped and counted. Default:
    /// 10000, sparing loopback sources (127.0.0.0/8, ::1: the kernel drops them from
    /// off-host, so they cannot be forged from outside, and all local clients share one).
    /// A value given here applies to every source, loopback included.
    #[arg(long, value_parser = parse_rate_limit, value_name = "N|off", allow_negative_numbers = true)]
    pub udp_rate_per_source: Option<RateLimit>,

    /// Answer UDP source ports 1-1023 too (by default they get no reply; ports 0, 7, 13,
    /// 17, 19 and 37 never do).
    #[arg(long)]
    pub udp_allow_privileged_ports: bool,
}

/// `--udp-rate-per-source`: replies per second, or `None` for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit(pub Option<u32>);

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("off"),
        }
    }
}

/// A rate limit: a whole number from 1 to 1e9, or `off`.
pub fn parse_rate_limit(text: &str) -> Result<RateLimit, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(RateLimit(None));
    }
    match text.parse::<u64>() {
        Ok(0) => Err("0 would answer nobody; use `off` for no limit".to_string()),
        Ok(n) if n <= 1_000_000_000 => Ok(RateLimit(Some(n as u32))),
        Ok(_) => Err(format!("at most 1000000000 replies/s, got {text}")),
        Err(_) => Err(format!(
            "not a whole number of replies per second or `off`: {text:?}"
        )),
    }
}

impl UdpServeArgs {
    /// Whether UDP is served at all.
    pub fn enabled(&self) -> bool {
        self.udp || self.udp_only
    }

    /// The guard's policy these flags describe.
    pub fn policy(&self) -> Policy {
        match self.udp_rate_per_source {
            None => Policy {
                allow_privileged: self.udp_allow_privileged_ports,
                ..Policy::default()
            },
            Some(limit) => Policy::with_limit(self.udp_allow_privileged_ports, limit.0),
        }
    }

    /// The rate limit as the serve banner says it.
    pub fn rate_limit_text(&self) -> String {
        match self.udp_rate_per_source {
            None => format!("{DEFAULT_RATE_PER_SOURCE} (loopback sources spared)"),
            Some(limit) => limit.to_string(),
        }
    }
}

/// A flag that SIGINT or SIGTERM sets; a second signal while it is set exits at once
/// (status 1), the way out of a stop that hangs.
fn stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    // One signal delivered twice (by `timeout`) is not a second one.
    echolab_sys::second_signal::exit_on_second_signal(&[SIGINT, SIGTERM], 1, &stop)?;
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// What `--udp-only` tells a service manager (`sd_notify`'s `READY=1` and `STOPPING=1`,
/// which live in echolab-server's `activation`).
#[derive(Debug, Clone, Copy)]
pub struct Notify {
    pub ready: fn(),
    pub stopping: fn(),
}

/// Runs the UDP side of `echolab serve`: binds UDP on `listen` with the UDP form of
/// `model_name`, prints `udp listening on ADDR (model M, N loops)`, then either waits for
/// SIGINT/SIGTERM (`--udp-only`) or calls `tcp` with the address to serve TCP on (the
/// port UDP got, when `listen` had port 0) and stops UDP when it returns.
///
/// With `--udp-only`, `notify` tells the service manager: `ready` once listening,
/// `stopping` once every loop has stopped (beside TCP, the TCP server says both).
///
/// Logging must be initialised by the caller. Exit status: `tcp`'s, or 2 for a model
/// without UDP, a bind error or `--udp-only --ipv6-only` without an IPv6 address, 1 for a
/// failure while serving.
pub fn run_serve(
    args: &UdpServeArgs,
    model_name: &str,
    listen: SocketAddr,
    workers: Option<usize>,
    ipv6_only: bool,
    tcp: impl FnOnce(SocketAddr) -> ExitCode,
    notify: Notify,
) -> ExitCode {
    let model = match UdpModel::for_model(model_name) {
        Ok(model) => model,
        Err(reason) => {
            echolab_cli::say!("echolab serve: {reason}");
            return ExitCode::from(2);
        }
    };
    // Beside TCP the TCP server says it; alone, a flag that would do nothing is refused.
    if args.udp_only && ipv6_only && !listen.is_ipv6() && !crate::passed_pending() {
        echolab_cli::say!("echolab serve: --ipv6-only: the --listen address is not IPv6 ({listen}): it applies to [::]:PORT or another IPv6 address");
        return ExitCode::from(2);
    }
    let stop = match stop_flag() {
        Ok(stop) => stop,
        Err(err) => {
            echolab_cli::say!("echolab serve: cannot install signal handlers: {err}");
            return ExitCode::from(1);
        }
    };
    let config = UdpConfig {
        model,
        listen,
        workers,
        policy: args.policy(),
        ipv6_only,
    };
    let server = match start_beside_tcp(&config, stop, !args.udp_only) {
        Ok(server) => server,
        Err(err) => {
            echolab_cli::say!("echolab serve: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    let addr = server.local_addr();
    echolab_cli::say!(
        "udp listening on {addr} (model {model}, {} loop{}, rate per source {}, privileged ports {})",
        server.n_loops(),
        if server.n_loops() == 1 { "" } else { "s" },
        args.rate_limit_text(),
        if args.udp_allow_privileged_ports { "answered" } else { "refused" }
    );
    let (code, result) = if args.udp_only {
        (notify.ready)();
        let result = server.wait();
        (notify.stopping)();
        (ExitCode::SUCCESS, result)
    } else {
        let code = tcp(addr);
        (code, server.join())
    };
    match result {
        Ok(stats) => {
            log::info!("{}", stats.summary());
            code
        }
        Err(err) => {
            echolab_cli::say!("echolab serve: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Attempts at a port free for both UDP and TCP when `--listen` has port 0.
const PORT_ATTEMPTS: usize = 32;

/// Starts the UDP server. Beside TCP with port 0, the port UDP gets must also be free for
/// a TCP listener (a busy machine has many TCP sockets on ephemeral ports): a port is
/// picked with a plain UDP socket, tried with a TCP listener bound as the TCP server binds
/// it (SO_REUSEADDR, listen), and another is picked if that fails, at most
/// [`PORT_ATTEMPTS`] times. Both probes close before the servers bind, so another program
/// could still take the port in between; the bind then fails with its one-line error.
///
/// (The probing is done before the server starts, not by starting and dropping servers:
/// dropping a server sets the stop flag, which is the one the signal handlers watch.)
fn start_beside_tcp(
    config: &UdpConfig,
    stop: Arc<AtomicBool>,
    beside_tcp: bool,
) -> Result<UdpServer, crate::UdpError> {
    let mut config = config.clone();
    if beside_tcp && config.listen.port() == 0 {
        config.listen = pick_port(config.listen, config.ipv6_only);
    }
    UdpServer::start(&config, stop)
}

/// A port free for both UDP and TCP on `listen`'s address (bound as the servers bind it:
/// IPv6-only when `ipv6_only`), or `listen` itself (port 0) when none was found.
fn pick_port(listen: SocketAddr, ipv6_only: bool) -> SocketAddr {
    for _ in 0..PORT_ATTEMPTS {
        let Ok(probe) = crate::bind_first(listen, false, ipv6_only) else {
            return listen;
        };
        let Ok(addr) = probe.local_addr() else {
            return listen;
        };
        if tcp_port_free(addr, ipv6_only) {
            return addr;
        }
    }
    listen
}

/// Whether a TCP listener could bind and listen on `addr` now (IPv6-only when
/// `ipv6_only`, as the TCP server binds it).
fn tcp_port_free(addr: SocketAddr, ipv6_only: bool) -> bool {
    use socket2::{Domain, Socket, Type};
    let Ok(socket) = Socket::new(Domain::for_address(addr), Type::STREAM, None) else {
        return false;
    };
    if addr.is_ipv6() && ipv6_only && socket.set_only_v6(true).is_err() {
        return false;
    }
    socket.set_reuse_address(true).is_ok()
        && socket.bind(&addr.into()).is_ok()
        && socket.listen(16).is_ok()
}

// The flags of `echolab bench --udp` that TCP bench has not: parsed by `UdpBenchArgs`
// (which `dispatch` runs when `--udp` is given), and flattened into `echolab bench`'s own
// definition too, so that its `--help`, shell completions and man page list them (there,
// without `--udp`, clap refuses them: exit 2). (A plain comment, as on `UdpServeArgs`: a
// doc comment would replace `bench --help`'s description and its exit statuses.)
#[derive(Debug, Clone, clap::Args)]
pub struct UdpBenchFlags {
    /// Load over UDP (RFC 862 echo) instead of TCP; `bench --udp --help` lists its flags:
    /// --count and --max-loss are its own; it shares --conns (sockets, default 8), --size,
    /// --duration, --rate, --threads, --timeout (default 1s), --interval and --json, and
    /// takes no other.
    #[arg(long)]
    pub udp: bool,

    /// With --udp: stop each socket after this many datagrams (the run ends earlier if
    /// --duration does).
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_count, allow_negative_numbers = true, requires = "udp")]
    pub count: Option<u64>,

    /// With --udp: loss, in percent, above which the exit status is 1.
    #[arg(long, default_value_t = 0.0, value_name = "PERCENT", value_parser = parse_percent, allow_negative_numbers = true, requires = "udp")]
    pub max_loss: f64,
}

// The flags of `echolab client --udp` that TCP client has not, as `UdpBenchFlags`.
#[derive(Debug, Clone, clap::Args)]
pub struct UdpClientFlags {
    /// Send and receive over UDP (RFC 862 echo) instead of TCP: a datagram per line of
    /// stdin, or --send FILE in datagrams of --size; `client --udp --help` says more.
    #[arg(long)]
    pub udp: bool,

    /// With --udp and --send: bytes per datagram (1 to 65507 over IPv4, 65527 over IPv6;
    /// or with a unit: 1K = 1024).
    #[arg(long, short = 's', default_value_t = 1024, value_name = "SIZE", value_parser = parse_client_size, allow_negative_numbers = true, requires = "udp", requires = "send")]
    pub size: usize,
}

/// Load an echo server over UDP and measure it: echoes/s, latency, loss, late,
/// duplicates, reordering, corrupt and RFC 3550 jitter.
///
/// Every datagram carries the socket's id, a sequence number and a pattern unique to it.
/// Closed loop by default (one datagram outstanding per socket); --rate makes it an open
/// loop measured from the intended send times.
///
/// With --rate, every datagram whose intended send time falls in the --duration window is
/// accounted: echoed, lost, or never sent (a generator that fell behind, or a send the
/// kernel refused: refused_sends).
///
/// Exit status: 0 clean run; 1 loss above --max-loss, datagrams due but never sent, socket
/// errors, or nothing echoed; 2 bad argument; 3 a corrupt echo; 130 interrupted (Ctrl-C
/// waits at most 1 s, or --timeout if shorter, for the echoes awaited: the rest are lost,
/// given_up); 141 stdout closed by its reader (`| head`).
#[derive(Debug, Parser)]
#[command(name = "echolab bench --udp", disable_version_flag = true)]
#[command(mut_arg("udp", |a| a.help("Use UDP (this command line).")))]
pub struct UdpBenchArgs {
    /// --udp and the flags TCP bench has not.
    #[command(flatten)]
    pub only: UdpBenchFlags,

    /// The server: IP:PORT or HOST:PORT.
    #[arg(value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Sockets, each one flow with its own id.
    #[arg(long, short = 'c', default_value_t = 8, value_name = "N", value_parser = parse_conns, allow_negative_numbers = true)]
    pub conns: usize,

    /// Datagram size in bytes (or with a unit: 1K = 1024), 12-byte header included (12 to
    /// 65507 over IPv4, 65527 over IPv6).
    #[arg(long, short = 's', default_value_t = 64, value_name = "SIZE", value_parser = parse_size, allow_negative_numbers = true)]
    pub size: usize,

    /// Time of sending: 500ms, 5s, 1m (a bare number is seconds).
    #[arg(long, short = 'd', default_value = "5s", value_name = "DURATION", value_parser = parse_secs, allow_negative_numbers = true)]
    pub duration: Duration,

    /// Open loop: datagrams per second in total, spread over the sockets.
    #[arg(long, short = 'r', value_name = "PER_SEC", value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: Option<f64>,

    /// How long after its intended send time an echo counts lost (a later one counts
    /// late), as TCP bench's --timeout: fractional (0.2) or with a unit (200ms, 2s). A bare
    /// number is always seconds: 200 means 200 s, not 200 ms. 1ms to 1h.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Duration,

    /// Threads. Default: one per CPU, at most one per socket.
    #[arg(long, short = 't', value_name = "N", value_parser = parse_threads, allow_negative_numbers = true)]
    pub threads: Option<usize>,

    /// Print one JSON document on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// Time between progress lines on stderr (echoes/s since the previous line, sent,
    /// lost and errors so far), as TCP bench's: 500ms, 2s (a bare number is seconds); 0
    /// for none, else at least 100ms.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_interval, allow_negative_numbers = true)]
    pub interval: Duration,
}

impl UdpBenchArgs {
    /// The checked configuration, or one line naming the conflict.
    pub fn config(&self) -> Result<UdpBenchConfig, String> {
        let max = crate::max_payload(&self.addr);
        if self.size > max {
            return Err(format!(
                "--size {} is more than one UDP datagram carries to {} ({max} bytes)",
                self.size, self.addr
            ));
        }
        // As TCP bench: a rate that schedules nothing in the window is refused, in TCP
        // bench's words.
        if let Some(rate) = self.rate {
            let window = self.duration.as_secs_f64();
            if rate * window < 1.0 {
                return Err(format!(
                    "--rate {rate:?} sends no message in a {window} s window: at least {} per second",
                    1.0 / window
                ));
            }
        }
        Ok(UdpBenchConfig {
            addr: self.addr,
            n_conns: self.conns,
            size: self.size,
            duration: self.duration,
            count: self.only.count,
            rate: self.rate,
            timeout: self.timeout,
            n_threads: self
                .threads
                .unwrap_or_else(crate::default_workers)
                .min(self.conns),
        })
    }
}

/// Send stdin (a datagram per line) or a file (in datagrams of --size) to a UDP echo
/// server and print or verify the echoes.
///
/// Exit status: 0 every datagram came back unchanged; 1 no echo within --timeout (or a
/// socket error); 2 bad argument; 3 an echo that differs; 141 stdout closed by its reader
/// (`| head`: the session ends).
#[derive(Debug, Parser)]
#[command(name = "echolab client --udp", disable_version_flag = true)]
#[command(mut_arg("udp", |a| a.help("Use UDP (this command line).")))]
pub struct UdpClientArgs {
    /// --udp and the flag TCP client has not.
    #[command(flatten)]
    pub only: UdpClientFlags,

    /// The server: IP:PORT or HOST:PORT.
    #[arg(default_value = "127.0.0.1:7007", value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Send this file in datagrams of --size bytes, check every echo, print only the verdict.
    /// A regular file (as TCP client: not a pipe or a device), read a datagram at a time:
    /// any size in bounded memory.
    #[arg(long, value_name = "FILE")]
    pub send: Option<PathBuf>,

    /// How long to wait for each echo, as TCP client's --timeout: fractional (0.2) or with
    /// a unit (200ms, 2s). A bare number is always seconds: 200 means 200 s, not 200 ms.
    /// 1ms to 1d.
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = units::timeout, allow_negative_numbers = true)]
    pub timeout: Duration,
}

/// Runs `bench --udp` or `client --udp` when `args` (the whole command line, program
/// name first) is one of them; `None` otherwise, for the caller's own parser.
pub fn dispatch(args: &[OsString]) -> Option<ExitCode> {
    let command = args.get(1)?.to_str()?;
    if command != "bench" && command != "client" {
        return None;
    }
    // Flags only: a `--udp` after `--` would be a positional value.
    let flags = args[2..].iter().take_while(|a| a.as_os_str() != "--");
    if !flags.into_iter().any(|a| a.as_os_str() == "--udp") {
        return None;
    }
    let rest = args[2..].iter().cloned();
    let argv = std::iter::once(OsString::from(format!("echolab {command} --udp"))).chain(rest);
    // Flags only, as above: `--json` promises a JSON document even for a bad argument, and
    // so does TCP bench's `--json-stream`, which `bench --udp` refuses (it has no stream).
    let json = command == "bench"
        && args[2..]
            .iter()
            .take_while(|a| a.as_os_str() != "--")
            .any(|a| a.as_os_str() == "--json" || a.as_os_str() == "--json-stream");
    Some(if command == "bench" {
        match UdpBenchArgs::try_parse_from(argv) {
            Ok(args) => run_bench(&args),
            Err(err) => clap_exit(err, json),
        }
    } else {
        match UdpClientArgs::try_parse_from(argv) {
            Ok(args) => run_client(&args),
            Err(err) => clap_exit(err, false),
        }
    })
}

/// The JSON document of a run that could not take place, as TCP bench prints it:
/// `{"error": message, "exit_code": code}` and the provenance.
pub fn error_json(message: &str, code: u8) -> String {
    let mut doc = serde_json::json!({ "error": message, "exit_code": code });
    echolab_cli::provenance::stamp(&mut doc);
    serde_json::to_string_pretty(&doc).expect("JSON of plain values")
}

/// Says `message` on stderr (one line, after `echolab bench: `) and, with `json`, as
/// [`error_json`] on stdout; returns `code`.
fn bench_fail(json: bool, message: &str, code: u8) -> ExitCode {
    echolab_cli::say!("echolab bench: {message}");
    if json {
        echolab_cli::print_out(&error_json(message, code));
    }
    ExitCode::from(code)
}

/// A clap error as `echolab` reports them: help on stdout (exit 0), anything else as one
/// line on stderr (exit 2), and with `json` as [`error_json`] on stdout too.
fn clap_exit(err: clap::Error, json: bool) -> ExitCode {
    if !err.use_stderr() {
        return echolab_cli::help_printed(err.print());
    }
    let line = err
        .render()
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let message = line.trim_start_matches("error: ");
    echolab_cli::say!("echolab: {message}");
    if json {
        echolab_cli::print_out(&error_json(message, 2));
    }
    ExitCode::from(2)
}

/// Runs `echolab bench --udp`.
pub fn run_bench(args: &UdpBenchArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(line) => return bench_fail(args.json, &line, 2),
    };
    let stop = match stop_flag() {
        Ok(stop) => stop,
        Err(err) => {
            let message = format!("cannot install signal handlers: {err}");
            return bench_fail(args.json, &message, 1);
        }
    };
    let lines = |now: &crate::bench::Progress, before: &crate::bench::Progress| {
        echolab_cli::say!("{}", now.line(before));
    };
    let report = match crate::bench::run_with_progress(&config, &stop, args.interval, lines) {
        Ok(report) => report,
        Err(err) => {
            let why = echolab_cli::describe_io(&err);
            let message = format!("udp {}: {why}", config.addr);
            return bench_fail(args.json, &message, 1);
        }
    };
    let (code, verdict) = report.verdict(args.only.max_loss);
    if args.json {
        let mut doc = report.json();
        doc["max_loss_percent"] = args.only.max_loss.into();
        doc["verdict"] = verdict.into();
        doc["exit_code"] = code.into();
        echolab_cli::provenance::stamp(&mut doc);
        echolab_cli::print_out(&doc.to_string());
    } else {
        echolab_cli::print_out(&format!("{}  verdict     {verdict}", report.text()));
    }
    ExitCode::from(code)
}

/// Runs `echolab client --udp`.
pub fn run_client(args: &UdpClientArgs) -> ExitCode {
    let max = crate::max_payload(&args.addr);
    if args.only.size > max {
        echolab_cli::say!(
            "echolab client: --size {} is more than one UDP datagram carries to {} ({max} bytes)",
            args.only.size,
            args.addr
        );
        return ExitCode::from(2);
    }
    let result = match &args.send {
        Some(path) => {
            let cannot_read = |err: &std::io::Error| {
                let why = echolab_cli::describe_io(err);
                echolab_cli::say!("echolab client: cannot read {}: {why}", path.display());
                ExitCode::from(2)
            };
            // A regular file, as TCP client's, streamed a datagram at a time: any size in
            // bounded memory.
            let file = match echolab_cli::open_send_file(path) {
                Ok((file, _)) => file,
                Err(why) => {
                    echolab_cli::say!("echolab client: {why}");
                    return ExitCode::from(2);
                }
            };
            match crate::client::send_all(args.addr, file, args.only.size, args.timeout) {
                Ok(session) => {
                    echolab_cli::say!(
                        "echolab client: {} bytes in {} datagrams of up to {} bytes, every echo matched{}",
                        session.bytes,
                        session.datagrams,
                        args.only.size,
                        match session.duplicates {
                            0 => String::new(),
                            n => format!(" ({})", duplicates_ignored(n)),
                        }
                    );
                    Ok(())
                }
                Err(crate::client::ClientError::Read(err)) => return cannot_read(&err),
                Err(err) => Err(err),
            }
        }
        None => crate::client::interactive(
            args.addr,
            args.timeout,
            std::io::stdin().lock(),
            echolab_cli::stdout(),
        )
        .map(|session| {
            if session.duplicates > 0 {
                echolab_cli::say!("echolab client: {}", duplicates_ignored(session.duplicates));
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `client --udp | head -1`: nobody reads the echoes on (exit 141 from `main`).
        Err(_) if echolab_cli::stdout_closed() => ExitCode::SUCCESS,
        Err(err) => {
            echolab_cli::say!("echolab client: udp {}: {err}", args.addr);
            ExitCode::from(err.exit_code())
        }
    }
}

/// `N duplicates ignored: UDP delivered an echo twice`.
fn duplicates_ignored(n: u64) -> String {
    format!(
        "{} ignored: UDP delivered an echo twice",
        echolab_cli::counted(n, "duplicate")
    )
}

// Durations, sizes, counts and addresses are parsed by echolab_cli::units, as every
// command parses them; here are only each flag's range.

/// The server's address with a port, or HOST:PORT resolved; not port 0.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    units::destination(text)
}

fn parse_conns(text: &str) -> Result<usize, String> {
    units::count(text, 1, 4096).map(|n| n as usize)
}

fn parse_threads(text: &str) -> Result<usize, String> {
    units::count(text, 1, 256).map(|n| n as usize)
}

fn parse_count(text: &str) -> Result<u64, String> {
    units::count(text, 1, 1_000_000_000_000)
}

/// A bench datagram: its 12-byte header to the largest IPv6 payload.
fn parse_size(text: &str) -> Result<usize, String> {
    units::size(
        text,
        crate::wire::HEADER as u64,
        crate::MAX_PAYLOAD_V6 as u64,
    )
    .map(|n| n as usize)
}

fn parse_client_size(text: &str) -> Result<usize, String> {
    units::size(text, 1, crate::MAX_PAYLOAD_V6 as u64).map(|n| n as usize)
}

fn parse_float(text: &str, what: &str, min_exclusive: f64, max: f64) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number of {what}: {text:?}"))?;
    if !value.is_finite() || value <= min_exclusive || value > max {
        return Err(format!(
            "{what} must be more than {min_exclusive} and at most {max}, got {text}"
        ));
    }
    Ok(value)
}

/// Seconds of sending: at least a millisecond (a shorter run measures nothing), at most
/// a day.
fn parse_secs(text: &str) -> Result<Duration, String> {
    units::duration(text, Duration::from_millis(1), Duration::from_secs(86_400))
}

/// Bench's loss timeout: at least a millisecond, at most an hour. (Client's is
/// [`units::timeout`], TCP client's range.)
fn parse_timeout(text: &str) -> Result<Duration, String> {
    units::duration(text, Duration::from_millis(1), Duration::from_secs(3_600))
}

/// More than 0 and at most 1e9, as TCP bench's --rate; whether the window holds a
/// datagram at that rate is checked with --duration ([`UdpBenchArgs::config`]).
/// The progress interval: 0 (none) or from 0.1 s to a day, as TCP bench's (a duration
/// with a unit: 500ms, 2s; a bare number is seconds).
fn parse_interval(text: &str) -> Result<Duration, String> {
    units::duration_or_zero(
        text,
        Duration::from_millis(100),
        Duration::from_secs(86_400),
    )
}

fn parse_rate(text: &str) -> Result<f64, String> {
    parse_float(text, "datagrams per second", 0.0, 1e9)
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("not a percentage: {text:?}"))?;
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(format!("a percentage is between 0 and 100, got {text}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(args: &[&str]) -> Result<UdpBenchArgs, String> {
        let argv = ["echolab bench --udp", "--udp", "127.0.0.1:9"]
            .iter()
            .chain(args)
            .map(|s| s.to_string());
        UdpBenchArgs::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn absurd_values_are_refused_with_the_value_named() {
        for (flag, value) in [
            ("--conns", "0"),
            ("--conns", "18446744073709551615"),
            ("--size", "0"),
            ("--size", "11"),
            ("--size", "65528"),
            ("--duration", "0"),
            ("--duration", "1e-10"),
            ("--duration", "NaN"),
            ("--rate", "0"),
            ("--rate", "NaN"),
            ("--rate", "inf"),
            ("--rate", "-5"),
            ("--timeout", "0"),
            ("--timeout", "NaN"),
            ("--timeout", "1e-10"),
            ("--max-loss", "NaN"),
            ("--max-loss", "101"),
            ("--max-loss", "-1"),
            ("--count", "0"),
            ("--count", "18446744073709551615"),
            ("--threads", "0"),
            ("--interval", "0.01"),
            ("--interval", "-1"),
            ("--interval", "NaN"),
            ("--interval", "1e300"),
        ] {
            let err = bench(&[flag, value]).unwrap_err();
            assert!(err.contains(value), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn a_rate_is_checked_against_the_window_as_tcp_bench_checks_it() {
        let config = |rate: &str, secs: &str| {
            bench(&["--rate", rate, "--duration", secs])
                .unwrap()
                .config()
        };
        let err = config("1e-10", "5").unwrap_err();
        assert!(err.starts_with("--rate 1e-10 sends no message"), "{err}");
        let err = config("0.5", "1").unwrap_err();
        assert_eq!(
            err,
            "--rate 0.5 sends no message in a 1 s window: at least 1 per second"
        );
        assert_eq!(config("0.5", "2").unwrap().rate, Some(0.5));
        assert_eq!(config("1e-4", "10000").unwrap().rate, Some(1e-4));
    }

    #[test]
    fn the_ipv4_size_limit_is_checked_against_the_address() {
        let args = bench(&["--size", "65508"]).unwrap();
        assert!(args.config().unwrap_err().contains("65507"));
        let args = bench(&["--size", "65507"]).unwrap();
        assert_eq!(args.config().unwrap().size, 65_507);
        // An IPv4-mapped address is an IPv4 path: 65,527 bytes would fail every send.
        let mapped = UdpBenchArgs::try_parse_from([
            "echolab bench --udp",
            "--udp",
            "[::ffff:127.0.0.1]:9",
            "--size",
            "65508",
        ])
        .unwrap();
        assert!(mapped.config().unwrap_err().contains("(65507 bytes)"));
    }

    #[test]
    fn rate_limits_parse_and_zero_is_refused() {
        assert_eq!(parse_rate_limit("off"), Ok(RateLimit(None)));
        assert_eq!(parse_rate_limit("OFF"), Ok(RateLimit(None)));
        assert_eq!(parse_rate_limit("10"), Ok(RateLimit(Some(10))));
        assert_eq!(
            parse_rate_limit("1000000000"),
            Ok(RateLimit(Some(1_000_000_000)))
        );
        for bad in [
            "0",
            "1000000001",
            "18446744073709551615",
            "NaN",
            "1e-10",
            "-1",
        ] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug, Parser)]
    struct ServeOnly {
        #[command(flatten)]
        udp: UdpServeArgs,
    }

    fn serve_policy(args: &[&str]) -> Policy {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        ServeOnly::try_parse_from(argv).unwrap().udp.policy()
    }

    #[test]
    fn the_default_limit_spares_loopback_and_an_explicit_one_applies_to_all() {
        assert_eq!(serve_policy(&["--udp"]), Policy::default());
        assert!(!serve_policy(&["--udp"]).limit_loopback);
        let explicit = serve_policy(&["--udp", "--udp-rate-per-source", "10000"]);
        assert_eq!(explicit.rate_per_source, Some(DEFAULT_RATE_PER_SOURCE));
        assert!(explicit.limit_loopback);
        let off = serve_policy(&["--udp", "--udp-rate-per-source", "off"]);
        assert_eq!(off.rate_per_source, None);
        assert!(serve_policy(&["--udp", "--udp-allow-privileged-ports"]).allow_privileged);
    }

    #[test]
    fn dispatch_only_takes_udp_bench_and_client() {
        let argv = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(dispatch(&argv(&["echolab", "bench", "127.0.0.1:9"])).is_none());
        assert!(dispatch(&argv(&["echolab", "serve", "--udp"])).is_none());
        assert!(dispatch(&argv(&["echolab", "client", "--", "--udp"])).is_none());
        assert!(dispatch(&argv(&["echolab"])).is_none());
        // A bad value under --udp is handled here (exit 2), not by the TCP parser.
        assert_eq!(
            dispatch(&argv(&[
                "echolab",
                "bench",
                "--udp",
                "127.0.0.1:9",
                "--conns",
                "0"
            ])),
            Some(ExitCode::from(2))
        );
    }

    #[test]
    fn a_port_held_by_tcp_is_not_free_and_a_fresh_one_is() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!tcp_port_free(held.local_addr().unwrap(), false));
        let addr = held.local_addr().unwrap();
        drop(held);
        assert!(tcp_port_free(addr, false));
    }

    #[test]
    fn beside_tcp_the_udp_port_is_one_tcp_can_bind() {
        let config = UdpConfig {
            model: UdpModel::Iterative,
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: None,
            policy: Policy::default(),
            ipv6_only: false,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let server = start_beside_tcp(&config, Arc::clone(&stop), true).unwrap();
        assert!(tcp_port_free(server.local_addr(), false));
        assert!(!stop.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn picking_a_port_skips_those_tcp_holds() {
        // Hold TCP on many ports; the pick must avoid them all.
        let held: Vec<std::net::TcpListener> = (0..64)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let picked = pick_port("127.0.0.1:0".parse().unwrap(), false);
        assert_ne!(picked.port(), 0);
        assert!(held
            .iter()
            .all(|l| l.local_addr().unwrap().port() != picked.port()));
        assert!(tcp_port_free(picked, false));
    }

    #[test]
    fn timeouts_are_seconds_as_in_tcp_bench_or_carry_their_unit() {
        let secs = |t: &str| bench(&["--timeout", t]).map(|a| a.timeout);
        assert_eq!(
            secs("5"),
            Ok(Duration::from_secs(5)),
            "a bare number is seconds"
        );
        assert_eq!(secs("0.2"), Ok(Duration::from_millis(200)));
        assert_eq!(secs("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(secs("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(secs("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(secs("200"), Ok(Duration::from_secs(200)), "still seconds");
        assert_eq!(bench(&[]).unwrap().timeout, Duration::from_secs(1));
        for bad in [
            "0.0009",
            "0.5ms",
            "3601",
            "2h",
            "5 furlongs",
            "ms",
            "-1",
            "inf",
        ] {
            let err = secs(bad).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let client = |t: &str| {
            UdpClientArgs::try_parse_from(["c", "--udp", "--timeout", t]).map(|a| a.timeout)
        };
        assert_eq!(client("5").unwrap(), Duration::from_secs(5));
        assert_eq!(client("250ms").unwrap(), Duration::from_millis(250));
        // TCP client's range: a millisecond to a day.
        assert_eq!(client("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(client("1ms").unwrap(), Duration::from_millis(1));
        for bad in ["0.5ms", "86401", "2d"] {
            let err = client(bad).unwrap_err().to_string();
            assert!(
                err.contains(bad) && err.contains("--timeout"),
                "{bad}: {err}"
            );
        }
        assert_eq!(secs("5 min"), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn client_size_without_send_is_refused_not_ignored() {
        // Interactive mode sends a datagram per line: --size would do nothing.
        let parse = |args: &[&str]| {
            UdpClientArgs::try_parse_from(std::iter::once("c").chain(args.iter().copied()))
        };
        let err = parse(&["--udp", "--size", "100"]).unwrap_err().to_string();
        assert!(err.contains("--send"), "{err}");
        let args = parse(&["--udp", "--size", "100", "--send", "f"]).unwrap();
        assert_eq!(args.only.size, 100);
        assert_eq!(
            parse(&["--udp"]).unwrap().only.size,
            1024,
            "the default is no flag"
        );
    }

    #[test]
    fn the_error_document_is_the_one_tcp_bench_prints() {
        let mut doc: serde_json::Value =
            serde_json::from_str(&error_json("--size 5 is too small", 2)).unwrap();
        let mut want = serde_json::json!({ "error": "--size 5 is too small", "exit_code": 2 });
        echolab_cli::provenance::stamp(&mut want);
        // The same fields, provenance included; its command line is this test's.
        doc["command_line"] = want["command_line"].clone();
        assert_eq!(doc, want);
    }
}
