//! `bench --hold N` past one process's descriptor limit: the hold split among worker
//! processes of this same binary, and their results added into one report.
//!
//! A process opens at most `RLIMIT_NOFILE` descriptors, and where the hard limit cannot be
//! raised (no CAP_SYS_RESOURCE) more connections need more processes. [`split`] gives each
//! worker a share of the connection numbers `0..N` (so the spread over `--source-ip` is
//! the one a single process would make) and the `--active K` measured connections to the
//! first. Each worker is the same command line re-executed with [`WORKER_ENV`] set to its
//! share; the protocol over its pipes:
//!
//! 1. the worker establishes its share and prints one line, `{"ready": true, ...}`;
//! 2. once every worker is ready, the supervising bench writes `go` on each one's stdin
//!    (or closes it, when interrupted or a worker died: no window is run);
//! 3. the first worker runs the measured connections; the others hold theirs until their
//!    stdin closes, which the supervisor does when the first has reported (or, with
//!    `--active 0`, after `--duration`);
//! 4. each prints its `--json` document and exits.
//!
//! The held counts add up (established, failed by kind, still open); the time to
//! establish is the supervisor's, from the first worker started to the last ready. A
//! worker that dies, or reports an error, is named with its exit status, and its share
//! is counted as failed (`worker_died`), never as held.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::BenchArgs;
use crate::config::BenchConfig;
use crate::idle::{listen_words, ListenCounters, SPARE_FDS};

/// The environment variable that makes `bench --hold` a worker of another:
/// `INDEX,FIRST,COUNT,ACTIVE` (its number, its first connection number, how many it
/// holds, how many measured connections it runs).
pub const WORKER_ENV: &str = "ECHOLAB_HOLD_WORKER";

/// The most worker processes one bench starts.
pub const MAX_WORKERS: u64 = 1_024;

/// The key of a worker's document that carries its report as text.
pub const REPORT_TEXT: &str = "report_text";

/// One worker's part of the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u64,
    /// Its first connection number (of `0..N`).
    pub first: u64,
    /// Connections it holds.
    pub count: u64,
    /// Measured connections it runs beside them.
    pub active: u64,
}

impl Share {
    fn env_value(&self) -> String {
        format!(
            "{},{},{},{}",
            self.index, self.first, self.count, self.active
        )
    }

    fn parse(text: &str) -> Result<Share, String> {
        let fields: Vec<u64> = text
            .split(',')
            .map(|f| f.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{WORKER_ENV}={text:?}: not INDEX,FIRST,COUNT,ACTIVE"))?;
        match fields[..] {
            [index, first, count, active] => Ok(Share {
                index,
                first,
                count,
                active,
            }),
            _ => Err(format!(
                "{WORKER_ENV}={text:?}: not INDEX,FIRST,COUNT,ACTIVE"
            )),
        }
    }
}

/// This process's share when it is a hold worker ([`WORKER_ENV`] set), or `None`.
pub fn worker_share() -> Result<Option<Share>, String> {
    share_of(std::env::var_os(WORKER_ENV))
}

/// The share [`WORKER_ENV`]'s value gives (`None`: not a worker).
fn share_of(value: Option<std::ffi::OsString>) -> Result<Option<Share>, String> {
    match value.map(|v| v.into_string()) {
        None => Ok(None),
        Some(Ok(text)) => Share::parse(&text).map(Some),
        Some(Err(_)) => Err(format!("{WORKER_ENV}: not INDEX,FIRST,COUNT,ACTIVE")),
    }
}

/// Splits `n` held connections and `active` measured ones among the fewest workers
/// that each keep at most `cap` connections, as evenly as possible; the first worker
/// runs the measured ones. One line when `active` alone does not fit in one worker, or
/// more than [`MAX_WORKERS`] would be needed.
pub fn split(n: u64, active: u64, cap: u64) -> Result<Vec<Share>, String> {
    if active >= cap {
        return Err(format!(
            "--active {active} does not fit in one process beside a held connection: it may keep {cap} connections"
        ));
    }
    let total = n + active;
    let workers = total.div_ceil(cap).max(1);
    if workers > MAX_WORKERS {
        return Err(format!(
            "--hold {n} needs more than {MAX_WORKERS} worker processes of at most {cap} connections each"
        ));
    }
    // Even totals, the first worker's including the measured connections. The fewest
    // workers always suffice: each total is at most ceil(total / workers) <= cap; and
    // when `active` exceeds that even total, the first holds none and the others' n
    // fit, since n > (workers - 1) * cap would make active > cap.
    let first_total = total.div_ceil(workers);
    let first_held = first_total.saturating_sub(active).min(n);
    let rest = n - first_held;
    let others = workers - 1;
    let mut shares = vec![Share {
        index: 0,
        first: 0,
        count: first_held,
        active,
    }];
    let mut next = first_held;
    for k in 0..others {
        let count = rest / others + u64::from(k < rest % others);
        shares.push(Share {
            index: k + 1,
            first: next,
            count,
            active: 0,
        });
        next += count;
    }
    Ok(shares)
}

/// In a worker: says its share is held (`established` of it) and waits for the word to
/// start its window; `false` when the supervisor closed its stdin instead.
pub fn ready(established: u64) -> bool {
    let mut out = io::stdout().lock();
    let line = json!({ "ready": true, "established": established });
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        return false;
    }
    drop(out);
    let mut word = String::new();
    io::stdin().lock().read_line(&mut word).is_ok() && word.trim() == "go"
}

/// In a worker without measured connections: holds until the supervisor closes stdin.
pub fn wait_for_end() {
    let mut rest = Vec::new();
    let _ = io::stdin().lock().read_to_end(&mut rest);
}

/// Writes `line` and its newline on stderr in one write: the workers share the
/// supervisor's stderr, and `eprintln!` may write a line in pieces that another
/// process's pieces land between.
pub fn say(line: &str) {
    let mut whole = String::with_capacity(line.len() + 1);
    whole.push_str(line);
    whole.push('\n');
    let _ = io::stderr().lock().write_all(whole.as_bytes());
}

/// What a worker's stdout said.
enum Said {
    Ready,
    Doc(String),
    End,
}

/// A running (or finished) worker, as the supervisor sees it.
struct Worker {
    share: Share,
    pid: Option<u32>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    ready_secs: Option<f64>,
    doc: Option<String>,
    ended: bool,
    status: Option<ExitStatus>,
    start_error: Option<String>,
}

/// Reads a worker's stdout: its ready line, then its document, then the end.
fn read_worker(index: usize, stdout: impl Read, tx: mpsc::Sender<(usize, Said)>) {
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    if matches!(reader.read_line(&mut first), Ok(n) if n > 0) {
        if let Ok(line) = serde_json::from_str::<Value>(first.trim()) {
            if line.get("ready").is_some() {
                let _ = tx.send((index, Said::Ready));
                first.clear();
            }
        }
        let _ = reader.read_to_string(&mut first);
        if !first.trim().is_empty() {
            let _ = tx.send((index, Said::Doc(first)));
        }
    }
    let _ = tx.send((index, Said::End));
}

/// Why a worker's exit is not a report, in words.
fn exit_words(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => {
                let name = nix::sys::signal::Signal::try_from(sig)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                format!("killed by signal {sig}{name}")
            }
            (None, None) => format!("ended: {s}"),
        },
        None => "could not be waited for".to_string(),
    }
}

/// One worker's outcome: its `--json` document, or why there is none.
#[derive(Debug)]
pub struct Outcome {
    pub share: Share,
    pub pid: Option<u32>,
    pub doc: Option<Value>,
    pub died: Option<String>,
    pub ready_secs: Option<f64>,
}

/// Adds the workers' holds up: the `hold` object of the one report, with a line per
/// worker under `workers`. `establish_secs` is the time from the start to the last
/// worker ready (`all_ready_secs`); `listen` the listen-queue counters' growth over it.
pub fn combine(
    requested: u64,
    outcomes: &[Outcome],
    all_ready_secs: f64,
    listen: Option<ListenCounters>,
) -> Value {
    let mut established = 0u64;
    let mut still_open = 0u64;
    let mut interrupted = false;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_error: Option<String> = None;
    let mut per_worker = Vec::with_capacity(outcomes.len());
    for o in outcomes {
        let hold = o.doc.as_ref().and_then(|d| d.get("hold"));
        let u = |key: &str| {
            hold.and_then(|h| h.get(key))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let mut line = json!({
            "index": o.share.index,
            "pid": o.pid,
            "first": o.share.first,
            "requested": o.share.count,
            "active": o.share.active,
            "ready_secs": o.ready_secs,
            "exit_code": o.doc.as_ref().and_then(|d| d.get("exit_code")).cloned(),
        });
        match hold.filter(|_| o.died.is_none()) {
            None => {
                let why = o
                    .died
                    .clone()
                    .unwrap_or_else(|| "reported no hold".to_string());
                *kinds.entry("worker_died".to_string()).or_insert(0) += o.share.count;
                first_error.get_or_insert(format!(
                    "hold worker {} (pid {}): {why}",
                    o.share.index,
                    o.pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".to_string())
                ));
                line["died"] = json!(why);
            }
            Some(hold) => {
                established += u("established");
                still_open += u("still_open");
                interrupted |= hold.get("interrupted") == Some(&Value::Bool(true));
                if let Some(Value::Object(by_kind)) = hold.get("failed_by_kind") {
                    for (kind, count) in by_kind {
                        *kinds.entry(kind.clone()).or_insert(0) += count.as_u64().unwrap_or(0);
                    }
                }
                if first_error.is_none() {
                    first_error = hold
                        .get("first_error")
                        .and_then(Value::as_str)
                        .map(|e| format!("hold worker {}: {e}", o.share.index));
                }
                for key in ["established", "failed", "establish_secs", "still_open"] {
                    line[key] = hold.get(key).cloned().unwrap_or(Value::Null);
                }
            }
        }
        per_worker.push(line);
    }
    let failed: u64 = kinds.values().sum();
    let rate = if all_ready_secs > 0.0 {
        established as f64 / all_ready_secs
    } else {
        0.0
    };
    json!({
        "requested": requested,
        "established": established,
        "failed": failed,
        "failed_by_kind": kinds,
        "first_error": first_error,
        "establish_secs": all_ready_secs,
        "connect_rate": rate,
        "still_open": still_open,
        "interrupted": interrupted,
        "listen_overflows": listen.map(|l| l.overflows),
        "listen_drops": listen.map(|l| l.drops),
        "workers": per_worker,
    })
}

/// Receives what the workers say until `done` holds, every reader has ended, or `until`
/// passes. A stop flag set (SIGINT, SIGTERM) is forwarded to every worker as SIGTERM,
/// once.
fn pump(
    rx: &mpsc::Receiver<(usize, Said)>,
    workers: &mut [Worker],
    t0: Instant,
    stop: &AtomicBool,
    forwarded: &mut bool,
    until: Option<Instant>,
    done: impl Fn(&[Worker]) -> bool,
) {
    loop {
        if stop.load(Ordering::Relaxed) && !*forwarded {
            *forwarded = true;
            for w in workers.iter() {
                if let (Some(pid), false) = (w.pid, w.ended) {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
        }
        if done(workers) {
            return;
        }
        if until.is_some_and(|t| Instant::now() >= t) {
            return;
        }
        let wait = until
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::MAX)
            .min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok((i, Said::Ready)) => {
                workers[i].ready_secs = Some(t0.elapsed().as_secs_f64());
            }
            Ok((i, Said::Doc(text))) => workers[i].doc = Some(text),
            Ok((i, Said::End)) => workers[i].ended = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The document of a worker not started because the run was interrupted first: it holds
/// none of its share, and fails none.
fn not_started(share: &Share) -> Value {
    json!({
        "workload": "hold",
        "messages": 0,
        "interrupted": true,
        "hold": {
            "requested": share.count,
            "established": 0,
            "failed": 0,
            "failed_by_kind": {},
            "first_error": null,
            "establish_secs": 0.0,
            "still_open": 0,
            "interrupted": true,
        },
        "exit_code": 130,
    })
}

/// Debug builds only: whether a stop is injected at worker `index`'s start, when
/// `ECHOLAB_FAULT_BENCH` holds `hold-stop=INDEX`: that worker gets SIGTERM before its
/// exec (the forwarded stop, before its handlers are in), and this process SIGINT right
/// after it started, so that a test can interrupt a hold while its workers are still
/// starting (a Ctrl-C's moment is not a test's to pick). Release builds: never.
fn injected_stop_at(index: usize) -> bool {
    cfg!(debug_assertions)
        && std::env::var("ECHOLAB_FAULT_BENCH")
            .ok()
            .and_then(|spec| spec.strip_prefix("hold-stop=")?.parse::<usize>().ok())
            == Some(index)
}

/// Runs a hold too big for this process (`soft` descriptors, `hard` limit) in worker
/// processes, and prints the one report (see the module docs).
pub fn run(
    args: &BenchArgs,
    config: &BenchConfig,
    soft: u64,
    hard: u64,
    stop: &AtomicBool,
) -> ExitCode {
    let fail = |message: &str, code: u8| {
        say(&format!("echolab bench: {message}"));
        if args.json {
            echolab_cli::print_out(&crate::bench::error_json(message, code));
        }
        ExitCode::from(code)
    };
    // A worker never starts workers of its own, whatever it was told: a tree of hold
    // processes each splitting again would be a fork bomb.
    if std::env::var_os(WORKER_ENV).is_some() {
        return fail(
            &format!("{WORKER_ENV} is set: a hold worker does not split its share"),
            2,
        );
    }
    let n = args.hold.unwrap_or(0);
    let active = args.active.unwrap_or(config.n_conns) as u64;
    let cap = soft.saturating_sub(SPARE_FDS);
    let shares = match split(n, active, cap) {
        Ok(shares) => shares,
        Err(err) => return fail(&format!("{err} (descriptor limit {soft}, hard {hard})"), 2),
    };
    // This process keeps two pipes per worker (its stdin and stdout) until it ends.
    let room = cap / 2;
    if shares.len() as u64 > room {
        return fail(
            &format!(
                "--hold {n} needs {} worker processes, and this process, which keeps two pipes per worker, may open {soft} descriptors (hard limit {hard}): room for {room}",
                shares.len()
            ),
            2,
        );
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            return fail(
                &format!("cannot find this program to start workers: {err}"),
                1,
            )
        }
    };
    say(&format!(
        "holding {n} connections to {} in {} worker processes: one process may open {soft} descriptors (hard limit {hard})",
        config.addr,
        shares.len()
    ));
    let t0 = Instant::now();
    let listen_before = ListenCounters::now();
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(shares.len());
    let supervisor = std::process::id();
    for (i, share) in shares.iter().enumerate() {
        // Interrupted while starting them: the rest are not started (see `not_started`).
        if stop.load(Ordering::Relaxed) {
            workers.push(Worker {
                share: *share,
                pid: None,
                child: None,
                stdin: None,
                ready_secs: None,
                doc: Some(not_started(share).to_string()),
                ended: true,
                status: None,
                start_error: None,
            });
            continue;
        }
        let mut command = Command::new(&exe);
        command
            .args(std::env::args_os().skip(1))
            .env(WORKER_ENV, share.env_value())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C reaches the supervisor only, which forwards
            // it once (a second signal would end a worker before it reports).
            .process_group(0);
        // The kernel kills the worker when the supervisor dies: no worker outlives a
        // supervisor that was killed outright (its own process group keeps it from a
        // Ctrl-C or a test's kill of the supervisor).
        echolab_sys::die_with_parent(&mut command, supervisor);
        // The stop this process forwards may reach a worker before its handlers are in
        // (a Ctrl-C while workers start): it waits, pending, and interrupts the worker
        // instead of killing it (which read as a worker that died, exit 1).
        echolab_sys::start_with_stop_signals_blocked(&mut command);
        if injected_stop_at(i) {
            // The forwarded stop, as early as it can come: before the worker's exec.
            echolab_sys::signal_before_exec(&mut command, libc::SIGTERM);
        }
        let spawned = command.spawn();
        let mut worker = Worker {
            share: *share,
            pid: None,
            child: None,
            stdin: None,
            ready_secs: None,
            doc: None,
            ended: true,
            status: None,
            start_error: None,
        };
        match spawned {
            Ok(mut child) => {
                worker.pid = Some(child.id());
                worker.stdin = child.stdin.take();
                worker.ended = false;
                let stdout = child.stdout.take().expect("piped");
                let tx = tx.clone();
                std::thread::spawn(move || read_worker(i, stdout, tx));
                worker.child = Some(child);
                say(&format!(
                    "hold worker {} (pid {}): connections {}..{}{}",
                    share.index,
                    worker.pid.unwrap_or(0),
                    share.first,
                    share.first + share.count,
                    if share.active > 0 {
                        format!(" and the {} measured", share.active)
                    } else {
                        String::new()
                    }
                ));
            }
            Err(err) => worker.start_error = Some(format!("could not be started: {err}")),
        }
        workers.push(worker);
        if injected_stop_at(i) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGINT);
        }
    }
    drop(tx);
    let mut forwarded = false;
    // 1. Every worker holds its share (or has ended).
    pump(&rx, &mut workers, t0, stop, &mut forwarded, None, |ws| {
        ws.iter().all(|w| w.ended || w.ready_secs.is_some())
    });
    let all_ready_secs = t0.elapsed().as_secs_f64();
    let listen = ListenCounters::now()
        .zip(listen_before)
        .map(|(after, before)| after.since(before));
    let all_ready = workers.iter().all(|w| w.ready_secs.is_some() && !w.ended);
    say(&format!(
        "held by {} of {} workers in {all_ready_secs:.3} s",
        workers.iter().filter(|w| w.ready_secs.is_some()).count(),
        workers.len()
    ));
    // 2. The window: every worker at once, or none when one died or a signal came.
    if all_ready && !stop.load(Ordering::Relaxed) {
        for w in &mut workers {
            if let Some(stdin) = w.stdin.as_mut() {
                let _ = stdin.write_all(b"go\n").and_then(|()| stdin.flush());
            }
        }
        let any_gone = |ws: &[Worker]| ws.iter().any(|w| w.ended && w.doc.is_none());
        if active > 0 {
            pump(&rx, &mut workers, t0, stop, &mut forwarded, None, |ws| {
                ws[0].doc.is_some() || ws[0].ended || any_gone(ws)
            });
        } else {
            let end = Instant::now() + config.duration;
            pump(
                &rx,
                &mut workers,
                t0,
                stop,
                &mut forwarded,
                Some(end),
                |ws| stop.load(Ordering::Relaxed) || ws.iter().any(|w| w.ended),
            );
        }
    }
    // 3. The end of the window: every worker reports and exits.
    for w in &mut workers {
        w.stdin = None;
    }
    pump(&rx, &mut workers, t0, stop, &mut forwarded, None, |ws| {
        ws.iter().all(|w| w.ended)
    });
    for w in &mut workers {
        if let Some(mut child) = w.child.take() {
            w.status = child.wait().ok();
        }
    }
    let outcomes: Vec<Outcome> = workers
        .iter()
        .map(|w| {
            let doc = w
                .doc
                .as_deref()
                .and_then(|text| serde_json::from_str::<Value>(text).ok());
            let error = doc
                .as_ref()
                .and_then(|d| d.get("error"))
                .and_then(Value::as_str)
                .map(|e| format!("{e} ({})", exit_words(w.status)));
            let died = w.start_error.clone().or(error).or_else(|| {
                doc.as_ref()
                    .and_then(|d| d.get("hold"))
                    .is_none()
                    .then(|| format!("{} before reporting", exit_words(w.status)))
            });
            Outcome {
                share: w.share,
                pid: w.pid,
                doc,
                died,
                ready_secs: w.ready_secs,
            }
        })
        .collect();
    let hold = combine(n, &outcomes, all_ready_secs, listen);
    report(args, config, active, stop, &outcomes, hold)
}

/// Prints the one report of the workers' outcomes and returns the exit status.
fn report(
    args: &BenchArgs,
    config: &BenchConfig,
    active: u64,
    stop: &AtomicBool,
    outcomes: &[Outcome],
    hold: Value,
) -> ExitCode {
    let n = hold["requested"].as_u64().unwrap_or(0);
    let u = |key: &str| hold[key].as_u64().unwrap_or(0);
    let (established, failed, still_open) = (u("established"), u("failed"), u("still_open"));
    let interrupted = hold["interrupted"] == true || stop.load(Ordering::Relaxed);
    let measured = outcomes
        .first()
        .filter(|o| o.died.is_none() && active > 0)
        .and_then(|o| o.doc.clone());
    let code = match &measured {
        Some(doc) => doc["exit_code"].as_u64().unwrap_or(1),
        None if active > 0 => 1,
        None if interrupted => 130,
        None => 0,
    };
    let held_ok = failed == 0 && still_open == established && established == n;
    // An interrupted hold is 130 (README: "an interrupted one 130, before any threshold"),
    // held in full or not; otherwise a hold not held in full is 1.
    let code = if held_ok || code != 0 && code != 130 || interrupted && code == 130 {
        code
    } else {
        1
    };
    let code = u8::try_from(code).unwrap_or(1);
    let mut out = echolab_cli::stdout();
    if args.json {
        let mut doc = match measured {
            Some(mut doc) => {
                if let Some(map) = doc.as_object_mut() {
                    map.remove(REPORT_TEXT);
                }
                doc
            }
            None => json!({ "workload": "hold", "messages": 0, "interrupted": interrupted }),
        };
        doc["hold"] = hold;
        doc["exit_code"] = json!(code);
        echolab_cli::provenance::stamp(&mut doc);
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON of plain values")
        );
    } else {
        let _ = write!(out, "{}", text(config.addr, &hold));
        if let Some(text) = measured.as_ref().and_then(|d| d[REPORT_TEXT].as_str()) {
            let _ = write!(out, "{text}");
        }
    }
    let _ = out.flush();
    ExitCode::from(code)
}

/// The held connections' lines: the sums, then one line per worker.
pub fn text(addr: std::net::SocketAddr, hold: &Value) -> String {
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let kinds: Vec<String> = hold["failed_by_kind"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {}", u(v))).collect())
        .unwrap_or_default();
    let workers = hold["workers"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "held {} of {} connections to {} ({} failed{}{}), established in {:.3} s ({:.0} connections/s{}); {} still open after the window; {} worker processes:\n",
        u(&hold["established"]),
        u(&hold["requested"]),
        addr,
        u(&hold["failed"]),
        if kinds.is_empty() { String::new() } else { format!(": {}", kinds.join(", ")) },
        hold["first_error"].as_str().map(|e| format!("; first: {e}")).unwrap_or_default(),
        f(&hold["establish_secs"]),
        f(&hold["connect_rate"]),
        listen_words(
            hold["listen_overflows"]
                .as_u64()
                .zip(hold["listen_drops"].as_u64())
                .map(|(overflows, drops)| ListenCounters { overflows, drops })
        ),
        u(&hold["still_open"]),
        workers.len(),
    );
    for w in &workers {
        let active = u(&w["active"]);
        let measured = if active > 0 {
            format!(", and the {active} measured")
        } else {
            String::new()
        };
        let pid = w["pid"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".to_string());
        let line = match w["died"].as_str() {
            None if w["pid"].is_null() => format!(
                "  worker {}: not started (interrupted first): its {} connections neither held nor failed\n",
                u(&w["index"]),
                u(&w["requested"])
            ),
            Some(why) => format!(
                "  worker {} (pid {pid}): {why}: its {} connections are counted as failed{measured}\n",
                u(&w["index"]),
                u(&w["requested"])
            ),
            None => format!(
                "  worker {} (pid {pid}): held {} of {} ({} failed) in {:.3} s, {} still open{measured}\n",
                u(&w["index"]),
                u(&w["established"]),
                u(&w["requested"]),
                u(&w["failed"]),
                f(&w["establish_secs"]),
                u(&w["still_open"]),
            ),
        };
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(n: u64, active: u64, cap: u64) -> Vec<Share> {
        let shares = split(n, active, cap).unwrap();
        assert_eq!(shares.iter().map(|s| s.count).sum::<u64>(), n);
        assert_eq!(shares.iter().map(|s| s.active).sum::<u64>(), active);
        assert_eq!(shares[0].active, active);
        let mut next = 0;
        for (i, s) in shares.iter().enumerate() {
            assert_eq!(s.index, i as u64);
            assert_eq!(s.first, next, "{shares:?}");
            assert!(s.count + s.active <= cap, "{shares:?}");
            next += s.count;
        }
        shares
    }

    #[test]
    fn a_split_covers_every_connection_once_within_the_cap() {
        // 2,000 held and 4 measured, 1,036 per process: two workers of 1,002.
        let shares = check(2_000, 4, 1_036);
        assert_eq!(shares.len(), 2);
        assert_eq!((shares[0].count, shares[1].count), (998, 1_002));
        // Fits in one: one worker holds all.
        assert_eq!(check(100, 4, 1_036).len(), 1);
        assert_eq!(check(1_032, 4, 1_036).len(), 1);
        // Uneven: the first worker takes the odd one (519 with the 4 measured).
        let shares = check(1_033, 4, 1_036);
        assert_eq!((shares[0].count, shares[1].count), (515, 518));
        // The fewest workers: a million over 19,936 each is 51.
        assert_eq!(check(1_000_000, 64, 19_936).len(), 51);
        // Even totals: 3,900 over four workers of 975, the first's mostly measured.
        let shares = check(3_000, 900, 1_000);
        assert_eq!(shares.len(), 4, "{shares:?}");
        assert_eq!(shares[0].count, 75);
        // More measured than an even total: the first worker holds none, the other all.
        let shares = check(200, 900, 1_000);
        assert_eq!(shares.len(), 2, "{shares:?}");
        assert_eq!((shares[0].count, shares[1].count), (0, 200));
        assert_eq!(check(7, 0, 2).len(), 4);
        assert_eq!(check(1, 0, 1).len(), 1);
    }

    /// Every (n, active, cap) in a grid: the fewest workers, each within the cap.
    #[test]
    fn every_split_of_a_grid_is_minimal_and_within_the_cap() {
        for cap in 1..40 {
            for active in 0..cap {
                for n in 0..200 {
                    let shares = check(n, active, cap);
                    assert_eq!(
                        shares.len() as u64,
                        (n + active).div_ceil(cap).max(1),
                        "{n} {active} {cap}"
                    );
                }
            }
        }
    }

    #[test]
    fn impossible_splits_are_one_line() {
        assert!(split(10, 1_000, 1_000)
            .unwrap_err()
            .contains("--active 1000"));
        assert!(split(10, 5, 0).is_err());
        let err = split(10_000_000, 0, 100).unwrap_err();
        assert!(err.contains("more than 1024 worker processes"), "{err}");
        assert_eq!(split(1_024 * 100, 0, 100).unwrap().len(), 1_024);
    }

    #[test]
    fn a_share_goes_through_the_environment() {
        let share = Share {
            index: 3,
            first: 6_000,
            count: 2_000,
            active: 0,
        };
        assert_eq!(Share::parse(&share.env_value()), Ok(share));
        assert!(Share::parse("1,2,3").is_err());
        assert!(Share::parse("1,2,3,x").is_err());
        assert!(Share::parse("1,2,3,4,5").is_err());
        assert_eq!(share_of(None), Ok(None));
        assert_eq!(share_of(Some("3,6000,2000,0".into())), Ok(Some(share)));
        assert!(share_of(Some("3".into())).is_err());
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = std::ffi::OsString::from_vec(vec![0xff, b',']);
        assert!(share_of(Some(not_utf8)).unwrap_err().contains(WORKER_ENV));
    }

    fn outcome(index: u64, count: u64, doc: Option<Value>, died: Option<&str>) -> Outcome {
        Outcome {
            share: Share {
                index,
                first: index * 1_000,
                count,
                active: 0,
            },
            pid: Some(100 + index as u32),
            doc,
            died: died.map(str::to_string),
            ready_secs: Some(0.5),
        }
    }

    #[test]
    fn holds_add_up_and_a_dead_worker_counts_as_failed() {
        let doc = |est: u64, failed: Value, open: u64, first: Option<&str>| {
            let total: u64 = failed
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            json!({ "hold": {
                "requested": est + total, "established": est, "failed": total,
                "failed_by_kind": failed, "first_error": first,
                "establish_secs": 0.25, "still_open": open, "interrupted": false,
            }, "exit_code": 0 })
        };
        let outcomes = [
            outcome(0, 1_000, Some(doc(1_000, json!({}), 1_000, None)), None),
            outcome(
                1,
                1_000,
                Some(doc(
                    990,
                    json!({"refused": 6, "timeout": 4}),
                    985,
                    Some("connect: refused"),
                )),
                None,
            ),
            outcome(
                2,
                700,
                None,
                Some("killed by signal 9 (SIGKILL) before reporting"),
            ),
            outcome(
                3,
                300,
                Some(doc(300, json!({"timeout": 1}), 300, None)),
                None,
            ),
        ];
        let listen = ListenCounters {
            overflows: 3,
            drops: 4,
        };
        let hold = combine(3_000, &outcomes, 2.0, Some(listen));
        assert_eq!(hold["listen_overflows"], 3);
        assert_eq!(hold["listen_drops"], 4);
        assert_eq!(hold["requested"], 3_000);
        assert_eq!(hold["established"], 2_290);
        assert_eq!(hold["still_open"], 2_285);
        assert_eq!(
            hold["failed_by_kind"],
            json!({"refused": 6, "timeout": 5, "worker_died": 700})
        );
        assert_eq!(hold["failed"], 711);
        assert_eq!(hold["interrupted"], false);
        assert_eq!(hold["connect_rate"], 1_145.0);
        assert_eq!(hold["first_error"], "hold worker 1: connect: refused");
        let workers = hold["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 4);
        assert_eq!(workers[1]["established"], 990);
        assert_eq!(
            workers[2]["died"],
            "killed by signal 9 (SIGKILL) before reporting"
        );
        assert_eq!(workers[2]["pid"], 102);
        // A worker whose document holds no hold is not counted as holding.
        let hold = combine(10, &[outcome(0, 10, Some(json!({})), None)], 1.0, None);
        assert_eq!(hold["listen_overflows"], Value::Null);
        assert_eq!(hold["established"], 0);
        assert_eq!(hold["failed_by_kind"], json!({"worker_died": 10}));
        assert_eq!(
            hold["first_error"],
            "hold worker 0 (pid 100): reported no hold"
        );
        assert_eq!(combine(0, &[], 0.0, None)["connect_rate"], 0.0);
        // One worker interrupted while establishing: the hold was.
        let mut cut = doc(5, json!({}), 5, None);
        cut["hold"]["interrupted"] = json!(true);
        let whole = doc(5, json!({}), 5, None);
        let outcomes = [
            outcome(0, 5, Some(whole.clone()), None),
            outcome(1, 5, Some(cut), None),
        ];
        assert_eq!(combine(10, &outcomes, 1.0, None)["interrupted"], true);
        let outcomes = [
            outcome(0, 5, Some(whole.clone()), None),
            outcome(1, 5, Some(whole), None),
        ];
        assert_eq!(combine(10, &outcomes, 1.0, None)["interrupted"], false);
    }

    #[test]
    fn the_text_has_the_sums_and_a_line_per_worker() {
        let addr: std::net::SocketAddr = "127.0.0.1:7007".parse().unwrap();
        let outcomes = [
            outcome(
                0,
                4,
                Some(
                    json!({"hold": {"established": 4, "failed": 0, "failed_by_kind": {},
                    "establish_secs": 0.125, "still_open": 4}}),
                ),
                None,
            ),
            outcome(1, 6, None, Some("exited with status 1 before reporting")),
        ];
        let listen = Some(ListenCounters {
            overflows: 0,
            drops: 2,
        });
        let mut outcomes = outcomes;
        outcomes[0].share.active = 3;
        let text = text(addr, &combine(10, &outcomes, 0.5, listen));
        assert!(
            text.starts_with(&format!(
                "held 4 of 10 connections to {addr} (6 failed: worker_died 6; first: hold worker 1 (pid 101): exited with status 1 before reporting), established in 0.500 s (8 connections/s; the namespace's listen queues meanwhile: 0 overflows, 2 drops); 4 still open after the window; 2 worker processes:\n",
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "\n  worker 0 (pid 100): held 4 of 4 (0 failed) in 0.125 s, 4 still open, and the 3 measured\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("  worker 1 (pid 101): exited with status 1 before reporting: its 6 connections are counted as failed\n"),
            "{text}"
        );
    }

    /// A worker not started (the run was interrupted first): no pid, its share neither held
    /// nor failed, the hold interrupted, and its line says so.
    #[test]
    fn a_worker_not_started_is_neither_held_nor_failed() {
        let addr: std::net::SocketAddr = "127.0.0.1:7007".parse().unwrap();
        let held = json!({"hold": {"established": 4, "failed": 0, "failed_by_kind": {},
            "establish_secs": 0.125, "still_open": 4}});
        let share = Share {
            index: 1,
            first: 4,
            count: 6,
            active: 0,
        };
        let never = Outcome {
            share,
            pid: None,
            doc: Some(not_started(&share)),
            died: None,
            ready_secs: None,
        };
        let hold = combine(10, &[outcome(0, 4, Some(held), None), never], 0.5, None);
        assert_eq!(hold["established"], 4);
        assert_eq!(hold["failed"], 0);
        assert_eq!(hold["failed_by_kind"], json!({}));
        assert_eq!(hold["first_error"], Value::Null);
        assert_eq!(hold["interrupted"], true);
        let text = text(addr, &hold);
        assert!(
            text.ends_with(
                "  worker 0 (pid 100): held 4 of 4 (0 failed) in 0.125 s, 4 still open\n  worker 1: not started (interrupted first): its 6 connections neither held nor failed\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn exit_statuses_are_named() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit_words(Some(ExitStatus::from_raw(1 << 8))),
            "exited with status 1"
        );
        assert_eq!(
            exit_words(Some(ExitStatus::from_raw(9))),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(exit_words(None), "could not be waited for");
    }
}
