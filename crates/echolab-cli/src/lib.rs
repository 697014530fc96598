//! The conventions every echolab command shares, in one place so that `serve`, `client`,
//! `bench`, `compare`, `lab` and the UDP flags spell them alike.
//!
//! # Layout
//!
//! - `units`: flag values: durations with units (`500ms`, `2s`, `1m`; a bare number is
//!   seconds), sizes with units (`1.5K`, `64KiB`, `1G`; a bare number is bytes), whole
//!   counts, and socket addresses. Each parser returns one lowercase sentence for clap to
//!   put after "invalid value 'V' for '--FLAG'".
//! - `provenance`: what every JSON document carries about the run that wrote it (schema
//!   version, echolab's version and git revision, command line, CPU model, kernel).
#![forbid(unsafe_code)]

pub mod provenance;
pub mod units;
