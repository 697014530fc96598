//! `counter`: the lecture's badcnt.c. Threads increment one shared counter `niters` times
//! each; `cnt++` is a load, an add and a store, and two threads that interleave those
//! steps lose updates.
//!
//! Trade-off: the racy version is the fastest and wrong; `fetch_add` makes the increment
//! one indivisible instruction (correct, and the cache line still bounces between cores);
//! a mutex is correct too and pays for a lock round trip per increment.
//!
//! Rust will not compile C's `volatile long cnt` shared between threads (see
//! tests/ui/shared_plain_counter.rs). A relaxed atomic load then store is no substitute:
//! the compiler may fuse it into one `addq $1,(mem)`, which a context switch cannot split,
//! so it never loses an update on one core. The racy variant is therefore the lecture's
//! three instructions written in assembly ([`echolab_sys::racy`]): load, add, store. The
//! report shows that loop as objdump reads it from the running binary ([`crate::disasm`]).

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
    max_trials: 1_000,
    run,
};

/// Increments per thread by default: enough for the threads to overlap for several
/// milliseconds (a release build increments ~20x faster than a debug one).
pub const DEFAULT_NITERS: u64 = if cfg!(debug_assertions) {
    1_000_000
} else {
    10_000_000
};

/// On one CPU each thread increments this many times more (see `run`).
pub const ONE_CPU_FACTOR: u64 = 10;

/// Increments per thread of the racy variant: its loop is assembly, as fast in a debug
/// build as in a release one, and it needs to run long enough for the threads to overlap
/// (on one CPU, for many time slices: about 4 ms per 10 million here).
pub const RACY_NITERS: u64 = 10_000_000;

/// Increments per thread of `variant`, on one CPU or on several.
pub fn niters_for(variant: Variant, one_cpu: bool) -> u64 {
    let base = match variant {
        Variant::Racy => RACY_NITERS,
        Variant::Atomic | Variant::Mutex => DEFAULT_NITERS,
    };
    if one_cpu && variant == Variant::Racy {
        ONE_CPU_FACTOR * base
    } else {
        base
    }
}

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
                        match variant {
                            // THE RACE: the loop is load, add, store per increment (see
                            // echolab_sys::racy); another thread's store can land between
                            // our load and our store, on another core or, after a context
                            // switch, on this one; ours then overwrites it.
                            Variant::Racy => echolab_sys::racy::racy_add(racy, batch),
                            Variant::Atomic => {
                                for _ in 0..batch {
                                    atomic.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Variant::Mutex => {
                                for _ in 0..batch {
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

/// What the meaning of a counter run is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    /// Updates the racy variant lost, per trial.
    pub racy_lost: Vec<u64>,
    /// Updates fetch_add and the mutex lost, summed (0 unless something is very wrong).
    pub fixed_lost: u64,
    /// The threads all ran on one CPU (so they never ran at the same moment).
    pub one_cpu: bool,
}

/// The sentences of a counter run, from its figures.
pub fn meaning(findings: &Findings) -> String {
    let trials = findings.racy_lost.len();
    let total: u64 = findings.racy_lost.iter().sum();
    let clean = findings.racy_lost.iter().filter(|&&lost| lost == 0).count();
    let mut text = if total > 0 {
        let how = if findings.one_cpu {
            "on one CPU, where the threads never run at the same moment: the scheduler preempted a thread between its load and its store, \
             the other thread ran and stored, and the first thread's store then wrote back its stale value, wiping out every increment the other made in its time slice"
        } else {
            "a thread's load-add-store was interleaved with another's, and one store overwrote the other"
        };
        format!(
            "The racy counter lost {} of its increments over {trials} trial(s), {how}.",
            thousands(total)
        )
    } else {
        format!(
            "The racy counter lost no updates in {trials} trial(s): no thread was {} between its load and its store this time. \
             The race is still there (the listing shows a separate load and store); the probability of a bad outcome is low, not zero.",
            if findings.one_cpu { "preempted" } else { "preempted or overlapped" }
        )
    };
    if total > 0 && clean > 0 {
        text.push_str(&format!(
            " {clean} of the {trials} racy trial(s) lost nothing: no thread was interrupted or overlapped between its load and store in those runs, \
             which is exactly why testing does not find races."
        ));
    }
    if findings.fixed_lost == 0 {
        text.push_str(
            " fetch_add and the mutex lost none: they are correct by construction, not by luck.",
        );
    } else {
        text.push_str(&format!(
            " fetch_add and the mutex lost {}, which they cannot: the lab itself is broken.",
            thousands(findings.fixed_lost)
        ));
    }
    text
}

/// The measured lines that show the racy loop as compiled, one instruction a line with
/// its role (as the lecture's assembly slide does), and whether it is split.
pub fn listing_lines(listing: &Result<(Vec<String>, crate::disasm::Steps), String>) -> Vec<String> {
    match listing {
        Ok((instructions, steps)) => {
            let mut lines = vec![format!(
                "racy loop as compiled (objdump of {} in this binary):",
                echolab_sys::racy::RACY_SYMBOL
            )];
            for insn in instructions {
                let role = if steps.loads.contains(insn) {
                    "L: load cnt into a register"
                } else if steps.register_adds.contains(insn) {
                    "U: update the register"
                } else if steps.stores.contains(insn) {
                    "S: store the register into cnt"
                } else if steps.read_modify_writes.contains(insn) {
                    "read-modify-write of memory in ONE instruction"
                } else {
                    ""
                };
                lines.push(format!("    {insn:<28} {role}").trim_end().to_string());
            }
            lines.push(if steps.is_split() {
                "  => a separate load (L), update (U) and store (S): a context switch can fall between L and S".to_string()
            } else {
                format!(
                    "  => NOT a separate load, update and store ({}): a context switch cannot split it, so one core cannot lose updates",
                    steps.read_modify_writes.join(", ")
                )
            });
            lines
        }
        Err(err) => vec![format!("racy loop: cannot show its instructions ({err})")],
    }
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(3);
    let n_threads = settings.cpus.as_ref().map_or(2, |cpus| cpus.len().max(2));
    let one_cpu = settings.cpus().len() == 1;
    // On one CPU the threads take turns, and updates are lost only when a time slice ends
    // between a load and its store: a run must last many slices (a few ms each) for that
    // to happen (see `niters_for`).
    let deadline = settings.deadline();
    let listing = crate::disasm::racy_loop();
    let mut measured = listing_lines(&listing);
    let mut figures = Vec::new();
    let mut hangs = Vec::new();
    let mut lost_bars = Vec::new();
    let mut time_bars = Vec::new();
    let mut racy_lost = Vec::new();
    let mut fixed_lost = 0;
    for variant in Variant::ALL {
        let niters = niters_for(variant, one_cpu);
        let mut counts = Vec::new();
        // At least one run of each variant; further trials only while time is left.
        while counts.len() < trials && (counts.is_empty() || !deadline.passed()) {
            counts.push(count(
                variant,
                n_threads,
                niters,
                settings.cpus.as_deref(),
                deadline,
            )?);
        }
        let runs = counts.len();
        if counts.iter().any(|count| count.cut_short) || runs < trials {
            hangs.push(format!(
                "{}: timed out: the {} s deadline cut the runs short ({runs} of {trials} trial(s) ran)",
                variant.name(),
                settings.timeout.as_secs()
            ));
        }
        let lost: Vec<u64> = counts.iter().map(Count::lost).collect();
        let ns_per_increment: Vec<f64> = counts
            .iter()
            .map(|count| count.elapsed.as_nanos() as f64 / count.expected.max(1) as f64)
            .collect();
        let mean_lost = lost.iter().sum::<u64>() as f64 / runs as f64;
        let mean_ns = ns_per_increment.iter().sum::<f64>() / runs as f64;
        if variant == Variant::Racy {
            racy_lost = lost.clone();
        } else {
            fixed_lost += lost.iter().sum::<u64>();
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
        if runs > 1 {
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
            "{n_threads} threads, {} trial(s); racy {} increments per thread, the others {}",
            racy_lost.len(),
            thousands(niters_for(Variant::Racy, one_cpu)),
            thousands(niters_for(Variant::Atomic, one_cpu))
        ),
        "",
        vec![
            Panel::new("lost updates (mean, min-max)", lost_bars),
            Panel::new("time per increment (ns)", time_bars),
        ],
    );
    let findings = Findings {
        racy_lost,
        fixed_lost,
        one_cpu,
    };
    let (instructions, split) = match &listing {
        Ok((instructions, steps)) => (instructions.clone(), Some(steps.is_split())),
        Err(_) => (Vec::new(), None),
    };
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Shared counter: lost updates (badcnt.c)",
        claim: "cnt++ is load, update, store; two threads running it on a shared counter interleave those steps and the final count comes out short and different every run.",
        did: format!(
            "{n_threads} threads each incremented one shared counter, up to {trials} time(s) per variant: racy (load, add, store as three \
             instructions, the lecture's L, U, S; {} times per thread), atomic fetch_add and a mutex ({} times per thread){}.",
            thousands(niters_for(Variant::Racy, one_cpu)),
            thousands(niters_for(Variant::Atomic, one_cpu)),
            settings.cpus.as_ref().map_or(String::new(), |cpus| format!(", threads pinned round-robin to CPUs {cpus:?}"))
        ),
        measured,
        meaning: meaning(&findings),
        fix: "Make the increment indivisible: AtomicU64::fetch_add (one locked instruction) or a Mutex<u64> (correct, slower per increment). \
              In Rust the lecture's bug does not compile at all with a plain u64: sharing it mutably between threads is rejected \
              (tests/ui/shared_plain_counter.rs); here it takes three instructions of assembly to reproduce."
            .to_string(),
        hangs,
        figures: json!({
            "variants": figures,
            "one_cpu": one_cpu,
            "racy_loop": instructions,
            "racy_loop_split": split,
        }),
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

    fn findings(racy_lost: &[u64], fixed_lost: u64, one_cpu: bool) -> Findings {
        Findings {
            racy_lost: racy_lost.to_vec(),
            fixed_lost,
            one_cpu,
        }
    }

    #[test]
    fn meaning_when_every_trial_lost_updates() {
        let text = meaning(&findings(&[1_000, 2_500], 0, false));
        assert!(text.starts_with("The racy counter lost 3,500 of its increments over 2 trial(s), a thread's load-add-store was interleaved"), "{text}");
        assert!(!text.contains("lost nothing"), "{text}");
        assert!(
            text.ends_with(
                "fetch_add and the mutex lost none: they are correct by construction, not by luck."
            ),
            "{text}"
        );
        let text = meaning(&findings(&[7], 0, true));
        assert!(
            text.contains("lost 7 of its increments over 1 trial(s), on one CPU"),
            "{text}"
        );
        assert!(
            text.contains("preempted a thread between its load and its store"),
            "{text}"
        );
    }

    #[test]
    fn meaning_when_some_trials_lost_nothing() {
        let text = meaning(&findings(&[0, 12, 0], 0, false));
        assert!(
            text.contains("lost 12 of its increments over 3 trial(s)"),
            "{text}"
        );
        assert!(
            text.contains(" 2 of the 3 racy trial(s) lost nothing"),
            "{text}"
        );
    }

    #[test]
    fn meaning_when_nothing_was_lost() {
        let text = meaning(&findings(&[0, 0], 0, true));
        assert!(
            text.starts_with(
                "The racy counter lost no updates in 2 trial(s): no thread was preempted between"
            ),
            "{text}"
        );
        assert!(!text.contains("lost nothing"), "{text}");
        let text = meaning(&findings(&[0], 0, false));
        assert!(
            text.contains("no thread was preempted or overlapped"),
            "{text}"
        );
    }

    #[test]
    fn meaning_when_a_fixed_variant_lost_updates() {
        let text = meaning(&findings(&[5], 1_234, false));
        assert!(
            text.ends_with(
                "fetch_add and the mutex lost 1,234, which they cannot: the lab itself is broken."
            ),
            "{text}"
        );
    }

    #[test]
    fn the_listing_says_what_each_instruction_is() {
        let lines = |insns: &[&str]| {
            let insns: Vec<String> = insns.iter().map(|s| s.to_string()).collect();
            let steps = crate::disasm::classify(&insns);
            listing_lines(&Ok((insns, steps)))
        };
        let split = lines(&[
            "test %rsi,%rsi",
            "mov (%rdi),%rax",
            "add $0x1,%rax",
            "mov %rax,(%rdi)",
        ]);
        assert_eq!(
            split[1..],
            [
                "    test %rsi,%rsi".to_string(),
                format!("    {:<28} L: load cnt into a register", "mov (%rdi),%rax"),
                format!("    {:<28} U: update the register", "add $0x1,%rax"),
                format!("    {:<28} S: store the register into cnt", "mov %rax,(%rdi)"),
                "  => a separate load (L), update (U) and store (S): a context switch can fall between L and S".to_string(),
            ]
        );
        let fused = lines(&["addq $0x1,(%rdi)"]);
        assert!(
            fused[1].ends_with("read-modify-write of memory in ONE instruction"),
            "{fused:?}"
        );
        assert!(
            fused[2].starts_with("  => NOT a separate load, update and store (addq $0x1,(%rdi))"),
            "{fused:?}"
        );
        assert_eq!(
            listing_lines(&Err("no objdump".to_string())),
            ["racy loop: cannot show its instructions (no objdump)"]
        );
    }

    #[test]
    fn the_racy_loop_runs_longer_on_one_cpu() {
        assert_eq!(niters_for(Variant::Racy, false), RACY_NITERS);
        assert_eq!(
            niters_for(Variant::Racy, true),
            ONE_CPU_FACTOR * RACY_NITERS
        );
        assert_eq!(niters_for(Variant::Atomic, true), DEFAULT_NITERS);
        assert_eq!(niters_for(Variant::Mutex, false), DEFAULT_NITERS);
        assert_eq!(ONE_CPU_FACTOR * RACY_NITERS, 100_000_000);
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
