//! `echolab serve --processes N`: nginx's design, the lecture's process-based and
//! event-based servers combined. A supervisor forks N worker processes before any thread
//! exists; each runs the model's event loops (reactor, uring) on its own SO_REUSEPORT
//! listener, and the kernel spreads the connections over them.
//!
//! Why: a process may hold no more descriptors than its `RLIMIT_NOFILE`, and where the
//! hard limit cannot be raised (here: 20,000), N processes hold N times that.
//! Trade-off: isolation (a crashed worker loses only its connections, and is replaced) and
//! more descriptors, at the cost of no shared state between workers: `--max-conns` is
//! split among them, and `--max-conns-per-ip` holds per worker.
//!
//! The supervisor is the process model's parent, with its guarantees: SIGINT, SIGTERM and
//! SIGCHLD are blocked and read from a signalfd in its one loop (nothing runs in a
//! handler); every worker is reaped there; a worker that dies is logged and restarted (at
//! most [`BURST`] at once, then one a second); a SIGTERM or SIGINT is forwarded to every
//! worker, which shuts down as a single server does, and the supervisor exits once all
//! are reaped (SIGKILL after [`STOP_GRACE`]). Each worker asks the kernel for SIGTERM if
//! the supervisor dies first, so none outlives it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::{net, Model, ServeConfig};

/// The most `--processes`.
pub const MAX_PROCESSES: usize = 256;

/// Restarts allowed at once; after them, one a second.
pub const BURST: u32 = 5;

/// How long workers get to shut down after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a worker gets to bind and say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Descriptors a worker keeps for itself (listeners, epoll, pipes, the log).
pub const SPARE_FDS: u64 = 64;

/// `max_conns` split over `n` workers: the first `max_conns % n` get one more; the parts
/// add up to `max_conns` (a worker may get 0 when there are more workers than places).
pub fn split_cap(max_conns: usize, n: usize) -> Vec<usize> {
    let n = n.max(1);
    (0..n)
        .map(|i| max_conns / n + usize::from(i < max_conns % n))
        .collect()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (was, soft, hard).
pub fn raise_nofile() -> (u64, u64, u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((was, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (0, 0, 0);
    };
    if was < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (was, hard, hard);
    }
    (was, was, hard)
}

/// The warning when `max_conns` is more than `workers` processes of `soft` descriptors
/// can hold (each connection one descriptor, [`SPARE_FDS`] kept per worker); `None` when
/// they can.
pub fn capacity_warning(max_conns: usize, workers: usize, soft: u64) -> Option<String> {
    let per_worker = soft.saturating_sub(SPARE_FDS);
    let can = per_worker.saturating_mul(workers as u64);
    (max_conns as u64 > can).then(|| {
        format!(
            "--max-conns {max_conns} is more than {workers} process(es) can hold: {per_worker} descriptors each (soft RLIMIT_NOFILE {soft} less {SPARE_FDS}), {can} in all; connections past that are refused by accept (EMFILE); use more --processes"
        )
    })
}

/// A worker slot: its index and the pid running it (none while waiting for a restart).
#[derive(Debug)]
struct Slot {
    pid: Option<Pid>,
    cap: usize,
}

/// Restarts allowed now: [`BURST`] tokens, refilled one a second.
#[derive(Debug)]
pub struct RestartBudget {
    tokens: f64,
    at: Instant,
}

impl RestartBudget {
    pub fn new(now: Instant) -> RestartBudget {
        RestartBudget {
            tokens: f64::from(BURST),
            at: now,
        }
    }

    /// Takes a restart if one is allowed at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + refill).min(f64::from(BURST));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Runs `echolab serve --processes n` for `config`; `on_listening` gets the addresses (one
/// per `--listen`) once every worker listens. Exit status as `echolab serve`'s.
pub fn run(config: ServeConfig, n: usize, on_listening: impl FnOnce(&[SocketAddr])) -> ExitCode {
    if !matches!(config.model, Model::Reactor | Model::Uring) {
        echolab_cli::say!(
            "echolab serve: --processes: the {} model cannot run as worker processes (only reactor and uring)",
            config.model
        );
        return ExitCode::from(2);
    }
    let (was, soft, hard) = raise_nofile();
    log::info!("supervisor: descriptors: soft limit {soft} (was {was}), hard limit {hard}");
    if let Some(warning) = capacity_warning(config.max_conns, n, soft) {
        log::warn!("{warning}");
    }
    // The ports (one per --listen address), reserved while the workers bind theirs beside
    // them (SO_REUSEPORT). Bound, not listening: a listening socket here (and its copy in
    // every worker) would take a share of the connections that nobody accepts.
    let mut reserved = Vec::new();
    let mut addrs = Vec::new();
    for listen in config.listens() {
        match reserve(listen, config.ipv6_only) {
            Ok((socket, addr)) => {
                reserved.push(socket);
                addrs.push(addr);
            }
            Err(err) => {
                echolab_cli::say!(
                    "echolab serve: cannot bind {listen}: {}",
                    net::describe(&err)
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGCHLD,
        Signal::SIGUSR1,
    ] {
        mask.add(s);
    }
    if let Err(err) = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None) {
        return fail(&format!("cannot block SIGINT/SIGTERM/SIGCHLD: {err}"));
    }
    let mut signals =
        match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(err) => return fail(&format!("cannot create a signalfd: {err}")),
        };
    let caps = split_cap(config.max_conns, n);
    let mut slots: Vec<Slot> = caps.iter().map(|&cap| Slot { pid: None, cap }).collect();
    let mut worker_config = config.clone();
    worker_config.listen = addrs[0];
    worker_config.also_listen = addrs[1..].to_vec();
    // Every worker started and ready before the address is announced.
    for index in 0..n {
        match spawn_worker(&worker_config, index, slots[index].cap, &mask, &signals) {
            Ok((pid, ready)) => {
                slots[index].pid = Some(pid);
                if let Err(err) = wait_ready(ready) {
                    log::error!("supervisor: worker {index} (pid {pid}) did not start: {err}");
                    stop_all(&mut slots, &mut signals);
                    return ExitCode::from(1);
                }
            }
            Err(err) => {
                log::error!("supervisor: cannot start worker {index}: {err}");
                stop_all(&mut slots, &mut signals);
                return ExitCode::from(1);
            }
        }
    }
    // The workers listen: the supervisor's own listener would only take connections
    // nobody accepts.
    drop(reserved);
    on_listening(&addrs);
    // The service's main pid speaks for all (systemd's NotifyAccess=main).
    crate::activation::notify_ready();
    log::info!(
        "supervisor: {n} worker processes of model {}, --max-conns split {:?}",
        config.model,
        caps
    );
    supervise(&worker_config, &mut slots, &mut signals, &mask)
}

/// A socket bound to `addr` with SO_REUSEPORT, not listening, and the address it got
/// (the real port when 0 was asked); "address already in use" when anyone else holds it.
fn reserve(addr: SocketAddr, ipv6_only: bool) -> io::Result<(socket2::Socket, SocketAddr)> {
    if addr.port() != 0 {
        // As a single server: a port already served is an error, not a silent share.
        drop(net::bind(addr, false, ipv6_only)?);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() && ipv6_only {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP address"))?;
    Ok((socket, bound))
}

fn fail(message: &str) -> ExitCode {
    echolab_cli::say!("echolab serve: {message}");
    ExitCode::from(1)
}

/// Forks worker `index` with cap `cap`; returns its pid and the read end of its ready pipe.
fn spawn_worker(
    config: &ServeConfig,
    index: usize,
    cap: usize,
    mask: &SigSet,
    signals: &SignalFd,
) -> io::Result<(Pid, UnixStream)> {
    let (ready_read, ready_write) = UnixStream::pair()?;
    match echolab_sys::fork_single_threaded()? {
        echolab_sys::ForkResult::Parent(pid) => {
            drop(ready_write);
            Ok((Pid::from_raw(pid), ready_read))
        }
        echolab_sys::ForkResult::Child => {
            drop(ready_read);
            let code = worker(config, index, cap, mask, signals, ready_write);
            // Never back into the supervisor's code: the worker ends here.
            std::process::exit(code);
        }
    }
}

/// A worker's life: its own listener, the signals a single server has, the model.
fn worker(
    config: &ServeConfig,
    index: usize,
    cap: usize,
    mask: &SigSet,
    signals: &SignalFd,
    mut ready: UnixStream,
) -> i32 {
    // The supervisor's signalfd and listener are its own.
    let _ = signals;
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    // The supervisor tells the service manager; a worker's READY=1 would be ignored (or,
    // after a restart, taken as the service's). One thread here: safe to change the env.
    std::env::remove_var("NOTIFY_SOCKET");
    // SIGUSR1 asks for a stats line before it is unblocked, never ends the worker.
    if let Err(err) = crate::stats::listen_for_usr1() {
        log::error!("worker {index}: cannot handle SIGUSR1: {err}");
        return 1;
    }
    if let Err(err) = signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(mask), None) {
        log::error!("worker {index}: cannot unblock signals: {err}");
        return 1;
    }
    let mut listeners = Vec::new();
    for listen in config.listens() {
        match net::bind_beside(listen, config.ipv6_only) {
            Ok(listener) => listeners.push(listener),
            Err(err) => {
                log::error!(
                    "worker {index}: cannot bind {listen}: {}",
                    net::describe(&err)
                );
                return 2;
            }
        }
    }
    let (_, soft, hard) = raise_nofile();
    log::info!(
        "worker {index} (pid {}): descriptors: soft limit {soft}, hard limit {hard}; --max-conns {cap}",
        std::process::id()
    );
    let mut config = config.clone();
    config.max_conns = cap;
    let result = crate::serve_on(config, listeners, |_| {
        let _ = ready.write_all(b"r");
    });
    match result {
        Ok(()) => 0,
        Err(err) => {
            log::error!("worker {index}: {err}");
            i32::from(err.exit_code())
        }
    }
}

fn wait_ready(mut ready: UnixStream) -> io::Result<()> {
    ready.set_read_timeout(Some(READY_WITHIN))?;
    let mut byte = [0u8; 1];
    match ready.read(&mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err(io::Error::other("it exited before listening")),
        Err(err) => Err(err),
    }
}

/// Describes how a worker ended.
fn ended(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("was killed by {sig}"),
        other => format!("{other:?}"),
    }
}

/// The supervisor's loop: reap, restart, forward the stop signal.
fn supervise(
    config: &ServeConfig,
    slots: &mut [Slot],
    signals: &mut SignalFd,
    mask: &SigSet,
) -> ExitCode {
    let mut budget = RestartBudget::new(Instant::now());
    let mut throttled_said = false;
    loop {
        // Wake at least every 100 ms to restart a throttled worker.
        let fd = std::os::fd::AsFd::as_fd(signals);
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        let mut stop = false;
        while let Ok(Some(info)) = signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGINT) | Ok(Signal::SIGTERM) => stop = true,
                // Each worker prints its own stats line.
                Ok(Signal::SIGUSR1) => {
                    for pid in slots.iter().filter_map(|s| s.pid) {
                        let _ = signal::kill(pid, Signal::SIGUSR1);
                    }
                }
                _ => {}
            }
        }
        if stop {
            // Before reaping: a Ctrl-C (or `timeout`) signals the whole process group, so
            // workers may have ended on the same signal already; stop_all reaps them as
            // stopped (info), not as deaths (a warning, and a restart).
            log::info!(
                "supervisor: stopping {} workers",
                slots.iter().filter(|s| s.pid.is_some()).count()
            );
            crate::activation::notify_stopping();
            stop_all(slots, signals);
            return ExitCode::SUCCESS;
        }
        reap(slots, |index, pid, status| {
            log::warn!("supervisor: worker {index} (pid {pid}) {}", ended(status));
        });
        for (index, slot) in slots.iter_mut().enumerate() {
            if slot.pid.is_some() {
                continue;
            }
            if !budget.take(Instant::now()) {
                if !throttled_said {
                    log::warn!(
                        "supervisor: restarts throttled ({BURST} at once, then one a second)"
                    );
                    throttled_said = true;
                }
                break;
            }
            throttled_said = false;
            match spawn_worker(config, index, slot.cap, mask, signals) {
                Ok((pid, ready)) => {
                    slot.pid = Some(pid);
                    match wait_ready(ready) {
                        Ok(()) => log::warn!("supervisor: worker {index} restarted as pid {pid}"),
                        Err(err) => log::error!(
                            "supervisor: restarted worker {index} (pid {pid}) did not start: {err}"
                        ),
                    }
                }
                Err(err) => log::error!("supervisor: cannot restart worker {index}: {err}"),
            }
        }
    }
}

/// Reaps every worker that has ended, telling `on_end`, and frees its slot.
fn reap(slots: &mut [Slot], mut on_end: impl FnMut(usize, Pid, WaitStatus)) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                let Some(pid) = status.pid() else { return };
                if let Some(index) = slots.iter().position(|s| s.pid == Some(pid)) {
                    slots[index].pid = None;
                    on_end(index, pid, status);
                }
            }
        }
    }
}

/// SIGTERM to every worker, then reap them all; SIGKILL whoever is left after
/// [`STOP_GRACE`].
fn stop_all(slots: &mut [Slot], signals: &mut SignalFd) {
    for slot in slots.iter() {
        if let Some(pid) = slot.pid {
            let _ = signal::kill(pid, Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut killed = false;
    while slots.iter().any(|s| s.pid.is_some()) {
        reap(slots, |index, pid, status| {
            log::info!("supervisor: worker {index} (pid {pid}) {}", ended(status));
        });
        if slots.iter().all(|s| s.pid.is_none()) {
            break;
        }
        if Instant::now() >= deadline && !killed {
            for slot in slots.iter() {
                if let Some(pid) = slot.pid {
                    log::warn!(
                        "supervisor: worker pid {pid} still running after {} s: SIGKILL",
                        STOP_GRACE.as_secs()
                    );
                    let _ = signal::kill(pid, Signal::SIGKILL);
                }
            }
            killed = true;
        }
        // SIGCHLD arrives on the signalfd: wait for it (or 100 ms).
        let fd = std::os::fd::AsFd::as_fd(signals);
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        while let Ok(Some(_)) = signals.read_signal() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn caps_add_up_and_differ_by_at_most_one(max in 0usize..2_000_000, n in 1usize..=MAX_PROCESSES) {
            let caps = split_cap(max, n);
            prop_assert_eq!(caps.len(), n);
            prop_assert_eq!(caps.iter().sum::<usize>(), max);
            let (lo, hi) = (caps.iter().min().unwrap(), caps.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        if hard < 2 {
            echolab_cli::say!("SKIPPED: a hard RLIMIT_NOFILE of {hard} cannot be lowered to test");
            return;
        }
        // Lowering one's own soft limit is always allowed; raise_nofile puts it back.
        setrlimit(Resource::RLIMIT_NOFILE, hard - 1, hard).unwrap();
        assert_eq!(raise_nofile(), (hard - 1, hard, hard));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
        // Already at the hard limit: nothing to do, and said so.
        assert_eq!(raise_nofile(), (hard, hard, hard));
    }

    #[test]
    fn split_examples() {
        assert_eq!(split_cap(10, 3), [4, 3, 3]);
        assert_eq!(split_cap(2, 4), [1, 1, 0, 0]);
        assert_eq!(split_cap(1_000_000, 1), [1_000_000]);
    }

    #[test]
    fn capacity_is_descriptors_less_the_spare_times_workers() {
        assert_eq!(capacity_warning(19_936, 1, 20_000), None);
        let w = capacity_warning(19_937, 1, 20_000).unwrap();
        assert!(
            w.contains("19936 descriptors each") && w.contains("19936 in all"),
            "{w}"
        );
        assert_eq!(capacity_warning(1_000_000, 51, 20_000), None);
        assert!(capacity_warning(1_000_000, 50, 20_000).is_some());
        assert!(capacity_warning(1, 1, 10).is_some());
    }

    #[test]
    fn restarts_come_in_a_burst_then_one_a_second() {
        let t0 = Instant::now();
        let mut b = RestartBudget::new(t0);
        for _ in 0..BURST {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        assert!(b.take(t0 + Duration::from_millis(1_000)));
        assert!(!b.take(t0 + Duration::from_millis(1_100)));
        // A long quiet refills only the burst.
        let later = t0 + Duration::from_secs(3_600);
        for _ in 0..BURST {
            assert!(b.take(later));
        }
        assert!(!b.take(later));
    }
}
