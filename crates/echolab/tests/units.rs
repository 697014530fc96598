//! Flag values with units, at the binary: every subcommand takes durations, sizes, counts
//! and addresses through one parser (echolab-cli's `units`), so a bad value gets the same
//! kind of line everywhere: one line on stderr naming the flag and the value, exit 2.

mod support;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{connect, echolab, finish_bounded, Server, STEP};

/// Runs `echolab ARGS`, which must refuse a value: exit 2, one line on stderr naming
/// `flag` and `value`. Returns that line.
fn refused(args: &[&str], flag: &str, value: &str) -> String {
    let child = echolab()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?}: one line, got:\n{stderr}"
    );
    assert!(
        // clap's "invalid value 'V' for '--FLAG <..>'", or a later check's "--FLAG V".
        stderr.contains(&format!("'{value}'")) && stderr.contains(flag)
            || stderr.contains(&format!("{flag} {value}")),
        "{args:?}: {stderr:?} names not both {flag} and {value}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// Each subcommand's flags of each kind, each given the absurd values of the project's
/// rules (0, 1e-10, 2^64-1, negative, garbage) where they are out of its range.
#[test]
fn every_subcommand_refuses_bad_values_in_one_line() {
    const ABSURD: [&str; 5] = [
        "1e-10",
        "18446744073709551615",
        "-1",
        "garbage",
        "5 furlongs",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["serve", "--listen", "127.0.0.1:0"], "--idle-timeout"),
        (&["serve", "--listen", "127.0.0.1:0"], "--max-line"),
        (&["serve", "--listen", "127.0.0.1:0"], "--max-conns"),
        (&["serve", "--listen", "127.0.0.1:0"], "--workers"),
        (&["client", "127.0.0.1:9"], "--timeout"),
        (&["bench", "127.0.0.1:9"], "--duration"),
        (&["bench", "127.0.0.1:9"], "--warmup"),
        (&["bench", "127.0.0.1:9"], "--size"),
        (&["bench", "127.0.0.1:9"], "--interval"),
        (&["bench", "127.0.0.1:9"], "--timeout"),
        (&["bench", "127.0.0.1:9"], "--connect-timeout"),
        (&["bench", "127.0.0.1:9"], "--starve-after"),
        (&["bench", "127.0.0.1:9"], "--conns"),
        (&["bench", "127.0.0.1:9"], "--max-errors"),
        (&["bench", "--udp", "127.0.0.1:9"], "--duration"),
        (&["bench", "--udp", "127.0.0.1:9"], "--size"),
        (&["bench", "--udp", "127.0.0.1:9"], "--timeout"),
        (&["bench", "--udp", "127.0.0.1:9"], "--conns"),
        (&["bench", "--udp", "127.0.0.1:9"], "--interval"),
        (&["client", "--udp", "127.0.0.1:9"], "--size"),
        (&["client", "--udp", "127.0.0.1:9"], "--timeout"),
        (&["compare"], "--repeats"),
        (&["lab", "counter"], "--timeout"),
        (&["lab", "counter"], "--trials"),
    ];
    for (command, flag) in cases {
        for value in ABSURD {
            // 1e-10 and 2^64-1 are refused by range or grammar alike; 0 below.
            let mut args = command.to_vec();
            args.extend([*flag, value]);
            refused(&args, flag, value);
        }
    }
    // 0 is out of range for every flag but those where it means none or never.
    for (command, flag) in cases {
        if ["--idle-timeout", "--warmup", "--interval", "--max-errors"].contains(flag) {
            continue;
        }
        let mut args = command.to_vec();
        args.extend([*flag, "0"]);
        refused(&args, flag, "0");
    }
}

/// One address parser: `127.0.0.1:99999` gets the same words from serve, client, bench
/// and their UDP forms (it got two different messages before).
#[test]
fn a_port_out_of_range_gets_one_message_everywhere() {
    let bad = "127.0.0.1:99999";
    let lines: Vec<String> = [
        &["serve", "--listen", bad][..],
        &["client", bad],
        &["bench", bad],
        &["bench", "--udp", bad],
        &["client", "--udp", bad],
    ]
    .iter()
    .map(|args| refused(args, "", bad))
    .collect();
    for line in &lines {
        // What follows "for '--listen <LISTEN>'" or "for '<ADDR>'" is the parser's own.
        let (_, reason) = line.rsplit_once("': ").unwrap();
        assert_eq!(reason.trim(), "port out of range (0 to 65535)", "{line}");
    }
    let line = refused(&["bench", "localhost"], "", "localhost");
    assert!(line.contains("not an address with a port"), "{line}");
}

/// `--idle-timeout 0.5` said "invalid digit found in string"; it is now half a second,
/// and a silent connection is closed after it (well before the default 300 s).
#[test]
fn a_fractional_idle_timeout_is_taken_and_kept() {
    let server = Server::start("event", &["--idle-timeout", "0.5"]);
    // Timed from before the connect: the server's idle clock starts at its accept, which
    // comes after (timed from after, a test thread descheduled between the connect and
    // reading the clock saw the close come "early").
    let started = Instant::now();
    let mut conn = connect(server.addr);
    conn.set_read_timeout(Some(STEP)).unwrap();
    let mut buf = [0u8; 1];
    let n = conn.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "end of file after the idle timeout");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(10),
        "closed after {waited:?}, not about 0.5 s"
    );
    drop(server);
    // And the same in milliseconds.
    let server = Server::start("thread", &["--idle-timeout", "300ms"]);
    let mut conn = connect(server.addr);
    conn.set_read_timeout(Some(STEP)).unwrap();
    assert_eq!(conn.read(&mut buf).unwrap_or(0), 0);
}

/// `bench --udp --interval 500ms` said "not a number of seconds": UDP's progress interval
/// is a duration with a unit like every other (and TCP bench's own --interval).
#[test]
fn the_udp_bench_interval_takes_units() {
    let server = Server::start("reactor", &["--udp"]);
    let addr = server.addr.to_string();
    let child = echolab()
        .args([
            "bench",
            "--udp",
            &addr,
            "--conns",
            "1",
            "--duration",
            "300ms",
        ])
        .args(["--interval", "100ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(" measured, "), "progress lines: {stderr}");
    let line = refused(
        &["bench", "--udp", "127.0.0.1:9", "--interval", "50ms"],
        "--interval",
        "50ms",
    );
    assert!(line.contains("100ms"), "{line}");
}

/// `serve --listen -1` said "unexpected argument '-1' found", naming no flag: a negative
/// number is a value of every flag that takes one, refused by its own parser.
#[test]
fn a_negative_number_is_refused_by_the_flag_it_was_given_to() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve"], "--listen"),
        (&["serve"], "--metrics"),
        (&["serve"], "--long-line"),
        (&["serve", "--udp"], "--udp-rate-per-source"),
        (&["compare"], "--models"),
        (&["lab", "counter"], "--cpus"),
    ];
    for (command, flag) in cases {
        let mut args = command.to_vec();
        args.extend([*flag, "-1"]);
        refused(&args, flag, "-1");
    }
    // --source-ip's own parser names the flag and quotes the value ("-1").
    let child = echolab()
        .args(["bench", "127.0.0.1:9", "--hold", "3", "--source-ip", "-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = finish_bounded(child, STEP);
    let line = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains("--source-ip: ") && line.contains("\"-1\""),
        "{line}"
    );
}

/// compare's list and folder flags: a model named twice ran twice under one name (two
/// rows, one label), and a --ref-dir without the reference servers (a typo) ran none
/// without a word. Both are refused before anything is created: one line, exit 2.
#[test]
fn compare_refuses_a_model_named_twice_and_an_empty_ref_dir() {
    let out = std::env::temp_dir().join(format!("echolab-compare-refused-{}", std::process::id()));
    let out_arg = out.to_str().unwrap();
    refused(
        &[
            "compare",
            "--models",
            "event,reactor,event",
            "--out",
            out_arg,
        ],
        "--models",
        "event,reactor,event",
    );
    let empty = std::env::temp_dir().join(format!("echolab-no-refs-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let empty_arg = empty.to_str().unwrap();
    let line = refused(
        &["compare", "--ref-dir", empty_arg, "--out", out_arg],
        "--ref-dir",
        empty_arg,
    );
    assert!(line.contains("ref_epoll"), "{line}");
    assert!(
        !out.exists(),
        "{} was created for a refused run",
        out.display()
    );
    let _ = std::fs::remove_dir(&empty);
}

/// `serve --udp-only` ignored the TCP server's flags without a word (`--mode lines` did
/// not make UDP echo lines, `--max-conns 5` capped nothing): each is refused, one line
/// naming it, exit 2.
#[test]
fn udp_only_refuses_the_flags_only_tcp_reads() {
    for (flag, value) in [
        ("--max-conns", "5"),
        ("--max-conns-per-ip", "2"),
        ("--mode", "lines"),
        // Flags with a default: refused when given, even at their default value.
        ("--idle-timeout", "5s"),
        ("--long-line", "close"),
        ("--long-line", "split"),
        ("--max-line", "8K"),
        ("--max-line", "100"),
    ] {
        refused(
            &[
                "serve",
                "--udp-only",
                "--listen",
                "127.0.0.1:0",
                flag,
                value,
            ],
            flag,
            value,
        );
    }
    // --ipv6-only applies to UDP too, so with no IPv6 address it would do nothing.
    let child = echolab()
        .args([
            "serve",
            "--udp-only",
            "--listen",
            "127.0.0.1:0",
            "--ipv6-only",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--ipv6-only: the --listen address is not IPv6 (127.0.0.1:0)"),
        "{stderr}"
    );
}

/// An IPv6 scope id by interface name (`[::1%lo]:PORT`) was refused as "cannot resolve
/// host": serve listens on it and client connects to it; an unknown name is one line.
#[test]
fn an_ipv6_scope_id_may_name_its_interface() {
    refused(
        &["client", "[fe80::1%nosuch0]:7"],
        "no network interface \"nosuch0\"",
        "[fe80::1%nosuch0]:7",
    );
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED an_ipv6_scope_id_may_name_its_interface: no IPv6 loopback here");
        return;
    }
    let server = Server::start_with(echolab(), "event", "[::1%lo]:0", &[]);
    let mut child = echolab()
        .args(["client", &format!("[::1%lo]:{}", server.addr.port())])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A line closes stdin on drop: the client sends it, reads its echo and exits.
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"scoped\n").unwrap();
    let output = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(output.stdout, b"scoped\n", "{stderr}");
}
