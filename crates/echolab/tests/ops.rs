//! Operations (issue 11): the stats line of `kill -USR1`, the log levels, `--metrics`,
//! socket activation and readiness, and `--listen`, through the real binary.
//!
//! Waits are for a log line, a scrape or a process state with a deadline; a test that
//! needs a tool this machine lacks (promtool, systemd-socket-activate) says SKIPPED and why.

mod support;

use std::io::Write;
use std::net::UdpSocket;
use std::time::Duration;

use support::*;

/// Every TCP model, for the tests that run one after another in a loop.
const MODELS: [&str; 8] = [
    "iterative",
    "process",
    "event",
    "thread",
    "prethreaded",
    "reactor",
    "uring",
    "async",
];

/// Sends SIGUSR1 to `server` and returns the `count`th stats line it printed.
fn usr1_stats(server: &Server, count: usize) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    server.log.wait_for("echolab: stats: ", count)[count - 1].clone()
}

/// Asks for stats lines until one contains `needle` (the figures lag the client's view of
/// a close by the server's own close); at most 100 lines.
fn usr1_stats_until(server: &Server, needle: &str) -> String {
    for count in 1..=100 {
        let line = usr1_stats(server, count);
        if line.contains(needle) {
            return line;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no stats line with {needle:?} in 100 tries");
}

fn one_echo(server: &Server) {
    let mut conn = connect(server.addr);
    conn.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut conn, 4), b"ping");
}

#[test]
fn the_default_level_logs_no_line_per_connection() {
    let mut command = echolab();
    command.env("RUST_LOG", "");
    let server = Server::start_with(command, "event", "127.0.0.1:0", &[]);
    one_echo(&server);
    usr1_stats_until(&server, "conns 0 open, 1 total");
    let lines = server.log.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(" opened") || l.contains(" closed:")),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l == "echolab: info: serving bytes with model event"));
}

#[test]
fn rust_log_echolab_debug_and_v_log_each_connection() {
    for (env, flags) in [("echolab=debug", &[][..]), ("", &["-v"][..])] {
        let mut command = echolab();
        command.env("RUST_LOG", env);
        let server = Server::start_with(command, "event", "127.0.0.1:0", flags);
        one_echo(&server);
        server
            .log
            .wait_for("closed: peer closed (4 bytes in, 4 out)", 1);
        let lines = server.log.lines();
        assert!(lines
            .iter()
            .any(|l| l.starts_with("echolab: debug: conn ") && l.ends_with(" opened")));
        // Debug is not trace: no line per read.
        assert!(
            !lines.iter().any(|l| l.contains("server received")),
            "{lines:?}"
        );
    }
}

#[test]
fn quiet_wins_over_rust_log() {
    let mut command = echolab();
    command.env("RUST_LOG", "trace");
    let server = Server::start_with(command, "event", "127.0.0.1:0", &["-q"]);
    one_echo(&server);
    usr1_stats_until(&server, "conns 0 open, 1 total");
    let lines = server.log.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("echolab: info:") || l.contains("debug")),
        "{lines:?}"
    );
}

#[test]
fn the_summary_comes_at_info_every_stats_interval() {
    let mut command = echolab();
    command.env("RUST_LOG", "");
    let server = Server::start_with(
        command,
        "reactor",
        "127.0.0.1:0",
        &["--stats-interval", "1"],
    );
    let lines = server.log.wait_for("echolab: info: stats: up ", 2);
    assert!(lines[1].contains("conns 0 open, 0 total"), "{lines:?}");
}

#[test]
fn the_stats_line_counts_udp_drops_by_reason() {
    // An explicit rate of 1 per second applies to loopback too: of 5 datagrams sent at
    // once, the first is echoed and the others are dropped as rate-limited, unless a
    // second passes between two sends; every datagram is one or the other.
    let server = Server::start(
        "reactor",
        &["--udp", "--udp-rate-per-source", "1", "--workers", "1"],
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        socket.send_to(b"datagram", server.addr).unwrap();
    }
    let echoed_lines = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("udp: echoed") || l.contains("udp: dropped datagram"))
            .count()
    };
    assert!(eventually(|| echoed_lines(&server.log.lines()) == 5));
    let mut echoes = 0;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    while socket.recv(&mut buf).is_ok() {
        echoes += 1;
    }
    let line = usr1_stats(&server, 1);
    let dropped = 5 - echoes;
    assert!(
        line.contains(&format!(
            "; udp 5 received, {echoes} echoed, {dropped} dropped (reserved-port 0, privileged-port 0, rate-limited {dropped}, table-full 0"
        )),
        "{line}"
    );
    assert!(echoes >= 1, "{line}");
}

/// The address of the server's `/metrics` (from its `metrics on http://ADDR/metrics` line).
fn metrics_addr(server: &Server) -> std::net::SocketAddr {
    let line = server.log.wait_for("metrics on http://", 1).remove(0);
    let rest = line.strip_prefix("metrics on http://").unwrap();
    rest.strip_suffix("/metrics").unwrap().parse().unwrap()
}

/// `GET path` over HTTP/1.0: the status line and the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::Read;
    let mut conn = connect(addr);
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the series `series` (name and labels, exactly) in an exposition.
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_say_the_known_counts_for_every_model_with_threads() {
    for model in [
        "iterative",
        "event",
        "thread",
        "prethreaded",
        "reactor",
        "uring",
        "async",
    ] {
        if let Some(reason) = unsupported(model) {
            eprintln!("SKIPPED for {model}: {reason}");
            continue;
        }
        let server = Server::start(model, &["--metrics", "127.0.0.1:0"]);
        let metrics = metrics_addr(&server);
        let sizes = [1_000, 20_000, 300_000];
        for size in sizes {
            let payload = pattern(size);
            assert!(round_trip(server.addr, payload.clone()) == payload);
        }
        let n: usize = sizes.iter().sum();
        server.log.wait_for("closed: peer closed", sizes.len());
        let (status, body) = http_get(metrics, "/metrics");
        assert_eq!(status, "HTTP/1.0 200 OK", "{model}");
        let label = format!("{{model=\"{model}\"}}");
        let series = |name: &str| value(&body, &format!("{name}{label}"));
        assert_eq!(
            series("echolab_connections_total"),
            Some(3.0),
            "{model}:\n{body}"
        );
        assert_eq!(series("echolab_connections_open"), Some(0.0), "{model}");
        assert_eq!(
            series("echolab_bytes_received_total"),
            Some(n as f64),
            "{model}"
        );
        assert_eq!(
            series("echolab_bytes_sent_total"),
            Some(n as f64),
            "{model}"
        );
        let peer_closed =
            format!("echolab_connections_closed_total{{model=\"{model}\",reason=\"peer_closed\"}}");
        assert_eq!(value(&body, &peer_closed), Some(3.0), "{model}");
        assert!(series("echolab_uptime_seconds").unwrap() > 0.0);
        // While one is open, the gauge says so.
        let mut conn = connect(server.addr);
        conn.write_all(b"x").unwrap();
        assert_eq!(read_n(&mut conn, 1), b"x");
        let port = conn.local_addr().unwrap().port();
        server.log.wait_for(&format!(":{port} opened"), 1);
        let (_, body) = http_get(metrics, "/metrics");
        assert_eq!(
            value(&body, &format!("echolab_connections_open{label}")),
            Some(1.0)
        );
        // Its bytes count already: received before the echo was written, sent once the
        // write returned (so, for the sent ones, scrape again until then).
        let received = format!("echolab_bytes_received_total{label}");
        assert_eq!(value(&body, &received), Some(n as f64 + 1.0), "{model}");
        let sent = format!("echolab_bytes_sent_total{label}");
        assert!(
            eventually(|| value(&http_get(metrics, "/metrics").1, &sent) == Some(n as f64 + 1.0)),
            "{model}: an open connection's bytes out are not counted"
        );
        assert_eq!(http_get(metrics, "/other").0, "HTTP/1.0 404 Not Found");
    }
}

#[test]
fn metrics_refusals_are_counted_by_reason() {
    let server = Server::start("event", &["--metrics", "127.0.0.1:0", "--max-conns", "1"]);
    let metrics = metrics_addr(&server);
    let _held = connect(server.addr);
    server.log.wait_for(" opened", 1);
    for _ in 0..2 {
        let mut refused = connect(server.addr);
        assert!(read_to_end(&mut refused).unwrap().is_empty());
    }
    let (_, body) = http_get(metrics, "/metrics");
    let series = "echolab_connections_refused_total{model=\"event\",reason=\"max_conns\"}";
    assert_eq!(value(&body, series), Some(2.0), "{body}");
}

#[test]
fn metrics_pass_promtool_check_metrics() {
    let promtool = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    if !promtool.is_ok_and(|out| out.status.success()) {
        eprintln!(
            "SKIPPED: promtool not found (Debian: apt-get install prometheus; .ci/run installs it)"
        );
        return;
    }
    // With UDP too, so that every family is checked.
    let server = Server::start("reactor", &["--metrics", "127.0.0.1:0", "--udp"]);
    one_echo(&server);
    let (_, body) = http_get(metrics_addr(&server), "/metrics");
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = finish_bounded(check, STEP);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
    assert!(body.contains(
        "echolab_udp_datagrams_dropped_total{model=\"reactor\",reason=\"rate-limited\"} 0"
    ));
}

#[test]
fn the_process_model_refuses_metrics_with_one_line() {
    let child = echolab()
        .args([
            "serve",
            "--model",
            "process",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--metrics 127.0.0.1:0"), "{stderr}");
}

/// Slow and idle clients of `/metrics` (issue 11: with a thread per connection, 3,000 of
/// them made 2,957 threads).
const SLOW_SCRAPERS: usize = 320;

/// The endpoint's own cap on scrape connections (`metrics::MAX_SCRAPE_CONNS`).
const MAX_SCRAPE_CONNS: usize = 16;

#[test]
fn slow_metrics_clients_cost_no_thread_and_a_scrape_is_still_served() {
    let server = Server::start("event", &["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    assert_eq!(http_get(metrics, "/metrics").0, "HTTP/1.0 200 OK");
    let (threads, fds) = (thread_count(server.pid()), fd_count(server.pid()));
    // Half send nothing, half a head that never ends (slowloris).
    let slow: Vec<_> = (0..SLOW_SCRAPERS)
        .map(|i| {
            let mut conn = connect(metrics);
            if i % 2 == 1 {
                conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            conn
        })
        .collect();
    // Accepted after all of them (one listen queue, in order): served while they wait.
    let (status, body) = http_get(metrics, "/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        body.contains("echolab_connections_open{model=\"event\"} 0"),
        "{body}"
    );
    let during = thread_count(server.pid());
    assert!(
        during <= threads,
        "{during} threads with {SLOW_SCRAPERS} slow metrics clients, {threads} before"
    );
    // The server holds at most the cap of them (the others are closed, oldest first).
    assert!(
        eventually(|| fd_count(server.pid()) <= fds + MAX_SCRAPE_CONNS),
        "{} descriptors with {SLOW_SCRAPERS} slow metrics clients, {fds} before",
        fd_count(server.pid())
    );
    // And echoing goes on.
    assert_eq!(round_trip(server.addr, pattern(1000)), pattern(1000));
    drop(slow);
    assert_eq!(http_get(metrics, "/metrics").0, "HTTP/1.0 200 OK");
    assert!(thread_count(server.pid()) <= threads);
}

#[test]
fn a_metrics_address_in_use_is_refused_with_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let child = echolab()
        .args([
            "serve",
            "--model",
            "event",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            &addr,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // One line that names the flag, not only the address (the echo address's bind error
    // says "cannot bind ADDR" too).
    assert_eq!(
        stderr.trim_end(),
        format!("echolab serve: --metrics {addr}: cannot bind: address already in use"),
        "{stderr}"
    );
}

/// Whether `tool` runs here; if not, says the test is skipped and why.
fn have(tool: &str, package: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!(
            "SKIPPED: {tool} not found (Debian: apt-get install {package}; .ci/run installs it)"
        );
    }
    found
}

/// A loopback port free now (bound and released: the tool under test binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `systemd-socket-activate [-d] -l 127.0.0.1:PORT echolab serve ARGS...`, its stderr
/// collected; stopped (SIGTERM, then SIGKILL) when dropped. The tool execs echolab in
/// place at the first connection or datagram, so its pid is the server's.
struct Activated {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Activated {
    fn start(datagram: bool, port: u16, args: &[&str]) -> Activated {
        Activated::start_on(datagram, &[port], args)
    }

    /// As [`Activated::start`], with a socket passed for each of `ports`, in order.
    fn start_on(datagram: bool, ports: &[u16], args: &[&str]) -> Activated {
        let program = [&[env!("CARGO_BIN_EXE_echolab"), "serve"], args].concat();
        Activated::start_program(datagram, ports, &program)
    }

    /// As [`Activated::start_on`], running `program` (its path and arguments) in place of
    /// `echolab serve ARGS`.
    fn start_program(datagram: bool, ports: &[u16], program: &[&str]) -> Activated {
        use std::io::BufRead;
        let mut command = std::process::Command::new("systemd-socket-activate");
        if datagram {
            command.arg("--datagram");
        }
        for port in ports {
            command.args(["-l", &format!("127.0.0.1:{port}")]);
        }
        let mut child = command
            .args(program)
            .env("RUST_LOG", "echolab=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let activated = Activated { child, log };
        for port in ports {
            assert!(
                eventually(|| activated.has(&format!("Listening on 127.0.0.1:{port}"))),
                "systemd-socket-activate did not listen: {:?}",
                activated.lines()
            );
        }
        activated
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn has(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        wait_exit(&mut self.child, STEP).expect("the activated server did not stop")
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn socket_activation_serves_the_passed_tcp_listener_in_every_model() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    for model in MODELS {
        if let Some(reason) = unsupported(model) {
            eprintln!("SKIPPED for {model}: {reason}");
            continue;
        }
        let port = free_port();
        // --listen says another address: the passed socket wins. Reactor with two loops
        // shares the passed listener (it has no SO_REUSEPORT for a second one).
        let workers: &[&str] = if model == "reactor" {
            &["--workers", "2"]
        } else {
            &[]
        };
        let args = [&["--model", model, "--listen", "127.0.0.1:0"], workers].concat();
        let mut activated = Activated::start(false, port, &args);
        for round in 0..3 {
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut conn = connect(addr);
            let message = format!("activated {round}");
            conn.write_all(message.as_bytes()).unwrap();
            assert_eq!(
                read_n(&mut conn, message.len()),
                message.as_bytes(),
                "{model}"
            );
        }
        assert!(
            eventually(|| activated.has(&format!("listening on 127.0.0.1:{port} (model {model})"))),
            "{:?}",
            activated.lines()
        );
        assert!(eventually(
            || activated.has("passed by the service manager (LISTEN_FDS)")
        ));
        let status = activated.stop();
        assert!(
            status.success(),
            "{model}: {status:?} {:?}",
            activated.lines()
        );
    }
}

#[test]
fn socket_activation_serves_a_passed_udp_socket() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let port = free_port();
    let mut activated = Activated::start(
        true,
        port,
        &[
            "--model",
            "reactor",
            "--udp-only",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(STEP)).unwrap();
    // The first datagram starts the server; it waits in the passed socket until served.
    socket
        .send_to(b"activated datagram", ("127.0.0.1", port))
        .unwrap();
    let mut buf = [0u8; 64];
    let (len, from) = socket
        .recv_from(&mut buf)
        .expect("an echo from the activated server");
    assert_eq!(&buf[..len], b"activated datagram");
    assert_eq!(from.port(), port);
    let listening = format!("udp listening on 127.0.0.1:{port} (model reactor, 1 loop,");
    assert!(
        eventually(|| activated.has(&listening)),
        "{:?}",
        activated.lines()
    );
    assert!(activated.stop().success());
}

/// `--udp` with only a TCP listener passed (the contrib socket unit's `ListenDatagram=`
/// left commented): UDP bound --listen's address (127.0.0.1:7007 by default), another port
/// than the TCP one systemd passed. It binds the passed listener's address instead.
#[test]
fn udp_beside_a_passed_tcp_listener_is_on_its_port() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let port = free_port();
    let mut activated = Activated::start(
        false,
        port,
        &["--model", "event", "--udp", "--listen", "127.0.0.1:0"],
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut conn = connect(addr);
    conn.write_all(b"tcp").unwrap();
    assert_eq!(read_n(&mut conn, 3), b"tcp");
    let listening = format!("udp listening on 127.0.0.1:{port} (model event,");
    assert!(
        eventually(|| activated.has(&listening)),
        "{:?}",
        activated.lines()
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(STEP)).unwrap();
    socket.send_to(b"udp beside", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 64];
    let (len, _) = socket
        .recv_from(&mut buf)
        .expect("a UDP echo on the TCP port");
    assert_eq!(&buf[..len], b"udp beside");
    assert!(activated.stop().success());
}

#[test]
fn a_passed_udp_socket_without_udp_flags_is_refused() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let port = free_port();
    let mut activated =
        Activated::start(true, port, &["--model", "event", "--listen", "127.0.0.1:0"]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"x", ("127.0.0.1", port)).unwrap();
    let status = wait_exit(&mut activated.child, STEP).expect("no exit");
    assert_eq!(status.code(), Some(2), "{:?}", activated.lines());
    assert!(eventually(|| activated.has(
        "LISTEN_FDS passed a UDP socket: serve it with --udp or --udp-only"
    )));
}

/// Two UDP sockets passed (two `ListenDatagram=`): echolab serves one, so it refuses with
/// one line naming the second one's descriptor (the passed ones are 3, 4, ...), exit 2.
#[test]
fn a_second_passed_udp_socket_is_refused_naming_its_descriptor() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let ports = [free_port(), free_port()];
    let mut activated = Activated::start_on(
        true,
        &ports,
        &[
            "--model",
            "reactor",
            "--udp-only",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"x", ("127.0.0.1", ports[0])).unwrap();
    let status = wait_exit(&mut activated.child, STEP).expect("no exit");
    assert_eq!(status.code(), Some(2), "{:?}", activated.lines());
    let refusal =
        "echolab serve: LISTEN_FDS: descriptor 4 is a second UDP socket (echolab serves one)";
    assert!(
        eventually(|| activated.has(refusal)),
        "{:?}",
        activated.lines()
    );
}

/// A passed descriptor that is no socket (here /dev/null as descriptor 4, after a TCP
/// listener as 3, with LISTEN_FDS=2 set by a shell between the tool and echolab): one line
/// naming descriptor 4, exit 2.
#[test]
fn a_passed_descriptor_that_is_no_socket_is_refused_naming_it() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let port = free_port();
    let script = r#"LISTEN_FDS=2 exec "$0" serve --listen 127.0.0.1:0 4</dev/null"#;
    let program = ["/bin/sh", "-c", script, env!("CARGO_BIN_EXE_echolab")];
    let mut activated = Activated::start_program(false, &[port], &program);
    let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let status = wait_exit(&mut activated.child, STEP).expect("no exit");
    assert_eq!(status.code(), Some(2), "{:?}", activated.lines());
    let refusal =
        "echolab serve: LISTEN_FDS: descriptor 4 is neither a TCP nor a UDP socket of IPv4 or IPv6";
    assert!(
        eventually(|| activated.has(refusal)),
        "{:?}",
        activated.lines()
    );
}

/// Two TCP sockets passed (two `ListenStream=`): every model serves both, as it serves
/// two --listen addresses (found: every model exited 2, "descriptor 4 is a second TCP
/// socket", and the first connection was reset).
#[test]
fn socket_activation_serves_every_passed_tcp_listener() {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    for model in MODELS {
        if let Some(reason) = unsupported(model) {
            eprintln!("SKIPPED for {model}: {reason}");
            continue;
        }
        let ports = [free_port(), free_port()];
        let mut activated = Activated::start_on(false, &ports, &["--model", model]);
        // The second first: the first connection (to either) starts the server.
        for port in [ports[1], ports[0]] {
            let mut conn = connect(format!("127.0.0.1:{port}").parse().unwrap());
            let message = format!("activated on {port}");
            conn.write_all(message.as_bytes()).unwrap();
            assert_eq!(
                read_n(&mut conn, message.len()),
                message.as_bytes(),
                "{model} {:?}",
                activated.lines()
            );
        }
        for port in ports {
            let listening = format!("listening on 127.0.0.1:{port} (model {model})");
            assert!(
                eventually(|| activated.has(&listening)),
                "{model}: {:?}",
                activated.lines()
            );
        }
        let status = activated.stop();
        assert!(
            status.success(),
            "{model}: {status:?} {:?}",
            activated.lines()
        );
    }
}

/// Starts `echolab serve ARGS` under socket activation, connects to the passed socket,
/// and checks the server refuses: exit 2 and `refusal`, its one line (which may reach the
/// reader after the exit status does).
fn activated_serve_refuses(args: &[&str], refusal: &str) {
    if !have("systemd-socket-activate", "systemd") {
        return;
    }
    let port = free_port();
    let mut activated = Activated::start(false, port, args);
    let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let status = wait_exit(&mut activated.child, STEP).expect("no exit");
    assert_eq!(status.code(), Some(2), "{:?}", activated.lines());
    assert!(
        eventually(|| activated.has(refusal)),
        "{:?}",
        activated.lines()
    );
}

/// Issue 11: several --listen addresses beside a passed socket, which replaces --listen:
/// refused with one line, exit 2 (one --listen is ignored, as before).
#[test]
fn a_passed_socket_with_several_listen_addresses_is_refused() {
    activated_serve_refuses(
        &["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0"],
        "echolab serve: --listen given 2 times: not with the listening socket passed by the service manager (LISTEN_FDS)",
    );
}

/// `--processes` under socket activation: the workers bind --listen, the passed socket
/// is served by nobody (found: connections to the activated port refused, the server on
/// 127.0.0.1:7007 instead). Refused with one line, exit 2. (The refusal itself is
/// matched: the exec line systemd-socket-activate prints also holds "--processes 2".)
#[test]
fn a_passed_socket_with_processes_is_refused() {
    activated_serve_refuses(
        &["--processes", "2", "--listen", "127.0.0.1:0"],
        "echolab serve: --processes 2: not with the listening socket passed by the service manager (LISTEN_FDS)",
    );
}

#[test]
fn sd_notify_says_ready_once_listening_and_stopping_at_shutdown() {
    let dir = std::env::temp_dir().join(format!("echolab-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(STEP)).unwrap();
    let mut command = echolab();
    command.env("NOTIFY_SOCKET", &path);
    let mut server = Server::start_with(command, "event", "127.0.0.1:0", &[]);
    let mut buf = [0u8; 256];
    let len = notify.recv(&mut buf).expect("READY=1 within the step");
    assert_eq!(&buf[..len], b"READY=1\n");
    // Ready means serving.
    one_echo(&server);
    assert!(server.terminate(STEP).unwrap().success());
    let len = notify.recv(&mut buf).expect("STOPPING=1 within the step");
    assert_eq!(&buf[..len], b"STOPPING=1\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--processes`, the supervisor (the service's main pid) says READY=1 once every
/// worker listens and STOPPING=1 once; the workers say nothing (systemd's default
/// NotifyAccess=main ignores them: found, two READY=1 from workers, none from the main pid).
#[test]
fn sd_notify_with_processes_comes_once_from_the_supervisor() {
    let dir = std::env::temp_dir().join(format!("echolab-notify-p-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let notify = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    notify.set_read_timeout(Some(STEP)).unwrap();
    let mut command = echolab();
    command.env("NOTIFY_SOCKET", &path);
    let mut server = Server::start_with(
        command,
        "reactor",
        "127.0.0.1:0",
        &["--processes", "2", "--workers", "1"],
    );
    let mut buf = [0u8; 256];
    let len = notify.recv(&mut buf).expect("READY=1 within the step");
    assert_eq!(&buf[..len], b"READY=1\n");
    one_echo(&server);
    assert!(server.terminate(STEP).unwrap().success());
    // Every process has ended: whatever was sent is queued.
    notify.set_nonblocking(true).unwrap();
    let mut rest = Vec::new();
    while let Ok(len) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    assert_eq!(rest, ["STOPPING=1\n"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_contrib_units_pass_systemd_analyze_verify() {
    if !have("systemd-analyze", "systemd") {
        return;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib");
    let dir = std::env::temp_dir().join(format!("echolab-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The unit names /usr/local/bin/echolab; verify checks that it is executable.
    let service = std::fs::read_to_string(format!("{root}/echolab.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/echolab serve "));
    let service = service.replace("/usr/local/bin/echolab", env!("CARGO_BIN_EXE_echolab"));
    std::fs::write(dir.join("echolab.service"), service).unwrap();
    std::fs::copy(format!("{root}/echolab.socket"), dir.join("echolab.socket")).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("echolab.socket"))
        .arg(dir.join("echolab.service"))
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    // Unknown keys are only warnings: any output is a finding.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn listen_takes_a_host_name() {
    let server = Server::start_with(echolab(), "event", "localhost:0", &[]);
    assert!(
        server.addr.ip().is_loopback() && server.addr.is_ipv4(),
        "{}",
        server.addr
    );
    one_echo(&server);
}

#[test]
fn an_ipv6_listener_takes_ipv4_unless_ipv6_only() {
    // [::ffff:127.0.0.1] is IPv4's loopback as an IPv6 address: an IPv6 listener may bind
    // it only when it takes IPv4 (dual-stack, Linux's default), and then serves IPv4
    // clients of 127.0.0.1 (seen as [::ffff:127.0.0.1] peers).
    let bindv6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").unwrap_or_default();
    if bindv6only.trim() == "1" {
        eprintln!(
            "SKIPPED: net.ipv6.bindv6only = 1 here, so IPv6 listeners are IPv6-only by default"
        );
        return;
    }
    let server = Server::start_with(echolab(), "event", "[::ffff:127.0.0.1]:0", &[]);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    let mut conn = connect(v4);
    conn.write_all(b"dual").unwrap();
    assert_eq!(read_n(&mut conn, 4), b"dual");
    let refused = echolab()
        .args([
            "serve",
            "--model",
            "event",
            "--listen",
            "[::ffff:127.0.0.1]:0",
            "--ipv6-only",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_bounded(refused, STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("echolab serve: cannot bind [::ffff:127.0.0.1]:0"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_listen_address_that_is_no_address_is_one_line_exit_2() {
    for bad in ["localhost", "localhost:99999", "127.0.0.1:7x"] {
        let out = finish_bounded(
            echolab()
                .args(["serve", "--listen", bad])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
            STEP,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&format!("'{bad}'")), "{stderr}");
    }
}

#[test]
fn usr1_reports_a_udp_only_server_too() {
    let mut child = echolab()
        .args([
            "serve",
            "--udp-only",
            "--model",
            "event",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the server running (it holds the test's pipe).
    struct KillOnPanic(i32);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let pid = nix::unistd::Pid::from_raw(self.0);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _guard = KillOnPanic(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let next = |needle: &str| loop {
        let line = rx
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("no line with {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };
    let listening = next("udp listening on ");
    let addr: std::net::SocketAddr = listening.split(' ').nth(3).unwrap().parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(STEP)).unwrap();
    socket.send_to(b"one", addr).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(socket.recv(&mut buf).unwrap(), 3);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // The server counts a datagram echoed once its send returned, and the echo can reach
    // us first: ask again (bounded) while the line still says "0 echoed".
    let deadline = std::time::Instant::now() + STEP;
    let line = loop {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
        let line = next("echolab: stats: ");
        if !line.contains("; udp 1 received, 0 echoed") || std::time::Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(
        line.contains("; udp 1 received, 1 echoed, 0 dropped"),
        "{line}"
    );
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, STEP).expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
}

/// `serve --udp-only --metrics ADDR` served no endpoint and said nothing (the TCP server
/// starts it, and --udp-only starts none): a scraper met a refused connection. It serves
/// the UDP figures like any other server's.
#[test]
fn metrics_of_a_udp_only_server_are_served() {
    let mut child = echolab()
        .args([
            "serve",
            "--udp-only",
            "--model",
            "event",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    struct KillOnDrop(nix::unistd::Pid);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _guard = KillOnDrop(pid);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (mut metrics, mut udp) = (None, None);
    while metrics.is_none() || udp.is_none() {
        let line = rx
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("no metrics and udp lines (metrics {metrics:?})"));
        if let Some(rest) = line.strip_prefix("metrics on http://") {
            metrics = rest.strip_suffix("/metrics").map(|a| a.parse().unwrap());
        }
        if let Some(rest) = line.strip_prefix("udp listening on ") {
            udp = Some(
                rest.split(' ')
                    .next()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
            );
        }
    }
    let (metrics, udp) = (metrics.unwrap(), udp.unwrap());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(STEP)).unwrap();
    socket.send_to(b"one", udp).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(socket.recv(&mut buf).unwrap(), 3);
    let received = "echolab_udp_datagrams_received_total{model=\"event\"}";
    assert!(
        eventually(|| value(&http_get(metrics, "/metrics").1, received) == Some(1.0)),
        "{}",
        http_get(metrics, "/metrics").1
    );
    assert_eq!(http_get(metrics, "/metrics").0, "HTTP/1.0 200 OK");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child, STEP).expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
}
