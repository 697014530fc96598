//! A tiny fork-per-connection echo server (CS:APP's echoserverp) with its two classic
//! mistakes as switches: not reaping children (zombies) and not closing the parent's copy
//! of the connection (the client never sees end-of-file). Used by `zombies` and
//! `fd-refcount`; it runs as a watched child process, so it is single-threaded when it
//! forks and is killed, with all its children, when the experiment ends.
//!
//! Trade-off of the process model, as this server shows it: each connection is isolated
//! in its own process, and the parent must clean up after every one of them (reap it,
//! close its descriptor) or leak a process-table entry or a connection per client.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use serde_json::{json, Value};

use echolab_sys::{exit_immediately, fork_single_threaded, ForkResult};

use crate::child::{config_bool, config_u64};
use crate::experiment::{Deadline, Settings};
use crate::watchdog::{child_args, WatchedChild};

/// The server's two switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFlaws {
    /// Reap exited children (SIGCHLD read from a signalfd, `waitpid` until none is left).
    pub reap: bool,
    /// Close the parent's copy of each connection right after `fork`.
    pub close_in_parent: bool,
}

/// A running fork server and its address.
#[derive(Debug)]
pub struct ForkServer {
    pub process: WatchedChild,
    pub addr: SocketAddr,
}

impl ForkServer {
    /// Starts the server as a watched child of `settings.exe`; it stops itself after
    /// `lifetime` if nobody kills it first.
    pub fn start(
        settings: &Settings,
        flaws: ServerFlaws,
        lifetime: Duration,
    ) -> io::Result<ForkServer> {
        let config = json!({
            "reap": flaws.reap,
            "close_in_parent": flaws.close_in_parent,
            "lifetime_ms": lifetime.as_millis() as u64,
        });
        let mut process = WatchedChild::spawn(&settings.exe, &child_args("forkserver", &config))?;
        let deadline = Deadline::after(Duration::from_secs(10).min(lifetime));
        while let Some(line) = process.next_line(deadline) {
            if let Some(addr) = line.text.strip_prefix("listening ") {
                let addr = addr.parse().map_err(|_| {
                    io::Error::other(format!(
                        "the fork server announced a bad address: {:?}",
                        line.text
                    ))
                })?;
                return Ok(ForkServer { process, addr });
            }
        }
        let stderr = process.kill_and_reap();
        Err(io::Error::other(format!(
            "the fork server did not start: {}",
            stderr.trim()
        )))
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    /// Waits for `reaped PID` lines until `want` have come or `deadline`; returns the count.
    pub fn wait_reaped(&mut self, want: usize, seen: &mut usize, deadline: Deadline) -> usize {
        while *seen < want {
            match self.process.next_line(deadline) {
                Some(line) if line.text.starts_with("reaped ") => *seen += 1,
                Some(_) => {}
                None => break,
            }
        }
        *seen
    }
}

/// What a client saw: the echo, and when (if ever) end-of-file came after it shut down
/// its side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientView {
    /// Time from our shutdown(write) to end-of-file; `None` if none came within the wait.
    pub eof_after: Option<Duration>,
    /// How long the client actually waited for it (measured, whether or not it came).
    pub waited: Duration,
}

/// Connects, sends a line, reads the echo, shuts down writing, and waits up to `eof_wait`
/// for end-of-file.
pub fn echo_once(addr: SocketAddr, eof_wait: Duration) -> io::Result<ClientView> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"hello\n")?;
    let mut echo = [0u8; 6];
    conn.read_exact(&mut echo)?;
    if &echo != b"hello\n" {
        return Err(io::Error::other(format!(
            "the fork server echoed {:?}",
            String::from_utf8_lossy(&echo)
        )));
    }
    conn.shutdown(Shutdown::Write)?;
    conn.set_read_timeout(Some(eof_wait.max(Duration::from_millis(1))))?;
    let asked = Instant::now();
    let mut rest = [0u8; 16];
    match conn.read(&mut rest) {
        Ok(0) => Ok(ClientView {
            eof_after: Some(asked.elapsed()),
            waited: asked.elapsed(),
        }),
        Ok(n) => Err(io::Error::other(format!(
            "{n} unexpected bytes after the echo"
        ))),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(ClientView {
                eof_after: None,
                waited: asked.elapsed(),
            })
        }
        Err(err) => Err(err),
    }
}

/// Zombie children of `pid`, from /proc (state `Z`, parent `pid`).
pub fn zombies_of(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&candidate| {
            let stat =
                std::fs::read_to_string(format!("/proc/{candidate}/stat")).unwrap_or_default();
            let Some(after) = stat.rfind(')').map(|idx| &stat[idx + 1..]) else {
                return false;
            };
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|ppid| ppid.parse::<i32>().ok());
            state == Some("Z") && ppid == Some(pid)
        })
        .count()
}

/// Polls `zombies_of(pid)` until it equals `want` or `deadline`; returns the last count.
pub fn zombies_settle(pid: i32, want: usize, deadline: Deadline) -> usize {
    loop {
        let count = zombies_of(pid);
        if count == want || deadline.passed() {
            return count;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The child process: the fork server itself.
pub fn child_body(config: &Value) -> io::Result<Value> {
    let flaws = ServerFlaws {
        reap: config_bool(config, "reap", true),
        close_in_parent: config_bool(config, "close_in_parent", true),
    };
    let lifetime = Deadline::after(Duration::from_millis(config_u64(
        config,
        "lifetime_ms",
        30_000,
    )));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    echolab_cli::print_out(&format!("listening {}", listener.local_addr()?));
    let signals = if flaws.reap {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(io::Error::from)?;
        Some(
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(io::Error::from)?,
        )
    } else {
        None
    };
    // The connections the parent forgot to close, kept open on purpose.
    let mut forgotten: Vec<TcpStream> = Vec::new();
    let (mut n_conns, mut n_reaped) = (0u64, 0u64);
    while !lifetime.passed() {
        let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(signals) = &signals {
            fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        if let Some(signals) = &signals {
            while let Ok(Some(_)) = signals.read_signal() {}
            n_reaped += reap_all();
        }
        loop {
            let conn = match listener.accept() {
                Ok((conn, _peer)) => conn,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err),
            };
            n_conns += 1;
            match fork_single_threaded()? {
                ForkResult::Child => {
                    // This process was single-threaded at the fork, so the child may use
                    // std freely. It closes its copy of the listener (the lecture's
                    // `Close(listenfd)`), serves, and exits without running the parent's
                    // destructors.
                    drop(listener);
                    let code = match echo_until_eof(conn) {
                        Ok(()) => 0,
                        Err(_) => 1,
                    };
                    exit_immediately(code);
                }
                ForkResult::Parent(pid) => {
                    if flaws.close_in_parent {
                        drop(conn); // The lecture's "Close(connfd); (important!)".
                    } else {
                        forgotten.push(conn); // The bug: refcnt(connfd) stays at 1.
                    }
                    echolab_cli::print_out(&format!("forked {pid}"));
                }
            }
        }
    }
    Ok(json!({ "conns": n_conns, "reaped": n_reaped, "forgotten": forgotten.len() }))
}

fn echo_until_eof(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

/// Reaps every exited child without blocking; prints `reaped PID` for each.
fn reap_all() -> u64 {
    let mut reaped = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => {
                echolab_cli::print_out(&format!("reaped {pid}"));
                reaped += 1;
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => continue,
        }
    }
}
