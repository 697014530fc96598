//! The lecture's "printf in a SIGCHLD handler" deadlock, as a handler and a line log that
//! share one non-reentrant lock.
//!
//! `printf` takes stdio's lock; a SIGCHLD handler that calls `printf` while the interrupted
//! main flow is inside `printf` waits for a lock that its own thread holds, forever. Rust's
//! `println!` is no stand-in: its lock is reentrant (a `ReentrantMutex` around a `RefCell`),
//! so a handler would get in and then trip over the `RefCell` instead of hanging. This
//! module builds the C situation honestly: [`log_started`] and [`log_exited`] format a line
//! into a buffer under a plain `std::sync::Mutex` and `write(2)` it to stdout when the
//! buffer fills (fully buffered, like stdio writing to a pipe), and
//! [`install_locking_sigchld_handler`] installs a handler that reaps children and logs
//! each one through the same lock.
//!
//! The handler is fixed here, not supplied by the caller, because that is what makes the
//! installer safe to call: the handler touches only a `static` mutex (blocking on it is a
//! deadlock, not undefined behaviour), atomics, `waitpid`, `write` and `errno`, and it
//! allocates nothing.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes the buffer holds, stdio's `BUFSIZ`.
const LINE_CAPACITY: usize = 4096;
/// The buffer is written out when less than this is left (a line is well under it).
const LINE_RESERVE: usize = 96;

/// The shared line buffer, stdio's buffer in the lecture's story. Holding the lock is the
/// exclusive right to format into `bytes` and write them out.
static LOG: Mutex<LineBuffer> = Mutex::new(LineBuffer {
    bytes: [0; LINE_CAPACITY],
    len: 0,
});

/// Children reaped by the handler so far.
static REAPED_BY_HANDLER: AtomicU64 = AtomicU64::new(0);

struct LineBuffer {
    bytes: [u8; LINE_CAPACITY],
    len: usize,
}

impl LineBuffer {
    fn push_str(&mut self, text: &str) {
        for &byte in text.as_bytes() {
            if self.len < LINE_CAPACITY {
                self.bytes[self.len] = byte;
                self.len += 1;
            }
        }
    }

    /// Decimal digits without allocating (`format!` would call malloc, a second lock).
    fn push_u64(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut n_digits = 0;
        loop {
            digits[n_digits] = b'0' + (value % 10) as u8;
            n_digits += 1;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        for idx in (0..n_digits).rev() {
            if self.len < LINE_CAPACITY {
                self.bytes[self.len] = digits[idx];
                self.len += 1;
            }
        }
    }

    /// Writes the buffer out if another line might not fit.
    fn flush_if_full(&mut self) {
        if LINE_CAPACITY - self.len < LINE_RESERVE {
            self.flush();
        }
    }

    /// Writes the buffer to stdout with `write(2)` and empties it.
    fn flush(&mut self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: the pointer and length describe initialised bytes of `self.bytes`,
            // which outlive the call; write(2) only reads them.
            let n = unsafe {
                libc::write(
                    libc::STDOUT_FILENO,
                    self.bytes[done..].as_ptr().cast(),
                    self.len - done,
                )
            };
            if n <= 0 {
                break; // Nobody reads our stdout any more; the line is lost, nothing else.
            }
            done += n as usize;
        }
        self.len = 0;
    }
}

fn lock_log() -> std::sync::MutexGuard<'static, LineBuffer> {
    // Nothing panics while the lock is held, so a poisoned lock still guards valid bytes.
    LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Main flow: logs `started child #idx=pid` under the shared lock (the lecture's
/// `printf("Child #%d=%d started\n")`).
pub fn log_started(child_idx: u64, pid: libc::pid_t) {
    let mut log = lock_log();
    log.push_str("started child #");
    log.push_u64(child_idx);
    log.push_str("=");
    log.push_u64(pid as u64);
    log.push_str("\n");
    log.flush_if_full();
}

/// Logs `exited child PID status S` under the shared lock: from the main flow in the fixed
/// version, and from the handler in the broken one.
pub fn log_exited(pid: libc::pid_t, status: libc::c_int) {
    let mut log = lock_log();
    log.push_str("exited child ");
    log.push_u64(pid as u64);
    log.push_str(" status ");
    log.push_u64(status as u32 as u64);
    log.push_str("\n");
    log.flush_if_full();
}

/// Writes out whatever the log buffer holds (C's `fflush(stdout)`), from the main flow.
pub fn flush_log() {
    lock_log().flush();
}

/// How many children the handler installed by [`install_locking_sigchld_handler`] reaped.
pub fn reaped_by_handler() -> u64 {
    REAPED_BY_HANDLER.load(Ordering::SeqCst)
}

extern "C" fn locking_sigchld_handler(_signal: libc::c_int) {
    // The handler may interrupt code that reads errno right after a failed call; keep it.
    let saved_errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid is async-signal-safe; `status` is a valid place to write.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        REAPED_BY_HANDLER.fetch_add(1, Ordering::SeqCst);
        // THE BUG, on purpose: if the main flow holds LOG right now, this waits for a
        // lock that only this very thread could release.
        log_exited(pid, status);
    }
    // SAFETY: __errno_location returns this thread's errno slot, always valid to write.
    unsafe { *libc::__errno_location() = saved_errno };
}

/// Installs, for SIGCHLD, a handler that reaps every exited child and logs each through
/// the lock that [`log_started`] takes: the lecture's deadlock, waiting to happen.
///
/// Meant for a single-threaded process that forks short-lived children and logs each
/// start. The handler runs with `SA_RESTART`, as `signal(2)` installs it on Linux.
pub fn install_locking_sigchld_handler() -> io::Result<()> {
    // SAFETY: the action is fully initialised (zeroed, then handler, flags and an empty
    // mask set); the handler is an `extern "C" fn(c_int)` that only touches a static
    // mutex, atomics, waitpid, write and errno (see the module documentation).
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = locking_sigchld_handler as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
