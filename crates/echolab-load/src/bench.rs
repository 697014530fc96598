//! `echolab bench`: turns the command line into a [`engine::BenchConfig`], runs the engine with a
//! progress display and Ctrl-C handling, and prints the summary or the JSON document.

use std::io::{self, Write};
use std::process::ExitCode;

use crate::cli::BenchArgs;
use crate::engine;

/// Runs `echolab bench` and returns its exit status (see [`BenchArgs`]).
pub fn run(args: BenchArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("echolab bench: {message}");
            return ExitCode::from(2);
        }
    };
    let stop = match crate::install_stop_flag() {
        Ok(stop) => stop,
        Err(err) => {
            eprintln!("echolab bench: cannot install the SIGINT/SIGTERM handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    crate::raise_fd_limit();
    let unit = if config.churn {
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
        Err(err) => {
            eprintln!("echolab bench: {err}");
            ExitCode::FAILURE
        }
    }
}
