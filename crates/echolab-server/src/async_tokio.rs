//! PLACEHOLDER: filled by the fast-models work (issue 4).

use std::io;

use crate::Server;

pub fn run(_server: Server) -> io::Result<()> {
    Err(io::Error::other("model not implemented yet"))
}
