//! `deadlock`: two threads, two locks, taken in opposite orders. Thread 1 holds A and
//! waits for B while thread 2 holds B and waits for A: a cycle in the wait-for graph, and
//! neither ever moves again (the lecture's traffic gridlock).
//!
//! Trade-off: locking in whatever order the code happens to need is convenient and can
//! deadlock; one global order (always A before B) costs a little freedom in how code is
//! written and makes a cycle impossible.
//!
//! The broken variant runs in a child process, because deadlocked threads can never be
//! joined; inside it, parking_lot's deadlock detector (the `deadlock_detection` feature)
//! finds the cycle, the child prints it, and exits, taking its stuck threads with it. The
//! fixed variant runs in-process: it cannot hang.
//!
//! The two opposite-order threads start together from a barrier and hold their first
//! lock for [`WINDOW`] before asking for the second, so at the defaults they meet within
//! a few hundred rounds (started one after the other with no window, they usually did
//! not meet at all). When a run does not deadlock, the text says so and why.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::child::{config_bool, config_u64};
use crate::experiment::{thousands, Deadline, Experiment, Report, Settings};
use crate::plot::{Bar, Panel, Picture};
use crate::watchdog::{child_args, End, WatchedChild};

pub const EXPERIMENT: Experiment = Experiment {
    name: "deadlock",
    summary: "two locks in opposite orders: the detector reports the cycle; a global order completes (--trials: runs)",
    max_trials: 1_000,
    run,
};

/// Lock rounds per thread by default.
pub const DEFAULT_NITERS: u64 = 200_000;

/// How long each opposite-order thread holds its first lock before it asks for the
/// second (a busy wait, not a sleep): the window in which the other thread can take its
/// own first lock. Without it the window is a few instructions wide and the two threads,
/// started one after the other, rarely meet inside it.
pub const WINDOW: Duration = Duration::from_micros(10);

/// Busy-waits `duration` (bounded by the clock), keeping the CPU like the lecture's
/// threads doing work between their two P operations.
fn hold(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// How an opposite-order run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The detector found a wait-for cycle: a deadlock.
    Deadlocked,
    /// Both threads finished every round (by luck of timing).
    Finished,
    /// Neither: its budget ran out first (the child said so, or the watchdog stopped it).
    TimedOut,
}

/// What the opposite-order run came to, as the child reports it.
#[derive(Debug, Clone)]
pub struct Broken {
    pub ending: Ending,
    /// Threads in the first cycle found, with what each holds and waits for.
    pub cycle: Vec<String>,
    /// Rounds each thread completed before it stopped.
    pub rounds: [u64; 2],
    /// When the detector found the cycle (or the run ended otherwise).
    pub detected_after: Duration,
    /// Set when the watchdog, not the child, had to stop it.
    pub hang: Option<String>,
}

impl Broken {
    pub fn deadlocked(&self) -> bool {
        self.ending == Ending::Deadlocked
    }
}

/// Runs the opposite-order variant in a watched child. With `forced`, both threads take
/// their first lock and meet at a barrier before taking the second: a deadlock by
/// construction, which is what the tests use.
pub fn run_broken(
    settings: &Settings,
    niters: u64,
    forced: bool,
    deadline: Deadline,
) -> io::Result<Broken> {
    let config = json!({ "niters": niters, "forced": forced, "window_us": WINDOW.as_micros() as u64, "timeout_ms": deadline.remaining().as_millis() as u64 });
    let child = WatchedChild::spawn(&settings.exe, &child_args("deadlock", &config))?;
    // A little beyond the child's own limit: the child reports first if it can.
    let finished = child.wait(
        Deadline::after(deadline.remaining() + Duration::from_secs(2)),
        None,
    )?;
    if let End::Hung { after, state, .. } = &finished.end {
        return Ok(Broken {
            ending: Ending::TimedOut,
            cycle: Vec::new(),
            rounds: [0, 0],
            detected_after: *after,
            hang: Some(format!(
                "timed out: the child did not report within its budget; the watchdog killed it; /proc showed: {}",
                state.summary()
            )),
        });
    }
    let result = finished.expect_result("deadlock")?;
    let cycle = result["cycle"]
        .as_array()
        .map(|threads| {
            threads
                .iter()
                .filter_map(|thread| thread.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let ending = if result["deadlocked"] == true {
        Ending::Deadlocked
    } else if result["timed_out"] == true {
        Ending::TimedOut
    } else {
        Ending::Finished
    };
    Ok(Broken {
        ending,
        cycle,
        rounds: [
            result["rounds"][0].as_u64().unwrap_or(0),
            result["rounds"][1].as_u64().unwrap_or(0),
        ],
        detected_after: Duration::from_millis(result["detected_after_ms"].as_u64().unwrap_or(0)),
        hang: None,
    })
}

/// The measured line of opposite-order run `run` (from 1) of `niters` rounds per thread.
pub fn run_line(run: usize, broken: &Broken, niters: u64) -> String {
    let rounds = format!(
        "{} and {} rounds",
        thousands(broken.rounds[0]),
        thousands(broken.rounds[1])
    );
    match broken.ending {
        Ending::Deadlocked => format!(
            "opposite orders, run {run}: DEADLOCK after {rounds}, cycle found in {:.0} ms: {}",
            broken.detected_after.as_secs_f64() * 1e3,
            broken.cycle.join("; ")
        ),
        Ending::Finished => format!(
            "opposite orders, run {run}: both threads finished {} rounds without meeting (timing luck, not correctness)",
            thousands(niters)
        ),
        Ending::TimedOut => format!(
            "opposite orders, run {run}: timed out after {rounds} of {}: neither finished nor deadlocked within its budget",
            thousands(niters)
        ),
    }
}

/// What the opposite-order runs mean, from their endings (`asked` runs were asked for).
pub fn meaning(runs: &[Broken], asked: usize) -> String {
    let count = |ending| runs.iter().filter(|run| run.ending == ending).count();
    let (deadlocked, finished, timed_out) = (
        count(Ending::Deadlocked),
        count(Ending::Finished),
        count(Ending::TimedOut),
    );
    let mut text = format!(
        "{deadlocked} of {} opposite-order run(s) deadlocked",
        runs.len()
    );
    if runs.len() < asked {
        text.push_str(&format!(
            " ({asked} asked for; the deadline left no time for the rest)"
        ));
    }
    if deadlocked > 0 {
        text.push_str(&format!(
            ": in {}, the detector found a wait-for cycle of two threads, each holding one lock and waiting for the other's. \
             Nothing times out and nothing fails: the threads just stop, which is why the lab needs a detector or a watchdog to see it.",
            if deadlocked == 1 { "it" } else { "each" }
        ));
    } else {
        text.push_str(
            ": the detector found no cycle, because the two threads never held their first locks at the same moment. \
             That is timing, not safety: the deadlock region is in every run's progress graph, and a run that enters it never leaves.",
        );
    }
    if finished > 0 {
        text.push_str(&format!(
            " {finished} run(s) finished all their rounds without meeting."
        ));
    }
    if timed_out > 0 {
        text.push_str(&format!(
            " {timed_out} run(s) timed out: their budget ended before they finished or deadlocked."
        ));
    }
    text
}

/// The fix: both threads take A, then B. Returns the shared count (exactly 2 × niters)
/// and the time it took.
pub fn run_ordered(niters: u64) -> (u64, Duration) {
    let a = Mutex::new(0u64);
    let b = Mutex::new(0u64);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..niters {
                    // The global order: A before B, in every thread.
                    let mut first = a.lock();
                    let mut second = b.lock();
                    *first += 1;
                    *second += 1;
                }
            });
        }
    });
    let count = *a.lock();
    assert_eq!(count, *b.lock());
    (count, started.elapsed())
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(1);
    let deadline = settings.deadline();
    // Keep a share for the ordered run; each opposite-order run gets at least 2 s.
    let per_run = settings.per_trial(trials, Duration::from_secs(2));
    let mut measured = Vec::new();
    let mut hangs = Vec::new();
    let mut runs = Vec::new();
    let mut bars = Vec::new();
    let mut broken_runs = Vec::new();
    while broken_runs.len() < trials && (broken_runs.is_empty() || !deadline.passed()) {
        let run = broken_runs.len() + 1;
        let broken = run_broken(settings, DEFAULT_NITERS, false, deadline.min_after(per_run))?;
        if let Some(hang) = &broken.hang {
            hangs.push(format!("opposite orders, run {run}: {hang}"));
        }
        measured.push(run_line(run, &broken, DEFAULT_NITERS));
        bars.push(Bar::new(
            format!("run {run} opposite"),
            (broken.rounds[0] + broken.rounds[1]) as f64,
        ));
        runs.push(json!({
            "ending": broken.ending,
            "deadlocked": broken.deadlocked(),
            "cycle": broken.cycle,
            "rounds": broken.rounds,
            "detected_after_ms": broken.detected_after.as_millis() as u64,
        }));
        broken_runs.push(broken);
    }
    let (count, elapsed) = run_ordered(DEFAULT_NITERS);
    measured.push(format!(
        "global order (A then B): both threads completed, count {} = 2 x {}, in {:.1} ms",
        thousands(count),
        thousands(DEFAULT_NITERS),
        elapsed.as_secs_f64() * 1e3
    ));
    bars.push(Bar::new("global order", count as f64));
    let mut panel = Panel::new("lock rounds completed by both threads", bars);
    panel
        .references
        .push(("all rounds".to_string(), 2.0 * DEFAULT_NITERS as f64));
    let picture = Picture::new("Two threads, two locks", "rounds", vec![panel]);
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Deadlock: two locks, opposite orders",
        claim: "Improper resource allocation prevents forward progress: each flow holds what the other needs and waits for what the other holds (traffic gridlock).",
        did: format!(
            "Two threads each took locks A and B {} times, one A-then-B and the other B-then-A, starting together from a barrier and holding \
             the first lock for {} µs (busy) before asking for the second, in a child process whose main thread ran parking_lot's deadlock \
             detector every 10 ms; then both threads in the same order, in-process.",
            thousands(DEFAULT_NITERS),
            WINDOW.as_micros()
        ),
        measured,
        meaning: meaning(&broken_runs, trials),
        fix: format!(
            "Take locks in one global order (A before B everywhere): a cycle needs someone to take them the other way round, so none can form. \
             The ordered run completed all {} rounds.",
            thousands(count)
        ),
        hangs,
        figures: json!({ "niters": DEFAULT_NITERS, "window_us": WINDOW.as_micros() as u64, "opposite_order": runs, "global_order": { "count": count, "ms": elapsed.as_secs_f64() * 1e3 } }),
        svg: Some(picture.svg()),
    })
}

/// The child process: the opposite-order threads plus the detector on the main thread.
pub fn child_body(config: &Value) -> io::Result<Value> {
    let niters = config_u64(config, "niters", DEFAULT_NITERS);
    let forced = config_bool(config, "forced", false);
    let window = Duration::from_micros(config_u64(config, "window_us", WINDOW.as_micros() as u64));
    let deadline = Deadline::after(Duration::from_millis(config_u64(
        config,
        "timeout_ms",
        10_000,
    )));
    let locks = Arc::new([Mutex::new(0u64), Mutex::new(0u64)]);
    let rounds = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    // 1 while thread k holds its first lock and waits for its second: the roles the
    // detector's cycle is described with.
    let waiting = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let barrier = Arc::new(Barrier::new(2));
    let started = Instant::now();
    // Thread k takes lock k first, then the other: thread 0 A-then-B, thread 1 B-then-A.
    // These threads are not joined when they deadlock; the process exit ends them.
    let threads: Vec<_> = (0..2usize)
        .map(|k| {
            let (locks, rounds, barrier, waiting) = (
                locks.clone(),
                rounds.clone(),
                barrier.clone(),
                waiting.clone(),
            );
            std::thread::Builder::new()
                .name(format!("lock-{}-first", ["A", "B"][k]))
                .spawn(move || {
                    // Both threads start their rounds together: otherwise the first is
                    // far into its rounds before the second exists.
                    barrier.wait();
                    for round in 0..niters {
                        let mut first = locks[k].lock();
                        if forced && round == 0 {
                            barrier.wait();
                        }
                        hold(window);
                        waiting[k].store(1, Ordering::SeqCst);
                        let mut second = locks[1 - k].lock();
                        waiting[k].store(0, Ordering::SeqCst);
                        *first += 1;
                        *second += 1;
                        rounds[k].store(round + 1, Ordering::Relaxed);
                    }
                })
        })
        .collect::<Result<_, _>>()?;
    loop {
        if threads.iter().all(|thread| thread.is_finished()) {
            for thread in threads {
                let _ = thread.join();
            }
            return Ok(json!({
                "deadlocked": false,
                "rounds": [rounds[0].load(Ordering::SeqCst), rounds[1].load(Ordering::SeqCst)],
                "detected_after_ms": 0,
                "cycle": [],
            }));
        }
        if deadline.passed() {
            // Neither finished nor deadlocked in time: say so, with the rounds made.
            return Ok(json!({
                "deadlocked": false,
                "timed_out": true,
                "rounds": [rounds[0].load(Ordering::SeqCst), rounds[1].load(Ordering::SeqCst)],
                "detected_after_ms": started.elapsed().as_millis() as u64,
                "cycle": [],
            }));
        }
        std::thread::sleep(Duration::from_millis(10));
        let cycles = parking_lot::deadlock::check_deadlock();
        if let Some(cycle) = cycles.first() {
            let mut named: Vec<String> = (0..2)
                .filter(|&k| waiting[k].load(Ordering::SeqCst) == 1)
                .map(|k| {
                    format!(
                        "thread lock-{}-first holds lock {} and waits for lock {}",
                        ["A", "B"][k],
                        ["A", "B"][k],
                        ["B", "A"][k]
                    )
                })
                .collect();
            let ids: Vec<String> = cycle
                .iter()
                .map(|thread| format!("{:?}", thread.thread_id()))
                .collect();
            named.push(format!(
                "detector: cycle of {} threads (ids {})",
                cycle.len(),
                ids.join(", ")
            ));
            let result = json!({
                "deadlocked": true,
                "cycle": named,
                "cycle_len": cycle.len(),
                "rounds": [rounds[0].load(Ordering::SeqCst), rounds[1].load(Ordering::SeqCst)],
                "detected_after_ms": started.elapsed().as_millis() as u64,
            });
            echolab_cli::print_out(&format!("{}{result}", crate::child::RESULT_PREFIX));
            // The two threads are stuck for good; exiting the process is the only way out.
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broken(ending: Ending, rounds: [u64; 2]) -> Broken {
        Broken {
            ending,
            cycle: vec!["detector: cycle of 2 threads".to_string()],
            rounds,
            detected_after: Duration::from_millis(30),
            hang: None,
        }
    }

    #[test]
    fn no_deadlock_is_not_described_as_one() {
        let text = meaning(&[broken(Ending::Finished, [10, 10])], 1);
        assert!(
            text.starts_with(
                "0 of 1 opposite-order run(s) deadlocked: the detector found no cycle"
            ),
            "{text}"
        );
        assert!(!text.contains("found a wait-for cycle"), "{text}");
        assert!(
            text.contains(" 1 run(s) finished all their rounds without meeting."),
            "{text}"
        );
        assert!(!text.contains("timed out"), "{text}");
    }

    #[test]
    fn deadlocks_are_counted_and_explained() {
        let runs = [
            broken(Ending::Deadlocked, [3, 4]),
            broken(Ending::TimedOut, [5, 6]),
            broken(Ending::Deadlocked, [0, 9]),
        ];
        let text = meaning(&runs, 5);
        assert!(text.starts_with("2 of 3 opposite-order run(s) deadlocked (5 asked for; the deadline left no time for the rest): in each, the detector found a wait-for cycle"), "{text}");
        assert!(
            text.ends_with(
                " 1 run(s) timed out: their budget ended before they finished or deadlocked."
            ),
            "{text}"
        );
        assert!(!text.contains("finished all their rounds"), "{text}");
        let text = meaning(&runs[..2], 2);
        assert!(
            text.starts_with("1 of 2 opposite-order run(s) deadlocked: in it, the detector found"),
            "{text}"
        );
    }

    #[test]
    fn the_window_is_held_for_its_length() {
        let started = Instant::now();
        hold(Duration::from_micros(300));
        assert!(started.elapsed() >= Duration::from_micros(300));
        hold(Duration::ZERO);
    }

    #[test]
    fn the_global_order_completes_every_round() {
        let (count, _) = run_ordered(1_000);
        assert_eq!(count, 2_000);
    }

    #[test]
    fn each_ending_has_its_line() {
        assert_eq!(
            run_line(1, &broken(Ending::Deadlocked, [1_234, 5]), 200_000),
            "opposite orders, run 1: DEADLOCK after 1,234 and 5 rounds, cycle found in 30 ms: detector: cycle of 2 threads"
        );
        assert_eq!(
            run_line(2, &broken(Ending::Finished, [200_000, 200_000]), 200_000),
            "opposite orders, run 2: both threads finished 200,000 rounds without meeting (timing luck, not correctness)"
        );
        assert_eq!(
            run_line(3, &broken(Ending::TimedOut, [7, 8]), 200_000),
            "opposite orders, run 3: timed out after 7 and 8 rounds of 200,000: neither finished nor deadlocked within its budget"
        );
    }
}
