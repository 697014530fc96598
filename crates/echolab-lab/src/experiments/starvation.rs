//! `starvation`: the lecture's yellow car. A continuous stream of readers (green cars)
//! keeps a writer (the yellow car that must yield) waiting: with a reader-preferring lock
//! some reader is always inside, so the count of readers never drops to zero and the
//! writer never gets in, while the system as a whole makes plenty of progress.
//!
//! Trade-off: preferring readers maximises read throughput and can starve writers;
//! preferring a waiting writer (new readers queue behind it) costs readers a short wait
//! and bounds the writer's wait by the length of one read.
//!
//! Both locks are the lab's own ([`crate::locks`]), identical but for that one rule, and
//! checked with loom.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::experiment::{ms, thousands, Deadline, Experiment, Report, Settings, Spread};
use crate::locks::{ReaderPreferringLock, WriterPreferringLock};
use crate::plot::{Bar, Panel, Picture};

pub const EXPERIMENT: Experiment = Experiment {
    name: "starvation",
    summary: "the yellow car: streaming readers starve a writer on a reader-preferring lock; writer preference fixes it (--trials: writer attempts)",
    max_trials: 1_000_000,
    run,
};

/// Reader threads in the stream.
pub const N_READERS: usize = 3;
/// How long a reader holds the lock (busy, as a real reader reading).
pub const READ_HOLD: Duration = Duration::from_micros(50);
/// How long the writer holds it.
pub const WRITE_HOLD: Duration = Duration::from_micros(10);

/// The two locks, behind one interface.
pub trait ReadersWriters: Sync {
    fn name(&self) -> &'static str;
    fn read_for(&self, hold: Duration);
    /// Writes for `hold` if it gets in before `deadline`; false if it gave up.
    fn write_for_before(&self, hold: Duration, deadline: Instant) -> bool;
}

fn busy(hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

impl ReadersWriters for ReaderPreferringLock {
    fn name(&self) -> &'static str {
        "reader-preferring"
    }
    fn read_for(&self, hold: Duration) {
        self.read(|| busy(hold));
    }
    fn write_for_before(&self, hold: Duration, deadline: Instant) -> bool {
        self.write_before(deadline, || busy(hold)).is_some()
    }
}

impl ReadersWriters for WriterPreferringLock {
    fn name(&self) -> &'static str {
        "writer-preferring"
    }
    fn read_for(&self, hold: Duration) {
        self.read(|| busy(hold));
    }
    fn write_for_before(&self, hold: Duration, deadline: Instant) -> bool {
        self.write_before(deadline, || busy(hold)).is_some()
    }
}

/// What each thread got.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub lock: &'static str,
    /// Acquisitions per reader thread.
    pub reads: Vec<u64>,
    /// Writer acquisitions (at most `attempts`).
    pub writes: u64,
    pub attempts: u64,
    /// How long each successful write waited; a final give-up adds its wait too.
    pub write_waits: Vec<Duration>,
    /// The writer was still waiting when the interval ended.
    pub writer_gave_up: bool,
    /// How long the stream ran (readers and writer together).
    pub elapsed: Duration,
}

impl Outcome {
    pub fn longest_write_wait(&self) -> Duration {
        self.write_waits.iter().max().copied().unwrap_or_default()
    }
}

/// Streams `n_readers` readers through `lock` while one writer tries `attempts` writes;
/// the writer gives up at `deadline`, and then the readers stop.
pub fn stream(
    lock: &dyn ReadersWriters,
    n_readers: usize,
    attempts: u64,
    deadline: Deadline,
) -> Outcome {
    let stop = AtomicBool::new(false);
    let reads: Vec<AtomicU64> = (0..n_readers).map(|_| AtomicU64::new(0)).collect();
    let mut writes = 0;
    let mut write_waits = Vec::new();
    let mut writer_gave_up = false;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for count in &reads {
            let stop = &stop;
            scope.spawn(move || {
                // Green cars: back-to-back reads, no gap between them.
                while !stop.load(Ordering::Relaxed) {
                    lock.read_for(READ_HOLD);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Let the stream start before the yellow car arrives (bounded by the deadline).
        while reads.iter().any(|count| count.load(Ordering::Relaxed) == 0) && !deadline.passed() {
            std::thread::yield_now();
        }
        let give_up_at = Instant::now() + deadline.remaining();
        for _ in 0..attempts {
            let asked = Instant::now();
            let got_in = lock.write_for_before(WRITE_HOLD, give_up_at);
            write_waits.push(asked.elapsed());
            if !got_in {
                writer_gave_up = true;
                break;
            }
            writes += 1;
            // A gap between writes, so each write meets a running stream again.
            std::thread::sleep(Duration::from_micros(200));
        }
        stop.store(true, Ordering::Relaxed);
    });
    Outcome {
        lock: lock.name(),
        reads: reads
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .collect(),
        writes,
        attempts,
        write_waits,
        writer_gave_up,
        elapsed: started.elapsed(),
    }
}

/// Reads per second over all readers.
pub fn read_rate(outcome: &Outcome) -> f64 {
    outcome.reads.iter().sum::<u64>() as f64 / outcome.elapsed.as_secs_f64().max(1e-9)
}

/// What the two runs mean: `starved` on the reader-preferring lock, `fixed` on the
/// writer-preferring one.
pub fn meaning(starved: &Outcome, fixed: &Outcome) -> String {
    let mut text = if starved.writer_gave_up {
        format!(
            "On the reader-preferring lock the readers made {} reads while the writer got {} of {} writes and gave up after waiting {:.0} ms: \
             the stream never let the reader count drop to zero for that long.",
            thousands(starved.reads.iter().sum()),
            starved.writes,
            starved.attempts,
            ms(starved.longest_write_wait())
        )
    } else {
        format!(
            "On the reader-preferring lock the writer got all {} of its writes this time (longest wait {:.1} ms): the reader count did drop \
             to zero often enough, so no starvation was seen. It is a matter of timing: a busier stream starves it.",
            starved.writes,
            ms(starved.longest_write_wait())
        )
    };
    let (before, after) = (starved.longest_write_wait(), fixed.longest_write_wait());
    if after < before {
        let (paid, free) = (read_rate(fixed), read_rate(starved));
        text.push_str(&format!(
            " Preferring the waiting writer cut its longest wait to {:.1} ms (from {:.1} ms), {} ({paid:.0} reads/s on the writer-preferring \
             lock against {free:.0} reads/s on the reader-preferring one).",
            ms(after),
            ms(before),
            if paid < 0.95 * free {
                "at the price of readers pausing while it goes"
            } else if paid > free / 0.95 {
                "and the readers went faster too, not slower: this run shows no price for the fix"
            } else {
                "and the readers' throughput stayed within 5%"
            }
        ));
    } else {
        text.push_str(&format!(
            " Preferring the waiting writer did not shorten its longest wait this time ({:.1} ms against {:.1} ms).",
            ms(after),
            ms(before)
        ));
    }
    if fixed.writer_gave_up {
        text.push_str(" Even the writer-preferring lock's writer gave up before its last write: its deadline was too short.");
    }
    text
}

/// The fix's sentence, from the writer-preferring run.
pub fn fix_text(fixed: &Outcome) -> String {
    let got = if fixed.writes == fixed.attempts {
        format!("Here the writer got all {} of its writes.", fixed.writes)
    } else {
        format!(
            "Here the writer got {} of its {} writes before the deadline.",
            fixed.writes, fixed.attempts
        )
    };
    format!(
        "Make the lock fair to the waiter: a writer-preferring readers-writers lock (new readers queue behind a waiting writer), or a FIFO \
         (ticket) lock. {got}"
    )
}

/// "reader-pref." or "writer-pref.", for bar labels.
fn short_name(lock: &str) -> &'static str {
    if lock.starts_with("reader") {
        "reader-pref."
    } else {
        "writer-pref."
    }
}

fn run(settings: &Settings) -> io::Result<Report> {
    let attempts = settings.trials_or(20) as u64;
    let deadline = settings.deadline();
    // The reader-preferring run may starve the writer for its whole interval: keep that
    // interval short and inside the experiment's deadline.
    let interval = Duration::from_millis(1_500).min(settings.timeout / 3);
    let outcomes = [
        stream(
            &ReaderPreferringLock::new(),
            N_READERS,
            attempts,
            deadline.min_after(interval),
        ),
        stream(
            &WriterPreferringLock::new(),
            N_READERS,
            attempts,
            deadline.min_after(settings.timeout / 2),
        ),
    ];
    let mut measured = Vec::new();
    let mut rate_bars = Vec::new();
    let mut write_bars = Vec::new();
    let mut figures = Vec::new();
    let mut hangs = Vec::new();
    for outcome in &outcomes {
        let waits_ms: Vec<f64> = outcome.write_waits.iter().map(|wait| ms(*wait)).collect();
        let spread = Spread::of(&waits_ms);
        let reads: Vec<String> = outcome.reads.iter().map(|&n| thousands(n)).collect();
        measured.push(format!(
            "{:<17} readers got {} reads; writer got {} of {} writes{}; writer wait median {:.2} ms, longest {:.1} ms",
            outcome.lock,
            reads.join(" / "),
            outcome.writes,
            outcome.attempts,
            if outcome.writer_gave_up { " (gave up, still waiting, when the interval ended)" } else { "" },
            spread.median,
            ms(outcome.longest_write_wait()),
        ));
        if outcome.writer_gave_up {
            hangs.push(format!(
                "{}: the writer waited {:.0} ms for its write {} and was still waiting when the interval ended (starved, not deadlocked: readers kept going)",
                outcome.lock,
                ms(outcome.longest_write_wait()),
                outcome.writes + 1
            ));
        }
        rate_bars.extend(outcome.reads.iter().enumerate().map(|(idx, &n)| {
            Bar::new(
                format!("{} reader {}", short_name(outcome.lock), idx + 1),
                n as f64 / outcome.elapsed.as_secs_f64().max(1e-9),
            )
        }));
        write_bars.push(Bar::new(
            format!("{} attempted", short_name(outcome.lock)),
            outcome.attempts as f64,
        ));
        write_bars.push(Bar::new(
            format!("{} got in", short_name(outcome.lock)),
            outcome.writes as f64,
        ));
        figures.push(json!({
            "lock": outcome.lock,
            "reads": outcome.reads,
            "writes": outcome.writes,
            "attempts": outcome.attempts,
            "writer_gave_up": outcome.writer_gave_up,
            "write_wait_ms": spread,
            "longest_write_wait_ms": ms(outcome.longest_write_wait()),
            "seconds": outcome.elapsed.as_secs_f64(),
        }));
    }
    let [starved, fixed] = &outcomes;
    let picture = Picture::new(
        "Readers per second (runs differ in length) and the writer's writes",
        "",
        vec![
            Panel::new("reads per second, each reader", rate_bars),
            Panel::new(
                format!(
                    "writes: longest wait {:.0} ms (reader-pref.), {:.1} ms (writer-pref.)",
                    ms(starved.longest_write_wait()),
                    ms(fixed.longest_write_wait())
                ),
                write_bars,
            ),
        ],
    );
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Starvation: the yellow car",
        claim: "Yellow must yield to green; with a continuous stream of green cars, the system as a whole makes progress but some individuals wait indefinitely.",
        did: format!(
            "{N_READERS} reader threads read back to back ({} µs each) while one writer tried {attempts} writes, on a reader-preferring lock \
             (writer gives up after {:.1} s) and on a writer-preferring one.",
            READ_HOLD.as_micros(),
            interval.as_secs_f64()
        ),
        measured,
        meaning: meaning(starved, fixed),
        fix: fix_text(fixed),
        hangs,
        figures: json!({ "readers": N_READERS, "read_hold_us": READ_HOLD.as_micros() as u64, "locks": figures }),
        svg: Some(picture.svg()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(writes: u64, gave_up: bool, longest_ms: u64, reads: u64, secs: u64) -> Outcome {
        Outcome {
            lock: "x",
            reads: vec![reads],
            writes,
            attempts: 20,
            write_waits: vec![Duration::from_millis(longest_ms), Duration::from_millis(1)],
            writer_gave_up: gave_up,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn starvation_is_claimed_only_when_the_writer_gave_up() {
        let text = meaning(
            &outcome(0, true, 1_500, 30_000, 2),
            &outcome(20, false, 2, 1_000, 1),
        );
        assert!(text.starts_with("On the reader-preferring lock the readers made 30,000 reads while the writer got 0 of 20 writes and gave up after waiting 1500 ms"), "{text}");
        assert!(text.contains("cut its longest wait to 2.0 ms (from 1500.0 ms), at the price of readers pausing while it goes (1000 reads/s on the writer-preferring lock against 15000 reads/s on the reader-preferring one)"), "{text}");
        let text = meaning(
            &outcome(20, false, 3, 30_000, 2),
            &outcome(20, false, 2, 1_000, 1),
        );
        assert!(text.starts_with("On the reader-preferring lock the writer got all 20 of its writes this time (longest wait 3.0 ms)"), "{text}");
        assert!(!text.contains("never let"), "{text}");
        // Readers as fast with the fix (at exactly 95%, and above): no price is claimed.
        let text = meaning(
            &outcome(0, true, 1_500, 20_000, 2),
            &outcome(20, false, 2, 9_500, 1),
        );
        assert!(
            text.contains(
                "and the readers' throughput stayed within 5% (9500 reads/s on the writer-preferring lock against 10000 reads/s on the reader-preferring one)"
            ),
            "{text}"
        );
        let text = meaning(
            &outcome(0, true, 1_500, 20_000, 2),
            &outcome(20, false, 2, 9_499, 1),
        );
        assert!(
            text.contains("at the price of readers pausing while it goes (9499 reads/s"),
            "{text}"
        );
    }

    /// The finding's figures: readers were faster on the writer-preferring lock.
    #[test]
    fn faster_readers_are_not_called_a_price() {
        let text = meaning(
            &outcome(0, true, 1_500, 16_934, 2),
            &outcome(20, false, 2, 13_844, 1),
        );
        assert!(text.contains("cut its longest wait to 2.0 ms (from 1500.0 ms), and the readers went faster too, not slower: this run shows no price for the fix (13844 reads/s on the writer-preferring lock against 8467 reads/s on the reader-preferring one)."), "{text}");
        assert!(!text.contains("at the price"), "{text}");
        // The boundary: up to 1/0.95 of the other rate is still "within 5%".
        let text = meaning(
            &outcome(0, true, 1_500, 19_000, 1),
            &outcome(20, false, 2, 20_000, 1),
        );
        assert!(text.contains("stayed within 5% (20000 reads/s"), "{text}");
        let text = meaning(
            &outcome(0, true, 1_500, 19_000, 1),
            &outcome(20, false, 2, 20_001, 1),
        );
        assert!(text.contains("the readers went faster too"), "{text}");
    }

    #[test]
    fn a_longer_wait_is_not_called_a_cut() {
        let text = meaning(
            &outcome(20, false, 3, 30_000, 2),
            &outcome(20, false, 3, 1_000, 1),
        );
        assert!(
            text.contains("did not shorten its longest wait this time (3.0 ms against 3.0 ms)"),
            "{text}"
        );
        let text = meaning(
            &outcome(20, false, 3, 30_000, 2),
            &outcome(19, true, 9, 1_000, 1),
        );
        assert!(
            text.contains("did not shorten its longest wait this time (9.0 ms against 3.0 ms)"),
            "{text}"
        );
        assert!(!text.contains("cut its longest wait"), "{text}");
        assert!(text.ends_with("its deadline was too short."), "{text}");
        assert!(fix_text(&outcome(19, true, 9, 1, 1))
            .ends_with("Here the writer got 19 of its 20 writes before the deadline."));
        assert!(fix_text(&outcome(20, false, 9, 1, 1))
            .ends_with("Here the writer got all 20 of its writes."));
    }

    #[test]
    fn writer_preferring_lock_lets_every_write_in() {
        let outcome = stream(
            &WriterPreferringLock::new(),
            N_READERS,
            10,
            Deadline::after(Duration::from_secs(60)),
        );
        assert_eq!(outcome.writes, 10);
        assert!(!outcome.writer_gave_up);
        assert_eq!(outcome.write_waits.len(), 10);
        assert!(
            outcome.reads.iter().all(|&n| n > 0),
            "every reader read before the writer came"
        );
    }

    /// Whether the writer starves is timing; the bookkeeping is not.
    #[test]
    fn reader_preferring_run_accounts_for_the_writer() {
        let outcome = stream(
            &ReaderPreferringLock::new(),
            2,
            5,
            Deadline::after(Duration::from_millis(300)),
        );
        assert_eq!(outcome.reads.len(), 2);
        assert!(outcome.writes <= 5);
        let expected_waits = outcome.writes as usize + usize::from(outcome.writer_gave_up);
        assert_eq!(outcome.write_waits.len(), expected_waits);
        assert_eq!(outcome.writer_gave_up, outcome.writes < 5);
    }
}
