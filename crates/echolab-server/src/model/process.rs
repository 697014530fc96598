//! Process per connection (CS:APP's `echoserverp`): the parent accepts and forks; the
//! child serves one connection and exits.
//!
//! Trade-off: the cleanest isolation (a child that crashes takes only its connection), at
//! the price of a fork per connection and processes that must be reaped.
//!
//! The lecture's three rules, and where they are kept:
//! - The parent closes its copy of the connection (`drop(conn)` after the fork): the
//!   socket's reference count must fall to zero when the child closes it, or the client
//!   never sees end-of-file.
//! - The child closes its copy of the listener.
//! - The parent reaps every child, but not in the signal handler: the SIGCHLD handler
//!   only writes a byte to a pipe (async-signal-safe), and the parent's main loop, woken by
//!   that pipe in `poll`, calls `waitpid(-1, WNOHANG)` until no child is left to reap.
//!
//! The parent forks while it is single-threaded (this model starts no thread), so the
//! child may allocate and log. It ends with `_exit`: it must not run the parent's
//! destructors or flush buffers it inherited.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use echolab_sys::ForkResult;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use std::sync::Arc;

use crate::accept;
use crate::admission::{Admission, ConnCap};
use crate::conn::{self, ConnSettings};
use crate::shutdown::Shutdown;
use crate::stats;
use crate::{net, ServeConfig, Server};

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listeners,
        config,
        shutdown,
        cap,
    } = server;
    for listener in &listeners {
        listener.set_nonblocking(true)?;
    }
    // SIGCHLD as a readable pipe: the handler writes one byte, the loop below reaps.
    let (sigchld_read, sigchld_write) = UnixStream::pair()?;
    sigchld_read.set_nonblocking(true)?;
    sigchld_write.set_nonblocking(true)?;
    let sigchld_id = signal_hook::low_level::pipe::register(libc::SIGCHLD, sigchld_write)?;

    // Every live child, the peer it serves and its place under the cap (freed when the
    // child is reaped).
    let mut children: Children = HashMap::new();
    let result = accept_loop(
        &listeners,
        &config,
        &shutdown,
        &sigchld_read,
        &cap,
        &mut children,
    );

    // Shutdown, and after an error too: close the listeners first (the ports are free at
    // once), then end every child and reap it, so that no process outlives the server.
    drop(listeners);
    for pid in children.keys() {
        let _ = nix::sys::signal::kill(*pid, Signal::SIGTERM);
    }
    for (pid, (peer, _admission)) in children.drain() {
        let status = loop {
            match waitpid(pid, None) {
                Err(nix::errno::Errno::EINTR) => {}
                other => break other,
            }
        };
        if matches!(status, Ok(WaitStatus::Exited(_, 0))) {
            // The child logged its own close line, with the byte counts.
            log::debug!("child {pid} ended");
        } else {
            // The child could not count its close: count it here, without its bytes.
            stats::global().closed(stats::EndKind::Shutdown);
            log::debug!("conn {peer} closed: server shutting down (child {pid} ended: {status:?})");
        }
    }
    signal_hook::low_level::unregister(sigchld_id);
    result
}

/// A child whose signal handler could not be installed never learns of a shutdown: its
/// SIGTERM stays the default (it dies), and the parent logs the close for it.
static NEVER: AtomicBool = AtomicBool::new(false);

/// The live children: the peer each serves and its place under the cap.
type Children = HashMap<Pid, (SocketAddr, Admission)>;

/// The parent's loop: accept and fork, reap on SIGCHLD, until shutdown.
fn accept_loop(
    listeners: &[TcpListener],
    config: &ServeConfig,
    shutdown: &Shutdown,
    sigchld_read: &UnixStream,
    cap: &Arc<ConnCap>,
    children: &mut Children,
) -> io::Result<()> {
    let mut accept_paused_until: Option<Instant> = None;
    // SIGUSR1 and the periodic summary, in this loop: the model may start no thread.
    let mut reporter = stats::Reporter::new(config.stats_interval);
    while !shutdown.is_triggered() {
        let now = Instant::now();
        let paused = accept_paused_until.filter(|until| *until > now);
        let wait = [paused.map(|until| until - now), reporter.timeout(now)];
        let timeout = match wait.into_iter().flatten().min() {
            Some(wait) => PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let listen_events = if paused.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::POLLIN
        };
        let mut fds = vec![
            PollFd::new(shutdown.fd(), PollFlags::POLLIN),
            PollFd::new(sigchld_read.as_fd(), PollFlags::POLLIN),
        ];
        // Every --listen address; a connection on any of them is forked alike.
        fds.extend(
            listeners
                .iter()
                .map(|listener| PollFd::new(listener.as_fd(), listen_events)),
        );
        fds.extend(reporter.fd().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
        let sigchld = fds[1].any().unwrap_or(false);
        let acceptable: Vec<bool> = fds[2..2 + listeners.len()]
            .iter()
            .map(|fd| fd.any().unwrap_or(false))
            .collect();
        drop(fds);
        reporter.on_wake(Instant::now());
        if sigchld {
            drain(sigchld_read);
            reap(children);
        }
        for (listener, _) in listeners.iter().zip(acceptable).filter(|(_, ready)| *ready) {
            accept_paused_until = None;
            match listener.accept() {
                Ok((conn, peer)) => match cap.admit(peer) {
                    Err(why) => cap.refuse(conn, peer, why),
                    Ok(admission) => {
                        let parent_fds = [sigchld_read.as_raw_fd(), shutdown.fd().as_raw_fd()];
                        if let Some(pid) = fork_child(conn, peer, listeners, config, &parent_fds)? {
                            children.insert(pid, (peer, admission));
                        }
                    }
                },
                Err(err) => {
                    accept_paused_until = accept::after_accept_error(&err);
                    if accept_paused_until.is_some() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Forks a child to serve `conn`. Returns the child's pid in the parent; never returns in
/// the child. A failed fork costs only this connection.
fn fork_child(
    conn: TcpStream,
    peer: SocketAddr,
    listeners: &[TcpListener],
    config: &ServeConfig,
    parent_fds: &[RawFd],
) -> io::Result<Option<Pid>> {
    if let Err(err) = conn
        .set_nonblocking(false)
        .and_then(|()| net::configure(&conn))
    {
        crate::conn::log_dropped(peer, &err);
        return Ok(None);
    }
    // Block SIGINT and SIGTERM across the fork, as CS:APP blocks SIGCHLD around its job
    // list: until the child has reset their handlers (which write to the parent's pipe),
    // it must not run them.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old_mask))?;
    let parent = nix::unistd::getpid();
    // This model starts no thread, so the check inside always passes here.
    let forked = echolab_sys::fork_single_threaded();
    match forked {
        Ok(ForkResult::Child) => {
            // In the child. Signals default again: SIGTERM from the parent ends us.
            // SIGTERM and SIGINT shut the connection down instead, so that the child
            // ends it as a shutdown and logs its close line with the byte counts
            // (finding 10); they stay blocked until the handler is in place.
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGCHLD] {
                let _ = echolab_sys::reset_signal_to_default(signal);
            }
            let shutting_down = match echolab_sys::shut_down_on_sigterm(conn.as_raw_fd()) {
                Ok(flag) => flag,
                Err(_) => &NEVER,
            };
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            // A parent killed without its shutdown (SIGKILL) cannot end its children; the
            // kernel does it for us. If the parent is already gone, stop now.
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
            if nix::unistd::getppid() != parent {
                echolab_sys::exit_immediately(0);
            }
            // The child's copies of the parent's descriptors: the listeners (the lecture's
            // `Close(listenfd)`) and the parent's pipes. Nothing here drops them, because
            // the child ends in `_exit`.
            for listener in listeners {
                let _ = nix::unistd::close(listener.as_raw_fd());
            }
            for fd in parent_fds {
                let _ = nix::unistd::close(*fd);
            }
            // The child's place under the cap is the parent's to free, when it reaps the child.
            conn::serve_blocking(&conn, peer, ConnSettings::new(config, shutting_down), ());
            drop(conn);
            echolab_sys::exit_immediately(0)
        }
        Ok(ForkResult::Parent(pid)) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            // The parent's copy of the connection: close it (the lecture's "important!").
            drop(conn);
            log::debug!("conn {peer} handed to child {pid}");
            Ok(Some(Pid::from_raw(pid)))
        }
        Err(err) => {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            stats::global().dropped();
            log::warn!("conn {peer} dropped: fork failed: {}", net::describe(&err));
            Ok(None)
        }
    }
}

/// Reaps every child that has exited, without blocking.
fn reap(children: &mut Children) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    children.remove(&pid);
                    log::debug!("child {pid} reaped: {status:?}");
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(err) => {
                log::warn!("waitpid failed: {err}");
                return;
            }
        }
    }
}

fn drain(pipe: &UnixStream) {
    let mut buf = [0u8; 256];
    while matches!((&*pipe).read(&mut buf), Ok(n) if n > 0) {}
}
