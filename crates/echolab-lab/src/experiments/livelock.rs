//! `livelock`: two polite threads in a corridor. Each needs two locks; each takes its own
//! side first, finds the other side taken, politely lets go, waits, and tries again. If
//! both wait the same time, they collide again, forever: both are busy, neither passes.
//!
//! Trade-off: a fixed back-off is simple and, when the two flows are in step, makes no
//! progress at all; a randomised back-off costs a random number generator and some idle
//! time, and breaks the symmetry after a few rounds.
//!
//! Two parts, labelled as what they are:
//! - a **simulation** ([`corridor`]): a scheduler keeps two threads in step only by
//!   accident, so here the symmetry is imposed: the threads move in rounds separated by a
//!   barrier (try the first lock; barrier; try the second; barrier; release; barrier).
//!   Each variant's counts are then fixed by construction (fixed back-off passes exactly
//!   zero times, different seeds pass, the same seed is as stuck as the fixed one); they
//!   illustrate the mechanism and are not measurements.
//! - a **measurement** ([`free_corridor`]): the same two threads on real locks, free
//!   running, no barrier: take your side (blocking), try the other, on failure let go and
//!   back off (a fixed spin, or a random one); passes and collisions per second are
//!   whatever the machine produces.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::experiment::{thousands, Deadline, Experiment, Report, Settings};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "livelock",
    summary: "two polite threads backing off symmetrically make no progress; random back-off does (--trials: thousands of rounds)",
    max_trials: 1_000_000,
    run,
};

/// How a thread waits after finding the second lock taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Sit out exactly one round, like the other thread.
    Fixed,
    /// Sit out 0 to 3 rounds, drawn from a generator seeded per thread.
    Random { seeds: [u64; 2] },
}

impl Backoff {
    pub fn name(self) -> &'static str {
        match self {
            Backoff::Fixed => "fixed back-off",
            Backoff::Random { seeds } if seeds[0] == seeds[1] => "random, same seed",
            Backoff::Random { .. } => "random back-off",
        }
    }
}

/// What a run achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rounds both threads went through.
    pub rounds: u64,
    /// Times each thread got both locks (passed through the corridor).
    pub passes: [u64; 2],
    /// Times each thread found the second lock taken and backed off.
    pub collisions: [u64; 2],
}

/// A tiny deterministic generator (xorshift64*): enough to pick back-off lengths.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Runs the two threads for `max_rounds` rounds or until `deadline`.
pub fn corridor(backoff: Backoff, max_rounds: u64, deadline: Deadline) -> (Progress, Duration) {
    let sides = [Mutex::new(()), Mutex::new(())];
    let barrier = Barrier::new(2);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let per_thread: Vec<(u64, u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2usize)
            .map(|k| {
                let (sides, barrier, stop) = (&sides, &barrier, &stop);
                scope.spawn(move || {
                    let mut rng = match backoff {
                        Backoff::Fixed => None,
                        Backoff::Random { seeds } => Some(XorShift(seeds[k] | 1)),
                    };
                    let (mut passes, mut collisions, mut rounds) = (0, 0, 0);
                    let mut sit_out = 0u64;
                    while rounds < max_rounds {
                        // Step 1: take my own side, unless I am sitting this round out.
                        let first = if sit_out > 0 {
                            sit_out -= 1;
                            None
                        } else {
                            sides[k].try_lock().ok()
                        };
                        barrier.wait();
                        // Step 2: the other side. It is free only if the other thread sat out.
                        if first.is_some() {
                            match sides[1 - k].try_lock() {
                                Ok(_second) => passes += 1,
                                Err(_) => {
                                    // Polite: let go of mine and wait before trying again.
                                    collisions += 1;
                                    sit_out = match &mut rng {
                                        None => 1,
                                        Some(rng) => rng.next() % 4,
                                    };
                                }
                            }
                        }
                        // Both attempts are over before anyone lets go, so no attempt can see a
                        // lock released early.
                        barrier.wait();
                        drop(first);
                        if k == 0 && deadline.passed() {
                            stop.store(true, Ordering::SeqCst);
                        }
                        barrier.wait();
                        rounds += 1;
                        // Both read `stop` after the same barrier, so both leave together.
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    (passes, collisions, rounds)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or((0, 0, 0)))
            .collect()
    });
    let progress = Progress {
        rounds: per_thread[0].2.min(per_thread[1].2),
        passes: [per_thread[0].0, per_thread[1].0],
        collisions: [per_thread[0].1, per_thread[1].1],
    };
    (progress, started.elapsed())
}

/// How long a thread holds both locks when it gets through, and the unit of back-off.
pub const FREE_HOLD: Duration = Duration::from_micros(2);

fn spin(duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// What the free-running corridor measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FreeProgress {
    pub passes: [u64; 2],
    pub collisions: [u64; 2],
    pub elapsed: Duration,
}

impl FreeProgress {
    /// Passes per second, both threads together.
    pub fn pass_rate(&self) -> f64 {
        (self.passes[0] + self.passes[1]) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Collisions per pass (infinite when nothing passed).
    pub fn collisions_per_pass(&self) -> f64 {
        let passes = self.passes[0] + self.passes[1];
        let collisions = self.collisions[0] + self.collisions[1];
        if passes == 0 {
            f64::INFINITY
        } else {
            collisions as f64 / passes as f64
        }
    }
}

/// The real corridor: two free-running threads on two real locks for `duration` (or
/// until `deadline`): take your own side, try the other; on failure let go and back off
/// for one [`FREE_HOLD`] (fixed) or 0-3 of them (random, per-thread seeds).
pub fn free_corridor(random: bool, duration: Duration, deadline: Deadline) -> FreeProgress {
    let sides = [Mutex::new(()), Mutex::new(())];
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let end = deadline.min_after(duration);
    let per_thread: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2usize)
            .map(|k| {
                let (sides, stop) = (&sides, &stop);
                scope.spawn(move || {
                    let mut rng = XorShift([7, 11][k]);
                    let (mut passes, mut collisions) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let first = sides[k].lock().unwrap_or_else(|p| p.into_inner());
                        match sides[1 - k].try_lock() {
                            Ok(second) => {
                                spin(FREE_HOLD);
                                passes += 1;
                                drop(second);
                                drop(first);
                            }
                            Err(_) => {
                                collisions += 1;
                                drop(first);
                                let units = if random { rng.next() % 4 } else { 1 };
                                spin(FREE_HOLD * units as u32);
                            }
                        }
                    }
                    (passes, collisions)
                })
            })
            .collect();
        while !end.passed() {
            std::thread::sleep(Duration::from_millis(1).min(end.remaining()));
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or((0, 0)))
            .collect()
    });
    FreeProgress {
        passes: [per_thread[0].0, per_thread[1].0],
        collisions: [per_thread[0].1, per_thread[1].1],
        elapsed: started.elapsed(),
    }
}

/// The measured line of a free-running run.
pub fn free_line(name: &str, progress: &FreeProgress) -> String {
    format!(
        "measured, free-running, {name:<15} {:.2} s: passes {} + {} ({:.0}/s), collisions {} + {} ({:.1} per pass)",
        progress.elapsed.as_secs_f64(),
        thousands(progress.passes[0]),
        thousands(progress.passes[1]),
        progress.pass_rate(),
        thousands(progress.collisions[0]),
        thousands(progress.collisions[1]),
        progress.collisions_per_pass()
    )
}

/// What the simulation (passes per thread: fixed, same seed, different seeds) and the
/// measurement (fixed and random back-off, free-running) mean.
pub fn meaning(simulated: &[[u64; 2]; 3], fixed: &FreeProgress, random: &FreeProgress) -> String {
    let [sim_fixed, sim_same, sim_random] = simulated;
    let mut text = format!(
        "Simulation (lock-step rounds, so these counts follow from the rules, not from the machine): fixed back-off passed {} times, \
         random back-off with one seed for both {} times, with different seeds {} times. What breaks a livelock is asymmetry, not randomness as such.",
        thousands(sim_fixed[0] + sim_fixed[1]),
        thousands(sim_same[0] + sim_same[1]),
        thousands(sim_random[0] + sim_random[1])
    );
    let (fixed_rate, random_rate) = (fixed.pass_rate(), random.pass_rate());
    text.push_str(&format!(
        " Measured on real locks, free-running: fixed back-off passed {fixed_rate:.0} times per second with {:.1} collisions per pass, random back-off {random_rate:.0} per second with {:.1}.",
        fixed.collisions_per_pass(),
        random.collisions_per_pass()
    ));
    // Each thread's own progress: a total can hide one side that never passed.
    let per_thread = |k: usize| {
        if fixed.passes[k] == 0 {
            f64::INFINITY
        } else {
            fixed.collisions[k] as f64 / fixed.passes[k] as f64
        }
    };
    let worst = if per_thread(1) > per_thread(0) { 1 } else { 0 };
    if fixed_rate == 0.0 {
        text.push_str(" The fixed back-off made no progress at all: a livelock, measured.");
    } else if fixed.passes[worst] == 0 {
        text.push_str(&format!(
            " The fixed back-off livelocked one side: thread {} never passed and collided {} times, while thread {} passed {} times. \
             Real scheduling jitter broke the symmetry in one thread's favour only; the total hides a thread that made no progress.",
            worst + 1,
            thousands(fixed.collisions[worst]),
            2 - worst,
            thousands(fixed.passes[1 - worst])
        ));
    } else if fixed.collisions_per_pass() > 1.0 || per_thread(worst) > 1.0 {
        text.push_str(&format!(
            " The fixed back-off is a partial livelock: both threads stay busy, and most of their work is colliding and retreating \
             (thread 1 {:.1} collisions per pass, thread 2 {:.1}); real scheduling jitter breaks the symmetry now and then, which the \
             lock-step simulation does not allow.",
            per_thread(0),
            per_thread(1)
        ));
    } else {
        text.push_str(&format!(
            " Here the scheduler's own jitter kept the fixed back-off from livelocking: each thread passed ({} and {} times) with at most \
             one collision per pass.",
            thousands(fixed.passes[0]),
            thousands(fixed.passes[1])
        ));
    }
    if random_rate > fixed_rate * 1.05 {
        text.push_str(&format!(
            " Random back-off passed {:.1}x as often.",
            random_rate / fixed_rate.max(1e-9)
        ));
    } else {
        text.push_str(" Random back-off did not pass more often this time.");
    }
    // The fix is judged per thread as well: a total can hide a side it did not help.
    if let Some(k) = (0..2).find(|&k| random.passes[k] == 0) {
        text.push_str(&format!(
            " Random back-off also left thread {} without a single pass ({} collisions) while thread {} passed {} times: \
             on this run it did not help that thread.",
            k + 1,
            thousands(random.collisions[k]),
            2 - k,
            thousands(random.passes[1 - k])
        ));
    } else if let Some(k) =
        (0..2).find(|&k| random.collisions[k] as f64 / random.passes[k] as f64 > 1.0)
    {
        text.push_str(&format!(
            " Random back-off still left thread {} colliding {:.1} times per pass.",
            k + 1,
            random.collisions[k] as f64 / random.passes[k] as f64
        ));
    }
    text
}

fn run(settings: &Settings) -> io::Result<Report> {
    let max_rounds = settings.trials_or(10) as u64 * 1_000;
    let deadline = settings.deadline();
    let variants = [
        Backoff::Fixed,
        Backoff::Random { seeds: [7, 7] },
        Backoff::Random { seeds: [7, 11] },
    ];
    let mut measured = Vec::new();
    let mut figures = Vec::new();
    let mut bars = Vec::new();
    let mut hangs = Vec::new();
    let mut simulated = Vec::new();
    for backoff in variants {
        let (progress, _) = corridor(
            backoff,
            max_rounds,
            deadline.min_after(settings.timeout / 5),
        );
        if progress.rounds < max_rounds {
            hangs.push(format!(
                "simulation, {}: timed out: the deadline stopped it after {} of {} rounds",
                backoff.name(),
                progress.rounds,
                max_rounds
            ));
        }
        measured.push(format!(
            "simulated, lock-step {:<18} {} rounds: passes {} + {}, polite collisions {} + {}",
            backoff.name(),
            thousands(progress.rounds),
            thousands(progress.passes[0]),
            thousands(progress.passes[1]),
            thousands(progress.collisions[0]),
            thousands(progress.collisions[1]),
        ));
        simulated.push(progress.passes);
        bars.push(Bar::new(
            short_name(backoff),
            (progress.passes[0] + progress.passes[1]) as f64 * 1_000.0
                / progress.rounds.max(1) as f64,
        ));
        figures.push(json!({
            "variant": backoff.name(),
            "rounds": progress.rounds,
            "passes": progress.passes,
            "collisions": progress.collisions,
            "simulated": true,
        }));
    }
    let free_for = Duration::from_millis(500).min(settings.timeout / 5);
    let fixed = free_corridor(false, free_for, deadline);
    let random = free_corridor(true, free_for, deadline);
    measured.push(free_line("fixed back-off", &fixed));
    measured.push(free_line("random back-off", &random));
    let rate_bars = [("fixed", &fixed), ("random", &random)]
        .into_iter()
        .flat_map(|(name, progress)| {
            let secs = progress.elapsed.as_secs_f64().max(1e-9);
            [
                Bar::new(
                    format!("{name}: passes"),
                    (progress.passes[0] + progress.passes[1]) as f64 / secs,
                ),
                Bar::new(
                    format!("{name}: collisions"),
                    (progress.collisions[0] + progress.collisions[1]) as f64 / secs,
                ),
            ]
        })
        .collect();
    let picture = Picture::new(
        "Two polite threads in a corridor",
        "",
        vec![
            Panel::new("SIMULATION (lock-step): passes per 1,000 rounds", bars),
            Panel::new("MEASURED (free-running): per second", rate_bars),
        ],
    );
    let simulated: [[u64; 2]; 3] = simulated
        .try_into()
        .map_err(|_| io::Error::other("livelock: a simulated variant is missing"))?;
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Livelock: polite threads that never pass",
        claim: "External events or scheduling decisions can prevent progress even though every flow keeps running: two people in a corridor who step aside the same way, again and again.",
        did: format!(
            "Simulation: two threads, each needing both of two locks, moved in {} lock-step rounds (a barrier between steps): take your side, try the other, \
             on failure let go and sit out a round (fixed) or 0-3 rounds (random: same seed for both, then different seeds). Measurement: the same two \
             threads free-running on real locks for {:.2} s each way, backing off a fixed {} µs spin or a random 0-3 of them.",
            thousands(max_rounds),
            free_for.as_secs_f64(),
            FREE_HOLD.as_micros()
        ),
        measured,
        meaning: meaning(&simulated, &fixed, &random),
        fix: "Break the symmetry: randomised (exponential) back-off with per-thread seeds, or an order between the two (the lower id goes first), \
              as Ethernet and lock-free retry loops do."
            .to_string(),
        hangs,
        figures: json!({
            "max_rounds": max_rounds,
            "simulated": figures,
            "measured": [
                { "backoff": "fixed", "passes": fixed.passes, "collisions": fixed.collisions, "seconds": fixed.elapsed.as_secs_f64() },
                { "backoff": "random", "passes": random.passes, "collisions": random.collisions, "seconds": random.elapsed.as_secs_f64() },
            ],
        }),
        svg: Some(picture.svg()),
    })
}

fn short_name(backoff: Backoff) -> &'static str {
    match backoff {
        Backoff::Fixed => "fixed",
        Backoff::Random { seeds } if seeds[0] == seeds[1] => "same seed",
        Backoff::Random { .. } => "random",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUNDS: u64 = 2_000;

    fn deadline() -> Deadline {
        Deadline::after(Duration::from_secs(60))
    }

    #[test]
    fn symmetric_backoff_never_passes() {
        let (progress, _) = corridor(Backoff::Fixed, ROUNDS, deadline());
        assert_eq!(progress.rounds, ROUNDS);
        assert_eq!(progress.passes, [0, 0]);
        assert!(progress.collisions[0] > 0 && progress.collisions[0] == progress.collisions[1]);
        let (same_seed, _) = corridor(Backoff::Random { seeds: [5, 5] }, ROUNDS, deadline());
        assert_eq!(same_seed.passes, [0, 0]);
    }

    fn free(passes: u64, collisions: u64) -> FreeProgress {
        FreeProgress {
            passes: [passes, passes],
            collisions: [collisions, collisions],
            elapsed: Duration::from_secs(2),
        }
    }

    #[test]
    fn meaning_labels_the_simulation_and_follows_the_measurement() {
        let sim = [[0, 0], [0, 0], [300, 250]];
        let text = meaning(&sim, &free(0, 500), &free(1_000, 100));
        assert!(text.starts_with("Simulation (lock-step rounds, so these counts follow from the rules, not from the machine): fixed back-off passed 0 times, random back-off with one seed for both 0 times, with different seeds 550 times."), "{text}");
        assert!(text.contains("fixed back-off passed 0 times per second with inf collisions per pass, random back-off 1000 per second with 0.1."), "{text}");
        assert!(
            text.contains("made no progress at all: a livelock, measured."),
            "{text}"
        );
        assert!(
            text.ends_with("Random back-off passed 1000000000000.0x as often."),
            "{text}"
        );
        let text = meaning(&sim, &free(100, 500), &free(50, 10));
        assert!(text.contains("a partial livelock"), "{text}");
        assert!(
            text.ends_with("Random back-off did not pass more often this time."),
            "{text}"
        );
        // The boundaries: exactly one collision per pass is no livelock; equal rates are
        // not "more often".
        let text = meaning(&sim, &free(100, 100), &free(100, 10));
        assert!(
            text.contains(
                "each thread passed (100 and 100 times) with at most one collision per pass."
            ),
            "{text}"
        );
        assert!(
            text.ends_with("Random back-off did not pass more often this time."),
            "{text}"
        );
        let text = meaning(&sim, &free(100, 50), &free(300, 10));
        assert!(
            text.contains("kept the fixed back-off from livelocking"),
            "{text}"
        );
        assert!(
            text.ends_with("Random back-off passed 3.0x as often."),
            "{text}"
        );
    }

    /// The report run's figures: one thread passed every time, the other never did.
    #[test]
    fn one_starved_thread_is_not_called_no_livelock() {
        let sim = [[0, 0], [0, 0], [300, 250]];
        let lopsided = FreeProgress {
            passes: [67_273, 0],
            collisions: [0, 65_801],
            elapsed: Duration::from_millis(500),
        };
        let text = meaning(&sim, &lopsided, &free(1_000, 100));
        assert!(text.contains(" The fixed back-off livelocked one side: thread 2 never passed and collided 65,801 times, while thread 1 passed 67,273 times."), "{text}");
        assert!(
            !text.contains("kept the fixed back-off from livelocking"),
            "{text}"
        );
        let mirrored = FreeProgress {
            passes: [0, 10],
            collisions: [7, 0],
            elapsed: Duration::from_secs(1),
        };
        let text = meaning(&sim, &mirrored, &free(1_000, 100));
        assert!(
            text.contains(
                "thread 1 never passed and collided 7 times, while thread 2 passed 10 times."
            ),
            "{text}"
        );
        // Both passed, the total under one collision per pass, one thread over it.
        let uneven = FreeProgress {
            passes: [1_000, 10],
            collisions: [0, 50],
            elapsed: Duration::from_secs(1),
        };
        let text = meaning(&sim, &uneven, &free(1_000, 100));
        assert!(text.contains("a partial livelock: both threads stay busy, and most of their work is colliding and retreating (thread 1 0.0 collisions per pass, thread 2 5.0)"), "{text}");
        // The fix judged per thread too: a random back-off that starved thread 2 says so,
        // and a rate within 5% is not "more often".
        let random_lopsided = FreeProgress {
            passes: [119_002, 0],
            collisions: [0, 77_014],
            elapsed: Duration::from_millis(500),
        };
        let text = meaning(&sim, &lopsided, &random_lopsided);
        assert!(text.contains(" Random back-off also left thread 2 without a single pass (77,014 collisions) while thread 1 passed 119,002 times"), "{text}");
        let random_uneven = FreeProgress {
            passes: [116_076, 2_519],
            collisions: [0, 77_014],
            elapsed: Duration::from_millis(500),
        };
        let text = meaning(&sim, &lopsided, &random_uneven);
        assert!(
            text.ends_with(" Random back-off still left thread 2 colliding 30.6 times per pass."),
            "{text}"
        );
        assert!(!meaning(&sim, &lopsided, &free(1_000, 100)).contains("Random back-off also"));
        // Within 5% of the fixed back-off's rate is not "more often" (the tester's 1.0x).
        let text = meaning(&sim, &free(1_000, 100), &free(1_040, 100));
        assert!(
            text.contains("Random back-off did not pass more often this time."),
            "{text}"
        );
    }

    #[test]
    fn the_free_line_states_the_figures() {
        assert_eq!(
            free_line("fixed back-off", &free(1_500, 3_000)),
            format!(
                "measured, free-running, {:<15} 2.00 s: passes 1,500 + 1,500 (1500/s), collisions 3,000 + 3,000 (2.0 per pass)",
                "fixed back-off"
            )
        );
    }

    #[test]
    fn the_free_corridor_accounts_for_its_time() {
        let progress = free_corridor(true, Duration::from_millis(50), deadline());
        assert!(progress.elapsed >= Duration::from_millis(50));
        assert!(progress.passes.iter().sum::<u64>() + progress.collisions.iter().sum::<u64>() > 0);
        assert_eq!(free(0, 3).collisions_per_pass(), f64::INFINITY);
        assert_eq!(free(2, 3).collisions_per_pass(), 1.5);
        assert_eq!(free(2, 3).pass_rate(), 2.0);
    }

    #[test]
    fn random_backoff_passes_and_is_reproducible() {
        let backoff = Backoff::Random { seeds: [7, 11] };
        let (first, _) = corridor(backoff, ROUNDS, deadline());
        let (second, _) = corridor(backoff, ROUNDS, deadline());
        assert!(first.passes[0] > 0 && first.passes[1] > 0, "{first:?}");
        assert_eq!(
            first, second,
            "lock-step rounds make the outcome a function of the seeds"
        );
    }
}
