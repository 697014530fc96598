//! `echolab bench` and `echolab compare` from the outside: the built binary against the
//! `event` model and against small misbehaving servers written here. Every run is bounded
//! by a watchdog that kills it, and every server is stopped when its test ends.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{echolab, finish_bounded, Server};

/// Runs `command` to completion, killing it if it takes longer than `limit`.
fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echolab");
    finish_bounded(child, limit)
}

fn bench(addr: SocketAddr, extra: &[&str]) -> Output {
    let mut command = echolab();
    command
        .arg("bench")
        .arg(addr.to_string())
        .args(["--interval", "0"])
        .args(extra);
    run_bounded(command, Duration::from_secs(60))
}

fn json_of(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "bench printed no JSON ({err}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn number(doc: &Value, key: &str) -> f64 {
    doc[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key:?} in {doc:#}"))
}

#[test]
fn a_second_against_the_event_model_gives_the_contracted_json() {
    let server = Server::start("event", &["--quiet"]);
    let output = bench(
        server.addr,
        &[
            "--conns",
            "8",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--threads",
            "2",
            "--json",
        ],
    );
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc = json_of(&output);
    for key in [
        "messages_per_sec",
        "mb_per_sec",
        "p50_us",
        "p99_us",
        "p999_us",
        "errors",
    ] {
        assert!(
            doc[key].is_number(),
            "top-level key {key:?} missing: {doc:#}"
        );
    }
    assert!(number(&doc, "messages_per_sec") > 100.0, "{doc:#}");
    assert!(number(&doc, "mb_per_sec") > 0.0);
    assert_eq!(number(&doc, "errors"), 0.0);
    let (p50, p99, p999) = (
        number(&doc, "p50_us"),
        number(&doc, "p99_us"),
        number(&doc, "p999_us"),
    );
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= p999,
        "percentiles out of order: {p50} {p99} {p999}"
    );
    assert_eq!(doc["config"]["conns"], 8);
    assert_eq!(doc["config"]["size"], 64);
    assert_eq!(doc["conns_echoed"], 8);
    // The measured window excludes the warm-up.
    let seconds = number(&doc, "seconds");
    assert!((0.9..1.5).contains(&seconds), "measured {seconds} s");
}

#[test]
fn open_loop_and_churn_run_against_the_event_model() {
    let server = Server::start("event", &["--quiet"]);
    let output = bench(
        server.addr,
        &[
            "--conns",
            "4",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--rate",
            "2000",
            "--json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc = json_of(&output);
    assert_eq!(doc["workload"], "open");
    // The schedule sends 2000/s: over 0.5 s about 1000 messages, whatever the server's speed.
    let sent = number(&doc, "messages");
    assert!(
        (800.0..=1100.0).contains(&sent),
        "open loop completed {sent} messages"
    );

    let output = bench(
        server.addr,
        &[
            "--conns",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--churn",
            "--json",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc = json_of(&output);
    assert_eq!(doc["workload"], "churn");
    assert!(number(&doc, "connections_per_sec") > 10.0, "{doc:#}");
    assert!(doc["connect_latency"]["p50_us"].as_f64().unwrap() > 0.0);
}

/// A server that echoes faithfully except that it flips the byte at stream offset
/// `corrupt_at` of its one connection.
fn corrupting_server(corrupt_at: u64) -> (SocketAddr, thread::JoinHandle<()>, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = listener.try_clone().unwrap();
    let handle = thread::spawn(move || {
        let Ok((mut conn, _)) = accept.accept() else {
            return;
        };
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut pos = 0u64;
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            if (pos..pos + n as u64).contains(&corrupt_at) {
                buf[(corrupt_at - pos) as usize] ^= 0x55;
            }
            pos += n as u64;
            if conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    (addr, handle, listener)
}

#[test]
fn a_corrupted_byte_is_a_mismatch_with_its_offset_and_a_failure() {
    let (addr, server, listener) = corrupting_server(1_000);
    let output = bench(
        addr,
        &["--conns", "1", "--duration", "5", "--warmup", "0", "--json"],
    );
    // Wake the accept if bench never connected, so the server thread always ends.
    let _ = TcpStream::connect(listener.local_addr().unwrap());
    server.join().unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc = json_of(&output);
    assert_eq!(doc["errors_by_kind"]["mismatch"], 1, "{doc:#}");
    assert_eq!(doc["first_mismatch"]["offset"], 1_000, "{doc:#}");
    assert_eq!(doc["first_mismatch"]["conn_idx"], 0);
    let (expected, got) = (
        &doc["first_mismatch"]["expected"],
        &doc["first_mismatch"]["got"],
    );
    assert_eq!(expected.as_u64().unwrap() ^ 0x55, got.as_u64().unwrap());
    // The only connection is dead, so the run ends at once rather than after 5 s.
    assert!(number(&doc, "seconds") < 4.0);
}

#[test]
fn an_unreachable_server_is_a_one_line_error() {
    // A port nobody listens on: bind one, then free it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let output = bench(addr, &["--conns", "4", "--duration", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.contains(&addr.to_string()) && stderr.contains("refused"),
        "stderr: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn bad_values_are_named() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (args, needle) in [
        (&["--size", "0"][..], "--size"),
        (&["--conns", "none"][..], "none"),
        (&["--churn", "--rate", "10"][..], "--churn"),
        // Negative numbers reach the value's own check, which names them (clap alone
        // took them for unknown flags).
        (&["--rate", "-5"][..], "\"-5\""),
        (&["--warmup", "-1"][..], "\"-1\""),
    ] {
        let output = bench(addr, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_server_that_echoes_nothing_is_a_failure_with_a_hint() {
    // Bytes-mode messages to a lines-mode server: it accepts, buffers, and waits for a
    // newline that never comes. Nothing fails, yet nothing was measured: exit 1, and say
    // why instead of printing a clean run of zeros.
    let server = Server::start("event", &["--mode", "lines"]);
    let output = bench(
        server.addr,
        &["--conns", "2", "--duration", "0.5", "--warmup", "0"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("try --lines"), "{stdout}");
    let output = bench(
        server.addr,
        &[
            "--conns",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--json",
        ],
    );
    let doc = json_of(&output);
    assert_eq!(doc["nothing_echoed"], true, "{doc:#}");
    assert_eq!(doc["errors"], 0, "{doc:#}");
    // With --lines the same server is measured cleanly.
    let output = bench(
        server.addr,
        &[
            "--conns",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--lines",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(json_of(&output)["nothing_echoed"], false);
}

#[test]
fn connections_an_iterative_server_leaves_waiting_are_named() {
    // The iterative model serves one client at a time: of 3 connections, at least 2 wait
    // the whole run. The run still measures the one served; the summary says why the
    // others got nothing.
    let server = Server::start("iterative", &[]);
    let output = bench(
        server.addr,
        &[
            "--conns",
            "3",
            "--threads",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("got no echo at all"), "{stdout}");
}

/// Waits for a line containing `needle` on a child's stderr, with a deadline.
fn wait_for_line(
    child: &mut Child,
    needle: &'static str,
    limit: Duration,
) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return rx,
            Ok(_) => {}
            Err(_) => panic!("no stderr line containing {needle:?} within {limit:?}"),
        }
    }
}

#[test]
fn a_server_that_dies_mid_run_ends_it_with_a_summary_and_a_failure() {
    let mut server = Server::start("event", &["--quiet"]);
    let mut command = echolab();
    command
        .arg("bench")
        .arg(server.addr.to_string())
        .args([
            "--conns",
            "4",
            "--duration",
            "30",
            "--warmup",
            "0",
            "--interval",
            "0.1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    // The first progress line proves the load is running; then the server goes.
    let _lines = wait_for_line(&mut child, "measured", Duration::from_secs(20));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pid = child.id() as i32;
    let watchdog = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(Duration::from_secs(20))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let output = child.wait_with_output().unwrap();
    drop(done_tx);
    watchdog.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("messages/s"), "no summary: {stdout}");
    assert!(stdout.contains("stopped or crashed"), "summary: {stdout}");
}

#[test]
fn compare_quick_writes_results_that_parse() {
    let out = std::env::temp_dir().join(format!("echolab-compare-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut command = echolab();
    // iterative: the model that serialises clients; event: a normal one; uring: may or may
    // not start on this machine, and compare must carry on either way.
    command
        .args([
            "compare",
            "--quick",
            "--models",
            "iterative,event,uring",
            "--out",
        ])
        .arg(&out);
    let output = run_bounded(command, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "compare failed: {stderr}");
    assert!(
        stderr.contains("results.json"),
        "compare did not say where the files are: {stderr}"
    );

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let models = results["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    for model in models {
        assert!(
            model["addr"].is_string() != model["error"].is_string(),
            "{model:#}"
        );
    }
    let workloads = results["workloads"].as_array().unwrap();
    assert!(!workloads.is_empty());
    for workload in workloads {
        let event = &workload["models"]["event"];
        assert!(
            event["median"]["messages_per_sec"].as_f64().unwrap() > 0.0,
            "{workload:#}"
        );
        let iterative = &workload["models"]["iterative"];
        let conns = workload["workload"]["conns"].as_u64().unwrap();
        let churn = workload["workload"]["churn"].as_bool().unwrap();
        // The iterative model is never loaded with connections it would leave waiting.
        assert_eq!(
            iterative["skipped"].is_string(),
            conns > 1 && !churn,
            "{workload:#}"
        );
    }
    // Every run started on a server at rest: the previous run's connections had closed.
    for workload in workloads {
        for (model, runs) in workload["models"].as_object().unwrap() {
            for run in runs["runs"].as_array().into_iter().flatten() {
                assert_eq!(run["leftover_conns"], 0, "{model}: {run:#}");
                assert_eq!(run["leftover_children"], 0, "{model}: {run:#}");
                assert!(run["settle_ms"].as_f64().unwrap() < 2_000.0, "{run:#}");
            }
        }
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| event |"), "{summary}");
    assert!(summary.contains("serialises clients"), "{summary}");
    for chart in [
        "throughput_vs_conns.svg",
        "latency_percentiles.svg",
        "memory_per_idle_conn.svg",
    ] {
        let svg = std::fs::read_to_string(out.join(chart)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart} is not an SVG"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
