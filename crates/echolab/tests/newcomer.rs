//! What a newcomer hits trying echolab with fresh eyes, one test per finding; each fails
//! without its fix.

mod support;

use std::process::Stdio;

use support::*;

/// `client --udp --send /dev/zero` read the device into memory until the kernel killed
/// something, and a FIFO waited for a writer forever; TCP client refused /dev/zero but
/// opened a FIFO before asking what it was, and the open waited forever too. Both clients
/// now refuse a file that is not a regular one, through one check: one line, exit 2.
#[test]
fn clients_refuse_to_send_what_is_not_a_regular_file() {
    let dir = std::env::temp_dir().join(format!("echolab-newcomer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A FIFO nobody writes: opening it blocks, so a client that opens it never returns.
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // TCP client connects before it opens the file: it needs a server.
    let server = Server::start("event", &[]);
    let tcp = server.addr.to_string();
    for client in [&["client", "--udp", "127.0.0.1:9"][..], &["client", &tcp]] {
        for path in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
            let out = run_bounded(echolab().args(client).arg("--send").arg(path), STEP);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{client:?}: {stderr}");
            assert_eq!(
                stderr.trim_end(),
                format!(
                    "echolab client: cannot send {}: not a regular file",
                    path.display()
                ),
                "{client:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a warm-up as long as the interval (the defaults: 1 s each), the first progress tick
/// counted from the start landed at the window's opening: `--json-stream`'s first
/// "interval" was the window's first half millisecond (`"secs": 0.0006`, a rate from a
/// handful of messages) and the progress line said "0.0 s measured, 4000 messages/s".
/// Ticks in the window now count from its opening: every interval is about --interval.
#[test]
fn the_first_streamed_interval_is_an_interval_long() {
    let server = Server::start("event", &[]);
    let out = run_bounded(
        echolab()
            .args(["bench", &server.addr.to_string()])
            .args(["--conns", "1", "--warmup", "500ms", "--duration", "1300ms"])
            .args(["--interval", "500ms", "--json-stream"]),
        STEP,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let (_doc, intervals) = lines.split_last().expect("the final document");
    assert!(!intervals.is_empty(), "{stdout}");
    for interval in intervals {
        let secs = interval["secs"].as_f64().unwrap();
        // 0.5 s, with room for a loaded machine's late wake-up.
        assert!((0.4..1.0).contains(&secs), "{interval}");
    }
}

/// Ctrl-C (or SIGTERM) during `echolab lab` killed the lab by the default action, which
/// runs no `Drop`: its children, each in a process group of its own that the terminal's
/// Ctrl-C does not reach, lived on (a `serve` for `backlog`, a child deadlocked on purpose
/// for `signal-handler`, forever). The lab now kills them first and exits 130.
#[test]
fn an_interrupted_lab_leaves_no_child_behind() {
    for signal in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let child = echolab()
            .args(["lab", "backlog", "--trials", "200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lab = child.id() as i32;
        // A child of the lab, alive: the iterative server of a backlog run.
        let mut seen = Vec::new();
        let found = eventually(|| {
            seen = family(lab).into_iter().filter(|&p| p != lab).collect();
            !seen.is_empty()
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(lab), signal).unwrap();
        let out = finish_bounded(child, STEP);
        assert!(found, "the lab started no child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    !stat[stat.rfind(')').unwrap() + 1..]
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        };
        let gone = eventually(|| !seen.iter().any(|&p| alive(p)));
        for &pid in seen.iter().filter(|&&p| alive(p)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        assert!(gone, "{signal}: children {seen:?} outlived the lab");
    }
}
