//! `bench --max-p99`, `--min-rate` and `--max-errors`: pass/fail criteria for CI, judged on
//! the run's own figures after it ends, with their own exit status ([`EXIT_THRESHOLD`]),
//! distinct from a run that failed (1) or saw corrupt bytes (3).
//!
//! `--max-errors N` takes over the judgement of errors: without it any error (connect,
//! reset, eof, timeout, extra bytes, starved) makes the status 1; with it, up to N errors
//! and the messages lost with their failed connections are tolerated, and more than N
//! break the threshold. Corrupt bytes are never tolerated (3).

use std::fmt;
use std::time::Duration;

use echolab_cli::units::format_duration;
use serde_json::{json, Value};

use crate::report::BenchReport;

/// The exit status of a run that broke a threshold: 99, as k6 uses for its thresholds, so
/// that a CI step can tell "slower than promised" from "the run failed" (1).
pub const EXIT_THRESHOLD: u8 = 99;

/// The thresholds given on the command line (none by default).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// `--max-p99`: the window's 99th percentile latency must be at most this.
    pub max_p99: Option<Duration>,
    /// `--min-rate`: completed messages (churn: connections) per second, at least this.
    pub min_rate: Option<f64>,
    /// `--max-errors`: errors of every kind but corrupt bytes, at most this.
    pub max_errors: Option<u64>,
}

/// A threshold the run did not meet, with the figure that broke it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Broken {
    /// The p99 latency, in microseconds, and the limit.
    MaxP99 { p99_us: f64, limit: Duration },
    /// The rate, per second, and the limit.
    MinRate { rate: f64, limit: f64 },
    /// The errors and the limit.
    MaxErrors { errors: u64, limit: u64 },
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Broken::MaxP99 { p99_us, limit } => write!(
                f,
                "p99 {:.3} ms > --max-p99 {}",
                p99_us / 1e3,
                format_duration(limit)
            ),
            Broken::MinRate { rate, limit } => {
                write!(f, "rate {rate:.1}/s < --min-rate {limit}")
            }
            Broken::MaxErrors { errors, limit } => {
                write!(f, "{errors} errors > --max-errors {limit}")
            }
        }
    }
}

impl Broken {
    /// The flag's name in JSON (`max_p99`, `min_rate`, `max_errors`).
    pub fn name(&self) -> &'static str {
        match self {
            Broken::MaxP99 { .. } => "max_p99",
            Broken::MinRate { .. } => "min_rate",
            Broken::MaxErrors { .. } => "max_errors",
        }
    }
}

/// Errors the thresholds count: every kind but corrupt bytes (those always fail, 3).
fn counted_errors(report: &BenchReport) -> u64 {
    report.errors.total() - report.errors.mismatch
}

impl Thresholds {
    /// Whether any threshold was given.
    pub fn any(&self) -> bool {
        self.max_p99.is_some() || self.min_rate.is_some() || self.max_errors.is_some()
    }

    /// The thresholds `report` broke, in the order of the flags.
    pub fn broken(&self, report: &BenchReport) -> Vec<Broken> {
        let mut broken = Vec::new();
        if let Some(limit) = self.max_p99 {
            let p99_us = report.latency.p99_us;
            if p99_us * 1e3 > limit.as_nanos() as f64 {
                broken.push(Broken::MaxP99 { p99_us, limit });
            }
        }
        if let Some(limit) = self.min_rate {
            let rate = report.messages_per_sec();
            if rate < limit {
                broken.push(Broken::MinRate { rate, limit });
            }
        }
        if let Some(limit) = self.max_errors {
            let errors = counted_errors(report);
            if errors > limit {
                broken.push(Broken::MaxErrors { errors, limit });
            }
        }
        broken
    }

    /// The exit status of `echolab bench`: 3 corrupt bytes; 1 the run failed (errors,
    /// unless `--max-errors` judges them; incomplete messages; a server gone; nothing
    /// completed); 130 interrupted; 99 a threshold broken; 0 otherwise. Without
    /// thresholds, [`BenchReport::exit_code`].
    pub fn exit_code(&self, report: &BenchReport) -> u8 {
        if report.errors.mismatch > 0 {
            return 3;
        }
        let (errors, incomplete) = match self.max_errors {
            None => (counted_errors(report), report.unfinished.total()),
            // Judged by the threshold: the errors, and the messages lost with them.
            Some(_) => (0, report.unfinished.total() - report.unfinished.lost),
        };
        if errors > 0 || incomplete > 0 || report.server_gone || report.nothing_completed() {
            1
        } else if report.interrupted {
            130
        } else if !self.broken(report).is_empty() {
            EXIT_THRESHOLD
        } else {
            0
        }
    }

    /// The `thresholds` object of the JSON document: each given threshold with its limit,
    /// the run's figure and whether it passed.
    pub fn to_json(&self, report: &BenchReport) -> Value {
        let broken = self.broken(report);
        let failed = |name: &str| broken.iter().any(|b| b.name() == name);
        let mut doc = serde_json::Map::new();
        if let Some(limit) = self.max_p99 {
            doc.insert(
                "max_p99".into(),
                json!({ "limit_us": limit.as_secs_f64() * 1e6, "p99_us": report.latency.p99_us, "passed": !failed("max_p99") }),
            );
        }
        if let Some(limit) = self.min_rate {
            doc.insert(
                "min_rate".into(),
                json!({ "limit_per_sec": limit, "rate_per_sec": report.messages_per_sec(), "passed": !failed("min_rate") }),
            );
        }
        if let Some(limit) = self.max_errors {
            doc.insert(
                "max_errors".into(),
                json!({ "limit": limit, "errors": counted_errors(report), "passed": !failed("max_errors") }),
            );
        }
        Value::Object(doc)
    }

    /// The one line that names every broken threshold with its figure, or `None`.
    pub fn verdict(&self, report: &BenchReport) -> Option<String> {
        let broken = self.broken(report);
        (!broken.is_empty()).then(|| {
            let said: Vec<String> = broken.iter().map(Broken::to_string).collect();
            format!("threshold broken: {}", said.join("; "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean run of 10 s, 50,000 messages (5,000/s), p99 2 ms.
    fn clean() -> BenchReport {
        let mut report = BenchReport::empty(4);
        report.messages = 50_000;
        report.seconds = 10.0;
        report.latency.p99_us = 2_000.0;
        report
    }

    #[test]
    fn without_thresholds_the_status_is_the_report_s() {
        let none = Thresholds::default();
        let mut report = clean();
        assert_eq!(none.exit_code(&report), report.exit_code());
        assert_eq!(none.exit_code(&report), 0);
        report.errors.reset = 1;
        assert_eq!(none.exit_code(&report), report.exit_code());
        assert_eq!(none.exit_code(&report), 1);
        report.errors.mismatch = 1;
        assert_eq!(none.exit_code(&report), 3);
        let mut report = clean();
        report.unfinished.waiting = 1;
        assert_eq!(none.exit_code(&report), 1);
        let mut report = clean();
        report.interrupted = true;
        assert_eq!(none.exit_code(&report), report.exit_code());
        assert_eq!(none.exit_code(&report), 130);
        let mut report = clean();
        report.server_gone = true;
        assert_eq!(none.exit_code(&report), 1);
        let mut report = clean();
        report.messages = 0;
        assert_eq!(none.exit_code(&report), 1);
        assert!(!none.any());
        assert!(none.verdict(&clean()).is_none());
    }

    #[test]
    fn any_one_threshold_is_a_threshold() {
        let p99 = Thresholds {
            max_p99: Some(Duration::from_millis(1)),
            ..Thresholds::default()
        };
        let rate = Thresholds {
            min_rate: Some(1.0),
            ..Thresholds::default()
        };
        let errors = Thresholds {
            max_errors: Some(0),
            ..Thresholds::default()
        };
        assert!(p99.any() && rate.any() && errors.any());
    }

    #[test]
    fn p99_is_judged_at_its_limit() {
        let at = Thresholds {
            max_p99: Some(Duration::from_millis(2)),
            ..Thresholds::default()
        };
        assert_eq!(at.exit_code(&clean()), 0, "2 ms is at most 2 ms");
        let below = Thresholds {
            max_p99: Some(Duration::from_micros(1_999)),
            ..Thresholds::default()
        };
        assert_eq!(below.exit_code(&clean()), EXIT_THRESHOLD);
        assert_eq!(
            below.verdict(&clean()).unwrap(),
            "threshold broken: p99 2.000 ms > --max-p99 1999us"
        );
        assert_eq!(below.to_json(&clean())["max_p99"]["passed"], json!(false));
        assert_eq!(at.to_json(&clean())["max_p99"]["passed"], json!(true));
        assert_eq!(at.to_json(&clean())["max_p99"]["limit_us"], json!(2000.0));
    }

    #[test]
    fn rate_is_judged_at_its_limit() {
        let at = Thresholds {
            min_rate: Some(5_000.0),
            ..Thresholds::default()
        };
        assert_eq!(at.exit_code(&clean()), 0);
        let above = Thresholds {
            min_rate: Some(5_000.5),
            ..Thresholds::default()
        };
        assert_eq!(above.exit_code(&clean()), EXIT_THRESHOLD);
        assert_eq!(
            above.verdict(&clean()).unwrap(),
            "threshold broken: rate 5000.0/s < --min-rate 5000.5"
        );
    }

    #[test]
    fn max_errors_tolerates_up_to_its_limit_and_their_lost_messages() {
        let two = Thresholds {
            max_errors: Some(2),
            ..Thresholds::default()
        };
        let mut report = clean();
        report.errors.reset = 2;
        report.unfinished.lost = 3;
        assert_eq!(two.exit_code(&report), 0, "2 errors are at most 2");
        report.errors.timeout = 1;
        assert_eq!(two.exit_code(&report), EXIT_THRESHOLD);
        assert_eq!(
            two.verdict(&report).unwrap(),
            "threshold broken: 3 errors > --max-errors 2"
        );
        // Still a failed run: messages waiting at the end, corrupt bytes.
        report.unfinished.waiting = 1;
        assert_eq!(two.exit_code(&report), 1);
        report.errors.mismatch = 1;
        assert_eq!(two.exit_code(&report), 3);
        // Corrupt bytes are not counted among the tolerated errors.
        let mut report = clean();
        report.errors.mismatch = 5;
        assert_eq!(counted_errors(&report), 0);
    }

    #[test]
    fn every_broken_threshold_is_named_in_one_line() {
        let all = Thresholds {
            max_p99: Some(Duration::from_millis(1)),
            min_rate: Some(1e6),
            max_errors: Some(0),
        };
        let mut report = clean();
        report.errors.starved = 1;
        let line = all.verdict(&report).unwrap();
        assert_eq!(
            line,
            "threshold broken: p99 2.000 ms > --max-p99 1ms; rate 5000.0/s < --min-rate 1000000; 1 errors > --max-errors 0"
        );
        assert!(!line.contains('\n'));
        assert!(all.any());
        // An interrupted run is said as interrupted, not judged.
        report.errors.starved = 0;
        report.interrupted = true;
        assert_eq!(all.exit_code(&report), 130);
    }
}
