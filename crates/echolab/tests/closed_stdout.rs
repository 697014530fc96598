//! A reader that leaves early (`echolab bench ... | head -3`, `echolab serve --help | head
//! -1`): Rust ignores SIGPIPE, so `println!` to the closed pipe panicked ("failed printing
//! to stdout: Broken pipe", exit 101), a client said "cannot write to stdout" and exited
//! 1, and `bench --json-stream` measured on for its whole --duration with nobody reading.
//! Every command now ends quietly with 141 (128 + SIGPIPE, what a shell reports for a
//! tool killed by the closed pipe), and a running one stops its work first. Output lost
//! to a full disk is said and exits 1.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use support::*;

/// 128 + SIGPIPE: `echolab_cli::STDOUT_CLOSED`.
const STDOUT_CLOSED: i32 = 141;

/// Runs `command` with stdout a pipe whose reader has already left, stdin `input`;
/// asserts it ends within [`STEP`] with 141 and without a panic or a complaint about
/// stdout on stderr. Returns how long it took.
fn ends_quietly(mut command: Command, input: Stdio, what: &str) -> std::time::Duration {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    drop(read_end);
    let started = Instant::now();
    let child = command
        .stdin(input)
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_bounded(child, STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(STDOUT_CLOSED), "{what}: {stderr}");
    for word in ["panicked", "Broken pipe", "broken pipe", "cannot write"] {
        assert!(!stderr.contains(word), "{what}: {word:?} in {stderr}");
    }
    started.elapsed()
}

fn echolab_with(args: &[&str]) -> Command {
    let mut command = echolab();
    command.args(args);
    command
}

#[test]
fn help_man_and_lab_end_quietly_when_stdout_is_closed() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["serve", "--help"],
        &["bench", "--udp", "--help"],
        &["man"],
        &["completions", "bash"],
        &["lab", "list"],
        &["lab", "progress-graph", "--trials", "1"],
        &["lab", "progress-graph", "--trials", "1", "--json"],
    ] {
        ends_quietly(echolab_with(args), Stdio::null(), &format!("{args:?}"));
    }
}

#[test]
fn bench_and_client_end_quietly_when_stdout_is_closed() {
    let server = Server::start("event", &["--udp"]);
    let addr = server.addr.to_string();
    let addr = addr.as_str();
    for args in [
        &["bench", addr, "--duration", "200ms", "--conns", "1"][..],
        &[
            "bench",
            addr,
            "--duration",
            "200ms",
            "--conns",
            "1",
            "--json",
        ],
        &["bench", addr, "--duration", "200ms", "--hold", "2"],
        &[
            "bench",
            "--udp",
            addr,
            "--duration",
            "200ms",
            "--conns",
            "1",
        ],
        &["bench", "--udp", addr, "--duration", "200ms", "--json"],
    ] {
        ends_quietly(echolab_with(args), Stdio::null(), &format!("{args:?}"));
    }
    // The echoes of stdin, for nobody: the session ends at the first one.
    let dir = std::env::temp_dir().join(format!("echolab-closed-stdout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("input");
    std::fs::File::create(&input)
        .unwrap()
        .write_all(b"one\ntwo\nthree\n")
        .unwrap();
    let send = input.to_str().unwrap();
    for args in [
        &["client", addr][..],
        &["client", "--udp", addr],
        &["client", addr, "--send", send],
    ] {
        let stdin = Stdio::from(std::fs::File::open(&input).unwrap());
        ends_quietly(echolab_with(args), stdin, &format!("{args:?}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench --json-stream | head -3`: the bench stops at the first object nobody reads,
/// not at the end of its minute.
#[test]
fn a_streaming_bench_stops_when_its_reader_leaves() {
    let server = Server::start("event", &[]);
    let addr = server.addr.to_string();
    let took = ends_quietly(
        echolab_with(&[
            "bench",
            &addr,
            "--duration",
            "60s",
            "--conns",
            "1",
            "--json-stream",
            "--interval",
            "100ms",
        ]),
        Stdio::null(),
        "bench --json-stream",
    );
    // finish_bounded already bounds it by STEP (20 s), a third of the window.
    assert!(took < STEP, "took {took:?}");
}

/// `echolab bench --json > results.json` on a full disk exited 0 with the results lost
/// and not a word (`--help` already said it and exited 1): output that stdout did not take
/// now turns a success into one line and exit 1.
#[test]
fn output_lost_to_a_full_disk_is_an_error() {
    let server = Server::start("event", &["--udp"]);
    let addr = server.addr.to_string();
    let addr = addr.as_str();
    for args in [
        &[
            "bench",
            addr,
            "--duration",
            "200ms",
            "--warmup",
            "0",
            "--json",
        ][..],
        &["bench", addr, "--duration", "200ms", "--warmup", "0"],
        &["bench", "--udp", addr, "--duration", "200ms"],
        &["lab", "list"],
        &["lab", "progress-graph", "--trials", "1"],
    ] {
        let out = run_with_stdout_full(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr
                .lines()
                .last()
                .is_some_and(|l| l == "echolab: cannot write to stdout: no space left on device"),
            "{args:?}: {stderr}"
        );
    }
}
