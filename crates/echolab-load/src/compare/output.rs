//! compare's results: the records (serialised as results.json) and summary.md, a table per
//! workload with each model's figures and its ratio to the best.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::procfs::ProcStats;
use super::{skip_reason, Plan, Workload};
use crate::report::BenchReport;

/// Where the comparison ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    /// Seconds since the Unix epoch when the comparison started.
    pub started_unix_secs: u64,
}

impl Machine {
    pub fn here() -> Machine {
        Machine {
            cores: crate::config::cores(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string()),
            started_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// Whether a model started, and where or why not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub addr: Option<String>,
    /// Why it did not start.
    pub error: Option<String>,
    /// A UDP server (`serve --udp-only`) for the UDP workloads.
    pub udp: bool,
}

/// One run of one workload against one model.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSample {
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: u64,
    /// Connections the server accepted but never echoed to in the run (a pool whose
    /// workers are all taken, an iterative server): the figures describe the others.
    pub unserved_conns: u64,
    /// Server CPU seconds (user + system, children included) over the whole run.
    pub server_cpu_secs: f64,
    /// Server CPU per completed message (churn: per connection), in microseconds.
    pub server_cpu_us_per_msg: f64,
    /// The server's costs halfway through the measured window.
    pub server: Option<ProcStats>,
    /// Why the run failed, or the first error it met.
    pub error: Option<String>,
    /// How long the run waited, before it started, for the previous run's connections to
    /// close on the server, in milliseconds.
    pub settle_ms: f64,
    /// Connections the server still held when that wait gave up (2 s): the previous
    /// run's, still open as this one started. Zero normally.
    pub leftover_conns: u64,
    /// Likewise, the server's live children (the process model's connections).
    pub leftover_children: u64,
    /// UDP: datagrams with no echo within the timeout (0 for TCP).
    pub lost: u64,
}

impl RunSample {
    pub fn failed(error: String) -> RunSample {
        RunSample {
            errors: 1,
            error: Some(error),
            ..RunSample::default()
        }
    }

    /// A run's figures. `loaded_secs` is how long the load ran (warm-up and measured
    /// window): the server's CPU over the run is divided by the messages of that time,
    /// estimated as the measured rate times it, so warm-up messages are not free.
    pub fn from_report(
        report: &BenchReport,
        size: usize,
        loaded_secs: f64,
        cpu_secs: Option<f64>,
        during: Option<ProcStats>,
    ) -> RunSample {
        let cpu = cpu_secs.unwrap_or(0.0);
        let messages = report.messages_per_sec() * loaded_secs;
        let cpu_per_msg = if messages > 0.0 {
            cpu * 1e6 / messages
        } else {
            0.0
        };
        // Starved connections are the model's limit, shown as connections never served
        // ("served N/M", not ranked), not a failure of the run: compare's exit status is
        // about runs that went wrong.
        let error = report
            .error_samples
            .iter()
            .find(|(kind, _)| **kind != crate::report::ErrorKind::Starved)
            .map(|(kind, what)| format!("{}: {what}", kind.name()));
        RunSample {
            messages_per_sec: report.messages_per_sec(),
            mb_per_sec: report.mb_per_sec(size),
            p50_us: report.latency.p50_us,
            p90_us: report.latency.p90_us,
            p99_us: report.latency.p99_us,
            p999_us: report.latency.p999_us,
            max_us: report.latency.max_us,
            errors: report.errors.total() - report.errors.starved,
            unserved_conns: report.conns_established.saturating_sub(report.conns_echoed),
            server_cpu_secs: cpu,
            server_cpu_us_per_msg: cpu_per_msg,
            server: during,
            error,
            ..RunSample::default()
        }
    }
}

impl RunSample {
    /// A UDP run's figures: echoes/s as the rate, CPU per echoed datagram, corrupt echoes
    /// and socket errors as errors, lost datagrams apart.
    pub fn from_udp_report(
        report: &echolab_udp::bench::UdpReport,
        cpu_secs: Option<f64>,
        after: Option<ProcStats>,
    ) -> RunSample {
        let cpu = cpu_secs.unwrap_or(0.0);
        let echoed = report.counts.echoed as f64;
        let errors = report.counts.corrupt + report.socket_errors;
        RunSample {
            messages_per_sec: report.echoes_per_sec(),
            mb_per_sec: report.echoes_per_sec() * report.config.size as f64 / 1e6,
            p50_us: report.quantile_us(0.5),
            p90_us: report.quantile_us(0.9),
            p99_us: report.quantile_us(0.99),
            p999_us: report.quantile_us(0.999),
            max_us: report.quantile_us(1.0),
            errors,
            server_cpu_secs: cpu,
            server_cpu_us_per_msg: if echoed > 0.0 {
                cpu * 1e6 / echoed
            } else {
                0.0
            },
            server: after,
            error: (errors > 0).then(|| {
                format!(
                    "{} corrupt echoes, {} socket errors",
                    report.counts.corrupt, report.socket_errors
                )
            }),
            lost: report.counts.lost,
            ..RunSample::default()
        }
    }
}

/// Medians over the runs of one model on one workload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Median {
    pub runs: usize,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub server_cpu_us_per_msg: f64,
    pub pss_kib: u64,
    pub rss_kib: u64,
    pub threads: u64,
    pub processes: u64,
    /// (max − min) / median of messages/s over the runs, in percent: the noise.
    pub spread_pct: f64,
    pub errors: u64,
    /// The most connections left without an echo in any run.
    pub unserved_conns: u64,
    /// UDP: datagrams lost over all runs.
    pub lost: u64,
}

/// One model's runs on one workload.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelRuns {
    pub runs: Vec<RunSample>,
    pub median: Option<Median>,
    /// Why the model does not run this workload.
    pub skipped: Option<String>,
}

/// Every model's runs on one workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadResults {
    pub workload: Workload,
    pub models: BTreeMap<String, ModelRuns>,
}

impl WorkloadResults {
    pub fn new<'a>(workload: Workload, models: impl Iterator<Item = &'a str>) -> WorkloadResults {
        let models = models
            .map(|m| {
                let runs = ModelRuns {
                    skipped: skip_reason(m, &workload).map(str::to_string),
                    ..ModelRuns::default()
                };
                (m.to_string(), runs)
            })
            .collect();
        WorkloadResults { workload, models }
    }

    pub fn push(&mut self, model: &str, sample: RunSample) {
        self.models
            .entry(model.to_string())
            .or_default()
            .runs
            .push(sample);
    }

    /// Computes the medians.
    pub fn summarise(&mut self) {
        for runs in self.models.values_mut() {
            if runs.runs.is_empty() {
                continue;
            }
            let r = &runs.runs;
            let m = |f: &dyn Fn(&RunSample) -> f64| median(r.iter().map(f).collect());
            let mu = |f: &dyn Fn(&ProcStats) -> u64| {
                median(
                    r.iter()
                        .filter_map(|s| s.server.map(|p| f(&p) as f64))
                        .collect(),
                ) as u64
            };
            let rates: Vec<f64> = r.iter().map(|s| s.messages_per_sec).collect();
            let mid = median(rates.clone());
            let spread = if mid > 0.0 {
                let max = rates.iter().cloned().fold(f64::MIN, f64::max);
                let min = rates.iter().cloned().fold(f64::MAX, f64::min);
                (max - min) / mid * 100.0
            } else {
                0.0
            };
            runs.median = Some(Median {
                runs: r.len(),
                messages_per_sec: mid,
                mb_per_sec: m(&|s| s.mb_per_sec),
                p50_us: m(&|s| s.p50_us),
                p90_us: m(&|s| s.p90_us),
                p99_us: m(&|s| s.p99_us),
                p999_us: m(&|s| s.p999_us),
                server_cpu_us_per_msg: m(&|s| s.server_cpu_us_per_msg),
                pss_kib: mu(&|p| p.pss_kib),
                rss_kib: mu(&|p| p.rss_kib),
                threads: mu(&|p| p.threads),
                processes: mu(&|p| p.processes),
                spread_pct: spread,
                errors: r.iter().map(|s| s.errors).sum(),
                unserved_conns: r.iter().map(|s| s.unserved_conns).max().unwrap_or(0),
                lost: r.iter().map(|s| s.lost).sum(),
            });
        }
    }
}

/// What holding idle connections cost one model.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IdleResult {
    pub model: String,
    pub before: Option<ProcStats>,
    pub during: Option<ProcStats>,
    /// (PSS while holding − PSS before) / connections.
    pub kib_per_conn: f64,
    pub error: Option<String>,
    pub skipped: Option<String>,
}

impl IdleResult {
    pub fn measured(
        model: &str,
        n_conns: usize,
        before: ProcStats,
        during: ProcStats,
    ) -> IdleResult {
        let grown = during.pss_kib as f64 - before.pss_kib as f64;
        IdleResult {
            model: model.to_string(),
            before: Some(before),
            during: Some(during),
            kib_per_conn: grown.max(0.0) / n_conns.max(1) as f64,
            ..IdleResult::default()
        }
    }

    pub fn failed(model: &str, error: String) -> IdleResult {
        IdleResult {
            model: model.to_string(),
            error: Some(error),
            ..IdleResult::default()
        }
    }

    pub fn skipped(model: &str, why: &str) -> IdleResult {
        IdleResult {
            model: model.to_string(),
            skipped: Some(why.to_string()),
            ..IdleResult::default()
        }
    }
}

/// Everything compare measured: written as results.json.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub models: Vec<ModelStatus>,
    pub workloads: Vec<WorkloadResults>,
    pub idle_conns: usize,
    pub idle: Vec<IdleResult>,
    /// Stopped early by SIGINT/SIGTERM: the figures cover the runs done.
    pub interrupted: bool,
    /// What compare left out of the plan and why (a placement this machine cannot give).
    pub notes: Vec<String>,
    /// The data behind every chart, as drawn ([`super::charts::data`]).
    pub charts: Vec<super::charts::ChartData>,
}

impl Results {
    pub fn total_errors(&self) -> u64 {
        let runs: u64 = self
            .workloads
            .iter()
            .flat_map(|w| w.models.values())
            .flat_map(|m| &m.runs)
            .map(|s| s.errors)
            .sum();
        runs + self.idle.iter().filter(|i| i.error.is_some()).count() as u64
    }
}

/// The median of `values` (0 when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn ratio(value: f64, best: f64) -> String {
    if best > 0.0 && value > 0.0 {
        format!("{:.2}×", value / best)
    } else {
        "–".to_string()
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// summary.md: the setting, then a table per workload and one for idle connections.
pub fn summary_markdown(results: &Results) -> String {
    let mut out = String::new();
    let plan = &results.plan;
    let _ = writeln!(
        out,
        "# echolab compare{}\n",
        if plan.quick { " (quick)" } else { "" }
    );
    let _ =
        writeln!(
        out,
        "{} cores shared by the load generator and the server (kernel {}); every model ran every \
         workload {}, alternately (order rotated per repeat), {:.1} s measured after {:.1} s \
         of warm-up. Figures are medians; *spread* is (max − min) / median of messages/s over the \
         runs. Server CPU per message (user + system time from /proc, children included) is the \
         steadier figure on a shared machine: throughput swings with the neighbours. Memory is \
         the server's PSS halfway through the run. Before each run, compare waits (up to 2 s) \
         until the server holds no connection (counted from /proc) and no child serving one, so \
         the previous run's connections, still closing, are not charged to the next.{}\n",
        results.machine.cores,
        results.machine.kernel,
        times(plan.repeats),
        plan.duration_secs,
        plan.warmup_secs,
        if results.interrupted { " **Interrupted: the figures cover the runs done.**" } else { "" }
    );
    for note in &results.notes {
        let _ = writeln!(out, "Note: {note}.\n");
    }
    let failed: Vec<&ModelStatus> = results
        .models
        .iter()
        .filter(|m| m.error.is_some())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(out, "Models that did not start:\n");
        for m in failed {
            let _ = writeln!(out, "- `{}`: {}", m.name, m.error.as_deref().unwrap_or(""));
        }
        let _ = writeln!(out);
    }
    let leftovers: Vec<String> = results
        .workloads
        .iter()
        .flat_map(|w| {
            w.models.iter().flat_map(move |(model, runs)| {
                runs.runs
                    .iter()
                    .filter(|r| r.leftover_conns + r.leftover_children > 0)
                    .map(move |r| {
                        format!(
                            "- `{model}`, {}: {} connections and {} children of the previous run still open",
                            w.workload.name, r.leftover_conns, r.leftover_children
                        )
                    })
            })
        })
        .collect();
    if !leftovers.is_empty() {
        let _ = writeln!(
            out,
            "Runs that started before the server had closed the previous run's connections \
             (after waiting 2 s); their figures include that load:\n"
        );
        for line in leftovers {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out);
    }
    for w in &results.workloads {
        let kind = if w.workload.churn {
            "connect, one echo, close; rates are connections/s"
        } else if w.workload.udp {
            "closed loop, one datagram outstanding per socket; rates are echoes/s"
        } else if w.workload.pin.is_some() {
            "closed loop, client and server pinned with sched_setaffinity"
        } else {
            "closed loop"
        };
        let _ = writeln!(out, "## {} ({kind})\n", w.workload.name);
        if w.workload.conns == 1 && !w.workload.churn && !w.workload.udp && w.workload.pin.is_none()
        {
            let _ = writeln!(
                out,
                "One connection: every message wakes the other side, so where the scheduler \
                 puts the client and the server decides the figure. On one CPU a wake-up is a \
                 cheap switch; across two it is an inter-processor interrupt and an exit from \
                 idle, several times slower and costlier in server CPU (notably in a virtual \
                 machine). A large spread in this table is that placement, not the model.\n"
            );
        }
        let medians: Vec<(&String, &Median)> = w
            .models
            .iter()
            .filter_map(|(name, runs)| runs.median.as_ref().map(|m| (name, m)))
            .collect();
        // A model that left connections unserved is never the best: its rate is that of
        // the few it served. Nor is a reference C server: it is the yardstick.
        let ranked = || {
            medians
                .iter()
                .filter(|(name, m)| m.unserved_conns == 0 && !super::charts::is_reference(name))
        };
        let best_rate = ranked()
            .map(|(_, m)| m.messages_per_sec)
            .fold(0.0, f64::max);
        let best_cpu = ranked()
            .map(|(_, m)| m.server_cpu_us_per_msg)
            .filter(|c| *c > 0.0)
            .fold(f64::MAX, f64::min);
        let udp = w.workload.udp;
        let _ = writeln!(
            out,
            "| model | {} | vs best | p50 µs | p99 µs | CPU µs/msg | vs best | PSS MiB | threads | procs | runs | spread | errors |{}",
            if udp { "echoes/s" } else { "msgs/s" },
            if udp { " lost |" } else { "" }
        );
        let _ = writeln!(
            out,
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|{}",
            if udp { "--:|" } else { "" }
        );
        for (name, runs) in &w.models {
            if let Some(why) = &runs.skipped {
                let _ = writeln!(out, "| {name} | *{why}* |||||||||||| ");
                continue;
            }
            let Some(m) = &runs.median else {
                let _ = writeln!(out, "| {name} | *not run* |||||||||||| ");
                continue;
            };
            let (rate_ratio, cpu_ratio) = if m.unserved_conns == 0 {
                (
                    ratio(m.messages_per_sec, best_rate),
                    ratio(m.server_cpu_us_per_msg, best_cpu),
                )
            } else {
                ("not ranked".to_string(), "not ranked".to_string())
            };
            let _ = writeln!(
                out,
                "| {} | {} | {rate_ratio} | {:.1} | {:.1} | {:.2} | {cpu_ratio} | {} | {} | {} | {} | {} | {} |{}",
                row_name(name),
                rate_cell(m, w.workload.conns),
                m.p50_us,
                m.p99_us,
                m.server_cpu_us_per_msg,
                mib(m.pss_kib),
                m.threads,
                m.processes,
                m.runs,
                spread_cell(m),
                errors_cell(m),
                if udp { format!(" {} |", m.lost) } else { String::new() }
            );
        }
        let _ = writeln!(out);
    }
    if let Some(chart) = results
        .charts
        .iter()
        .find(|c| c.file == "one_conn_placement.svg")
    {
        let _ = writeln!(out, "## One connection, pinned both ways\n");
        let _ = writeln!(out, "{}\n", super::charts::placement_lesson(&chart.series));
    }
    let _ = writeln!(out, "## {} idle connections held\n", results.idle_conns);
    let best = results
        .idle
        .iter()
        .filter(|i| i.error.is_none() && i.skipped.is_none() && i.kib_per_conn > 0.0)
        .filter(|i| !super::charts::is_reference(&i.model))
        .map(|i| i.kib_per_conn)
        .fold(f64::MAX, f64::min);
    let _ = writeln!(
        out,
        "| model | PSS before MiB | PSS held MiB | KiB per idle conn | vs best | threads | procs |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|");
    for i in &results.idle {
        match (&i.skipped, &i.error, i.before, i.during) {
            (Some(why), _, _, _) => {
                let _ = writeln!(out, "| {} | *{why}* |||||| ", i.model);
            }
            (_, Some(err), _, _) => {
                let _ = writeln!(out, "| {} | *failed: {err}* |||||| ", i.model);
            }
            (_, _, Some(before), Some(during)) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.1} | {} | {} | {} |",
                    row_name(&i.model),
                    mib(before.pss_kib),
                    mib(during.pss_kib),
                    i.kib_per_conn,
                    ratio(i.kib_per_conn, best),
                    during.threads,
                    during.processes
                );
            }
            _ => {}
        }
    }
    let _ = writeln!(out, "\nThe idle step runs once per model (not repeated).");
    out
}

/// A table row's name: a reference C server says so.
fn row_name(name: &str) -> String {
    if super::charts::is_reference(name) {
        format!("{name} (C reference)")
    } else {
        name.to_string()
    }
}

/// The msgs/s cell: the rate, marked with the connections served when some were not
/// ("65183 (served 8/64)").
pub fn rate_cell(m: &Median, conns: usize) -> String {
    if m.unserved_conns == 0 {
        format!("{:.0}", m.messages_per_sec)
    } else {
        let served = (conns as u64).saturating_sub(m.unserved_conns);
        format!("{:.0} (served {served}/{conns})", m.messages_per_sec)
    }
}

/// "once", or "N times".
fn times(n: usize) -> String {
    if n == 1 {
        "once".to_string()
    } else {
        format!("{n} times")
    }
}

/// The spread cell: none from a single run (a 0% there would claim a steadiness nobody
/// measured).
fn spread_cell(m: &Median) -> String {
    if m.runs < 2 {
        "–".to_string()
    } else {
        format!("{:.0}%", m.spread_pct)
    }
}

/// The errors cell, with the connections that got no echo at all: their absence from the
/// figures is the model's limit, not a success.
fn errors_cell(m: &Median) -> String {
    if m.unserved_conns == 0 {
        m.errors.to_string()
    } else {
        let unserved = echolab_cli::counted(m.unserved_conns, "conn");
        format!("{} ({unserved} never served)", m.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn a_model_that_left_connections_unserved_is_marked_and_never_ranked_best() {
        // prethreaded's rate is the highest, but it served 8 of 64 connections: its cell
        // says so, it is "not ranked", and event (every connection served) is 1.00×.
        let workload = crate::compare::Workload {
            name: "64 B × 64 conns".to_string(),
            conns: 64,
            size: 64,
            churn: false,
            pin: None,
            udp: false,
        };
        let mut w = WorkloadResults::new(workload, ["event", "prethreaded"].into_iter());
        w.push(
            "prethreaded",
            RunSample {
                messages_per_sec: 65183.0,
                errors: 56,
                unserved_conns: 56,
                ..RunSample::default()
            },
        );
        w.push(
            "event",
            RunSample {
                messages_per_sec: 40000.0,
                ..RunSample::default()
            },
        );
        w.summarise();
        let plan = crate::compare::Plan::new(true, Some(1));
        let results = Results {
            machine: Machine::here(),
            idle_conns: plan.idle_conns,
            plan,
            models: Vec::new(),
            workloads: vec![w],
            idle: Vec::new(),
            interrupted: false,
            notes: Vec::new(),
            charts: Vec::new(),
        };
        let md = summary_markdown(&results);
        let row = |model: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {model} |")))
                .unwrap_or_else(|| panic!("no row for {model}: {md}"))
                .to_string()
        };
        assert!(
            row("prethreaded").starts_with("| prethreaded | 65183 (served 8/64) | not ranked |"),
            "{md}"
        );
        assert!(
            row("prethreaded").ends_with("| 56 (56 conns never served) |"),
            "{md}"
        );
        assert!(
            row("event").starts_with("| event | 40000 | 1.00× |"),
            "{md}"
        );
        // One run each: no spread to show, and the page says "once".
        assert!(row("event").ends_with("| 1 | – | 0 |"), "{md}");
        assert!(md.contains("every model ran every workload once,"), "{md}");
    }

    #[test]
    fn starved_connections_are_unserved_not_run_errors() {
        // A pool serving 8 of 64 connections: 56 starved. compare shows them as never
        // served, and the run's errors (what makes compare exit 1) exclude them; a reset
        // still counts.
        use crate::report::{BenchReport, ErrorKind};
        let mut r = BenchReport::empty(64);
        r.messages = 1000;
        r.seconds = 1.0;
        r.conns_established = 64;
        r.conns_echoed = 8;
        for _ in 0..56 {
            r.errors.count(ErrorKind::Starved);
        }
        r.error_samples
            .insert(ErrorKind::Starved, "conn 8 completed no echo".to_string());
        let sample = RunSample::from_report(&r, 64, 1.0, None, None);
        assert_eq!(sample.errors, 0);
        assert_eq!(sample.unserved_conns, 56);
        assert_eq!(sample.error, None);
        r.errors.count(ErrorKind::Reset);
        r.error_samples
            .insert(ErrorKind::Reset, "connection reset by peer".to_string());
        let sample = RunSample::from_report(&r, 64, 1.0, None, None);
        assert_eq!(sample.errors, 1);
        assert_eq!(
            sample.error.as_deref(),
            Some("reset: connection reset by peer")
        );
    }

    #[test]
    fn a_udp_run_is_echoes_per_second_with_its_losses_apart() {
        use echolab_udp::bench::{UdpBenchConfig, UdpReport};
        use std::time::Duration;
        let mut latency = hdrhistogram::Histogram::new(3).unwrap();
        for us in 1..=100u64 {
            latency.record(us * 1000).unwrap();
        }
        let mut report = UdpReport {
            config: UdpBenchConfig {
                addr: "127.0.0.1:9".parse().unwrap(),
                n_conns: 8,
                size: 64,
                duration: Duration::from_secs(2),
                count: None,
                rate: None,
                timeout: Duration::from_millis(500),
                n_threads: 2,
            },
            counts: echolab_udp::account::Counts {
                sent: 4005,
                echoed: 4000,
                lost: 5,
                ..Default::default()
            },
            elapsed: Duration::from_secs(2),
            latency,
            jitter: Duration::ZERO,
            socket_errors: 0,
            socket_error_kinds: Default::default(),
            window: Duration::from_secs(2),
            interrupted: false,
            active: Duration::from_secs(2),
        };
        // 0.02 s of server CPU over 4000 echoes: 5 µs each.
        let s = RunSample::from_udp_report(&report, Some(0.02), None);
        assert_eq!(s.messages_per_sec, 2000.0);
        assert!((s.server_cpu_us_per_msg - 5.0).abs() < 1e-9, "{s:?}");
        assert!((s.mb_per_sec - 0.128).abs() < 1e-12, "{s:?}");
        assert_eq!((s.lost, s.errors, s.error.clone()), (5, 0, None));
        assert!(
            (s.p50_us - 50.0).abs() < 0.1 && (s.p99_us - 99.0).abs() < 0.1,
            "{s:?}"
        );
        report.counts.corrupt = 1;
        report.socket_errors = 2;
        let s = RunSample::from_udp_report(&report, None, None);
        assert_eq!(s.errors, 3);
        assert_eq!(
            s.error.as_deref(),
            Some("1 corrupt echoes, 2 socket errors")
        );
        assert_eq!(s.server_cpu_us_per_msg, 0.0);
    }

    #[test]
    fn udp_tables_have_a_lost_column_and_references_are_never_best() {
        let mk = |udp: bool| crate::compare::Workload {
            name: "w".to_string(),
            conns: 8,
            size: 64,
            churn: false,
            pin: None,
            udp,
        };
        let mut udp = WorkloadResults::new(mk(true), ["event", "thread"].into_iter());
        udp.push(
            "event",
            RunSample {
                messages_per_sec: 2000.0,
                lost: 5,
                ..RunSample::default()
            },
        );
        udp.summarise();
        let mut tcp = WorkloadResults::new(mk(false), ["event", "ref_epoll"].into_iter());
        for (model, rate) in [("event", 1000.0), ("ref_epoll", 4000.0)] {
            tcp.push(
                model,
                RunSample {
                    messages_per_sec: rate,
                    ..RunSample::default()
                },
            );
        }
        tcp.summarise();
        let plan = crate::compare::Plan::new(true, Some(1));
        let results = Results {
            machine: Machine::here(),
            idle_conns: plan.idle_conns,
            plan,
            models: Vec::new(),
            workloads: vec![udp, tcp],
            idle: Vec::new(),
            interrupted: false,
            notes: vec!["a note".to_string()],
            charts: Vec::new(),
        };
        let md = summary_markdown(&results);
        assert!(md.contains("| model | echoes/s | vs best |"), "{md}");
        assert!(md.contains("| errors | lost |\n"), "{md}");
        assert!(md.contains("| event | 2000 | 1.00× |"), "{md}");
        assert!(md.contains("| 0 | 5 |\n"), "{md}");
        assert!(md.contains("| thread | *serves no UDP* |"), "{md}");
        assert!(md.contains("| event | 1000 | 1.00× |"), "{md}");
        assert!(
            md.contains("| ref_epoll (C reference) | 4000 | 4.00× |"),
            "{md}"
        );
        assert!(md.contains("Note: a note."), "{md}");
        let mut results = results;
        results.idle = vec![
            IdleResult {
                model: "event".to_string(),
                kib_per_conn: 0.2,
                before: Some(ProcStats::default()),
                during: Some(ProcStats::default()),
                ..IdleResult::default()
            },
            IdleResult {
                model: "ref_epoll".to_string(),
                kib_per_conn: 0.05,
                before: Some(ProcStats::default()),
                during: Some(ProcStats::default()),
                ..IdleResult::default()
            },
        ];
        let md = summary_markdown(&results);
        assert!(md.contains("| event | 0.0 | 0.0 | 0.2 | 1.00× |"), "{md}");
        assert!(
            md.contains("| ref_epoll (C reference) | 0.0 | 0.0 | 0.1 | 0.25× |"),
            "{md}"
        );
    }

    #[test]
    fn ratios_to_the_best() {
        assert_eq!(ratio(50.0, 100.0), "0.50×");
        assert_eq!(ratio(0.0, 100.0), "–");
    }
}
