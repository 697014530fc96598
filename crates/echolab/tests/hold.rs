//! `echolab bench --hold` from the outside: idle connections held beside the measured
//! ones, spread over source addresses, and its refusals of impossible plans.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{echolab, finish_bounded, Server};

fn run(args: &[&str]) -> Output {
    let mut command: Command = echolab();
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echolab");
    finish_bounded(child, Duration::from_secs(60))
}

#[test]
fn held_connections_are_verified_spread_and_still_open_after_the_window() {
    let server = Server::start("reactor", &[]);
    let addr = server.addr.to_string();
    let out = run(&[
        "bench",
        &addr,
        "--hold",
        "300",
        "--active",
        "4",
        "--threads",
        "1",
        "--duration",
        "0.5",
        "--warmup",
        "0",
        "--interval",
        "0",
        "--source-ip",
        "127.0.0.2-127.0.0.4",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hold = &doc["hold"];
    assert_eq!(hold["requested"], 300);
    assert_eq!(hold["established"], 300);
    assert_eq!(hold["failed"], 0);
    assert_eq!(hold["still_open"], 300);
    assert!(hold["connect_rate"].as_f64().unwrap() > 0.0);
    assert!(
        doc["messages"].as_u64().unwrap() > 0,
        "the active connections measured"
    );
    assert!(doc["p99_us"].as_f64().unwrap() > 0.0);
    // The server saw 100 connections from each source address.
    let lines = server.log.wait_for("open", 304);
    for src in ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"] {
        let n = lines.iter().filter(|l| l.contains(src)).count();
        assert_eq!(n, 100, "{src}: {n} of\n{}", lines.join("\n"));
    }
}

#[test]
fn impossible_plans_are_one_line_and_exit_2() {
    let cases: [(&[&str], &str); 7] = [
        (
            &["--hold", "10", "--source-ip", "10.0.0.1-10.0.0.5"],
            "outside loopback",
        ),
        (&["--hold", "60000", "--source-ip", "127.0.0.2"], "ports"),
        (&["--hold", "0"], "--hold"),
        (
            &["--hold", "5", "--source-ip", "127.0.0.9-127.0.0.2"],
            "empty range",
        ),
        (&["--hold", "5", "--connect-rate", "-3"], "--connect-rate"),
        // Ten connections at one per 1e10 s: establishing would outlast any run (it
        // waited until killed); more than a day of connects is refused like a --rate
        // that sends nothing in its window.
        (
            &["--hold", "10", "--connect-rate", "1e-10"],
            "--connect-rate 1e-10",
        ),
        (
            &["--hold", "100000", "--connect-rate", "1"],
            "--connect-rate 1.0",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["bench", "127.0.0.1:9"];
        args.extend_from_slice(extra);
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

/// The thresholds judge the active connections' figures beside a hold too: `--hold 3
/// --active 1 --max-p99 1us` exited 0 (the flag was read and ignored), and the JSON
/// carried neither the thresholds nor the provenance. --json-stream, which the hold does
/// not write, and thresholds with nothing measured (--active 0) are refused.
#[test]
fn thresholds_judge_the_active_connections_beside_a_hold() {
    let server = Server::start("reactor", &[]);
    let addr = server.addr.to_string();
    let base = [
        "bench",
        &addr,
        "--hold",
        "3",
        "--active",
        "1",
        "--threads",
        "1",
        "--duration",
        "0.2",
        "--warmup",
        "0",
        "--interval",
        "0",
    ];
    let mut args = base.to_vec();
    args.extend(["--max-p99", "1us", "--json"]);
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(99), "{stderr}");
    assert!(
        stderr.contains("threshold broken: p99 ") && stderr.contains("--max-p99 1us"),
        "{stderr}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["thresholds"]["max_p99"]["passed"], false, "{doc:#}");
    assert_eq!(doc["exit_code"], 99, "{doc:#}");
    assert_eq!(doc["schema_version"], 1, "{doc:#}");
    assert_eq!(doc["hold"]["established"], 3, "{doc:#}");
    // A generous threshold passes, and --hdr-log writes the active connections' log.
    let log = std::env::temp_dir().join(format!("echolab-hold-{}.hlog", std::process::id()));
    let log_arg = log.to_str().unwrap().to_string();
    let mut args = base.to_vec();
    args.extend(["--max-p99", "100s", "--hdr-log", &log_arg]);
    let out = run(&args);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("HISTF"), "{text}");
    let _ = std::fs::remove_file(&log);
    for (extra, needle) in [
        (&["--json-stream"][..], "--json-stream"),
        (&["--active", "0", "--max-p99", "5ms"], "--active 0"),
        (&["--active", "0", "--hdr-log", "x.hlog"], "--active 0"),
    ] {
        let mut args = vec!["bench", "127.0.0.1:9", "--hold", "3"];
        args.extend_from_slice(extra);
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

/// `bench` with its descriptor limit (soft and hard) lowered to `limit`, so that a hold
/// of a few thousand needs several worker processes.
fn limited_bench(limit: u64, args: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command: Command = echolab();
    command
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is one system call, async-signal-safe; nothing is allocated.
    unsafe {
        command.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit)
                .map_err(std::io::Error::from)
        });
    }
    command
}

/// Known truth: 2,000 held and 4 measured connections, where one process may open 1,100
/// descriptors, take two workers (998 + 4 measured, and 1,002); every held connection is
/// established, verified by its echo and still open, and the server saw all 2,004.
#[test]
fn a_hold_past_the_descriptor_limit_is_split_among_workers() {
    let server = Server::start("reactor", &["--max-conns", "5000"]);
    let addr = server.addr.to_string();
    let child = limited_bench(
        1_100,
        &[
            &addr,
            "--hold",
            "2000",
            "--active",
            "4",
            "--threads",
            "1",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--interval",
            "0",
            "--source-ip",
            "127.0.0.2-127.0.0.5",
            "--json",
        ],
    )
    .spawn()
    .expect("spawn echolab bench");
    let out = finish_bounded(child, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("in 2 worker processes"), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hold = &doc["hold"];
    assert_eq!(hold["requested"], 2_000, "{hold:#}");
    assert_eq!(hold["established"], 2_000, "{hold:#}");
    assert_eq!(hold["failed"], 0, "{hold:#}");
    assert_eq!(hold["still_open"], 2_000, "{hold:#}");
    let workers = hold["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{hold:#}");
    assert_eq!(workers[0]["active"], 4);
    for w in workers {
        assert_eq!(w["established"], w["requested"], "{w:#}");
        assert!(w["requested"].as_u64().unwrap() + w["active"].as_u64().unwrap() <= 1_100 - 64);
    }
    assert!(doc["messages"].as_u64().unwrap() > 0, "{doc:#}");
    assert_eq!(doc["exit_code"], 0);
    assert!(doc.get("report_text").is_none());
    // Connection numbers 0..2000 spread as one process would: 500 from each address.
    let lines = server.log.wait_for("open", 2_004);
    for src in ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:", "127.0.0.5:"] {
        let n = lines.iter().filter(|l| l.contains(src)).count();
        assert_eq!(n, 500, "{src}");
    }
    // The text: the sums, a line per worker, then the measured connections' report.
    let child = limited_bench(
        1_100,
        &[
            &addr,
            "--hold",
            "1500",
            "--active",
            "2",
            "--threads",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--interval",
            "0",
        ],
    )
    .spawn()
    .expect("spawn echolab bench");
    let out = finish_bounded(child, Duration::from_secs(90));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!(
            "held 1500 of 1500 connections to {addr} (0 failed)"
        )),
        "{text}"
    );
    assert!(
        text.contains("; 1500 still open after the window; 2 worker processes:\n  worker 0 (pid "),
        "{text}"
    );
    assert!(
        text.contains(" still open, and the 2 measured\n  worker 1 (pid "),
        "{text}"
    );
    assert!(text.contains("messages/s: "), "{text}");
}

/// Sends SIGTERM (twice: the second ends it at once) to a bench still running when the
/// test that started it panics, so that it and its workers do not hold for the hour asked.
struct TermOnPanic(i32);

impl Drop for TermOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for _ in 0..2 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.0),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}

/// The stderr lines of `child`, over a channel.
fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Waits (at most [`support::STEP`]) for a line starting with `prefix`; returns every
/// line up to it, in order.
fn lines_until(rx: &std::sync::mpsc::Receiver<String>, prefix: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + support::STEP;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("no line {prefix:?} in\n{}", seen.join("\n"));
        };
        let done = line.starts_with(prefix);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

/// `bench ADDR --hold 1000 --active 0 --duration 1h --json` under a 600-descriptor
/// limit, so split between two workers that hold their shares idle until the test ends
/// the window; with a guard that stops it if the test fails, and its stderr lines.
fn split_hour_hold(
    addr: &str,
) -> (
    std::process::Child,
    TermOnPanic,
    std::sync::mpsc::Receiver<String>,
) {
    let args = [addr, "--hold", "1000", "--active", "0"];
    let mut child = limited_bench(600, &args)
        .args(["--duration", "1h", "--json"])
        .spawn()
        .expect("spawn echolab bench");
    let guard = TermOnPanic(child.id() as i32);
    let rx = stderr_lines(&mut child);
    (child, guard, rx)
}

/// SIGTERM to a bench whose workers hold their shares idle ends the window at once (it
/// waited out the whole --duration: the workers, blocked reading their stdin, never saw
/// the signal's flag): every worker reports, exit 130, every connection still held.
#[test]
fn sigterm_ends_the_workers_window_and_every_worker_reports() {
    let server = Server::start("reactor", &["--max-conns", "5000"]);
    let addr = server.addr.to_string();
    let (child, _guard, rx) = split_hour_hold(&addr);
    lines_until(&rx, "held by 2 of 2 workers");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = finish_bounded(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hold = &doc["hold"];
    assert_eq!(hold["established"], 1_000, "{hold:#}");
    assert_eq!(hold["still_open"], 1_000, "{hold:#}");
    assert_eq!(hold["failed"], 0, "{hold:#}");
    assert_eq!(doc["interrupted"], true, "{doc:#}");
    assert_eq!(hold["workers"].as_array().unwrap().len(), 2, "{hold:#}");
}

/// A worker killed while it holds its share (in the window) is reported by pid and
/// signal, its share counted as failed (worker_died), not as held; the run ends at once
/// with exit 1, not after its hour-long --duration.
#[test]
fn a_dead_hold_worker_is_reported_not_counted() {
    let server = Server::start("reactor", &["--max-conns", "5000"]);
    let addr = server.addr.to_string();
    let (child, _guard, rx) = split_hour_hold(&addr);
    // "hold worker 1 (pid P): connections ...", then, once both hold their share, "held
    // by 2 of 2 workers": the worker is killed in the window, holding its connections.
    let seen = lines_until(&rx, "held by 2 of 2 workers");
    let victim: i32 = seen
        .iter()
        .find_map(|l| l.strip_prefix("hold worker 1 (pid "))
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid of worker 1 in\n{}", seen.join("\n")));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = finish_bounded(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hold = &doc["hold"];
    let workers = hold["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{hold:#}");
    let dead = &workers[1];
    assert_eq!(dead["pid"], victim);
    assert!(
        dead["died"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{hold:#}"
    );
    let share = dead["requested"].as_u64().unwrap();
    assert_eq!(hold["failed_by_kind"]["worker_died"], share, "{hold:#}");
    assert_eq!(
        hold["established"].as_u64().unwrap(),
        workers[0]["established"].as_u64().unwrap(),
        "{hold:#}"
    );
    assert!(hold["established"].as_u64().unwrap() <= 1_000 - share);
    assert_eq!(doc["exit_code"], 1);
}

/// A bench supervisor killed outright (SIGKILL: it cannot forward anything) takes its
/// hold workers with it, even while they are still connecting and read nothing from it
/// (a worker notices its supervisor's end on its stdin only once it holds its share):
/// the kernel's parent-death signal ends each, so none is left behind, connecting or
/// starting workers of its own. The listener here never accepts, so the workers stay in
/// their connects (SYNs past its backlog retried for minutes) until they are killed.
#[test]
fn hold_workers_die_with_a_killed_supervisor() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut child = limited_bench(
        600,
        &[
            &addr,
            "--hold",
            "1000",
            "--active",
            "0",
            "--connect-timeout",
            "1h",
            "--duration",
            "1h",
        ],
    )
    .spawn()
    .expect("spawn echolab bench");
    let _guard = TermOnPanic(child.id() as i32);
    let rx = stderr_lines(&mut child);
    let seen = lines_until(&rx, "hold worker 1 (pid ");
    let pids: Vec<i32> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("hold worker "))
        .filter_map(|rest| rest.split("(pid ").nth(1))
        .filter_map(|rest| rest.split(')').next())
        .filter_map(|pid| pid.parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "worker pids in\n{}", seen.join("\n"));
    child.kill().unwrap();
    child.wait().unwrap();
    // A worker is gone once its /proc entry is gone or a zombie (its new parent reaps it).
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z')
            })
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + support::STEP;
    while pids.iter().any(|&pid| alive(pid)) {
        if std::time::Instant::now() >= deadline {
            for &pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            panic!("hold workers {pids:?} outlived their killed supervisor");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(silent);
}

/// A split the supervisor itself cannot hold (two pipes per worker within its own
/// descriptor limit) is refused before any worker starts, one line, exit 2: 100
/// descriptors leave 36 per worker, so 1,000 need 28 workers, and 56 pipes do not fit
/// in 36.
#[test]
fn a_split_past_the_supervisors_own_descriptors_is_refused() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let child = limited_bench(100, &[&addr, "--hold", "1000", "--active", "0"])
        .spawn()
        .expect("spawn echolab bench");
    let out = finish_bounded(child, support::STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs 28 worker processes"), "{stderr}");
}

/// A hold stopped while it still connects (a listener whose queue is full) is an
/// interrupted run: exit 130, not 1 for the connections it did not get to hold.
#[test]
fn a_hold_stopped_while_connecting_exits_130() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut child = echolab()
        .args([
            "bench",
            &addr,
            "--hold",
            "400",
            "--active",
            "0",
            "--connect-timeout",
            "60s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = TermOnPanic(child.id() as i32);
    // One accepted connection (bounded wait): the bench connects, its handlers are in.
    let _first = support::accept_bounded(&silent);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.stdin.take();
    let out = finish_bounded(child, support::STEP);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
}

/// A stop signal while the hold workers are still starting (injected right after the
/// first starts: a Ctrl-C's moment is not a test's to pick) interrupts the workers that
/// started and starts no more: exit 130, no worker counted as died. The forwarded SIGTERM
/// reached a worker before its handlers were in and killed it, which read as a worker
/// that died, exit 1.
#[test]
fn a_hold_stopped_while_its_workers_start_exits_130() {
    let server = Server::start("reactor", &["--max-conns", "5000"]);
    let addr = server.addr.to_string();
    let mut command = limited_bench(
        600,
        &[
            &addr,
            "--hold",
            "1000",
            "--active",
            "2",
            "--duration",
            "1h",
            "--json",
        ],
    );
    command.env("ECHOLAB_FAULT_BENCH", "hold-stop=0");
    let child = command.spawn().expect("spawn echolab bench");
    let _guard = TermOnPanic(child.id() as i32);
    let out = finish_bounded(child, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hold = &doc["hold"];
    assert_eq!(doc["exit_code"], 130, "{doc:#}");
    assert_eq!(hold["interrupted"], true, "{hold:#}");
    assert_eq!(hold["failed_by_kind"].get("worker_died"), None, "{hold:#}");
    let workers = hold["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{hold:#}");
    assert!(workers[0]["pid"].is_u64(), "{hold:#}");
    assert_eq!(workers[0]["died"], Value::Null, "{hold:#}");
    assert_eq!(workers[1]["pid"], Value::Null, "{hold:#}");
    assert_eq!(workers[1]["established"], 0, "{hold:#}");
}
