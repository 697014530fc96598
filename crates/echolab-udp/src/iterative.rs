//! The iterative UDP server: one datagram at a time, a blocking `recvfrom` then a
//! blocking `sendto`, the way CS:APP's iterative TCP server serves one connection.
//!
//! Trade-off: for UDP this is the natural server and no client waits behind another for
//! long (each datagram is one short step), but it makes two system calls per datagram and
//! uses one core at most.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::guard::Guard;
use crate::{judge, sent, transient, BUF_LEN, TICK};

/// The most datagrams served after the stop flag is seen, from what already waits in the
/// socket's queue.
const FINAL_DRAIN: usize = 1024;

/// Serves `socket` until `stop` is set, then echoes what is already queued (bounded).
pub fn serve(socket: UdpSocket, guard: &Mutex<Guard>, stop: &AtomicBool) -> std::io::Result<()> {
    // The receive blocks at most a tick, so that the stop flag is seen.
    socket.set_read_timeout(Some(TICK))?;
    let mut buf = vec![0u8; BUF_LEN];
    while !stop.load(Ordering::SeqCst) {
        match socket.recv_from(&mut buf) {
            Ok((len, src)) => {
                if judge(guard, src, len) {
                    sent(guard, src, len, socket.send_to(&buf[..len], src));
                }
            }
            Err(err) if transient(&err) => {}
            Err(err) => return Err(err),
        }
    }
    socket.set_nonblocking(true)?;
    for _ in 0..FINAL_DRAIN {
        match socket.recv_from(&mut buf) {
            Ok((len, src)) => {
                if judge(guard, src, len) {
                    sent(guard, src, len, socket.send_to(&buf[..len], src));
                }
            }
            Err(_) => break,
        }
    }
    Ok(())
}
