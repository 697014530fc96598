//! The client side of echolab: `echolab client` (send stdin or a file to an echo server,
//! print or verify what comes back), `echolab bench` (a load generator you can trust:
//! closed loop, open loop without coordinated omission, connection churn, every byte
//! verified, HDR percentiles) and `echolab compare` (every model under the same load,
//! written up as tables and charts).
//!
//! Architecture invariant: the engine never prints; the three `run_*` functions are the
//! only code that writes to stdout or stderr, and they return the exit status.
//!
//! # Layout
//! - [`cli`]: the three command lines and their checks (`ClientArgs`, `BenchArgs`,
//!   `CompareArgs`).
//! - [`client`]: `echolab client`, interactive or `--send FILE`.
//! - [`bench`](mod@bench): `echolab bench`: signals, progress display, summary or JSON, exit status.
//! - [`config`]: a run's plain configuration ([`config::BenchConfig`]), the workloads
//!   ([`config::Workload`]) and the limits; it imports nothing from the crate.
//! - [`engine`]: the load engine ([`engine::run`]): mio event loops on worker threads, one
//!   state machine per connection, one driver per workload (closed, open, churn).
//! - [`pattern`]: the never-repeating byte stream each connection sends, and its check.
//! - [`latency`]: HDR histograms of latency, merged across threads.
//! - [`schedule`]: the open loop's constant-rate schedule (wrk2's method), shared by the
//!   worker threads at evenly spaced phases.
//! - [`hdr`]: histograms as data: V2 encoding, interval logs (`--hdr-log`).
//! - [`merge`](mod@merge): `echolab merge`: several runs' histograms added into one report.
//! - [`report`]: [`report::BenchReport`], errors by kind, incomplete messages, fairness,
//!   text and JSON renderings. Imports the configuration, never the engine.
//! - [`progress`]: a progress bar on a terminal, a line per interval otherwise.
//! - [`stream`]: `bench --json-stream`'s object per interval.
//! - [`threshold`]: `--max-p99`, `--min-rate`, `--max-errors` and their exit status, 99.
//! - [`idle`]: `bench --hold N`: idle connections (spread over source addresses) held
//!   beside the measured ones; prints its report like `bench`.
//! - [`holders`]: a `--hold` past one process's descriptor limit, split among worker
//!   processes of this binary and their reports added up.
//! - [`hold`]: many idle connections held open (compare's memory-per-connection step).
//! - [`compare`]: `echolab compare`: starting and stopping servers, reading /proc, the
//!   workload matrix, results.json, summary.md and SVG charts.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod compare;
pub mod config;
pub mod engine;
pub mod hdr;
pub mod hold;
pub mod holders;
pub mod idle;
pub mod latency;
pub mod merge;
pub mod pattern;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod stream;
pub mod threshold;

use std::io;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use cli::{BenchArgs, ClientArgs, CompareArgs};

/// Runs `echolab client`.
pub fn run_client(args: ClientArgs) -> ExitCode {
    client::run(args)
}

/// Runs `echolab bench`.
pub fn run_bench(args: BenchArgs) -> ExitCode {
    bench::run(args)
}

/// Runs `echolab compare`.
pub fn run_compare(args: CompareArgs) -> ExitCode {
    compare::run(args)
}

/// A flag that SIGINT or SIGTERM sets, so a run can stop and still report what it
/// measured. A second signal, arriving when the flag is already set (and not within
/// [`echolab_sys::second_signal::DUPLICATE_WINDOW`] of the first), exits at once (status
/// 130) for a run that does not stop quickly enough.
pub fn install_stop_flag() -> io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    // Registered first, so it sees the flag as it was before this signal set it; one
    // signal delivered twice (by `timeout`) is not a second one.
    echolab_sys::second_signal::exit_on_second_signal(&[SIGINT, SIGTERM], 130, &stop)?;
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    // A hold worker starts with them blocked (holders.rs): one that came before the
    // handlers were in is delivered now, to them.
    let mut mask = nix::sys::signal::SigSet::empty();
    mask.add(nix::sys::signal::Signal::SIGINT);
    mask.add(nix::sys::signal::Signal::SIGTERM);
    nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
        Some(&mask),
        None,
    )?;
    Ok(stop)
}

/// Raises the soft limit on open descriptors to the hard limit: 512 connections and more
/// need it on a default 1024.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
