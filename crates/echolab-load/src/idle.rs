//! `echolab bench --hold N`: many idle connections held open, each proven accepted by one
//! echo, while `--active K` further connections run the ping-pong bench beside them.
//!
//! The connections are opened non-blocking from one mio loop, at most [`IN_FLIGHT`] at a
//! time (so the server's listen backlog is not flooded) and, with `--connect-rate`, at
//! that pace. `--source-ip` spreads them over local addresses: one address has a port
//! range's worth of ephemeral ports towards one server, N addresses N times that
//! (`IP_BIND_ADDRESS_NO_PORT`: the port is picked at connect time, per 4-tuple).
//!
//! What is reported: established (connected and echoed), failed by kind, the time to
//! establish them all and the connect rate, how many were still open after the active
//! window, and the active connections' figures (bench's own report).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};

/// Connections being set up (connected, echo owed) at once.
pub const IN_FLIGHT: usize = 1_024;

/// Descriptors kept aside for the active bench, the poll, stdio and the log.
pub const SPARE_FDS: u64 = 64;

/// The most source addresses `--source-ip` takes.
pub const MAX_SOURCES: usize = 65_536;

/// The local addresses to spread connections over, from `--source-ip`: a range
/// `A-B` (IPv4), a comma-separated list, or both (`127.0.0.2-127.0.0.9,127.0.1.1`).
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((from, to)) = part.split_once('-') {
            let parse = |s: &str| {
                s.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("not an IPv4 address: {s:?} in {part:?}"))
            };
            let (from, to) = (u32::from(parse(from)?), u32::from(parse(to)?));
            if from > to {
                return Err(format!(
                    "an empty range: {part:?} (the first address is after the last)"
                ));
            }
            if (to - from) as usize >= MAX_SOURCES
                || out.len() + (to - from) as usize >= MAX_SOURCES
            {
                return Err(format!(
                    "at most {MAX_SOURCES} source addresses, got {part:?}"
                ));
            }
            out.extend((from..=to).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            let ip: IpAddr = part
                .parse()
                .map_err(|_| format!("not an IP address: {part:?}"))?;
            out.push(ip);
        }
        if out.len() > MAX_SOURCES {
            return Err(format!("at most {MAX_SOURCES} source addresses"));
        }
    }
    if out.is_empty() {
        return Err(format!("no address in {text:?}"));
    }
    Ok(out)
}

/// The ephemeral ports one source address has towards one server
/// (`net.ipv4.ip_local_port_range`; 28,232 by default).
pub fn local_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|n| n.parse::<u64>().ok());
            let (lo, hi) = (it.next()??, it.next()??);
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28_232)
}

/// Checks a hold plan: sources of the target's kind (loopback sources for a loopback
/// target, and only then), and enough (address, port) pairs for `conns` connections.
pub fn check_plan(
    target: SocketAddr,
    sources: &[IpAddr],
    conns: u64,
    ports: u64,
) -> Result<(), String> {
    for ip in sources {
        if ip.is_ipv4() != target.is_ipv4() {
            return Err(format!(
                "--source-ip {ip} is not of the target {}'s family",
                target.ip()
            ));
        }
        if target.ip().is_loopback() && !ip.is_loopback() {
            return Err(format!(
                "--source-ip {ip} is outside loopback (127.0.0.0/8) for the loopback target {target}"
            ));
        }
        if !target.ip().is_loopback() && ip.is_loopback() {
            return Err(format!(
                "--source-ip {ip} is loopback: it cannot reach {target}"
            ));
        }
    }
    let addrs = sources.len().max(1) as u64;
    let room = addrs.saturating_mul(ports);
    if conns > room {
        return Err(format!(
            "{conns} connections need more than {addrs} source address(es) x {ports} ports = {room}: give more addresses with --source-ip"
        ));
    }
    Ok(())
}

/// The listen-queue counters of `/proc/net/netstat` (`TcpExt: ListenOverflows
/// ListenDrops`): SYNs or completed handshakes dropped because a listener's queue was
/// full. They count for the whole network namespace, every listener in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenCounters {
    pub overflows: u64,
    pub drops: u64,
}

impl ListenCounters {
    /// The counters in `/proc/net/netstat`'s text: a `TcpExt:` line of names followed by
    /// one of values. `None` when either counter is missing.
    pub fn parse(text: &str) -> Option<ListenCounters> {
        let mut lines = text.lines();
        while let Some(names) = lines.next() {
            let Some(names) = names.strip_prefix("TcpExt:") else {
                continue;
            };
            let values = lines.next()?.strip_prefix("TcpExt:")?;
            let pairs: BTreeMap<&str, &str> = names
                .split_whitespace()
                .zip(values.split_whitespace())
                .collect();
            let get = |name: &str| pairs.get(name).and_then(|v| v.parse::<u64>().ok());
            return Some(ListenCounters {
                overflows: get("ListenOverflows")?,
                drops: get("ListenDrops")?,
            });
        }
        None
    }

    /// This namespace's counters now, `None` when `/proc/net/netstat` cannot be read.
    pub fn now() -> Option<ListenCounters> {
        ListenCounters::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// What the counters grew by since `before`.
    pub fn since(self, before: ListenCounters) -> ListenCounters {
        ListenCounters {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
        }
    }
}

/// Why a held connection could not be set up, or did not stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    Refused,
    Timeout,
    Reset,
    Eof,
    Mismatch,
    /// No (address, port) pair left (EADDRNOTAVAIL).
    AddrUnavailable,
    /// This process has no descriptor left (EMFILE, ENFILE).
    Descriptors,
    Other,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout => "timeout",
            Failure::Reset => "reset",
            Failure::Eof => "eof",
            Failure::Mismatch => "mismatch",
            Failure::AddrUnavailable => "addr_unavailable",
            Failure::Descriptors => "descriptors",
            Failure::Other => "other",
        }
    }

    pub fn of(err: &io::Error) -> Failure {
        match err.raw_os_error() {
            Some(libc::ECONNREFUSED) => Failure::Refused,
            Some(libc::ETIMEDOUT) => Failure::Timeout,
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => Failure::Reset,
            Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => Failure::AddrUnavailable,
            Some(libc::EMFILE) | Some(libc::ENFILE) => Failure::Descriptors,
            _ => Failure::Other,
        }
    }
}

/// What establishing the held connections gave.
#[derive(Debug, Default)]
pub struct Held {
    pub conns: Vec<TcpStream>,
    pub failed: BTreeMap<Failure, u64>,
    pub first_error: Option<String>,
    pub establish_secs: f64,
    pub interrupted: bool,
    /// How much the namespace's listen-queue counters grew while establishing.
    pub listen: Option<ListenCounters>,
}

impl Held {
    /// Connections verified per second of the establishing phase.
    pub fn connect_rate(&self) -> f64 {
        if self.establish_secs > 0.0 {
            self.conns.len() as f64 / self.establish_secs
        } else {
            0.0
        }
    }

    /// Held connections still open now: a read that would block (no end of stream, no
    /// reset, no stray byte).
    pub fn still_open(&mut self) -> u64 {
        let mut buf = [0u8; 16];
        let mut open = 0;
        for conn in &mut self.conns {
            if matches!(conn.read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                open += 1;
            }
        }
        open
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    pub fn to_json(&self, requested: u64, still_open: u64) -> serde_json::Value {
        let failed: BTreeMap<&str, u64> = self.failed.iter().map(|(k, v)| (k.name(), *v)).collect();
        json!({
            "requested": requested,
            "established": self.conns.len(),
            "failed": self.failed_total(),
            "failed_by_kind": failed,
            "first_error": self.first_error,
            "establish_secs": self.establish_secs,
            "connect_rate": self.connect_rate(),
            "still_open": still_open,
            "interrupted": self.interrupted,
            "listen_overflows": self.listen.map(|l| l.overflows),
            "listen_drops": self.listen.map(|l| l.drops),
        })
    }
}

/// A connection being set up: its socket, when it started, bytes of its echo read.
struct Pending {
    stream: TcpStream,
    idx: u64,
    started: Instant,
    sent: bool,
    got: usize,
    buf: [u8; 8],
}

/// The 8 bytes held connection `idx` sends: its index, so a crossed echo is caught.
fn ping(idx: u64) -> [u8; 8] {
    idx.to_le_bytes()
}

/// Opens `n` connections to `addr` (spread over `sources`, paced at `rate` per second if
/// given), each verified by one echo within `timeout`; a connection that fails is counted
/// by kind and not retried. Ends early when `stop` is set. The connections are numbers
/// `first..first + n` of the whole hold: number `i` uses source `i % sources.len()` and
/// sends `i` as its ping, so a hold split among processes spreads as one would.
pub fn establish(
    addr: SocketAddr,
    first: u64,
    n: u64,
    sources: &[IpAddr],
    rate: Option<f64>,
    timeout: Duration,
    stop: &AtomicBool,
) -> io::Result<Held> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1_024);
    let mut held = Held {
        conns: Vec::with_capacity(usize::try_from(n).unwrap_or(0)),
        ..Held::default()
    };
    let mut pending: BTreeMap<usize, Pending> = BTreeMap::new();
    let mut next_token = 0usize;
    let mut issued = 0u64;
    let t0 = Instant::now();
    let listen_before = ListenCounters::now();
    let fail = |held: &mut Held, kind: Failure, what: String| {
        *held.failed.entry(kind).or_insert(0) += 1;
        held.first_error.get_or_insert(what);
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            held.interrupted = true;
            break;
        }
        let now = Instant::now();
        // Issue connects: within the in-flight bound and, with a rate, the schedule.
        while issued < n && pending.len() < IN_FLIGHT {
            if let Some(rate) = rate {
                let due = t0 + Duration::from_secs_f64(issued as f64 / rate);
                if due > now {
                    break;
                }
            }
            let idx = first + issued;
            let source =
                (!sources.is_empty()).then(|| sources[(idx % sources.len() as u64) as usize]);
            match start_connect(addr, source) {
                Ok(mut stream) => {
                    let token = next_token;
                    next_token = next_token.wrapping_add(1);
                    poll.registry().register(
                        &mut stream,
                        Token(token),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    pending.insert(
                        token,
                        Pending {
                            stream,
                            idx,
                            started: now,
                            sent: false,
                            got: 0,
                            buf: [0; 8],
                        },
                    );
                }
                Err(err) => fail(
                    &mut held,
                    Failure::of(&err),
                    format!("connect: {}", crate::engine::describe(&err)),
                ),
            }
            issued += 1;
        }
        if issued >= n && pending.is_empty() {
            break;
        }
        let wait = match rate {
            Some(_) if issued < n => Duration::from_millis(1),
            _ => Duration::from_millis(50),
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        for event in &events {
            let token = event.token().0;
            let Some(p) = pending.get_mut(&token) else {
                continue;
            };
            match advance(p) {
                Ok(false) => {}
                Ok(true) => {
                    let mut p = pending.remove(&token).expect("present");
                    poll.registry().deregister(&mut p.stream)?;
                    held.conns.push(p.stream);
                }
                Err((kind, what)) => {
                    pending.remove(&token);
                    fail(&mut held, kind, what);
                }
            }
        }
        // Bounded: a connection that is not set up within the timeout has failed.
        let now = Instant::now();
        let late: Vec<usize> = pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) > timeout)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            let p = pending.remove(&token).expect("present");
            let what = if p.sent { "no echo" } else { "no connection" };
            fail(
                &mut held,
                Failure::Timeout,
                format!("{what} within {:.1} s", timeout.as_secs_f64()),
            );
        }
    }
    held.establish_secs = t0.elapsed().as_secs_f64();
    held.listen = ListenCounters::now()
        .zip(listen_before)
        .map(|(a, b)| a.since(b));
    Ok(held)
}

fn start_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    if let Some(ip) = source {
        // The port is chosen at connect time, per 4-tuple: N addresses, N port ranges.
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .map_err(io::Error::from)?;
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    let _ = socket.set_tcp_nodelay(true);
    Ok(TcpStream::from_std(socket.into()))
}

/// Moves a connection being set up along: send its ping once connected, read its echo.
/// `Ok(true)` when its echo is whole and right.
fn advance(p: &mut Pending) -> Result<bool, (Failure, String)> {
    let io_err = |what: &str, err: &io::Error| {
        (
            Failure::of(err),
            format!("{what}: {}", crate::engine::describe(err)),
        )
    };
    if let Ok(Some(err)) | Err(err) = p.stream.take_error() {
        return Err(io_err("connect", &err));
    }
    if !p.sent {
        match p.stream.peer_addr() {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(err) => return Err(io_err("connect", &err)),
        }
        match p.stream.write(&ping(p.idx)) {
            Ok(8) => p.sent = true,
            Ok(_) => return Err((Failure::Other, "a short write of 8 bytes".to_string())),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) => return Err(io_err("send", &err)),
        }
    }
    loop {
        match p.stream.read(&mut p.buf[p.got..]) {
            Ok(0) => {
                return Err((
                    Failure::Eof,
                    "the server closed before the echo".to_string(),
                ))
            }
            Ok(k) => {
                p.got += k;
                if p.got == 8 {
                    return if p.buf == ping(p.idx) {
                        Ok(true)
                    } else {
                        Err((
                            Failure::Mismatch,
                            format!("a wrong echo on held connection {}", p.idx),
                        ))
                    };
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(io_err("echo", &err)),
        }
    }
}

/// Runs `echolab bench --hold N` (see [`crate::cli::BenchArgs`]): establishes the held
/// connections, runs the active bench beside them (or holds them idle for `--duration`
/// with `--active 0`), prints the report, returns the exit status. Past this process's
/// descriptor limit the hold is split among worker processes of this binary
/// ([`crate::holders`]); such a worker runs its share here.
pub fn run(
    args: &crate::cli::BenchArgs,
    mut config: crate::config::BenchConfig,
    stop: &AtomicBool,
) -> std::process::ExitCode {
    use crate::holders;
    use std::process::ExitCode;
    let worker = holders::worker_share();
    let json_out = args.json || !matches!(worker, Ok(None));
    let fail = |message: &str, code: u8| {
        holders::say(&format!("echolab bench: {message}"));
        if json_out {
            echolab_cli::print_out(&crate::bench::error_json(message, code));
        }
        ExitCode::from(code)
    };
    let worker = match worker {
        Ok(worker) => worker,
        Err(err) => return fail(&err, 2),
    };
    let n_total = args.hold.unwrap_or(0);
    let active_total = args.active.unwrap_or(config.n_conns) as u64;
    let sources = match args.source_ip.as_deref().map(parse_sources) {
        None => Vec::new(),
        Some(Ok(sources)) => sources,
        Some(Err(err)) => return fail(&format!("--source-ip: {err}"), 2),
    };
    if let Err(err) = check_plan(config.addr, &sources, n_total + active_total, local_ports()) {
        return fail(&err, 2);
    }
    crate::raise_fd_limit();
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1_024, 1_024));
    let (first, n, active) = match worker {
        Some(share) => (share.first, share.count, share.active),
        None => (0, n_total, active_total),
    };
    let need = n + active + SPARE_FDS;
    if need > soft {
        if worker.is_none() {
            return holders::run(args, &config, soft, hard, stop);
        }
        return fail(
            &format!("a hold worker given {n} connections and {active} active needs {need} descriptors, it may open {soft}"),
            2,
        );
    }
    let who = worker
        .map(|share| format!("hold worker {}: ", share.index))
        .unwrap_or_default();
    // A worker paces its share of --connect-rate, so that together they keep the rate.
    let rate = args
        .connect_rate
        .map(|rate| rate * n as f64 / n_total.max(1) as f64);
    holders::say(&format!(
        "{who}holding {n} connections to {}...",
        config.addr
    ));
    let mut held = match establish(
        config.addr,
        first,
        n,
        &sources,
        rate,
        config.connect_timeout,
        stop,
    ) {
        Ok(held) => held,
        Err(err) => return fail(&format!("cannot set up the connections: {err}"), 1),
    };
    holders::say(&format!(
        "{who}held {} of {n} connections ({} failed) in {:.3} s, {:.0} connections/s",
        held.conns.len(),
        held.failed_total(),
        held.establish_secs,
        held.connect_rate()
    ));
    // A worker reports it holds its share, and starts its window when every worker does.
    if worker.is_some() && !held.interrupted && !holders::ready(held.conns.len() as u64) {
        held.interrupted = true;
    }
    let report = if active > 0 && !held.interrupted {
        config.n_conns = usize::try_from(active).unwrap_or(usize::MAX);
        match crate::engine::run(&config, stop, Duration::from_millis(200), |_| {}) {
            Ok(report) => Some(report),
            Err(err) => return fail(&err.to_string(), 1),
        }
    } else if worker.is_some() {
        // A worker's idle window ends when the one that measures has finished.
        if !held.interrupted {
            holders::wait_for_end();
        }
        None
    } else {
        // Idle: hold for the window, or until SIGINT/SIGTERM.
        let end = Instant::now() + config.duration;
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(
                Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())),
            );
        }
        None
    };
    let still_open = held.still_open();
    let interrupted = held.interrupted || stop.load(Ordering::Relaxed);
    let hold_doc = held.to_json(n, still_open);
    let held_ok = held.failed_total() == 0
        && still_open == held.conns.len() as u64
        && held.conns.len() as u64 == n;
    // The thresholds judge the active connections' figures, as in a run without --hold.
    let thresholds = args.thresholds();
    let code = match &report {
        Some(report) => thresholds.exit_code(report),
        None if interrupted => 130,
        None => 0,
    };
    // An interrupted hold is 130, held in full or not (see holders.rs).
    let code = if held_ok || code != 0 && code != 130 || interrupted && code == 130 {
        code
    } else {
        1
    };
    if let (Some(path), Some(report)) = (&args.hdr_log, &report) {
        if let Err(err) = crate::merge::write_bench_log(path, report, &config) {
            return fail(&format!("cannot write {}: {err}", path.display()), 1);
        }
    }
    let mut out = echolab_cli::stdout();
    if json_out {
        let mut doc = match &report {
            Some(report) => crate::bench::document(report, &config, &thresholds),
            None => json!({ "workload": "hold", "messages": 0, "interrupted": interrupted }),
        };
        doc["hold"] = hold_doc;
        doc["exit_code"] = json!(code);
        if let (Some(_), Some(report)) = (worker, &report) {
            // The text the supervising bench prints when it was not asked for JSON.
            doc[holders::REPORT_TEXT] = json!(report.to_text(&config));
        }
        echolab_cli::provenance::stamp(&mut doc);
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
    } else {
        let kinds: Vec<String> = held
            .failed
            .iter()
            .map(|(k, v)| format!("{} {v}", k.name()))
            .collect();
        let _ = writeln!(
            out,
            "held {} of {n} connections to {} ({} failed{}{}), established in {:.3} s ({:.0} connections/s{}); {still_open} still open after the window",
            held.conns.len(),
            config.addr,
            held.failed_total(),
            if kinds.is_empty() { String::new() } else { format!(": {}", kinds.join(", ")) },
            held.first_error.as_deref().map(|e| format!("; first: {e}")).unwrap_or_default(),
            held.establish_secs,
            held.connect_rate(),
            listen_words(held.listen),
        );
        if let Some(report) = &report {
            let _ = write!(out, "{}", report.to_text(&config));
        }
    }
    let _ = out.flush();
    if let Some(line) = report.as_ref().and_then(|r| thresholds.verdict(r)) {
        holders::say(&format!("echolab bench: {who}{line}"));
    }
    std::process::ExitCode::from(code)
}

/// The listen-queue growth while establishing, as the report says it.
pub fn listen_words(listen: Option<ListenCounters>) -> String {
    match listen {
        Some(l) => format!(
            "; the namespace's listen queues meanwhile: {} overflows, {} drops",
            l.overflows, l.drops
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known truth: the counters of a real /proc/net/netstat text (names and values on
    /// two TcpExt lines, an IpExt pair after), and their growth.
    #[test]
    fn listen_counters_are_read_from_netstat() {
        let text = "TcpExt: SyncookiesSent TW ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 123 5671280 4131 4132 289653897\n\
                    IpExt: InNoRoutes ListenOverflows\n\
                    IpExt: 0 77\n";
        let before = ListenCounters::parse(text).unwrap();
        assert_eq!(
            before,
            ListenCounters {
                overflows: 4_131,
                drops: 4_132
            }
        );
        let after = ListenCounters {
            overflows: 4_200,
            drops: 4_132,
        };
        assert_eq!(
            after.since(before),
            ListenCounters {
                overflows: 69,
                drops: 0
            }
        );
        assert_eq!(before.since(after).overflows, 0);
        assert_eq!(
            ListenCounters::parse("TcpExt: ListenOverflows\nTcpExt: 5\n"),
            None
        );
        assert_eq!(ListenCounters::parse("IpExt: a\nIpExt: 1\n"), None);
        assert_eq!(
            ListenCounters::parse("TcpExt: ListenOverflows ListenDrops\n"),
            None
        );
        assert_eq!(
            ListenCounters::parse("TcpExt: ListenOverflows ListenDrops\nTcpExt: 1 x\n"),
            None
        );
        assert_eq!(
            listen_words(Some(after.since(before))),
            "; the namespace's listen queues meanwhile: 69 overflows, 0 drops"
        );
        assert_eq!(listen_words(None), "");
        // This machine's own file parses (it is there on every Linux with TCP).
        if std::path::Path::new("/proc/net/netstat").exists() {
            assert!(ListenCounters::now().is_some());
        }
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_and_lists_are_spread_addresses() {
        assert_eq!(parse_sources("127.0.0.2").unwrap(), [v4("127.0.0.2")]);
        let r = parse_sources("127.0.0.2-127.0.0.4,127.0.1.1").unwrap();
        assert_eq!(
            r,
            [
                v4("127.0.0.2"),
                v4("127.0.0.3"),
                v4("127.0.0.4"),
                v4("127.0.1.1")
            ]
        );
        assert_eq!(parse_sources("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert_eq!(parse_sources("127.0.0.1-127.0.0.1").unwrap().len(), 1);
        assert!(parse_sources("127.0.0.4-127.0.0.2")
            .unwrap_err()
            .contains("empty range"));
        assert!(parse_sources("127.0.0.0-127.255.255.255")
            .unwrap_err()
            .contains("at most"));
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources("").is_err());
        assert!(parse_sources("1.2.3.4-x").is_err());
    }

    #[test]
    fn a_plan_needs_loopback_sources_and_enough_ports() {
        let target: SocketAddr = "127.0.0.1:7007".parse().unwrap();
        let two = [v4("127.0.0.2"), v4("127.0.0.3")];
        assert!(check_plan(target, &two, 56_464, 28_232).is_ok());
        let err = check_plan(target, &two, 56_465, 28_232).unwrap_err();
        assert!(
            err.contains("2 source address(es) x 28232 ports = 56464"),
            "{err}"
        );
        assert!(check_plan(target, &[], 28_232, 28_232).is_ok());
        assert!(check_plan(target, &[], 28_233, 28_232).is_err());
        let err = check_plan(target, &[v4("10.0.0.1")], 1, 100).unwrap_err();
        assert!(err.contains("outside loopback"), "{err}");
        let remote: SocketAddr = "10.0.0.9:7007".parse().unwrap();
        assert!(check_plan(remote, &[v4("127.0.0.2")], 1, 100)
            .unwrap_err()
            .contains("cannot reach"));
        assert!(check_plan(remote, &[v4("10.0.0.1")], 1, 100).is_ok());
        assert!(check_plan(target, &["::1".parse().unwrap()], 1, 100)
            .unwrap_err()
            .contains("family"));
    }

    #[test]
    fn failures_are_named_by_errno() {
        let of = |errno| Failure::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::ECONNREFUSED), Failure::Refused);
        assert_eq!(of(libc::EADDRNOTAVAIL), Failure::AddrUnavailable);
        assert_eq!(of(libc::EMFILE), Failure::Descriptors);
        assert_eq!(of(libc::ECONNRESET), Failure::Reset);
        assert_eq!(of(libc::ETIMEDOUT), Failure::Timeout);
        assert_eq!(of(libc::EIO), Failure::Other);
    }

    /// Known truth: a listener that echoes, 300 connections over three source addresses,
    /// every one established and spread evenly; a port nobody listens on refuses all.
    #[test]
    fn connections_are_held_and_spread_over_sources() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut kept = Vec::new();
            for _ in 0..300 {
                let (mut conn, peer) = listener.accept().unwrap();
                let mut buf = [0u8; 8];
                conn.read_exact(&mut buf).unwrap();
                conn.write_all(&buf).unwrap();
                kept.push((conn, peer.ip()));
            }
            kept
        });
        let sources = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        let stop = AtomicBool::new(false);
        let mut held =
            establish(addr, 0, 300, &sources, None, Duration::from_secs(20), &stop).unwrap();
        assert_eq!(held.conns.len(), 300, "{:?}", held.failed);
        assert_eq!(held.failed_total(), 0);
        let kept = echo.join().unwrap();
        for ip in &sources {
            assert_eq!(kept.iter().filter(|(_, p)| p == ip).count(), 100, "{ip}");
        }
        assert_eq!(held.still_open(), 300);
        drop(kept);
        // The server side closed: none is open any more (bounded wait for the FINs).
        let deadline = Instant::now() + Duration::from_secs(10);
        while held.still_open() > 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(held.still_open(), 0);

        let gone = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = gone.local_addr().unwrap();
        drop(gone);
        let held = establish(dead, 0, 5, &[], None, Duration::from_secs(5), &stop).unwrap();
        assert_eq!(held.conns.len(), 0);
        assert_eq!(held.failed.get(&Failure::Refused), Some(&5));
        assert!(held.first_error.unwrap().contains("refused"));
    }
}
