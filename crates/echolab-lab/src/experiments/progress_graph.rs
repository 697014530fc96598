//! `progress-graph`: the next lecture's progress graphs, computed rather than drawn by
//! hand. Every interleaving of two threads' racy increments (k load/update/store steps
//! each) is enumerated and its final count tallied; every lock-respecting trajectory of
//! the two-lock program is walked and the deadlocks counted, in opposite orders and in one
//! global order. Beside the enumeration, one real run of the racy counter, to relate the
//! share of bad interleavings to the share of updates the hardware actually lost.
//!
//! Trade-off: an enumeration is exact and exhaustive but only for toy sizes (C(6k, 3k)
//! paths: 48,620 at k = 3, 2.7 billion at k = 6); a measurement scales but samples only
//! the interleavings the scheduler happens to produce. loom (run in CI under
//! `--cfg loom`, see [`crate::progress`]) checks the same tiny program independently.

use std::io;
use std::time::Duration;

use serde_json::json;

use crate::experiment::{thousands, Experiment, Report, Settings};
use crate::experiments::counter::{count, Variant};
use crate::progress::{
    binomial, compose, counter_drawing, lock_outcomes, locks_drawing, CounterOutcomes,
    LockOutcomes, ONE_ORDER, OPPOSITE_ORDERS,
};

pub const EXPERIMENT: Experiment = Experiment {
    name: "progress-graph",
    summary: "every interleaving of two racy increments and of two threads' locks, enumerated and drawn (--trials: largest k, at most 3)",
    max_trials: 3,
    run,
};

/// Increments per thread in the real run set beside the enumeration.
pub const REAL_NITERS: u64 = crate::experiments::counter::RACY_NITERS;

/// One line per k: the count, its closed form, and the distribution of final values.
pub fn counter_line(outcomes: &CounterOutcomes) -> String {
    let k = outcomes.k as u64;
    let closed = binomial(6 * k, 3 * k);
    let finals: Vec<String> = outcomes
        .finals
        .iter()
        .map(|(value, n)| format!("{value} in {}", thousands(*n as u64)))
        .collect();
    format!(
        "k = {k}: {} interleavings ({} C({}, {}) = {}); final cnt {}; right ({}) in {:.2}%",
        thousands(outcomes.interleavings as u64),
        if outcomes.interleavings == closed {
            "equals"
        } else {
            "DIFFERS FROM"
        },
        6 * k,
        3 * k,
        thousands(closed as u64),
        finals.join(", "),
        2 * k,
        100.0 * outcomes.correct() as f64 / outcomes.interleavings.max(1) as f64
    )
}

/// One line per lock program.
pub fn locks_line(name: &str, outcome: &LockOutcomes) -> String {
    format!(
        "{name}: {} lock-respecting trajectories, {} complete, {} end in a deadlock{}; {} forbidden states",
        outcome.completed + outcome.deadlocked,
        outcome.completed,
        outcome.deadlocked,
        if outcome.deadlock_states.is_empty() {
            String::new()
        } else {
            let states: Vec<String> = outcome
                .deadlock_states
                .iter()
                .map(|(i, j)| format!("({i}, {j})"))
                .collect();
            format!(" (state {})", states.join(", "))
        },
        outcome.forbidden.len()
    )
}

/// What the enumeration and the real run mean together. `lost_share` is the share of
/// increments the real run lost (None when it could not run).
pub fn meaning(
    counters: &[CounterOutcomes],
    opposite: &LockOutcomes,
    ordered: &LockOutcomes,
    lost_share: Option<f64>,
) -> String {
    let mut text = String::new();
    let bad_share = |c: &CounterOutcomes| {
        (c.interleavings - c.correct()) as f64 / c.interleavings.max(1) as f64
    };
    if let Some(first) = counters.first() {
        let bad = first.interleavings - first.correct();
        text.push_str(&format!(
            "With {} increment(s) each, {} of the {} interleavings lose an update: only the {} that run one thread's increments entirely \
             before the other's (the trajectories that skirt the unsafe region) count to {}.",
            first.k,
            thousands(bad as u64),
            thousands(first.interleavings as u64),
            thousands(first.correct() as u64),
            2 * first.k
        ));
    }
    if let (Some(first), Some(last)) = (counters.first(), counters.last().filter(|c| c.k > 1)) {
        text.push_str(&format!(
            " At k = {} the right count is reached by {:.2}% of them ({:.2}% at k = {}), and the lowest possible count is {}.",
            last.k,
            100.0 * (1.0 - bad_share(last)),
            100.0 * (1.0 - bad_share(first)),
            first.k,
            last.finals.keys().next().copied().unwrap_or(0)
        ));
    }
    match (lost_share, counters.first()) {
        (Some(share), Some(first)) => {
            text.push_str(&format!(
                " Two real threads of {} racy increments each lost {:.1}% of their increments",
                thousands(REAL_NITERS),
                100.0 * share
            ));
            if share < 0.5 * bad_share(first) {
                text.push_str(
                    ", far fewer than the share of bad interleavings: the hardware does not pick interleavings uniformly, whole stretches \
                     of one thread run without the other overlapping.",
                );
            } else {
                text.push_str(
                    ", as many as the enumeration's share of bad interleavings suggests: the threads overlapped closely.",
                );
            }
        }
        _ => text.push_str(" The real run could not be made here."),
    }
    if opposite.deadlocked > 0 && ordered.deadlocked == 0 {
        text.push_str(&format!(
            " In opposite lock orders {} trajectories enter the deadlock region and never leave; with one global order the forbidden regions \
             merge into one block with no pocket beneath it, and all {} trajectories complete.",
            opposite.deadlocked, ordered.completed
        ));
    } else {
        text.push_str(&format!(
            " Deadlocking trajectories: {} in opposite orders, {} in one order.",
            opposite.deadlocked, ordered.deadlocked
        ));
    }
    text
}

fn run(settings: &Settings) -> io::Result<Report> {
    let max_k = settings.trials_or(2);
    let counters: Vec<CounterOutcomes> =
        (1..=max_k).map(crate::progress::counter_outcomes).collect();
    let opposite = lock_outcomes(&OPPOSITE_ORDERS);
    let ordered = lock_outcomes(&ONE_ORDER);
    let mut measured: Vec<String> = counters.iter().map(counter_line).collect();
    measured.push(locks_line(
        "locks in opposite orders (a,b / b,a)",
        &opposite,
    ));
    measured.push(locks_line("locks in one order (a,b / a,b)", &ordered));
    let real = count(
        Variant::Racy,
        2,
        REAL_NITERS,
        settings.cpus.as_deref(),
        settings
            .deadline()
            .min_after(Duration::from_secs(10).min(settings.timeout)),
    )?;
    let lost_share = real.lost() as f64 / real.expected.max(1) as f64;
    measured.push(format!(
        "real run, 2 threads x {} racy increments: {} lost ({:.1}%)",
        thousands(REAL_NITERS),
        thousands(real.lost()),
        100.0 * lost_share
    ));
    let drawn_k = max_k.min(2);
    let mut drawings = vec![counter_drawing(1)];
    if drawn_k > 1 {
        drawings.push(counter_drawing(2));
    }
    drawings.push(locks_drawing(&OPPOSITE_ORDERS, "locks, opposite orders"));
    drawings.push(locks_drawing(&ONE_ORDER, "locks, one global order"));
    let figures = json!({
        "counter": counters.iter().map(|c| json!({
            "k": c.k,
            "interleavings": c.interleavings as u64,
            "closed_form": binomial(6 * c.k as u64, 3 * c.k as u64) as u64,
            "finals": c.finals.iter().map(|(v, n)| json!({ "value": v, "interleavings": *n as u64 })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "locks": {
            "opposite": { "completed": opposite.completed as u64, "deadlocked": opposite.deadlocked as u64, "deadlock_states": opposite.deadlock_states },
            "one_order": { "completed": ordered.completed as u64, "deadlocked": ordered.deadlocked as u64 },
        },
        "real": { "niters": REAL_NITERS, "expected": real.expected, "lost": real.lost() },
    });
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Progress graphs: every interleaving, counted",
        claim: "A progress graph depicts the discrete execution state space of concurrent threads; trajectories that enter the unsafe region give wrong results, and a deadlock region is a set of states from which every trajectory ends in deadlock.",
        did: format!(
            "Enumerated every interleaving of two threads that each run k = 1..{max_k} racy increments (L, U, S: load, update, store), following \
             each to its final count; walked every lock-respecting trajectory of two threads that take locks a and b in opposite orders, and in one \
             global order; ran the real racy counter once for comparison. The graphs: states are points, thread 1 moves right and thread 2 up; \
             shaded red is the unsafe region (counter) or the deadlock region (locks), grey the forbidden states."
        ),
        measured,
        meaning: meaning(&counters, &opposite, &ordered, Some(lost_share)),
        fix: "Keep trajectories out of the unsafe region by making L, U, S one critical section (a mutex: its forbidden region covers the unsafe \
              region), or one indivisible instruction (fetch_add); keep them out of deadlock regions by one global lock order."
            .to_string(),
        hangs: Vec::new(),
        figures,
        svg: Some(compose(&drawings)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::counter_outcomes;

    #[test]
    fn lines_state_the_counts() {
        assert_eq!(
            counter_line(&counter_outcomes(1)),
            "k = 1: 20 interleavings (equals C(6, 3) = 20); final cnt 1 in 18, 2 in 2; right (2) in 10.00%"
        );
        assert_eq!(
            counter_line(&counter_outcomes(2)),
            "k = 2: 924 interleavings (equals C(12, 6) = 924); final cnt 2 in 702, 3 in 216, 4 in 6; right (4) in 0.65%"
        );
        let mut wrong = counter_outcomes(1);
        wrong.interleavings = 19;
        assert!(counter_line(&wrong).contains("(DIFFERS FROM C(6, 3) = 20)"));
        assert_eq!(
            locks_line("opposite", &lock_outcomes(&OPPOSITE_ORDERS)),
            format!(
                "opposite: {} lock-respecting trajectories, {} complete, 2 end in a deadlock (state (1, 1)); 5 forbidden states",
                lock_outcomes(&OPPOSITE_ORDERS).completed + 2,
                lock_outcomes(&OPPOSITE_ORDERS).completed
            )
        );
        // One order: lock a is held by both when i and j are both in 1..=3, 3 x 3 states.
        assert_eq!(
            locks_line("one", &lock_outcomes(&ONE_ORDER)),
            "one: 2 lock-respecting trajectories, 2 complete, 0 end in a deadlock; 9 forbidden states"
        );
    }

    #[test]
    fn meaning_follows_the_figures() {
        let counters = [counter_outcomes(1), counter_outcomes(2)];
        let opposite = lock_outcomes(&OPPOSITE_ORDERS);
        let ordered = lock_outcomes(&ONE_ORDER);
        let text = meaning(&counters, &opposite, &ordered, Some(0.25));
        assert!(text.starts_with("With 1 increment(s) each, 18 of the 20 interleavings lose an update: only the 2 that run"), "{text}");
        assert!(text.contains(" At k = 2 the right count is reached by 0.65% of them (10.00% at k = 1), and the lowest possible count is 2."), "{text}");
        assert!(
            text.contains(
                "lost 25.0% of their increments, far fewer than the share of bad interleavings"
            ),
            "{text}"
        );
        let text = meaning(&counters, &opposite, &ordered, Some(0.5));
        assert!(
            text.contains("lost 50.0% of their increments, as many as"),
            "{text}"
        );
        // Exactly half the share of bad interleavings (18/20 = 0.9) is not "far fewer".
        let boundary = meaning(&counters, &opposite, &ordered, Some(0.5 * (18.0 / 20.0)));
        assert!(boundary.contains("as many as"), "{boundary}");
        let none = meaning(&counters, &ordered, &ordered, Some(0.1));
        assert!(
            none.ends_with("Deadlocking trajectories: 0 in opposite orders, 0 in one order."),
            "{none}"
        );
        assert!(
            text.contains("In opposite lock orders 2 trajectories enter the deadlock region"),
            "{text}"
        );
        assert!(text.contains("all 2 trajectories complete"), "{text}");
        let text = meaning(&counters[..1], &opposite, &opposite, None);
        assert!(!text.contains("At k ="), "{text}");
        assert!(text.contains("could not be made"), "{text}");
        assert!(
            text.ends_with("Deadlocking trajectories: 2 in opposite orders, 2 in one order."),
            "{text}"
        );
    }
}
