//! `thread-leak`: the lecture's "a joinable thread must be reaped by another thread, or run
//! detached, to avoid a memory leak". Batches of short-lived threads are started in a fresh
//! process; after each batch, once every thread has returned, the process's thread count,
//! virtual size (VSZ) and resident size (RSS) are read from /proc/self/status.
//!
//! Trade-off: a joinable thread lets someone collect its result and know it ended, and
//! costs its stack until someone does; a detached thread frees itself and can be neither
//! waited for nor asked how it went.
//!
//! About Rust: `std::thread::JoinHandle` detaches the thread when the handle is dropped,
//! so forgetting to join cannot leak in safe Rust (and `std::thread::scope` joins for
//! you). The leak needs raw pthreads, through [`echolab_sys::pthread`]. Each variant runs
//! in its own child process, so what one leaks cannot pollute the next one's figures.

use std::io;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use echolab_sys::pthread;

use crate::child::{config_str, config_u64};
use crate::experiment::{thousands, Experiment, Report, Settings};
use crate::plot::{Panel, Picture, Series};
use crate::watchdog::{child_args, WatchedChild};

pub const EXPERIMENT: Experiment = Experiment {
    name: "thread-leak",
    summary: "joinable threads never joined keep their stacks (VSZ grows); detached or joined do not (--trials: batches)",
    max_trials: 64,
    run,
};

/// Threads started per batch.
pub const PER_BATCH: u64 = 50;

/// The ways a thread's life can end, in the order they are run.
pub const VARIANTS: [(&str, &str); 4] = [
    ("never-joined", "pthread_create, never joined (C's leak)"),
    ("detached", "pthread_create + pthread_detach"),
    ("joined", "pthread_create + pthread_join"),
    ("rust-dropped", "std::thread::spawn, JoinHandle dropped"),
];

/// What /proc/self/status says after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Threads started so far.
    pub started: u64,
    /// Threads the process has (the kernel's count: tasks still alive).
    pub threads: u64,
    /// Virtual size, KiB.
    pub vsz_kib: u64,
    /// Resident size, KiB.
    pub rss_kib: u64,
}

/// Reads `Threads`, `VmSize` and `VmRSS` from a /proc/PID/status text.
pub fn parse_status(status: &str, started: u64) -> Option<Sample> {
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(Sample {
        started,
        threads: field("Threads:")?,
        vsz_kib: field("VmSize:")?,
        rss_kib: field("VmRSS:")?,
    })
}

fn sample_self(started: u64) -> io::Result<Sample> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_status(&status, started)
        .ok_or_else(|| io::Error::other("no Threads/VmSize/VmRSS in /proc/self/status"))
}

/// The child process: `batches` batches of [`PER_BATCH`] threads of one variant, a sample
/// before the first and after each.
pub fn child_body(config: &Value) -> io::Result<Value> {
    let batches = config_u64(config, "batches", 5);
    let variant = config_str(config, "variant", "joined").to_string();
    let mut samples = vec![sample_self(0)?];
    let mut started = 0;
    for _ in 0..batches {
        for _ in 0..PER_BATCH {
            match variant.as_str() {
                // Dropping a RawThread does nothing: the C program that never joins.
                "never-joined" => drop(pthread::spawn_returning()?),
                "detached" => pthread::spawn_returning()?.detach()?,
                "joined" => pthread::spawn_returning()?.join()?,
                "rust-dropped" => drop(std::thread::spawn(|| ())),
                other => return Err(io::Error::other(format!("unknown variant {other:?}"))),
            }
            started += 1;
        }
        // Every thread returns at once; wait (bounded) until the kernel has seen them go,
        // so that the sample shows what stays after the threads are gone.
        let give_up = Instant::now() + Duration::from_secs(2);
        let mut sample = sample_self(started)?;
        while sample.threads > 1 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(1));
            sample = sample_self(started)?;
        }
        samples.push(sample);
    }
    // The CPUs this process may run on, as the kernel says: `--cpus` reaches children.
    let status = std::fs::read_to_string("/proc/self/status")?;
    let cpus = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    Ok(json!({ "variant": variant, "samples": samples, "cpus_allowed": cpus }))
}

/// One variant's growth from its first sample to its last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    pub threads_started: u64,
    /// Threads alive at the end (the kernel's count, main included).
    pub threads_left: u64,
    pub vsz_kib: i64,
    pub rss_kib: i64,
    /// See [`Growth::steady_per_thread`].
    pub steady_kib_per_thread: f64,
    /// Batches run (samples after the first).
    pub batches: u64,
    /// Bit `i` set when batch `i + 1` grew VSZ by more than [`GREW_KIB_PER_THREAD`] per
    /// thread it started (at most 64 batches: `max_trials`).
    pub grew: u64,
}

/// A batch "grew" VSZ when it kept more than this per thread it started: below a
/// stack's worth by far, above malloc's bookkeeping (the same floor as the leak verdict).
pub const GREW_KIB_PER_THREAD: f64 = 16.0;

impl Growth {
    pub fn of(samples: &[Sample]) -> Growth {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return Growth {
                threads_started: 0,
                threads_left: 0,
                vsz_kib: 0,
                rss_kib: 0,
                steady_kib_per_thread: 0.0,
                batches: 0,
                grew: 0,
            };
        };
        Growth {
            threads_started: last.started,
            threads_left: last.threads,
            vsz_kib: last.vsz_kib as i64 - first.vsz_kib as i64,
            rss_kib: last.rss_kib as i64 - first.rss_kib as i64,
            steady_kib_per_thread: Growth::steady_per_thread(samples),
            batches: (samples.len() - 1) as u64,
            grew: samples
                .windows(2)
                .take(64)
                .enumerate()
                .filter(|(_, pair)| {
                    let threads = pair[1].started.saturating_sub(pair[0].started).max(1);
                    pair[1].vsz_kib as f64 - pair[0].vsz_kib as f64
                        > GREW_KIB_PER_THREAD * threads as f64
                })
                .fold(0, |mask, (i, _)| mask | 1 << i),
        }
    }

    /// The batches (from 1) that grew VSZ.
    pub fn grew_in(&self) -> Vec<u64> {
        (0..self.batches.min(64))
            .filter(|i| self.grew & (1 << i) != 0)
            .map(|i| i + 1)
            .collect()
    }

    /// Batches at the end in which VSZ did not grow (all of them when none grew).
    pub fn flat_tail(&self) -> u64 {
        self.batches - self.grew_in().last().copied().unwrap_or(0)
    }

    /// How VSZ grew batch by batch: flat, grew then flat, or still growing at the end.
    pub fn pattern(&self) -> String {
        let grew = self.grew_in();
        let list = grew
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        match grew.last() {
            None => format!("was flat in all {} batch(es)", self.batches),
            Some(&last) if last < self.batches => format!(
                "grew in batch(es) {list} of {}, then flat for the last {}",
                self.batches,
                self.batches - last
            ),
            Some(_) => format!(
                "grew in batch(es) {list} of {}, the last one included",
                self.batches
            ),
        }
    }

    /// Address space kept per thread started, KiB.
    pub fn vsz_per_thread(&self) -> f64 {
        self.vsz_kib as f64 / self.threads_started.max(1) as f64
    }

    /// Address space kept per thread from the first batch on, KiB: what keeps growing
    /// (a leak) and not what the first batch sets up once (glibc's cache of a few freed
    /// stacks). With a single batch, from the start.
    pub fn steady_per_thread(samples: &[Sample]) -> f64 {
        let from = if samples.len() > 2 { 1 } else { 0 };
        match (samples.get(from), samples.last()) {
            (Some(first), Some(last)) if last.started > first.started => {
                (last.vsz_kib as f64 - first.vsz_kib as f64) / (last.started - first.started) as f64
            }
            _ => 0.0,
        }
    }
}

/// What the four variants' growths mean, in [`VARIANTS`] order.
pub fn meaning(growths: &[Growth; 4]) -> String {
    let [leak, detached, joined, rust] = growths;
    let others = [detached, joined, rust]
        .iter()
        .map(|growth| growth.steady_kib_per_thread)
        .fold(0.0, f64::max);
    // A leak is a stack's worth per thread, batch after batch: far above what the
    // others keep growing by (nothing, once glibc's stack cache is filled).
    let leaked = leak.steady_kib_per_thread > 4.0 * others.max(16.0);
    let mut text = if leaked {
        let when = if leak.grew_in().len() as u64 == leak.batches {
            format!("in every one of the {} batches", leak.batches)
        } else {
            format!("with a VSZ that {}", leak.pattern())
        };
        let others_text = if [detached, joined, rust].iter().all(|g| g.flat_tail() > 0) {
            format!(
                "Detached, joined and Rust-dropped threads' address space stopped growing: flat for the last {}, {} and {} of {} batches \
                 (glibc reuses their stacks).",
                detached.flat_tail(),
                joined.flat_tail(),
                rust.flat_tail(),
                rust.batches
            )
        } else {
            let still: Vec<&str> = [
                (detached, "detached"),
                (joined, "joined"),
                (rust, "Rust-dropped"),
            ]
            .iter()
            .filter(|(g, _)| g.flat_tail() == 0)
            .map(|(_, name)| *name)
            .collect();
            format!(
                "Of the others, the {} threads' address space still grew in the last batch (at most {:.1} KiB per thread after batch 1): \
                 more batches would tell whether it levels off.",
                still.join(" and "),
                others
            )
        };
        format!(
            "Each joinable thread that was never joined kept {:.0} KiB of address space, {when} ({} MiB more after {} threads), \
             and the process grew {} KiB resident, although the thread count was back to {}: the kernel task is gone, its stack and \
             descriptor are not, until a join that never comes. {others_text}",
            leak.steady_kib_per_thread,
            thousands((leak.vsz_kib.max(0) as u64) / 1024),
            leak.threads_started,
            leak.rss_kib,
            leak.threads_left,
        )
    } else {
        format!(
            "No leak was measured: never-joined threads grew the address space by {:.1} KiB per thread, the others by at most {:.1} KiB. \
             Either this libc frees unjoined stacks or the samples missed them.",
            leak.steady_kib_per_thread, others
        )
    };
    let rust_growth = match rust.grew_in().last() {
        None => format!(
            "its {} threads left VSZ flat in all {} batch(es)",
            rust.threads_started, rust.batches
        ),
        Some(&last) if last < rust.batches => format!(
            "its {} threads' VSZ {}: growth that stopped, {} KiB in all, not a cost per thread",
            rust.threads_started,
            rust.pattern(),
            rust.vsz_kib
        ),
        Some(_) => format!(
            "yet its {} threads' VSZ {}, {:.1} KiB per thread after batch 1: more batches would tell whether that levels off",
            rust.threads_started,
            rust.pattern(),
            rust.steady_kib_per_thread
        ),
    };
    text.push_str(&format!(
        " Rust hides this leak: dropping a JoinHandle detaches the thread ({rust_growth}), so only raw pthreads can forget one."
    ));
    text
}

fn run(settings: &Settings) -> io::Result<Report> {
    let batches = settings.trials_or(5) as u64;
    let deadline = settings.deadline();
    let mut measured = Vec::new();
    let mut vsz_lines = Vec::new();
    let mut rss_lines = Vec::new();
    let mut growths = Vec::new();
    let mut figures = Vec::new();
    for (variant, label) in VARIANTS {
        let child = WatchedChild::spawn_with_env(
            &settings.exe,
            &child_args(
                "thread-leak",
                &json!({ "variant": variant, "batches": batches }),
            ),
            &[("MALLOC_ARENA_MAX", "1")],
        )?;
        let finished = child.wait(deadline.min_after(settings.timeout / 4), None)?;
        let result = finished.expect_result("thread-leak")?;
        let samples: Vec<Sample> =
            serde_json::from_value(result["samples"].clone()).map_err(io::Error::other)?;
        let growth = Growth::of(&samples);
        let after: Vec<String> = samples
            .iter()
            .skip(1)
            .map(|s| format!("{} MiB", thousands(s.vsz_kib / 1024)))
            .collect();
        measured.push(format!(
            "{label:<41} VSZ {} -> {} ({}; +{:.0} KiB per thread after batch 1), RSS {:+} KiB, threads left {}",
            samples
                .first()
                .map_or("?".to_string(), |s| format!("{} MiB", thousands(s.vsz_kib / 1024))),
            after.join(", "),
            growth.pattern(),
            growth.steady_kib_per_thread,
            growth.rss_kib,
            growth.threads_left
        ));
        let first = samples.first().copied();
        let above = |value: fn(&Sample) -> u64, scale: f64| Series {
            label: variant.to_string(),
            points: samples
                .iter()
                .map(|s| {
                    let base = first.as_ref().map_or(0, value);
                    (s.started as f64, (value(s) as f64 - base as f64) / scale)
                })
                .collect(),
        };
        vsz_lines.push(above(|s| s.vsz_kib, 1024.0));
        rss_lines.push(above(|s| s.rss_kib, 1.0));
        figures.push(json!({ "variant": variant, "samples": samples, "cpus_allowed": result["cpus_allowed"] }));
        growths.push(growth);
    }
    let growths: [Growth; 4] = growths
        .try_into()
        .map_err(|_| io::Error::other("thread-leak: a variant is missing"))?;
    let mut picture = Picture::new(
        "Memory kept after every thread has returned, above the process's start",
        "",
        vec![
            Panel::lines("virtual size (VSZ), MiB", vsz_lines),
            Panel::lines("resident size (RSS), KiB", rss_lines),
        ],
    );
    picture.x_label = "threads started (all returned)".to_string();
    Ok(Report {
        experiment: EXPERIMENT.name,
        title: "Joinable threads that are never joined leak",
        claim: "A joinable thread can be reaped and killed by other threads and must be reaped (pthread_join) to free its memory resources; a detached thread's are freed automatically when it terminates.",
        did: format!(
            "In a fresh process per variant: {batches} batch(es) of {PER_BATCH} threads that return at once; after each batch, once the kernel's thread \
             count was back down, read Threads, VmSize and VmRSS from /proc/self/status. Variants: {}. The children run with MALLOC_ARENA_MAX=1: \
             otherwise malloc gives threads arenas of their own (64 MiB of address space each, up to 8 per CPU), which grows VSZ without any leak.",
            VARIANTS.map(|(_, label)| label).join("; ")
        ),
        measured,
        meaning: meaning(&growths),
        fix: "Join every joinable thread (pthread_join), or detach it (pthread_detach(pthread_self()) as the lecture's echo server does). In Rust, \
              join the JoinHandle when the result matters, or use std::thread::scope, which joins every thread it started before it returns."
            .to_string(),
        hangs: Vec::new(),
        figures: json!({ "per_batch": PER_BATCH, "variants": figures }),
        svg: Some(picture.svg()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tx\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status, 7),
            Some(Sample {
                started: 7,
                threads: 3,
                vsz_kib: 123_456,
                rss_kib: 2_048
            })
        );
        assert_eq!(parse_status("Threads:\t1\n", 0), None);
    }

    fn growth(started: u64, steady: f64) -> Growth {
        Growth {
            threads_started: started,
            threads_left: 1,
            vsz_kib: (steady * started as f64) as i64,
            rss_kib: 40,
            steady_kib_per_thread: steady,
            batches: 2,
            grew: 0,
        }
    }

    fn sample(started: u64, vsz_kib: u64, rss_kib: u64) -> Sample {
        Sample {
            started,
            threads: 1,
            vsz_kib,
            rss_kib,
        }
    }

    #[test]
    fn growth_is_last_minus_first_and_steady_from_the_first_batch() {
        let g = Growth::of(&[
            sample(0, 1_000, 100),
            sample(50, 2_000, 90),
            sample(100, 9_192, 300),
        ]);
        assert_eq!(
            (g.threads_started, g.threads_left, g.vsz_kib, g.rss_kib),
            (100, 1, 8_192, 200)
        );
        assert_eq!(g.vsz_per_thread(), 81.92);
        assert_eq!(g.steady_kib_per_thread, (9_192.0 - 2_000.0) / 50.0);
        // One batch: from the start.
        let g = Growth::of(&[sample(0, 1_000, 100), sample(50, 2_000, 90)]);
        assert_eq!(g.steady_kib_per_thread, 20.0);
        assert_eq!(Growth::of(&[]).vsz_per_thread(), 0.0);
        assert_eq!(Growth::of(&[sample(0, 5, 5)]).steady_kib_per_thread, 0.0);
    }

    /// The report run's std::thread::spawn figures: 7 -> 17, 45, 45, 45, 45 MiB.
    #[test]
    fn a_single_step_is_described_as_one() {
        let mib = |m: u64| m * 1024;
        let samples: Vec<Sample> = [7, 17, 45, 45, 45, 45]
            .iter()
            .enumerate()
            .map(|(i, &m)| sample(i as u64 * PER_BATCH, mib(m), 100))
            .collect();
        let rust = Growth::of(&samples);
        assert_eq!(rust.grew_in(), vec![1, 2]);
        assert_eq!(
            rust.pattern(),
            "grew in batch(es) 1, 2 of 5, then flat for the last 3"
        );
        let text = meaning(&[
            growth(100, 8_192.0),
            growth(100, 0.0),
            growth(100, 0.0),
            rust,
        ]);
        assert!(text.ends_with("(its 250 threads' VSZ grew in batch(es) 1, 2 of 5, then flat for the last 3: growth that stopped, 38912 KiB in all, not a cost per thread), so only raw pthreads can forget one."), "{text}");
        assert!(!text.contains("KiB each"), "{text}");
        // Still growing in the last batch: said so, with the rate.
        let samples: Vec<Sample> = [7, 17, 17, 27]
            .iter()
            .enumerate()
            .map(|(i, &m)| sample(i as u64 * PER_BATCH, mib(m), 100))
            .collect();
        let still = Growth::of(&samples);
        assert_eq!(
            still.pattern(),
            "grew in batch(es) 1, 3 of 3, the last one included"
        );
        let text = meaning(&[
            growth(100, 8_192.0),
            growth(100, 0.0),
            growth(100, 0.0),
            still,
        ]);
        assert!(text.contains("(yet its 150 threads' VSZ grew in batch(es) 1, 3 of 3, the last one included, 102.4 KiB per thread after batch 1: more batches would tell whether that levels off)"), "{text}");
        // The floor: 16 KiB per thread of the batch is flat, one more KiB grows.
        let edge = Growth::of(&[
            sample(0, 1_000, 1),
            sample(50, 1_800, 1),
            sample(100, 2_601, 1),
        ]);
        assert_eq!(edge.grew_in(), vec![2]);
        assert_eq!(
            Growth::of(&[sample(0, 1, 1)]).pattern(),
            "was flat in all 0 batch(es)"
        );
    }

    #[test]
    fn a_leak_is_named_with_its_size() {
        let text = meaning(&[
            growth(100, 8_192.0),
            growth(100, 0.0),
            growth(100, 81.9),
            growth(100, 0.0),
        ]);
        assert!(text.starts_with("Each joinable thread that was never joined kept 8192 KiB of address space, with a VSZ that was flat in all 2 batch(es) (800 MiB more after 100 threads), and the process grew 40 KiB resident, although the thread count was back to 1"), "{text}");
        assert!(
            text.contains("Detached, joined and Rust-dropped threads' address space stopped growing: flat for the last 2, 2 and 2 of 2 batches (glibc reuses their stacks)."),
            "{text}"
        );
        // The leak grew in every batch; the joined threads still grew in the last one.
        let every = Growth {
            grew: 0b11,
            ..growth(100, 8_192.0)
        };
        let joined = Growth {
            grew: 0b10,
            ..growth(100, 81.9)
        };
        let text = meaning(&[every, growth(100, 0.0), joined, growth(100, 0.0)]);
        assert!(text.starts_with("Each joinable thread that was never joined kept 8192 KiB of address space, in every one of the 2 batches (800 MiB"), "{text}");
        assert!(text.contains("Of the others, the joined threads' address space still grew in the last batch (at most 81.9 KiB per thread after batch 1): more batches would tell whether it levels off."), "{text}");
        assert!(!text.contains("stopped growing"), "{text}");
        assert!(
            text.ends_with(
                "(its 100 threads left VSZ flat in all 2 batch(es)), so only raw pthreads can forget one."
            ),
            "{text}"
        );
    }

    #[test]
    fn no_leak_is_not_called_one() {
        let text = meaning(&[
            growth(100, 60.0),
            growth(100, 0.0),
            growth(100, 81.9),
            growth(100, 0.0),
        ]);
        assert!(text.starts_with("No leak was measured: never-joined threads grew the address space by 60.0 KiB per thread, the others by at most 81.9 KiB"), "{text}");
        // The floor: a few KiB each is noise, not a leak.
        let text = meaning(&[
            growth(100, 60.0),
            growth(100, 0.0),
            growth(100, 0.0),
            growth(100, 0.0),
        ]);
        assert!(text.starts_with("No leak was measured"), "{text}");
        // The boundary: exactly four times the 16 KiB floor is not yet a leak.
        let text = meaning(&[
            growth(100, 64.0),
            growth(100, 0.0),
            growth(100, 0.0),
            growth(100, 0.0),
        ]);
        assert!(text.starts_with("No leak was measured"), "{text}");
        let text = meaning(&[
            growth(100, 65.0),
            growth(100, 0.0),
            growth(100, 0.0),
            growth(100, 0.0),
        ]);
        assert!(text.starts_with("Each joinable thread"), "{text}");
    }
}
