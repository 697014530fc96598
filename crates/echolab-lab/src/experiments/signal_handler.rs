//! `signal-handler`: the lecture's "why don't we use printf in handlers?". A process forks
//! short-lived children and logs each start; a SIGCHLD handler reaps them and logs each
//! exit through the same lock. When a child's SIGCHLD lands while the main flow holds the
//! lock, the handler waits for a lock its own thread holds: the process hangs, silently.
//!
//! Trade-off: reaping in the handler reacts at once and makes the handler share state (a
//! lock) with the code it interrupts; reaping in the main flow (SIGCHLD blocked, read from
//! a signalfd) reacts at the next loop turn and shares nothing, so it cannot deadlock.
//!
//! About Rust: `println!`'s lock is a `ReentrantMutex`, so a handler calling `println!`
//! would not block on it; it would re-enter and then fail on the inner `RefCell` (a panic,
//! which aborts in an `extern "C"` handler), or worse. That is not the lecture's hang, so
//! the lab does not pretend it is: the handler and the log here share a plain,
//! non-reentrant `std::sync::Mutex` (in echolab-sys's `sigchld_lock`), which is how a
//! malloc arena lock or a non-recursive stdio lock behaves. Both variants run in a child
//! process (single-threaded, so fork is safe) under the watchdog.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use serde_json::{json, Value};

use echolab_sys::fork_exiting_child;
use echolab_sys::sigchld_lock;

use crate::child::{config_str, config_u64};
use crate::experiment::{thousands, Deadline, Experiment, Report, Settings};
use crate::plot::{Bar, Panel, Picture};
use crate::watchdog::{child_args, End, WatchedChild};

pub const EXPERIMENT: Experiment = Experiment {
    name: "signal-handler",
    summary: "printf in a SIGCHLD handler: a handler sharing a lock with main hangs; signalfd reaps all (--trials: runs of the hang)",
    max_trials: 1_000,
    run,
};

/// Children the hanging variant forks at most (it usually hangs long before).
pub const HANG_MAX_CHILDREN: u64 = 20_000;
/// Children the fixed variant forks.
pub const FIXED_CHILDREN: u64 = 1_000;
/// No output for this long while alive: the watchdog calls it a hang.
pub const STALL: Duration = Duration::from_millis(1_000);

/// What one run of either variant came to. The "exited" count of a hung run is a lower
/// bound: the log is fully buffered, and what was still in the buffer never came out.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `forked N` lines seen: children forked (and their start logged).
    pub started: u64,
    /// `exited child` lines seen: children reaped and logged.
    pub exited: u64,
    /// The watchdog's finding when it hung; `None` when it finished.
    pub hang: Option<String>,
    /// The child's own result line (reaped count), when it finished.
    pub result: Option<Value>,
    pub elapsed: Duration,
}

/// Runs one variant (`locking` or `signalfd`) with `n_children` in a watched child.
pub fn run_variant(
    settings: &Settings,
    variant: &str,
    n_children: u64,
    deadline: Deadline,
) -> io::Result<Outcome> {
    let config = json!({ "variant": variant, "children": n_children });
    let started_at = Instant::now();
    let child = WatchedChild::spawn(&settings.exe, &child_args("signal-handler", &config))?;
    let finished = child.wait(deadline, Some(STALL))?;
    let count = |prefix: &str| {
        finished
            .lines
            .iter()
            .filter(|line| line.text.starts_with(prefix))
            .count() as u64
    };
    let started = count("forked ");
    let exited = count("exited child");
    let hang = match &finished.end {
        End::Exited(_) => None,
        End::Hung { after, stalled, state } => Some(format!(
            "{} after {:.2} s with {} children started and {} reaped; last output {:.2} s before; /proc showed: {}",
            if *stalled { "stalled (no output)" } else { "still running at the deadline" },
            after.as_secs_f64(),
            started,
            exited,
            finished.lines.last().map_or(after.as_secs_f64(), |line| line.at.elapsed().as_secs_f64()),
            state.summary()
        )),
    };
    let result = finished.result();
    if hang.is_none() && result.is_none() {
        return Err(io::Error::other(format!(
            "signal-handler {variant}: the child ended ({:?}) without a result: {}",
            finished.end,
            finished.stderr.trim()
        )));
    }
    Ok(Outcome {
        started,
        exited,
        hang,
        result,
        elapsed: started_at.elapsed(),
    })
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(1);
    let deadline = settings.deadline();
    let mut measured = Vec::new();
    let mut hangs = Vec::new();
    let mut hang_bars = Vec::new();
    let mut runs = Vec::new();
    for trial in 0..trials {
        let run_deadline = deadline.min_after(settings.timeout / (trials as u32 + 1));
        let outcome = run_variant(settings, "locking", HANG_MAX_CHILDREN, run_deadline)?;
        match &outcome.hang {
            Some(hang) => {
                measured.push(format!(
                    "locking handler, run {}: HUNG after {} children started ({} reaped by the handler)",
                    trial + 1,
                    thousands(outcome.started),
                    thousands(outcome.exited)
                ));
                hangs.push(hang.clone());
            }
            None => measured.push(format!(
                "locking handler, run {}: finished all {} children without hanging this time",
                trial + 1,
                thousands(outcome.started)
            )),
        }
        hang_bars.push(Bar::new(
            format!("run {}", trial + 1),
            outcome.started as f64,
        ));
        runs.push(json!({
            "started": outcome.started,
            "reaped": outcome.exited,
            "hung": outcome.hang.is_some(),
            "seconds": outcome.elapsed.as_secs_f64(),
        }));
    }
    let fixed = run_variant(
        settings,
        "signalfd",
        FIXED_CHILDREN,
        deadline.min_after(settings.timeout),
    )?;
    let fixed_reaped = fixed
        .result
        .as_ref()
        .and_then(|result| result["reaped"].as_u64())
        .unwrap_or(0);
    measured.push(format!(
        "signalfd, reaping in the main flow: {} children started, {} reaped, in {:.2} s{}",
        thousands(fixed.started),
        thousands(fixed_reaped),
        fixed.elapsed.as_secs_f64(),
        if fixed.hang.is_some() { " (HUNG)" } else { "" }
    ));
    if let Some(hang) = &fixed.hang {
        hangs.push(format!("signalfd variant (should not happen): {hang}"));
    }
    let n_hung = runs.iter().filter(|run| run["hung"] == true).count();
    let hang_panel = Panel::new("locking handler: children before the hang", hang_bars);
    let picture = Picture::new(
        "Children forked before the process went silent",
        "children started",
        vec![
            hang_panel,
            Panel::new(
                "signalfd: every child reaped",
                vec![
                    Bar::new("started", fixed.started as f64),
                    Bar::new("reaped", fixed_reaped as f64),
                ],
            ),
        ],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "A lock shared with a signal handler (printf in a SIGCHLD handler)",
        claim: "printf takes a lock; if SIGCHLD arrives while main is inside printf and the handler calls printf too, the handler waits for a lock its own thread holds. The lecture's test forked 3,566 children, then silence.",
        did: format!(
            "In a child process under a watchdog: fork up to {} children that exit at once, logging each start under a non-reentrant lock; \
             a SIGCHLD handler reaps them and logs each exit under the same lock. The watchdog calls it hung after {:.1} s without output, \
             reads /proc, and kills it. Then the same with SIGCHLD blocked and read from a signalfd, reaping in the main flow ({} children).",
            thousands(HANG_MAX_CHILDREN),
            STALL.as_secs_f64(),
            thousands(FIXED_CHILDREN)
        ),
        measured,
        meaning: format!(
            "{n_hung} of {trials} run(s) of the locking handler hung, each after a number of children that is pure timing (a SIGCHLD has to land inside \
             the main flow's time under the lock, which is longest when a full buffer is written out, so hangs cluster at flushes); /proc shows the one thread asleep in a futex wait, on the lock it holds itself. \
             Rust's println! would not reproduce this: its stdout lock is reentrant, so a handler would re-enter it and trip over the RefCell inside \
             (a panic that aborts) instead of hanging; the lab uses a plain mutex, like malloc's."
        ),
        fix: format!(
            "Do nothing in a handler that is not async-signal-safe: block SIGCHLD, read it from a signalfd (or have the handler only write a byte to a self-pipe), \
             and reap and log in the main flow. Here that version started {} children and reaped {}.",
            thousands(fixed.started),
            thousands(fixed_reaped)
        ),
        hangs,
        figures: json!({
            "locking_runs": runs,
            "signalfd": { "started": fixed.started, "reaped": fixed_reaped, "hung": fixed.hang.is_some() },
        }),
        svg: Some(picture.svg()),
    })
}

/// The child process: `variant` "locking" (the hazard) or "signalfd" (the fix).
pub fn child_body(config: &Value) -> io::Result<Value> {
    let n_children = config_u64(config, "children", FIXED_CHILDREN);
    match config_str(config, "variant", "signalfd") {
        "locking" => locking(n_children),
        "signalfd" => with_signalfd(n_children),
        other => Err(io::Error::other(format!(
            "unknown signal-handler variant {other:?}"
        ))),
    }
}

fn locking(n_children: u64) -> io::Result<Value> {
    sigchld_lock::install_locking_sigchld_handler()?;
    for child_idx in 0..n_children {
        let pid = fork_exiting_child(0)?;
        sigchld_lock::log_started(child_idx, pid);
        // Progress, outside the shared lock: std's own stdout (its own buffer and lock,
        // which the handler never touches), so the watchdog can count children even
        // though the log is fully buffered.
        println!("forked {}", child_idx + 1);
    }
    sigchld_lock::flush_log();
    // Still alive: the handler reaps the last children as their signals arrive.
    let give_up = Instant::now() + Duration::from_secs(5);
    while sigchld_lock::reaped_by_handler() < n_children && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(json!({ "started": n_children, "reaped": sigchld_lock::reaped_by_handler() }))
}

fn with_signalfd(n_children: u64) -> io::Result<Value> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    // Blocked, SIGCHLD is never delivered as an interruption: it waits in the signalfd.
    mask.thread_block().map_err(io::Error::from)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut reaped = 0;
    for child_idx in 0..n_children {
        let pid = fork_exiting_child(0)?;
        sigchld_lock::log_started(child_idx, pid);
        println!("forked {}", child_idx + 1);
        if let Ok(Some(_)) = signals.read_signal() {
            reaped += reap_all();
        }
    }
    let give_up = Instant::now() + Duration::from_secs(10);
    while reaped < n_children && Instant::now() < give_up {
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        while let Ok(Some(_)) = signals.read_signal() {}
        // One SIGCHLD may stand for many children: reap until none is left.
        reaped += reap_all();
    }
    sigchld_lock::flush_log();
    Ok(json!({ "started": n_children, "reaped": reaped }))
}

/// Reaps every exited child without blocking, logging each, in the main flow.
fn reap_all() -> u64 {
    let mut reaped = 0;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                sigchld_lock::log_exited(pid.as_raw(), code << 8);
                reaped += 1;
            }
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                sigchld_lock::log_exited(pid.as_raw(), signal as i32);
                reaped += 1;
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => continue,
        }
    }
}
