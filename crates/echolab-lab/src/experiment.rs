//! The table of experiments, the settings every experiment receives, and the report every
//! experiment returns: what it did, what it measured, what that means, and the figures.
//!
//! An experiment never hangs its caller: it gets a [`Deadline`], bounds each of its loops
//! by it, and reports running out of time as a finding ("timed out" while still making
//! progress, "hung" when it stalled), not as an error.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::experiments;
use crate::LabArgs;

/// What every experiment may be told from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--trials`: repetitions, or the size of the experiment; `None` takes its default.
    pub trials: Option<usize>,
    /// `--cpus`: the CPUs to use; `None` means every CPU the process may run on.
    pub cpus: Option<Vec<usize>>,
    /// `--timeout`: the deadline of one experiment.
    pub timeout: Duration,
    /// The executable that child-process experiments re-execute (this binary).
    pub exe: PathBuf,
}

impl Settings {
    /// Settings for a library caller: defaults, this executable, `timeout`.
    pub fn new(timeout: Duration) -> io::Result<Settings> {
        Ok(Settings {
            trials: None,
            cpus: None,
            timeout,
            exe: std::env::current_exe()?,
        })
    }

    pub(crate) fn from_args(args: &LabArgs) -> Result<Settings, String> {
        let mut settings = Settings::new(args.timeout)
            .map_err(|err| format!("cannot find the current executable to re-run: {err}"))?;
        settings.trials = args.trials;
        if let Some(crate::CpuList(cpus)) = &args.cpus {
            let allowed = allowed_cpus();
            if let Some(bad) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
                return Err(format!(
                    "--cpus: cpu {bad} is not one this process may use (allowed: {})",
                    allowed
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            settings.cpus = Some(cpus.clone());
        }
        Ok(settings)
    }

    /// `--trials`, or `default`.
    pub fn trials_or(&self, default: usize) -> usize {
        self.trials.unwrap_or(default).max(1)
    }

    /// `--cpus`, or every CPU this process may run on.
    pub fn cpus(&self) -> Vec<usize> {
        self.cpus.clone().unwrap_or_else(allowed_cpus)
    }

    /// Refuses a `--trials` above `experiment`'s maximum, in one line naming the value.
    pub fn check_trials(&self, experiment: &Experiment) -> Result<(), String> {
        match self.trials {
            Some(trials) if trials > experiment.max_trials => Err(format!(
                "--trials {trials} is too many for {}: at most {}",
                experiment.name,
                thousands(experiment.max_trials as u64)
            )),
            _ => Ok(()),
        }
    }

    /// One trial's share of the deadline when `trials` trials share it (one part is kept
    /// for what comes after them), but never less than `floor` (capped by the timeout):
    /// trials beyond what fits are not run, the overall deadline stops the loop.
    pub fn per_trial(&self, trials: usize, floor: Duration) -> Duration {
        let parts = u32::try_from(trials.saturating_add(1)).unwrap_or(u32::MAX);
        (self.timeout / parts).max(floor.min(self.timeout))
    }

    /// A deadline `timeout` from now.
    pub fn deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }
}

/// The CPUs the calling thread may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => vec![0],
    }
}

/// Restricts the calling thread (and the threads it creates afterwards) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)
            .map_err(|err| io::Error::other(format!("cannot use CPU {cpu}: {err}")))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|err| io::Error::other(format!("cannot pin to CPUs {cpus:?}: {err}")))
}

/// A point in time after which an experiment stops and reports what it has.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(duration: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + duration,
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// Time left, zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The earlier of this deadline and `duration` from now.
    pub fn min_after(&self, duration: Duration) -> Deadline {
        Deadline {
            at: self.at.min(Instant::now() + duration),
        }
    }
}

/// One experiment: its name on the command line, and the function that runs it.
#[derive(Debug, Clone, Copy)]
pub struct Experiment {
    pub name: &'static str,
    /// One line for `lab list`, ending with what `--trials` sets.
    pub summary: &'static str,
    /// The largest `--trials` it accepts: beyond it a run could not finish in any sensible
    /// deadline or would exhaust the machine (zombies pile up one per connection).
    pub max_trials: usize,
    pub run: fn(&Settings) -> io::Result<Report>,
}

/// Every experiment, in the lecture's order.
pub const EXPERIMENTS: [Experiment; 12] = [
    experiments::counter::EXPERIMENT,
    experiments::thread_arg::EXPERIMENT,
    experiments::thread_leak::EXPERIMENT,
    experiments::signal_handler::EXPERIMENT,
    experiments::deadlock::EXPERIMENT,
    experiments::progress_graph::EXPERIMENT,
    experiments::livelock::EXPERIMENT,
    experiments::starvation::EXPERIMENT,
    experiments::spawn_cost::EXPERIMENT,
    experiments::backlog::EXPERIMENT,
    experiments::zombies::EXPERIMENT,
    experiments::fd_refcount::EXPERIMENT,
];

/// The experiment called `name`.
pub fn find(name: &str) -> Option<&'static Experiment> {
    EXPERIMENTS
        .iter()
        .find(|experiment| experiment.name == name)
}

/// What an experiment found, in words and in figures.
#[derive(Debug, Clone)]
pub struct Report {
    pub experiment: &'static str,
    /// The section heading.
    pub title: &'static str,
    /// What the lecture says, in its own terms.
    pub claim: &'static str,
    /// What the experiment did, here.
    pub did: String,
    /// The measurements, one line each (a small table).
    pub measured: Vec<String>,
    /// What the measurements mean, in two or three sentences.
    pub meaning: String,
    /// The fix, and how it fared.
    pub fix: String,
    /// Runs that timed out (cut off while making progress) or hung (stalled), each
    /// described as which; empty when every run ended by itself.
    pub hangs: Vec<String>,
    /// The figures, for `--json`.
    pub figures: Value,
    /// The picture, as SVG text.
    pub svg: Option<String>,
}

impl Report {
    /// The report as one JSON object (everything but the picture).
    pub fn json(&self) -> Value {
        json!({
            "experiment": self.experiment,
            "title": self.title,
            "did": self.did,
            "measured": self.measured,
            "meaning": self.meaning,
            "fix": self.fix,
            "hangs": self.hangs,
            "figures": self.figures,
        })
    }

    /// The report as plain sentences.
    pub fn text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("{} ({})\n", self.title, self.experiment));
        out.push_str(&format!("lecture: {}\n", self.claim));
        out.push_str(&format!("did:     {}\n", self.did));
        out.push_str("measured:\n");
        for line in &self.measured {
            out.push_str(&format!("  {line}\n"));
        }
        for hang in &self.hangs {
            out.push_str(&format!("  stopped early: {hang}\n"));
        }
        out.push_str(&format!("means:   {}\n", self.meaning));
        out.push_str(&format!("fix:     {}\n", self.fix));
        out
    }

    pub fn print(&self, json: bool) {
        if json {
            let mut doc = self.json();
            echolab_cli::provenance::stamp(&mut doc);
            echolab_cli::print_out(&doc.to_string());
        } else {
            echolab_cli::print_out(&self.text());
        }
    }
}

/// Summary statistics of a sample: median and the 10th and 90th percentiles.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    pub n: usize,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted: Vec<f64> = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let pick = |q: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
            sorted[idx]
        };
        Spread {
            n: sorted.len(),
            p10: pick(0.1),
            median: pick(0.5),
            p90: pick(0.9),
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (idx, ch) in digits.chars().enumerate() {
        if idx > 0 && (digits.len() - idx).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A duration as milliseconds with three decimals.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_percentiles() {
        let values: Vec<f64> = (1..=11).map(f64::from).collect();
        let spread = Spread::of(&values);
        assert_eq!((spread.p10, spread.median, spread.p90), (2.0, 6.0, 10.0));
        assert_eq!(Spread::of(&[]).n, 0);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn every_experiment_has_a_unique_name() {
        let mut names: Vec<_> = EXPERIMENTS.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EXPERIMENTS.len());
        assert!(find("counter").is_some());
        assert!(find("nope").is_none());
    }

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(crate::parse_cpus("0").unwrap(), vec![0]);
        assert_eq!(crate::parse_cpus("0-2,5,1").unwrap(), vec![0, 1, 2, 5]);
        assert!(crate::parse_cpus("2-1").unwrap_err().contains("2-1"));
        assert!(crate::parse_cpus("x").is_err());
    }
}
