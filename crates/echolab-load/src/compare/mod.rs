//! `echolab compare`: every model under the same load, side by side.
//!
//! Honesty rules, and where they are kept:
//! - Same machine, same load: every model runs every workload with the same
//!   [`BenchConfig`] from this process's own engine, against its own server child.
//! - Alternation: the loop is repeats → workloads → models, and the model order rotates
//!   each repeat, so slow drift in the neighbours' load spreads over every model instead of
//!   landing on one.
//! - Medians of repeats, with the spread (max − min over median) shown beside them.
//! - Server CPU per message (from /proc) is reported next to throughput: on a shared
//!   machine it is the steadier figure.
//! - A clean slate: before each run compare waits (bounded) until the server holds no
//!   connection and no child serving one, so a run never starts while
//!   the previous one's connections are still closing ([`server::ServerProcess::settle`]).
//! - The iterative model serialises clients; it runs only the one-connection workloads and
//!   churn, and the tables say so rather than showing a number that measures the backlog.
//!
//! # Layout
//! - [`server`]: start, check and stop one server child.
//! - [`procfs`]: the server's CPU, memory, threads and processes.
//! - [`output`]: results.json and summary.md.
//! - [`charts`]: the data behind each chart (in results.json) and its SVG.
//! - [`html`]: index.html, the tables and the charts on one page.
//! - [`pin`]: client and server pinned to CPUs for the one-connection lesson.

pub mod charts;
pub mod html;
pub mod output;
pub mod pin;
pub mod procfs;
pub mod server;

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{CompareArgs, MODELS};
use crate::config::BenchConfig;
use crate::engine;
use crate::hold;
use output::{IdleResult, ModelStatus, Results, RunSample, WorkloadResults};
use server::ServerProcess;

/// One cell row of the matrix: a load every model runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workload {
    /// A short title: "64 B × 64 conns", "churn × 4".
    pub name: String,
    pub conns: usize,
    pub size: usize,
    pub churn: bool,
    /// Client and server pinned to CPUs (sched_setaffinity) for this workload; `None`: where
    /// the scheduler puts them.
    pub pin: Option<Placement>,
    /// UDP echo (sockets instead of connections), against the models that serve UDP.
    pub udp: bool,
}

/// Where a pinned workload puts the client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Both on the first CPU this process may use.
    SameCpu,
    /// The client on the first, the server on the second.
    DifferentCpus,
}

impl Placement {
    pub fn describe(self) -> &'static str {
        match self {
            Placement::SameCpu => "same CPU",
            Placement::DifferentCpus => "different CPUs",
        }
    }
}

/// The whole comparison's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub quick: bool,
    pub repeats: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub workloads: Vec<Workload>,
    /// Idle connections held for the memory step.
    pub idle_conns: usize,
}

impl Plan {
    /// The matrix (1, 8, 64, 512 connections; 64 B and 16 KiB; churn; 5,000 idle),
    /// or a reduced one that runs in about two minutes on 2 cores.
    pub fn new(quick: bool, repeats: Option<usize>) -> Plan {
        let closed = |conns: usize, size: usize| Workload {
            name: format!(
                "{} × {}",
                size_name(size),
                echolab_cli::counted(conns, "conn")
            ),
            conns,
            size,
            churn: false,
            pin: None,
            udp: false,
        };
        let churn = |slots: usize| Workload {
            name: format!("churn × {slots}"),
            conns: slots,
            size: 64,
            churn: true,
            pin: None,
            udp: false,
        };
        let pinned = |pin: Placement| Workload {
            name: format!("64 B × 1 conn, {}", pin.describe()),
            pin: Some(pin),
            ..closed(1, 64)
        };
        let udp = |sockets: usize| Workload {
            name: format!("UDP 64 B × {}", echolab_cli::counted(sockets, "socket")),
            udp: true,
            ..closed(sockets, 64)
        };
        let lesson = [pinned(Placement::SameCpu), pinned(Placement::DifferentCpus)];
        if quick {
            let mut workloads = vec![
                closed(1, 64),
                closed(8, 64),
                closed(64, 64),
                closed(8, 16 * 1024),
                churn(4),
            ];
            workloads.extend(lesson);
            workloads.push(udp(8));
            Plan {
                quick,
                repeats: repeats.unwrap_or(3),
                duration_secs: 0.3,
                warmup_secs: 0.1,
                workloads,
                idle_conns: 500,
            }
        } else {
            let mut workloads = Vec::new();
            for size in [64, 16 * 1024] {
                for conns in [1, 8, 64, 512] {
                    workloads.push(closed(conns, size));
                }
            }
            workloads.push(churn(16));
            workloads.extend(lesson);
            workloads.push(udp(1));
            workloads.push(udp(8));
            Plan {
                quick,
                repeats: repeats.unwrap_or(3),
                duration_secs: 2.0,
                warmup_secs: 0.5,
                workloads,
                idle_conns: 5_000,
            }
        }
    }

    fn bench_config(&self, addr: std::net::SocketAddr, workload: &Workload) -> BenchConfig {
        let mut config = BenchConfig::new(addr, workload.conns, workload.size);
        config.duration = Duration::from_secs_f64(self.duration_secs);
        config.warmup = Duration::from_secs_f64(self.warmup_secs);
        config.churn = workload.churn;
        config.stall_timeout = Duration::from_secs(5);
        config
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.trailing_zeros() >= 10 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Why a model does not run a workload, if it does not.
pub fn skip_reason(model: &str, workload: &Workload) -> Option<&'static str> {
    if workload.udp {
        // The list of UDP models is the UDP crate's: a model it learns to serve joins here.
        return echolab_udp::UdpModel::for_model(model)
            .is_err()
            .then_some("serves no UDP");
    }
    (model == "iterative" && !workload.churn && workload.conns > 1)
        .then_some("serialises clients: one connection at a time")
}

impl Plan {
    /// The most connections any step of the plan holds open at once (the largest
    /// workload, or the idle step), plus room for a previous run still closing and the
    /// settle probes:
    /// what each server is started with as `--max-conns`.
    pub fn max_conns(&self) -> usize {
        let busiest = self.workloads.iter().map(|w| w.conns).max().unwrap_or(0);
        busiest.max(self.idle_conns) + busiest + 64
    }
}

/// Why a model is not asked to hold idle connections, if it is not: idle clients would
/// hold its only thread (iterative) or every worker of its pool (prethreaded, the lecture's
/// limit), and the rest would wait unserved; that is the finding, not a memory figure.
pub fn idle_skip_reason(model: &str) -> Option<&'static str> {
    match model {
        "iterative" => Some("serialises clients: an idle client holds the only thread"),
        "prethreaded" => {
            Some("a fixed pool: idle clients hold every worker, the rest wait unserved")
        }
        _ => None,
    }
}

/// Runs `echolab compare` and returns its exit status: 0 when every started model ran
/// cleanly, 1 when a run had errors or nothing started, 2 for a bad argument.
pub fn run(args: CompareArgs) -> ExitCode {
    let stop = match crate::install_stop_flag() {
        Ok(stop) => stop,
        Err(err) => {
            echolab_cli::say!("echolab compare: cannot install the SIGINT/SIGTERM handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    crate::raise_fd_limit();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            echolab_cli::say!(
                "echolab compare: cannot find this executable to start servers: {err}"
            );
            return ExitCode::FAILURE;
        }
    };
    // Bad arguments before anything is created or started.
    if let Some(list) = &args.models {
        if let Some(twice) = list
            .iter()
            .find(|m| list.iter().filter(|n| n == m).count() > 1)
        {
            echolab_cli::say!(
                "echolab compare: --models {}: {twice} is named twice (each model runs once per repeat)",
                list.join(",")
            );
            return ExitCode::from(2);
        }
    }
    let refs = reference_servers(args.ref_dir.as_deref());
    if let (Some(dir), true) = (&args.ref_dir, refs.is_empty()) {
        echolab_cli::say!(
            "echolab compare: --ref-dir {}: holds neither ref_epoll nor ref_threads (scripts/build-ref.sh builds them)",
            dir.display()
        );
        return ExitCode::from(2);
    }
    if let Err(err) = std::fs::create_dir_all(&args.out) {
        echolab_cli::say!(
            "echolab compare: cannot create {}: {}",
            args.out.display(),
            engine::describe(&err)
        );
        return ExitCode::from(2);
    }
    let plan = Plan::new(args.quick, args.repeats);
    let names: Vec<String> = match &args.models {
        Some(list) if !list.is_empty() => list.clone(),
        _ => MODELS.iter().map(|m| m.to_string()).collect(),
    };
    let results = compare(&exe, &names, &refs, &plan, &stop);
    match write_outputs(&args.out, &results) {
        Ok(files) => {
            echolab_cli::say!("echolab compare: wrote");
            for file in files {
                echolab_cli::say!("  {}", file.display());
            }
        }
        Err(err) => {
            echolab_cli::say!("echolab compare: {err}");
            return ExitCode::FAILURE;
        }
    }
    let started = results.models.iter().filter(|m| m.error.is_none()).count();
    if started == 0 {
        echolab_cli::say!("echolab compare: no model started");
        return ExitCode::FAILURE;
    }
    if results.interrupted {
        return ExitCode::from(130);
    }
    if results.total_errors() > 0 {
        echolab_cli::say!("echolab compare: some runs had errors (see summary.md)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Writes results.json, summary.md and the charts; returns their paths.
fn write_outputs(out: &Path, results: &Results) -> Result<Vec<PathBuf>, String> {
    let json_path = out.join("results.json");
    let mut doc =
        serde_json::to_value(results).map_err(|err| format!("cannot encode results: {err}"))?;
    echolab_cli::provenance::stamp(&mut doc);
    let json = serde_json::to_string_pretty(&doc)
        .map_err(|err| format!("cannot encode results: {err}"))?;
    std::fs::write(&json_path, json).map_err(|err| {
        format!(
            "cannot write {}: {}",
            json_path.display(),
            engine::describe(&err)
        )
    })?;
    let md_path = out.join("summary.md");
    std::fs::write(&md_path, output::summary_markdown(results)).map_err(|err| {
        format!(
            "cannot write {}: {}",
            md_path.display(),
            engine::describe(&err)
        )
    })?;
    let mut files = vec![json_path, md_path];
    files.extend(charts::write_all(out, results)?);
    let html_path = out.join("index.html");
    std::fs::write(&html_path, html::page(results)).map_err(|err| {
        format!(
            "cannot write {}: {}",
            html_path.display(),
            engine::describe(&err)
        )
    })?;
    files.push(html_path);
    Ok(files)
}

/// A step counter shown as a bar on a terminal and as lines otherwise.
#[derive(Debug)]
struct Steps {
    bar: Option<ProgressBar>,
    done: u64,
    total: u64,
}

impl Steps {
    fn new(total: u64) -> Steps {
        let bar = io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Steps {
            bar,
            done: 0,
            total,
        }
    }

    /// Announces the step about to run.
    fn start(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    /// Reports a finished step and its outcome.
    fn finish(&mut self, what: &str, outcome: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                if outcome.contains("error") || outcome.contains("fail") {
                    bar.println(format!("{what}: {outcome}"));
                }
            }
            None => echolab_cli::say!("[{}/{}] {what}: {outcome}", self.done, self.total),
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => echolab_cli::say!("{line}"),
        }
    }

    fn end(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A reference C server compare can run: its name and its command.
#[derive(Debug, Clone)]
pub struct Reference {
    pub name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// The reference C servers found in `dir` (default `target/ref`, where
/// scripts/build-ref.sh builds them): ref_epoll with one loop per core (as the reactor),
/// ref_threads (a thread per connection). Missing ones are left out.
pub fn reference_servers(dir: Option<&Path>) -> Vec<Reference> {
    let dir = dir.map_or_else(|| PathBuf::from("target/ref"), Path::to_path_buf);
    let cores = crate::config::cores().to_string();
    [
        ("ref_epoll", vec!["-t".to_string(), cores]),
        ("ref_threads", Vec::new()),
    ]
    .into_iter()
    .map(|(name, args)| Reference {
        name: name.to_string(),
        path: dir.join(name),
        args,
    })
    .filter(|r| r.path.is_file())
    .collect()
}

/// Starts each server with `start`, recording its status; returns those that started.
fn start_all<'a>(
    what: impl Iterator<Item = &'a str>,
    statuses: &mut Vec<ModelStatus>,
    stop: &AtomicBool,
    mut start: impl FnMut(&str) -> Result<ServerProcess, String>,
) -> Vec<ServerProcess> {
    let startup = Steps::new(0);
    let mut servers = Vec::new();
    for name in what {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        startup.start(&format!("starting {name}"));
        match start(name) {
            Ok(server) => {
                statuses.push(ModelStatus {
                    name: name.to_string(),
                    addr: Some(server.addr.to_string()),
                    error: None,
                    udp: server.udp,
                });
                servers.push(server);
            }
            Err(why) => {
                startup.note(&format!("model {name} did not start: {why}"));
                statuses.push(ModelStatus {
                    name: name.to_string(),
                    addr: None,
                    error: Some(why),
                    udp: false,
                });
            }
        }
    }
    startup.end();
    servers
}

/// Starts the models, runs the matrix and the idle step, stops the models.
fn compare(
    exe: &Path,
    names: &[String],
    refs: &[Reference],
    plan: &Plan,
    stop: &AtomicBool,
) -> Results {
    let machine = output::Machine::here();
    let mut statuses = Vec::new();
    let mut servers = start_all(
        names.iter().map(String::as_str),
        &mut statuses,
        stop,
        |name| ServerProcess::start(exe, name, plan.max_conns()),
    );
    servers.extend(start_all(
        refs.iter().map(|r| r.name.as_str()),
        &mut statuses,
        stop,
        |name| {
            let r = refs
                .iter()
                .find(|r| r.name == name)
                .expect("a listed reference");
            ServerProcess::start_reference(&r.path, &r.name, &r.args)
        },
    ));
    // UDP servers of their own (`serve --udp-only`): a UDP loop beside a TCP model would
    // add its threads to that model's TCP figures.
    let udp_names: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| echolab_udp::UdpModel::for_model(n).is_ok())
        .collect();
    let mut udp_servers = if plan.workloads.iter().any(|w| w.udp) {
        start_all(udp_names.into_iter(), &mut statuses, stop, |name| {
            ServerProcess::start_udp(exe, name)
        })
    } else {
        Vec::new()
    };
    let allowed = pin::allowed_cpus();
    let mut plan = plan.clone();
    let mut notes = Vec::new();
    plan.workloads.retain(|w| match w.pin {
        Some(p) if pin::cpus_for(p, &allowed).is_none() => {
            notes.push(format!(
                "{} left out: this process may run on {} CPU(s) ({allowed:?})",
                w.name,
                allowed.len()
            ));
            false
        }
        _ => true,
    });
    let plan = &plan;

    let mut workloads: Vec<WorkloadResults> = plan
        .workloads
        .iter()
        .map(|w| {
            // A UDP workload lists every model, so that one without UDP says so in its row.
            let names = servers
                .iter()
                .map(|s| s.model.as_str())
                .filter(|m| !(w.udp && charts::is_reference(m)));
            WorkloadResults::new(w.clone(), names)
        })
        .collect();
    let runs_per_repeat: u64 = plan
        .workloads
        .iter()
        .map(|w| {
            let list = if w.udp { &udp_servers } else { &servers };
            list.iter()
                .filter(|s| skip_reason(&s.model, w).is_none())
                .count() as u64
        })
        .sum();
    let idle_steps = servers
        .iter()
        .filter(|s| idle_skip_reason(&s.model).is_none())
        .count() as u64;
    let mut steps = Steps::new(runs_per_repeat * plan.repeats as u64 + idle_steps);

    let mut interrupted = false;
    'matrix: for repeat in 0..plan.repeats {
        for (workload_idx, workload) in plan.workloads.iter().enumerate() {
            let list = if workload.udp {
                &mut udp_servers
            } else {
                &mut servers
            };
            for k in 0..list.len() {
                // Rotate the order each repeat: no model always runs first (or last).
                let server_idx = (k + repeat) % list.len();
                if stop.load(Ordering::Relaxed) {
                    interrupted = true;
                    break 'matrix;
                }
                let server = &mut list[server_idx];
                if skip_reason(&server.model, workload).is_some() {
                    continue;
                }
                let what = format!(
                    "run {}/{} {} {}",
                    repeat + 1,
                    plan.repeats,
                    server.model,
                    workload.name
                );
                steps.start(&what);
                let sample = if workload.udp {
                    run_udp(server, plan, workload, stop)
                } else {
                    run_one(server, plan, workload, &allowed, stop)
                };
                let outcome = match &sample.error {
                    Some(err) => format!("error: {err}"),
                    None => format!(
                        "{:.0}/s, p99 {:.0} µs, {:.2} µs CPU/msg",
                        sample.messages_per_sec, sample.p99_us, sample.server_cpu_us_per_msg
                    ),
                };
                steps.finish(&what, &outcome);
                workloads[workload_idx].push(&server.model, sample);
            }
        }
    }

    let mut idle = Vec::new();
    if !interrupted {
        for server in servers.iter_mut() {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            if let Some(why) = idle_skip_reason(&server.model) {
                idle.push(IdleResult::skipped(&server.model, why));
                continue;
            }
            let what = format!("hold {} idle conns on {}", plan.idle_conns, server.model);
            steps.start(&what);
            let result = run_idle(server, plan.idle_conns);
            let outcome = match &result.error {
                Some(err) => format!("error: {err}"),
                None => format!("{:.1} KiB per idle connection", result.kib_per_conn),
            };
            steps.finish(&what, &outcome);
            idle.push(result);
        }
    }
    steps.end();
    for server in servers.iter_mut().chain(udp_servers.iter_mut()) {
        if !server.stop() {
            echolab_cli::say!(
                "echolab compare: model {} did not stop within 3 s of SIGTERM and was killed",
                server.model
            );
        }
    }
    for w in &mut workloads {
        w.summarise();
    }
    let mut results = Results {
        machine,
        plan: plan.clone(),
        models: statuses,
        workloads,
        idle_conns: plan.idle_conns,
        idle,
        interrupted,
        notes,
        charts: Vec::new(),
    };
    results.charts = charts::data(&results);
    results
}

/// One run of `workload` against `server`, with the server's CPU over it and its memory
/// sampled halfway through the measured window.
fn run_one(
    server: &mut ServerProcess,
    plan: &Plan,
    workload: &Workload,
    allowed: &[usize],
    stop: &AtomicBool,
) -> RunSample {
    let Some(pid) = server.pid() else {
        return RunSample::failed("the server is not running".to_string());
    };
    let Some(placement) = workload.pin else {
        return measure(server, pid, plan, workload, stop);
    };
    let Some((client_cpu, server_cpu)) = pin::cpus_for(placement, allowed) else {
        return RunSample::failed(format!("{} needs more CPUs", placement.describe()));
    };
    // The server first (its threads, its children), then this thread, whose mask the
    // bench's threads inherit; both restored to every allowed CPU afterwards.
    let pinned =
        pin::pin_process(pid, &[server_cpu]).and_then(|()| pin::pin_this_thread(&[client_cpu]));
    let sample = match pinned {
        Ok(()) => measure(server, pid, plan, workload, stop),
        Err(err) => RunSample::failed(format!("cannot pin: {}", engine::describe(&err))),
    };
    let _ = pin::pin_this_thread(allowed);
    let _ = pin::pin_process(pid, allowed);
    sample
}

/// One UDP run against a `--udp-only` server, with the server's CPU over it.
fn run_udp(
    server: &mut ServerProcess,
    plan: &Plan,
    workload: &Workload,
    stop: &AtomicBool,
) -> RunSample {
    let Some(pid) = server.pid() else {
        return RunSample::failed("the server is not running".to_string());
    };
    let config = echolab_udp::bench::UdpBenchConfig {
        addr: server.addr,
        n_conns: workload.conns,
        size: workload.size,
        duration: Duration::from_secs_f64(plan.duration_secs),
        count: None,
        rate: None,
        timeout: Duration::from_millis(500),
        n_threads: echolab_udp::default_workers().min(workload.conns),
    };
    let before = procfs::read(pid).ok();
    let report = echolab_udp::bench::run(&config, stop);
    let after = procfs::read(pid).ok();
    let report = match report {
        Ok(report) => report,
        Err(err) => return RunSample::failed(engine::describe(&err)),
    };
    let cpu_secs = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
        _ => None,
    };
    let mut sample = RunSample::from_udp_report(&report, cpu_secs, after);
    if !server.is_running() {
        sample
            .error
            .get_or_insert_with(|| "the server exited during the run".to_string());
    }
    sample
}

/// One TCP run, measured: the bench, the server's CPU and its memory halfway.
fn measure(
    server: &mut ServerProcess,
    pid: u32,
    plan: &Plan,
    workload: &Workload,
    stop: &AtomicBool,
) -> RunSample {
    let config = plan.bench_config(server.addr, workload);
    // The previous run's connections first finish closing on the server's side, so that
    // neither its open descriptors nor the CPU of closing them land on this run.
    let settled = server.settle();
    let before = procfs::read(pid).ok();
    let halfway = config.warmup + config.duration / 2;
    let (run_done, halfway_or_done) = mpsc::channel::<()>();
    let (report, during) = thread::scope(|scope| {
        let sampler = scope.spawn(move || {
            // Sample while the load runs, when the connections are open and busy. One
            // timed wait, cut short if the run ends first (an error, Ctrl-C).
            match halfway_or_done.recv_timeout(halfway) {
                Err(mpsc::RecvTimeoutError::Timeout) => procfs::read(pid).ok(),
                _ => None,
            }
        });
        let report = engine::run(&config, stop, Duration::from_secs(1), |_| {});
        drop(run_done);
        (report, sampler.join().ok().flatten())
    });
    // And this run's own closing is charged to this run.
    let _ = server.settle();
    let after = procfs::read(pid).ok();
    let report = match report {
        Ok(report) => report,
        Err(err) => return RunSample::failed(err.to_string()),
    };
    let cpu_secs = match (before, after) {
        (Some(b), Some(a)) => Some(a.cpu_secs - b.cpu_secs),
        _ => None,
    };
    let loaded_secs = plan.warmup_secs + plan.duration_secs;
    let mut sample = RunSample::from_report(&report, workload.size, loaded_secs, cpu_secs, during);
    if workload.churn {
        // Churn counts completed connections, not connections served: none stay unserved.
        sample.unserved_conns = 0;
    }
    sample.settle_ms = settled.waited.as_secs_f64() * 1e3;
    sample.leftover_conns = settled.leftover_conns;
    sample.leftover_children = settled.leftover_children;
    if !server.is_running() {
        sample
            .error
            .get_or_insert_with(|| "the server exited during the run".to_string());
    }
    sample
}

/// Holds `n_conns` idle connections on `server` and reads what they cost it.
fn run_idle(server: &mut ServerProcess, n_conns: usize) -> IdleResult {
    let Some(pid) = server.pid() else {
        return IdleResult::skipped(&server.model, "the server is not running");
    };
    let before = procfs::read(pid).ok();
    let held = hold::hold(server.addr, n_conns, Duration::from_secs(30));
    let during = procfs::read(pid).ok();
    let result = match (&held, before, during) {
        (Ok(_), Some(before), Some(during)) => {
            IdleResult::measured(&server.model, n_conns, before, during)
        }
        (Err(why), _, _) => IdleResult::failed(&server.model, why.clone()),
        _ => IdleResult::failed(
            &server.model,
            "cannot read the server's /proc entries".to_string(),
        ),
    };
    drop(held);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_workloads_run_the_models_the_udp_crate_serves() {
        let plan = Plan::new(true, None);
        let udp = plan
            .workloads
            .iter()
            .find(|w| w.udp)
            .expect("a UDP workload");
        let serving: Vec<&str> = MODELS
            .iter()
            .copied()
            .filter(|m| skip_reason(m, udp).is_none())
            .collect();
        let expected: Vec<&str> = MODELS
            .iter()
            .copied()
            .filter(|m| echolab_udp::UdpModel::for_model(m).is_ok())
            .collect();
        assert_eq!(serving, expected);
        assert!(serving.contains(&"reactor") && !serving.contains(&"thread"));
        assert_eq!(skip_reason("ref_epoll", udp), Some("serves no UDP"));
        // And a TCP workload is not refused to a model for serving no UDP.
        assert_eq!(skip_reason("thread", &plan.workloads[0]), None);
    }

    #[test]
    fn both_plans_pin_one_connection_both_ways() {
        for quick in [true, false] {
            let plan = Plan::new(quick, None);
            let pins: Vec<Option<Placement>> = plan
                .workloads
                .iter()
                .filter(|w| w.pin.is_some())
                .map(|w| w.pin)
                .collect();
            assert_eq!(
                pins,
                [Some(Placement::SameCpu), Some(Placement::DifferentCpus)]
            );
            assert!(plan
                .workloads
                .iter()
                .filter(|w| w.pin.is_some())
                .all(|w| w.conns == 1 && !w.udp && !w.churn));
        }
    }

    #[test]
    fn references_are_found_where_build_ref_puts_them() {
        let dir = std::env::temp_dir().join(format!("echolab-refs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(reference_servers(Some(&dir)).is_empty());
        std::fs::write(dir.join("ref_threads"), b"").unwrap();
        let found = reference_servers(Some(&dir));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "ref_threads");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
