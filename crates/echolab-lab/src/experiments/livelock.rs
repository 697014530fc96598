//! `livelock`: two polite threads in a corridor. Each needs two locks; each takes its own
//! side first, finds the other side taken, politely lets go, waits, and tries again. If
//! both wait the same time, they collide again, forever: both are busy, neither passes.
//!
//! Trade-off: a fixed back-off is simple and, when the two flows are in step, makes no
//! progress at all; a randomised back-off costs a random number generator and some idle
//! time, and breaks the symmetry after a few rounds.
//!
//! A scheduler keeps two threads in step only by accident, so the lab makes the symmetry
//! explicit: the threads move in rounds separated by a barrier (try the first lock;
//! barrier; try the second; barrier; release; barrier). That makes each variant deterministic:
//! fixed back-off passes exactly zero times, a random back-off with different seeds
//! passes, and one with the *same* seed is as stuck as the fixed one (symmetry again).

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
    let mut fixed_rate = 0.0;
    let mut random_rate = 0.0;
    for backoff in variants {
        let (progress, elapsed) = corridor(
            backoff,
            max_rounds,
            deadline.min_after(settings.timeout / 3),
        );
        if progress.rounds < max_rounds {
            hangs.push(format!(
                "{}: the deadline stopped it after {} of {} rounds",
                backoff.name(),
                progress.rounds,
                max_rounds
            ));
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        let rates = [
            progress.passes[0] as f64 / secs,
            progress.passes[1] as f64 / secs,
        ];
        measured.push(format!(
            "{:<18} {} rounds in {:.2} s: passes {} + {} ({:.0} + {:.0} per second), polite collisions {} + {}",
            backoff.name(),
            thousands(progress.rounds),
            secs,
            thousands(progress.passes[0]),
            thousands(progress.passes[1]),
            rates[0],
            rates[1],
            thousands(progress.collisions[0]),
            thousands(progress.collisions[1]),
        ));
        match backoff {
            Backoff::Fixed => fixed_rate = rates[0] + rates[1],
            Backoff::Random { seeds } if seeds[0] != seeds[1] => random_rate = rates[0] + rates[1],
            Backoff::Random { .. } => {}
        }
        for (k, rate) in rates.iter().enumerate() {
            bars.push(Bar::new(
                format!("{} T{}", short_name(backoff), k + 1),
                *rate,
            ));
        }
        figures.push(json!({
            "variant": backoff.name(),
            "rounds": progress.rounds,
            "passes": progress.passes,
            "collisions": progress.collisions,
            "passes_per_second": rates,
            "seconds": secs,
        }));
    }
    let picture = Picture::new(
        "Two polite threads in a corridor",
        "passes per second",
        vec![Panel::new("passes per second, per thread", bars)],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Livelock: polite threads that never pass",
        claim: "External events or scheduling decisions can prevent progress even though every flow keeps running: two people in a corridor who step aside the same way, again and again.",
        did: format!(
            "Two threads, each needing both of two locks, moved in {} lock-step rounds (a barrier between steps): take your side, try the other, \
             on failure let go and sit out a round (fixed) or 0-3 rounds (random: same seed for both, then different seeds).",
            thousands(max_rounds)
        ),
        measured,
        meaning: format!(
            "With a fixed back-off both threads were busy every round and passed {fixed_rate:.0} times per second: they collide, both retreat, both return together. \
             Random back-off with different seeds passed {random_rate:.0} times per second. The same generator with the same seed stays symmetric and stays stuck: \
             what breaks a livelock is asymmetry, not randomness as such."
        ),
        fix: "Break the symmetry: randomised (exponential) back-off with per-thread seeds, or an order between the two (the lower id goes first), \
              as Ethernet and lock-free retry loops do."
            .to_string(),
        hangs,
        figures: json!({ "max_rounds": max_rounds, "variants": figures }),
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
