//! `echolab bench`: turns the command line into a [`crate::config::BenchConfig`], runs the
//! engine with a progress display and Ctrl-C handling, and prints the summary or the JSON
//! document. With `--json`, stdout always holds one JSON document, an `error` field
//! included when the run could not take place.

use std::io::{self, Write};
use std::process::ExitCode;

use serde_json::json;

use crate::cli::BenchArgs;
use crate::config::Workload;
use crate::engine;

/// Runs `echolab bench` and returns its exit status (see [`BenchArgs`]).
pub fn run(args: BenchArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => return fail(args.json, &message, 2),
    };
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
    let result = engine::run(&config, &stop, tick, |progress| display.update(progress));
    display.finish();
    match result {
        Ok(report) => {
            if let Some(path) = &args.hdr_log {
                if let Err(err) = crate::merge::write_bench_log(path, &report, &config) {
                    eprintln!("echolab bench: cannot write {}: {err}", path.display());
                    return ExitCode::from(1);
                }
            }
            let mut stdout = io::stdout().lock();
            let printed = if args.json {
                let doc = report.to_json(&config);
                writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("JSON of plain values")
                )
            } else {
                write!(stdout, "{}", report.to_text(&config))
            };
            let _ = printed.and_then(|()| stdout.flush());
            ExitCode::from(report.exit_code())
        }
        Err(err) => fail(args.json, &err.to_string(), 1),
    }
}

/// Says `message` on stderr (one line) and, with `--json`, as `{"error": ..., "exit_code":
/// ...}` on stdout, so that a script always gets a document; returns `code`.
fn fail(json: bool, message: &str, code: u8) -> ExitCode {
    eprintln!("echolab bench: {message}");
    if json {
        println!("{}", error_json(message, code));
    }
    ExitCode::from(code)
}

/// The JSON document of a run that could not take place: `{"error": message,
/// "exit_code": code}`, pretty-printed.
pub fn error_json(message: &str, code: u8) -> String {
    let doc = json!({ "error": message, "exit_code": code });
    serde_json::to_string_pretty(&doc).expect("JSON of plain values")
}
