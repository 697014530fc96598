//! `echolab serve --processes N`: worker processes under a supervisor. A killed worker is
//! replaced, SIGTERM leaves no process behind, the per-worker caps add up to --max-conns.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{echolab, eventually, family, listeners, round_trip, run_bounded, Server};

fn workers(server: &Server) -> Vec<i32> {
    family(server.pid())
        .into_iter()
        .filter(|p| *p != server.pid())
        .collect()
}

fn gone(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn start(model: &str, extra: &[&str]) -> Option<Server> {
    if let Some(reason) = support::unsupported(model) {
        eprintln!("SKIPPED: {model} cannot run here: {reason}");
        return None;
    }
    Some(Server::start(model, extra))
}

#[test]
fn a_killed_worker_is_replaced_and_sigterm_leaves_no_process() {
    for model in ["reactor", "uring"] {
        let Some(mut server) = start(model, &["--processes", "3", "--workers", "1"]) else {
            continue;
        };
        let before = workers(&server);
        assert_eq!(before.len(), 3, "{model}: {before:?}");
        kill(Pid::from_raw(before[0]), Signal::SIGKILL).unwrap();
        server.log.wait_for("restarted as pid", 1);
        let after = workers(&server);
        assert_eq!(after.len(), 3, "{model}: {after:?}");
        assert!(!after.contains(&before[0]), "{model}: {after:?}");
        assert!(gone(before[0]), "{model}: the killed worker was reaped");
        // A killed uring worker's listener stays in the port's SO_REUSEPORT group until
        // the kernel tears its ring down (asynchronously), and connections hashed to it
        // meanwhile are reset: wait until the port has as many listeners as workers.
        let port = server.addr.port();
        assert!(
            eventually(|| listeners(port) == 3),
            "{model}: {} listeners on port {port}",
            listeners(port)
        );
        // Every worker serves: enough connections that each listener gets some.
        for i in 0..30 {
            let echo = std::panic::catch_unwind(|| round_trip(server.addr, b"hello".to_vec()));
            assert!(
                matches!(&echo, Ok(e) if e == b"hello"),
                "{model}: round trip {i}: {:?}\n{}",
                echo.as_ref().ok(),
                server.log.lines().join("\n")
            );
        }
        let status = server
            .terminate(Duration::from_secs(20))
            .expect("the supervisor exits");
        assert!(status.success(), "{model}: {status:?}");
        for pid in after {
            assert!(
                eventually(|| gone(pid)),
                "{model}: worker {pid} outlived the supervisor"
            );
        }
        let log = server.log.lines().join("\n");
        assert!(log.contains("was killed by SIGKILL"), "{log}");
        // The SIGTERM was forwarded: each worker shut down cleanly, none was killed.
        assert_eq!(
            log.matches("exited with status 0").count(),
            3,
            "{model}: {log}"
        );
        assert!(!log.contains("still running after"), "{model}: {log}");
    }
}

#[test]
fn per_worker_caps_add_up_and_limits_are_logged() {
    let Some(server) = start("reactor", &["--processes", "3", "--max-conns", "10"]) else {
        return;
    };
    let lines = server.log.wait_for("--max-conns ", 3);
    let caps: Vec<usize> = lines
        .iter()
        .filter(|l| l.contains("worker ") && l.contains("descriptors"))
        .map(|l| {
            l.rsplit("--max-conns ")
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(caps.len(), 3, "{lines:?}");
    assert_eq!(caps.iter().sum::<usize>(), 10);
    let log = server
        .log
        .wait_for("supervisor: descriptors: soft limit", 1);
    assert!(log[0].contains("hard limit"), "{log:?}");
}

#[test]
fn a_cap_beyond_the_descriptors_is_said_at_start() {
    let Some(server) = start("reactor", &["--processes", "1", "--max-conns", "1048576"]) else {
        return;
    };
    let warning = server
        .log
        .wait_for("is more than 1 process(es) can hold", 1);
    assert!(warning[0].contains("use more --processes"), "{warning:?}");
}

#[test]
fn models_without_workers_and_bad_counts_are_refused() {
    for (args, needle) in [
        (
            &["--model", "thread", "--processes", "2"][..],
            "only reactor and uring",
        ),
        (&["--processes", "0"][..], "--processes"),
        (&["--processes", "100000"][..], "--processes"),
        // A worker whose share is 0 refuses every connection the kernel hashes to it
        // (found: 7 of 40 one-at-a-time connections refused with --max-conns 3).
        (
            &["--processes", "4", "--max-conns", "3"][..],
            "--max-conns 3",
        ),
        // UDP threads exist before the fork: the supervisor could not start a worker;
        // and UDP needs no descriptor per client. The refusal says so.
        (
            &["--processes", "2", "--udp"][..],
            "--udp or --udp-only: one UDP socket serves every client",
        ),
        (
            &["--processes", "2", "--udp-only"][..],
            "does not bind UDP (--workers spreads it",
        ),
        // One endpoint per worker: a fixed port is taken by the first, the others die.
        (
            &["--processes", "2", "--metrics", "127.0.0.1:0"][..],
            "--metrics",
        ),
    ] {
        // Bounded: a combination that is not refused serves until killed.
        let out = run_bounded(
            echolab()
                .arg("serve")
                .args(["--listen", "127.0.0.1:0"])
                .args(args),
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// SIGUSR1 to the supervisor asks every worker for its stats line; before, it ended the
/// whole server (exit 138, the signal's default).
#[test]
fn usr1_to_the_supervisor_reaches_every_worker_and_ends_nothing() {
    let Some(server) = start("reactor", &["--processes", "2", "--workers", "1"]) else {
        return;
    };
    let before = workers(&server);
    assert_eq!(before.len(), 2, "{before:?}");
    kill(Pid::from_raw(server.pid()), Signal::SIGUSR1).unwrap();
    let lines = server.log.wait_for("echolab: stats: ", 2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Whole lines: two processes writing in pieces interleave them.
    for line in &lines {
        assert!(line.starts_with("echolab: stats: up "), "{lines:?}");
        assert!(line.ends_with(" io_error 0)"), "{lines:?}");
    }
    assert_eq!(
        round_trip(server.addr, b"still here".to_vec()),
        b"still here"
    );
    assert!(!gone(server.pid()), "the supervisor ended");
    assert_eq!(workers(&server), before, "a worker was replaced");
}

/// Sockets listening on 127.0.0.2:`port` (the second --listen below), from /proc/net/tcp.
fn listeners_on_127_0_0_2(port: u16) -> usize {
    let local = format!("0200007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "0A"
        })
        .count()
}

/// Issue 11: with --listen given twice, every worker listens on both addresses (its own
/// SO_REUSEPORT listener on each), the supervisor prints one `listening on` line per
/// address, and both echo.
#[test]
fn every_worker_listens_on_every_listen_address() {
    for model in ["reactor", "uring"] {
        let extra = [
            "--processes",
            "2",
            "--workers",
            "1",
            "--listen",
            "127.0.0.2:0",
        ];
        let Some(server) = start(model, &extra) else {
            continue;
        };
        let lines = server.log.wait_for("listening on ", 2);
        let addrs: Vec<std::net::SocketAddr> = lines
            .iter()
            .filter(|l| l.starts_with("listening on "))
            .map(|l| l.split(' ').nth(2).unwrap().parse().unwrap())
            .collect();
        assert_eq!(addrs.len(), 2, "{lines:?}");
        assert!(lines[0].ends_with(&format!("(model {model}, 2 processes)")));
        assert_eq!(addrs[0], server.addr);
        assert_eq!(addrs[1].ip().to_string(), "127.0.0.2");
        assert_eq!(listeners(addrs[0].port()), 2, "{model}: one per worker");
        assert_eq!(listeners_on_127_0_0_2(addrs[1].port()), 2, "{model}");
        for addr in addrs {
            assert_eq!(
                round_trip(addr, b"both".to_vec()),
                b"both",
                "{model} {addr}"
            );
        }
    }
}
