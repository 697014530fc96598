//! `echolab bench`: turns the command line into a [`crate::config::BenchConfig`], runs the
//! engine with a progress display and Ctrl-C handling, and prints the summary or the JSON
//! document. With `--json`, stdout always holds one JSON document, an `error` field
//! included when the run could not take place.

use std::io::Write;
use std::process::ExitCode;

use serde_json::{json, Value};

use crate::cli::BenchArgs;
use crate::config::{BenchConfig, Workload};
use crate::engine;
use crate::report::BenchReport;
use crate::stream::IntervalStream;
use crate::threshold::Thresholds;

/// Runs `echolab bench` and returns its exit status (see [`BenchArgs`]).
pub fn run(args: BenchArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => return fail(args.json || args.json_stream, &message, 2),
    };
    // Before the run: a log that cannot be written is a bad argument now, not a run
    // measured and then thrown away.
    if let Some(path) = &args.hdr_log {
        if let Err(err) = std::fs::File::create(path) {
            let why = echolab_cli::describe_io(&err);
            let message = format!("cannot write --hdr-log {}: {why}", path.display());
            return fail(args.json || args.json_stream, &message, 2);
        }
    }
    let stop = match crate::install_stop_flag() {
        Ok(stop) => stop,
        Err(err) => {
            let message = format!("cannot install the SIGINT/SIGTERM handlers: {err}");
            return fail(args.json, &message, 1);
        }
    };
    if args.hold.is_some() {
        return crate::idle::run(&args, config, &stop);
    }
    crate::raise_fd_limit();
    let unit = if config.workload() == Workload::Churn {
        "connections"
    } else {
        "messages"
    };
    // The bar spans the measured window (its position is the time measured so far); the
    // warm-up before it shows as a message on the empty bar.
    let (mut display, tick) =
        crate::progress::ProgressDisplay::for_stderr(config.duration, args.interval, unit);
    // --json-stream: an object every --interval (the bar, if any, moves at that pace too:
    // the interval histograms are emptied at each tick).
    let tick = if args.json_stream {
        args.interval
    } else {
        tick
    };
    let mut stream = args.json_stream.then(IntervalStream::new);
    let result = engine::run(&config, &stop, tick, |progress| {
        display.update(progress);
        if let Some(object) = stream.as_mut().and_then(|s| s.on_tick(progress)) {
            echolab_cli::print_out(&object.to_string());
            if echolab_cli::stdout_closed() {
                // `--json-stream | head -3`: nobody reads on; the run stops as at Ctrl-C.
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    display.finish();
    let thresholds = args.thresholds();
    match result {
        Ok(report) => {
            if let Some(path) = &args.hdr_log {
                if let Err(err) = crate::merge::write_bench_log(path, &report, &config) {
                    let why = echolab_cli::describe_io(&err);
                    echolab_cli::say!("echolab bench: cannot write {}: {why}", path.display());
                    return ExitCode::from(1);
                }
            }
            let mut stdout = echolab_cli::stdout();
            let printed = if args.json_stream {
                writeln!(stdout, "{}", document(&report, &config, &thresholds))
            } else if args.json {
                let doc = document(&report, &config, &thresholds);
                writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("JSON of plain values")
                )
            } else {
                write!(stdout, "{}", report.to_text(&config))
            };
            let _ = printed.and_then(|()| stdout.flush());
            if let Some(line) = thresholds.verdict(&report) {
                echolab_cli::say!("echolab bench: {line}");
            }
            ExitCode::from(thresholds.exit_code(&report))
        }
        // A stop signal before any connection was established: an interrupted run
        // (exit 130, as after the window began), not a connect failure.
        Err(engine::BenchError::Connect { addr, .. })
            if stop.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            let message =
                format!("interrupted while connecting to {addr}: no connection was established");
            fail(args.json || args.json_stream, &message, 130)
        }
        Err(err) => fail(args.json || args.json_stream, &err.to_string(), 1),
    }
}

/// The JSON document of a run: the report's, with the thresholds given and the
/// provenance every echolab document carries.
pub(crate) fn document(
    report: &BenchReport,
    config: &BenchConfig,
    thresholds: &Thresholds,
) -> Value {
    let mut doc = report.to_json(config);
    if thresholds.any() {
        doc["thresholds"] = thresholds.to_json(report);
    }
    doc["exit_code"] = json!(thresholds.exit_code(report));
    echolab_cli::provenance::stamp(&mut doc);
    doc
}

/// Says `message` on stderr (one line) and, with `--json`, as `{"error": ..., "exit_code":
/// ...}` on stdout, so that a script always gets a document; returns `code`.
fn fail(json: bool, message: &str, code: u8) -> ExitCode {
    echolab_cli::say!("echolab bench: {message}");
    if json {
        echolab_cli::print_out(&error_json(message, code));
    }
    ExitCode::from(code)
}

/// The JSON document of a run that could not take place: `{"error": message,
/// "exit_code": code}` and the provenance, pretty-printed.
pub fn error_json(message: &str, code: u8) -> String {
    let mut doc = json!({ "error": message, "exit_code": code });
    if code == 130 {
        // The exit code of a stop signal: the document says so as a run's does.
        doc["interrupted"] = json!(true);
    }
    echolab_cli::provenance::stamp(&mut doc);
    serde_json::to_string_pretty(&doc).expect("JSON of plain values")
}
