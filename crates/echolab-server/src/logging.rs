//! A small stderr logger: one line per record, written (and so flushed) as a whole.
//!
//! Levels: `--quiet` shows warnings and errors only, the default adds connection
//! open/close lines, `-v` or `RUST_LOG=debug` adds the lecture's "server received N bytes".

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

#[derive(Debug)]
struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One write per line: lines from threads and child processes never interleave.
        let line = format!(
            "echolab: {}: {}\n",
            level_word(record.level()),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

fn level_word(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// Installs the logger. `quiet` wins over `verbose`; without either, `RUST_LOG`
/// (`error`, `warn`, `info`, `debug`, `trace`, `off`) decides, defaulting to `info`.
pub fn init(quiet: bool, verbose: bool) {
    let level = if quiet {
        LevelFilter::Warn
    } else if verbose {
        LevelFilter::Debug
    } else {
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(LevelFilter::Info)
    };
    // A second init (a test that serves twice in one process) keeps the first logger.
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
}
