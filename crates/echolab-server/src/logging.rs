//! The server's log, through env_logger: one line per record on stderr, written as a
//! whole (`echolab: LEVEL: MESSAGE`), filtered by level and target as `RUST_LOG` says.
//!
//! Levels: `-q` warnings and errors; the default `info` adds start, stop and the periodic
//! stats summary; `-v` (debug) adds each connection's open and close lines; `-vv` (trace)
//! adds the lecture's "server received N bytes" for every read. Without `-q` or `-v`,
//! `RUST_LOG` decides with env_logger's syntax: `RUST_LOG=debug`, `RUST_LOG=echolab=debug`
//! (every echolab crate: targets are `echolab_server::conn` and so on), or
//! `RUST_LOG=warn,echolab_server::admission=info`.

use std::io::Write;

use log::LevelFilter;

fn level_word(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// The level `-q` and `-v` ask for, or `None` to let `RUST_LOG` decide. `-q` wins.
pub fn flag_level(quiet: bool, verbose: u8) -> Option<LevelFilter> {
    match (quiet, verbose) {
        (true, _) => Some(LevelFilter::Warn),
        (false, 0) => None,
        (false, 1) => Some(LevelFilter::Debug),
        (false, _) => Some(LevelFilter::Trace),
    }
}

/// Installs the logger: the level of `-q`/`-v` if given, else `RUST_LOG`'s filters, else
/// `info`. A second init (a test that serves twice in one process) keeps the first logger.
pub fn init(quiet: bool, verbose: u8) {
    let mut builder = env_logger::Builder::new();
    match flag_level(quiet, verbose) {
        Some(level) => {
            builder.filter_level(level);
        }
        None => match std::env::var("RUST_LOG") {
            Ok(filters) if !filters.trim().is_empty() => {
                builder.parse_filters(&filters);
            }
            _ => {
                builder.filter_level(LevelFilter::Info);
            }
        },
    }
    builder
        .format(|buf, record| {
            writeln!(
                buf,
                "echolab: {}: {}",
                level_word(record.level()),
                record.args()
            )
        })
        .target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_wins_and_each_v_is_one_level_more() {
        assert_eq!(flag_level(true, 2), Some(LevelFilter::Warn));
        assert_eq!(flag_level(false, 0), None);
        assert_eq!(flag_level(false, 1), Some(LevelFilter::Debug));
        assert_eq!(flag_level(false, 2), Some(LevelFilter::Trace));
        assert_eq!(flag_level(false, 200), Some(LevelFilter::Trace));
    }
}
