//! PLACEHOLDER: the lab (issue 5) is being written.
#![forbid(unsafe_code)]

use std::process::ExitCode;

/// Run an experiment.
#[derive(Debug, clap::Args)]
pub struct LabArgs {}

pub fn run(_args: LabArgs) -> ExitCode {
    ExitCode::FAILURE
}
