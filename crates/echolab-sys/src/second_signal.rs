//! "A second SIGINT or SIGTERM ends the process at once", without mistaking one stop
//! request delivered twice for a second one.
//!
//! `timeout(1)` sends its signal to the command and then to the command's whole process
//! group, so the command receives it twice, microseconds apart; a supervisor that signals
//! the process and then its group does the same. When the first delivery has already run
//! its handler, the second would look like an impatient user's second Ctrl-C and end the
//! process at once: a server then exits 1 without closing its connections, a bench exits
//! without printing what it measured. So a signal counts as the second only when it comes
//! at least [`DUPLICATE_WINDOW`] after the first.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::SigId;

/// Signals that arrive within this time of the first are one request delivered twice.
/// A person's second Ctrl-C comes later; a duplicate from `timeout` comes within
/// microseconds (this leaves room for a loaded machine).
pub const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);

/// Whether a signal arriving at `now_ns` ends the process at once: the stop was already
/// requested (`armed`), and either no signal requested it (`first_ns` 0: the program
/// triggered its own stop, a panic for instance) or the first signal came at least
/// [`DUPLICATE_WINDOW`] before. Times are nanoseconds of `CLOCK_MONOTONIC`.
pub fn ends_at_once(armed: bool, first_ns: u64, now_ns: u64) -> bool {
    armed
        && (first_ns == 0 || now_ns.saturating_sub(first_ns) >= DUPLICATE_WINDOW.as_nanos() as u64)
}

/// Registers, for each of `signals`, a handler that exits the process with `code` (by
/// `_exit`) when the signal is a second stop request (see [`ends_at_once`]); `armed` is the
/// flag the first request sets. Register it before the handler that sets `armed`, so it
/// sees the flag as it was before this signal.
pub fn exit_on_second_signal(
    signals: &[libc::c_int],
    code: i32,
    armed: &Arc<AtomicBool>,
) -> io::Result<Vec<SigId>> {
    // One first time for all the signals: SIGINT and then SIGTERM are one request too.
    let first_ns = Arc::new(AtomicU64::new(0));
    let mut ids = Vec::with_capacity(signals.len());
    for &signal in signals {
        let armed = Arc::clone(armed);
        let first_ns = Arc::clone(&first_ns);
        let action = move || {
            let now_ns = monotonic_ns();
            if !armed.load(Ordering::SeqCst) {
                // The first request: remember when (never 0, which means "none").
                let _ =
                    first_ns.compare_exchange(0, now_ns.max(1), Ordering::SeqCst, Ordering::SeqCst);
            } else if ends_at_once(true, first_ns.load(Ordering::SeqCst), now_ns) {
                signal_hook::low_level::exit(code);
            }
        };
        // SAFETY: the action is async-signal-safe: it only loads and stores atomics
        // (lock-free on every target echolab builds for), calls clock_gettime (on POSIX's
        // list of async-signal-safe functions) and _exit; it allocates nothing and takes
        // no lock.
        ids.push(unsafe { signal_hook::low_level::register(signal, action) }?);
    }
    Ok(ids)
}

/// `CLOCK_MONOTONIC` in nanoseconds (0 if the clock cannot be read, which Linux never does).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = DUPLICATE_WINDOW.as_nanos() as u64;

    #[test]
    fn the_first_request_never_ends_at_once() {
        assert!(!ends_at_once(false, 0, 5));
        assert!(!ends_at_once(false, 1, 10 * WINDOW));
    }

    #[test]
    fn a_duplicate_within_the_window_is_the_same_request() {
        assert!(!ends_at_once(true, 1_000, 1_000));
        assert!(!ends_at_once(true, 1_000, 1_000 + WINDOW - 1));
    }

    #[test]
    fn a_signal_after_the_window_ends_at_once() {
        assert!(ends_at_once(true, 1_000, 1_000 + WINDOW));
        assert!(ends_at_once(true, 1_000, 1_000 + 3 * WINDOW));
    }

    #[test]
    fn a_stop_the_program_triggered_itself_ends_at_the_first_signal() {
        assert!(ends_at_once(true, 0, 1));
    }

    /// Set in the child process of [`a_second_signal_after_the_window_exits_a_duplicate_does_not`].
    const CHILD_ENV: &str = "ECHOLAB_SECOND_SIGNAL_CHILD";

    /// The child's part (does nothing in a normal run): registers the handlers on SIGUSR2
    /// with exit code 42, raises the first signal and at once its duplicate (it must live
    /// on and say so), then, after the window, a second one (it must exit 42).
    #[test]
    fn second_signal_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let armed = Arc::new(AtomicBool::new(false));
        exit_on_second_signal(&[libc::SIGUSR2], 42, &armed).unwrap();
        signal_hook::flag::register(libc::SIGUSR2, Arc::clone(&armed)).unwrap();
        signal_hook::low_level::raise(libc::SIGUSR2).unwrap();
        signal_hook::low_level::raise(libc::SIGUSR2).unwrap();
        println!("survived the duplicate");
        // Time passing is what is tested here, not a synchronisation.
        std::thread::sleep(DUPLICATE_WINDOW + Duration::from_millis(100));
        signal_hook::low_level::raise(libc::SIGUSR2).unwrap();
        println!("survived the second signal");
    }

    #[test]
    fn a_second_signal_after_the_window_exits_a_duplicate_does_not() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "second_signal::tests::second_signal_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("survived the duplicate"), "{stdout}");
        assert!(!stdout.contains("survived the second signal"), "{stdout}");
        assert_eq!(output.status.code(), Some(42), "{stdout}");
    }

    #[test]
    fn the_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
