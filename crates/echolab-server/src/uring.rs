//! PLACEHOLDER: filled by the fast-models work (issue 4).

use std::io;

use crate::Server;

/// Checks that io_uring works here; the error says why not.
pub fn probe(_server: &Server) -> Result<(), String> {
    Err("not implemented yet".to_string())
}

pub fn run(_server: Server) -> io::Result<()> {
    Err(io::Error::other("model not implemented yet"))
}
