//! Thread per connection (CS:APP's `echoservert`): the accept loop spawns a thread for
//! each connection and moves the connection into it.
//!
//! Trade-off: code as simple as the iterative server's, and clients are served
//! concurrently; each connection costs a thread (a stack, a kernel task, a context switch
//! per message), so `--max-conns` bounds how many exist.
//!
//! The lecture's race, passing `&connfd` to the new thread while the accept loop
//! overwrites it, cannot be written in Rust: the thread must own what it uses. Moving
//! `conn` into the closure is the fix, and the compiler rejects the reference:
//!
//! ```compile_fail,E0373
//! let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! loop {
//!     let (conn, _peer) = listener.accept().unwrap();
//!     // error[E0373]: closure may outlive the current function, but it borrows `conn`
//!     std::thread::spawn(|| {
//!         let fd: &std::net::TcpStream = &conn;
//!         drop(fd);
//!     });
//! }
//! ```
//!
//! Unlike the book's detached threads, every thread here is joined: finished threads are
//! reaped as new connections arrive, and the rest at shutdown, so none outlives the server.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::accept::Acceptor;
use crate::conn::{self, ConnSettings};
use crate::live::LiveConns;
use crate::Server;

/// The stack of a connection thread. The echo loop keeps its buffer on the heap and needs
/// a few KiB of stack; the default 2 MiB would only reserve address space, but a small
/// stack is the lecture's point about the cost of a thread.
pub const STACK_SIZE: usize = 64 * 1024;

pub fn run(server: Server) -> io::Result<()> {
    let Server {
        listener,
        config,
        shutdown,
    } = server;
    let live = LiveConns::new();
    let flag = shutdown.flag();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut acceptor = Acceptor::new(&listener, &shutdown)?;
    while let Some((conn, peer)) = acceptor.accept() {
        // Reap the threads that finished, like waitpid(WNOHANG) for processes.
        let (finished, running): (Vec<_>, Vec<_>) =
            threads.drain(..).partition(|handle| handle.is_finished());
        for handle in finished {
            let _ = handle.join();
        }
        threads = running;
        let conn = Arc::new(conn);
        let Some(admitted) = live.admit(&conn, config.max_conns) else {
            conn::refuse(conn, peer, config.max_conns);
            continue;
        };
        let config = config.clone();
        let flag = Arc::clone(&flag);
        let spawned = std::thread::Builder::new()
            .name(format!("conn {peer}"))
            .stack_size(STACK_SIZE)
            // `move`: the thread owns its connection; no other flow can touch it.
            .spawn(move || {
                conn::serve_blocking(&conn, peer, ConnSettings::new(&config, &flag));
                drop(admitted);
            });
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(err) => log::warn!("conn {peer} dropped: cannot spawn a thread: {err}"),
        }
    }
    live.close_all();
    for handle in threads {
        let _ = handle.join();
    }
    Ok(())
}
