//! SIGINT and SIGTERM as a descriptor that poll(2) can wait on (the self-pipe trick), and
//! a panic anywhere in the server as the same stop signal.
//!
//! The signal handler that `signal-hook` installs only writes one byte to a pipe, which is
//! async-signal-safe; every reaction to the signal (stop accepting, close connections,
//! join threads) happens in the normal flow of the program that polls the pipe.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

/// The server's stop signal. Readable (in poll) once SIGINT or SIGTERM arrived, or once
/// [`Shutdown::trigger`] was called.
#[derive(Debug)]
pub struct Shutdown {
    /// The read end of the self-pipe; non-blocking, never drained, so it stays readable.
    read_end: UnixStream,
    /// The write end, for [`Shutdown::trigger`] and the panic hook (shared, not
    /// duplicated: a server out of descriptors has none to spare); a clone of it is
    /// registered with both signals.
    write_end: Arc<UnixStream>,
    /// Set with the pipe byte; lets threads that do not poll check cheaply.
    flag: Arc<AtomicBool>,
    /// The handler registrations, removed on drop.
    sig_ids: Vec<SigId>,
}

impl Shutdown {
    /// Installs handlers for SIGINT and SIGTERM that make this signal fire.
    pub fn install() -> io::Result<Shutdown> {
        let (read_end, write_end) = UnixStream::pair()?;
        read_end.set_nonblocking(true)?;
        write_end.set_nonblocking(true)?;
        let flag = Arc::new(AtomicBool::new(false));
        let mut sig_ids = Vec::new();
        // A second signal while shutting down ends the process at once (exit 1): the
        // way out of a shutdown that hangs. One signal delivered twice (`timeout` sends it
        // to the process and to its group) is not a second one.
        sig_ids.extend(echolab_sys::second_signal::exit_on_second_signal(
            &[SIGINT, SIGTERM],
            1,
            &flag,
        )?);
        for signal in [SIGINT, SIGTERM] {
            // The flag before the pipe: a poller that wakes on the byte sees the flag set.
            sig_ids.push(signal_hook::flag::register(signal, Arc::clone(&flag))?);
            sig_ids.push(signal_hook::low_level::pipe::register(
                signal,
                write_end.try_clone()?,
            )?);
        }
        Ok(Shutdown {
            read_end,
            write_end: Arc::new(write_end),
            flag,
            sig_ids,
        })
    }

    /// Fires the signal from inside the program (tests, an embedding application).
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A full pipe already wakes every poller; nothing else can fail here.
        let _ = (&*self.write_end).write(&[1]);
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// A shared handle on the flag, for threads that check it between blocking calls.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }

    /// Waits up to `timeout` for the signal; true if it fired.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        let _ = nix::poll::poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        );
        self.is_triggered()
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read_end.as_fd()
    }

    /// Empties the pipe (for a poller that must not keep waking, e.g. a model that
    /// drains connections after the signal).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.read_end).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Set by the panic hook of [`Shutdown::stop_on_panic`] at the first panic.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Whether a thread of this server panicked; [`crate::serve`] then reports a failure.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

impl Shutdown {
    /// Makes a panic in any thread of this process stop the whole server, never leaving it
    /// half alive (a dead loop whose listener still takes connections): the panic hook
    /// logs one line (`thread 'NAME' panicked at FILE:LINE: MESSAGE; stopping the server`)
    /// and fires this signal, so every loop, worker and accept loop stops as for SIGTERM,
    /// and [`panicked`] turns true. Later panics (a scope re-raising the first) log nothing.
    ///
    /// A child process of the process model that panics logs its line and exits at once
    /// with status 70: it must not unwind into the parent's code it was forked from, and a
    /// child that fails takes only its own connection (the model's isolation).
    ///
    /// Replaces the process's panic hook (the default one prints a multi-line message).
    pub fn stop_on_panic(&self) {
        let write_end = Arc::clone(&self.write_end);
        let flag = Arc::clone(&self.flag);
        let server_pid = std::process::id();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let place = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
            if std::process::id() != server_pid {
                log::error!(
                    "child {} panicked{place}: {message}; it ends, with its connection",
                    std::process::id()
                );
                echolab_sys::exit_immediately(70);
            }
            if PANICKED.swap(true, Ordering::SeqCst) {
                return;
            }
            log::error!("thread '{name}' panicked{place}: {message}; stopping the server");
            flag.store(true, Ordering::SeqCst);
            let _ = (&*write_end).write(&[1]);
        }));
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        for id in self.sig_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
