//! The child side of the watchdog: `echolab lab --child NAME --child-config JSON` runs one
//! experiment body in a fresh process and prints its result as `RESULT {json}`.
//!
//! A fresh process is single-threaded when the body starts, which is what makes `fork`
//! safe for the bodies that fork (signal-handler, spawn-cost, the fork servers); and a
//! process can be killed, which a hung thread cannot.

use std::process::ExitCode;

use serde_json::Value;

use crate::experiments;

/// The prefix of the one line that carries a child's result.
pub const RESULT_PREFIX: &str = "RESULT ";

/// A body that runs as a child: its name after `--child`, and the function.
type Body = fn(&Value) -> std::io::Result<Value>;

const BODIES: &[(&str, Body)] = &[
    ("signal-handler", experiments::signal_handler::child_body),
    ("deadlock", experiments::deadlock::child_body),
    ("spawn-cost", experiments::spawn_cost::child_body),
    ("thread-leak", experiments::thread_leak::child_body),
    ("forkserver", experiments::forkserver::child_body),
    ("block", block_forever),
];

/// Runs body `name` with the JSON `config` and prints its result line.
pub fn main(name: &str, config: &str) -> ExitCode {
    let config: Value = match serde_json::from_str(config) {
        Ok(config) => config,
        Err(err) => {
            echolab_cli::say!("echolab lab --child {name}: bad --child-config {config:?}: {err}");
            return ExitCode::from(2);
        }
    };
    let Some((_, body)) = BODIES.iter().find(|(body_name, _)| *body_name == name) else {
        echolab_cli::say!("echolab lab: unknown child body {name:?}");
        return ExitCode::from(2);
    };
    match body(&config) {
        Ok(result) => {
            echolab_cli::print_out(&format!("{RESULT_PREFIX}{result}"));
            ExitCode::SUCCESS
        }
        Err(err) => {
            echolab_cli::say!("echolab lab --child {name}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// For a binary other than `echolab` (a test's own `main`): if the arguments ask for a
/// child body (`lab --child NAME --child-config JSON`), runs it and returns its exit code.
pub fn main_if_child(args: &[String]) -> Option<ExitCode> {
    match args {
        [_, lab, flag, name, config_flag, config]
            if lab == "lab" && flag == "--child" && config_flag == "--child-config" =>
        {
            Some(main(name, config))
        }
        _ => None,
    }
}

/// A body that never returns: the deliberately blocked experiment that shows the watchdog
/// fires. Parking has no waker here; the loop absorbs spurious wake-ups.
fn block_forever(_config: &Value) -> std::io::Result<Value> {
    loop {
        std::thread::park();
    }
}

/// Reads `key` of a child's config as an unsigned number.
pub fn config_u64(config: &Value, key: &str, default: u64) -> u64 {
    config.get(key).and_then(Value::as_u64).unwrap_or(default)
}

/// Reads `key` of a child's config as a boolean.
pub fn config_bool(config: &Value, key: &str, default: bool) -> bool {
    config.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// Reads `key` of a child's config as a string.
pub fn config_str<'a>(config: &'a Value, key: &str, default: &'a str) -> &'a str {
    config.get(key).and_then(Value::as_str).unwrap_or(default)
}
