//! `counter`: the lecture's badcnt.c. Threads increment one shared counter `niters` times
//! each; `cnt++` is a load, an add and a store, and two threads that interleave those
//! steps lose updates.
//!
//! Trade-off: the racy version is the fastest and wrong; `fetch_add` makes the increment
//! one indivisible instruction (correct, and the cache line still bounces between cores);
//! a mutex is correct too and pays for a lock round trip per increment.
//!
//! Rust will not compile C's `volatile long cnt` shared between threads (see
//! tests/ui/shared_plain_counter.rs), so the racy variant is a relaxed atomic *load* then a
//! separate relaxed atomic *store*: defined behaviour, the same race as `cnt++`, and
//! opaque to the optimiser. A plain `u64` loop would be folded into one `+= niters` by a
//! release build and hide the race entirely.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::experiment::{pin_current_thread, thousands, Deadline, Experiment, Report, Settings};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "counter",
    summary: "badcnt/goodcnt: lost updates of a racy counter vs fetch_add vs a mutex (--trials: runs of each)",
    run,
};

/// Increments per thread by default: enough for the threads to overlap for several
/// milliseconds (a release build increments ~20x faster than a debug one).
pub const DEFAULT_NITERS: u64 = if cfg!(debug_assertions) {
    1_000_000
} else {
    10_000_000
};

/// How the shared counter is incremented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Load, then store: the lecture's `cnt++`, racy.
    Racy,
    /// `fetch_add`: one atomic read-modify-write.
    Atomic,
    /// A `Mutex<u64>` around `+= 1`.
    Mutex,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Racy, Variant::Atomic, Variant::Mutex];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Racy => "racy load+store",
            Variant::Atomic => "atomic fetch_add",
            Variant::Mutex => "mutex",
        }
    }
}

/// One run: how many increments were made and what the counter says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    /// Increments performed, over all threads (niters × threads unless the deadline hit).
    pub expected: u64,
    /// The counter's final value.
    pub actual: u64,
    pub elapsed: Duration,
    /// The deadline stopped the run early.
    pub cut_short: bool,
}

impl Count {
    pub fn lost(&self) -> u64 {
        self.expected - self.actual
    }
}

/// Iterations between two looks at the deadline.
const CHECK_EVERY: u64 = 1 << 16;

/// Runs `n_threads` threads that each increment the counter `niters` times, pinning thread
/// `k` to `cpus[k % len]` when `cpus` is given.
pub fn count(
    variant: Variant,
    n_threads: usize,
    niters: u64,
    cpus: Option<&[usize]>,
    deadline: Deadline,
) -> io::Result<Count> {
    let racy = AtomicU64::new(0);
    let atomic = AtomicU64::new(0);
    let locked = Mutex::new(0u64);
    // All threads start counting together, each spinning (so on a CPU, not asleep) until
    // the last arrives: a release build does a million increments in less time than it
    // takes to spawn or wake the next thread, and threads that never overlap never race.
    let start_line = AtomicU64::new(0);
    let started = Instant::now();
    let done: Vec<io::Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_threads)
            .map(|thread_idx| {
                let (racy, atomic, locked, start_line) = (&racy, &atomic, &locked, &start_line);
                scope.spawn(move || -> io::Result<u64> {
                    if let Some(cpus) = cpus {
                        pin_current_thread(&[cpus[thread_idx % cpus.len()]])?;
                    }
                    start_line.fetch_add(1, Ordering::SeqCst);
                    while start_line.load(Ordering::SeqCst) < n_threads as u64 && !deadline.passed()
                    {
                        std::hint::spin_loop();
                    }
                    let mut iter = 0;
                    while iter < niters {
                        let batch = CHECK_EVERY.min(niters - iter);
                        for _ in 0..batch {
                            match variant {
                                // THE RACE: another thread's store can land between our
                                // load and our store; ours then overwrites it.
                                Variant::Racy => {
                                    let value = racy.load(Ordering::Relaxed);
                                    racy.store(value + 1, Ordering::Relaxed);
                                }
                                Variant::Atomic => {
                                    atomic.fetch_add(1, Ordering::Relaxed);
                                }
                                Variant::Mutex => {
                                    *locked
                                        .lock()
                                        .unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
                                }
                            }
                        }
                        iter += batch;
                        if deadline.passed() {
                            break;
                        }
                    }
                    Ok(iter)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("a counter thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut expected = 0;
    for iters in done {
        expected += iters?;
    }
    let actual = match variant {
        Variant::Racy => racy.load(Ordering::SeqCst),
        Variant::Atomic => atomic.load(Ordering::SeqCst),
        Variant::Mutex => *locked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    };
    Ok(Count {
        expected,
        actual,
        elapsed,
        cut_short: expected < niters * n_threads as u64,
    })
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(3);
    let n_threads = settings.cpus.as_ref().map_or(2, |cpus| cpus.len().max(2));
    let niters = DEFAULT_NITERS;
    let deadline = settings.deadline();
    let mut measured = Vec::new();
    let mut figures = Vec::new();
    let mut hangs = Vec::new();
    let mut lost_bars = Vec::new();
    let mut time_bars = Vec::new();
    let mut racy_lost_total = 0;
    let mut racy_clean_trials = 0;
    for variant in Variant::ALL {
        let mut counts = Vec::new();
        for _ in 0..trials {
            counts.push(count(
                variant,
                n_threads,
                niters,
                settings.cpus.as_deref(),
                deadline,
            )?);
        }
        if counts.iter().any(|count| count.cut_short) {
            hangs.push(format!(
                "{}: the {} s deadline cut the runs short",
                variant.name(),
                settings.timeout.as_secs()
            ));
        }
        let lost: Vec<u64> = counts.iter().map(Count::lost).collect();
        let ns_per_increment: Vec<f64> = counts
            .iter()
            .map(|count| count.elapsed.as_nanos() as f64 / count.expected.max(1) as f64)
            .collect();
        let mean_lost = lost.iter().sum::<u64>() as f64 / trials as f64;
        let mean_ns = ns_per_increment.iter().sum::<f64>() / trials as f64;
        if variant == Variant::Racy {
            racy_lost_total = lost.iter().sum();
            racy_clean_trials = lost.iter().filter(|&&l| l == 0).count();
        }
        let expected: u64 = counts.iter().map(|count| count.expected).sum();
        let actual: u64 = counts.iter().map(|count| count.actual).sum();
        measured.push(format!(
            "{:<17} expected {:>11}  actual {:>11}  lost {:>11} ({:.1}% of increments, all trials)  {:.1} ns/increment",
            variant.name(),
            thousands(expected),
            thousands(actual),
            thousands(expected - actual),
            100.0 * (expected - actual) as f64 / expected.max(1) as f64,
            mean_ns,
        ));
        if trials > 1 {
            let all: Vec<String> = lost.iter().map(|&l| thousands(l)).collect();
            measured.push(format!("{:<17} lost per trial: {}", "", all.join(", ")));
        }
        let (low, high) = (
            *lost.iter().min().unwrap_or(&0) as f64,
            *lost.iter().max().unwrap_or(&0) as f64,
        );
        lost_bars.push(Bar {
            label: variant.name().to_string(),
            value: mean_lost,
            spread: Some((low, high)),
        });
        time_bars.push(Bar::new(variant.name(), mean_ns));
        figures.push(json!({
            "variant": variant.name(),
            "threads": n_threads,
            "niters": niters,
            "expected": counts.iter().map(|c| c.expected).collect::<Vec<_>>(),
            "actual": counts.iter().map(|c| c.actual).collect::<Vec<_>>(),
            "lost": lost,
            "ns_per_increment": ns_per_increment,
        }));
    }
    let picture = Picture::new(
        format!(
            "{n_threads} threads x {} increments, {trials} trial(s)",
            thousands(niters)
        ),
        "",
        vec![
            Panel::new("lost updates (mean, min-max)", lost_bars),
            Panel::new("time per increment (ns)", time_bars),
        ],
    );
    let meaning = if racy_lost_total > 0 {
        format!(
            "The racy counter lost {} of its increments over {trials} trial(s): a thread's load-add-store was interleaved with another's, \
             and one store overwrote the other. fetch_add and the mutex lost none; the race is in the code, not the hardware, and it costs \
             nothing to write and a lot to find.{}",
            thousands(racy_lost_total),
            if racy_clean_trials > 0 {
                format!(" {racy_clean_trials} racy trial(s) lost nothing: the scheduler never ran the threads at the same moment (a busy machine), which is exactly why testing does not find races.")
            } else {
                String::new()
            }
        )
    } else {
        "This run lost no updates even in the racy variant: the threads never interleaved between load and store (try more CPUs or \
         more trials). That is the lecture's warning: the probability of a bad outcome is low, but not zero; fetch_add and the mutex \
         are correct by construction, not by luck."
            .to_string()
    };
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Shared counter: lost updates (badcnt.c)",
        claim: "cnt++ is load, update, store; two threads running it on a shared counter interleave those steps and the final count comes out short and different every run.",
        did: format!(
            "{n_threads} threads each incremented one shared counter {} times, {trials} time(s) per variant: racy (relaxed load, then relaxed store), \
             atomic fetch_add, and a mutex{}.",
            thousands(niters),
            settings.cpus.as_ref().map_or(String::new(), |cpus| format!(", threads pinned round-robin to CPUs {cpus:?}"))
        ),
        measured,
        meaning,
        fix: "Make the increment indivisible: AtomicU64::fetch_add (one locked instruction) or a Mutex<u64> (correct, slower per increment). \
              In Rust the lecture's bug does not compile at all with a plain u64: sharing it mutably between threads is rejected \
              (tests/ui/shared_plain_counter.rs); only an explicit atomic load/store pair reproduces it."
            .to_string(),
        hangs,
        figures: json!({ "variants": figures }),
        svg: Some(picture.svg()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NITERS: u64 = 20_000;

    #[test]
    fn fixed_variants_lose_nothing() {
        for variant in [Variant::Atomic, Variant::Mutex] {
            let count = count(
                variant,
                4,
                NITERS,
                None,
                Deadline::after(Duration::from_secs(60)),
            )
            .unwrap();
            assert_eq!(count.expected, 4 * NITERS, "{variant:?}");
            assert_eq!(count.actual, 4 * NITERS, "{variant:?}");
            assert_eq!(count.lost(), 0);
        }
    }

    /// The racy variant's result is luck; only its bookkeeping is asserted.
    #[test]
    fn racy_variant_accounts_for_every_increment() {
        let count = count(
            Variant::Racy,
            2,
            NITERS,
            None,
            Deadline::after(Duration::from_secs(60)),
        )
        .unwrap();
        assert_eq!(count.expected, 2 * NITERS);
        assert!(
            count.actual <= count.expected && count.actual >= NITERS,
            "{count:?}"
        );
        assert_eq!(count.lost(), count.expected - count.actual);
    }

    #[test]
    fn a_passed_deadline_cuts_the_run_short_and_says_so() {
        let count = count(
            Variant::Atomic,
            2,
            10 * CHECK_EVERY,
            None,
            Deadline::after(Duration::ZERO),
        )
        .unwrap();
        assert!(count.cut_short);
        assert_eq!(
            count.expected,
            2 * CHECK_EVERY,
            "each thread stops after its first batch"
        );
        assert_eq!(count.actual, count.expected);
    }
}
