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

/// The least span of the window a line's rate is computed over: a tick that comes less
/// than this after the window opened (or after the previous line) says nothing, as the
/// default --warmup and --interval (1 s each) put one at the window's first instant, where
/// a handful of messages over a fraction of a millisecond made a rate ten times off.
const MIN_SPAN: Duration = Duration::from_millis(50);

/// The progress line of `progress` at `now`, with the rate since the previous line
/// (`last`, updated), or `None` when under [`MIN_SPAN`] of the window has passed since.
fn line(
    unit: &str,
    last: &mut Option<(Instant, u64)>,
    progress: &Progress,
    now: Instant,
) -> Option<String> {
    match progress.phase {
        Phase::WarmUp => Some("bench: warm-up".to_string()),
        Phase::Measuring => {
            let (since, before) = match last {
                Some((at, n)) if progress.messages >= *n => (*at, *n),
                _ => (now - progress.measured, 0),
            };
            let dt = (now - since).as_secs_f64();
            if dt < MIN_SPAN.as_secs_f64() {
                return None;
            }
            let rate = (progress.messages - before) as f64 / dt;
            *last = Some((now, progress.messages));
            Some(format!(
                "bench: {:.1} s measured, {rate:.0} {unit}/s, {} errors",
                progress.measured.as_secs_f64(),
                progress.errors
            ))
        }
    }
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
                if let Some(line) = line(unit, last, progress, now) {
                    let mut stderr = io::stderr().lock();
                    let _ = writeln!(stderr, "{line}");
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(measured_ms: u64, messages: u64) -> Progress {
        Progress {
            phase: Phase::Measuring,
            measured: Duration::from_millis(measured_ms),
            messages,
            errors: 0,
            interval_latency: None,
        }
    }

    /// A tick at the window's first instant (the default warm-up and interval put one
    /// there) printed "0.0 s measured, 4000 messages/s" from 2 messages over a clamped
    /// millisecond; it now says nothing, and the next line's rate is over its own span.
    #[test]
    fn a_rate_is_computed_over_the_span_it_names() {
        let start = Instant::now();
        let mut last = None;
        assert_eq!(line("messages", &mut last, &at(0, 2), start), None);
        assert_eq!(last, None);
        let second = start + Duration::from_secs(1);
        assert_eq!(
            line("messages", &mut last, &at(1000, 40_000), second).as_deref(),
            Some("bench: 1.0 s measured, 40000 messages/s, 0 errors")
        );
        // 30,000 more over the next half second: the rate since the previous line (the
        // window's so far would be 46,667).
        let third = second + Duration::from_millis(500);
        assert_eq!(
            line("messages", &mut last, &at(1500, 70_000), third).as_deref(),
            Some("bench: 1.5 s measured, 60000 messages/s, 0 errors")
        );
        // A total below the previous one (never published so) counts from the window's
        // opening rather than underflowing.
        let fourth = third + Duration::from_millis(500);
        assert_eq!(
            line("messages", &mut last, &at(2000, 10), fourth).as_deref(),
            Some("bench: 2.0 s measured, 5 messages/s, 0 errors")
        );
        // MIN_SPAN itself is span enough.
        let fifth = fourth + MIN_SPAN;
        assert_eq!(
            line("messages", &mut last, &at(2050, 510), fifth).as_deref(),
            Some("bench: 2.0 s measured, 10000 messages/s, 0 errors")
        );
        let mut warm = at(0, 0);
        warm.phase = Phase::WarmUp;
        assert_eq!(
            line("messages", &mut last, &warm, third).as_deref(),
            Some("bench: warm-up")
        );
    }
}
