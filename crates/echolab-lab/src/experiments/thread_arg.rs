//! `thread-arg`: the lecture's race.c. The main thread creates 100 threads in a loop and
//! hands each the *address* of its loop index; each thread reads the index when it gets
//! around to starting, by which time the loop may have moved on.
//!
//! Trade-off: sharing the index costs nothing and is wrong; moving the value into the
//! thread (the lecture's `malloc`ed argument, Rust's `move` closure) costs a copy and is
//! right. Rust rejects the lecture's `&i` outright (tests/ui/pass_loop_index_ref.rs), so
//! the racy variant shares the index through an atomic that the spawner advances and the
//! thread reads late: the same race, in safe code.
//!
//! The lecture's three panels are reproduced: no race (value moved), one core (the whole
//! experiment pinned to one CPU with `sched_setaffinity`), and every core.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::experiment::{allowed_cpus, pin_current_thread, Experiment, Report, Settings};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "thread-arg",
    summary: "race.c: 100 threads read the loop index late; histogram pinned to one CPU vs all vs moved value (--trials: runs)",
    max_trials: 10_000,
    run,
};

/// Threads per run, as in the lecture.
pub const N_THREADS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Each thread reads the shared index when it starts.
    Shared,
    /// Each thread gets its own copy of the index (`move`).
    Moved,
}

/// One run: the value each thread saw, in thread creation order.
pub fn race_once(variant: Variant, n_threads: usize) -> Vec<usize> {
    let index = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(n_threads);
        for i in 0..n_threads {
            match variant {
                Variant::Shared => {
                    // The spawner's `i` lives in `index`; the thread reads it whenever it
                    // runs, like `*vargp` in race.c.
                    index.store(i, Ordering::Relaxed);
                    let index = &index;
                    handles.push(scope.spawn(move || index.load(Ordering::Relaxed)));
                }
                Variant::Moved => handles.push(scope.spawn(move || i)),
            }
        }
        // The loop has moved on past the last value, as C's `i` ends at 100.
        index.store(n_threads, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or(usize::MAX))
            .collect()
    })
}

/// Runs `race_once` on a thread restricted to `cpus` (its threads inherit the mask).
pub fn race_on(cpus: &[usize], variant: Variant, n_threads: usize) -> io::Result<Vec<usize>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_current_thread(cpus)?;
                Ok(race_once(variant, n_threads))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the race thread panicked")))
    })
}

/// How many threads saw each value `0..=n_threads` (the last slot: "the loop had ended").
pub fn histogram(seen: &[usize], n_threads: usize) -> Vec<u64> {
    let mut counts = vec![0u64; n_threads + 1];
    for &value in seen {
        counts[value.min(n_threads)] += 1;
    }
    counts
}

/// How many different values were seen (100 means no race showed).
pub fn distinct(counts: &[u64]) -> usize {
    counts.iter().filter(|&&count| count > 0).count()
}

fn run(settings: &Settings) -> io::Result<Report> {
    let trials = settings.trials_or(5);
    let cpus = settings.cpus();
    let one_core = vec![cpus[0]];
    let all_cpus = if settings.cpus.is_some() {
        cpus.clone()
    } else {
        allowed_cpus()
    };
    let mut panels_spec: Vec<(&str, &[usize], Variant)> = vec![
        ("no race (value moved)", &all_cpus, Variant::Moved),
        ("one core (pinned)", &one_core, Variant::Shared),
    ];
    // With a single CPU given there are no "all cores" to compare with.
    if all_cpus.len() > 1 {
        panels_spec.push(("all cores", &all_cpus, Variant::Shared));
    }
    let deadline = settings.deadline();
    let mut measured = Vec::new();
    let mut panels = Vec::new();
    let mut figures = Vec::new();
    let mut hangs = Vec::new();
    let mut headline = Vec::new();
    for (title, cpus, variant) in panels_spec {
        let mut total = vec![0u64; N_THREADS + 1];
        let mut distinct_per_trial = Vec::new();
        for trial in 0..trials {
            if deadline.passed() {
                hangs.push(format!(
                    "{title}: timed out: the deadline passed after {trial} of {trials} trials"
                ));
                break;
            }
            let seen = race_on(cpus, variant, N_THREADS)?;
            let counts = histogram(&seen, N_THREADS);
            distinct_per_trial.push(distinct(&counts));
            for (slot, count) in total.iter_mut().zip(&counts) {
                *slot += count;
            }
        }
        let most = total.iter().max().copied().unwrap_or(0);
        let most_value = total.iter().position(|&count| count == most).unwrap_or(0);
        let ended = total[N_THREADS];
        measured.push(format!(
            "{title:<22} on CPUs {cpus:?}: distinct values per trial {distinct_per_trial:?} (of {N_THREADS}); most-seen value {most_value} by {most} threads; {ended} thread(s) saw the loop already ended"
        ));
        headline.push((title, distinct_per_trial.clone()));
        let bars = total
            .iter()
            .enumerate()
            .map(|(value, &count)| {
                let label = if value == N_THREADS {
                    "end".to_string()
                } else {
                    value.to_string()
                };
                Bar::new(label, count as f64)
            })
            .collect();
        panels.push(Panel::new(
            format!("{title}: summed over {} trial(s)", distinct_per_trial.len()),
            bars,
        ));
        figures.push(json!({
            "panel": title,
            "cpus": cpus,
            "distinct_per_trial": distinct_per_trial,
            "histogram": total,
        }));
    }
    let mut picture = Picture::new(
        format!("Values seen by {N_THREADS} threads in each trial, summed over the trials"),
        "threads that saw the value",
        panels,
    );
    picture.label_every = 20;
    picture.x_label = "value the thread read (end: the loop had already finished)".to_string();
    let summary = |idx: usize| {
        let values = &headline[idx].1;
        if values.is_empty() {
            "no trial".to_string()
        } else {
            format!(
                "{}-{}",
                values.iter().min().unwrap_or(&0),
                values.iter().max().unwrap_or(&0)
            )
        }
    };
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Passing the loop index to threads (race.c)",
        claim: "If main passes &i to each new thread, a thread may read i after the loop has advanced: without a race the saved values are 0..99 once each; with it, some values repeat and others vanish, on one core and (more) on many.",
        did: did_text(trials, one_core[0], &all_cpus),
        measured,
        meaning: meaning(
            &all_cpus,
            &summary(0),
            &summary(1),
            (headline.len() > 2).then(|| summary(2)).as_deref(),
        ),
        fix: "Give each thread its own copy: a `move` closure capturing the value (the lecture mallocs a slot per thread and frees it in the thread). \
              Rust rejects the lecture's bug at compile time: a spawned closure that borrows the loop variable does not compile \
              (tests/ui/pass_loop_index_ref.rs), which is why the racy variant here needs an explicit shared atomic."
            .to_string(),
        hangs,
        figures: json!({ "threads": N_THREADS, "trials": trials, "panels": figures }),
        svg: Some(picture.svg()),
    })
}

/// What was run: the racy panels on one core and, when more than one CPU was given, on
/// all of them.
pub fn did_text(trials: usize, one_core: usize, all_cpus: &[usize]) -> String {
    let racy = if all_cpus.len() > 1 {
        format!("pinned to CPU {one_core} (one core) or on CPUs {all_cpus:?} (all cores)")
    } else {
        format!("pinned to CPU {one_core}, the only CPU given, so there is no all-cores panel")
    };
    format!(
        "Created {N_THREADS} threads {trials} time(s) per panel; in the racy panels the spawner stores the index in a shared atomic that each \
         thread reads when it starts, {racy}; in the first panel the value is moved into the thread."
    )
}

/// What the distinct-value ranges mean (`all` is None when only one CPU was given).
pub fn meaning(all_cpus: &[usize], moved: &str, one: &str, all: Option<&str>) -> String {
    let ranges = match all {
        Some(all) => format!("moved {moved}, one core {one}, all cores {all}"),
        None => format!(
            "moved {moved}, one core {one}; only CPU {all_cpus:?} was given, so nothing ran on several cores and there is no all-cores comparison"
        ),
    };
    format!(
        "Distinct values out of {N_THREADS}: {ranges}. Any number below {N_THREADS} means threads read an index \
         that had already moved on: the race is real, and how often it shows depends on when the scheduler runs the new thread."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_values_are_each_seen_exactly_once() {
        let seen = race_once(Variant::Moved, N_THREADS);
        let counts = histogram(&seen, N_THREADS);
        assert_eq!(distinct(&counts), N_THREADS);
        assert!(counts[..N_THREADS].iter().all(|&count| count == 1));
        assert_eq!(counts[N_THREADS], 0);
    }

    /// Which values the racy threads see is luck; that every thread is counted once and
    /// every value is in range is not.
    #[test]
    fn racy_histogram_counts_every_thread() {
        let seen = race_on(&[allowed_cpus()[0]], Variant::Shared, N_THREADS).unwrap();
        assert_eq!(seen.len(), N_THREADS);
        assert!(seen.iter().all(|&value| value <= N_THREADS));
        let counts = histogram(&seen, N_THREADS);
        assert_eq!(counts.iter().sum::<u64>(), N_THREADS as u64);
        assert!((1..=N_THREADS + 1).contains(&distinct(&counts)));
    }

    #[test]
    fn one_cpu_given_makes_no_all_cores_claim() {
        let text = meaning(&[0], "100-100", "34-35", None);
        assert!(text.starts_with("Distinct values out of 100: moved 100-100, one core 34-35; only CPU [0] was given, so nothing ran on several cores and there is no all-cores comparison."), "{text}");
        assert!(!text.contains("all cores 3"), "{text}");
        let did = did_text(5, 0, &[0]);
        assert!(
            did.contains("pinned to CPU 0, the only CPU given, so there is no all-cores panel;"),
            "{did}"
        );
        assert!(!did.contains("(all cores)"), "{did}");
    }

    #[test]
    fn several_cpus_are_compared_with_one() {
        let text = meaning(&[0, 1], "100-100", "34-35", Some("60-70"));
        assert!(text.starts_with("Distinct values out of 100: moved 100-100, one core 34-35, all cores 60-70. Any number"), "{text}");
        let did = did_text(5, 0, &[0, 1]);
        assert!(
            did.contains("pinned to CPU 0 (one core) or on CPUs [0, 1] (all cores);"),
            "{did}"
        );
    }

    #[test]
    fn histogram_folds_late_values_into_the_last_slot() {
        let counts = histogram(&[0, 0, 3, 4, 9], 4);
        assert_eq!(counts, vec![2, 0, 0, 1, 2]);
        assert_eq!(distinct(&counts), 3);
    }
}
