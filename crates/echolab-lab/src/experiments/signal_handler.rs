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
use crate::plot::{Bar, Panel, Picture, Series};
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

/// How a run of either variant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// It forked and reaped every child and exited.
    Finished,
    /// It went silent (no output for [`STALL`]) while alive: no progress, a hang.
    Hung,
    /// Its time budget ran out while it was still making progress: cut off, not hung.
    TimedOut,
}

/// What one run of either variant came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `forked N` lines seen: children forked (and their start logged).
    pub started: u64,
    /// Children reaped: the child's own count when it finished; otherwise the children
    /// started minus those /proc still showed unreaped when the watchdog stopped it.
    pub reaped: u64,
    pub ending: Ending,
    /// The watchdog's finding when it stopped the run (state of each thread).
    pub detail: Option<String>,
    pub elapsed: Duration,
    /// How long it had printed nothing when it ended (zero when it finished).
    pub silent_for: Duration,
    /// (seconds since the start, children started so far), at most [`TIMELINE_POINTS`]
    /// points, ending when the run ended (a flat end is the silence before the verdict).
    pub timeline: Vec<(f64, f64)>,
}

/// Points kept of a run's timeline.
pub const TIMELINE_POINTS: usize = 300;

/// Thins `points` to at most `max` of them, keeping the first and the last.
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = points.len().div_ceil(max - 1);
    let mut kept: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let Some(&last) = points.last() {
        if kept.last() != Some(&last) {
            kept.push(last);
        }
    }
    kept
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
    let forked: Vec<(f64, f64)> = finished
        .lines
        .iter()
        .filter(|line| line.text.starts_with("forked "))
        .enumerate()
        .map(|(idx, line)| {
            (
                line.at.saturating_duration_since(started_at).as_secs_f64(),
                (idx + 1) as f64,
            )
        })
        .collect();
    let started = forked.len() as u64;
    let silent_for = match &finished.end {
        End::Exited(_) => Duration::ZERO,
        End::Hung { after, .. } => finished
            .lines
            .last()
            .map_or(*after, |line| line.at.elapsed()),
    };
    let (ending, reaped, detail) = match &finished.end {
        End::Exited(_) => {
            let result = finished.result().ok_or_else(|| {
                io::Error::other(format!(
                    "signal-handler {variant}: the child ended ({:?}) without a result: {}",
                    finished.end,
                    finished.stderr.trim()
                ))
            })?;
            (
                Ending::Finished,
                result["reaped"].as_u64().unwrap_or(0),
                None,
            )
        }
        End::Hung {
            after,
            stalled,
            state,
        } => {
            let unreaped = state.children.len() as u64;
            let hung = *stalled || blocked_on_itself(state);
            let detail = format!(
                "{} after {:.2} s with {} children started, {} still unreaped; last output {:.2} s before; /proc showed: {}",
                if *stalled {
                    format!("hung: no output for {:.1} s", STALL.as_secs_f64())
                } else if hung {
                    "hung: cut off by its budget, and its only thread was asleep in a futex wait, which nothing can wake".to_string()
                } else {
                    "timed out: still running at the end of its budget".to_string()
                },
                after.as_secs_f64(),
                thousands(started),
                thousands(unreaped),
                silent_for.as_secs_f64(),
                state.summary()
            );
            (
                if hung { Ending::Hung } else { Ending::TimedOut },
                started.saturating_sub(unreaped),
                Some(detail),
            )
        }
    };
    let elapsed = started_at.elapsed();
    let mut timeline = thin(&forked, TIMELINE_POINTS - 2);
    timeline.insert(0, (0.0, 0.0));
    timeline.push((elapsed.as_secs_f64(), started as f64));
    Ok(Outcome {
        started,
        reaped,
        ending,
        detail,
        elapsed,
        silent_for,
        timeline,
    })
}

/// True when the process has one thread and it sleeps in a futex wait: a single-threaded
/// process waiting for a lock can only be waiting for itself (the handler interrupted
/// the main flow while it held the lock), so nothing will ever wake it.
pub fn blocked_on_itself(state: &crate::watchdog::ProcState) -> bool {
    matches!(state.threads.as_slice(), [only] if only.wchan.contains("futex"))
}

/// The measured line of locking run `run` (counted from 1).
pub fn locking_line(run: usize, outcome: &Outcome) -> String {
    let (started, reaped) = (thousands(outcome.started), thousands(outcome.reaped));
    match outcome.ending {
        Ending::Hung => format!(
            "locking handler, run {run}: HUNG (silent for {:.2} s, asleep on its own lock) after {started} children started, {reaped} reaped by the handler",
            outcome.silent_for.as_secs_f64()
        ),
        Ending::TimedOut => format!(
            "locking handler, run {run}: timed out after {:.2} s, still making progress: {started} children started, {reaped} reaped, no hang yet",
            outcome.elapsed.as_secs_f64()
        ),
        Ending::Finished => format!(
            "locking handler, run {run}: finished all {started} children without hanging this time ({reaped} reaped)"
        ),
    }
}

/// The measured line of the signalfd run.
pub fn fixed_line(outcome: &Outcome) -> String {
    let how = match outcome.ending {
        Ending::Finished => "finished".to_string(),
        Ending::Hung => format!(
            "HUNG (silent for {:.2} s)",
            outcome.silent_for.as_secs_f64()
        ),
        Ending::TimedOut => "timed out, still running".to_string(),
    };
    format!(
        "signalfd, reaping in the main flow: {how} after {:.2} s: {} children started, {} reaped",
        outcome.elapsed.as_secs_f64(),
        thousands(outcome.started),
        thousands(outcome.reaped)
    )
}

/// What the locking runs mean, from their endings (`asked` runs were asked for).
pub fn meaning(runs: &[Outcome], asked: usize) -> String {
    let count = |ending| runs.iter().filter(|run| run.ending == ending).count();
    let (hung, timed_out, finished) = (
        count(Ending::Hung),
        count(Ending::TimedOut),
        count(Ending::Finished),
    );
    let mut text = format!("Of {} run(s) of the locking handler", runs.len());
    if runs.len() < asked {
        text.push_str(&format!(
            " ({asked} asked for; the deadline left no time for the rest)"
        ));
    }
    text.push_str(&format!(
        ", {hung} hung, {timed_out} timed out while still making progress, and {finished} finished."
    ));
    if hung > 0 {
        let at: Vec<String> = runs
            .iter()
            .filter(|run| run.ending == Ending::Hung)
            .map(|run| thousands(run.started))
            .collect();
        text.push_str(&format!(
            " The hangs came after {} children: pure timing (a SIGCHLD has to land while the main flow holds the lock, longest when a full \
             buffer is written out), and /proc shows the one thread asleep in a futex wait, on the lock it holds itself.",
            at.join(", ")
        ));
    } else {
        text.push_str(
            " No run hung this time: no SIGCHLD landed while the main flow held the lock. The hazard is timing, so its absence proves nothing.",
        );
    }
    if timed_out > 0 {
        text.push_str(" A timed-out run is not a hang: it was still forking and reaping when its budget ran out.");
    }
    text.push_str(
        " This lock is stricter than C's: glibc's stdio lock is recursive, so a handler's printf re-enters it and the C program hangs only when \
         the signal lands in the few instructions where the lock itself (or malloc's lock) is being changed, which is rare (3,566 children in the \
         lecture's run); the lab's plain mutex blocks whenever the signal lands anywhere inside the main flow's logging, so it hangs sooner. \
         Rust's println! would not reproduce either: its lock is reentrant and the RefCell inside it would panic (an abort in a handler) instead.",
    );
    text
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(1);
    // Two thirds of the deadline for the locking runs, one third of its own for the fix,
    // so that a slow hazard cannot eat the fix's time.
    let locking_phase = settings.deadline().min_after(settings.timeout * 2 / 3);
    let per_run = settings.per_trial(trials, 3 * STALL);
    let mut measured = Vec::new();
    let mut hangs = Vec::new();
    let mut hang_bars = Vec::new();
    let mut runs = Vec::new();
    let mut outcomes = Vec::new();
    while outcomes.len() < trials && (outcomes.is_empty() || !locking_phase.passed()) {
        let outcome = run_variant(
            settings,
            "locking",
            HANG_MAX_CHILDREN,
            locking_phase.min_after(per_run),
        )?;
        measured.push(locking_line(outcomes.len() + 1, &outcome));
        if let Some(detail) = &outcome.detail {
            hangs.push(format!("locking run {}: {detail}", outcomes.len() + 1));
        }
        hang_bars.push(Bar::new(
            format!(
                "run {}{}",
                outcomes.len() + 1,
                match outcome.ending {
                    Ending::Hung => " (hung)",
                    Ending::TimedOut => " (timed out)",
                    Ending::Finished => " (finished)",
                }
            ),
            outcome.started as f64,
        ));
        runs.push(json!({
            "started": outcome.started,
            "reaped": outcome.reaped,
            "ending": outcome.ending,
            "seconds": outcome.elapsed.as_secs_f64(),
        }));
        outcomes.push(outcome);
    }
    let fixed_budget = Deadline::after((settings.timeout / 3).max(Duration::from_secs(1)));
    let fixed = run_variant(settings, "signalfd", FIXED_CHILDREN, fixed_budget)?;
    measured.push(fixed_line(&fixed));
    if let Some(detail) = &fixed.detail {
        hangs.push(format!("signalfd run: {detail}"));
    }
    let mut lines: Vec<Series> = outcomes
        .iter()
        .enumerate()
        .map(|(idx, outcome)| Series {
            label: format!(
                "locking run {} ({})",
                idx + 1,
                match outcome.ending {
                    Ending::Hung => "hung",
                    Ending::TimedOut => "timed out",
                    Ending::Finished => "finished",
                }
            ),
            points: outcome.timeline.clone(),
        })
        .take(4)
        .collect();
    lines.push(Series {
        label: "signalfd".to_string(),
        points: fixed.timeline.clone(),
    });
    let mut hang_panel = Panel::lines(
        format!(
            "children started over time (first {} locking run(s) and the fix)",
            lines.len() - 1
        ),
        lines,
    );
    hang_panel.x_label = "seconds since the run started".to_string();
    let picture = Picture::new(
        "Children forked until each run ended (a flat end: silence, then the verdict)",
        "children",
        vec![
            hang_panel,
            Panel::new(
                "children started per locking run; the fix: started, reaped",
                hang_bars
                    .into_iter()
                    .chain([
                        Bar::new("signalfd started", fixed.started as f64),
                        Bar::new("signalfd reaped", fixed.reaped as f64),
                    ])
                    .collect(),
            ),
        ],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "A lock shared with a signal handler (printf in a SIGCHLD handler)",
        claim: "printf takes a lock; if SIGCHLD arrives while main is inside printf and the handler calls printf too, the handler waits for a lock its own thread holds. The lecture's test forked 3,566 children, then silence.",
        did: format!(
            "In a child process under a watchdog: fork up to {} children that exit at once, logging each start under a non-reentrant lock; \
             a SIGCHLD handler reaps them and logs each exit under the same lock. A run silent for {:.1} s is hung (the watchdog reads /proc and kills it); \
             one still printing when its budget ends is timed out. Then, with its own budget, the same with SIGCHLD blocked and read from a signalfd, \
             reaping in the main flow ({} children).",
            thousands(HANG_MAX_CHILDREN),
            STALL.as_secs_f64(),
            thousands(FIXED_CHILDREN)
        ),
        measured,
        meaning: meaning(&outcomes, trials),
        fix: fix_text(&fixed),
        hangs,
        figures: json!({
            "locking_runs": runs,
            "signalfd": { "started": fixed.started, "reaped": fixed.reaped, "ending": fixed.ending },
        }),
        svg: Some(picture.svg()),
    })
}

/// The fix's sentence, from how the signalfd run went.
pub fn fix_text(fixed: &Outcome) -> String {
    let how = match fixed.ending {
        Ending::Finished => format!(
            "Here that version started {} children and reaped {}.",
            thousands(fixed.started),
            thousands(fixed.reaped)
        ),
        Ending::TimedOut => format!(
            "Here that version ran out of its budget while still working ({} children started, {} reaped so far): give it a longer --timeout.",
            thousands(fixed.started),
            thousands(fixed.reaped)
        ),
        Ending::Hung => format!(
            "Here that version went silent after {} children, which it should not: that is a bug in the lab.",
            thousands(fixed.started)
        ),
    };
    format!(
        "Do nothing in a handler that is not async-signal-safe: block SIGCHLD, read it from a signalfd (or have the handler only write a byte to a self-pipe), \
         and reap and log in the main flow. {how}"
    )
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
        echolab_cli::print_out(&format!("forked {}", child_idx + 1));
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
        echolab_cli::print_out(&format!("forked {}", child_idx + 1));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(started: u64, reaped: u64, ending: Ending) -> Outcome {
        Outcome {
            started,
            reaped,
            ending,
            detail: None,
            elapsed: Duration::from_millis(1_500),
            timeline: Vec::new(),
            silent_for: if ending == Ending::Hung {
                Duration::from_millis(1_020)
            } else {
                Duration::ZERO
            },
        }
    }

    #[test]
    fn a_stall_is_a_hang_and_a_deadline_is_a_timeout() {
        assert_eq!(
            locking_line(1, &outcome(617, 600, Ending::Hung)),
            "locking handler, run 1: HUNG (silent for 1.02 s, asleep on its own lock) after 617 children started, 600 reaped by the handler"
        );
        assert_eq!(
            locking_line(2, &outcome(9_000, 8_990, Ending::TimedOut)),
            "locking handler, run 2: timed out after 1.50 s, still making progress: 9,000 children started, 8,990 reaped, no hang yet"
        );
        assert_eq!(
            locking_line(3, &outcome(20_000, 20_000, Ending::Finished)),
            "locking handler, run 3: finished all 20,000 children without hanging this time (20,000 reaped)"
        );
        assert_eq!(
            fixed_line(&outcome(400, 390, Ending::TimedOut)),
            "signalfd, reaping in the main flow: timed out, still running after 1.50 s: 400 children started, 390 reaped"
        );
        assert!(fixed_line(&outcome(1_000, 1_000, Ending::Finished))
            .contains("finished after 1.50 s: 1,000 children started, 1,000 reaped"));
        assert!(fixed_line(&outcome(5, 1, Ending::Hung)).contains("HUNG"));
    }

    #[test]
    fn one_thread_in_a_futex_wait_is_blocked_on_itself() {
        use crate::watchdog::{ProcState, ThreadState};
        let thread = |wchan: &str| ThreadState {
            tid: 1,
            state: "S".to_string(),
            wchan: wchan.to_string(),
            stack: Vec::new(),
        };
        let state = |threads: Vec<ThreadState>| ProcState {
            pid: 1,
            threads,
            children: Vec::new(),
        };
        assert!(blocked_on_itself(&state(vec![thread("futex_do_wait")])));
        assert!(!blocked_on_itself(&state(vec![thread("do_wait")])));
        assert!(!blocked_on_itself(&state(vec![thread("0")])));
        assert!(!blocked_on_itself(&state(vec![
            thread("futex_do_wait"),
            thread("futex_do_wait")
        ])));
        assert!(!blocked_on_itself(&state(Vec::new())));
    }

    #[test]
    fn thinning_keeps_the_ends_and_the_bound() {
        let points: Vec<(f64, f64)> = (0..1_000).map(|n| (n as f64, n as f64)).collect();
        let thinned = thin(&points, 100);
        assert!(thinned.len() <= 100, "{}", thinned.len());
        assert_eq!(thinned.first(), Some(&(0.0, 0.0)));
        assert_eq!(thinned.last(), Some(&(999.0, 999.0)));
        assert_eq!(thin(&points[..50], 100).len(), 50);
        assert_eq!(
            thin(&points[..100], 100).len(),
            100,
            "exactly max: kept whole"
        );
        assert_eq!(thin(&points[..3], 1).len(), 3);
        assert_eq!(
            thin(&points, 2),
            vec![(0.0, 0.0), (999.0, 999.0)],
            "two: the ends"
        );
    }

    #[test]
    fn meaning_counts_each_ending() {
        let runs = [
            outcome(617, 600, Ending::Hung),
            outcome(9_000, 8_990, Ending::TimedOut),
            outcome(20_000, 20_000, Ending::Finished),
            outcome(5, 3, Ending::Hung),
        ];
        let text = meaning(&runs, 4);
        assert!(text.starts_with("Of 4 run(s) of the locking handler, 2 hung, 1 timed out while still making progress, and 1 finished."), "{text}");
        assert!(
            text.contains("The hangs came after 617, 5 children"),
            "{text}"
        );
        assert!(text.contains("A timed-out run is not a hang"), "{text}");
        assert!(text.contains("glibc's stdio lock is recursive"), "{text}");
    }

    #[test]
    fn meaning_without_a_hang_says_so() {
        let text = meaning(&[outcome(9_000, 8_990, Ending::TimedOut)], 200);
        assert!(text.starts_with("Of 1 run(s) of the locking handler (200 asked for; the deadline left no time for the rest), 0 hung, 1 timed out"), "{text}");
        assert!(text.contains("No run hung this time"), "{text}");
        assert!(!text.contains("The hangs came after"), "{text}");
        let text = meaning(&[outcome(20_000, 20_000, Ending::Finished)], 1);
        assert!(text.starts_with("Of 1 run(s) of the locking handler, 0 hung, 0 timed out while still making progress, and 1 finished."), "{text}");
        assert!(!text.contains("A timed-out run"), "{text}");
    }

    #[test]
    fn the_fix_sentence_follows_the_fixed_run() {
        assert!(fix_text(&outcome(1_000, 1_000, Ending::Finished))
            .ends_with("Here that version started 1,000 children and reaped 1,000."));
        assert!(fix_text(&outcome(300, 290, Ending::TimedOut)).contains(
            "ran out of its budget while still working (300 children started, 290 reaped so far)"
        ));
        assert!(fix_text(&outcome(3, 0, Ending::Hung)).contains("went silent after 3 children"));
    }
}
