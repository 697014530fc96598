//! Many idle connections held open, each proven accepted by one echo: what a server pays
//! per connection it keeps (threads, processes, buffers) shows in its memory.
//!
//! Connections are opened a batch at a time and each batch is echoed before the next
//! starts, so the server's listen backlog never overflows into SYN retransmits however
//! slowly it accepts (a fork per connection, a thread per connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::engine::describe;

/// Connections opened before their echoes are awaited.
const BATCH: usize = 256;

/// The held connections; dropping them closes every one.
#[derive(Debug)]
pub struct HeldConns {
    pub conns: Vec<TcpStream>,
}

/// Opens `n_conns` connections to `addr` and completes one 8-byte echo on each, all
/// within `deadline` from now. On failure names how far it got and why.
pub fn hold(addr: SocketAddr, n_conns: usize, within: Duration) -> Result<HeldConns, String> {
    let deadline = Instant::now() + within;
    let mut conns = Vec::with_capacity(n_conns);
    let fail = |done: usize, what: String| {
        format!("{done} of {n_conns} idle connections held, then {what}")
    };
    while conns.len() < n_conns {
        let batch_start = conns.len();
        let batch_end = (batch_start + BATCH).min(n_conns);
        for conn_idx in batch_start..batch_end {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(conns.len(), "the deadline passed".to_string()));
            }
            let mut conn = TcpStream::connect_timeout(&addr, left)
                .map_err(|err| fail(conns.len(), format!("cannot connect: {}", describe(&err))))?;
            let _ = conn.set_nodelay(true);
            conn.write_all(&ping(conn_idx))
                .map_err(|err| fail(conns.len(), format!("cannot send: {}", describe(&err))))?;
            conns.push(conn);
        }
        for (conn_idx, conn) in conns.iter_mut().enumerate().skip(batch_start) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(fail(
                    batch_start,
                    "the deadline passed waiting for echoes".to_string(),
                ));
            }
            let _ = conn.set_read_timeout(Some(left));
            let mut echo = [0u8; 8];
            conn.read_exact(&mut echo)
                .map_err(|err| fail(batch_start, format!("no echo: {}", describe(&err))))?;
            if echo != ping(conn_idx) {
                return Err(fail(
                    batch_start,
                    format!("a wrong echo on connection {conn_idx}"),
                ));
            }
        }
    }
    Ok(HeldConns { conns })
}

/// The 8 bytes connection `conn_idx` sends: its index, so a crossed echo is caught.
fn ping(conn_idx: usize) -> [u8; 8] {
    (conn_idx as u64).to_le_bytes()
}
