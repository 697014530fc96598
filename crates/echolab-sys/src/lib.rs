//! The only crate of echolab that contains `unsafe`: thin, documented wrappers over the
//! calls that have no safe equivalent (fork, `_exit`, signal dispositions and a raw
//! SIGCHLD handler, the time-stamp counter, io_uring).
//!
//! Every other crate is `#![forbid(unsafe_code)]` and calls these.
//!
//! # Layout
//! - [`fork`], [`fork_single_threaded`], [`ForkResult`]: `fork(2)`, with the rules for the
//!   child written down once, and a safe form that checks them.
//! - [`fork_exiting_child`]: a fork whose child only `_exit`s, safe from any process.
//! - [`exit_immediately`]: `_exit(2)`, which runs no destructors and flushes no buffers.
//! - [`die_with_parent`]: a spawned child killed by the kernel when its parent dies.
//! - [`start_with_stop_signals_blocked`]: a spawned child whose SIGINT and SIGTERM wait
//!   (pending) until it has installed its handlers; [`signal_before_exec`], a test's
//!   stand-in for a signal that comes before them.
//! - [`reset_signal_to_default`]: `sigaction(SIG_DFL)` for a child that must not run a
//!   handler it inherited.
//! - [`second_signal`]: a second SIGINT or SIGTERM ends the process at once, one signal
//!   delivered twice (as `timeout(1)` does) does not.
//! - [`cycles`]: the CPU's time-stamp counter, for the lab's cost measurements.
//! - [`sigchld_lock`]: a SIGCHLD handler that takes a lock the main flow also takes, the
//!   lab's reproduction of the lecture's printf-in-a-handler deadlock.
//! - [`shared`]: counters in a `MAP_SHARED` mapping, seen by the children forked after it.
//! - [`uring`]: io_uring for the `uring` server model, with the rule that memory named by
//!   a request belongs to the ring until its completion.
//! - [`mmsg`]: batched datagram I/O (`recvmmsg`/`sendmmsg`) over buffers made once, for
//!   the UDP models that wait for readiness.
//! - [`uring_udp`]: io_uring for the UDP `uring` model (multishot `recvmsg`, a turn's
//!   replies by one `sendmmsg` from the receive buffers), under the same rule.

use std::io;

/// Makes the child that `command` spawns die (SIGKILL, `PR_SET_PDEATHSIG`) when the
/// process `parent` (the caller's `std::process::id()`) ends, however it ends. If the
/// parent has already ended when the child reaches exec, the spawn fails instead.
///
/// Linux only. The signal follows the parent *thread* that spawns: spawn from a thread
/// that lives as long as the child should (the main thread).
pub fn die_with_parent(command: &mut std::process::Command, parent: u32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes two system calls (prctl, getppid),
    // both async-signal-safe, and allocates nothing (`from_raw_os_error` and
    // `last_os_error` hold only the error number).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Starts the child that `command` spawns with SIGINT and SIGTERM blocked: one sent to it
/// before it has installed its handlers stays pending (the mask survives exec) instead of
/// ending it by the default action; the child unblocks them once its handlers are in.
pub fn start_with_stop_signals_blocked(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes three async-signal-safe calls
    // (sigemptyset, sigaddset, pthread_sigmask) on a set on its stack, and allocates
    // nothing. It runs after std's own reset of the child's signal mask.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(()),
                err => Err(io::Error::from_raw_os_error(err)),
            }
        });
    }
}

/// Sends the child that `command` spawns `signal` as the last thing before its exec: a
/// test's stand-in for a signal that reaches a child before its handlers are in (with
/// [`start_with_stop_signals_blocked`] before it, the signal waits, pending, across exec).
pub fn signal_before_exec(command: &mut std::process::Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure makes two async-signal-safe calls
    // (getpid, kill) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::kill(libc::getpid(), signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub mod mmsg;
mod provided;
pub mod pthread;
pub mod racy;
pub mod second_signal;
pub mod shared;
pub mod sigchld_lock;
pub mod uring;
pub mod uring_udp;

/// What `fork` returned, in the process that sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkResult {
    /// We are the parent; the value is the child's process id.
    Parent(libc::pid_t),
    /// We are the child.
    Child,
}

/// Forks the calling process.
///
/// # Safety
///
/// The caller must be single-threaded at the moment of the call, or the child must
/// restrict itself to async-signal-safe calls until it calls [`exit_immediately`] or
/// `exec`. A multi-threaded parent can hold a lock (in the allocator, in stdio) at the
/// instant of the fork; the child gets a copy of that lock in the held state and
/// deadlocks the first time it takes it. A single-threaded parent holds no such lock
/// while it is inside `fork`, so its child may allocate and print freely.
pub unsafe fn fork() -> io::Result<ForkResult> {
    // SAFETY: fork has no memory-safety preconditions of its own; the caller upholds the
    // threading rule above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent(pid)),
    }
}

/// Forks, after checking that the calling process has exactly one thread, which makes
/// the child free to allocate, lock and print (see [`fork`]).
///
/// Fails with an error naming the thread count otherwise, so that a
/// caller that started a thread by mistake gets an error instead of a child that may
/// deadlock.
pub fn fork_single_threaded() -> io::Result<ForkResult> {
    let n_threads = thread_count()?;
    if n_threads != 1 {
        return Err(io::Error::other(format!(
            "refusing to fork: the process has {n_threads} threads, and a child of a multi-threaded process may deadlock"
        )));
    }
    // SAFETY: the process has one thread (checked just above; only this thread could
    // start another, and it is here).
    unsafe { fork() }
}

/// Forks a child that does nothing but `_exit(code)`, and returns its process id.
///
/// Safe from any process, multi-threaded or not: the child calls one async-signal-safe
/// function and touches no lock, no buffer and no allocation it inherited. This is the
/// child of the lecture's fork tests and of the lab's spawn-cost measurement, where
/// checking the thread count on every fork would be part of what is measured.
pub fn fork_exiting_child(code: i32) -> io::Result<libc::pid_t> {
    // SAFETY: the child runs only `_exit`, which is async-signal-safe (see `fork`).
    match unsafe { fork() }? {
        ForkResult::Child => exit_immediately(code),
        ForkResult::Parent(pid) => Ok(pid),
    }
}

/// The number of threads of the calling process, from `/proc/self/stat`.
pub fn thread_count() -> io::Result<usize> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Field 20 (num_threads); the command name (field 2) may hold spaces but ends at the
    // last ')'.
    let after_comm = stat.rfind(')').map_or("", |idx| &stat[idx + 1..]);
    after_comm
        .split_whitespace()
        .nth(17)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::other("cannot parse /proc/self/stat"))
}

/// Ends the calling process at once with `code`, like C's `_exit`.
///
/// No destructors run, no `atexit` handlers run, and no user-space buffer is flushed.
/// That is what a forked child needs: buffers it inherited from its parent (a
/// half-filled `BufWriter`, stdio) belong to the parent and would otherwise be written
/// twice.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Resets the disposition of `signal` to its default action (`SIG_DFL`).
///
/// A forked child inherits its parent's handlers; a handler that writes to the parent's
/// self-pipe would wake the parent for the child's signals. Resetting is
/// async-signal-safe, so it is allowed right after `fork` in any process.
pub fn reset_signal_to_default(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed sigaction with sa_handler = SIG_DFL and an empty mask is a valid
    // argument; sigaction only reads it.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

static SHUT_DOWN_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static SHUT_DOWN_BY_SIGNAL: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

extern "C" fn shut_down_on_signal(_signal: libc::c_int) {
    use std::sync::atomic::Ordering;
    SHUT_DOWN_BY_SIGNAL.store(true, Ordering::SeqCst);
    let fd = SHUT_DOWN_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: shutdown(2) is async-signal-safe and touches no memory of ours.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
}

/// For a process that serves one socket (the process model's child): SIGTERM and SIGINT
/// set the returned flag and shut `fd` down, so that a blocked read or write returns and
/// the connection ends as a shutdown, with its close line, instead of the process dying
/// mid-call. Not restarted (no `SA_RESTART`): a blocked call returns `EINTR`. Call it once,
/// with the signals blocked or before they can arrive.
pub fn shut_down_on_sigterm(
    fd: std::os::fd::RawFd,
) -> io::Result<&'static std::sync::atomic::AtomicBool> {
    SHUT_DOWN_FD.store(fd, std::sync::atomic::Ordering::SeqCst);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with our handler and an empty mask is valid; the
        // handler only does async-signal-safe things (atomics, shutdown).
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = shut_down_on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(&SHUT_DOWN_BY_SIGNAL)
}

/// Reads the CPU's time-stamp counter (a cycle count at a constant reference rate).
///
/// Returns `None` on architectures without one; callers then report nanoseconds only.
pub fn cycles() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc is available on every x86_64 CPU and has no side effects.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}
