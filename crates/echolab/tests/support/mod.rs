//! Test support: runs `echolab serve` as a child process (never inside the multi-threaded
//! test harness: the process model forks) and reads what it says and what it holds.
#![allow(dead_code)] // Each test binary uses a different part of the support module.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest any single step of a test may wait. Generous: CI shares two cores.
pub const STEP: Duration = Duration::from_secs(20);

/// The built binary.
pub fn echolab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_echolab"))
}

/// A running `echolab serve`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Log>,
}

/// Every line the server wrote on stderr, with a way to wait for one.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    closed: Mutex<bool>,
}

impl Log {
    /// A copy of the lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `count` lines contain `needle`; panics after [`STEP`].
    pub fn wait_for(&self, needle: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + STEP;
        let mut lines = self.lines.lock().unwrap();
        loop {
            let matching: Vec<String> = lines
                .iter()
                .filter(|l| l.contains(needle))
                .cloned()
                .collect();
            if matching.len() >= count {
                return matching;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {count} log lines containing {needle:?}; log so far:\n{}",
                lines.join("\n")
            );
            lines = self.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The index of the first line containing `needle`.
    pub fn position(&self, needle: &str) -> Option<usize> {
        self.lines().iter().position(|l| l.contains(needle))
    }

    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }
}

impl Server {
    /// Starts `echolab serve --model MODEL --listen 127.0.0.1:0 EXTRA...` and waits for
    /// its `listening on` line.
    pub fn start(model: &str, extra: &[&str]) -> Server {
        Server::start_with(echolab(), model, "127.0.0.1:0", extra)
    }

    /// As [`Server::start`], from a prepared command (for `prlimit` and friends) and address.
    pub fn start_with(command: Command, model: &str, listen: &str, extra: &[&str]) -> Server {
        match Server::try_start(command, model, listen, extra) {
            Ok(server) => server,
            Err(log) => panic!(
                "server {model} did not print its address; log:\n{}",
                log.join("\n")
            ),
        }
    }

    /// Starts a server; its log lines if it exits (or stays silent) instead of listening.
    pub fn try_start(
        mut command: Command,
        model: &str,
        listen: &str,
        extra: &[&str],
    ) -> Result<Server, Vec<String>> {
        // Issue 11: connection open/close lines are debug; the tests wait on them.
        if !command.get_envs().any(|(key, _)| key == "RUST_LOG") {
            command.env("RUST_LOG", "echolab=debug");
        }
        command
            .args(["serve", "--model", model, "--listen", listen])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn echolab serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Log::default());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        let addr: SocketAddr = rest.split(' ').next().unwrap().parse().unwrap();
                        if let Some(tx) = addr_tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    log.push(line);
                }
                *log.closed.lock().unwrap() = true;
                log.changed.notify_all();
            });
        }
        match addr_rx.recv_timeout(STEP) {
            Ok(addr) => Ok(Server { child, addr, log }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader thread ends with the pipe; its lines are all in by now or soon.
                let deadline = Instant::now() + STEP;
                while !*log.closed.lock().unwrap() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(log.lines())
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.terminate(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Runs `command` (stdin empty, stdout and stderr captured) to completion, killing it if
/// it takes longer than `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration) -> std::process::Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echolab");
    finish_bounded(child, limit)
}

/// Runs `echolab ARGS` with stdout a full disk (`/dev/full`: every write fails with
/// ENOSPC), bounded by [`STEP`]; stderr is collected.
pub fn run_with_stdout_full(args: &[&str]) -> std::process::Output {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let child = echolab()
        .args(args)
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echolab");
    finish_bounded(child, STEP)
}

/// Waits for `child` and collects its output, killing it if it takes longer than `limit`
/// (the test then fails, naming the limit).
pub fn finish_bounded(child: Child, limit: Duration) -> std::process::Output {
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let expired = matches!(
            done_rx.recv_timeout(limit),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if expired {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        expired
    });
    let output = child.wait_with_output().expect("wait for echolab");
    drop(done_tx);
    assert!(
        !watchdog.join().unwrap(),
        "echolab did not finish within {limit:?}"
    );
    output
}

/// Waits for `child` to exit, up to `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `condition` until it holds or [`STEP`] passes; returns whether it held. For state
/// the kernel changes without telling us (a descriptor closed, a zombie reaped).
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + STEP;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Why `model` cannot run on this machine, if it cannot (io_uring refused by the kernel, as
/// in many containers): the server's one-line error. Asked once per model per test binary.
pub fn unsupported(model: &str) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static ANSWERS: OnceLock<Mutex<HashMap<String, Option<String>>>> = OnceLock::new();
    let answers = ANSWERS.get_or_init(Default::default);
    if let Some(answer) = answers.lock().unwrap().get(model) {
        return answer.clone();
    }
    let mut server = Server::try_start(echolab(), model, "127.0.0.1:0", &[]);
    let answer = match &mut server {
        Ok(_) => None,
        Err(log) => log.iter().find(|l| l.contains("cannot run here")).cloned(),
    };
    drop(server);
    answers
        .lock()
        .unwrap()
        .insert(model.to_string(), answer.clone());
    answer
}

/// A connection with read and write timeouts, so that no test step can hang.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    conn.set_read_timeout(Some(STEP)).unwrap();
    conn.set_write_timeout(Some(STEP)).unwrap();
    conn
}

/// Reads exactly `n` bytes.
pub fn read_n(conn: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    conn.read_exact(&mut buf).expect("read echo");
    buf
}

/// Reads until end-of-file.
pub fn read_to_end(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    Ok(out)
}

/// Sends `payload`, shuts down the write side, and returns everything echoed until EOF.
/// The payload is written from a second thread, so that a payload larger than the socket
/// buffers cannot deadlock the test.
pub fn round_trip(addr: SocketAddr, payload: Vec<u8>) -> Vec<u8> {
    let mut conn = connect(addr);
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&payload).expect("send");
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let out = read_to_end(&mut conn).expect("read echo");
    sender.join().unwrap();
    out
}

/// A payload of `n` bytes whose every byte depends on its offset.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Sockets listening on 127.0.0.1:`port`, from /proc/net/tcp (state 0A).
pub fn listeners(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == local && f[3] == "0A"
        })
        .count()
}

/// The server process and its descendants (the process model's children).
pub fn family(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut idx = 0;
    while idx < out.len() {
        let p = out[idx];
        out.extend(children_of(p));
        idx += 1;
    }
    out
}

/// The direct children of `pid`, from `/proc/PID/task/*/children`, or, on a kernel built
/// without that file (CONFIG_PROC_CHILDREN, missing on some CI kernels), from the parent
/// field of every `/proc/*/stat`: a missing file must not make every child check pass
/// vacuously.
fn children_of(pid: i32) -> Vec<i32> {
    let mut kids = Vec::new();
    let mut have_file = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                have_file = true;
                kids.extend(
                    text.split_whitespace()
                        .filter_map(|s| s.parse::<i32>().ok()),
                );
            }
        }
    }
    if have_file || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return kids;
    }
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// Resident memory of `pid` and its descendants, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    family(pid).iter().map(|p| status_field(*p, "VmRSS:")).sum()
}

/// Proportional set size of `pid` and its descendants, in KiB: pages shared after a fork
/// count once in all, not once per process.
pub fn pss_kib(pid: i32) -> u64 {
    family(pid)
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            let line = text.lines().find(|l| l.starts_with("Pss:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Anonymous memory (heap, stacks, anonymous maps) of `pid` and its descendants, in KiB.
/// Unlike PSS it does not move when other processes start or stop sharing the binary's
/// pages (PSS divides those among their sharers), so a test running beside others can
/// measure what the server itself allocated.
pub fn anon_kib(pid: i32) -> u64 {
    family(pid)
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
            let line = text.lines().find(|l| l.starts_with("Anonymous:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// A numeric field of /proc/PID/status (0 if absent).
pub fn status_field(pid: i32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Threads of `pid`.
pub fn thread_count(pid: i32) -> usize {
    status_field(pid, "Threads:") as usize
}

/// The direct children of `pid`, and how many of them are zombies.
pub fn children(pid: i32) -> (usize, usize) {
    let kids: Vec<i32> = family(pid)
        .into_iter()
        .filter(|p| *p != pid && parent_of(*p) == Some(pid))
        .collect();
    let zombies = kids.iter().filter(|p| state_of(**p) == Some('Z')).count();
    (kids.len(), zombies)
}

fn stat_after_comm(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 1..].to_string())
}

fn state_of(pid: i32) -> Option<char> {
    stat_after_comm(pid)?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn parent_of(pid: i32) -> Option<i32> {
    stat_after_comm(pid)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User plus system CPU time of `pid` and its descendants, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    family(pid)
        .iter()
        .filter_map(|p| {
            let rest = stat_after_comm(*p)?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3.
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Accepts one connection on `listener`, waiting at most [`STEP`] (a bounded poll: the
/// listener is left non-blocking); panics if none comes.
#[allow(dead_code)]
pub fn accept_bounded(listener: &std::net::TcpListener) -> std::net::TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + STEP;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return stream,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < deadline, "no connection came");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
}
