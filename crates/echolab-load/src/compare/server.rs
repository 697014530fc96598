//! A server under comparison: `echolab serve --model M --listen 127.0.0.1:0 --quiet`, run
//! as a child of this executable, found by its `listening on ADDR (model M)` line (UDP:
//! `serve --udp-only`, its `udp listening on` line), proven by one echo, and always
//! stopped: SIGTERM, up to 3 s to exit, then SIGKILL (also on drop, so an error or Ctrl-C
//! in compare leaves no server behind). A reference C server (ref_epoll, ref_threads)
//! prints nothing: it is given a free port and proven by one echo.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::engine::describe;

/// How long a server may take to announce itself.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The stderr lines kept to explain a failure.
const TAIL_LINES: usize = 20;

/// How long [`ServerProcess::settle`] waits for the previous run's connections to close.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a server holds when it serves nobody: its live children (none for every model at
/// rest, but counted rather than assumed). Its open connections at rest are zero by
/// definition, which is why [`ServerProcess::settle`] counts connections and not all
/// descriptors: a model may open more descriptors after it prints its listening line (the
/// uring model's rings), and a baseline read then would be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    pub children: u64,
    /// How many sockets the server holds at rest (its listeners), learned the first time
    /// it is found holding no connection: from then on fewer or as many sockets means at
    /// rest without reading /proc/net/tcp, which is slow after a churn run has left tens
    /// of thousands of TIME_WAIT entries in it.
    pub rest_sockets: Option<usize>,
}

/// What [`ServerProcess::settle`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// How long it waited.
    pub waited: Duration,
    /// Connections the server still held when the wait gave up: the previous run's,
    /// still open on its side.
    pub leftover_conns: u64,
    /// Children above the baseline then (the process model's connections).
    pub leftover_children: u64,
}

/// A running server child process.
#[derive(Debug)]
pub struct ServerProcess {
    pub model: String,
    pub addr: SocketAddr,
    /// Serves UDP (only), not TCP.
    pub udp: bool,
    /// `None` once stopped.
    child: Option<Child>,
    /// Its descriptors and children at rest, read before the first connection.
    baseline: Option<Baseline>,
    /// The last lines the server wrote on stderr (drained by a thread so the server never
    /// blocks on a full pipe).
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

/// What the stderr reader reports.
enum Announce {
    Listening(SocketAddr),
    /// stderr closed: the server exited.
    Ended,
}

/// The arguments compare starts a model with: an ephemeral port, and `--max-conns` sized
/// by compare rather than left to the model's default.
fn serve_args(model: &str, max_conns: usize) -> Vec<String> {
    [
        "serve",
        "--model",
        model,
        "--listen",
        "127.0.0.1:0",
        "--max-conns",
        &max_conns.to_string(),
        "--quiet",
    ]
    .map(str::to_string)
    .to_vec()
}

impl ServerProcess {
    /// Starts `exe serve --model model --max-conns max_conns` on an ephemeral port and waits until it echoes.
    /// On failure the child is stopped and the reason is the server's own last words when
    /// it had any.
    ///
    /// `max_conns` is passed as `--max-conns`: compare sizes it to its own steps, so that
    /// no model's default cap refuses connections the plan opens.
    pub fn start(exe: &Path, model: &str, max_conns: usize) -> Result<ServerProcess, String> {
        let mut cmd = Command::new(exe);
        cmd.args(serve_args(model, max_conns));
        Self::start_command(cmd, exe, model, false, None)
    }

    /// Starts `exe serve --model model --udp-only` on an ephemeral port and waits until it
    /// echoes a datagram.
    pub fn start_udp(exe: &Path, model: &str) -> Result<ServerProcess, String> {
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--model",
            model,
            "--listen",
            "127.0.0.1:0",
            "--udp-only",
            "--quiet",
        ]);
        Self::start_command(cmd, exe, model, true, None)
    }

    /// Starts the reference C server at `path` (`-p PORT`, plus `extra` arguments) on a
    /// port found free, and waits until it echoes. It prints no listening line, so the
    /// port is chosen here: a listener on port 0 learns a free one and is closed before
    /// the server binds it (another process could take it between; the echo check would
    /// then fail and say so).
    pub fn start_reference(
        path: &Path,
        name: &str,
        extra: &[String],
    ) -> Result<ServerProcess, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|err| format!("cannot find a free port: {}", describe(&err)))?
            .port();
        let mut cmd = Command::new(path);
        cmd.arg("-p").arg(port.to_string()).args(extra);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Self::start_command(cmd, path, name, false, Some(addr))
    }

    /// Runs `cmd`, learns its address (from its listening line, or `known`), takes its
    /// baseline and checks that it echoes.
    fn start_command(
        mut cmd: Command,
        exe: &Path,
        model: &str,
        udp: bool,
        known: Option<SocketAddr>,
    ) -> Result<ServerProcess, String> {
        // A compare killed outright (SIGKILL, a CI job's timeout) takes its servers with
        // it: they were left serving, each holding a port and its threads, for good.
        // Started from the main thread (the parent-death signal follows the spawning
        // thread), which lives as long as compare does.
        echolab_sys::die_with_parent(&mut cmd, std::process::id());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot run {}: {}", exe.display(), describe(&err)))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let tail = Arc::clone(&stderr_tail);
        // Ends when the server's stderr closes, that is when the server exits.
        thread::spawn(move || read_stderr(stderr, &tail, &tx));
        let mut server = ServerProcess {
            model: model.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            udp,
            child: Some(child),
            baseline: None,
            stderr_tail,
        };
        let announced = match known {
            Some(addr) => wait_until_echoes(addr, &mut server).map(|()| addr),
            None => announce(&rx),
        };
        let checked = announced.and_then(|addr| {
            server.addr = addr;
            // Before the first connection (the echo check below), the server is at rest.
            server.baseline = server.pid().map(|pid| Baseline {
                children: super::procfs::child_count(pid),
                rest_sockets: None,
            });
            let echoed = if udp {
                echo_once_udp(addr)
            } else {
                echo_once(addr)
            };
            echoed.map_err(|why| format!("listens on {addr} but does not echo ({why})"))
        });
        if let Err(why) = checked {
            server.stop();
            // The server's last line says why it stopped better than we can.
            let last = server
                .stderr_tail
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .back()
                .cloned();
            return Err(match last {
                Some(line) => format!("{why}: {}", line.trim_start_matches("echolab serve: ")),
                None => why,
            });
        }
        Ok(server)
    }

    /// The server's process id (its children's parent).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits, at most `SETTLE_TIMEOUT`, until the server is back at rest: every
    /// connection of the previous run closed on the server's side too, and every child
    /// serving one gone. The client side
    /// closes at once, but the server may still be closing hundreds of connections (or
    /// reaping their processes) when the next run connects, and that run would pay for
    /// it: a poll(2) loop's cost per call grows with its open descriptors, and the
    /// server's CPU time would be charged to the wrong workload.
    pub fn settle(&mut self) -> Settled {
        let started = Instant::now();
        let (Some(pid), Some(mut baseline)) = (self.pid(), self.baseline) else {
            return Settled {
                waited: Duration::ZERO,
                leftover_conns: 0,
                leftover_children: 0,
            };
        };
        loop {
            let sockets = super::procfs::socket_inodes(pid).unwrap_or_default();
            let conns = match baseline.rest_sockets {
                Some(rest) if sockets.len() <= rest => 0,
                _ => super::procfs::tcp_conns_among(pid, &sockets),
            };
            if conns == 0 && baseline.rest_sockets.is_none() {
                baseline.rest_sockets = Some(sockets.len());
                self.baseline = Some(baseline);
            }
            let children = super::procfs::child_count(pid);
            let settled = Settled {
                waited: started.elapsed(),
                leftover_conns: conns,
                leftover_children: children.saturating_sub(baseline.children),
            };
            let at_rest = settled.leftover_conns == 0 && settled.leftover_children == 0;
            if at_rest || settled.waited >= SETTLE_TIMEOUT || !self.is_running() {
                return settled;
            }
            // Polling /proc: no event says "the server closed its descriptors".
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Stops the server: SIGTERM, up to 3 s to exit, then SIGKILL; reaps it either way.
    /// Returns false if it had to be killed.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return true,
                // Polling a child's exit: there is no portable blocking wait with a timeout.
                Ok(None) => thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address of the server's listening line, within `START_TIMEOUT`.
fn announce(rx: &mpsc::Receiver<Announce>) -> Result<SocketAddr, String> {
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Announce::Listening(addr)) => Ok(addr),
        Ok(Announce::Ended) | Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err("exited at startup".to_string())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
            "did not print its listening line within {} s",
            START_TIMEOUT.as_secs()
        )),
    }
}

/// Waits, within `START_TIMEOUT`, until a server that prints nothing echoes on `addr`.
fn wait_until_echoes(addr: SocketAddr, server: &mut ServerProcess) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match echo_once(addr) {
            Ok(()) => return Ok(()),
            Err(_) if !server.is_running() => return Err("exited at startup".to_string()),
            Err(why) if Instant::now() >= deadline => {
                return Err(format!(
                    "did not echo on {addr} within {} s ({why})",
                    START_TIMEOUT.as_secs()
                ))
            }
            // Polling the port: a server that prints nothing gives no event when it listens.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn read_stderr(stderr: impl Read, tail: &Mutex<VecDeque<String>>, tx: &mpsc::Sender<Announce>) {
    let mut announced = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if !announced {
            if let Some(addr) = parse_listening(&line) {
                announced = true;
                let _ = tx.send(Announce::Listening(addr));
                continue;
            }
        }
        let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let _ = tx.send(Announce::Ended);
}

/// The address in `listening on ADDR (model M)` or `udp listening on ADDR (...)`.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let line = line.strip_prefix("udp ").unwrap_or(line);
    let rest = line.strip_prefix("listening on ")?;
    let addr = rest.split_whitespace().next()?;
    addr.parse().ok()
}

/// One small echo, proof that the server serves.
fn echo_once(addr: SocketAddr) -> Result<(), String> {
    let timeout = Duration::from_secs(2);
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(|err| describe(&err))?;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    conn.write_all(b"compare\n").map_err(|err| describe(&err))?;
    let mut echo = [0u8; 8];
    conn.read_exact(&mut echo).map_err(|err| match err.kind() {
        std::io::ErrorKind::UnexpectedEof => "closed without an echo".to_string(),
        _ => describe(&err),
    })?;
    if &echo != b"compare\n" {
        return Err("a wrong echo".to_string());
    }
    Ok(())
}

/// One datagram echoed, proof that a UDP server serves.
fn echo_once_udp(addr: SocketAddr) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|err| describe(&err))?;
    socket.connect(addr).map_err(|err| describe(&err))?;
    let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
    socket.send(b"compare\n").map_err(|err| describe(&err))?;
    let mut echo = [0u8; 16];
    let n = socket.recv(&mut echo).map_err(|err| describe(&err))?;
    if &echo[..n] != b"compare\n" {
        return Err("a wrong echo".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_address() {
        assert_eq!(
            parse_listening("listening on 127.0.0.1:45635 (model reactor)"),
            Some("127.0.0.1:45635".parse().unwrap())
        );
        assert_eq!(
            parse_listening("listening on [::1]:9 (model event)"),
            Some("[::1]:9".parse().unwrap())
        );
        assert_eq!(
            parse_listening("udp listening on 127.0.0.1:5 (model event, 1 loop)"),
            Some("127.0.0.1:5".parse().unwrap())
        );
        assert_eq!(
            parse_listening("echolab serve: model uring cannot run here"),
            None
        );
    }
}

#[cfg(test)]
mod serve_args_tests {
    use super::*;

    #[test]
    fn models_are_started_with_room_for_every_step_of_the_plan() {
        // The quick plan holds 500 idle connections: a model capped below that (process
        // defaults to fewer) would refuse the rest and fail the idle step on a healthy
        // machine. compare passes its own --max-conns, at least every step's connections.
        for quick in [true, false] {
            let plan = crate::compare::Plan::new(quick, Some(1));
            let n = plan.max_conns();
            assert!(n >= plan.idle_conns, "{n} < {}", plan.idle_conns);
            assert!(plan.workloads.iter().all(|w| w.conns <= n));
            let args = serve_args("process", n);
            let at = args
                .iter()
                .position(|a| a == "--max-conns")
                .expect("--max-conns");
            assert_eq!(args[at + 1], n.to_string(), "{args:?}");
        }
    }
}
