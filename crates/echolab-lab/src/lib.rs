//! The lab: every hazard of CS:APP chapter 12 (races, deadlock, livelock, starvation,
//! zombies, descriptor leaks, the cost of a process) reproduced as a small experiment that
//! measures what happens, says what it means, draws it, and runs the fix beside it.
//!
//! Every experiment runs under a deadline: one that could truly hang (a deadlock, a
//! handler that blocks, a fork server) runs in a child process, a re-execution of the
//! current binary, that a watchdog kills by process group; a hang comes back as a result.
//!
//! # Layout
//! - [`experiment`]: the table of experiments, their [`experiment::Settings`] and the
//!   [`experiment::Report`] each one returns, printed as text or JSON.
//! - [`watchdog`]: runs a child process under a deadline, reads its state when it hangs,
//!   kills its whole process group and reaps every orphan.
//! - [`child`]: the child side of that: `echolab lab --child NAME` runs one experiment
//!   body in a fresh single-threaded process and prints its result.
//! - [`locks`]: the lab's own locks (reader-preferring and writer-preferring
//!   readers-writers locks), checked with loom.
//! - [`disasm`]: the racy counter's loop read back with objdump and checked to be a
//!   separate load, add and store.
//! - [`progress`]: every interleaving of two threads enumerated, and progress graphs
//!   drawn as SVG.
//! - [`plot`]: bar, histogram and line panels as SVG text, via plotters.
//! - [`report`]: `lab all --report DIR`, one HTML page with a section per experiment.
//! - [`experiments`]: one module per experiment: [`experiments::counter`],
//!   [`experiments::thread_arg`], [`experiments::thread_leak`],
//!   [`experiments::signal_handler`], [`experiments::deadlock`],
//!   [`experiments::progress_graph`], [`experiments::livelock`], [`experiments::starvation`],
//!   [`experiments::spawn_cost`], [`experiments::backlog`], [`experiments::zombies`],
//!   [`experiments::fd_refcount`], and the fork server the last two share,
//!   [`experiments::forkserver`].
#![forbid(unsafe_code)]

pub mod child;
pub mod disasm;
pub mod experiment;
pub mod experiments;
pub mod locks;
pub mod plot;
pub mod progress;
pub mod report;
pub mod watchdog;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use experiment::{Settings, EXPERIMENTS};

/// Reproduce the lecture's hazards and measure them.
///
/// `echolab lab list`, `echolab lab EXPERIMENT [--json] [--trials N] [--cpus LIST]
/// [--timeout DURATION]`, `echolab lab all [--report DIR]`.
///
/// Exit status: 0 every experiment ran (a hang it caught is a result, not a failure); 1 an
/// experiment could not run; 2 bad argument; 130 interrupted (SIGINT or SIGTERM: every
/// child process is killed first); 141 stdout closed by its reader (`| head`).
#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// `list`, `all`, or an experiment's name (see `echolab lab list`).
    #[arg(value_name = "EXPERIMENT", required_unless_present = "child")]
    pub experiment: Option<String>,

    /// Print the figures as JSON instead of sentences.
    #[arg(long)]
    pub json: bool,

    /// Repetitions (or the experiment's size, see `lab list`); each has a small default and
    /// a maximum, beyond which the value is refused (exit 2).
    #[arg(long, value_name = "N", value_parser = parse_positive, allow_negative_numbers = true)]
    pub trials: Option<usize>,

    /// CPUs to run on, such as `0` or `0-1,3`: every experiment, its threads and its child
    /// processes are restricted to them (thread-arg pins its single-core run to the first;
    /// counter pins its threads round-robin).
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list, allow_negative_numbers = true)]
    pub cpus: Option<CpuList>,

    /// Deadline of each experiment, from 1s to 1h (90s, 2m; a bare number is seconds); a
    /// run still going then is reported as timed out (a stalled one as hung).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout, allow_negative_numbers = true)]
    pub timeout: Duration,

    /// With `all`: also write DIR/index.html (and each picture as DIR/EXPERIMENT.svg).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,

    /// Internal: run one experiment body as the child process of a watchdog.
    #[arg(long, hide = true, value_name = "NAME")]
    pub child: Option<String>,

    /// Internal: the child's configuration, as JSON.
    #[arg(long, hide = true, value_name = "JSON")]
    pub child_config: Option<String>,
}

/// A parsed `--cpus` value. A newtype, not a bare `Vec<usize>`: clap's derive reads an
/// `Option<Vec<T>>` field as "many values of T" and would ask the parser for one `usize`
/// per value, which panics at run time against a parser that returns the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

fn parse_cpu_list(text: &str) -> Result<CpuList, String> {
    parse_cpus(text).map(CpuList)
}

// Counts and durations are parsed by echolab_cli::units, as every command parses them.

fn parse_positive(text: &str) -> Result<usize, String> {
    // No ceiling here (each experiment checks its own), so none is named: "from 1 to
    // 18446744073709551615" would teach nothing.
    echolab_cli::units::count(text, 1, usize::MAX as u64)
        .map(|n| n as usize)
        .map_err(|err| {
            if err.starts_with("not a whole number") || err.starts_with("at most") {
                "a whole number, at least 1, at most the experiment's maximum (see `echolab lab list`)"
                    .to_string()
            } else {
                err
            }
        })
}

/// A deadline from 1s to 1h (a bare number is seconds).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    echolab_cli::units::duration(text, Duration::from_secs(1), Duration::from_secs(3_600))
}

/// Parses a CPU list as `taskset -c` takes it: `0`, `0,2`, `0-3,6`.
pub fn parse_cpus(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let bad = || format!("not a cpu list: {text:?} (try 0 or 0-1,3)");
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (first.trim(), last.trim()),
            None => (part.trim(), part.trim()),
        };
        let first: usize = first.parse().map_err(|_| bad())?;
        let last: usize = last.parse().map_err(|_| bad())?;
        if first > last || last >= 1024 {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Runs `echolab lab`: 0 when every experiment ran (a hang it caught is a result, not a
/// failure), 1 when one could not run, 2 for a bad argument.
pub fn run(args: LabArgs) -> ExitCode {
    if let Some(name) = &args.child {
        return child::main(name, args.child_config.as_deref().unwrap_or("{}"));
    }
    if let Err(err) = watchdog::stop_on_signal() {
        echolab_cli::say!("echolab lab: cannot handle SIGINT and SIGTERM: {err}");
        return ExitCode::FAILURE;
    }
    let Some(which) = args.experiment.clone() else {
        echolab_cli::say!("echolab lab: name an experiment, `list` or `all`");
        return ExitCode::from(2);
    };
    let settings = match Settings::from_args(&args) {
        Ok(settings) => settings,
        Err(err) => {
            echolab_cli::say!("echolab lab: {err}");
            return ExitCode::from(2);
        }
    };
    let checked: Vec<&experiment::Experiment> = match which.as_str() {
        "all" => EXPERIMENTS.iter().collect(),
        name => experiment::find(name).into_iter().collect(),
    };
    for experiment in checked {
        if let Err(err) = settings.check_trials(experiment) {
            echolab_cli::say!("echolab lab: {err}");
            return ExitCode::from(2);
        }
    }
    match which.as_str() {
        "list" => {
            print_list(args.json);
            ExitCode::SUCCESS
        }
        "all" => {
            // Before minutes of experiments: a report that cannot be written is a bad
            // argument now, not a failure at the end.
            if let Some(dir) = &args.report {
                if let Err(err) = report::prepare(dir) {
                    let why = echolab_cli::describe_io(&err);
                    echolab_cli::say!("echolab lab: cannot create {}: {why}", dir.display());
                    return ExitCode::from(2);
                }
            }
            run_all(&settings, args.json, args.report.as_ref())
        }
        name => {
            if args.report.is_some() {
                echolab_cli::say!("echolab lab: --report goes with `all`, not with {name:?}");
                return ExitCode::from(2);
            }
            let Some(experiment) = experiment::find(name) else {
                echolab_cli::say!(
                    "echolab lab: unknown experiment {name:?} (try `echolab lab list`)"
                );
                return ExitCode::from(2);
            };
            match run_one(experiment, &settings) {
                Ok(report) => {
                    report.print(args.json);
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    echolab_cli::say!("echolab lab {name}: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs one experiment, honouring `--cpus` for all of them: the calling thread is pinned
/// to the list first, so every thread it starts and every process it forks or executes
/// inherits the mask (counter and thread-arg pin their own threads further, within it).
/// The report then says on which CPUs it ran, as read back from the affinity mask.
fn run_one(
    experiment: &experiment::Experiment,
    settings: &Settings,
) -> std::io::Result<experiment::Report> {
    if let Some(cpus) = &settings.cpus {
        experiment::pin_current_thread(cpus)?;
    }
    let mut report = (experiment.run)(settings)?;
    if settings.cpus.is_some() {
        let ran_on = experiment::allowed_cpus();
        report.did.push_str(&format!(
            " Every thread and child process ran restricted to CPU(s) {} (--cpus).",
            ran_on
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    Ok(report)
}

fn print_list(json: bool) {
    let mut out = echolab_cli::stdout();
    if json {
        let list: Vec<_> = EXPERIMENTS
            .iter()
            .map(|e| serde_json::json!({ "name": e.name, "summary": e.summary }))
            .collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
        return;
    }
    for experiment in EXPERIMENTS {
        let _ = writeln!(out, "{:<15} {}", experiment.name, experiment.summary);
    }
}

fn run_all(settings: &Settings, json: bool, report_dir: Option<&PathBuf>) -> ExitCode {
    let mut reports = Vec::new();
    let mut failed = false;
    for experiment in EXPERIMENTS {
        if echolab_cli::stdout_closed() {
            // `lab all | head`: nobody reads the reports on (exit 141 from `main`).
            break;
        }
        if !json {
            echolab_cli::say!("== running {} ==", experiment.name);
        }
        match run_one(&experiment, settings) {
            Ok(report) => {
                if !json {
                    report.print(false);
                }
                reports.push(report);
            }
            Err(err) => {
                echolab_cli::say!("echolab lab {}: {err}", experiment.name);
                failed = true;
            }
        }
    }
    if json {
        echolab_cli::print_out(&report::all_json(&reports).to_string());
    }
    if let Some(dir) = report_dir {
        match report::write(dir, &reports) {
            Ok(path) => echolab_cli::say!("wrote {}", path.display()),
            Err(err) => {
                echolab_cli::say!(
                    "echolab lab: cannot write the report into {}: {err}",
                    dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The default deadline of one experiment.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
