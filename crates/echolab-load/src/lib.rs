//! PLACEHOLDER: the client, bench and compare (issues 2 and 3) are being written.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// Send stdin (or a file) to an echo server.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {}

/// Load an echo server.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Compare the models.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {}

pub fn run_client(_args: ClientArgs) -> ExitCode {
    ExitCode::FAILURE
}

pub fn run_bench(_args: BenchArgs) -> ExitCode {
    ExitCode::FAILURE
}

pub fn run_compare(_args: CompareArgs) -> ExitCode {
    ExitCode::FAILURE
}
