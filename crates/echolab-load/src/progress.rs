//! Progress while a run goes: an indicatif bar when stderr is a terminal, otherwise a
//! plain line every interval (for logs and CI), or nothing.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{Phase, Progress};

/// Where a bench run's progress goes.
#[derive(Debug)]
pub enum ProgressDisplay {
    Bar(ProgressBar),
    Lines {
        /// What a line counts ("messages" or "connections").
        unit: &'static str,
        /// The previous tick, for the rate since then.
        last: Option<(Instant, u64)>,
    },
    Silent,
}

impl ProgressDisplay {
    /// A bar on a terminal, lines every `interval` otherwise (none when it is zero).
    /// `duration` is the measured window, the bar's full length. Returns the display and
    /// how often the engine should tick it.
    pub fn for_stderr(
        duration: Duration,
        interval: Duration,
        unit: &'static str,
    ) -> (ProgressDisplay, Duration) {
        if io::stderr().is_terminal() {
            let bar = ProgressBar::new(duration.as_millis() as u64);
            let style = ProgressStyle::with_template("{spinner} [{bar:40}] {msg}")
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message("connecting");
            bar.enable_steady_tick(Duration::from_millis(100));
            (ProgressDisplay::Bar(bar), Duration::from_millis(200))
        } else if interval.is_zero() {
            (ProgressDisplay::Silent, Duration::from_secs(1))
        } else {
            (ProgressDisplay::Lines { unit, last: None }, interval)
        }
    }

    pub fn update(&mut self, progress: &Progress) {
        let now = Instant::now();
        match self {
            ProgressDisplay::Bar(bar) => {
                bar.set_position(progress.measured.as_millis() as u64);
                bar.set_message(match progress.phase {
                    Phase::WarmUp => "warm-up".to_string(),
                    Phase::Measuring => {
                        let rate =
                            progress.messages as f64 / progress.measured.as_secs_f64().max(1e-3);
                        format!("{rate:.0}/s, {} errors", progress.errors)
                    }
                });
            }
            ProgressDisplay::Lines { unit, last } => {
                let line = match progress.phase {
                    Phase::WarmUp => "bench: warm-up".to_string(),
                    Phase::Measuring => {
                        let (since, before) = match last {
                            Some((at, n)) if progress.messages >= *n => (*at, *n),
                            _ => (now - progress.measured, 0),
                        };
                        let dt = (now - since).as_secs_f64().max(1e-3);
                        let rate = (progress.messages - before) as f64 / dt;
                        *last = Some((now, progress.messages));
                        format!(
                            "bench: {:.1} s measured, {rate:.0} {unit}/s, {} errors",
                            progress.measured.as_secs_f64(),
                            progress.errors
                        )
                    }
                };
                let mut stderr = io::stderr().lock();
                let _ = writeln!(stderr, "{line}");
            }
            ProgressDisplay::Silent => {}
        }
    }

    /// Removes the bar (the summary follows).
    pub fn finish(&self) {
        if let ProgressDisplay::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
