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
